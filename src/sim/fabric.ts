// Several virtual nodes joined by a routed "fabric" (docs/TESTING.md, "The virtual node"): a flat
// pod network across nodes, as Kubernetes has, for cross-node traffic and for captures of what
// crosses "the wire" between nodes.
//
//   * the fabric is a network namespace of its own (`<tag>-fab`), a router: one veth pair per
//     node, one end in the node's namespace, the other in the fabric's, each pair a /30 taken
//     from a /24 (default a random 172.31.x.0/24) that overlaps no node's pod subnet;
//   * routes: each node sends every OTHER node's pod subnet, and the links' /24 (the nodes' own
//     addresses), to the fabric; the fabric sends each node's pod subnet down that node's link. Forwarding is on in the fabric and in the nodes
//     (per-namespace sysctls). No NAT anywhere, so a server sees the client pod's own address;
//   * nothing in the root namespace is touched: the veth pair is created from inside the fabric
//     namespace with its peer placed straight into the node's, so neither end ever exists in the
//     root namespace. destroy() deletes every pair, and with it the routes through them in the
//     nodes, then the fabric namespace;
//   * ownership and stale cleanup work as for a node (stale.ts): the tag `<prefix><6 hex>` starts
//     the namespace and temp dir names, and an owner marker is written before anything exists.

import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Capture, type CaptureOptions } from "./capture.ts";
import { NetsimError, TeardownSteps } from "./errors.ts";
import { intToIPv4, ipv4ToInt, subnetInfo, subnetsOverlap } from "./ipv4.ts";
import { deleteNetns, listNetns, SimNamespace } from "./namespace.ts";
import type { NetSim } from "./node.ts";
import { run, runOrThrow } from "./process.ts";
import { cleanupStale, DEFAULT_PREFIX, MARKER_DIR, procStartTime, TMP_PREFIX, writeMarker } from "./stale.ts";

const IFNAMSIZ_MAX = 15;
/** Each link is a /30, so the default /24 holds 64 nodes. */
const LINK_PREFIX = 30;
const MAX_NODES = 2 ** (LINK_PREFIX - 24);

/** The live fabric each node is on: a second one would route the same pod subnets again. */
const fabricOf = new WeakMap<NetSim, Fabric>();

export interface FabricOptions {
  /** Naming prefix, 1-6 chars, as for `createSim`; default "nsh-". */
  prefix?: string;
  /** The /24 the links' /30s come from; default a random 172.31.x.0/24 clear of the pod subnets. */
  linkSubnet?: string;
  /** Run `cleanupStale(prefix)` first (default true). */
  cleanStale?: boolean;
}

/** One node's link to the fabric: a veth pair forming a /30. */
export interface FabricLink {
  readonly node: NetSim;
  /** The link's /30. */
  readonly subnet: string;
  /** The node end's address (in the node's namespace). */
  readonly nodeIp: string;
  /** The fabric end's address: the node's next hop to the other nodes. */
  readonly fabricIp: string;
  /** The node end's name, in the node's namespace: the fabric's tag. */
  readonly nodeIfname: string;
  /** The fabric end's name, in the fabric's namespace: the node's tag (so captures name the node). */
  readonly fabricIfname: string;
}

/** Join `nodes` (distinct, live, non-overlapping pod subnets) by a routed fabric; always `destroy`. */
export async function createFabric(nodes: readonly NetSim[], opts: FabricOptions = {}): Promise<Fabric> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  if (!/^[a-z][a-z0-9-]{0,5}$/.test(prefix)) throw new NetsimError(`prefix must be 1-6 chars [a-z0-9-] starting with a letter: ${JSON.stringify(prefix)}`);
  await checkNodes(nodes);
  const linkSubnet = pickLinkSubnet(nodes, opts.linkSubnet);
  if (opts.cleanStale ?? true) await cleanupStale(prefix);

  const tag = `${prefix}${randomBytes(3).toString("hex")}`;
  const tmpDir = await mkdtemp(join(tmpdir(), `${TMP_PREFIX}${tag}-`));
  const fabric = new Fabric(tag, linkSubnet, tmpDir);
  try {
    await fabric.init(nodes);
  } catch (e) {
    await fabric.destroy().catch(() => undefined);
    throw e;
  }
  return fabric;
}

/** The router namespace between nodes. Create with `createFabric`. */
export class Fabric {
  /** The fabric's own namespace (`<tag>-fab`), where captures run. */
  readonly ns: SimNamespace;
  private readonly linkList: FabricLink[] = [];
  private readonly markerPath: string;
  private destroying: Promise<void> | undefined;

