// The page's mTLS section (issue 18): nshub HBONE between two nodes against the HAProxy TLS chain,
// HBONE between two pods of one node, the targets, and notes computed from the numbers (pure:
// results in, markdown out; unit-tested in test/unit/bench-mtls-report.test.ts).
import { median, ratio } from "./stats.ts";
import { dedent, fmt, fmtRatio, measured, MET, signed, table, type Derived, type TargetCheck } from "./report.ts";
import { MTLS_PATHS, PATH_LABEL, runsOf, type AnyPath, type BenchResults, type MtlsPath, type ProcessProfile } from "./results.ts";

const H = "hbone-nodes";
const T = "haproxy-tls";

/** Both proxies' RSS growth per idle HBONE stream, bytes (undefined when not measured). */
export function idleStreamBytes(r: BenchResults): { total: number; node1: number; node2: number } | undefined {
  const i = r.mtls?.idle;
  if (!i || i.held <= 0) return undefined;
  const per = (k: 0 | 1) => ((i.rssAfterKiB[k] - i.rssBeforeKiB[k]) * 1024) / i.held;
  return { total: per(0) + per(1), node1: per(0), node2: per(1) };
}

/** Issue 18's targets: HBONE across two nodes against the HAProxy TLS chain. */
export function mtlsTargets(r: BenchResults, d: Derived): TargetCheck[] {
  const t: TargetCheck[] = [];
  const both = (a: number, b: number, cond: (a: number, b: number) => boolean) => (Number.isFinite(a) && Number.isFinite(b) ? cond(a, b) : undefined);
  for (const s of ["1", "4"] as const) {
    const [a, b] = [d.tp[s][H], d.tp[s][T]];
    t.push({ target: `HBONE throughput ${s} stream${s === "1" ? "" : "s"} ≥ HAProxy TLS chain`, value: `${fmt(a, 2)} vs ${fmt(b, 2)} Gb/s (${fmtRatio(ratio(a, b))})`, met: both(a, b, (x, y) => x >= y) });
  }
  const [a50, b50] = [d.added[H].p50, d.added[T].p50];
  t.push({ target: "HBONE added p50 latency ≤ HAProxy TLS chain's", value: `${signed(a50, 1)} µs vs ${signed(b50, 1)} µs`, met: both(a50, b50, (x, y) => x <= y) });
  const [ca, cb] = [d.cps[H], d.cps[T]];
  t.push({ target: "HBONE connection rate ≥ 1.0× HAProxy TLS chain", value: `${fmt(ca, 0)} vs ${fmt(cb, 0)} conn/s (${fmtRatio(ratio(ca, cb))})`, met: both(ca, cb, (x, y) => x >= y) });
  const m = idleStreamBytes(r);
  t.push({ target: "≤ 8 KB proxy memory per idle HBONE stream (both proxies)", value: m ? `${fmt(m.total / 1000, 2)} KB (node 1 ${fmt(m.node1 / 1000, 2)} + node 2 ${fmt(m.node2 / 1000, 2)})` : "not measured", met: m ? m.total <= 8000 : undefined });
  return t;
}

/** The machine's CPUs busy during a path's iperf3 runs, % (median; NaN when not recorded). */
export function machineBusyPct(r: BenchResults, p: AnyPath, s: "1" | "4"): number {
  return median(runsOf(r.throughput[s], p).map((x) => (x.machineBusy ?? NaN) * 100));
}

/** Median of each probe field over a path's wrk runs (the samples taken half-way through). */
export function probeMedians(r: BenchResults, p: MtlsPath): Record<string, number> {
  const runs = runsOf(r.cps, p).filter((x) => x.probe);
  const keys = new Set(runs.flatMap((x) => Object.keys(x.probe!)));
  return Object.fromEntries([...keys].map((k) => [k, median(runs.map((x) => x.probe![k] ?? NaN))]));
}

const DSO_NAMES: Array<[RegExp, string]> = [
  [/kernel/, "kernel"],
  [/^\[JIT\]/, "JIT-compiled JavaScript"],
  [/^nshub( \(deleted\))?$/, "the nshub binary (Bun's native code: BoringSSL, the HTTP/2 codec, sockets)"],
  [/^libcrypto/, "OpenSSL's libcrypto"],
  [/^libssl/, "OpenSSL's libssl"],
  [/^haproxy$/, "HAProxy's own code"],
  [/^libc[.-]/, "libc"],
];

