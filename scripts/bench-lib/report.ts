// Renders docs/BENCHMARKS.md from the collected results (pure: results in, markdown out; the
// derived numbers are computed here too, so the JSON and the page always agree).
import { percentile, median, ratio } from "./stats.ts";
import { perfSyscallShares } from "./parse.ts";
import { mtlsSection } from "./mtls-report.ts";
import { ALL_PATHS, BASELINE, HAPROXY_VARIANTS, PATHS, PATH_LABEL, runsOf, type AnyPath, type HaproxyVariant, type BenchResults, type RelayAbRun, type RelayKind, type ThroughputRun } from "./results.ts";

// ---------------------------------------------------------------------------------------------
// derived numbers

/** Every path's derived numbers (NaN, or 0 errors, for a path that was not measured). */
export interface Derived {
  tp: Record<"1" | "4", Record<AnyPath, number>>; // Gb/s, median
  tpCpuPerGB: Record<"1" | "4", Record<AnyPath, number>>; // proxy CPU seconds per GB moved (both proxies on the two-proxy paths)
  tpEndsCpuPerGB: Record<"1" | "4", Record<AnyPath, number>>; // iperf3 client + server CPU seconds per GB
  tpProxyCpus: Record<"1" | "4", Record<AnyPath, number>>; // CPUs the proxy (proxies) kept busy
  lat: Record<AnyPath, { p50: number; p99: number; p999: number }>; // µs RTT, median of runs
  added: Record<AnyPath, { p50: number; p99: number; p999: number }>; // µs over the path's BASELINE (direct), median of per-rep differences
  cps: Record<AnyPath, number>;
  cpsErrors: Record<AnyPath, number>;
  /** Proxy CPU per new connection (µs, user + system, both proxies on the two-proxy paths), median of the wrk runs. */
  cpuPerConnUs: Record<AnyPath, number>;
  enrollSeq?: { p50: number; p99: number; inP50: number; inP99: number; chainP50: number; chainP99: number };
  enrollConc?: { p50: number; p99: number; inP50: number; inP99: number; chainP50: number; chainP99: number };
  perPodBytes?: number;
  perConnBytes?: number;
}

function perPath<T>(f: (p: AnyPath) => T): Record<AnyPath, T> {
  return Object.fromEntries(ALL_PATHS.map((p) => [p, f(p)])) as Record<AnyPath, T>;
}

/** Whether any run of `p` was measured (extra paths are absent from older results). */
export function measured(r: BenchResults, p: AnyPath): boolean {
  return runsOf(r.throughput["1"], p).length + runsOf(r.throughput["4"], p).length + runsOf(r.latency, p).length + runsOf(r.cps, p).length > 0;
}

export const gbps = (r: ThroughputRun) => r.iperf.bitsPerSecond / 1e9;
/** The median over one relay's runs of the relay phase (NaN when there are none). */
export function relayMedian(r: BenchResults, relay: RelayKind, f: (x: RelayAbRun) => number): number {
  return percentile((r.relayAB ?? []).filter((x) => x.relay === relay).map(f).filter(Number.isFinite), 50);
}

/** The nshub path with each relay, medians of the same run (empty when the phase did not run). */
export function relayAbSection(r: BenchResults): string[] {
  const ab = r.relayAB ?? [];
  if (ab.length === 0) return [];
  const rows: Array<[string, (x: RelayAbRun) => number, number]> = [
    ["throughput, 1 stream (Gb/s)", (x) => gbps(x.tp1), 2],
    ["throughput, 4 streams (Gb/s)", (x) => gbps(x.tp4), 2],
    ["proxy CPU per GB relayed, 1 stream (CPU-s/GB)", (x) => cpuPerGB(x.tp1), 2],
    ["proxy CPU per GB relayed, 4 streams (CPU-s/GB)", (x) => cpuPerGB(x.tp4), 2],
    ["round trip p50 (µs)", (x) => x.latency.p50Us, 1],
    ["round trip p99.9 (µs)", (x) => x.latency.p999Us, 1],
    ["connection rate (new connections/s)", (x) => x.cps.wrk.requestsPerSecond, 0],
    ["proxy CPU per new connection (µs)", (x) => (x.cps.proxyCpu ? ((x.cps.proxyCpu.user + x.cps.proxyCpu.sys) / x.cps.wrk.requests) * 1e6 : NaN), 0],
    ["TCP sockets in TIME_WAIT in pod A after the wrk run", (x) => x.cps.timeWaitA ?? NaN, 0],
  ];
  const n = ab.filter((x) => x.relay === "splice").length;
  return [
    "### The two relays (nshub only, same run)",
    "",
    `The nshub path with \`proxy.relay: splice\` and with \`proxy.relay: userspace\`, the proxy restarted with each in turn, ${n} repetition${n === 1 ? "" : "s"} each, medians (iperf3 runs of ${ab[0]!.seconds} s; see Method).`,
    "",
    table(
      ["measure", "splice", "userspace", "splice / userspace"],
      rows.map(([name, f, digits]) => {
        const a = relayMedian(r, "splice", f);
        const b = relayMedian(r, "userspace", f);
        return [name, fmt(a, digits), fmt(b, digits), fmtRatio(a / b)];
      }),
    ),
    "",
  ];
}

/** The proxy's CPU use during the run (CPUs busy on average) per GB/s relayed = CPU-seconds per GB. */
export function cpuPerGB(r: ThroughputRun): number {
  if (!r.proxyCpu) return NaN;
  // The CPU delta covers the whole client run (including the omitted first second), so it is
  // divided by that run's wall time and set against the rate, not against the bytes counted.
  const wall = r.wallSec ?? r.iperf.seconds;
  return ratio((r.proxyCpu.user + r.proxyCpu.sys) / wall, r.iperf.bitsPerSecond / 8 / 1e9);
}

