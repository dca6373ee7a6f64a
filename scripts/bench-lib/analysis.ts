// Plain-language notes derived from the numbers of one run (pure; the page shows the data, these
// notes say what the data says about missed targets — computed, never hand-written per run).
import { percentile } from "./stats.ts";
import { cpuPerGB, derive, fmt, gbps, relayMedian } from "./report.ts";
import { PATHS, type BenchResults, type RelayAbRun } from "./results.ts";
import { dsoShares, perfSyscallShares, straceCalls } from "./parse.ts";

export { dsoShares, straceCalls };

export interface AnalysisContext {
  /** Size of dist/nshub in bytes (the plugin binary). */
  binaryBytes?: number;
}

/** "perf during wrk: connect … µs, …": the profile's kernel time by syscall per new connection. */
function cpsProfileSentence(r: BenchResults): string {
  const c = r.profile?.cps;
  if (!c?.children || c.connections <= 0) return "";
  const per = ((c.cpu.user + c.cpu.sys) / c.connections) * 1e6;
  const top = perfSyscallShares(c.children).slice(0, 5);
  if (top.length === 0) return "";
  const parts = top.map((x) => `${x.name} ${fmt((x.pct / 100) * per, 0)} µs`);
  return `perf during a wrk run (see "New connections" in the profile below) puts the proxy's time per connection (${fmt(per, 0)} µs there) inside these syscalls, each with the packet processing the kernel ran inline for it: ${parts.join(", ")}. `;
}

/** The nshub proxy's threads by role, as they name themselves (src/util/thread-name.ts) or JavaScriptCore names them. */
const THREAD_ROLES: Array<[string, (name: string) => boolean]> = [
  ["data-plane threads (the main thread and nshub-dataplane: the per-connection JavaScript and the upstream connect)", (n) => n === "nshub" || n === "nshub-dataplane"],
  ["splice relay threads (nshub-relay: accept, splice, shutdown, close)", (n) => n === "nshub-relay"],
  ["JavaScriptCore's JIT compiler", (n) => n === "JITWorker"],
  ["garbage collection", (n) => n === "HeapHelper" || n.endsWith("ollector Thread") || n === "mi-scavenger"],
];

/** "By thread, per connection: data-plane … µs user + … µs kernel, …" over the measured nshub wrk runs. */
export function threadRoleSentence(r: BenchResults): string {
  const runs = r.cps.nshub.filter((x) => x.proxyThreads && x.wrk.requests > 0);
  if (runs.length === 0) return "";
  const roleOf = (name: string) => THREAD_ROLES.findIndex(([, match]) => match(name));
  const parts: string[] = [];
  for (let i = -1; i < THREAD_ROLES.length; i++) {
    const per = (x: (typeof runs)[number], k: "user" | "sys") => {
      let sec = 0;
      for (const [name, cpu] of Object.entries(x.proxyThreads!)) if (roleOf(name) === i) sec += cpu[k];
      return (sec / x.wrk.requests) * 1e6;
    };
    const user = percentile(runs.map((x) => per(x, "user")), 50);
    const sys = percentile(runs.map((x) => per(x, "sys")), 50);
    if (i === -1 && user + sys < 0.5) continue;
    parts.push(`${i === -1 ? "other threads" : THREAD_ROLES[i]![0]} ${fmt(user, 0)} µs user + ${fmt(sys, 0)} µs kernel`);
  }
  // "other" reads best last.
  if (parts.length > THREAD_ROLES.length) parts.push(parts.shift()!);
  return `By thread (per client connection, medians over the measured wrk runs): ${parts.join("; ")}. `;
}

