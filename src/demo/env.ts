// The ground `nshub demo` stands on: which binary runs the daemons, what the machine must have,
// the state file that lets `nshub demo --down` (a new process) find a demo kept with --keep,
// detached daemons that outlive the demo process, and the teardown of a recorded demo.
//
// Layout: every demo has a work dir /run/nshub-demo/demo-XXXXXX/ holding its config, sockets,
// agent state, logs and `demo.json` (this module's DemoRecord). Its namespaces come from
// src/sim with the prefix "nshd-" (tag nshd-<6 hex>), distinct from the tests' "nsh-".
import { existsSync, openSync, closeSync, readFileSync, readdirSync, writeFileSync, renameSync, statSync, constants as fsConstants, accessSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, rmdir } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { STD_CNI_DIR } from "../sim/cni-runner.ts";
import { listNetns, NETNS_DIR } from "../sim/namespace.ts";
import { run, type ExecResult } from "../sim/process.ts";
import { MARKER_DIR } from "../sim/stale.ts";

/** netsim prefix of every demo namespace (`nshd-<6 hex>-node`, `-p1`, …). */
export const DEMO_PREFIX = "nshd-";
/** Work dirs and state files of demos. */
export const DEMO_ROOT = "/run/nshub-demo";
export const STATE_FILE_NAME = "demo.json";

// ---------------------------------------------------------------------------------------------
// the binary

export interface DemoBinary {
  /** The nshub executable that runs the agent, the proxy, the CNI plugin and the web server. */
  exe: string;
  /** True when the demo itself runs from source (`bun src/main.ts demo`): exe is then dist/nshub. */
  fromSource: boolean;
}

/** Whether this process is the compiled single binary (its modules live in Bun's /$bunfs). */
export function isCompiled(): boolean {
  return Bun.main.startsWith("/$bunfs/") || import.meta.path.startsWith("/$bunfs/");
}

export function resolveBinary(): DemoBinary {
  if (isCompiled()) return { exe: process.execPath, fromSource: false };
  return { exe: resolve(import.meta.dir, "../../dist/nshub"), fromSource: true };
}

/** A path as the operator would type it: relative to the cwd when under it, else absolute. */
export function displayPath(p: string): string {
  const rel = relative(process.cwd(), p);
  return rel && !rel.startsWith("..") && !rel.startsWith("/") ? rel : p;
}

// ---------------------------------------------------------------------------------------------
// prerequisites

/** Commands the demo and the daemons run, and the Debian package that has each. */
export const REQUIRED_TOOLS: ReadonlyArray<readonly [tool: string, pkg: string]> = [
  ["ip", "iproute2"],
  ["ss", "iproute2"],
  ["iptables", "iptables"],
  ["iptables-save", "iptables"],
  ["iptables-restore", "iptables"],
  ["ipset", "ipset"],
  ["nsenter", "util-linux"],
  ["socat", "socat"],
  ["curl", "curl"],
  ["iperf3", "iperf3"],
];
export const REQUIRED_CNI_PLUGINS = ["loopback", "bridge", "host-local"] as const;

export interface Missing {
  what: string;
  pkg?: string;
}

/** Everything the demo needs that this machine lacks (empty = good to go). */
export function missingPrerequisites(bin: DemoBinary): Missing[] {
  const missing: Missing[] = [];
  if (process.getuid?.() !== 0) missing.push({ what: "root (the demo creates network namespaces): run it with sudo" });
  for (const [tool, pkg] of REQUIRED_TOOLS) if (!Bun.which(tool, { PATH: toolPath() })) missing.push({ what: `the command ${tool}`, pkg });
  for (const p of REQUIRED_CNI_PLUGINS) {
    if (!isExecutable(join(STD_CNI_DIR, p))) missing.push({ what: `the CNI plugin ${STD_CNI_DIR}/${p}`, pkg: "containernetworking-plugins" });
  }
  if (!isExecutable(bin.exe)) missing.push({ what: `${displayPath(bin.exe)} (build it with scripts/build)` });
  if (!existsSync(NETNS_DIR) && !canCreate(NETNS_DIR)) missing.push({ what: `${NETNS_DIR} (network namespaces)` });
  return missing;
}

/** PATH including the sbin dirs, which a sudo'ed or minimal environment may lack. */
export function toolPath(): string {
  const have = (process.env.PATH ?? "").split(":").filter(Boolean);
  for (const d of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]) if (!have.includes(d)) have.push(d);
  return have.join(":");
}