/** "kernel 61%, OpenSSL's libcrypto 27%, …" from a `perf report --sort dso` table (JIT entries summed). */
export function dsoSummary(byDso: string, top = 4): string {
  const shares = new Map<string, number>();
  for (const line of byDso.split("\n")) {
    const m = /^\s*([0-9.]+)%\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    const name = DSO_NAMES.find(([re]) => re.test(m[2]!))?.[1] ?? m[2]!;
    shares.set(name, (shares.get(name) ?? 0) + Number(m[1]));
  }
  return [...shares]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([n, pct]) => `${n} ${fmt(pct, 0)}%`)
    .join(", ");
}

/** The first `n` symbols of a `perf report --sort dso,sym` table: "12.3% aes_gcm_… (libcrypto.so.3)". */
export function topSymbols(text: string, n = 5): string {
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*([0-9.]+)%\s+(\S+(?: tid \d+)?)\s+\[[.kj]\]\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    out.push(`${m[1]}% \`${m[3]}\` (${m[2]})`);
    if (out.length >= n) break;
  }
  return out.join(", ");
}

/** During the 1-stream runs: the proxies' CPUs and the machine's; whether HBONE left CPU unused. */
function busySentence(r: BenchResults, d: Derived): string {
  const [mh, mt] = [machineBusyPct(r, H, "1"), machineBusyPct(r, T, "1")];
  if (!Number.isFinite(mh)) return "";
  const cpus = r.machine.nproc;
  return (
    `During the 1-stream runs nshub's two proxies kept ${fmt(d.tpProxyCpus["1"][H], 2)} CPUs busy and the machine's ${cpus} CPUs were ${fmt(mh, 0)}% busy (the HAProxy chain: ${fmt(d.tpProxyCpus["1"][T], 2)} CPUs, machine ${fmt(mt, 0)}%). ` +
    (mh < 90
      ? `The CPUs were not saturated on the HBONE path, so CPU alone does not set its rate: the rest is time the bytes wait. What they wait for was not measured here; candidates are the hand-offs between Bun's native socket layer and each proxy's JavaScript thread for every chunk, and HTTP/2 flow control (the stream window is 4 MiB; the connection-level window is left to Bun's HTTP/2 stack, src/hbone/wire.ts).`
      : "The CPUs were saturated: the proxies' CPU per byte sets the rate.")
  );
}

/** "`write` (native) 52.3%, …": the first rows of a `--cpu-prof-md` hot-functions table, by self time. */
export function jsTop(hot: string, n = 3): string {
  const out: string[] = [];
  for (const line of hot.split("\n")) {
    const m = /^\|\s*([0-9.]+%)\s*\|[^|]*\|[^|]*\|[^|]*\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|/.exec(line);
    if (!m) continue;
    out.push(`\`${m[2]}\`${m[3] === "[native code]" ? " (native)" : ""} ${m[1]}`);
    if (out.length >= n) break;
  }
  return out.join(", ");
}

function procSentence(p: ProcessProfile): string {
  const cpus = (p.cpu.user + p.cpu.sys) / Math.max(p.cpu.wallSec, 1e-9);
  return `${p.who}: ${fmt(cpus, 2)} CPUs busy (${fmt((100 * p.cpu.sys) / Math.max(p.cpu.user + p.cpu.sys, 1e-9), 0)}% of it in the kernel)${p.byDso ? `; samples: ${dsoSummary(p.byDso)}` : ""}${p.topSymbols ? `; top symbols ${topSymbols(p.topSymbols, 4)}` : ""}`;
}

