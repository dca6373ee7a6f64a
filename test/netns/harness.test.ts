// The virtual-node harness itself (test/helpers/netsim.ts): real namespaces, the real CNI plugins
// from /usr/lib/cni, real traffic. Every other netns test stands on this one.
//
// No ping here: iputils-ping is not installed on the test machines, so reachability is a real TCP
// exchange with socat (an echo server in one pod, a client in another), which also shows the
// source address the server saw.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CniError,
  MARKER_DIR,
  cleanupStale,
  createSim,
  ipv4InSubnet,
  listNetns,
  run,
  runOrThrow,
  subnetInfo,
  type NetSim,
  type Pod,
} from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";
import { hostNetState as rootSnapshot } from "../helpers/host-state.ts";

const T = 60_000; // namespaces and plugin runs take seconds, not milliseconds
const ECHO_PORT = 7000;

// ---------------------------------------------------------------------------------------------
// helpers


/** Start a socat TCP echo server in `pod` that logs each peer (-d -d) and wait until it listens. */
async function startEcho(pod: Pod) {
  const server = pod.spawn(["socat", "-d", "-d", `TCP-LISTEN:${ECHO_PORT},reuseaddr,fork`, "PIPE"]);
  await pod.waitForTcpPort(ECHO_PORT);
  return server;
}

/** Send one line from `client` to `ip`:ECHO_PORT and return what came back. */
async function echo(client: Pod, ip: string, line: string, connectTimeoutS = 3) {
  return client.exec(["socat", "-t", "1", "-T", "5", "-", `TCP:${ip}:${ECHO_PORT},connect-timeout=${connectTimeoutS}`], {
    stdin: line,
    timeoutMs: 15_000,
  });
}

/** Namespaces (from `ip netns list`, literally) whose name starts with `tag`. */
async function netnsWithTag(tag: string): Promise<string[]> {
  const r = await runOrThrow(["ip", "netns", "list"]);
  return r.stdout
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(tag));
}

/** Links that look like the harness's: its bridge, or any veth (the root netns must have none of ours). */
async function rootLinkNames(): Promise<string[]> {
  const r = await runOrThrow(["ip", "-o", "link", "show"]);
  return r.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => (l.split(": ")[1] ?? "").split("@")[0] ?? "");
}

// A chained plugin that records how it was invoked (environment, stdin config, the namespace it
// runs in, the links visible there) and passes prevResult through like a well-behaved chained
// plugin; with `fail` in its config it fails ADD with that CNI error. It stands in for nshub-cni,
// which other tests chain the same way.
const RECORDER_SOURCE = `
import { appendFileSync, readdirSync, readlinkSync } from "node:fs";
const conf = JSON.parse(await Bun.stdin.text());
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("CNI_")));
appendFileSync(process.env.REC_FILE, JSON.stringify({
  env, conf, netns: readlinkSync("/proc/self/ns/net"), links: readdirSync("/sys/class/net"),
}) + "\\n");
if (process.env.CNI_COMMAND === "ADD") {
  if (conf.fail) {
    console.log(JSON.stringify({ cniVersion: conf.cniVersion, code: conf.fail.code, msg: conf.fail.msg, details: "recorded" }));
    process.exit(1);
  }
  console.log(JSON.stringify(conf.prevResult));
}
`;

interface Recorded {
  env: Record<string, string>;
  conf: Record<string, unknown> & { prevResult?: unknown };
  netns: string;
  links: string[];
}

async function readRecords(file: string): Promise<Recorded[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Recorded);
}

// ---------------------------------------------------------------------------------------------

