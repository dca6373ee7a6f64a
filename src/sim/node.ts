// The virtual Kubernetes node: one `NetSim` is one node, for the netns tests, `nshub demo` and
// the benchmarks (docs/TESTING.md, "The virtual node").
//
//   * the node is a network namespace (`ip netns add <tag>-node`) with loopback up and a Linux
//     bridge (`<tag>-br`), and NO link to the machine's real network: no uplink, and nothing in
//     the root namespace is ever touched (no routes, no forwarding, no iptables);
//   * each pod is a namespace of its own (`<tag>-p<N>`), wired to the node's bridge by the REAL
//     CNI plugins from /usr/lib/cni (`loopback`, then `bridge` with `host-local` IPAM, then any
//     extra chained plugins such as `nshub-cni`), invoked exactly as a container runtime invokes
//     them (see cni-runner.ts).
//
// `tag` is `nsh-<6 hex>` (random per instance), so several instances, in one process or in
// several, run side by side. Everything is removed by `destroy()`, which is safe to call after a
// failure and more than once. `cleanupStale()` (stale.ts) removes what crashed runs left behind.

import { randomBytes, randomUUID } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertPluginType, CNI_VERSION, CniRunner, firstIPv4, STD_CNI_DIR, type ChainPlugin, type CniRuntimeArgs, type NetConfList } from "./cni-runner.ts";
import { NetsimError, TeardownSteps } from "./errors.ts";
import { randomSubnet, subnetInfo } from "./ipv4.ts";
import { deleteNetns, Node, Pod } from "./namespace.ts";
import { runOrThrow } from "./process.ts";
import { cleanupStale, DEFAULT_PREFIX, MARKER_DIR, procStartTime, TMP_PREFIX, writeMarker } from "./stale.ts";

const IFNAMSIZ_MAX = 15; // Linux interface names: 15 chars + NUL
const DEFAULT_PLUGIN_TIMEOUT_MS = 30_000;

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
    const steps = new TeardownSteps();
    await steps.run(() => pod.stopProcesses());
    await steps.run(() => this.cni.del(this.conflist, this.runtimeArgs(pod, pod.ifname), pod.result));
    await steps.run(() => this.cni.del(this.loopbackConf, this.runtimeArgs(pod, "lo"), pod.loopbackResult));
    await steps.run(() => deleteNetns(pod.name));
    const i = this.podList.indexOf(pod);
    if (i >= 0) this.podList.splice(i, 1);
    steps.done();
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
    const steps = new TeardownSteps();
    // Node processes first (an agent may react to pod deletion otherwise; here it is just gone).
    await steps.run(() => this.node.stopProcesses());
    for (const pod of [...this.podList].reverse()) await steps.run(() => this.deletePod(pod));
    await steps.run(() => deleteNetns(this.node.name));
    await steps.run(() => rm(this.tmpDir, { recursive: true, force: true }));
    await steps.run(() => rm(this.markerPath, { force: true }));
    steps.done();
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

function checkIfname(name: string): void {
  if (name.length > IFNAMSIZ_MAX) throw new NetsimError(`interface name ${name} is longer than ${IFNAMSIZ_MAX} chars`);
}

function checkDns1123Label(what: string, s: string): void {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(s)) throw new NetsimError(`${what} must be a DNS-1123 label: ${JSON.stringify(s)}`);
}