/** CPUs the proxy kept busy on average during the run. */
export function proxyCpus(r: ThroughputRun): number {
  if (!r.proxyCpu) return NaN;
  return ratio(r.proxyCpu.user + r.proxyCpu.sys, r.wallSec ?? r.iperf.seconds);
}

function endsCpuPerGB(r: ThroughputRun): number {
  const { cpuClient, cpuServer, seconds, bitsPerSecond } = r.iperf;
  if (cpuClient === undefined || cpuServer === undefined) return NaN;
  const gb = (bitsPerSecond * seconds) / 8 / 1e9;
  return ratio(((cpuClient + cpuServer) / 100) * seconds, gb);
}

export function derive(r: BenchResults): Derived {
  const tpOf = (s: "1" | "4", f: (x: ThroughputRun) => number) => perPath((p) => median(runsOf(r.throughput[s], p).map(f)));
  const tp = { "1": tpOf("1", gbps), "4": tpOf("4", gbps) };
  const tpCpuPerGB = { "1": tpOf("1", cpuPerGB), "4": tpOf("4", cpuPerGB) };
  const tpEndsCpuPerGB = { "1": tpOf("1", endsCpuPerGB), "4": tpOf("4", endsCpuPerGB) };
  const tpProxyCpus = { "1": tpOf("1", proxyCpus), "4": tpOf("4", proxyCpus) };
  const lat = perPath((p) => ({
    p50: median(runsOf(r.latency, p).map((x) => x.sockperf.p50Us)),
    p99: median(runsOf(r.latency, p).map((x) => x.sockperf.p99Us)),
    p999: median(runsOf(r.latency, p).map((x) => x.sockperf.p999Us)),
  }));
  const addedOf = (p: AnyPath, k: "p50Us" | "p99Us" | "p999Us") => {
    const diffs: number[] = [];
    for (const run of runsOf(r.latency, p)) {
      const base = runsOf(r.latency, BASELINE[p]).find((d) => d.rep === run.rep);
      if (base) diffs.push(run.sockperf[k] - base.sockperf[k]);
    }
    return median(diffs);
  };
  const added = perPath((p) => ({ p50: addedOf(p, "p50Us"), p99: addedOf(p, "p99Us"), p999: addedOf(p, "p999Us") }));
  const cps = perPath((p) => median(runsOf(r.cps, p).map((x) => x.wrk.requestsPerSecond)));
  const cpsErrors = perPath((p) =>
    runsOf(r.cps, p).reduce((a, x) => a + x.wrk.errors.connect + x.wrk.errors.timeout + x.wrk.errors.write + x.wrk.non2xx3xx, 0),
  );
  const cpuPerConnUs = perPath((p) =>
    median(runsOf(r.cps, p).map((x) => (x.proxyCpu && x.wrk.requests > 0 ? ((x.proxyCpu.user + x.proxyCpu.sys) / x.wrk.requests) * 1e6 : NaN))),
  );
  const enroll = (e: BenchResults["enrollment"]["sequential"]) =>
    e && {
      p50: percentile(e.pluginMs, 50),
      p99: percentile(e.pluginMs, 99),
      inP50: percentile(e.inPluginMs, 50),
      inP99: percentile(e.inPluginMs, 99),
      chainP50: percentile(e.chainMs, 50),
      chainP99: percentile(e.chainMs, 99),
    };
  const m = r.memory;
  const perPodBytes = m?.rssPodsKiB !== undefined && m.rss0KiB !== undefined && m.pods ? ((m.rssPodsKiB - m.rss0KiB) * 1024) / m.pods : undefined;
  const perConnBytes =
    m?.rssConnsKiB !== undefined && m.rssBeforeConnsKiB !== undefined && m.connsOpened ? ((m.rssConnsKiB - m.rssBeforeConnsKiB) * 1024) / m.connsOpened : undefined;
  return { tp, tpCpuPerGB, tpEndsCpuPerGB, tpProxyCpus, lat, added, cps, cpsErrors, cpuPerConnUs, enrollSeq: enroll(r.enrollment.sequential), enrollConc: enroll(r.enrollment.concurrent), perPodBytes, perConnBytes };
}

// ---------------------------------------------------------------------------------------------
// targets

export interface TargetCheck {
  target: string;
  value: string;
  met: boolean | undefined; // undefined = not measured
}

const VARIANT_NAME: Record<HaproxyVariant, string> = { haproxy: "default", "haproxy-splice": "splice-auto", "haproxy-splice-always": "splice forced" };

/**
 * The stronger of the HAProxy configurations measured on one node (its default and, when they
 * were measured, splice-auto and forced splicing) in one measure: the one nshub is held to.
 * `text` names each.
 */
export function strongerHaproxy(r: BenchResults, value: (p: HaproxyVariant) => number, better: "higher" | "lower", digits: number): { value: number; text: string } {
  const vs = HAPROXY_VARIANTS.filter((p) => p === "haproxy" || measured(r, p)).map((p) => ({ p, v: value(p) }));
  if (vs.length === 1) return { value: vs[0]!.v, text: fmt(vs[0]!.v, digits) };
  const finite = vs.map((x) => x.v).filter(Number.isFinite);
  const best = finite.length === 0 ? NaN : better === "higher" ? Math.max(...finite) : Math.min(...finite);
  return { value: best, text: vs.map((x) => `${fmt(x.v, digits)} (${VARIANT_NAME[x.p]})`).join(" / ") };
}