netnsDescribe("netsim virtual node (real namespaces, real CNI plugins)", () => {
  let rootBefore: Record<string, string>;
  const sims: NetSim[] = []; // everything created here, destroyed in afterAll even after a failure

  beforeAll(async () => {
    rootBefore = await rootSnapshot();
  });

  afterAll(async () => {
    await Promise.allSettled(sims.map((s) => s.destroy()));
  });

  async function newSim(...args: Parameters<typeof createSim>): Promise<NetSim> {
    const sim = await createSim(...args);
    sims.push(sim);
    return sim;
  }

  describe("one node with three pods", () => {
    let sim: NetSim;
    let pods: Pod[];

    beforeAll(async () => {
      sim = await newSim();
      pods = [];
      for (const name of ["alpha", "beta", "gamma"]) pods.push(await sim.addPod({ name, namespace: "team-a" }));
    }, T);

    test("names carry the instance tag and fit IFNAMSIZ", () => {
      expect(sim.tag).toMatch(/^nsh-[0-9a-f]{6}$/);
      expect(sim.node.name).toBe(`${sim.tag}-node`);
      expect(sim.node.bridge.length).toBeLessThanOrEqual(15);
      for (const p of pods) {
        expect(p.name.startsWith(`${sim.tag}-p`)).toBe(true);
        expect(p.netnsPath).toBe(`/var/run/netns/${p.name}`);
      }
    });

    test("pods got distinct IPv4s from host-local in the node's subnet, on eth0 in their own netns", async () => {
      const ips = pods.map((p) => p.ip);
      expect(new Set(ips).size).toBe(3);
      const { gateway } = subnetInfo(sim.subnet);
      for (const p of pods) {
        expect(ipv4InSubnet(p.ip, sim.subnet)).toBe(true);
        expect(p.ip).not.toBe(gateway);
        // The address really is configured on the pod's eth0 (not just claimed in the result).
        const addr = await p.execOrThrow(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        expect(addr.stdout).toContain(`inet ${p.ip}/24`);
        // The loopback plugin brought lo up.
        const lo = (await p.links()).find((l) => l.name === "lo");
        expect(lo?.up).toBe(true);
        // Default route via the bridge (isGateway), as host-local's routes asked.
        expect(await p.routes()).toContain(`default via ${gateway} dev eth0`);
      }
      // host-local recorded each allocation under the harness's own dataDir, keyed by IP, owned
      // by the pod's container id (and nothing went to /var/lib/cni).
      const allocDir = join(sim.ipamDataDir, sim.conflist.name);
      for (const p of pods) {
        const owner = await readFile(join(allocDir, p.ip), "utf8");
        expect(owner.split(/\s+/)[0]).toBe(p.containerId);
      }
    }, T);

    test("each pod reaches the other two over the bridge; the server sees the client pod's IP", async () => {
      const servers = new Map<Pod, Awaited<ReturnType<typeof startEcho>>>();
      for (const p of pods) servers.set(p, await startEcho(p));
      for (const client of pods) {
        for (const server of pods) {
          if (client === server) continue;
          const line = `hello ${client.podName} -> ${server.podName}\n`;
          const r = await echo(client, server.ip, line);
          expect({ code: r.code, stdout: r.stdout, stderr: r.code === 0 ? "" : r.stderr }).toEqual({ code: 0, stdout: line, stderr: "" });
        }
      }
      for (const [server, proc] of servers) {
        const peers = pods.filter((p) => p !== server).map((p) => p.ip);
        for (const ip of peers) await proc.waitForOutput(new RegExp(`accepting connection from AF=2 ${ip.replaceAll(".", "\\.")}:`));
        await proc.stop();
      }
    }, T);

    test("the node has no uplink: only lo, its bridge and the pods' veths; no route out", async () => {
      const links = await sim.node.links();
      const byKind = (k: string | undefined) => links.filter((l) => l.kind === k);
      expect(links.map((l) => l.name).sort()).toEqual(["lo", sim.node.bridge, ...byKind("veth").map((l) => l.name)].sort());
      expect(byKind("bridge").map((l) => l.name)).toEqual([sim.node.bridge]);
      const veths = byKind("veth");
      expect(veths).toHaveLength(pods.length);
      for (const v of veths) {
        expect(v.master).toBe(sim.node.bridge); // every veth is a bridge port…
        expect(v.linkNetnsId).toBeDefined(); // …whose peer lives in another namespace (a pod)
      }
      // Only the pods' subnet is routed; there is no default route and no way out.
      expect(await sim.node.routes()).toEqual([`${sim.subnet} dev ${sim.node.bridge} proto kernel scope link src ${sim.node.gateway}`]);
      const out = await sim.node.exec(["ip", "route", "get", "192.0.2.1"]);
      expect(out.code).not.toBe(0);
      expect(out.stderr).toContain("unreachable");
    }, T);

    test("CNI CHECK with the cached result passes for a healthy pod", async () => {
      for (const p of pods) await sim.checkPod(p);
    }, T);

    test("deletePod runs CNI DEL: its veth leaves the node, host-local releases the IP, the netns is gone", async () => {
      const victim = pods[2]!;
      const before = (await sim.node.links()).filter((l) => l.kind === "veth");
      await sim.deletePod(victim);
      const after = (await sim.node.links()).filter((l) => l.kind === "veth");
      expect(after).toHaveLength(before.length - 1);
      expect(await readdir(join(sim.ipamDataDir, sim.conflist.name))).not.toContain(victim.ip);
      expect(await listNetns()).not.toContain(victim.name);
      expect(sim.pods.map((p) => p.name)).toEqual([pods[0]!.name, pods[1]!.name]);
    }, T);

    test("after deleting every pod the node holds only lo and the bridge", async () => {
      for (const p of [...sim.pods]) await sim.deletePod(p);
      expect((await sim.node.links()).map((l) => l.name).sort()).toEqual(["lo", sim.node.bridge].sort());
    }, T);

    test("destroy leaves no namespace, bridge, veth, temp dir or marker behind", async () => {
      const p = await sim.addPod({ name: "delta" }); // one pod still present at destroy
      const server = await startEcho(p);
      const tag = sim.tag;
      expect((await netnsWithTag(tag)).sort()).toEqual([sim.node.name, p.name].sort());
      await sim.destroy();
      await sim.destroy(); // idempotent
      expect(server.running).toBe(false);
      expect(await netnsWithTag(tag)).toEqual([]);
      expect((await rootLinkNames()).filter((n) => n.includes(tag) || n.startsWith("veth"))).toEqual([]);
      expect(await stat(sim.tmpDir).catch(() => null)).toBeNull();
      expect(await stat(join(MARKER_DIR, `${tag}.json`)).catch(() => null)).toBeNull();
    }, T);
  });

  test("two harness instances side by side do not collide", async () => {
    const build = async () => {
      const sim = await newSim();
      const a = await sim.addPod({ name: "a" });
      const b = await sim.addPod({ name: "b" });
      await startEcho(b);
      const r = await echo(a, b.ip, "ping\n");
      return { sim, a, b, r };
    };
    // Concurrently, so that creation, CNI runs and addressing really interleave.
    const [one, two] = await Promise.all([build(), build()]);
    for (const x of [one, two]) expect({ code: x.r.code, stdout: x.r.stdout }).toEqual({ code: 0, stdout: "ping\n" });
    expect(one.sim.tag).not.toBe(two.sim.tag);
    const names1 = new Set(one.sim.netnsNames);
    expect(two.sim.netnsNames.filter((n) => names1.has(n))).toEqual([]);
    expect(one.sim.node.bridge).not.toBe(two.sim.node.bridge);
    expect(ipv4InSubnet(one.a.ip, one.sim.subnet) && ipv4InSubnet(two.a.ip, two.sim.subnet)).toBe(true);
    // The nodes are isolated from each other: a pod of one cannot reach a pod of the other.
    const cross = await echo(one.a, two.b.ip, "x\n", 1);
    expect(cross.code).not.toBe(0);
    expect(cross.stdout).toBe("");
    await Promise.all([one.sim.destroy(), two.sim.destroy()]);
    expect(await netnsWithTag(one.sim.tag)).toEqual([]);
    expect(await netnsWithTag(two.sim.tag)).toEqual([]);
  }, T);

  test("a failing plugin surfaces its name, CNI code and msg; the failed pod leaves nothing behind", async () => {
    const sim = await newSim({ ipam: { type: "host-local", ranges: [[{ subnet: "10.999.0.0/24" }]] } });
    const err = await sim.addPod({ name: "broken" }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CniError);
    const e = err as CniError;
    expect(e.plugin).toBe("bridge");
    expect(e.command).toBe("ADD");
    expect(e.code).toBe(999); // host-local's error, passed through by bridge
    expect(e.msg).toContain("invalid CIDR address: 10.999.0.0/24");
    expect(e.message).toContain('plugin "bridge"');
    expect(e.message).toContain("code 999");
    // Like a runtime, the harness answered the failed ADD with DEL and dropped the sandbox.
    expect(sim.pods).toHaveLength(0);
    expect(await netnsWithTag(sim.tag)).toEqual([sim.node.name]);
    expect((await sim.node.links()).filter((l) => l.kind === "veth")).toEqual([]);
    await sim.destroy();
  }, T);

  describe("chained extra plugin (a recording plugin stands in for nshub-cni)", () => {
    let dir: string;
    let recorder: string;

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "nshub-harness-test-"));
      recorder = join(dir, "recorder");
      await writeFile(recorder, `#!${process.execPath}\n${RECORDER_SOURCE}`);
      await chmod(recorder, 0o755);
    });

    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    test("runs last in the node netns, as a runtime invokes it, with bridge's result as prevResult; DEL runs it first", async () => {
      const recFile = join(dir, "ok.jsonl");
      const sim = await newSim({
        plugins: [{ type: "nsh-rec", binary: recorder, config: { mode: "observe" } }],
        pluginEnv: { REC_FILE: recFile },
      });
      const pod = await sim.addPod({ name: "web-0", namespace: "shop", cniArgs: { EXTRA: "yes" } });
      const nodeNetns = (await sim.node.execOrThrow(["readlink", "/proc/self/ns/net"])).stdout.trim();

      const [add] = await readRecords(recFile);
      expect(add).toBeDefined();
      expect(add!.env).toEqual({
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: pod.containerId,
        CNI_NETNS: pod.netnsPath,
        CNI_IFNAME: "eth0",
        CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=${pod.containerId};K8S_POD_UID=${pod.uid};EXTRA=yes`,
        CNI_PATH: sim.cniPath.join(":"),
      });
      expect(add!.conf.type).toBe("nsh-rec");
      expect(add!.conf.name).toBe(sim.conflist.name);
      expect(add!.conf.cniVersion).toBe("1.0.0");
      expect(add!.conf.mode).toBe("observe");
      expect(add!.netns).toBe(nodeNetns);
      // prevResult is bridge's result; since the recorder passes it on, it is also the final one.
      const prev = add!.conf.prevResult as { ips?: Array<{ address: string }> };
      expect(prev.ips?.[0]?.address).toBe(`${pod.ip}/24`);
      expect(pod.result).toEqual(prev as typeof pod.result);

      await sim.deletePod(pod);
      const records = await readRecords(recFile);
      const del = records.find((r) => r.env.CNI_COMMAND === "DEL");
      expect(del).toBeDefined();
      expect(del!.conf.prevResult).toEqual(pod.result); // DEL gets the cached ADD result
      // DEL runs the chain in reverse: when the recorder ran, bridge had not yet removed the veth.
      expect(del!.links.some((l) => l.startsWith("veth"))).toBe(true);
      expect(del!.links).toContain(sim.node.bridge);
      await sim.destroy();
    }, T);

    test("a chained plugin's error surfaces, and DEL still cleans up bridge's veth and IP", async () => {
      const recFile = join(dir, "fail.jsonl");
      const sim = await newSim({
        plugins: [{ type: "nsh-rec", binary: recorder, config: { fail: { code: 42, msg: "enrollment refused" } } }],
        pluginEnv: { REC_FILE: recFile },
      });
      const err = await sim.addPod({ name: "web-1" }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CniError);
      expect((err as CniError).message).toContain('CNI ADD failed in plugin "nsh-rec" (code 42, exit 1): enrollment refused (recorded)');
      expect((err as CniError).code).toBe(42);
      const commands = (await readRecords(recFile)).map((r) => r.env.CNI_COMMAND);
      expect(commands).toEqual(["ADD", "DEL"]);
      expect((await sim.node.links()).filter((l) => l.kind === "veth")).toEqual([]);
      expect(await readdir(join(sim.ipamDataDir, sim.conflist.name)).catch(() => [])).not.toContainEqual(expect.stringMatching(/^10\./));
      await sim.destroy();
    }, T);
  });

  test("cleanupStale removes namespaces whose owner is dead and keeps those of a live owner", async () => {
    // A random prefix of its own, so that this test never touches a concurrent run's namespaces
    // (neither the harness's "nsh-" ones nor those of another run of this very test).
    const prefix = `nst${randomBytes(3).toString("hex")}-`;
    const dead = `${prefix}000001`;
    const live = `${prefix}000002`;
    const unowned = `${prefix}000003`;
    const exited = Bun.spawn(["true"]);
    await exited.exited; // its pid is now dead
    try {
      await runOrThrow(["ip", "netns", "add", `${dead}-node`]);
      await runOrThrow(["ip", "netns", "add", `${dead}-p1`]);
      await runOrThrow(["ip", "netns", "add", `${live}-node`]);
      await runOrThrow(["ip", "netns", "add", `${unowned}-node`]); // no marker, but young
      const marker = (tag: string, pid: number) =>
        writeFile(join(MARKER_DIR, `${tag}.json`), JSON.stringify({ tag, pid, pidStart: null, createdAt: Date.now(), tmpDir: "/nonexistent" }));
      await marker(dead, exited.pid);
      await marker(live, process.pid);

      const removed = await cleanupStale(prefix);
      expect(removed.sort()).toEqual([`${dead}-node`, `${dead}-p1`]);
      const left = (await listNetns()).filter((n) => n.startsWith(prefix));
      expect(left.sort()).toEqual([`${live}-node`, `${unowned}-node`]);
      expect(await stat(join(MARKER_DIR, `${dead}.json`)).catch(() => null)).toBeNull();

      // With a zero age limit, the unowned namespace counts as stale too; the live one never does.
      expect(await cleanupStale(prefix, 0)).toEqual([`${unowned}-node`]);
    } finally {
      for (const tag of [dead, live, unowned]) {
        for (const n of [`${tag}-node`, `${tag}-p1`]) await run(["ip", "netns", "del", n]);
        await rm(join(MARKER_DIR, `${tag}.json`), { force: true });
      }
    }
  }, T);

  test("everything is gone and the root namespace is unchanged", async () => {
    await Promise.all(sims.map((s) => s.destroy()));
    for (const s of sims) expect(await netnsWithTag(s.tag)).toEqual([]);
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);
});