  constructor(
    /** `<prefix><6 hex>`: starts the namespace and temp dir names, and names the node-side links. */
    readonly tag: string,
    /** The /24 the links' /30s are taken from. */
    readonly linkSubnet: string,
    /** Per-instance temp dir (captures by default); removed on destroy. */
    readonly tmpDir: string,
  ) {
    this.ns = new SimNamespace(`${tag}-fab`);
    this.markerPath = join(MARKER_DIR, `${tag}.json`);
  }

  /** One link per node, in the order the nodes were given. */
  get links(): readonly FabricLink[] {
    return this.linkList;
  }

  /** The link of `sim`; throws if it is not on this fabric. */
  link(sim: NetSim): FabricLink {
    const l = this.linkList.find((x) => x.node === sim);
    if (!l) throw new NetsimError(`node ${sim.tag} is not on fabric ${this.tag}`);
    return l;
  }

  /** The address of `sim`'s end of its fabric link. */
  nodeIp(sim: NetSim): string {
    return this.link(sim).nodeIp;
  }

  /** @internal called by createFabric. */
  async init(nodes: readonly NetSim[]): Promise<void> {
    // Marker first, so that a concurrent cleanupStale never sees our namespace without an owner.
    await writeMarker(this.markerPath, { tag: this.tag, pid: process.pid, pidStart: await procStartTime(process.pid), createdAt: Date.now(), tmpDir: this.tmpDir });
    const fab = this.ns.name;
    await runOrThrow(["ip", "netns", "add", fab]);
    await runOrThrow(["ip", "-n", fab, "link", "set", "lo", "up"]);
    await sysctl(this.ns, "net.ipv4.ip_forward=1");
    // No IPv6 on the wire: link-local router solicitations and MLD reports would otherwise show
    // up in every capture. Set before any link exists, so that the links inherit it.
    await sysctl(this.ns, "net.ipv6.conf.all.disable_ipv6=1");
    await sysctl(this.ns, "net.ipv6.conf.default.disable_ipv6=1");

    const base = ipv4ToInt(subnetInfo(this.linkSubnet).network);
    for (const [i, node] of nodes.entries()) {
      const net = base + i * 2 ** (32 - LINK_PREFIX);
      const link: FabricLink = {
        node,
        subnet: `${intToIPv4(net)}/${LINK_PREFIX}`,
        nodeIp: intToIPv4(net + 1),
        fabricIp: intToIPv4(net + 2),
        nodeIfname: checkIfname(this.tag),
        fabricIfname: checkIfname(node.tag),
      };
      this.linkList.push(link);
      fabricOf.set(node, this);
      await this.attach(link);
    }
    // Routes last, once every link is up: the fabric reaches each pod subnet down its node's
    // link; each node reaches the others' pod subnets through the fabric. Replies take the same
    // path back, so even a strict rp_filter would pass them.
    for (const l of this.linkList) {
      await runOrThrow(["ip", "-n", fab, "route", "add", l.node.subnet, "via", l.nodeIp, "dev", l.fabricIfname]);
      for (const other of this.linkList) {
        if (other === l) continue;
        await runOrThrow(["ip", "-n", l.node.node.name, "route", "add", other.node.subnet, "via", l.fabricIp, "dev", l.nodeIfname]);
      }
      // The nodes' own addresses (their link ends) are routable too, as node IPs are in a
      // cluster: a daemon in one node's namespace reaches a pod of another node, and the pod's
      // reply comes back to the node's address.
      await runOrThrow(["ip", "-n", l.node.node.name, "route", "add", this.linkSubnet, "via", l.fabricIp, "dev", l.nodeIfname]);
    }
  }

  /** Start tcpdump in the fabric namespace (every link, or `opts.interface`); see capture.ts. */
  capture(opts: CaptureOptions = {}): Promise<Capture> {
    if (this.destroying) return Promise.reject(new NetsimError(`fabric ${this.tag} is being destroyed`));
    return Capture.start(this.ns, this.tmpDir, opts);
  }