export function checkTargets(r: BenchResults, d: Derived): TargetCheck[] {
  const t: TargetCheck[] = [];
  const add = (target: string, value: string, met: boolean | undefined) => t.push({ target, value, met: met === undefined || Number.isNaN(met as unknown as number) ? undefined : met });
  const ok = (x: number, cond: (x: number) => boolean) => (Number.isFinite(x) ? cond(x) : undefined);
  for (const s of ["1", "4"] as const) {
    const h = strongerHaproxy(r, (p) => d.tp[s][p], "higher", 2);
    const rh = ratio(d.tp[s].nshub, h.value);
    add(`throughput ${s} stream${s === "1" ? "" : "s"} ≥ HAProxy`, `${fmt(d.tp[s].nshub, 2)} vs ${h.text} Gb/s (${fmtRatio(rh)})`, ok(rh, (x) => x >= 1));
  }
  for (const s of ["1", "4"] as const) {
    const rd = ratio(d.tp[s].nshub, d.tp[s].direct);
    add(`throughput ${s} stream${s === "1" ? "" : "s"} ≥ 0.5× direct`, `${fmt(d.tp[s].nshub, 2)} vs ${fmt(d.tp[s].direct, 2)} Gb/s (${fmtRatio(rd)})`, ok(rd, (x) => x >= 0.5));
  }
  const a50 = d.added.nshub.p50;
  const h50 = strongerHaproxy(r, (p) => d.added[p].p50, "lower", 1);
  add("added p50 latency ≤ HAProxy's", `+${fmt(a50, 1)} µs vs +${h50.text} µs`, Number.isFinite(a50) && Number.isFinite(h50.value) ? a50 <= h50.value : undefined);
  const a999 = d.added.nshub.p999;
  const h999 = strongerHaproxy(r, (p) => d.added[p].p999, "lower", 1);
  add(
    "added p99.9 latency ≤ 2× HAProxy's",
    `+${fmt(a999, 1)} µs vs +${h999.text} µs (limit +${fmt(2 * Math.max(h999.value, 0), 1)} µs)`,
    Number.isFinite(a999) && Number.isFinite(h999.value) ? a999 <= 2 * Math.max(h999.value, 0) : undefined,
  );
  const hc = strongerHaproxy(r, (p) => d.cps[p], "higher", 0);
  const rc = ratio(d.cps.nshub, hc.value);
  add("connection rate ≥ 0.8× HAProxy", `${fmt(d.cps.nshub, 0)} vs ${hc.text} conn/s (${fmtRatio(rc)})`, ok(rc, (x) => x >= 0.8));
  const es = d.enrollSeq;
  add(`enrollment p99 ≤ 50 ms, ${r.enrollment.sequential?.pods ?? "?"} pods sequential`, es ? `p99 ${fmt(es.p99, 1)} ms (p50 ${fmt(es.p50, 1)})` : "not measured", es ? es.p99 <= 50 : undefined);
  const ec = d.enrollConc;
  add(`enrollment p99 ≤ 250 ms, ${r.enrollment.concurrent?.pods ?? "?"} pods concurrent`, ec ? `p99 ${fmt(ec.p99, 1)} ms (p50 ${fmt(ec.p50, 1)})` : "not measured", ec ? ec.p99 <= 250 : undefined);
  const rs = r.resync;
  add(`proxy resync ≤ 2 s with ${rs?.pods ?? r.params.scalePods} pods`, rs ? `${fmt(rs.readyMs, 0)} ms` : "not measured", rs ? rs.readyMs <= 2000 : undefined);
  add("≤ 100 KB proxy memory per enrolled pod", d.perPodBytes !== undefined ? `${fmt(d.perPodBytes / 1000, 1)} KB` : "not measured", d.perPodBytes !== undefined ? d.perPodBytes <= 100_000 : undefined);
  add("≤ 8 KB proxy memory per idle connection", d.perConnBytes !== undefined ? `${fmt(d.perConnBytes / 1000, 2)} KB` : "not measured", d.perConnBytes !== undefined ? d.perConnBytes <= 8_000 : undefined);
  return t;
}

/** What the splice variants of HAProxy were, and whether they spliced (pipes in use half-way through each iperf3 run). */
function spliceVariantsText(r: BenchResults, cols: AnyPath[]): string[] {
  const v = cols.filter((x) => x === "haproxy-splice" || x === "haproxy-splice-always");
  if (v.length === 0) return [];
  const threads = (x: AnyPath) => (x === "haproxy-splice" ? r.haproxySpliceThreads : r.haproxySpliceAlwaysThreads) ?? "its default number of";
  const how = (x: AnyPath) => (x === "haproxy-splice" ? "`option splice-auto`" : "`option splice-request` + `option splice-response`");
  const pipes = (x: AnyPath, s: "1" | "4") => median(runsOf(r.throughput[s], x).map((t) => t.probe?.pipesUsed ?? NaN));
  const facts = v.map((x) => {
    const [p1, p4] = [pipes(x, "1"), pipes(x, "4")];
    if (!Number.isFinite(p1) && !Number.isFinite(p4)) return "";
    const seen = [p1, p4].filter(Number.isFinite);
    const none = seen.length > 0 && seen.every((x) => x === 0);
    return `${PATH_LABEL[x]} had ${fmt(p1, 0)} / ${fmt(p4, 0)} pipes in use (1 / 4 streams, medians)${none ? ": it never spliced on this path (its own heuristic did not choose splicing)" : ""}`;
  });
  return [
    `${v.map((x) => `**${PATH_LABEL[x]}**: another HAProxy process (${threads(x)} threads) with ${how(x)} in its defaults`).join("; ")}; each binds its own pod pair the same way as the HAProxy path (same rules, same owner-match difference). Splicing moves the payload socket → pipe → socket in the kernel, as nshub's splice relay always does.` +
      (facts.some((f) => f) ? ` Half-way through each iperf3 run the bench read HAProxy's pipes (\`show info\`, PipesUsed): ${facts.filter((f) => f).join("; ")}.` : "") +
      " The targets below hold nshub to the strongest HAProxy configuration in each measure.",
    "",
  ];
}

