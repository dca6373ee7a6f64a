// Pods whose netns vanished without a CNI DEL (src/agent/reconcile.ts): the real agent and proxy
// (dist/nshub) in a virtual node, five pods enrolled through the real CNI chain, three of their
// namespaces deleted with no DEL (anything in them killed, then `ip netns del`). Within a bounded
// time agent and proxy drop exactly those three, the two others stay Up, the agent counts three
// in nshub_agent_pods_reconciled_total, and both daemons' fd counts are back to what they were
// before the three came. A pod whose bind mount is gone but that still has a process stays.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { admin, AgentPaths, assertBuilt, eventually, fdTargets, NSHUB, probeSet, settledFdCount, startAgent } from "../fixtures/agent-harness.ts";
import { createSim, run, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 90_000;
const SWEEP_MS = 300;

interface DumpWorkload {
  uid: string;
  name: string;
  state: string;
}

netnsDescribe("nshub agent + proxy: pods whose netns vanished without a CNI DEL are removed from both", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let proxy: SimProcess;
  let live: Pod[];
  let doomed: Pod[];
  let holder: SimProcess; // a process in doomed[0]'s netns, killed last
  const base = { agent: 0, proxy: 0 };
  const withThree = { agent: 0, proxy: 0 };

  const dump = async () => {
    const r = await sim.node.execOrThrow(["curl", "-s", "http://127.0.0.1:15000/config_dump"]);
    return (JSON.parse(r.stdout) as { workloads: DumpWorkload[] }).workloads;
  };
  const agentPods = async () => (JSON.parse((await admin(sim, "/pods")).body) as { pods: Array<{ uid: string; state: string }> }).pods;
  const reconciledMetric = async () => /nshub_agent_pods_reconciled_total\{reason="netns_gone"\} (\d+)/.exec((await admin(sim, "/metrics")).body)?.[1];

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    // The sweep every 300 ms instead of 15 s, so that the test takes seconds.
    writeFileSync(paths.config, readFileSync(paths.config, "utf8").replace("agent:\n", `agent:\n  reconcileIntervalMs: ${SWEEP_MS}\n`));
    sim = await createSim({ prefix: "nshr-", plugins: [paths.plugin] });
    agent = await startAgent(sim, paths);
    // The proxy's write-side admin socket (when this build has one) in the test's dir, not /var/run.
    const help = await run([NSHUB, "proxy", "--help"]);
    const adminSocket = help.stdout.includes("--admin-socket") ? ["--admin-socket", join(paths.dir, "proxy-admin.sock")] : [];
    proxy = sim.node.spawn([NSHUB, "proxy", "--config", paths.config, "--zds-socket", paths.zdsSocket, "--log-level", "info", ...adminSocket], {
      env: { ...process.env, NSHUB_LOG_FORMAT: "json", NSHUB_CONFIG: undefined },
    });
    await eventually(async () => (await sim.node.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15021/healthz/ready"])).stdout === "200", "the proxy ready", 20_000);
    // Warm-up: a pod in and out, so lazily opened fds (threads, pools) are in the baseline.
    await sim.deletePod(await sim.addPod({ name: "warm", namespace: "mesh" }));
    live = [await sim.addPod({ name: "live-0", namespace: "mesh" }), await sim.addPod({ name: "live-1", namespace: "mesh" })];
    await eventually(async () => (await dump()).filter((w) => w.state === "Up").length === 2, "two pods Up at the proxy");
    base.agent = await settledFdCount(agent.pid);
    base.proxy = await settledFdCount(proxy.pid);
    doomed = [];
    for (let i = 0; i < 3; i++) doomed.push(await sim.addPod({ name: `doomed-${i}`, namespace: "mesh" }));
    holder = doomed[0]!.spawn(["sleep", "600"]);
    await eventually(async () => (await dump()).filter((w) => w.state === "Up").length === 5, "five pods Up at the proxy");
    withThree.agent = await settledFdCount(agent.pid);
    withThree.proxy = await settledFdCount(proxy.pid);
  }, T);

  afterAll(async () => {
    await proxy?.stop(5_000);
    await agent?.stop(5_000);
    await sim?.destroy();
    paths?.cleanup();
  }, T);

  test("five pods enrolled: each held by the agent (one fd) and the proxy (its netns and listeners)", async () => {
    expect((await agentPods()).map((p) => p.state)).toEqual(["enrolled", "enrolled", "enrolled", "enrolled", "enrolled"]);
    console.log(`fds with 2 pods: agent ${base.agent}, proxy ${base.proxy}; with 5: agent ${withThree.agent}, proxy ${withThree.proxy}`);
    expect(withThree.agent - base.agent).toBe(3);
    expect(withThree.proxy).toBeGreaterThan(base.proxy);
    expect(await reconciledMetric()).toBe("0");
  }, T);

  test("a netns whose bind mount is gone but that still has a process is alive: kept", async () => {
    await run(["ip", "netns", "del", doomed[0]!.name]);
    await Bun.sleep(SWEEP_MS * 5);
    expect((await agentPods()).find((p) => p.uid === doomed[0]!.uid)?.state).toBe("enrolled");
    expect((await dump()).find((w) => w.uid === doomed[0]!.uid)?.state).toBe("Up");
  }, T);

  test("three namespaces gone without DEL: agent and proxy drop exactly those, the two live pods stay Up, 3 counted, fds back to baseline", async () => {
    await holder.stop();
    for (const p of doomed.slice(1)) await run(["ip", "netns", "del", p.name]);
    const gone = new Set(doomed.map((p) => p.uid));
    const liveUids = live.map((p) => p.uid).sort();
    const started = Date.now();
    await eventually(async () => (await agentPods()).every((p) => !gone.has(p.uid)) && (await dump()).every((w) => !gone.has(w.uid)), "the three pods dropped by agent and proxy", 15_000);
    console.log(`dropped by agent and proxy ${Date.now() - started} ms after the namespaces went (sweep every ${SWEEP_MS} ms)`);
    expect((await agentPods()).map((p) => [p.uid, p.state]).sort()).toEqual(liveUids.map((u) => [u, "enrolled"]));
    expect((await dump()).map((w) => [w.uid, w.state]).sort()).toEqual(liveUids.map((u) => [u, "Up"]));
    expect(paths.state().map((p) => p.uid).sort()).toEqual(liveUids);
    expect(await probeSet(sim)).toEqual(live.map((p) => `${p.ip} ${p.uid}`).sort());
    expect(await reconciledMetric()).toBe("3");
    const logged = agent.stderr().split("\n").filter((l) => l.includes("removed without a CNI DEL"));
    expect(logged.length).toBe(3);
    const after = { agent: await settledFdCount(agent.pid), proxy: await settledFdCount(proxy.pid) };
    console.log(`fds after the sweep: agent ${after.agent} (baseline ${base.agent}), proxy ${after.proxy} (baseline ${base.proxy})`);
    if (after.agent !== base.agent) throw new Error(`agent fds ${after.agent}, baseline ${base.agent}: ${fdTargets(agent.pid).join(", ")}`);
    if (after.proxy !== base.proxy) throw new Error(`proxy fds ${after.proxy}, baseline ${base.proxy}: ${fdTargets(proxy.pid).join(", ")}`);
    // The namespaces are freed (nothing holds them any more): their veths left the node's bridge.
    await eventually(async () => (await sim.node.links()).filter((l) => l.kind === "veth").length === live.length, "only the live pods' veths on the node", 5_000);
  }, T);

  test("the runtime's late DEL for a removed pod is a no-op success; the live pods are untouched", async () => {
    for (const p of doomed) await sim.deletePod(p);
    expect((await agentPods()).map((p) => p.uid).sort()).toEqual(live.map((p) => p.uid).sort());
    expect((await dump()).filter((w) => w.state === "Up").length).toBe(2);
    expect(await reconciledMetric()).toBe("3");
  }, T);
});