  /**
   * Remove the fabric: captures, every veth pair (both ends, and so the nodes' routes through
   * them), its namespace, temp dir and marker. The nodes may already be gone; `links` stays
   * readable. Safe after a failure and idempotent; throws the first error after trying every step.
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
    await steps.run(() => this.ns.stopProcesses());
    // `ip netns del` only drops the name: the kernel dismantles the namespace later (a workqueue),
    // and until then the node ends of the pairs, and the routes through them, are still there.
    // Deleting each pair takes both ends away now. One whose node is gone may be gone already.
    for (const l of this.linkList) await run(["ip", "-n", this.ns.name, "link", "del", l.fabricIfname]);
    await steps.run(() => deleteNetns(this.ns.name));
    await steps.run(() => rm(this.tmpDir, { recursive: true, force: true }));
    await steps.run(() => rm(this.markerPath, { force: true }));
    for (const l of this.linkList) if (fabricOf.get(l.node) === this) fabricOf.delete(l.node);
    steps.done();
  }

  /** Create the veth pair of one link, address both ends, and bring them up. */
  private async attach(l: FabricLink): Promise<void> {
    const fab = this.ns.name;
    const nodeNs = l.node.node.name;
    // Created inside the fabric namespace with the peer moved straight into the node's: no end
    // ever appears in the root namespace, not even for a moment.
    await runOrThrow(["ip", "-n", fab, "link", "add", l.fabricIfname, "type", "veth", "peer", "name", l.nodeIfname, "netns", nodeNs]);
    // The bridge plugin turns forwarding on in the node only when a pod is added (isGateway);
    // the node must route between its bridge and the fabric from the start.
    await sysctl(l.node.node, "net.ipv4.ip_forward=1");
    await sysctl(l.node.node, `net.ipv6.conf.${l.nodeIfname}.disable_ipv6=1`);
    await runOrThrow(["ip", "-n", fab, "addr", "add", `${l.fabricIp}/${LINK_PREFIX}`, "dev", l.fabricIfname]);
    await runOrThrow(["ip", "-n", nodeNs, "addr", "add", `${l.nodeIp}/${LINK_PREFIX}`, "dev", l.nodeIfname]);
    await runOrThrow(["ip", "-n", fab, "link", "set", l.fabricIfname, "up"]);
    await runOrThrow(["ip", "-n", nodeNs, "link", "set", l.nodeIfname, "up"]);
  }
}

/** Per-namespace sysctl (`/proc/sys/net` belongs to the namespace it is read from). */
async function sysctl(ns: SimNamespace, setting: string): Promise<void> {
  await ns.execOrThrow(["sysctl", "-q", "-w", setting]);
}

async function checkNodes(nodes: readonly NetSim[]): Promise<void> {
  if (nodes.length < 1) throw new NetsimError("a fabric needs at least one node");
  if (new Set(nodes).size !== nodes.length) throw new NetsimError("a node is given twice");
  // Routing is by pod subnet, so two nodes with overlapping subnets could not both be reached.
  for (const [i, a] of nodes.entries()) {
    for (const b of nodes.slice(i + 1)) {
      if (subnetsOverlap(a.subnet, b.subnet)) {
        throw new NetsimError(`pod subnets overlap: node ${a.tag} has ${a.subnet}, node ${b.tag} has ${b.subnet}; give each node its own (createSim({ subnet }))`);
      }
    }
  }
  const existing = new Set(await listNetns());
  for (const n of nodes) {
    if (!existing.has(n.node.name)) throw new NetsimError(`node ${n.tag}: namespace ${n.node.name} does not exist (destroyed?)`);
    const other = fabricOf.get(n);
    if (other) throw new NetsimError(`node ${n.tag} is already on fabric ${other.tag}; destroy that fabric first`);
  }
}

/** The given link /24 (checked), or a random 172.31.x.0/24 that overlaps no node's pod subnet. */
function pickLinkSubnet(nodes: readonly NetSim[], given: string | undefined): string {
  const clash = (s: string) => nodes.find((n) => subnetsOverlap(s, n.subnet));
  if (given !== undefined) {
    const info = subnetInfo(given);
    const fits = 2 ** (32 - info.prefix) / 2 ** (32 - LINK_PREFIX);
    if (fits < nodes.length) throw new NetsimError(`linkSubnet ${given} holds ${fits} /${LINK_PREFIX} links, not ${nodes.length}`);
    const n = clash(given);
    if (n) throw new NetsimError(`linkSubnet ${given} overlaps node ${n.tag}'s pod subnet ${n.subnet}`);
    return `${info.network}/${info.prefix}`;
  }
  if (nodes.length > MAX_NODES) throw new NetsimError(`a /24 holds ${MAX_NODES} links, not ${nodes.length}; pass a larger linkSubnet`);
  for (let i = 0; i < 64; i++) {
    const s = `172.31.${randomBytes(1)[0]}.0/24`;
    if (!clash(s)) return s;
  }
  throw new NetsimError("no 172.31.x.0/24 is free of the nodes' pod subnets; pass linkSubnet");
}

function checkIfname(name: string): string {
  if (name.length > IFNAMSIZ_MAX) throw new NetsimError(`interface name ${name} is longer than ${IFNAMSIZ_MAX} chars`);
  return name;
}