/** Plain-language notes on the mTLS numbers, above all on the targets missed. */
export function mtlsNotes(r: BenchResults, d: Derived): string[] {
  const notes: string[] = [];
  const targets = mtlsTargets(r, d);
  const missed = (re: RegExp) => targets.some((t) => re.test(t.target) && t.met === false);
  const pr = r.mtls?.profile;
  const procs = (pr?.procs ?? []).filter((p) => (p.load ?? "iperf3") === "iperf3");
  const wrkProcs = (pr?.procs ?? []).filter((p) => p.load === "wrk");
  const jsIperf = pr?.js?.find((j) => j.load.includes("iperf3"));
  if (missed(/throughput/)) {
    const [c1, c4] = [ratio(d.tpCpuPerGB["1"][H], d.tpCpuPerGB["1"][T]), ratio(d.tpCpuPerGB["4"][H], d.tpCpuPerGB["4"][T])];
    notes.push(
      `**HBONE throughput.** nshub's HBONE reached ${fmt(d.tp["1"][H], 2)} / ${fmt(d.tp["4"][H], 2)} Gb/s (1 / 4 streams) against the HAProxy TLS chain's ${fmt(d.tp["1"][T], 2)} / ${fmt(d.tp["4"][T], 2)}. ` +
        `Per GB moved, nshub's two proxies used ${fmt(d.tpCpuPerGB["1"][H], 2)} CPU-seconds (1 stream; 4 streams ${fmt(d.tpCpuPerGB["4"][H], 2)}), HAProxy's two ${fmt(d.tpCpuPerGB["1"][T], 2)} (${fmt(d.tpCpuPerGB["4"][T], 2)}): ${fmtRatio(c1)} and ${fmtRatio(c4)}. ` +
        `With the client, the server and both proxies on ${r.machine.nproc} CPUs, the path that spends more CPU per byte moves fewer bytes. The splice relay does not apply to HBONE: every byte is decrypted and encrypted in user space and carried in HTTP/2 DATA frames through Bun's \`node:tls\` and \`node:http2\` on the proxies' JavaScript threads, ` +
        `where HAProxy runs OpenSSL in C on its own buffers. ` +
        busySentence(r, d) +
        (procs.length ? ` The profile below (perf, \`iperf3 -P 1\`): ${procs.map(procSentence).join("; ")}.` : " (No profile ran: `--no-profile`, or a quick run.)") +
        (jsIperf ? ` Bun's profiler on node 1's data-plane thread under \`iperf3 -P 1\` (self time): ${jsTop(jsIperf.hot)}: the thread's time goes to native socket writes (the TLS socket's \`write\`: encryption and the copy into the kernel), not to JavaScript.` : ""),
    );
  }
  if (missed(/latency/)) {
    notes.push(
      `**HBONE added latency.** Over direct between the same nodes, HBONE added ${signed(d.added[H].p50, 1)} µs at p50, the HAProxy TLS chain ${signed(d.added[T].p50, 1)} µs. ` +
        `A 64-byte message through HBONE is a TLS record holding an HTTP/2 DATA frame on each hop between the proxies, encrypted, framed and handed between Bun's native socket layer and JavaScript on each proxy; HAProxy does the same TLS work in C without an HTTP/2 layer. ` +
        `On one node the plaintext nshub path added ${signed(d.added.nshub.p50, 1)} µs and HBONE ${signed(d.added["hbone-local"].p50, 1)} µs: the difference is what mTLS and HTTP/2 cost per round trip here.`,
    );
  }
  const pt = probeMedians(r, T);
  const ph = probeMedians(r, H);
  if (missed(/connection rate/)) {
    notes.push(
      `**HBONE connection rate.** ${fmt(d.cps[H], 0)} new connections/s against the HAProxy TLS chain's ${fmt(d.cps[T], 0)} (${fmtRatio(ratio(d.cps[H], d.cps[T]))}). ` +
        (Number.isFinite(ph.poolConnections) ? `nshub needs no handshake per connection: half-way through the wrk runs node 1 held ${fmt(ph.poolConnections, 0)} pooled HBONE connection${ph.poolConnections === 1 ? "" : "s"} for all the streams. ` : "") +
        (Number.isFinite(pt.serverTlsConnsPerSec)
          ? `HAProxy opens a TLS connection per client connection (${fmt(pt.serverTlsConnsPerSec, 0)}/s on the server side half-way through the runs), ${fmt(pt.serverResumedPct, 0)}% of them resumed (TLS 1.3 tickets; ${fmt(pt.clientFullHandshakesPerSec, 0)} full handshakes/s on the client side). `
          : "") +
        `CPU per new connection: nshub's two proxies ${fmt(d.cpuPerConnUs[H], 0)} µs, HAProxy's two ${fmt(d.cpuPerConnUs[T], 0)} µs. Pooling saves the handshake, but each HBONE stream costs a CONNECT (HPACK headers, stream set-up and teardown in JavaScript on both proxies) on top of the accept, the upstream connect and the closes that HAProxy pays too.` +
        (pr?.js?.length ? " Bun's profile of node 1's proxy under wrk (below) shows which JavaScript that is." : ""),
    );
  }
  if (Number.isFinite(d.cpuPerConnUs[T]) && Number.isFinite(d.cpuPerConnUs[H]) && !missed(/connection rate/)) {
    notes.push(
      `**TLS per connection.** The HAProxy TLS chain opens a TLS connection per client connection${Number.isFinite(pt.serverResumedPct) ? ` (${fmt(pt.serverResumedPct, 0)}% of them resumed half-way through the wrk runs, ${fmt(pt.clientFullHandshakesPerSec, 0)} full handshakes/s)` : ""}: its two processes spent ${fmt(d.cpuPerConnUs[T], 0)} µs of CPU per new connection, against ${fmt(d.cpuPerConnUs[H], 0)} µs for nshub's two proxies, whose streams ride ${Number.isFinite(ph.poolConnections) ? `${fmt(ph.poolConnections, 0)} pooled connection${ph.poolConnections === 1 ? "" : "s"}` : "pooled connections"} without a handshake. A resumed TLS 1.3 handshake still runs an ECDHE key exchange on both sides (\`psk_dhe_ke\`).` +
        (wrkProcs.length ? ` perf under wrk: ${wrkProcs.map(procSentence).join("; ")}.` : ""),
    );
  }
  const mem = idleStreamBytes(r);
  if (mem && mem.total > 8000) {
    const i = r.mtls!.idle!;
    const heap = i.heapBefore && i.heapAfter ? [0, 1].map((k) => (i.heapAfter![k]! - i.heapBefore![k]!) / 1024 / 1024) : undefined;
    const leg = (r.memory?.legs ?? 2) === 1 ? d.perConnBytes : undefined;
    notes.push(
      `**Memory per idle HBONE stream.** ${fmt(mem.total / 1000, 2)} KB per stream over ${i.held} idle streams, carried by ${i.poolConnections ?? "?"} pooled connections: node 1's proxy ${fmt(mem.node1 / 1000, 2)} KB (the captured socket, the client side of the stream, the tunnel and its record), node 2's ${fmt(mem.node2 / 1000, 2)} KB (the server side of the stream, the upstream socket, the tunnel and its record). ` +
        (leg !== undefined ? `A plaintext relayed connection (one leg, splice relay) held ${fmt(leg / 1000, 2)} KB in this run: an HBONE leg costs ${fmtRatio(mem.total / 2 / leg)} that: an idle HBONE stream is held as JavaScript and native objects on a data-plane thread (the TCP socket, the HTTP/2 stream, the tunnel joining them, the record), where a spliced plaintext connection is two file descriptors on the relay thread plus its record. ` : "") +
        (heap
          ? `The proxies' main-thread JavaScript heaps (one of each proxy's two data-plane threads, which share the connections) grew by ${fmt(heap[0], 1)} and ${fmt(heap[1], 1)} MiB after a full GC, about ${fmt(((heap[0]! + heap[1]!) * 2 * 1024 * 1024) / i.held / 1000, 1)} KB per stream if the other threads hold as much; the rest of the growth is native memory (Bun's sockets, TLS and HTTP/2 state, the allocator).`
          : ""),
    );
  }
  return notes;
}