function isExecutable(p: string): boolean {
  try {
    accessSync(p, fsConstants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function canCreate(dir: string): boolean {
  try {
    return statSync(resolve(dir, "..")).isDirectory();
  } catch {
    return false;
  }
}

export function missingText(missing: readonly Missing[]): string {
  const pkgs = [...new Set(missing.flatMap((m) => (m.pkg ? [m.pkg] : [])))];
  const lines = missing.map((m) => `  - ${m.what}${m.pkg ? ` (Debian package ${m.pkg})` : ""}`);
  if (pkgs.length) lines.push("", `install them with:  apt-get install ${pkgs.join(" ")}`, "or run the demo through scripts/demo, which installs what is missing and builds nshub first");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// processes

/** /proc/<pid>/stat field 22 (start time in ticks), to tell a recycled pid from ours; null if gone. */
export function pidStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** The process still runs (not a zombie) and is the one recorded (same start time). */
export function alive(pid: number, start: string | null): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (rest[0] === "Z" || rest[0] === "X") return false;
    return start === null || rest[19] === start;
  } catch {
    return false;
  }
}

export interface RecordedProcess {
  /** What it is: agent, proxy, web-http, web-echo, web-iperf3. */
  role: string;
  pid: number;
  start: string | null;
  netns: string;
  argv: string[];
  log: string;
}

/** The environment of every process the demo starts: no NSHUB_* from the operator's shell. */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("NSHUB_")) env[k] = v;
  env.PATH = toolPath();
  return { ...env, ...extra };
}

/**
 * Starts `argv` inside the named netns as its own session (setsid), stdout+stderr appended to
 * `log`, stdin /dev/null. It survives the demo process (so --keep can leave it running) and a
 * Ctrl-C in the demo's terminal does not reach it: the demo stops it itself, in order.
 * `ip netns exec` execs the command, so the pid is the command's own.
 */
