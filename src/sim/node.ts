// netsim: a virtual Kubernetes node built from network namespaces, for netns tests, `nshub demo` and the benchmarks.
//
// See /work/shared/TESTING.md ("The virtual node"). One `NetSim` is one node:
//
//   * the node is a network namespace (`ip netns add <tag>-node`) with loopback up and a Linux
//     bridge (`<tag>-br`), and NO link to the machine's real network: no uplink, and nothing in
//     the root namespace is ever touched (no routes, no forwarding, no iptables);
//   * each pod is a namespace of its own (`<tag>-p<N>`), wired to the node's bridge by the REAL
//     CNI plugins from /usr/lib/cni (`loopback`, then `bridge` with `host-local` IPAM, then any
//     extra chained plugins such as `nshub-cni`), invoked exactly as a container runtime invokes
//     them: CNI_* environment, network config on stdin, each plugin's result handed to the next as
//     `prevResult`. The plugins run inside the node namespace, because `bridge` creates the bridge
//     and the host-side veth in the namespace it runs in: that namespace plays the host.
//
// `tag` is `nsh-<6 hex>` (random per instance), so several instances, in one process or in
// several, run side by side. Everything is removed by `destroy()`, which is safe to call after a
// failure and more than once. `cleanupStale()` removes what crashed runs left behind.
//
// Only `ip`, `ss` and the CNI plugins are run, always as argv arrays (never a shell string).

import { writeStdin } from "../util/stdin.ts";
import { OutputTail } from "./output-tail.ts";
import { randomBytes, randomUUID } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

// ---------------------------------------------------------------------------------------------
// constants

/** Where `ip netns add` bind-mounts named namespaces. */
export const NETNS_DIR = "/var/run/netns";
/** Debian's containernetworking-plugins. */
export const STD_CNI_DIR = "/usr/lib/cni";
/** One owner marker per harness instance lives here (see `cleanupStale`). */
export const MARKER_DIR = "/run/nshub-test";
/** CNI spec version the harness speaks (the plugins support it, Debian 12 ships v1.1.1). */
export const CNI_VERSION = "1.0.0";
/** Default naming prefix; the instance tag is `<prefix><6 hex>`. */
export const DEFAULT_PREFIX = "nsh-";
/** Namespaces of unknown ownership older than this are considered leftovers of a crashed run. */
export const STALE_AGE_MS = 10 * 60_000;

const IFNAMSIZ_MAX = 15; // Linux interface names: 15 chars + NUL
const TMP_PREFIX = "nshub-netsim-";
const POD_IFNAME = "eth0";
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
const DEFAULT_PLUGIN_TIMEOUT_MS = 30_000;
const OUTPUT_CAP = 4 << 20; // spawned processes: keep at most the last 4 MiB of each stream

// ---------------------------------------------------------------------------------------------
// errors

/** Any failure of the harness itself (a command it ran failed, a wait timed out, …). */
export class NetsimError extends Error {
  override name = "NetsimError";
}

/** A CNI plugin failed: carries the plugin, the CNI command, and the plugin's JSON error. */
export class CniError extends Error {
  override name = "CniError";
  constructor(
    /** The plugin's `type`, i.e. the binary the harness invoked. */
    readonly plugin: string,
    readonly command: CniCommand,
    /** CNI error code from the plugin's stdout JSON; undefined if it printed no valid error. */
    readonly code: number | undefined,
    readonly msg: string,
    readonly details: string | undefined,
    readonly exitCode: number,
    readonly stderr: string,
  ) {
    const codeText = code === undefined ? "no CNI error code" : `code ${code}`;
    const detailText = details ? ` (${details})` : "";
    const stderrText = stderr.trim() ? `; stderr: ${stderr.trim()}` : "";
    super(`CNI ${command} failed in plugin "${plugin}" (${codeText}, exit ${exitCode}): ${msg}${detailText}${stderrText}`);
  }
}

// ---------------------------------------------------------------------------------------------
// running commands (argv only)

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Written to the command's stdin; stdin is closed (empty) otherwise. */
  stdin?: string | Uint8Array;
  /** Full environment for the command (default: this process's environment). */
  env?: Record<string, string | undefined>;
  /** Kill (SIGKILL) after this long; default 30 s. The result then has code 128+9. */
  timeoutMs?: number;
}

/** Run argv to completion and collect its output. Never throws for a non-zero exit. */
export async function run(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  // Input through a pipe (see writeStdin).
  const proc = Bun.spawn([...argv], {
    stdin: opts.stdin === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: opts.env ?? process.env,
    timeout: opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
    killSignal: "SIGKILL",
  });
  if (opts.stdin !== undefined) await writeStdin(proc, opts.stdin);
  const [stdout, stderr, exited] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (proc.signalCode !== null) {
    // Killed (our timeout or someone else): report it like a shell would, and say so.
    return { code: exitCodeOf(proc), stdout, stderr: `${stderr}[netsim: killed by ${proc.signalCode}]\n` };
  }
  return { code: exited, stdout, stderr };
}

/** Like `run`, but throws a NetsimError naming the command when it exits non-zero. */
export async function runOrThrow(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new NetsimError(`command failed (exit ${r.code}): ${argv.join(" ")}\n${r.stderr.trim()}`);
  }
  return r;
}