// ---------------------------------------------------------------------------------------------
// formatting

export function fmt(x: number | undefined, digits: number): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtRatio(x: number): string {
  return Number.isFinite(x) ? `${x.toFixed(2)}×` : "n/a";
}

export function signed(x: number, digits: number): string {
  if (!Number.isFinite(x)) return "n/a";
  return `${x >= 0 ? "+" : "−"}${fmt(Math.abs(x), digits)}`;
}

/** Removes the common leading indentation of a block (perf/strace output) and trailing blank lines. */
export function dedent(text: string): string {
  const lines = text.replace(/\s+$/, "").split("\n");
  const indent = Math.min(...lines.filter((l) => l.trim() !== "").map((l) => /^ */.exec(l)![0].length));
  return lines.map((l) => l.slice(Number.isFinite(indent) ? indent : 0).replace(/\s+$/, "")).join("\n");
}

export function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}

export const MET = (m: boolean | undefined) => (m === undefined ? "not measured" : m ? "**met**" : "**missed**");

// ---------------------------------------------------------------------------------------------
// the page

export interface ReportExtras {
  /** Free-text notes (observations, explanations of missed targets) appended by the bench. */
  notes: string[];
}

export function renderReport(r: BenchResults, extras: ReportExtras = { notes: [] }): string {
  const d = derive(r);
  const p = r.params;
  const m = r.machine;
  const out: string[] = [];
  out.push(
    "# nshub benchmarks",
    "",
    `Generated by \`scripts/bench\`${r.mode === "quick" ? " **in --quick mode (shorter runs; not the reference numbers)**" : ""}${r.phases ? ` **(partial run: only ${r.phases.join(", ")})**` : ""} on ${r.startedAt.slice(0, 10)}; the whole run took ${r.runtimeSec !== undefined ? `${(r.runtimeSec / 60).toFixed(1)} min` : "n/a"}. Refresh with \`sudo scripts/bench\` (see [Method](#method)).`,
    "Every number below comes from one run of the script: all paths are measured in the same run, interleaved, each repeated " +
      `${p.reps} times; tables show medians.`,
    "",
    "## Machine",
    "",
    table(
      ["CPU", "nproc", "memory", "kernel", "OS", "Bun", "HAProxy", "iperf3", "sockperf", "wrk", "nshub"],
      [[m.cpuModel, String(m.nproc), `${m.memoryGiB} GiB`, m.kernel, m.os, m.bun, m.haproxy, m.iperf3, m.sockperf, m.wrk, `${m.nshubCommit}${m.nshubDirty ? " (+ uncommitted changes)" : ""}`]],
    ),
    "",
    ...(r.nshubBinary
      ? [
          `dist/nshub as measured was built ${r.nshubBinary.builtAt.slice(0, 19).replace("T", " ")} UTC; ` +
            (r.nshubBinary.newerSources.length
              ? `${r.nshubBinary.newerSources.length} source file${r.nshubBinary.newerSources.length === 1 ? "" : "s"} changed after that (${r.nshubBinary.newerSources.slice(0, 5).join(", ")}${r.nshubBinary.newerSources.length > 5 ? ", …" : ""}): the run measured that build, not the sources of the commit above.`
              : "no source file changed after that."),
          "",
        ]
      : []),
    `Load average (1/5/15 min) when the run started: ${r.load?.start ?? "n/a"}; when it ended: ${r.load?.end ?? "n/a"} (anything above ~0 at the start is other work sharing these CPUs; the numbers are only as quiet as the machine was).`,
    "",
    `iptables: ${m.iptables}. HAProxy ran with ${r.haproxyThreads ?? "its default number of"} thread${r.haproxyThreads === 1 ? "" : "s"} (its default: one per CPU); the nshub proxy ran ${r.proxyWorkers ?? 1} data-plane thread${(r.proxyWorkers ?? 1) === 1 ? "" : "s"} (\`proxy.workers\`) with the ${r.proxyRelay ?? "userspace"} relay (\`proxy.relay\`${r.proxyRelay === "splice" ? ": one splice relay thread per data-plane thread" : ""}), and its process had ${r.proxyThreads ?? "?"} threads in all (JS threads plus Bun's runtime, fd-poller${r.proxyRelay === "splice" ? ", splice relay" : ""} threads).`,
    "",
    "## Results",
    "",
  );

  // The main table: the three paths, plus HAProxy with splice-auto when it was measured (every
  // nshub ratio is then also taken against it).
  const cols: AnyPath[] = [...PATHS, ...HAPROXY_VARIANTS.filter((p) => p !== "haproxy" && measured(r, p))];
  const vs: AnyPath[] = cols.filter((x) => x !== "nshub");
  const rows: string[][] = [];
  const row = (label: string, f: (x: AnyPath) => number, digits: number, proxiedOnly = false) =>
    rows.push([label, ...cols.map((x) => (proxiedOnly && x === "direct" ? "—" : fmt(f(x), digits))), ...vs.map((x) => (proxiedOnly && x === "direct" ? "—" : fmtRatio(ratio(f("nshub"), f(x)))))]);
  for (const s of ["1", "4"] as const) row(`throughput, ${s} stream${s === "1" ? "" : "s"} (Gb/s)`, (x) => d.tp[s][x], 2);
  for (const [k, label] of [
    ["p50", "p50"],
    ["p99", "p99"],
    ["p999", "p99.9"],
  ] as const) {
    row(`round trip ${label} (µs)`, (x) => d.lat[x][k], 1);
  }
  for (const [k, label] of [
    ["p50", "p50"],
    ["p99", "p99"],
    ["p999", "p99.9"],
  ] as const) {
    rows.push([
      `**added** latency ${label} over direct (µs)`,
      ...cols.map((x) => (x === "direct" ? "—" : signed(d.added[x][k], 1))),
      ...vs.map((x) => (x === "direct" ? "—" : fmtRatio(ratio(d.added.nshub[k], d.added[x][k])))),
    ]);
  }
  row("connection rate (new connections/s)", (x) => d.cps[x], 0);
  for (const s of ["1", "4"] as const) row(`proxy CPU per GB relayed, ${s} stream${s === "1" ? "" : "s"} (CPU-s/GB)`, (x) => d.tpCpuPerGB[s][x], 2, true);
  for (const s of ["1", "4"] as const) row(`iperf3 client + server CPU per GB, ${s} stream${s === "1" ? "" : "s"} (CPU-s/GB)`, (x) => d.tpEndsCpuPerGB[s][x], 2);
  out.push(table(["measure", ...cols.map((x) => PATH_LABEL[x]), ...vs.map((x) => `nshub / ${PATH_LABEL[x]}`)], rows), "");
  out.push(
    `Connection-rate errors (wrk connect/write/timeout errors and non-2xx responses, all runs): ${cols.map((x) => `${PATH_LABEL[x]} ${d.cpsErrors[x]}`).join(", ")}.`,
    "",
  );
  out.push(...spliceVariantsText(r, cols));

  // nshub-only measures
  const es = d.enrollSeq;
  const ec = d.enrollConc;
  const rs = r.resync;
  const mem = r.memory;
  const nrows: string[][] = [];
  const enrollRow = (label: string, e: typeof es, run: BenchResults["enrollment"]["sequential"]) => {
    if (!e || !run) return nrows.push([label, "not measured"]);
    nrows.push([
      label,
      `p50 **${fmt(e.p50, 1)}** / p99 **${fmt(e.p99, 1)}** ms (inside the plugin after its process started: p50 ${fmt(e.inP50, 1)} / p99 ${fmt(e.inP99, 1)} ms; the pod's whole network set-up (netns creation, loopback, bridge + host-local, nshub-cni): p50 ${fmt(e.chainP50, 1)} / p99 ${fmt(e.chainP99, 1)} ms)${run.failures.length ? `; ${run.failures.length} failed` : ""}`,
    ]);
  };
  enrollRow(`CNI ADD of nshub-cni, ${r.enrollment.sequential?.pods ?? p.enrollSeq} pods one after another`, es, r.enrollment.sequential);
  enrollRow(`CNI ADD of nshub-cni, ${r.enrollment.concurrent?.pods ?? p.enrollConc} pods at once`, ec, r.enrollment.concurrent);
  const bd = r.enrollment.breakdown;
  if (bd) {
    nrows.push([
      "where a sequential ADD goes",
      `the nshub-cni process alone (CNI VERSION through the same wrapper: exec, Bun start-up, exit): p50 ${fmt(percentile(bd.startupMs, 50), 1)} / p99 ${fmt(percentile(bd.startupMs, 99), 1)} ms over ${bd.startupMs.length} runs; ` +
        `the agent's PodAdd from a warm client (policy, in-pod rules, ZDS AddWorkload with the netns fd, proxy bind and ack): p50 ${fmt(percentile(bd.rpcMs, 50), 1)} / p99 ${fmt(percentile(bd.rpcMs, 99), 1)} ms over ${bd.rpcMs.length} pods` +
        (bd.rulesMs?.length ? `; of that, the in-pod rules alone (\`applyPodRules\` run from the bench): p50 ${fmt(percentile(bd.rulesMs, 50), 1)} ms` : ""),
    ]);
  }
  if (rs) {
    nrows.push([
      `proxy restart with ${rs.pods} enrolled pods: process start → ready`,
      `**${fmt(rs.readyMs, 0)} ms** (proxy's own log: ${fmt(rs.readyLogMs, 0)} ms; last pod's listeners bound at ${fmt(rs.lastPodMs, 0)} ms; pods served ${rs.podsServed}; old proxy stopped in ${fmt(rs.stopMs, 0)} ms)`,
    ]);
  } else nrows.push(["proxy resync", "not measured"]);
  if (mem) {
    nrows.push(["proxy RSS, no pod enrolled (fresh process)", `${fmt((mem.rss0KiB ?? NaN) / 1024, 1)} MiB`]);
    nrows.push([
      `proxy RSS, ${mem.pods ?? "?"} pods enrolled (fresh process after restart)`,
      `${fmt((mem.rssPodsKiB ?? NaN) / 1024, 1)} MiB → **${fmt((d.perPodBytes ?? NaN) / 1000, 1)} KB per pod**`,
    ]);
    const legs = mem.legs ?? 2;
    nrows.push([
      legs === 1
        ? `proxy RSS, + ${mem.connsOpened ?? 0} idle connections into pod B (through B's inbound listener: one relayed connection each)`
        : `proxy RSS, + ${mem.connsOpened ?? 0} idle connections A → B (through A's outbound and B's inbound listener)`,
      `${fmt((mem.rssBeforeConnsKiB ?? NaN) / 1024, 1)} → ${fmt((mem.rssConnsKiB ?? NaN) / 1024, 1)} MiB → **${fmt((d.perConnBytes ?? NaN) / 1000, 2)} KB per connection** (${legs === 2 ? `${fmt((d.perConnBytes ?? NaN) / 2000, 2)} KB per relayed leg; ` : ""}proxy fds ${mem.fdsBefore ?? "?"} → ${mem.fdsConns ?? "?"}${mem.connectMs !== undefined ? `; opening them took ${fmt(mem.connectMs / 1000, 1)} s` : ""})`,
    ]);
  } else nrows.push(["proxy memory", "not measured"]);
  out.push("### Enrollment, resync and memory (nshub only)", "", table(["measure", "result"], nrows), "");
  out.push(...relayAbSection(r));

  // targets
  out.push("## Targets (issue 8)", "", table(["target", "this run", "status"], checkTargets(r, d).map((t) => [t.target, t.value, MET(t.met)])), "");

  // the two-node mTLS comparison (issue 18), when it ran
  out.push(...mtlsSection(r, d));

  if (extras.notes.length) out.push("## Notes and analysis", "", ...extras.notes.flatMap((n) => [n, ""]));

  if (r.profile) {
    const pr = r.profile;
    out.push("## Where the time goes (profile of the nshub proxy)", "", pr.what, "");
    if (pr.cpu) {
      out.push(
        `During the profiled run the proxy used ${fmt(pr.cpu.user, 2)} s user + ${fmt(pr.cpu.sys, 2)} s system CPU in ${fmt(pr.cpu.wallSec, 1)} s wall (${fmt(((pr.cpu.user + pr.cpu.sys) / pr.cpu.wallSec) * 100, 0)}% of one CPU) while relaying ${fmt(pr.cpu.gbps, 2)} Gb/s.`,
        "",
      );
    }
    if (pr.byDso) out.push("perf, samples by shared object (`perf report --sort dso`):", "", "```", dedent(pr.byDso), "```", "");
    if (pr.topSymbols) out.push("perf, top symbols (self time):", "", "```", dedent(pr.topSymbols), "```", "");
    if (pr.cps?.byThread || pr.cps?.children) {
      const per = pr.cps.connections > 0 ? ((pr.cps.cpu.user + pr.cps.cpu.sys) / pr.cps.connections) * 1e6 : NaN;
      out.push(
        `**New connections.** perf during a wrk run with \`Connection: close\` (3 s of samples; the proxy used ${fmt(pr.cps.cpu.user, 2)} s user + ${fmt(pr.cps.cpu.sys, 2)} s system CPU for ${pr.cps.connections} connections in that run, ${fmt(per, 0)} µs each).`,
        "",
      );
      const shares = pr.cps.children ? perfSyscallShares(pr.cps.children).slice(0, 10) : [];
      if (shares.length) {
        out.push(
          "Share of the proxy's samples inside each syscall, with everything the kernel ran inline for it (for `connect`, `shutdown` and the sends that is the TCP, netfilter and veth work of the packets, softirq included):",
          "",
          table(["syscall", "share of samples", "µs per new connection"], shares.map((x) => [`\`${x.name}\``, `${fmt(x.pct, 1)}%`, fmt((x.pct / 100) * per, 0)])),
          "",
        );
      }
      if (pr.cps.byThread) out.push("Samples by thread and object (`perf report --sort comm,dso`; `Worker` = the data-plane and relay threads, `JITWorker` = JavaScriptCore's compiler):", "", "```", dedent(pr.cps.byThread), "```", "");
    }
    if (pr.syscalls) out.push("`strace -c -f` over part of the same kind of run (counts are what matters; strace itself slows the proxy):", "", "```", dedent(pr.syscalls), "```", "");
    if (pr.perOp && (pr.perOp.latency || pr.perOp.cps)) {
      const lat = pr.perOp.latency;
      const cps = pr.perOp.cps;
      const names = new Set<string>();
      for (const c of [lat?.calls, cps?.calls]) {
        if (!c) continue;
        for (const [n] of Object.entries(c).sort((a, b) => b[1] - a[1]).slice(0, 12)) names.add(n);
      }
      const per = (c: Record<string, number> | undefined, n: number | undefined, name: string) => (c && n ? fmt((c[name] ?? 0) / n, 2) : "n/a");
      const sorted = [...names].sort((a, b) => (cps?.calls[b] ?? 0) + (lat?.calls[b] ?? 0) - (cps?.calls[a] ?? 0) - (lat?.calls[a] ?? 0));
      out.push(
        `Syscalls of the proxy (all threads, \`strace -c -f\`) per ping-pong round trip (sockperf, ${lat?.messages ?? "n/a"} messages) and per new connection (wrk with \`Connection: close\`, ${cps?.connections ?? "n/a"} connections); each passes A's outbound and B's inbound relay:`,
        "",
        table(["syscall", "per round trip", "per new connection"], sorted.map((n) => [`\`${n}\``, per(lat?.calls, lat?.messages, n), per(cps?.calls, cps?.connections, n)])),
        "",
      );
    }
    for (const n of pr.notes) out.push(n, "");
  }

  // method
  out.push(
    "## Method",
    "",
    "`scripts/bench` (root) installs what is missing (`haproxy iperf3 sockperf wrk openssl tcpdump` from Debian), builds `dist/nshub` if needed and runs `scripts/bench.ts`. " +
      "`scripts/bench --quick` does the same with short runs and small counts for development (it writes to a temp file unless `--out` is given). " +
      "All traffic stays inside network namespaces the script creates (virtual nodes without uplink, and the fabric namespace joining two of them; see docs/TESTING.md), every load is bounded in time or count, and everything is removed at the end (also on failure).",
    "",
    "**Topology.** One virtual node (`src/sim/`): a node netns with a bridge; pods are network namespaces wired by the real CNI plugins (loopback, bridge + host-local) with `nshub-cni` chained last. " +
      "The node runs `dist/nshub agent` and `dist/nshub proxy` (enrollment: namespace `bench`) and, for the comparison, one `haproxy` process. " +
      "Each path has its own, identically wired pod pair A → B on the same bridge (so the paths can be interleaved without re-wiring):",
    "",
    "* **direct**: pods in a namespace that is not enrolled: no rules, no proxy (the physical limit here);",
    "* **nshub**: both pods enrolled through the real CNI ADD → agent → in-pod rules → ZDS → proxy; a connection from A to B goes A's outbound listener (15001) → B's inbound listener (15006) → the server, as in ambient mode (no same-node shortcut);",
    "* **HAProxy**: pods not enrolled; the bench applies the same in-pod rules with nshub's own code (`applyPodRules`) and then changes one rule (below); HAProxy, started in the node netns, binds 15001 and 15006 inside each pod with `bind … namespace <pod netns>` and forwards to the original destination (`server orig 0.0.0.0:0 namespace <pod netns>`: the upstream socket is created inside the pod; HAProxy reads `SO_ORIGINAL_DST` of REDIRECTed connections). Like nshub, connections from A to B pass HAProxy twice (A's outbound, then B's inbound). HAProxy's TCP mode uses its defaults (no `option splice-*`); **HAProxy splice-auto** and **HAProxy splice forced** are two more HAProxy processes, configured the same plus `option splice-auto`, or `option splice-request` + `option splice-response`, each on its own pod pair.",
    "",
    "The mTLS comparison (issue 18) runs on two more virtual nodes joined by a routed fabric namespace; its set-up is described in its own section above.",
    "",
  );
  if (r.rules) {
    out.push(
      "**The one rule difference for HAProxy.** nshub's proxy escapes its own outbound REDIRECT with `SO_MARK 0x539` on its upstream sockets (`-m mark ! --mark 0x539/0xfff`). HAProxy 2.6 cannot mark server-side connections (its `set-mark` actions mark the client-facing socket only), and it must stay root because it calls `setns` for every server connection. So in the HAProxy pods the outbound REDIRECT (nat `NSHUB_OUTPUT`, rule " +
        `${r.rules.position}) also excludes sockets owned by root, and all benchmark clients run as uid 65534 (\`setpriv --reuid=65534 --regid=65534 --clear-groups\`) on every path:`,
      "",
      "```diff",
      `- -A NSHUB_OUTPUT ${r.rules.before}`,
      `+ -A NSHUB_OUTPUT ${r.rules.after}`,
      "```",
      "",
      "Inbound needs no change: HAProxy's (and nshub's) upstream connection to the app in B goes to B's own address over `lo` and is accepted by `! -d 127.0.0.1/32 -o lo -j ACCEPT`. One behavioural difference remains: nshub preserves the client's source address on inbound (`IP_TRANSPARENT` + the 0x111 connmark return path); HAProxy cannot use that return path without a server-side mark, so B's server sees B's own address on the HAProxy path.",
      "",
    );
  }
  if (r.checks.length) {
    out.push(
      "**Path checks (before measuring).** A request from A to B's HTTP server, and the packet counter of A's outbound REDIRECT rule:",
      "",
      table(
        ["path", "client address seen by B's server", "A's outbound REDIRECT packets", "check"],
        r.checks.filter((c) => c.wire === undefined && c.security === undefined).map((c) => [PATH_LABEL[c.path], c.peerSeen, c.redirectPackets === undefined ? "no rules" : String(c.redirectPackets), `${c.ok ? "ok" : "FAILED"}: ${c.note}`]),
      ),
      "",
    );
  }
  out.push(
    `**Measures** (clients in A as uid 65534, servers in B; per repetition the order of the paths rotates; before the first repetition each path gets the same unmeasured warm-up, 2 s of iperf3 and ${p.wrkWarmupSeconds ?? 2} s of wrk, so that nshub's JavaScript is compiled (JIT) before it is measured, and in the relay comparison each restarted proxy gets ${p.wrkWarmupSeconds ?? 2} s of wrk first; JavaScriptCore keeps compiling the per-connection code for about the first 10 s of a connection storm, and a long-running proxy is past that):`,
    "",
    `* throughput: \`iperf3 -c <B> -t ${p.tpSeconds} -O 1 -P 1\` and \`-P 4\` (first second omitted), receiver-side Gb/s; the proxy's CPU time (utime+stime of the nshub proxy / haproxy process) during each run gives CPU-seconds per GB relayed, and iperf3's own CPU report (client + server) the cost of the two ends;`,
    `* latency: \`sockperf ping-pong --tcp -m ${p.msgSize} -t ${p.latSeconds} --full-rtt\` on one established connection (one ${p.msgSize}-byte message in flight); round-trip percentiles as sockperf reports them; **added** latency = path − direct of the same repetition, median over repetitions;`,
    `* connection rate: \`wrk -t1 -c${p.wrkConnections} -d${p.cpsSeconds}s -H 'Connection: close'\` against a tiny HTTP/1.1 server in B (\`scripts/bench-lib/tools/http-server.ts\`, the same on every path, one request per connection, the server closes); requests/s = new connections/s (pods keep the kernel's default sysctls);`,
    `* relays: the nshub path once with each \`proxy.relay\` (splice: socket → pipe → socket inside the kernel on a relay thread; userspace: Bun sockets), the proxy restarted with the other one between runs (\`NSHUB_PROXY_RELAY\`), both orders in turn, ${p.reps} repetitions each: iperf3 \`-P 1\` and \`-P 4\` for ${Math.min(p.tpSeconds, 5)} s, then the sockperf and wrk runs above; the proxy runs its configured relay again afterwards;`,
    `* enrollment: pods in the enrolled namespace added through the full CNI chain, ${p.enrollSeq} one after another, then ${p.enrollConc} at once. The time is \`nshub-cni\`'s own run: the chain entry points to a bash wrapper that takes \`$EPOCHREALTIME\` right before it runs \`dist/nshub-cni\` and right after it exits (exec, Bun start-up, the agent's PodAdd: rules in the pod netns, ZDS AddWorkload with the netns fd, the proxy binding the pod's listeners and acking); the plugin's own \"ADD done\" log field shows the part after its process started. To split the sequential time, the bench also times the plugin process alone (CNI VERSION through the same wrapper), the agent's PodAdd called directly from the bench over the agent's socket (for pods the chain did not enroll), and \`applyPodRules\` alone on the same pods;`,
    `* resync: with ${p.scalePods} more pods enrolled (plus the bench pods), the proxy is stopped (SIGTERM) and started again; the time is from spawning the new process until \`GET /healthz/ready\` answers 200 (polled every 5 ms from the node netns by a poller started before the proxy; the proxy's readiness requires the agent's full snapshot and no pending pod);`,
    `* memory: VmRSS of the proxy (median of 5 readings, 0.2 s apart, after 3 s idle and a full garbage collection in every proxy thread, \`POST /debug/gc\`): fresh with no pod, fresh after the restart with the pods above (per pod = difference / pods), and then with up to ${p.idleConns} idle connections through one pod: from the direct pair's A (not enrolled) into the enrolled B, opened by a Bun client with 32 connects in flight, so each is one relayed connection in the proxy (B's inbound listener; a connection between two enrolled pods of one node passes two relays, A's outbound and B's inbound, and costs twice); each carried a 16-byte hello, then nothing; per connection = difference / the connections that reached the server in B. The count is lowered when the machine's fd limit cannot hold 2 proxy fds per connection (the page says so). Runs before 2026-11-24 evening measured A → B (two relays per connection) and without the garbage collection.`,
    "",
    "Timings are never asserted by tests; this page is the only place they are compared.",
    "",
  );

  // raw runs
  out.push("## All runs", "");
  const loads = (xs: Array<{ load1?: number }>) => xs.map((x) => (x.load1 === undefined ? "?" : fmt(x.load1, 2))).join(", ");
  const rawRows: string[][] = [];
  const rawPaths = ALL_PATHS.filter((x) => (PATHS as readonly AnyPath[]).includes(x) || measured(r, x));
  for (const s of ["1", "4"] as const) {
    for (const x of rawPaths) {
      rawRows.push([
        `throughput ${s}× (Gb/s)`,
        PATH_LABEL[x],
        runsOf(r.throughput[s], x).map((t) => `${fmt(gbps(t), 2)}${t.iperf.retransmits ? ` (${t.iperf.retransmits} retr)` : ""}`).join(", "),
        loads(runsOf(r.throughput[s], x)),
      ]);
    }
  }
  for (const x of rawPaths) {
    rawRows.push([
      "round trip p50 / p99 / p99.9 (µs)",
      PATH_LABEL[x],
      runsOf(r.latency, x).map((l) => `${fmt(l.sockperf.p50Us, 1)} / ${fmt(l.sockperf.p99Us, 1)} / ${fmt(l.sockperf.p999Us, 1)}`).join("; "),
      loads(runsOf(r.latency, x)),
    ]);
  }
  for (const x of rawPaths) {
    rawRows.push([
      "connections/s",
      PATH_LABEL[x],
      runsOf(r.cps, x)
        .map((c) => {
          const e = c.wrk.errors.connect + c.wrk.errors.write + c.wrk.errors.timeout + c.wrk.non2xx3xx;
          return `${fmt(c.wrk.requestsPerSecond, 0)}${e ? ` (${e} errors)` : ""}`;
        })
        .join(", "),
      loads(runsOf(r.cps, x)),
    ]);
  }
  out.push(table(["measure", "path", "runs in order of repetition", "1-min load average at each run's start"], rawRows), "");
  if (r.errors.length) out.push("## Errors during the run", "", ...r.errors.map((e) => `* ${e.replace(/\n/g, " ")}`), "");
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// sections measured by other scripts

/** A section another script measured (scripts/bench-identity.ts), kept across regenerations. */
export const KEPT_SECTION = { begin: "<!-- kept: bench-identity -->", end: "<!-- /kept: bench-identity -->" };

/**
 * `page` with the kept section of `previous` (the page being replaced) put back before
 * "## Method" (or at the end): a full `scripts/bench` run does not measure it, so it must not
 * erase it. A page without one is returned unchanged.
 */
export function carryOverKept(previous: string | undefined, page: string): string {
  if (!previous || page.includes(KEPT_SECTION.begin)) return page;
  const i = previous.indexOf(KEPT_SECTION.begin);
  const j = previous.indexOf(KEPT_SECTION.end, i);
  if (i < 0 || j < 0) return page;
  const block = previous.slice(i, j + KEPT_SECTION.end.length) + "\n\n";
  const at = page.indexOf("## Method");
  return at < 0 ? `${page.trimEnd()}\n\n${block}` : page.slice(0, at) + block + page.slice(at);
}
