// Parsers of the tools' outputs the benchmark reads (pure; unit-tested in
// test/unit/bench-parse.test.ts). Each throws a BenchParseError naming the tool when the output is
// not what a successful run prints, so a broken run is never reported as a number.

export class BenchParseError extends Error {
  override name = "BenchParseError";
}

// ---------------------------------------------------------------------------------------------
// iperf3 -J

export interface Iperf3Result {
  /** Receiver-side goodput over the whole test, bits/s (sum over streams). */
  bitsPerSecond: number;
  /** Sender-side goodput, bits/s. */
  sentBitsPerSecond: number;
  /** TCP retransmits reported by the sender (undefined when iperf3 could not read them). */
  retransmits: number | undefined;
  /** Parallel streams the test used. */
  streams: number;
  seconds: number;
  /** Client-side (host_total) and server-side CPU utilisation, percent, as iperf3 reports them. */
  cpuClient: number | undefined;
  cpuServer: number | undefined;
}

export function parseIperf3Json(text: string): Iperf3Result {
  let j: any;
  try {
    j = JSON.parse(text);
  } catch {
    throw new BenchParseError(`iperf3: output is not JSON: ${JSON.stringify(text.slice(0, 200))}`);
  }
  if (typeof j?.error === "string") throw new BenchParseError(`iperf3: ${j.error}`);
  const recv = j?.end?.sum_received;
  const sent = j?.end?.sum_sent;
  if (typeof recv?.bits_per_second !== "number" || typeof sent?.bits_per_second !== "number") {
    throw new BenchParseError("iperf3: no end.sum_received / end.sum_sent in the JSON output");
  }
  return {
    bitsPerSecond: recv.bits_per_second,
    sentBitsPerSecond: sent.bits_per_second,
    retransmits: typeof sent.retransmits === "number" ? sent.retransmits : undefined,
    streams: Number(j?.start?.test_start?.num_streams ?? (Array.isArray(j?.end?.streams) ? j.end.streams.length : NaN)),
    seconds: Number(recv.seconds ?? sent.seconds ?? NaN),
    cpuClient: typeof j?.end?.cpu_utilization_percent?.host_total === "number" ? j.end.cpu_utilization_percent.host_total : undefined,
    cpuServer: typeof j?.end?.cpu_utilization_percent?.remote_total === "number" ? j.end.cpu_utilization_percent.remote_total : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// sockperf ping-pong

export interface SockperfResult {
  /** Whether the numbers are round-trip times (`--full-rtt`) rather than half round trips. */
  roundTrip: boolean;
  /** Average, µs. */
  avgUs: number;
  observations: number;
  /** Percentiles in µs keyed by their label as printed: "50.000", "99.000", "99.900", … */
  percentilesUs: Record<string, number>;
  p50Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
  minUs: number;
  /** Messages sent over the whole run, warm-up included ("[Total Run] … SentMessages="). */
  sentMessages: number | undefined;
}

// sockperf colours some lines (ESC[2;35m … ESC[0m) even when writing to a pipe.
const ANSI = /\x1b\[[0-9;]*m/g;

export function parseSockperf(text: string): SockperfResult {
  const t = text.replace(ANSI, "");
  const percentilesUs: Record<string, number> = {};
  for (const m of t.matchAll(/--->\s+percentile\s+([0-9.]+)\s*=\s*([0-9.]+)/g)) percentilesUs[m[1]!] = Number(m[2]);
  const num = (re: RegExp, what: string): number => {
    const m = re.exec(t);
    if (!m) throw new BenchParseError(`sockperf: no ${what} in the output: ${JSON.stringify(t.slice(-400))}`);
    return Number(m[1]);
  };
  const roundTrip = /Round trip is/.test(t) || /avg-rtt=/.test(t);
  const avgUs = num(/avg-(?:rtt|latency|lat)=\s*([0-9.]+)/, "average");
  const pick = (label: string) => {
    const v = percentilesUs[label];
    if (v === undefined) throw new BenchParseError(`sockperf: no percentile ${label} in the output`);
    return v;
  };
  return {
    roundTrip,
    avgUs,
    observations: num(/Total\s+(\d+)\s+observations/, "observation count"),
    percentilesUs,
    p50Us: pick("50.000"),
    p99Us: pick("99.000"),
    p999Us: pick("99.900"),
    maxUs: num(/<MAX> observation\s*=\s*([0-9.]+)/, "<MAX> observation"),
    minUs: num(/<MIN> observation\s*=\s*([0-9.]+)/, "<MIN> observation"),
    sentMessages: ((m) => (m ? Number(m[1]) : undefined))(/\[Total Run\].*?SentMessages=(\d+)/.exec(t)),
  };
}

// ---------------------------------------------------------------------------------------------
// wrk

export interface WrkResult {
  requests: number;
  seconds: number;
  requestsPerSecond: number;
  errors: { connect: number; read: number; write: number; timeout: number };
  /** Responses with a status other than 2xx/3xx. */
  non2xx3xx: number;
}

export function parseWrk(text: string): WrkResult {
  const total = /(\d+) requests in ([0-9.]+)(ms|s|m)\b/.exec(text);
  const rps = /Requests\/sec:\s+([0-9.]+)/.exec(text);
  if (!total || !rps) throw new BenchParseError(`wrk: no request summary in the output: ${JSON.stringify(text.slice(-400))}`);
  const unit = total[3] === "ms" ? 1e-3 : total[3] === "m" ? 60 : 1;
  const se = /Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const non = /Non-2xx or 3xx responses:\s+(\d+)/.exec(text);
  return {
    requests: Number(total[1]),
    seconds: Number(total[2]) * unit,
    requestsPerSecond: Number(rps[1]),
    errors: {
      connect: se ? Number(se[1]) : 0,
      read: se ? Number(se[2]) : 0,
      write: se ? Number(se[3]) : 0,
      timeout: se ? Number(se[4]) : 0,
    },
    non2xx3xx: non ? Number(non[1]) : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// the CNI timing wrapper's log (see scripts/bench.ts: one line per plugin run)

export interface CniTiming {
  command: string;
  containerId: string;
  /** Wall time from just before the plugin was exec'd to its exit, ms. */
  ms: number;
  exitCode: number;
  /** Start, seconds since the epoch. */
  start: number;
}

/** Lines `<CNI_COMMAND> <start EPOCHREALTIME> <end EPOCHREALTIME> <exit code> <CNI_CONTAINERID or ->`. */
export function parseCniTimingLog(text: string): CniTiming[] {
  const out: CniTiming[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const f = line.trim().split(/\s+/);
    if (f.length < 5) throw new BenchParseError(`CNI timing log: bad line ${JSON.stringify(line)}`);
    const [command, s0, s1, rc, containerId] = f as [string, string, string, string, string];
    const start = Number(s0.replace(",", "."));
    const end = Number(s1.replace(",", "."));
    if (!Number.isFinite(start) || !Number.isFinite(end)) throw new BenchParseError(`CNI timing log: bad times in ${JSON.stringify(line)}`);
    out.push({ command, containerId, ms: (end - start) * 1000, exitCode: Number(rc), start });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// /proc

/** VmRSS from /proc/<pid>/status, in KiB. */
export function parseVmRssKiB(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new BenchParseError("no VmRSS line in /proc/<pid>/status");
  return Number(m[1]);
}

/** utime and stime (clock ticks) from /proc/<pid>/stat. */
export function parseProcStatTimes(stat: string): { utime: number; stime: number; cutime: number; cstime: number } {
  // comm (field 2) may contain spaces and parentheses: split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state) → utime (field 14) is rest[11], stime (15) is rest[12], and the
  // waited-for children's cutime (16) and cstime (17) follow.
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(rest[i]));
  if (![utime, stime, cutime, cstime].every(Number.isFinite)) throw new BenchParseError("cannot read the CPU times from /proc/<pid>/stat");
  return { utime: utime!, stime: stime!, cutime: cutime!, cstime: cstime! };
}

/** The machine's CPU time from /proc/stat's "cpu" line (all CPUs, clock ticks): busy and total. */
export function parseProcStatCpu(text: string): { busy: number; total: number } {
  const line = text.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) throw new BenchParseError("no cpu line in /proc/stat");
  // user nice system idle iowait irq softirq steal …
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - f[3]! - f[4]!, total };
}

// ---------------------------------------------------------------------------------------------
// perf / strace summaries (the profile phase)

/** Shares (percent) of perf samples by shared object, from `perf report --sort dso` lines. */
export function dsoShares(byDso: string): { kernel: number; libc: number; bun: number; jit: number; other: number } {
  const out = { kernel: 0, libc: 0, bun: 0, jit: 0, other: 0 };
  for (const line of byDso.split("\n")) {
    const m = /^\s*([0-9.]+)%\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    const pct = Number(m[1]);
    const dso = m[2]!;
    if (dso.includes("kernel")) out.kernel += pct;
    else if (/^libc[.-]/.test(dso)) out.libc += pct;
    else if (/^\[JIT\]/.test(dso)) out.jit += pct;
    else if (/^(bun|bun\.exe|nshub)$/.test(dso)) out.bun += pct;
    else out.other += pct;
  }
  return out;
}

/** Calls per syscall from `strace -c` output. */
export function straceCalls(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    // % time  seconds  usecs/call  calls  [errors]  syscall
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || !/^[0-9.]+$/.test(f[0]!)) continue;
    const name = f[f.length - 1]!;
    if (name === "total") continue;
    out[name] = Number(f[3]);
  }
  return out;
}

/**
 * Kernel time by syscall from `perf report --children --sort sym -g none`: each
 * `__x64_sys_<name>` / `__do_sys_<name>` line's children share (the syscall and everything it
 * ran inline, softirq included), the larger of the two per name; largest first.
 */
export function perfSyscallShares(text: string): Array<{ name: string; pct: number }> {
  const best = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^\s*([0-9.]+)%\s+[0-9.]+%\s+\[k\]\s+(?:__x64_sys_|__do_sys_)(\w+)\s*$/.exec(line);
    if (!m) continue;
    const pct = Number(m[1]);
    if (pct > (best.get(m[2]!) ?? 0)) best.set(m[2]!, pct);
  }
  return [...best].map(([name, pct]) => ({ name, pct })).sort((a, b) => b.pct - a.pct);
}

// ---------------------------------------------------------------------------------------------
// Prometheus text (the proxy's /metrics)

/** The sum of every sample of metric `name` (all label sets); undefined when there is none. */
export function metricSum(text: string, name: string): number | undefined {
  let sum: number | undefined;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || (line[name.length] !== "{" && line[name.length] !== " ")) continue;
    const v = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(v)) sum = (sum ?? 0) + v;
  }
  return sum;
}

/**
 * Connections the proxy opened as `reporter` ("destination": inbound legs, "source": outbound),
 * by security: `connection_security_policy="mutual_tls"` and anything else (plaintext), from
 * `istio_tcp_connections_opened_total`.
 */
export function securityCounts(text: string, reporter: "source" | "destination"): { mutualTls: number; plaintext: number } {
  const out = { mutualTls: 0, plaintext: 0 };
  for (const line of text.split("\n")) {
    if (!line.startsWith("istio_tcp_connections_opened_total{") || !line.includes(`reporter="${reporter}"`)) continue;
    const v = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (!Number.isFinite(v)) continue;
    if (line.includes('connection_security_policy="mutual_tls"')) out.mutualTls += v;
    else out.plaintext += v;
  }
  return out;
}