function exitCodeOf(proc: Subprocess<any, any, any>): number {
  if (proc.exitCode !== null) return proc.exitCode;
  const sig = proc.signalCode;
  const num = typeof sig === "number" ? sig : sig ? (SIGNAL_NUMBERS[sig] ?? 0) : 0;
  return 128 + num;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

// ---------------------------------------------------------------------------------------------
// long-running processes

export interface SpawnOptions {
  /** Full environment (default: this process's environment). */
  env?: Record<string, string | undefined>;
  /** Give the process a writable stdin (`proc.stdin`); otherwise stdin is /dev/null. */
  stdin?: boolean;
}

type SpawnedProc = Subprocess<"pipe" | "ignore", "pipe", "pipe">;

/**
 * A process started inside a namespace. Its stdout/stderr are drained continuously into memory
 * (so a chatty server never blocks on a full pipe) and can be read or waited on. It is stopped
 * when its pod is deleted or the harness is destroyed.
 */
export class SimProcess {
  private readonly out = new OutputTail(OUTPUT_CAP);
  private readonly err = new OutputTail(OUTPUT_CAP);
  private readonly drained: Promise<void>;

  constructor(
    readonly proc: SpawnedProc,
    readonly argv: readonly string[],
  ) {
    this.drained = Promise.all([
      drain(proc.stdout, (s) => this.out.append(s)),
      drain(proc.stderr, (s) => this.err.append(s)),
    ]).then(() => undefined);
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** Resolves with the exit code (128+signal when killed) once the process is gone. */
  get exited(): Promise<number> {
    return this.proc.exited.then(() => exitCodeOf(this.proc));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Everything the process wrote to stdout so far (last 4 MiB). */
  stdout(): string {
    return this.out.text();
  }

  /** Everything the process wrote to stderr so far (last 4 MiB). */
  stderr(): string {
    return this.err.text();
  }

  /** Wait until stdout+stderr match `pattern`; returns the match. Throws on timeout or exit. */
  async waitForOutput(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = (this.stdout() + "\n" + this.stderr()).match(pattern);
      if (m) return m;
      if (!this.running) {
        await this.drained;
        const last = (this.stdout() + "\n" + this.stderr()).match(pattern);
        if (last) return last;
        throw new NetsimError(`${this.argv.join(" ")} exited (${exitCodeOf(this.proc)}) before printing ${pattern}; stderr: ${this.stderr().trim()}`);
      }
      if (Date.now() > deadline) {
        throw new NetsimError(`timed out after ${timeoutMs} ms waiting for ${pattern} from ${this.argv.join(" ")}`);
      }
      await Bun.sleep(25);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. Idempotent. */
  async stop(graceMs = 2_000): Promise<void> {
    if (this.running) {
      this.proc.kill("SIGTERM");
      const gone = await Promise.race([this.proc.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
      if (!gone) this.proc.kill("SIGKILL");
    }
    await this.proc.exited;
    await this.drained;
  }
}

async function drain(stream: ReadableStream<Uint8Array>, onText: (s: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  try {
    for await (const chunk of stream) onText(decoder.decode(chunk, { stream: true }));
  } catch {
    // The stream errors when the process is killed mid-write; what we have is what there is.
  }
}

// ---------------------------------------------------------------------------------------------
// a named network namespace (base of Node and Pod)

export interface LinkInfo {
  name: string;
  /** `ip -d link` info_kind: "bridge", "veth", …; undefined for loopback and plain devices. */
  kind: string | undefined;
  /** The bridge a port is enslaved to. */
  master: string | undefined;
  /** For a veth: the peer's namespace id as seen from this namespace (set when it is elsewhere). */
  linkNetnsId: number | undefined;
  up: boolean;
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/** A named network namespace (under /var/run/netns) that the harness created and owns. */
export class Netns {
  protected readonly procs = new Set<SimProcess>();

  constructor(
    /** The namespace name, as used by `ip netns exec <name>`. */
    readonly name: string,
  ) {}

  /** `/var/run/netns/<name>`: what a runtime passes as CNI_NETNS. */
  get netnsPath(): string {
    return join(NETNS_DIR, this.name);
  }

  /** Run argv inside this namespace (`ip netns exec <name> …argv`) and collect its output. */
  exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return run(["ip", "netns", "exec", this.name, ...argv], opts);
  }

  /** Like `exec`, but throws when the command exits non-zero. */
  execOrThrow(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return runOrThrow(["ip", "netns", "exec", this.name, ...argv], opts);
  }

  /**
   * Start a long-running process inside this namespace (a server, an agent, a proxy). `ip netns
   * exec` execs the command, so the returned pid is the command itself. Stopped on teardown.
   */
  spawn(argv: readonly string[], opts: SpawnOptions = {}): SimProcess {
    const full = ["ip", "netns", "exec", this.name, ...argv];
    const proc = Bun.spawn(full, {
      stdin: opts.stdin ? "pipe" : "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: opts.env ?? process.env,
    }) as SpawnedProc;
    const p = new SimProcess(proc, argv);
    this.procs.add(p);
    return p;
  }

  /** TCP ports with a listening socket in this namespace (`ss -ltnH`). */
  async listeningTcpPorts(): Promise<number[]> {
    const r = await this.execOrThrow(["ss", "-ltnH"]);
    return parseSsListeningPorts(r.stdout);
  }

  /** Poll `ss -ltnH` in this namespace until something listens on TCP `port`. */
  async waitForTcpPort(port: number, opts: WaitOptions = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let ports: number[] = [];
    for (;;) {
      ports = await this.listeningTcpPorts();
      if (ports.includes(port)) return;
      if (Date.now() > deadline) {
        throw new NetsimError(`nothing listens on TCP ${port} in netns ${this.name} after ${timeoutMs} ms (listening: ${ports.join(", ") || "none"})`);
      }
      await Bun.sleep(opts.intervalMs ?? 50);
    }
  }

  /** The links in this namespace (`ip -j -d link show`). */
  async links(): Promise<LinkInfo[]> {
    return listLinks(this.name);
  }

  /** IPv4 routes (main table) in this namespace, one trimmed `ip route` line each. */
  async routes(): Promise<string[]> {
    const r = await runOrThrow(["ip", "-n", this.name, "route", "show"]);
    return nonEmptyLines(r.stdout).map((l) => l.trim());
  }

  /** Stop every process this harness spawned here. */
  async stopProcesses(): Promise<void> {
    const all = [...this.procs];
    this.procs.clear();
    await Promise.all(all.map((p) => p.stop()));
  }
}

/** Parse `ss -ltnH` output into the local ports (column 4 is `addr:port`, `[::]:port`, `*:port`). */
export function parseSsListeningPorts(ssOutput: string): number[] {
  const ports = new Set<number>();
  for (const line of nonEmptyLines(ssOutput)) {
    const local = line.trim().split(/\s+/)[3];
    const port = local ? Number(local.slice(local.lastIndexOf(":") + 1)) : NaN;
    if (Number.isInteger(port)) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

async function listLinks(netns: string): Promise<LinkInfo[]> {
  const r = await runOrThrow(["ip", "-n", netns, "-j", "-d", "link", "show"]);
  const raw = JSON.parse(r.stdout || "[]") as Array<Record<string, unknown>>;
  return raw.map((l) => {
    const info = l.linkinfo as { info_kind?: string } | undefined;
    const flags = (l.flags as string[] | undefined) ?? [];
    return {
      name: String(l.ifname),
      kind: info?.info_kind,
      master: typeof l.master === "string" ? l.master : undefined,
      linkNetnsId: typeof l.link_netnsid === "number" ? l.link_netnsid : undefined,
      up: flags.includes("UP"),
    };
  });
}

function nonEmptyLines(s: string): string[] {
  return s.split("\n").filter((l) => l.trim() !== "");
}

// ---------------------------------------------------------------------------------------------
// node and pods

/** The virtual node: a namespace with loopback and the pods' bridge, and no uplink. */
export class Node extends Netns {
  constructor(
    name: string,
    /** The bridge the `bridge` plugin attaches pods to (`<tag>-br`). */
    readonly bridge: string,
    /** The pods' IPv4 subnet (CIDR) given to host-local. */
    readonly subnet: string,
    /** The bridge's address in `subnet` (`isGateway`), i.e. the pods' default gateway. */
    readonly gateway: string,
  ) {
    super(name);
  }
}

/** A pod: its own namespace, wired to the node's bridge by the CNI chain. */
export class Pod extends Netns {
  constructor(
    name: string,
    /** Kubernetes pod name (K8S_POD_NAME). */
    readonly podName: string,
    /** Kubernetes namespace (K8S_POD_NAMESPACE). */
    readonly podNamespace: string,
    /** Kubernetes pod UID (K8S_POD_UID). */
    readonly uid: string,
    /** CNI_CONTAINERID the runtime would use (the sandbox id). */
    readonly containerId: string,
    /** Extra CNI_ARGS pairs this pod was added with (appended after the K8S_ ones). */
    readonly extraCniArgs: Readonly<Record<string, string>>,
  ) {
    super(name);
  }

  /** CNI_IFNAME of the pod's network interface. */
  readonly ifname = POD_IFNAME;
  /** The final result of the ADD chain (what the runtime caches and hands back on DEL/CHECK). */
  result: CniResult | undefined;
  /** The result of the loopback network's ADD (cached the same way). */
  loopbackResult: CniResult | undefined;
  /** The pod's IPv4 address (from the ADD result). */
  ip = "";

  /** The CNI_ARGS string a runtime (containerd/CRI-O) passes for this pod. */
  get cniArgs(): string {
    const pairs: Array<[string, string]> = [
      // Real runtimes send IgnoreUnknown=1 so that plugins (host-local!) accept the K8S_ keys.
      ["IgnoreUnknown", "1"],
      ["K8S_POD_NAMESPACE", this.podNamespace],
      ["K8S_POD_NAME", this.podName],
      ["K8S_POD_INFRA_CONTAINER_ID", this.containerId],
      ["K8S_POD_UID", this.uid],
      ...Object.entries(this.extraCniArgs),
    ];
    return pairs.map(([k, v]) => `${k}=${v}`).join(";");
  }
}

// ---------------------------------------------------------------------------------------------
// CNI

export type CniCommand = "ADD" | "DEL" | "CHECK";

/** A CNI result (spec 1.0.0); only the fields the harness reads are typed. */
export interface CniResult {
  cniVersion?: string;
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string }>;
  ips?: Array<{ address: string; gateway?: string; interface?: number }>;
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: unknown;
  [key: string]: unknown;
}

/** A plugin chained after `bridge`, like `nshub-cni` in production. */
export interface ChainPlugin {
  /** The plugin `type`: the binary name looked up in CNI_PATH. */
  type: string;
  /** Binary to use for `type`; the harness links it into its own CNI_PATH dir under that name. */
  binary?: string;
  /** Extra fields of this plugin's entry in the conflist (`name`, `cniVersion`, `prevResult` are set by the harness). */
  config?: Record<string, unknown>;
}

/** The conflist the harness writes and executes. */
export interface NetConfList {
  cniVersion: string;
  name: string;
  plugins: Array<Record<string, unknown> & { type: string }>;
}

interface CniRuntimeArgs {
  containerId: string;
  netnsPath: string;
  ifname: string;
  cniArgs: string;
}

/**
 * Executes CNI plugins the way libcni (containerd, CRI-O) does, with the plugin processes placed
 * in the node namespace.
 */
class CniRunner {
  constructor(
    private readonly nodeNetns: string,
    /** CNI_PATH, searched in order for a plugin's `type`. */
    readonly cniPath: readonly string[],
    private readonly extraEnv: Readonly<Record<string, string>>,
    private readonly timeoutMs: number,
  ) {}

  /** ADD: plugins in order; each gets the previous plugin's result as `prevResult`. Returns the last result. */
  async add(list: NetConfList, rt: CniRuntimeArgs): Promise<CniResult> {
    let prev: CniResult | undefined;
    for (const plugin of list.plugins) {
      const out = await this.invoke("ADD", pluginConfig(list, plugin, prev), rt);
      prev = parseResult(plugin.type, out);
    }
    if (!prev) throw new NetsimError(`conflist ${list.name} has no plugins`);
    return prev;
  }

  /** CHECK: plugins in order, each with the cached ADD result as `prevResult` (spec, libcni). */
  async check(list: NetConfList, rt: CniRuntimeArgs, cached: CniResult): Promise<void> {
    for (const plugin of list.plugins) await this.invoke("CHECK", pluginConfig(list, plugin, cached), rt);
  }

  /**
   * DEL: plugins in reverse order, each with the cached ADD result as `prevResult` when there is
   * one (libcni does the same; after a failed ADD there is none). Unlike libcni, which stops at the
   * first failing plugin, this goes on and throws the first error at the end: teardown should
   * release everything it can.
   */
  async del(list: NetConfList, rt: CniRuntimeArgs, cached: CniResult | undefined): Promise<void> {
    const errors: unknown[] = [];
    for (const plugin of [...list.plugins].reverse()) {
      try {
        await this.invoke("DEL", pluginConfig(list, plugin, cached), rt);
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length > 0) throw errors[0];
  }

  private async invoke(command: CniCommand, conf: Record<string, unknown> & { type: string }, rt: CniRuntimeArgs): Promise<string> {
    const binary = await findPlugin(conf.type, this.cniPath);
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
      ...this.extraEnv,
      CNI_COMMAND: command,
      CNI_CONTAINERID: rt.containerId,
      CNI_NETNS: rt.netnsPath,
      CNI_IFNAME: rt.ifname,
      CNI_ARGS: rt.cniArgs,
      CNI_PATH: this.cniPath.join(":"),
    };
    // The plugin runs in the node namespace: that is the "host" side for `bridge` (bridge, veth).
    const r = await run(["ip", "netns", "exec", this.nodeNetns, binary], {
      stdin: JSON.stringify(conf),
      env,
      timeoutMs: this.timeoutMs,
    });
    if (r.code !== 0) throw cniErrorFrom(conf.type, command, r);
    return r.stdout;
  }
}

/** One plugin's network config as libcni builds it from a conflist entry. */
function pluginConfig(list: NetConfList, plugin: Record<string, unknown> & { type: string }, prevResult: CniResult | undefined): Record<string, unknown> & { type: string } {
  const conf: Record<string, unknown> & { type: string } = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  return conf;
}

function parseResult(plugin: string, stdout: string): CniResult {
  try {
    const r = JSON.parse(stdout) as unknown;
    if (r && typeof r === "object" && !Array.isArray(r)) return r as CniResult;
  } catch {
    // fall through
  }
  throw new NetsimError(`CNI ADD: plugin "${plugin}" exited 0 but printed no JSON result: ${JSON.stringify(stdout.slice(0, 500))}`);
}

function cniErrorFrom(plugin: string, command: CniCommand, r: ExecResult): CniError {
  // CNI spec: on failure the plugin prints {"code": N, "msg": "...", "details": "..."} on stdout.
  try {
    const e = JSON.parse(r.stdout) as { code?: unknown; msg?: unknown; details?: unknown };
    if (typeof e.code === "number") {
      return new CniError(plugin, command, e.code, String(e.msg ?? ""), e.details === undefined ? undefined : String(e.details), r.code, r.stderr);
    }
  } catch {
    // not JSON: report raw output
  }
  return new CniError(plugin, command, undefined, r.stdout.trim() || "(no output)", undefined, r.code, r.stderr);
}

/** First executable named `type` in the CNI_PATH dirs, as libcni's FindInPath does. */
async function findPlugin(type: string, dirs: readonly string[]): Promise<string> {
  assertPluginType(type);
  for (const dir of dirs) {
    const p = join(dir, type);
    try {
      await access(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  throw new NetsimError(`CNI plugin "${type}" not found in CNI_PATH ${dirs.join(":")}`);
}

function assertPluginType(type: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(type)) throw new NetsimError(`invalid CNI plugin type ${JSON.stringify(type)}`);
}

// ---------------------------------------------------------------------------------------------
// the harness

export interface SimOptions {
  /** Naming prefix, at most 6 chars so that `<prefix><6 hex>-br` fits IFNAMSIZ. Default "nsh-". */
  prefix?: string;
  /** Pods' IPv4 subnet. Default: a random 10.a.b.0/24 (each node is isolated anyway). */
  subnet?: string;
  /** Plugins chained after `bridge`, in order (e.g. `{ type: "nshub-cni", binary: "dist/nshub" }`). */
  plugins?: ChainPlugin[];
  /** Extra CNI_PATH dirs, searched before the harness's own bin dir and /usr/lib/cni. */
  cniPath?: string[];
  /** Replaces the default host-local IPAM block; `dataDir` is added when missing. */
  ipam?: Record<string, unknown>;
  /** Extra fields merged into the `bridge` plugin's config. */
  bridge?: Record<string, unknown>;
  /** Network name in the conflist (default "nshub-test"). */
  networkName?: string;
  /** Extra environment for every plugin invocation (e.g. the agent socket for nshub-cni). */
  pluginEnv?: Record<string, string>;
  /** Per plugin invocation; default 30 s. */
  pluginTimeoutMs?: number;
  /** Run `cleanupStale(prefix)` first (default true). */
  cleanStale?: boolean;
}

export interface PodOptions {
  /** Kubernetes pod name (DNS-1123 label); default `pod-<N>`. */
  name?: string;
  /** Kubernetes namespace (DNS-1123 label); default "default". */
  namespace?: string;
  /** Kubernetes pod UID; default a random UUID. */
  uid?: string;
  /** Extra CNI_ARGS pairs, appended after the K8S_ ones. */
  cniArgs?: Record<string, string>;
}

/** What a harness instance writes to MARKER_DIR/<tag>.json before it creates any namespace. */
interface OwnerMarker {
  tag: string;
  pid: number;
  /** /proc/<pid>/stat starttime, so that a recycled pid is not mistaken for the owner. */
  pidStart: string | null;
  createdAt: number;
  tmpDir: string;
}

/** Create a virtual node (namespace + bridge, no uplink). Add pods with `addPod`; always `destroy`. */
export async function createSim(opts: SimOptions = {}): Promise<NetSim> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  if (!/^[a-z][a-z0-9-]{0,5}$/.test(prefix)) throw new NetsimError(`prefix must be 1-6 chars [a-z0-9-] starting with a letter: ${JSON.stringify(prefix)}`);
  if (opts.cleanStale ?? true) await cleanupStale(prefix);

  const tag = `${prefix}${randomBytes(3).toString("hex")}`;
  const subnet = opts.subnet ?? randomSubnet();
  const { gateway } = subnetInfo(subnet);
  const tmpDir = await mkdtemp(join(tmpdir(), `${TMP_PREFIX}${tag}-`));
  const sim = new NetSim(tag, subnet, gateway, tmpDir, opts);
  try {
    await sim.init();
  } catch (e) {
    await sim.destroy().catch(() => undefined);
    throw e;
  }
  return sim;
}

/** One virtual node and its pods. Create with `createSim`. */
export class NetSim {
  readonly node: Node;
  /** Where host-local keeps its allocations (per harness, never /var/lib/cni). */
  readonly ipamDataDir: string;
  /** The conflist the harness executes, also written to disk for inspection. */
  readonly conflist: NetConfList;
  readonly conflistPath: string;
  /** The loopback network, set up first with CNI_IFNAME=lo as containerd/CRI-O do. */
  readonly loopbackConf: NetConfList;
  readonly cniPath: readonly string[];

  private readonly podList: Pod[] = [];
  private readonly cni: CniRunner;
  private readonly binDir: string;
  private readonly markerPath: string;
  private podSeq = 0;
  private destroying: Promise<void> | undefined;

  constructor(
    /** `<prefix><6 hex>`: prefix of every name this instance creates. */
    readonly tag: string,
    readonly subnet: string,
    gateway: string,
    /** Per-instance temp dir (IPAM data, conflist, linked plugin binaries); removed on destroy. */
    readonly tmpDir: string,
    private readonly opts: SimOptions,
  ) {
    const bridge = `${tag}-br`;
    checkIfname(bridge);
    this.node = new Node(`${tag}-node`, bridge, subnet, gateway);
    this.ipamDataDir = join(tmpDir, "ipam");
    this.binDir = join(tmpDir, "bin");
    this.conflistPath = join(tmpDir, "net.d", "10-nshub-test.conflist");
    this.markerPath = join(MARKER_DIR, `${tag}.json`);
    this.cniPath = [...(opts.cniPath ?? []), this.binDir, STD_CNI_DIR];
    this.conflist = this.buildConflist();
    this.loopbackConf = { cniVersion: CNI_VERSION, name: "cni-loopback", plugins: [{ type: "loopback" }] };
    this.cni = new CniRunner(this.node.name, this.cniPath, opts.pluginEnv ?? {}, opts.pluginTimeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS);
  }

  /** Pods currently present (added and not deleted). */
  get pods(): readonly Pod[] {
    return this.podList;
  }

  /** Names of the namespaces this instance currently owns (node and pods). */
  get netnsNames(): string[] {
    return [this.node.name, ...this.podList.map((p) => p.name)];
  }

  /** @internal called by createSim. */
  async init(): Promise<void> {
    // Marker first, so that a concurrent cleanupStale never sees our namespaces without an owner.
    await writeMarker(this.markerPath, { tag: this.tag, pid: process.pid, pidStart: await procStartTime(process.pid), createdAt: Date.now(), tmpDir: this.tmpDir });
    await mkdir(this.ipamDataDir, { recursive: true });
    await mkdir(this.binDir, { recursive: true });
    await this.linkChainBinaries();
    await mkdir(join(this.tmpDir, "net.d"), { recursive: true });
    await writeFile(this.conflistPath, JSON.stringify(this.conflist, null, 2) + "\n");

    const node = this.node.name;
    await runOrThrow(["ip", "netns", "add", node]);
    await runOrThrow(["ip", "-n", node, "link", "set", "lo", "up"]);
    // The bridge exists from the start (the node "has" it even before its first pod); the bridge
    // plugin adopts an existing bridge of that name and adds the gateway address on first ADD.
    await runOrThrow(["ip", "-n", node, "link", "add", this.node.bridge, "type", "bridge"]);
    await runOrThrow(["ip", "-n", node, "link", "set", this.node.bridge, "up"]);
    // No uplink and no default route: the node cannot reach the machine's network. The bridge
    // plugin (isGateway) turns on ip_forward, but /proc/sys/net is per namespace: only the node's.
  }

  /** Create a pod namespace and run the CNI chain for it (loopback on lo, then bridge… on eth0). */
  async addPod(opts: PodOptions = {}): Promise<Pod> {
    if (this.destroying) throw new NetsimError(`harness ${this.tag} is being destroyed`);
    const n = ++this.podSeq;
    const podName = opts.name ?? `pod-${n}`;
    const podNamespace = opts.namespace ?? "default";
    checkDns1123Label("pod name", podName);
    checkDns1123Label("pod namespace", podNamespace);
    const uid = opts.uid ?? randomUUID();
    if (!/^[0-9A-Za-z-]+$/.test(uid)) throw new NetsimError(`invalid pod uid ${JSON.stringify(uid)}`);
    for (const [k, v] of Object.entries(opts.cniArgs ?? {})) {
      if (/[;=]/.test(k) || /[;=]/.test(v)) throw new NetsimError(`CNI_ARGS key/value must not contain ';' or '=': ${k}=${v}`);
    }
    const containerId = randomBytes(32).toString("hex");
    const pod = new Pod(`${this.tag}-p${n}`, podName, podNamespace, uid, containerId, { ...opts.cniArgs });

    await runOrThrow(["ip", "netns", "add", pod.name]);
    this.podList.push(pod);
    try {
      pod.loopbackResult = await this.cni.add(this.loopbackConf, this.runtimeArgs(pod, "lo"));
      pod.result = await this.cni.add(this.conflist, this.runtimeArgs(pod, pod.ifname));
      pod.ip = firstIPv4(pod.result);
    } catch (e) {
      // A runtime answers a failed ADD with a DEL (without cached result), then drops the sandbox.
      await this.deletePod(pod).catch(() => undefined);
      throw e;
    }
    return pod;
  }

  /** Run CHECK for the pod's networks with the cached ADD result; throws CniError on failure. */
  async checkPod(pod: Pod): Promise<void> {
    if (!pod.result) throw new NetsimError(`pod ${pod.name} has no ADD result`);
    if (pod.loopbackResult) await this.cni.check(this.loopbackConf, this.runtimeArgs(pod, "lo"), pod.loopbackResult);
    await this.cni.check(this.conflist, this.runtimeArgs(pod, pod.ifname), pod.result);
  }

  /**
   * Delete a pod as a runtime does: stop its processes, CNI DEL (chain in reverse, then
   * loopback), then remove its namespace. Goes through every step even if one fails, then throws
   * the first error.
   */
  async deletePod(pod: Pod): Promise<void> {
    const errors: unknown[] = [];
    const step = async (f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        errors.push(e);
      }
    };
    await step(() => pod.stopProcesses());
    await step(() => this.cni.del(this.conflist, this.runtimeArgs(pod, pod.ifname), pod.result));
    await step(() => this.cni.del(this.loopbackConf, this.runtimeArgs(pod, "lo"), pod.loopbackResult));
    await step(() => deleteNetns(pod.name));
    const i = this.podList.indexOf(pod);
    if (i >= 0) this.podList.splice(i, 1);
    if (errors.length > 0) throw errors[0];
  }

  /**
   * Remove everything: processes, pods (CNI DEL, namespace), the node namespace (which takes the
   * bridge and any leftover veth with it), the temp dir and the owner marker. Safe after a failure
   * and idempotent; throws the first error only after every step was tried.
   */
  destroy(): Promise<void> {
    this.destroying ??= this.teardown();
    return this.destroying;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }

  private async teardown(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        errors.push(e);
      }
    };
    // Node processes first (an agent may react to pod deletion otherwise; here it is just gone).
    await step(() => this.node.stopProcesses());
    for (const pod of [...this.podList].reverse()) await step(() => this.deletePod(pod));
    await step(() => deleteNetns(this.node.name));
    await step(() => rm(this.tmpDir, { recursive: true, force: true }));
    await step(() => rm(this.markerPath, { force: true }));
    if (errors.length > 0) throw errors[0];
  }

  private runtimeArgs(pod: Pod, ifname: string): CniRuntimeArgs {
    return { containerId: pod.containerId, netnsPath: pod.netnsPath, ifname, cniArgs: pod.cniArgs };
  }

  private buildConflist(): NetConfList {
    const ipam: Record<string, unknown> = this.opts.ipam
      ? { ...this.opts.ipam }
      : {
          type: "host-local",
          ranges: [[{ subnet: this.subnet, gateway: this.node.gateway }]],
          routes: [{ dst: "0.0.0.0/0" }],
        };
    if (ipam.type === "host-local" && ipam.dataDir === undefined) ipam.dataDir = this.ipamDataDir;
    const bridge = {
      type: "bridge",
      bridge: this.node.bridge,
      isGateway: true,
      ipMasq: false, // masquerading would add iptables rules; nothing leaves the node anyway
      hairpinMode: true, // a pod can reach itself via its own IP (as on a kubelet bridge)
      ipam,
      ...this.opts.bridge,
    };
    const extras = (this.opts.plugins ?? []).map((p) => {
      assertPluginType(p.type);
      return { ...p.config, type: p.type };
    });
    return { cniVersion: CNI_VERSION, name: this.opts.networkName ?? "nshub-test", plugins: [bridge, ...extras] };
  }

  /** Plugins given with `binary` become `<tmp>/bin/<type>` symlinks, found through CNI_PATH. */
  private async linkChainBinaries(): Promise<void> {
    for (const p of this.opts.plugins ?? []) {
      if (!p.binary) continue;
      assertPluginType(p.type);
      await access(p.binary, fsConstants.X_OK).catch(() => {
        throw new NetsimError(`plugin binary for "${p.type}" is not executable: ${p.binary}`);
      });
      await symlink(p.binary, join(this.binDir, p.type));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// namespace helpers

/** Kill whatever still runs in a namespace, then remove it (a missing namespace is fine). */
async function deleteNetns(name: string): Promise<void> {
  if (!(await netnsExists(name))) return;
  // Anything still inside a namespace we created is ours (a server a test started by hand, a
  // forked child); while it runs, the namespace and its veths would outlive `ip netns del`.
  await killNetnsPids(name);
  await runOrThrow(["ip", "netns", "del", name]);
}

async function killNetnsPids(name: string): Promise<void> {
  const r = await run(["ip", "netns", "pids", name]);
  const pids = nonEmptyLines(r.stdout).map(Number).filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  // Wait briefly so that the namespace is really released when we delete it.
  for (let i = 0; i < 40 && (await anyRunning(pids)); i++) await Bun.sleep(25);
}

/** Names of all named network namespaces (what `ip netns list` shows). */
export async function listNetns(): Promise<string[]> {
  try {
    return (await readdir(NETNS_DIR)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw e;
  }
}

async function netnsExists(name: string): Promise<boolean> {
  return (await listNetns()).includes(name);
}

// ---------------------------------------------------------------------------------------------
// stale cleanup

/**
 * Delete what crashed runs left behind: namespaces named `<prefix><6 hex>-…`, their temp dirs and
 * owner markers. Returns the namespaces removed.
 *
 * Ownership rule (so that concurrent runs, in this or another process, are never destroyed):
 *   * every harness writes MARKER_DIR/<tag>.json with its pid and the pid's start time BEFORE it
 *     creates any namespace;
 *   * a tag whose owner is alive (same pid AND same start time) is never touched, however old:
 *     a long suite or a benchmark may legitimately keep a node for more than 10 minutes;
 *   * a tag whose owner is dead (pid gone, or pid recycled by another process) is removed;
 *   * a tag without a marker (the marker dir was wiped, or the namespaces are not ours) is removed
 *     only when its newest namespace is older than `maxAgeMs` (default 10 min), which avoids racing a
 *     harness of an older version that writes no marker.
 */
export async function cleanupStale(prefix = DEFAULT_PREFIX, maxAgeMs = STALE_AGE_MS): Promise<string[]> {
  const tagRe = new RegExp(`^(${escapeRegExp(prefix)}[0-9a-f]{6})(?:-|$)`);
  const byTag = new Map<string, string[]>();
  for (const name of await listNetns()) {
    const m = tagRe.exec(name);
    if (m?.[1]) byTag.set(m[1], [...(byTag.get(m[1]) ?? []), name]);
  }
  for (const tag of await markerTags(prefix)) if (!byTag.has(tag)) byTag.set(tag, []);

  const removed: string[] = [];
  for (const [tag, names] of byTag) {
    const marker = await readMarker(join(MARKER_DIR, `${tag}.json`));
    if (marker && (await ownerAlive(marker))) continue;
    if (!marker && !(await allOlderThan(names, maxAgeMs))) continue;
    // Pods before the node, so that veth pairs go away with their pod side first.
    for (const name of [...names].sort((a, b) => Number(a.endsWith("-node")) - Number(b.endsWith("-node")))) {
      try {
        await deleteNetns(name);
        removed.push(name);
      } catch {
        // best effort: another cleaner may have raced us
      }
    }
    if (marker && isOurTmpDir(marker.tmpDir, tag)) await rm(marker.tmpDir, { recursive: true, force: true });
    await rm(join(MARKER_DIR, `${tag}.json`), { force: true });
  }
  return removed;
}

async function markerTags(prefix: string): Promise<string[]> {
  const re = new RegExp(`^(${escapeRegExp(prefix)}[0-9a-f]{6})\\.json$`);
  try {
    return (await readdir(MARKER_DIR)).flatMap((f) => re.exec(f)?.[1] ?? []);
  } catch {
    return [];
  }
}

async function writeMarker(path: string, m: OwnerMarker): Promise<void> {
  await mkdir(MARKER_DIR, { recursive: true, mode: 0o755 });
  await writeFile(path, JSON.stringify(m) + "\n");
}

async function readMarker(path: string): Promise<OwnerMarker | undefined> {
  try {
    const m = JSON.parse(await readFile(path, "utf8")) as Partial<OwnerMarker>;
    if (typeof m.pid !== "number" || typeof m.tmpDir !== "string") return undefined;
    return { tag: String(m.tag), pid: m.pid, pidStart: m.pidStart ?? null, createdAt: Number(m.createdAt), tmpDir: m.tmpDir };
  } catch {
    return undefined;
  }
}

async function ownerAlive(m: OwnerMarker): Promise<boolean> {
  const start = await procStartTime(m.pid);
  if (start === null) return false;
  return m.pidStart === null || m.pidStart === start;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); null if no such process. */
async function procStartTime(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] ?? null; // fields[0] is field 3 (state), so field 22 is fields[19]
  } catch {
    return null;
  }
}

/** Whether any of `pids` still runs (a zombie no longer holds its namespace, so it does not count). */
async function anyRunning(pids: number[]): Promise<boolean> {
  for (const pid of pids) {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state !== "" && state !== "Z" && state !== "X") return true;
  }
  return false;
}

/** Age of a named namespace: the nsfs inode's mtime, set when the namespace was created. */
async function allOlderThan(names: string[], maxAgeMs: number): Promise<boolean> {
  const now = Date.now();
  for (const name of names) {
    try {
      const st = await stat(join(NETNS_DIR, name));
      if (now - st.mtimeMs < maxAgeMs) return false;
    } catch {
      // vanished meanwhile
    }
  }
  return true;
}

function isOurTmpDir(dir: string, tag: string): boolean {
  return dir.startsWith(join(tmpdir(), TMP_PREFIX + tag + "-")) && !dir.includes("..");
}

// ---------------------------------------------------------------------------------------------
// small pure helpers (exported for unit tests)

/** A random 10.a.b.0/24. */
export function randomSubnet(): string {
  const [a, b] = randomBytes(2);
  return `10.${a}.${b}.0/24`;
}

/** Network address, prefix length and first host (the gateway) of an IPv4 CIDR (prefix 8..30). */
export function subnetInfo(cidr: string): { network: string; prefix: number; gateway: string } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const prefix = m ? Number(m[5]) : NaN;
  if (!m || octets.some((o) => o > 255) || !(prefix >= 8 && prefix <= 30)) {
    throw new NetsimError(`subnet must be an IPv4 CIDR with prefix 8..30: ${JSON.stringify(cidr)}`);
  }
  const addr = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  const network = addr - (addr % size);
  return { network: intToIPv4(network), prefix, gateway: intToIPv4(network + 1) };
}

/** Whether an IPv4 address lies in a CIDR. */
export function ipv4InSubnet(ip: string, cidr: string): boolean {
  const { network, prefix } = subnetInfo(cidr);
  const size = 2 ** (32 - prefix);
  const a = ipv4ToInt(ip);
  const n = ipv4ToInt(network);
  return a >= n && a < n + size;
}

function ipv4ToInt(ip: string): number {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new NetsimError(`not an IPv4 address: ${ip}`);
  return parts.reduce((acc, o) => acc * 256 + o, 0);
}

function intToIPv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

function firstIPv4(result: CniResult): string {
  const ip = result.ips?.map((i) => i.address.split("/")[0] ?? "").find((a) => a.includes("."));
  if (!ip) throw new NetsimError(`CNI ADD result has no IPv4 address: ${JSON.stringify(result)}`);
  return ip;
}

function checkIfname(name: string): void {
  if (name.length > IFNAMSIZ_MAX) throw new NetsimError(`interface name ${name} is longer than ${IFNAMSIZ_MAX} chars`);
}

function checkDns1123Label(what: string, s: string): void {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(s)) throw new NetsimError(`${what} must be a DNS-1123 label: ${JSON.stringify(s)}`);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
