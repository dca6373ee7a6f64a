// The named network namespaces the harness makes (the node and its pods): running things inside
// them, reading their links, routes and listeners, and removing them.
//
// Named `SimNamespace`, not `Netns`: src/sys/netns.ts's `Netns` is an open fd to a namespace
// (what the proxy enters); this is a namespace by name, driven through `ip netns exec`.

import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { CniResult } from "./cni-runner.ts";
import { NetsimError } from "./errors.ts";
import { run, runOrThrow, SimProcess, type ExecOptions, type ExecResult, type SpawnedProc, type SpawnOptions } from "./process.ts";

/** Where `ip netns add` bind-mounts named namespaces. */
export const NETNS_DIR = "/var/run/netns";

const POD_IFNAME = "eth0";

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
export class SimNamespace {
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

/** The virtual node: a namespace with loopback and the pods' bridge, and no uplink. */
export class Node extends SimNamespace {
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
export class Pod extends SimNamespace {
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
// listing and removing namespaces

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

/** Kill whatever still runs in a namespace, then remove it (a missing namespace is fine). */
export async function deleteNetns(name: string): Promise<void> {
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

/** Whether any of `pids` still runs (a zombie no longer holds its namespace, so it does not count). */
async function anyRunning(pids: number[]): Promise<boolean> {
  for (const pid of pids) {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state !== "" && state !== "Z" && state !== "X") return true;
  }
  return false;
}
