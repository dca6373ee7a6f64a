// Process and machine facts for the benchmark: RSS and CPU time of a process, fd counts, versions.
import { readdirSync, readFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { run } from "../../src/sim/index.ts";
import { parseProcStatCpu, parseProcStatTimes, parseVmRssKiB } from "./parse.ts";

export const CLK_TCK = 100; // Linux USER_HZ on every architecture Debian ships

export function rssKiB(pid: number): number {
  return parseVmRssKiB(readFileSync(`/proc/${pid}/status`, "utf8"));
}

/** CPU seconds (user, system) a process used so far (all its threads). */
export function cpuSeconds(pid: number): { user: number; sys: number } {
  const t = parseProcStatTimes(readFileSync(`/proc/${pid}/stat`, "utf8"));
  return { user: t.utime / CLK_TCK, sys: t.stime / CLK_TCK };
}

/** One sample of every thread of a process: tid → its name and CPU seconds. */
export type ThreadCpuSample = Map<string, { name: string; user: number; sys: number }>;

/** Empty when the process is gone. */
export function threadCpuSample(pid: number): ThreadCpuSample {
  const out: ThreadCpuSample = new Map();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
      const t = parseProcStatTimes(readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8"));
      out.set(tid, { name, user: t.utime / CLK_TCK, sys: t.stime / CLK_TCK });
    } catch {
      // the thread ended while we read it
    }
  }
  return out;
}

/**
 * CPU seconds per thread name between two samples (threads of one name summed; a thread that
 * started in between counts whole, one that ended in between is missing).
 */
export function threadCpuByName(before: ThreadCpuSample, after: ThreadCpuSample): Record<string, { user: number; sys: number }> {
  const out: Record<string, { user: number; sys: number }> = {};
  for (const [tid, a] of after) {
    const b = before.get(tid);
    const o = (out[a.name] ??= { user: 0, sys: 0 });
    o.user += a.user - (b?.user ?? 0);
    o.sys += a.sys - (b?.sys ?? 0);
  }
  return out;
}

/** CPU seconds of `pid` itself plus its exited, waited-for children (the tools it spawns). */
export function cpuWithChildren(pid: number): number {
  const t = parseProcStatTimes(readFileSync(`/proc/${pid}/stat`, "utf8"));
  return (t.utime + t.stime + t.cutime + t.cstime) / CLK_TCK;
}

/** The machine's busy and total CPU seconds so far (all CPUs). */
export function machineCpu(): { busySec: number; totalSec: number } {
  const c = parseProcStatCpu(readFileSync("/proc/stat", "utf8"));
  return { busySec: c.busy / CLK_TCK, totalSec: c.total / CLK_TCK };
}

export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

export function threadCount(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).length;
}

/** Median RSS over `samples` readings `intervalMs` apart (GC and allocator noise). */
export async function sampleRssKiB(pid: number, samples = 5, intervalMs = 200): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < samples; i++) {
    xs.push(rssKiB(pid));
    if (i < samples - 1) await Bun.sleep(intervalMs);
  }
  xs.sort((a, b) => a - b);
  return xs[xs.length >> 1]!;
}

export interface MachineInfo {
  cpuModel: string;
  nproc: number;
  memoryGiB: number;
  kernel: string;
  os: string;
  bun: string;
  haproxy: string;
  iperf3: string;
  sockperf: string;
  wrk: string;
  iptables: string;
  nshubCommit: string;
  nshubDirty: boolean;
}

async function firstLine(argv: string[], re?: RegExp): Promise<string> {
  const r = await run(argv).catch(() => ({ code: 1, stdout: "", stderr: "" }));
  const text = (r.stdout + "\n" + r.stderr).replace(/\x1b\[[0-9;]*m/g, "");
  if (re) return re.exec(text)?.[1]?.trim() ?? "unknown";
  return text.split("\n").find((l) => l.trim() !== "")?.trim() ?? "unknown";
}

export async function machineInfo(repo: string, bunPath: string): Promise<MachineInfo> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  const osRelease = readFileSync("/etc/os-release", "utf8");
  const commit = await firstLine(["git", "-C", repo, "rev-parse", "--short", "HEAD"]);
  const dirty = (await run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"]).catch(() => ({ stdout: "" }))).stdout.trim() !== "";
  return {
    cpuModel: model,
    nproc: Number((await firstLine(["nproc"])) || cpus().length),
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: await firstLine(["uname", "-r"]),
    os: /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(osRelease)?.[1] ?? "unknown",
    bun: await firstLine([bunPath, "--version"]),
    haproxy: await firstLine(["haproxy", "-v"], /HAProxy version (\S+)/),
    iperf3: await firstLine(["iperf3", "--version"], /iperf (\S+)/),
    sockperf: await firstLine(["sockperf", "--version"], /version (\S+)/),
    wrk: await firstLine(["wrk", "--version"], /wrk (\S+)/),
    iptables: await firstLine(["iptables", "--version"]),
    nshubCommit: commit,
    nshubDirty: dirty,
  };
}
