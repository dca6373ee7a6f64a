// Several virtual nodes joined by the routed fabric (src/sim/fabric.ts): pods reach pods of other
// nodes by their own IPs, nothing is NATed, a capture in the fabric shows what crossed "the wire",
// and nothing of it touches the root namespace or outlives destroy().
//
// As in harness.test.ts there is no ping (iputils-ping is not installed): reachability is a real
// TCP exchange with socat, whose server log (-d -d) shows the peer address it saw.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  cleanupStale,
  createFabric,
  createSim,
  listNetns,
  MARKER_DIR,
  NetsimError,
  randomSubnet,
  subnetsOverlap,
  type Fabric,
  type NetSim,
  type Pod,
  type SimOptions,
} from "../helpers/netsim.ts";
import { hostNetState } from "../helpers/host-state.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;
const PORT = 7000;

/** A socat echo server in `pod` that logs each peer (-d -d); resolves once it listens. */
async function startEcho(pod: Pod) {
  const server = pod.spawn(["socat", "-d", "-d", `TCP-LISTEN:${PORT},reuseaddr,fork`, "PIPE"]);
  await pod.waitForTcpPort(PORT);
  return server;
}

/** Send `data` from `client` to `ip`:PORT, half-close, and return what came back. */
function echo(client: Pod, ip: string, data: string, connectTimeoutS = 3) {
  return client.exec(["socat", "-t", "5", "-T", "10", "-", `TCP:${ip}:${PORT},connect-timeout=${connectTimeoutS}`], { stdin: data, timeoutMs: 30_000 });
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const peerRe = (ip: string) => new RegExp(`accepting connection from AF=2 ${ip.replaceAll(".", "\\.")}:\\d+ on AF=2`);
/** A fresh 1-6 char prefix, so that checks by prefix never see a concurrent run's namespaces. */
const uniquePrefix = () => `f${randomBytes(2).toString("hex")}-`;
const netnsWithPrefix = async (p: string) => (await listNetns()).filter((n) => n.startsWith(p));

netnsDescribe("netsim fabric (several nodes, routed, captured)", () => {
  let rootBefore: Record<string, string>;
  const sims: NetSim[] = [];
  const fabrics: Fabric[] = [];

  async function newSim(opts: SimOptions = {}): Promise<NetSim> {
    // Each node its own pod subnet: the fabric routes by subnet (and refuses overlaps).
    let subnet = opts.subnet ?? randomSubnet();
    while (opts.subnet === undefined && sims.some((s) => subnetsOverlap(s.subnet, subnet))) subnet = randomSubnet();
    const sim = await createSim({ ...opts, subnet });
    sims.push(sim);
    return sim;
  }

  async function newFabric(...args: Parameters<typeof createFabric>): Promise<Fabric> {
    const f = await createFabric(...args);
    fabrics.push(f);
    return f;
  }

  beforeAll(async () => {
    rootBefore = await hostNetState();
  });

  afterAll(async () => {
    await Promise.allSettled(fabrics.map((f) => f.destroy()));
    await Promise.allSettled(sims.map((s) => s.destroy()));
  });

  describe("two nodes with pods, joined", () => {
    let n1: NetSim, n2: NetSim, fabric: Fabric;
    let a1: Pod, a2: Pod, b1: Pod;

    beforeAll(async () => {
      [n1, n2] = [await newSim(), await newSim()];
      a1 = await n1.addPod({ name: "a1" });
      a2 = await n1.addPod({ name: "a2" });
      b1 = await n2.addPod({ name: "b1" });
      fabric = await newFabric([n1, n2]);
    }, T);

    test("the fabric is its own namespace with one /30 per node; routes both ways; forwarding on inside only", async () => {
      expect(fabric.ns.name).toBe(`${fabric.tag}-fab`);
      expect(await listNetns()).toContain(fabric.ns.name);
      expect(fabric.links.map((l) => l.node)).toEqual([n1, n2]);
      for (const l of fabric.links) {
        expect(l.subnet).toMatch(/^172\.31\.\d+\.\d+\/30$/);
        expect(fabric.nodeIp(l.node)).toBe(l.nodeIp);
        expect(l.nodeIfname.length).toBeLessThanOrEqual(15);
        expect(l.fabricIfname.length).toBeLessThanOrEqual(15);
        for (const s of [n1, n2]) expect(subnetsOverlap(l.subnet, s.subnet)).toBe(false);
        // The fabric sends a node's pod subnet down that node's link…
        expect(await fabric.ns.routes()).toContain(`${l.node.subnet} via ${l.nodeIp} dev ${l.fabricIfname}`);
        // …and the node has the link, addressed, whose peer is in another namespace (the fabric).
        const nodeLink = (await l.node.node.links()).find((x) => x.name === l.nodeIfname);
        expect(nodeLink).toMatchObject({ kind: "veth", up: true });
        expect(nodeLink?.linkNetnsId).toBeDefined();
        const addr = await l.node.node.execOrThrow(["ip", "-o", "-4", "addr", "show", "dev", l.nodeIfname]);
        expect(addr.stdout).toContain(`inet ${l.nodeIp}/30`);
      }
      // Each node routes the OTHER node's pod subnet and the nodes' link addresses via its fabric
      // end, and nothing else: no default.
      for (const [l, other] of [[fabric.links[0]!, n2], [fabric.links[1]!, n1]] as const) {
        const n = l.node;
        expect((await n.node.routes()).sort()).toEqual(
          [
            `${n.subnet} dev ${n.node.bridge} proto kernel scope link src ${n.node.gateway}`,
            `${l.subnet} dev ${l.nodeIfname} proto kernel scope link src ${l.nodeIp}`,
            `${other.subnet} via ${l.fabricIp} dev ${l.nodeIfname}`,
            `${fabric.linkSubnet} via ${l.fabricIp} dev ${l.nodeIfname}`,
          ].sort(),
        );
      }
      expect((await fabric.ns.links()).map((l) => l.name).sort()).toEqual(["lo", n1.tag, n2.tag].sort());
      for (const ns of [fabric.ns, n1.node, n2.node]) {
        expect((await ns.execOrThrow(["cat", "/proc/sys/net/ipv4/ip_forward"])).stdout.trim()).toBe("1");
      }
      // Node-only checks of the root namespace: the full comparison runs at the end.
      expect(await readFile("/proc/sys/net/ipv4/ip_forward", "utf8")).toBe(rootBefore.ipForward!);
    }, T);

    test("a pod on node 1 reaches a pod on node 2 by its pod IP, byte-exact both ways; the server sees the client pod's IP", async () => {
      const servers = [await startEcho(b1), await startEcho(a2)];
      const payload = randomBytes(96 * 1024).toString("hex") + "\n"; // 192 KiB: many segments
      const there = await echo(a1, b1.ip, payload);
      expect({ code: there.code, stderr: there.code === 0 ? "" : there.stderr }).toEqual({ code: 0, stderr: "" });
      expect(there.stdout.length).toBe(payload.length);
      expect(sha256(there.stdout)).toBe(sha256(payload));
      await servers[0]!.waitForOutput(peerRe(a1.ip)); // a1's own address: no NAT on the way
      // And the other way round, to a second pod of node 1.
      const back = await echo(b1, a2.ip, "from b1\n");
      expect({ code: back.code, stdout: back.stdout }).toEqual({ code: 0, stdout: "from b1\n" });
      await servers[1]!.waitForOutput(peerRe(b1.ip));
      for (const s of servers) await s.stop();
    }, T);

    test("strict reverse-path filtering in every namespace passes it too (the routes are symmetric)", async () => {
      // A new namespace takes its IPv4 conf defaults from the root's, which differ between
      // machines (systemd sets loose, some distributions strict): the fabric must not depend on it.
      const spaces = [fabric.ns, n1.node, n2.node];
      const before = await Promise.all(spaces.map(async (ns) => (await ns.execOrThrow(["sysctl", "-n", "net.ipv4.conf.all.rp_filter"])).stdout.trim()));
      for (const ns of spaces) await ns.execOrThrow(["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"]);
      const server = await startEcho(b1);
      const r = await echo(a1, b1.ip, "strict\n");
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: "strict\n" });
      await server.waitForOutput(peerRe(a1.ip));
      await server.stop();
      for (const [i, ns] of spaces.entries()) await ns.execOrThrow(["sysctl", "-q", "-w", `net.ipv4.conf.all.rp_filter=${before[i]}`]);
    }, T);

    test("a capture in the fabric sees the cross-node flow and its bytes in clear; traffic inside a node never crosses", async () => {
      const servers = [await startEcho(b1), await startEcho(a2)];
      const all = await fabric.capture();
      const otherPort = await fabric.capture({ filter: `tcp port ${PORT + 1}` });
      const crossMarker = `cross-${randomBytes(8).toString("hex")}`;
      const localMarker = `local-${randomBytes(8).toString("hex")}`;
      expect((await echo(a1, b1.ip, `${crossMarker}\n`)).stdout).toBe(`${crossMarker}\n`);
      expect((await echo(a1, a2.ip, `${localMarker}\n`)).stdout).toBe(`${localMarker}\n`);
      const seen = await all.stop();
      const filtered = await otherPort.stop();
      for (const s of servers) await s.stop();

      expect(seen.stats).toMatchObject({ droppedByKernel: 0 });
      expect(seen.flows).toEqual([{ src: a1.ip, dst: b1.ip, dstPort: PORT }]);
      expect(seen.connections).toHaveLength(1);
      expect(seen.connections[0]).toMatchObject({ client: a1.ip, server: b1.ip, serverPort: PORT, sawSyn: true });
      // Routed through: each segment in on one node's link and out on the other's.
      const ifs = new Set(seen.tcp.map((s) => `${s.ifname} ${s.direction}`));
      expect(ifs).toEqual(new Set([`${n1.tag} In`, `${n2.tag} Out`, `${n2.tag} In`, `${n1.tag} Out`]));
      expect(seen.containsBytes(crossMarker)).toBe(true);
      expect(seen.containsBytes(localMarker)).toBe(false); // pod to pod on one node stays on its bridge
      expect(await seen.dump(["-A"])).toContain(crossMarker);
      // Nothing but TCP and ARP: no IPv6 chatter on the links.
      expect(seen.other.filter((l) => !/\bARP\b/.test(l))).toEqual([]);
      // The filter reached tcpdump: the port-7001 capture saw nothing of the port-7000 traffic.
      expect(filtered.lines).toEqual([]);
      expect(filtered.containsBytes(crossMarker)).toBe(false);
      // The pcap itself is a pcap (little-endian magic a1b2c3d4).
      expect(Buffer.from(seen.bytes.subarray(0, 4)).readUInt32LE(0)).toBe(0xa1b2c3d4);
    }, T);

    test("a bad capture filter fails with tcpdump's message instead of hanging", async () => {
      const err = await fabric.capture({ filter: "tcp port nonsense-port", readyTimeoutMs: 5_000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NetsimError);
      expect(String((err as Error).message)).toContain("nonsense-port");
    }, T);

    test("overlapping pod subnets, a node given twice or already on a fabric, a clashing link subnet: refused before anything is made", async () => {
      const prefix = uniquePrefix();
      const wide = await newSim({ subnet: `${n1.subnet.split(".").slice(0, 2).join(".")}.0.0/16` }); // contains n1's /24
      const refusals: Array<[() => Promise<unknown>, RegExp]> = [
        [() => createFabric([wide, n1], { prefix }), new RegExp(`pod subnets overlap: node ${wide.tag} has ${wide.subnet.replaceAll(".", "\\.")}, node ${n1.tag} has ${n1.subnet.replaceAll(".", "\\.")}`)],
        [() => createFabric([wide, wide], { prefix }), /a node is given twice/],
        [() => createFabric([wide, n2], { prefix }), new RegExp(`node ${n2.tag} is already on fabric ${fabric.tag}`)],
        [() => createFabric([wide], { prefix, linkSubnet: wide.subnet }), new RegExp(`linkSubnet ${wide.subnet} overlaps node ${wide.tag}`)],
      ];
      for (const [attempt, re] of refusals) {
        const err = await attempt().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(NetsimError);
        expect((err as Error).message).toMatch(re);
      }
      expect(await netnsWithPrefix(prefix)).toEqual([]);
      expect((await readdirSafe(MARKER_DIR)).filter((f) => f.startsWith(prefix))).toEqual([]);
      await wide.destroy();
    }, T);

    test("destroying the fabric first removes its namespace and both ends of every link; each node still works on its own", async () => {
      const fabNs = fabric.ns.name;
      await fabric.destroy();
      await fabric.destroy(); // idempotent
      expect(await listNetns()).not.toContain(fabNs);
      expect(await stat(fabric.tmpDir).catch(() => null)).toBeNull();
      expect(await stat(join(MARKER_DIR, `${fabric.tag}.json`)).catch(() => null)).toBeNull();
      for (const n of [n1, n2]) {
        expect((await n.node.links()).map((l) => l.name)).not.toContain(fabric.tag);
        expect(await n.node.routes()).toEqual([`${n.subnet} dev ${n.node.bridge} proto kernel scope link src ${n.node.gateway}`]);
      }
      const server = await startEcho(a2);
      expect((await echo(a1, a2.ip, "still local\n")).stdout).toBe("still local\n");
      await server.stop();
      const b = await startEcho(b1);
      const cut = await echo(a1, b1.ip, "x\n", 1);
      expect(cut.code).not.toBe(0);
      await b.stop();
      // Free again: the nodes may join a new fabric.
      const again = await newFabric([n1, n2]);
      await again.destroy();
    }, T);
  });

  test("destroying the nodes first, then the fabric", async () => {
    const [m1, m2] = [await newSim(), await newSim()];
    const fabric = await newFabric([m1, m2]);
    await m1.destroy();
    await m2.destroy();
    // Each node's namespace takes its end of the pair, and the fabric's end and routes go with it:
    // soon, not at once (the kernel dismantles a deleted namespace asynchronously).
    await waitFor(async () => (await fabric.ns.links()).length === 1);
    expect((await fabric.ns.links()).map((l) => l.name)).toEqual(["lo"]);
    expect(await fabric.ns.routes()).toEqual([]);
    await fabric.destroy();
    await fabric.destroy();
    expect(await netnsWithPrefix(fabric.tag)).toEqual([]);
  }, T);

  test("cleanupStale removes a dead run's fabric (namespace, links, temp dir, marker), and keeps a live one", async () => {
    const prefix = uniquePrefix();
    const [m1, m2, m3, m4] = [await newSim(), await newSim(), await newSim(), await newSim()];
    const dead = await newFabric([m1, m2], { prefix });
    const live = await newFabric([m3, m4], { prefix });
    // Make `dead` look like the leftover of a crashed run: its marker names a process that is gone.
    const exited = Bun.spawn(["true"]);
    await exited.exited;
    const markerPath = join(MARKER_DIR, `${dead.tag}.json`);
    const marker = JSON.parse(await readFile(markerPath, "utf8")) as Record<string, unknown>;
    await writeFile(markerPath, JSON.stringify({ ...marker, pid: exited.pid, pidStart: null }));

    expect(await cleanupStale(prefix)).toEqual([dead.ns.name]);
    expect(await netnsWithPrefix(prefix)).toEqual([live.ns.name]);
    expect(await stat(dead.tmpDir).catch(() => null)).toBeNull();
    expect(await stat(markerPath).catch(() => null)).toBeNull();
    // Its links leave the nodes with it (asynchronously: the kernel dismantles the namespace later).
    for (const m of [m1, m2]) await waitFor(async () => !(await m.node.links()).some((l) => l.name === dead.tag));
    expect((await m3.node.links()).map((l) => l.name)).toContain(live.tag);
    await dead.destroy(); // after someone else cleaned up: still fine
    await live.destroy();
    expect(await netnsWithPrefix(prefix)).toEqual([]);
    await Promise.all([m1, m2, m3, m4].map((m) => m.destroy()));
  }, T);

  test("everything is gone and the root namespace is unchanged", async () => {
    await Promise.all(fabrics.map((f) => f.destroy()));
    await Promise.all(sims.map((s) => s.destroy()));
    const names = await listNetns();
    for (const x of [...fabrics, ...sims]) expect(names.filter((n) => n.startsWith(x.tag))).toEqual([]);
    expect(await hostNetState()).toEqual(rootBefore);
  }, T);
});

async function waitFor(cond: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met after ${timeoutMs} ms`);
    await Bun.sleep(50);
  }
}

async function readdirSafe(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}