export function spawnDetached(role: string, netns: string, argv: string[], log: string, env: Record<string, string>): RecordedProcess {
  const fd = openSync(log, "a", 0o640);
  try {
    const full = ["ip", "netns", "exec", netns, ...argv];
    const proc = Bun.spawn(full, { stdio: ["ignore", fd, fd], env, detached: true });
    proc.unref();
    return { role, pid: proc.pid, start: pidStart(proc.pid), netns, argv, log };
  } finally {
    closeSync(fd);
  }
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL; resolves once every process is gone. */
export async function stopProcesses(procs: readonly { pid: number; start: string | null }[], graceMs = 5000): Promise<void> {
  const live = procs.filter((p) => alive(p.pid, p.start));
  for (const p of live) signal(p.pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (live.some((p) => alive(p.pid, p.start)) && Date.now() < deadline) await Bun.sleep(25);
  for (const p of live) if (alive(p.pid, p.start)) signal(p.pid, "SIGKILL");
  const hard = Date.now() + 2000;
  while (live.some((p) => alive(p.pid, p.start)) && Date.now() < hard) await Bun.sleep(25);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** The last `n` lines of a log file (for error messages). */
export function tail(path: string, n = 15): string {
  try {
    const lines = readFileSync(path, "utf8").trimEnd().split("\n");
    return lines.slice(-n).join("\n");
  } catch {
    return "(no log)";
  }
}

// ---------------------------------------------------------------------------------------------
// the state file

export interface DemoRecord {
  version: 1;
  /** The `nshub demo` process that created it, and its start time. */
  ownerPid: number;
  ownerStart: string | null;
  /** Left running on purpose (--keep): only `nshub demo --down` removes it. */
  kept: boolean;
  startedAt: string;
  workDir: string;
  exe: string;
  /** netsim tag (nshd-<6 hex>), its temp dir and its owner marker; set once the node exists. */
  tag?: string;
  nodeNetns?: string;
  simTmpDir?: string;
  pods: { namespace: string; name: string; netns: string; ip: string; uid: string }[];
  processes: RecordedProcess[];
}

export async function createWorkDir(): Promise<string> {
  await mkdir(DEMO_ROOT, { recursive: true, mode: 0o755 });
  return mkdtemp(join(DEMO_ROOT, "demo-"));
}

/** Written atomically (temp file + rename): a reader never sees half a record. */
export function writeRecord(rec: DemoRecord): void {
  const path = join(rec.workDir, STATE_FILE_NAME);
  writeFileSync(`${path}.tmp`, JSON.stringify(rec, null, 2) + "\n");
  renameSync(`${path}.tmp`, path);
}

export async function readRecords(): Promise<DemoRecord[]> {
  let dirs: string[];
  try {
    dirs = await readdir(DEMO_ROOT);
  } catch {
    return [];
  }
  const out: DemoRecord[] = [];
  for (const d of dirs.sort()) {
    if (!/^demo-[A-Za-z0-9]+$/.test(d)) continue;
    try {
      const rec = JSON.parse(await readFile(join(DEMO_ROOT, d, STATE_FILE_NAME), "utf8")) as DemoRecord;
      if (rec.version === 1 && rec.workDir === join(DEMO_ROOT, d)) out.push(rec);
    } catch {
      // a dir without a readable record: its owner died before writing one; removeOrphanDirs
      out.push({ version: 1, ownerPid: 0, ownerStart: null, kept: false, startedAt: "", workDir: join(DEMO_ROOT, d), exe: "", pods: [], processes: [] });
    }
  }
  return out;
}

export type RecordStatus = "running" | "kept" | "crashed";

/** running: its demo process still runs it; kept: --keep, owner gone; crashed: owner gone without teardown. */
export function recordStatus(rec: DemoRecord): RecordStatus {
  if (rec.ownerPid > 0 && alive(rec.ownerPid, rec.ownerStart)) return "running";
  return rec.kept ? "kept" : "crashed";
}

// ---------------------------------------------------------------------------------------------
// teardown of a recorded demo (--down, and stale ones at start)

export interface TeardownReport {
  namespaces: string[];
  processes: number;
  errors: string[];
}

/** Namespaces of a netsim tag (the node and its pods). */
export async function tagNamespaces(tag: string): Promise<string[]> {
  return (await listNetns()).filter((n) => n.startsWith(`${tag}-`));
}

/**
 * Removes everything a recorded demo made, without its NetSim object: the daemons and servers
 * (SIGTERM, then SIGKILL), whatever else still runs in its namespaces, the namespaces (pods
 * first, which takes their veths along; then the node with its bridge and rules), netsim's temp
 * dir and marker, and the work dir. Every step is tried; errors are collected.
 */
export async function teardownRecord(rec: DemoRecord): Promise<TeardownReport> {
  const report: TeardownReport = { namespaces: [], processes: 0, errors: [] };
  const step = async (what: string, f: () => Promise<unknown>) => {
    try {
      await f();
    } catch (e) {
      report.errors.push(`${what}: ${(e as Error).message}`);
    }
  };
  // Servers first, then the proxy (it drains), then the agent.
  const order = (r: string) => (r === "agent" ? 2 : r === "proxy" ? 1 : 0);
  for (const rank of [0, 1, 2]) {
    const group = rec.processes.filter((p) => order(p.role) === rank);
    report.processes += group.filter((p) => alive(p.pid, p.start)).length;
    await step("stopping processes", () => stopProcesses(group));
  }
  if (rec.tag) {
    const names = await tagNamespaces(rec.tag);
    names.sort((a, b) => Number(a.endsWith("-node")) - Number(b.endsWith("-node")));
    for (const name of names) {
      await step(`removing netns ${name}`, async () => {
        await deleteNetnsHard(name);
        report.namespaces.push(name);
      });
    }
    if (rec.simTmpDir && rec.simTmpDir.includes(`nshub-netsim-${rec.tag}-`)) await step("removing the node's temp dir", () => rm(rec.simTmpDir!, { recursive: true, force: true }));
    await step("removing the netsim marker", () => rm(join(MARKER_DIR, `${rec.tag}.json`), { force: true }));
  }
  if (rec.workDir.startsWith(`${DEMO_ROOT}/demo-`)) await step("removing the work dir", () => rm(rec.workDir, { recursive: true, force: true }));
  await rmdir(DEMO_ROOT).catch(() => undefined); // only when empty
  return report;
}

/** Kills what still runs in a namespace, then deletes it (a missing one is fine). */
export async function deleteNetnsHard(name: string): Promise<void> {
  if (!(await listNetns()).includes(name)) return;
  const pids = (await run(["ip", "netns", "pids", name])).stdout
    .split("\n")
    .map((l) => Number(l.trim()))
    .filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid);
  await stopProcesses(pids.map((pid) => ({ pid, start: null })), 1000);
  const r: ExecResult = await run(["ip", "netns", "del", name]);
  if (r.code !== 0 && (await listNetns()).includes(name)) throw new Error(`ip netns del ${name}: ${r.stderr.trim()}`);
}

/** Processes whose command line mentions `needle` (e.g. a demo's work dir), except this one. */
export function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmd.includes(needle) && alive(Number(d), null)) out.push(Number(d));
    } catch {
      // gone
    }
  }
  return out;
}
