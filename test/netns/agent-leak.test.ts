// No leaks in the agent: its open fd count (ls /proc/<pid>/fd) returns to its baseline after 500
// ADD/DEL cycles. (Bun keeps the memfd behind a spawned tool's stdin until the GC collects the
// Subprocess; those are counted apart and only checked to stay bounded — see fdCounts.) The 500 cycles drive PodAdd/PodDelete through the agent's event API directly
// (the same Connect calls nshub-cni makes; five real pods, 100 cycles each, run side by side),
// each one a full enrollment: netns opened, rules applied in the pod, probe ipset entry, netns fd
// handed to a (test) proxy over ZDS and acked, then all of it undone. Spawning the whole CNI chain
// 500 times would take minutes, so the full chain (bridge + host-local + loopback + nshub-cni) is
// cycled 25 times on top.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { PodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { TestZdsClient } from "../fixtures/agent-zds-client.ts";
import { AgentPaths, assertBuilt, CLEAN_STATE, eventually, podNetState, probeSet, settledFdCount, startAgent, fdTargets, fdCounts } from "../fixtures/agent-harness.ts";
import { createSim, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const PODS = 5;
const CYCLES_PER_POD = 100;
const CHAIN_CYCLES = 25;

netnsDescribe("nshub agent: fd count back to baseline after 500 ADD/DEL cycles", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let zds: TestZdsClient;
  let pods: Pod[];

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    sim = await createSim({ plugins: [paths.plugin] });
    agent = await startAgent(sim, paths, ["--log-level", "info"]);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds.snapshotReceived, "the snapshot");
    // Real pods (via the chain, in a namespace the policy leaves alone) whose netns and IP the
    // API-driven cycles enroll under fresh UIDs.
    pods = [];
    for (let i = 0; i < PODS; i++) pods.push(await sim.addPod({ name: `host-${i}`, namespace: "default" }));
  }, 60_000);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    paths?.cleanup();
  }, 60_000);

  async function cycle(pod: Pod, n: number): Promise<void> {
    const client = paths.client();
    const uid = randomUUID();
    const add = await client.podAdd({ uid, namespace: "mesh", name: `cycle-${n}`, netnsPath: pod.netnsPath, ips: [pod.ip], containerId: randomUUID().replaceAll("-", ""), interfaceName: "eth0" });
    if (add.state !== PodState.ENROLLED) throw new Error(`cycle ${n}: PodAdd answered ${PodState[add.state]}: ${add.reason}`);
    const del = await client.podDelete({ uid, namespace: "mesh", name: `cycle-${n}` });
    if (!del.deleted) throw new Error(`cycle ${n}: PodDelete: ${del.reason}`);
  }

  test(`${PODS * CYCLES_PER_POD} enroll/delete cycles through the event API`, async () => {
    for (const p of pods) await cycle(p, -1); // warm-up: lazily started threads, detection, pooled sockets
    const baseline = await settledFdCount(agent.pid);
    const baselineFds = fdTargets(agent.pid);
    const addsBefore = zds.of("add").length;
    await Promise.all(pods.map(async (p, i) => {
      for (let k = 0; k < CYCLES_PER_POD; k++) await cycle(p, i * CYCLES_PER_POD + k);
    }));
    expect(zds.of("add").length - addsBefore).toBe(PODS * CYCLES_PER_POD);
    expect(zds.served.size).toBe(0);
    const after = await settledFdCount(agent.pid);
    if (after !== baseline) throw new Error(`agent fds: ${after}, baseline ${baseline}\nbaseline: ${baselineFds.join(", ")}\nnow: ${fdTargets(agent.pid).join(", ")}`);
    // Tools get their input through a pipe, so no spawn memfd may be left open.
    expect(fdCounts(agent.pid).spawnMemfds).toBe(0);
    // Nothing left behind anywhere.
    for (const p of pods) expect(await podNetState(p.netnsPath)).toEqual(CLEAN_STATE);
    expect(await probeSet(sim)).toEqual([]);
    const left = (await paths.client().listPods({})).pods;
    expect(left.map((p) => p.state)).toEqual(pods.map(() => PodState.NOT_ENROLLED));
    expect(paths.state().length).toBe(PODS);
  }, 300_000);

  test(`${CHAIN_CYCLES} full CNI chain ADD/DEL cycles`, async () => {
    const warm = await sim.addPod({ name: "chain-warm", namespace: "mesh" });
    await sim.deletePod(warm);
    const baseline = await settledFdCount(agent.pid);
    for (let i = 0; i < CHAIN_CYCLES; i++) {
      const pod = await sim.addPod({ name: `chain-${i}`, namespace: "mesh" });
      if (!zds.served.has(pod.uid)) throw new Error(`chain cycle ${i}: the proxy did not get the pod`);
      await sim.deletePod(pod);
    }
    expect(zds.served.size).toBe(0);
    const after = await settledFdCount(agent.pid);
    if (after !== baseline) throw new Error(`agent fds: ${after}, baseline ${baseline}; now: ${fdTargets(agent.pid).join(", ")}`);
    expect(fdCounts(agent.pid).spawnMemfds).toBeLessThan(100);
    expect(await probeSet(sim)).toEqual([]);
  }, 300_000);
});