/** The section: numbers, checks, targets, notes, profile; empty when the mTLS paths were not measured. */
export function mtlsSection(r: BenchResults, d: Derived): string[] {
  const mt = r.mtls;
  if (!mt || !MTLS_PATHS.some((p) => measured(r, p) || r.checks.some((c) => c.path === p))) return [];
  const out: string[] = ["## mTLS between two nodes (issue 18)", ""];
  out.push(
    `Two more virtual nodes, joined by the routed fabric (a namespace acting as the router between their links: pod subnets ${mt.nodes.map((n) => n.subnet).join(" and ")}), each with its own \`dist/nshub agent\` and \`dist/nshub proxy\` (${mt.proxyWorkers ?? "?"} data-plane threads, ${mt.proxyRelay ?? "?"} relay for plaintext) holding workload certificates from one local CA (\`nshub ca init\`, \`proxy.ca.source: local\`, trust domain ${mt.trustDomain}). Measured in the same interleaved loop as the paths above:`,
    "",
    `* **${PATH_LABEL["direct-nodes"]}**: pods not enrolled, node 1 → fabric → node 2: the baseline of the cross-node paths;`,
    `* **${PATH_LABEL[H]}**: both pods enrolled; A's outbound on node 1 dials HBONE (mutual TLS 1.3, HTTP/2 CONNECT, pooled) from inside A to B:15008 across the fabric; node 2's proxy verifies A's certificate and relays to the app with A's address. Node 1 knows B is a mesh workload from \`proxy.workloadsFile\` (ztunnel's local-config format);`,
    `* **${PATH_LABEL[T]}**: pods not enrolled, the same in-pod rules and owner-match difference as the HAProxy path; HAProxy 1 (node 1, ${mt.haproxyThreads?.[0] ?? "?"} threads) captures A's outbound and connects from inside A to B:15008 in TLS 1.3 with a client certificate (\`ssl crt … ca-file … verify required\`), sending the original destination in a PROXY v2 header (which HAProxy sends before the handshake: the destination port crosses the wire in clear, HBONE's travels inside TLS); HAProxy 2 (node 2, ${mt.haproxyThreads?.[1] ?? "?"} threads) terminates it (\`bind … ssl crt … ca-file … verify required accept-proxy\`) and connects to the app inside B. Certificates: ECDSA P-256 leaves signed with openssl by the same CA, so both chains rest on the same root. Tuning: threads = CPUs (HAProxy's default), TLS session resumption on (HAProxy's default for \`ssl\` servers; TLS 1.3 tickets), no splicing or kernel TLS (not applicable to TLS in HAProxy 2.6), and keep-alive/\`http-reuse\` are HTTP-mode features, not raw TCP's;`,
    `* **${PATH_LABEL["hbone-local"]}**: both pods enrolled on node 2: nshub has **no same-node shortcut**, so A's outbound dials HBONE to B's 15008 on the same node, through node 2's proxy alone. Its added latency is over the same-node direct path above.`,
    "",
  );
  const cols: MtlsPath[] = ["direct-nodes", H, T];
  const rows: string[][] = [];
  const row = (label: string, f: (p: "direct-nodes" | "hbone-nodes" | "haproxy-tls" | "hbone-local" | "nshub") => number, digits: number, proxied = false, fmtv = (x: number) => fmt(x, digits)) =>
    rows.push([label, ...cols.map((p) => (proxied && p === "direct-nodes" ? "—" : fmtv(f(p)))), fmtRatio(ratio(f(H), f(T))), fmtv(f("hbone-local")), fmtRatio(ratio(f("hbone-local"), f("nshub")))]);
  for (const s of ["1", "4"] as const) row(`throughput, ${s} stream${s === "1" ? "" : "s"} (Gb/s)`, (p) => d.tp[s][p], 2);
  for (const [k, l] of [["p50", "p50"], ["p99", "p99"], ["p999", "p99.9"]] as const) row(`round trip ${l} (µs)`, (p) => d.lat[p][k], 1);
  for (const [k, l] of [["p50", "p50"], ["p99", "p99"], ["p999", "p99.9"]] as const) row(`**added** latency ${l} over direct (µs)`, (p) => (p === "direct-nodes" ? NaN : d.added[p][k]), 1, true, (x) => signed(x, 1));
  row("connection rate (new connections/s)", (p) => d.cps[p], 0);
  for (const s of ["1", "4"] as const) row(`proxy CPU per GB relayed, ${s} stream${s === "1" ? "" : "s"}, both proxies (CPU-s/GB)`, (p) => d.tpCpuPerGB[s][p], 2, true);
  row("proxy CPU per new connection, both proxies (µs)", (p) => d.cpuPerConnUs[p], 0, true);
  row("CPUs the proxies kept busy, 1 stream", (p) => d.tpProxyCpus["1"][p], 2, true);
  row("machine CPU busy during the 1-stream runs (%)", (p) => machineBusyPct(r, p, "1"), 0);
  for (const s of ["1", "4"] as const) row(`iperf3 client + server CPU per GB, ${s} stream${s === "1" ? "" : "s"} (CPU-s/GB)`, (p) => d.tpEndsCpuPerGB[s][p], 2);
  out.push(table(["measure", ...cols.map((p) => PATH_LABEL[p]), "HBONE / HAProxy TLS", PATH_LABEL["hbone-local"], "HBONE same node / nshub plaintext (same node)"], rows), "");
  out.push(`Connection-rate errors (all runs): ${[...cols, "hbone-local" as const].map((p) => `${PATH_LABEL[p]} ${d.cpsErrors[p]}`).join(", ")}. The CPU rows count both proxies of a two-proxy path (nshub: node 1's and node 2's proxy; the chain: HAProxy 1 and 2); the same-node HBONE path has one proxy.`, "");

  const pt = probeMedians(r, T);
  const ph = probeMedians(r, H);
  const pl = probeMedians(r, "hbone-local");
  const facts: string[] = [];
  if (Number.isFinite(ph.poolConnections)) facts.push(`nshub node 1 held ${fmt(ph.poolConnections, 0)} pooled HBONE connection(s) (${fmt(ph.poolStreams, 0)} streams open at that moment); same node: ${fmt(pl.poolConnections, 0)}`);
  if (Number.isFinite(pt.serverTlsConnsPerSec)) facts.push(`HAProxy 2 accepted ${fmt(pt.serverTlsConnsPerSec, 0)} TLS connections/s, ${fmt(pt.serverResumedPct, 0)}% resumed; HAProxy 1 made ${fmt(pt.clientFullHandshakesPerSec, 0)} full handshakes/s (HAProxy 2: ${fmt(pt.serverFullHandshakesPerSec, 0)})`);
  if (facts.length) out.push(`Half-way through the wrk runs (medians of the samples): ${facts.join("; ")}.`, "");

  const mem = idleStreamBytes(r);
  if (mt.idle) {
    const i = mt.idle;
    out.push(
      `**Idle HBONE streams.** ${i.held} idle connections from A (node 1) to an idle server in B (node 2) through the HBONE path (each sent a 16-byte hello, then nothing; ${i.clientConns} opened by the client${i.connectMs !== undefined ? ` in ${fmt(i.connectMs / 1000, 1)} s` : ""}), carried by ${i.poolConnections ?? "?"} pooled HBONE connections: node 1's proxy RSS ${fmt(i.rssBeforeKiB[0] / 1024, 1)} → ${fmt(i.rssAfterKiB[0] / 1024, 1)} MiB (fds ${i.fdsBefore[0]} → ${i.fdsAfter[0]}), node 2's ${fmt(i.rssBeforeKiB[1] / 1024, 1)} → ${fmt(i.rssAfterKiB[1] / 1024, 1)} MiB (fds ${i.fdsBefore[1]} → ${i.fdsAfter[1]}), each after a full GC: **${fmt((mem?.total ?? NaN) / 1000, 2)} KB per stream** for both proxies together.`,
      "",
    );
  }
  const checks = r.checks.filter((c) => (MTLS_PATHS as readonly string[]).includes(c.path));
  if (checks.length) {
    out.push(
      "**Path checks (before measuring).** One request per path from A to B's HTTP server with a random marker in a header, while tcpdump captured the fabric:",
      "",
      table(
        ["path", "client address seen by B's server", "A's outbound REDIRECT packets", "on the fabric", "proxies' records", "check"],
        checks.map((c) => [PATH_LABEL[c.path], c.peerSeen, c.redirectPackets === undefined ? "no rules" : String(c.redirectPackets), c.wire ?? "", c.security ?? "—", `${c.ok ? "ok" : "FAILED"}: ${c.note}`]),
      ),
      "",
    );
  }
  if (mt.audit) out.push(`After the measured runs node 2's proxy had accepted ${mt.audit.mutualTls} connections for its pods in mutual TLS and ${mt.audit.plaintext} in plaintext (\`istio_tcp_connections_opened_total{reporter="destination"}\` by \`connection_security_policy\`).`, "");

  out.push("### Targets (issue 18)", "", table(["target", "this run", "status"], mtlsTargets(r, d).map((t) => [t.target, t.value, MET(t.met)])), "");
  const notes = mtlsNotes(r, d);
  if (notes.length) out.push(...notes.flatMap((n) => [n, ""]));

  const pr = mt.profile;
  if (pr) {
    out.push("### Where the mTLS paths' CPU goes", "", pr.what, "");
    const g = pr.gbps;
    out.push(`During the perf runs: HBONE ${fmt(g[H], 2)} Gb/s, HAProxy TLS chain ${fmt(g[T], 2)} Gb/s (\`iperf3 -P 1\`).`, "");
    for (const p of pr.procs) {
      out.push(`**${p.who}**: ${fmt(p.cpu.user, 2)} s user + ${fmt(p.cpu.sys, 2)} s system CPU in ${fmt(p.cpu.wallSec, 1)} s.`, "");
      if (p.byDso) out.push("```", dedent(p.byDso), "```", "");
      if (p.topSymbols) out.push("Top symbols (self time):", "", "```", dedent(p.topSymbols), "```", "");
      if (p.byThread) out.push("By thread:", "", "```", dedent(p.byThread), "```", "");
    }
    for (const j of pr.js ?? []) out.push(`Bun's sampling profiler, node 1's proxy (from source, one data-plane thread) under ${j.load}:`, "", j.hot, "");
    for (const n of pr.notes) out.push(n, "");
  }
  return out;
}
