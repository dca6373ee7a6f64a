// The ground `nshub demo` stands on: which binary runs the daemons, what the machine must have,
// and detached daemons that outlive the demo process. The state file and the teardown of a
// recorded demo are in state.ts.
//
// Its namespaces come from src/sim with the prefix "nshd-" (tag nshd-<6 hex>), distinct from the
// tests' "nsh-"; its files live in a work dir under /run/nshub-demo/ (see state.ts).
import { existsSync, openSync, closeSync, readFileSync, statSync, constants as fsConstants, accessSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { STD_CNI_DIR } from "../sim/cni-runner.ts";
import { NETNS_DIR } from "../sim/namespace.ts";

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
  ["tcpdump", "tcpdump"],
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
  /** What it is: agent, proxy, ca, web-http, web-echo, web-iperf3, backend-http, backend-echo. */
  role: string;
  /** The node it runs on ("node-1", "node-2"). */
  node?: string;
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
export function spawnDetached(role: string, netns: string, argv: string[], log: string, env: Record<string, string>, node?: string): RecordedProcess {
  const fd = openSync(log, "a", 0o640);
  try {
    const full = ["ip", "netns", "exec", netns, ...argv];
    const proc = Bun.spawn(full, { stdio: ["ignore", fd, fd], env, detached: true });
    proc.unref();
    return { role, ...(node ? { node } : {}), pid: proc.pid, start: pidStart(proc.pid), netns, argv, log };
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