/** " In this run the userspace relay …": the relay A/B of the same run, when it ran. */
function relayAbSentence(r: BenchResults): string {
  const tp = (x: RelayAbRun) => gbps(x.tp1);
  const cpu = (x: RelayAbRun) => cpuPerGB(x.tp1);
  const [sg, ug, sc, uc] = [relayMedian(r, "splice", tp), relayMedian(r, "userspace", tp), relayMedian(r, "splice", cpu), relayMedian(r, "userspace", cpu)];
  if (!Number.isFinite(sg) || !Number.isFinite(ug)) return "";
  return ` In this run the two relays measured in turn (see "The two relays") reached ${fmt(sg, 2)} (splice) and ${fmt(ug, 2)} Gb/s (userspace) for 1 stream${Number.isFinite(sc) && Number.isFinite(uc) ? `, at about ${fmt(sc, 2)} and ${fmt(uc, 2)} proxy CPU-seconds per GB` : ""}.`;
}

export function analysis(r: BenchResults, ctx: AnalysisContext = {}): string[] {
  const d = derive(r);
  const notes: string[] = [];
  const cpus = r.machine.nproc;
  const runLoads = [
    ...Object.values(r.throughput["1"]).flat(),
    ...Object.values(r.throughput["4"]).flat(),
    ...Object.values(r.latency).flat(),
    ...Object.values(r.cps).flat(),
  ].map((x) => x.load1 ?? NaN);
  const loadMax = Math.max(Number(r.load?.start.split(" ")[0]), Number(r.load?.end.split(" ")[0]), ...runLoads.filter(Number.isFinite));
  if (Number.isFinite(loadMax) && loadMax >= 1) {
    notes.push(
      `**Noise.** The 1-minute load average reached ${fmt(loadMax, 2)} during this run (${r.load?.start.split(" ")[0] ?? "?"} at the start, ${r.load?.end.split(" ")[0] ?? "?"} at the end) on ${cpus} CPUs; the bench itself keeps one or two busy, anything above that is other work competing for the CPUs. Single runs scatter (see "All runs", with the load at each run's start); the medians of interleaved runs are the fair comparison, and absolute values are pessimistic.`,
    );
  }
  const benchShare = [...PATHS.flatMap((p) => [...r.throughput["1"][p], ...r.throughput["4"][p]]), ...PATHS.flatMap((p) => r.cps[p])]
    .filter((x) => x.benchCpuSec !== undefined && x.wallSec)
    .map((x) => x.benchCpuSec! / x.wallSec!);
  if (benchShare.length) {
    notes.push(
      `**The bench's own CPU.** While iperf3 and wrk ran, the bench process (which starts them and captures the output of the proxy, the agent and the servers) used at most ${fmt(Math.max(...benchShare) * 100, 1)}% of one CPU (median ${fmt(percentile(benchShare, 50) * 100, 1)}%).`,
    );
  }

  notes.push(
    `**CPU budget.** This machine has ${cpus} CPU${cpus === 1 ? "" : "s"}. On every path the client, the server and (for nshub and HAProxy) the proxy share them, so a proxied path is limited by CPU, not by the virtual wire: each byte crosses the proxy twice (A's outbound relay, then B's inbound relay), i.e. four more socket copies and two more trips through the TCP stack than direct. ` +
      `A ratio to direct of 0.5 means the proxy's whole double relay may cost no more CPU than the kernel's own direct transfer.`,
  );

  const cpuN = d.tpCpuPerGB["1"].nshub;
  const cpuH = d.tpCpuPerGB["1"].haproxy;
  if (Number.isFinite(cpuN) && Number.isFinite(cpuH)) {
    notes.push(
      `**Proxy CPU per GB (1 stream).** nshub used ${fmt(cpuN, 2)} CPU-seconds per GB relayed, HAProxy ${fmt(cpuH, 2)} (${fmt(cpuN / cpuH, 2)}×; 4 streams: ${fmt(d.tpCpuPerGB["4"].nshub, 2)} vs ${fmt(d.tpCpuPerGB["4"].haproxy, 2)}). ` +
        "On a CPU-bound machine throughput follows this cost: what the proxy spends per byte is not available to iperf3 and the kernel. " +
        (Number.isFinite(d.tpCpuPerGB["1"]["haproxy-splice-always"])
          ? `(nshub ran its ${r.proxyRelay ?? "userspace"} relay; the HAProxy path runs with its default 16 KiB buffers and without splice. With splicing forced (\`option splice-request\` + \`splice-response\`, same run) HAProxy used ${fmt(d.tpCpuPerGB["1"]["haproxy-splice-always"], 2)} CPU-s/GB for 1 stream and ${fmt(d.tpCpuPerGB["4"]["haproxy-splice-always"], 2)} for 4, with \`option splice-auto\` ${fmt(d.tpCpuPerGB["1"]["haproxy-splice"], 2)} and ${fmt(d.tpCpuPerGB["4"]["haproxy-splice"], 2)}: nshub / HAProxy spliced ${fmt(cpuN / d.tpCpuPerGB["1"]["haproxy-splice-always"], 2)}× for 1 stream.)`
          : `(nshub ran its ${r.proxyRelay ?? "userspace"} relay; HAProxy runs with its default 16 KiB buffers and without splice. With \`option splice-request\` and \`splice-response\` forced, a hand-run \`--quick\` pair on this machine (2026-11-24) gave HAProxy 4.1–6.4 Gb/s for 1 stream and 7.1 for 4, and 1.58 CPU-s/GB: about what nshub's splice relay reaches.)`),
    );
  }

  const busy = d.tpProxyCpus["1"].nshub;
  if (Number.isFinite(busy) && Number.isFinite(cpuN) && cpuN > 0) {
    const ceiling = (1 / cpuN) * 8; // Gb/s one CPU can relay at this cost
    notes.push(
      `**What limits nshub's throughput here.** During the 1-stream runs the nshub proxy kept ${fmt(busy, 2)} CPUs busy (4 streams: ${fmt(d.tpProxyCpus["4"].nshub, 2)}; HAProxy: ${fmt(d.tpProxyCpus["1"].haproxy, 2)} with its ${r.haproxyThreads ?? "?"} threads). ` +
        ((r.proxyWorkers ?? 1) === 1 && busy >= 0.85 && busy <= 1.25
          ? `That is one CPU, its ceiling: the relay runs on one JavaScript thread for every pod and connection, and at ${fmt(cpuN, 2)} CPU-seconds per GB one CPU relays about ${fmt(ceiling, 1)} Gb/s, whatever the number of streams — which is what it reached (${fmt(d.tp["1"].nshub, 2)} and ${fmt(d.tp["4"].nshub, 2)} Gb/s). `
          : `The proxy ran ${r.proxyWorkers ?? 1} data-plane thread${(r.proxyWorkers ?? 1) === 1 ? "" : "s"}; at ${fmt(cpuN, 2)} CPU-seconds per GB one CPU relays about ${fmt(ceiling, 1)} Gb/s, and with iperf3's two ends at ${fmt(d.tpEndsCpuPerGB["1"].nshub, 2)} CPU-s/GB the machine's ${cpus} CPUs carry at most about ${fmt((cpus * 8) / (cpuN + d.tpEndsCpuPerGB["1"].nshub), 1)} Gb/s on this path, whatever the number of threads. `) +
        `Half of direct (${fmt(d.tp["1"].direct / 2, 2)} / ${fmt(d.tp["4"].direct / 2, 2)} Gb/s for 1 / 4 streams) needs the whole double relay at ≤ ${fmt(8 / (d.tp["1"].direct / 2), 2)} CPU-s/GB for 1 stream on one CPU, and on this ${cpus}-CPU machine the iperf3 ends need their share too. ` +
        (r.proxyRelay === "splice"
          ? "With the splice relay the payload never enters user space: each data-plane thread's relay thread moves it socket → pipe → socket with splice(2) (ztunnel measured 12 → 36 Gb/s with splice before removing it for HBONE). What remains is the kernel's TCP, netfilter and veth work for the two extra trips through the stack (A's outbound and B's inbound relay), which the proxy's own sends run in its context." +
            relayAbSentence(r)
          : "The userspace relay copies every byte into and out of JavaScript buffers; the splice relay (`proxy.relay: splice`, the default) does not."),
    );
  }

  const uRate = relayMedian(r, "userspace", (x) => x.cps.wrk.requestsPerSecond);
  const sRate = relayMedian(r, "splice", (x) => x.cps.wrk.requestsPerSecond);
  if (Number.isFinite(uRate) && Number.isFinite(sRate) && uRate < 0.5 * sRate) {
    const tw = (k: "splice" | "userspace") => relayMedian(r, k, (x) => x.cps.timeWaitA ?? NaN);
    const twText = Number.isFinite(tw("userspace")) ? `, with ${fmt(tw("userspace"), 0)} sockets in TIME_WAIT in pod A after its wrk runs (splice: ${fmt(tw("splice"), 0)})` : "";
    notes.push(
      `**The userspace relay under a connection storm.** In the relay comparison its connection rate was ${fmt(uRate, 0)} against ${fmt(sRate, 0)} conn/s with splice${twText}. ` +
        "In-pod, wrk's connects and the proxy's upstream connects from A to B draw on the same port range of pod A, and a socket whose side closed first stays in TIME_WAIT there for 60 s. " +
        "The userspace relay passes a FIN on a little later than the splice relay (Bun reports it one event-loop turn after the data; since 2026-11-25 a FIN that has already arrived is passed on with the data), so the far side closes first more often and more ports stay in TIME_WAIT. " +
        "Each restarted proxy gets its wrk warm-up only seconds before the measured run, so the ports it used are still taken; once the range is nearly full every connect searches it: in a profile of such a run (2026-11-25) 86% of the proxy's samples were in connect, in `__inet_hash_connect` and `__inet_check_established`. " +
        "HAProxy's path shows the same when its runs follow each other closely (dev harness, 2026-11-25); in the main comparison each path's wrk runs are about 100 s apart, longer than TIME_WAIT lasts.",
    );
  }

  const pr = r.profile;
  if (pr?.byDso) {
    const s = dsoShares(pr.byDso);
    const spliced = r.proxyRelay === "splice";
    const parts = [`kernel ${fmt(s.kernel, 0)}%`, `libc ${fmt(s.libc, 0)}%${spliced ? "" : " (memmove: user-space buffer copies)"}`, `Bun's native code ${fmt(s.bun, 0)}%`, `JIT-compiled JavaScript ${fmt(s.jit, 0)}%`];
    let per = "";
    if (pr.syscalls && pr.cpu) {
      const c = straceCalls(pr.syscalls);
      // A splice relay moves each chunk with two splices (socket → pipe, pipe → socket).
      const sends = (c.sendto ?? 0) + (c.write ?? 0) + (c.writev ?? 0) + (c.sendmsg ?? 0) + (c.splice ?? 0) / 2;
      const recvs = (c.recvfrom ?? 0) + (c.read ?? 0) + (c.readv ?? 0) + (c.recvmsg ?? 0) + (c.splice ?? 0) / 2;
      const gbpsUnderStrace = Number(/ran at ([0-9.]+) Gb\/s/.exec(pr.notes.join(" "))?.[1]);
      if (sends > 0 && Number.isFinite(gbpsUnderStrace)) {
        // 3 s window; every byte is sent twice and received twice by the proxy (two relays).
        const bytes = ((gbpsUnderStrace * 1e9) / 8) * 3 * 2;
        per = ` Under strace the proxy made ${fmt(sends, 0)} ${spliced ? "splices into sockets" : "send calls"} and ${fmt(recvs, 0)} ${spliced ? "out of sockets" : "receive calls"} in 3 s: about ${fmt(bytes / sends / 1024, 0)} KiB per send and ${fmt(bytes / Math.max(recvs, 1) / 1024, 0)} KiB per receive, so the number of syscalls is not the problem (${c.futex ?? 0} futex calls are Bun's threads synchronising).`;
      }
    }
    notes.push(
      `**Where the proxy's CPU goes (throughput).** perf samples of the proxy process: ${parts.join(", ")}. ` +
        (spliced
          ? "The bulk is the kernel: the TCP/IP, netfilter and veth processing that the proxy's own sends run in its context (softirq), and splice's page moves; no payload is copied to user space. " +
            (s.jit + s.bun < 25 ? "JavaScript and Bun's own code are a small share. " : `JavaScript and Bun's own code are ${fmt(s.jit + s.bun, 0)}% of the samples. `) +
            "What would cut the rest is fewer passes through the stack (a same-node shortcut from A's outbound to B's inbound, which ambient mode deliberately does not take)."
          : "The bulk is the kernel: copying payload into and out of socket buffers (`_copy_to_iter`/`_copy_from_iter`) and the TCP/IP, netfilter and veth processing that the proxy's own sends run in its context (softirq). " +
            (s.jit + s.bun < 25
              ? "JavaScript and Bun's own code are a small share: the relay is already a thin loop around large reads and writes. "
              : `JavaScript and Bun's own code are ${fmt(s.jit + s.bun, 0)}% of the samples: the relay loop itself is a real cost here. `) +
            "What cuts the kernel's part is copying less: the splice relay (`proxy.relay: splice`, the default) moves the bytes without a user-space copy.") +
        per,
    );
  }

  const perOp = r.profile?.perOp;
  const top = (calls: Record<string, number>, n: number, k: number) =>
    Object.entries(calls)
      .filter(([name]) => name !== "restart_syscall")
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([name, c]) => `${name} ${fmt(c / n, 1)}`)
      .join(", ");
  const total = (calls: Record<string, number>) => Object.entries(calls).reduce((a, [name, c]) => a + (name === "restart_syscall" ? 0 : c), 0);
  const signals = (calls: Record<string, number>) => (calls.tgkill ?? 0) + (calls.rt_sigreturn ?? 0) + (calls.rt_sigsuspend ?? 0) + (calls.rt_sigprocmask ?? 0) + (calls.getpid ?? 0);
  const latMissed = Number.isFinite(d.added.nshub.p50) && Number.isFinite(d.added.haproxy.p50) && d.added.nshub.p50 > d.added.haproxy.p50;
  if (perOp?.latency && perOp.latency.messages > 0) {
    const { messages, calls } = perOp.latency;
    notes.push(
      `**Latency: syscalls per round trip.** ${latMissed ? "nshub added more p50 latency than HAProxy in this run. " : ""}During a sockperf run under strace the proxy made ${fmt(total(calls) / messages, 1)} syscalls per round trip (one 64-byte message through A's outbound and B's inbound relay, and the reply back): ${top(calls, messages, 6)}. ` +
        ((calls.futex ?? 0) + signals(calls) > 0.5 * messages
          ? `Besides the 4 receives, 4 sends and the event-loop waits that two relays need, ${fmt((calls.futex ?? 0) / messages, 1)} futex and ${fmt(signals(calls) / messages, 1)} signal-related calls per round trip are threads of the Bun process waking each other.`
          : `That is about the minimum for two relays (${r.proxyRelay === "splice" ? "two splices per hop, socket → pipe → socket" : "a receive and a send per hop"}, and a wake-up of the relay's event loop for each of the 4 hops): the added latency is the cost of those wake-ups on a busy CPU, not extra work per message. nshub ran ${r.proxyWorkers ?? 1} data-plane thread${(r.proxyWorkers ?? 1) === 1 ? "" : "s"} and HAProxy ${r.haproxyThreads ?? "its default number of"} threads here.`),
    );
  }
  const cpsMissed = Number.isFinite(d.cps.nshub) && Number.isFinite(d.cps.haproxy) && d.cps.nshub < 0.8 * d.cps.haproxy;
  if (perOp?.cps && perOp.cps.connections > 0) {
    const { connections, calls } = perOp.cps;
    notes.push(
      `**Connection rate: syscalls per new connection.** ${cpsMissed ? `nshub reached ${fmt(d.cps.nshub / d.cps.haproxy, 2)}× HAProxy's rate. ` : ""}Under strace the proxy made ${fmt(total(calls) / connections, 0)} syscalls per new connection (accepted in A, connected from A to B, accepted in B, connected to the server with the client's address): ${top(calls, connections, 12)}. ` +
        `Of these, ${fmt((calls.setsockopt ?? 0) / connections, 1)} setsockopt, ${fmt((calls.setns ?? 0) / connections, 1)} setns and ${fmt(signals(calls) / connections, 1)} signal-related calls (tgkill, rt_sig*, getpid) are per-connection work beyond accept/socket/connect/close; the JS profile below shows the per-connection JavaScript.`,
    );
  }

  // CPU per new connection, user and kernel, from the proxy's own CPU time during the wrk runs.
  const perConn = (p: "nshub" | "haproxy") => {
    const runs = r.cps[p].filter((x) => x.proxyCpu && x.wrk.requests > 0);
    if (runs.length === 0) return undefined;
    const med = (f: (x: (typeof runs)[number]) => number) => percentile(runs.map(f), 50);
    return { user: med((x) => (x.proxyCpu!.user / x.wrk.requests) * 1e6), sys: med((x) => (x.proxyCpu!.sys / x.wrk.requests) * 1e6) };
  };
  const cn = perConn("nshub");
  const ch = perConn("haproxy");
  if (cn && ch) {
    notes.push(
      `**Connection rate: CPU per new connection.** The proxy's own CPU time during the wrk runs, per connection (medians): nshub ${fmt(cn.user, 0)} µs user + ${fmt(cn.sys, 0)} µs kernel, HAProxy ${fmt(ch.user, 0)} µs user + ${fmt(ch.sys, 0)} µs kernel. ` +
        `Each client connection costs either proxy two accepts, two upstream connects and two closes; the kernel part is mostly TCP and netfilter work that runs in the proxy's context (the upstream connect's handshake and the closing FINs are processed inline on the virtual wire). ` +
        `The source-preserving inbound leg is not what makes nshub's kernel share higher: measured separately on this machine (2026-11-24, one data-plane thread), connections through only A's outbound relay and through only B's inbound relay (IP_TRANSPARENT bind, connmark, table-100 route) cost the proxy about the same, 300–390 µs of CPU each. ` +
        (r.proxyRelay === "splice"
          ? "nshub's user share is its per-connection JavaScript (addresses, record, metrics, access log, the hand-over to the relay thread) and the relay thread's own loop; the upstream connect itself (setns into the pod, socket, mark, bind, connect) runs on the data-plane thread and is most of its samples in a JS profile, because the SYN's way to B is processed inside the connect call. The hand-offs between the relay thread and its data-plane thread are not where the time goes: holding the relay thread's event batches for 2 ms, so that the data-plane thread woke far less often, left the proxy's CPU per connection where it was (paired runs in one proxy, 2026-11-25: 546 against 530 µs), and so did copying small reads through a buffer (recv + send) instead of splicing them (542 against 540 µs). "
          : "nshub's user share is Bun's socket handling plus the relay, record and access log per connection. ") +
        threadRoleSentence(r) +
        cpsProfileSentence(r) +
        `On this ${cpus}-CPU machine wrk, the HTTP server and the proxy share the CPUs, so the rate follows the total CPU per connection. The proxy's data-plane threads (\`proxy.workers\`, default 2: each thread binds every pod's listeners with SO_REUSEPORT) let it use the second CPU; with the userspace relay 2 threads reached 0.47–0.49× HAProxy's rate against 0.39–0.40× with 1 (paired \`--quick\` runs, 2026-11-24), with the splice relay 1 and 2 threads gave the same rate within the noise (dev runs the same day). The rest of the gap is the CPU per connection above, mostly its JavaScript: nshub's user CPU per connection is ${fmt(cn.user / ch.user, 1)}× HAProxy's, its kernel CPU ${fmt(cn.sys / ch.sys, 2)}×.`,
    );
  }

  const bd = r.enrollment.breakdown;
  const es = d.enrollSeq;
  if (bd && es && es.p99 > 50) {
    const start = percentile(bd.startupMs, 50);
    const rpc = percentile(bd.rpcMs, 50);
    const size = ctx.binaryBytes ? ` (a ${fmt(ctx.binaryBytes / 2 ** 20, 0)} MiB Bun executable)` : "";
    notes.push(
      `**Enrollment (sequential).** Of the plugin's p50 ${fmt(es.p50, 0)} ms, starting and ending the nshub-cni process alone${size} takes ${fmt(start, 0)} ms (CNI VERSION, no agent call); the agent's PodAdd itself (policy, in-pod rules: iptables-save/-restore and one \`ip -batch\` spawned inside the pod netns, ZDS AddWorkload with the netns fd, the proxy binding the pod's two listeners and acking) takes ${fmt(rpc, 0)} ms from a warm client${bd.rulesMs?.length ? ` (of which applying the in-pod rules alone, the same code run from the bench, takes ${fmt(percentile(bd.rulesMs, 50), 0)} ms)` : ""}; the rest is the plugin's own work between start-up and the call (config load, client set-up). ` +
        (start + rpc > 50
          ? `Start-up and the agent's own work alone already add up to ${fmt(start + rpc, 0)} ms, above the 50 ms target: it needs both a cheaper plugin process (a small native plugin, e.g. in Zig, that only forwards stdin and the environment to the agent's socket, would start in a few milliseconds) and a faster PodAdd in the agent.`
          : `Start-up and the agent's own work add up to ${fmt(start + rpc, 0)} ms; the p99 (${fmt(es.p99, 0)} ms) is the slow tail of the runs.`),
    );
  }
  const ec = d.enrollConc;
  const conc = r.enrollment.concurrent;
  if (bd && ec && conc && ec.p99 > 250) {
    const start = percentile(bd.startupMs, 50);
    notes.push(
      `**Enrollment (${conc.pods} at once).** ${conc.pods} plugin processes start together on ${cpus} CPUs: start-up CPU alone (${fmt(start, 0)} ms each) needs about ${fmt((conc.pods * start) / cpus, 0)} ms of the machine before the last one runs, besides the ${conc.pods} bridge/host-local runs and the agent handling the PodAdds (inside the plugin: p50 ${fmt(ec.inP50, 0)} / p99 ${fmt(ec.inP99, 0)} ms, versus ${fmt(d.enrollSeq?.inP50, 0)} ms when sequential; ${conc.pods} PodAdds one after another at the ${fmt(percentile(bd.rpcMs, 50), 0)} ms a warm client sees would take ${fmt(conc.pods * percentile(bd.rpcMs, 50), 0)} ms: the agent's work per pod, mostly the in-pod rules, is what the last pods wait for).` +
        (conc.cpu
          ? ` Measured during the batch (${fmt(conc.wallMs / 1000, 2)} s): the machine's CPUs were ${fmt((100 * conc.cpu.machineBusySec) / Math.max(conc.cpu.machineTotalSec, 1e-9), 0)}% busy (${fmt(conc.cpu.machineBusySec, 2)} CPU-seconds); the agent with the tools it spawns (iptables-restore, ip, ipset) used ${fmt(conc.cpu.agentSec, 2)} (${fmt((1000 * conc.cpu.agentSec) / conc.pods, 1)} ms per pod), the proxy ${fmt(conc.cpu.proxySec, 2)}, and the other ${fmt(conc.cpu.machineBusySec - conc.cpu.agentSec - conc.cpu.proxySec, 2)} went to the ${conc.pods} pods' network set-up itself (netns creation, the loopback, bridge and host-local plugins, the nshub-cni processes) and the bench. ` +
            (conc.cpu.machineBusySec / Math.max(conc.cpu.machineTotalSec, 1e-9) >= 0.85
              ? `The batch is CPU-bound: the ${conc.pods} pods' whole set-up needs ${fmt(conc.cpu.machineBusySec, 2)} CPU-seconds, ${fmt(conc.cpu.machineBusySec / cpus, 2)} s of this ${cpus}-CPU machine, against the 0.25 s the target allows for nshub-cni alone.`
              : "The CPUs were not saturated: the plugins waited for something else than CPU (the agent's queue, locks).")
          : ""),
    );
  }

  const m = r.memory;
  if (m?.rssConnsKiB !== undefined && m.rssBeforeConnsKiB !== undefined && m.connsOpened) {
    const lostN = m.clientConns !== undefined ? m.clientConns - m.connsOpened : 0;
    const dropsN = (m.listenDrops?.a ?? 0) + (m.listenDrops?.b ?? 0);
    const lost =
      lostN > 0
        ? ` Of the ${m.clientConns} connections the client opened, ${lostN} never reached the server; ` +
          (m.lostReasons?.length ? `the proxy's records of the connections it closed in that phase: ${m.lostReasons.join("; ")}. ` : "") +
          (dropsN > 0
            ? `While they were being opened, SYNs were dropped at full accept queues (ListenDrops: pod A ${m.listenDrops!.a}, pod B ${m.listenDrops!.b}): the proxy accepts more slowly than 32 clients connect, and an upstream connect whose SYNs keep being dropped runs into the proxy's 10 s connect timeout.`
            : "No listen-queue drop was counted.")
        : "";
    notes.push(
      ((m.legs ?? 2) === 1
        ? `**Per-connection memory.** Each of the ${m.connsOpened} client connections is one relayed connection inside the proxy (B's inbound accept + its transparent upstream): two sockets; the proxy's fds went from ${m.fdsBefore} to ${m.fdsConns}. A connection between two enrolled pods of the same node passes two relays (A's outbound and B's inbound) and costs about twice as much, ${fmt((2 * (d.perConnBytes ?? NaN)) / 1000, 1)} KB. `
        : `**Per-connection memory.** Each of the ${m.connsOpened} client connections is two relayed connections inside the proxy (A's outbound accept + upstream, B's inbound accept + transparent upstream): four sockets; the proxy's fds went from ${m.fdsBefore} to ${m.fdsConns}. Per relayed connection (one leg) that is ${fmt((d.perConnBytes ?? NaN) / 2000, 2)} KB. `) +
        `Kernel socket buffers are not in the proxy's RSS; what is counted is the proxy's own per-connection state (${r.proxyRelay === "splice" ? "the connection's state on the relay thread, its record and relay on the data-plane thread, metric handles; an idle connection holds no pipe" : "Bun socket objects, the relay and its record, metric handles"}).` + lost,
    );
  }
  if (m?.conns !== undefined && m.conns < r.params.idleConns) {
    notes.push(
      `**${m.conns} idle connections instead of ${r.params.idleConns}.** The proxy's fd limit here is ${r.fdLimit ?? "20000"} (RLIMIT_NOFILE hard limit; raising it needs CAP_SYS_RESOURCE, which this machine does not grant) and each connection holds ${(m.legs ?? 2) * 2} of its fds (${(m.legs ?? 2) === 1 ? "B's inbound accept and its upstream" : "A's outbound and B's inbound listener, two each"}). The per-connection cost is the slope, measured over the connections that were open.`,
    );
  }
  return notes;
}
