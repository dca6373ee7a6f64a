// nshub agent + nshub-cni on a virtual node: pods wired by the real CNI chain (loopback, then
// bridge + host-local, then dist/nshub-cni last, as a runtime runs it), the agent (dist/nshub
// agent) running inside the node's netns with temp paths for every socket and file, and a test
// ZDS client (test/fixtures/agent-zds-client.ts) in the proxy's place.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { identityKey, Netns, netnsIdentityOfPath } from "../../src/sys/index.ts";
import { TestZdsClient } from "../fixtures/agent-zds-client.ts";
import {
  admin,
  AgentPaths,
  assertBuilt,
  CLEAN_STATE,
  ENROLLED_STATE,
  eventually,
  NSHUB,
  podNetState,
  probeSet,
  runPlugin,
  settledFdCount,
  startAgent,
} from "../fixtures/agent-harness.ts";
import { CniError, createSim, run, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";
import { hostNetState as rootSnapshot } from "../helpers/host-state.ts";

const T = 60_000;


const idOf = (p: string) => identityKey(netnsIdentityOfPath(p));

netnsDescribe("nshub agent + nshub-cni through the real CNI chain", () => {
  let rootBefore: Record<string, string>;
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let zds: TestZdsClient;
  let nodeId: string;

  beforeAll(async () => {
    assertBuilt();
    rootBefore = await rootSnapshot();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    sim = await createSim({ plugins: [paths.plugin] });
    nodeId = idOf(sim.node.netnsPath);
    agent = await startAgent(sim, paths);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds.snapshotReceived, "the first (empty) snapshot");
  }, T);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    paths?.cleanup();
    // The machine's own namespace is exactly as before: no rule, route, ip rule or ipset of ours.
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  const uids = (kind: string) => zds.of(kind as "add").map((e) => e.uid);

  describe("one node", () => {
    let web: Pod;
    let plain: Pod;
    let late: Pod;
    let lateHolder: SimProcess;
    let lateNetns: string; // /proc/<pid>/ns/net of the process that keeps late's netns alive

    test("an enrolled pod gets exactly the rule set, ip rule and route; the test ZDS client receives its netns", async () => {
      const before = zds.events.length;
      web = await sim.addPod({ name: "web-0", namespace: "mesh" });
      expect(await podNetState(web.netnsPath)).toEqual(ENROLLED_STATE);
      const adds = zds.events.slice(before);
      expect(adds).toEqual([{ kind: "add", uid: web.uid, info: { name: "web-0", namespace: "mesh", serviceAccount: "default" }, netns: idOf(web.netnsPath) }]);
      expect(zds.served.has(web.uid)).toBe(true);
      // Host side: the pod's IP in the probe set (comment = uid), the SNAT rule first in POSTROUTING.
      expect(await probeSet(sim)).toEqual([`${web.ip} ${web.uid}`]);
      const nat = (await sim.node.execOrThrow(["iptables", "-t", "nat", "-S", "POSTROUTING"])).stdout.split("\n");
      expect(nat[1]).toBe("-A POSTROUTING -j NSHUB_POSTRT");
      const pods = (await paths.client().listPods({})).pods;
      expect(pods.map((p) => [p.uid, p.state, p.ips, p.netnsHeld])).toEqual([[web.uid, PodState.ENROLLED, [web.ip], true]]);
      const st = paths.state().find((p) => p.uid === web.uid)!;
      expect(st.state).toBe("enrolled");
      expect(`${st.netns!.dev}:${st.netns!.ino}`).toBe(idOf(web.netnsPath));
      // The runtime got bridge's result unchanged (the harness feeds it on; it is the final result).
      expect(web.ip).not.toBe("");
      // admin endpoints
      expect(await admin(sim, "/healthz")).toEqual({ status: 200, body: "ok\n" });
      expect(await admin(sim, "/readyz")).toEqual({ status: 200, body: "ready\n" });
      const metrics = (await admin(sim, "/metrics")).body;
      expect(metrics).toContain('nshub_agent_pods{state="enrolled"} 1');
      expect(metrics).toContain('nshub_agent_cni_requests_total{method="PodAdd",result="enrolled"} 1');
      expect(metrics).toContain("nshub_agent_zds_connections 1");
      const podsJson = JSON.parse((await admin(sim, "/pods")).body) as { ready: boolean; pods: Array<{ uid: string; state: string }> };
      expect(podsJson.ready).toBe(true);
      expect(podsJson.pods.map((p) => [p.uid, p.state])).toEqual([[web.uid, "enrolled"]]);
    }, T);

    test("a pod the policy does not enroll gets nothing", async () => {
      const before = zds.events.length;
      plain = await sim.addPod({ name: "plain", namespace: "default" });
      expect(await podNetState(plain.netnsPath)).toEqual(CLEAN_STATE);
      expect(zds.events.length).toBe(before);
      expect(await probeSet(sim)).toEqual([`${web.ip} ${web.uid}`]);
      const p = (await paths.client().listPods({ namespace: "default" })).pods;
      expect(p.map((x) => [x.uid, x.state, x.netnsHeld, x.reason])).toEqual([[plain.uid, PodState.NOT_ENROLLED, false, "no agent.enrollment include pattern matches pod default/plain"]]);
    }, T);

    test("ADD twice changes nothing (and prints prevResult byte for byte)", async () => {
      const before = { net: await podNetState(web.netnsPath), raw: (await web.exec(["iptables-save"])).stdout, events: zds.events.length, set: await probeSet(sim) };
      const prev = JSON.stringify(web.result);
      const r = await runPlugin(sim, paths, web, "ADD", { prevResult: prev });
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: prev });
      expect(await podNetState(web.netnsPath)).toEqual(before.net);
      const strip = (s: string) => s.split("\n").filter((l) => !l.startsWith("#")).join("\n");
      expect(strip((await web.exec(["iptables-save"])).stdout)).toBe(strip(before.raw));
      expect(zds.events.length).toBe(before.events);
      expect(await probeSet(sim)).toEqual(before.set);
      const reply = await paths.client().podAdd({ uid: web.uid, namespace: "mesh", name: "web-0", netnsPath: web.netnsPath, ips: [web.ip], containerId: web.containerId });
      expect([reply.state, reply.reason]).toEqual([PodState.ENROLLED, "already enrolled: no change"]);
    }, T);

    test("CNI CHECK passes for enrolled and plain pods", async () => {
      await sim.checkPod(web);
      await sim.checkPod(plain);
    }, T);

    test("unenroll of a running pod removes everything and the ZDS client gets DelWorkload", async () => {
      const r = await run([NSHUB, "unenroll", "mesh/web-0", "--api-socket", paths.apiSocket]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
      expect(r.stdout).toBe("mesh/web-0: not enrolled — unenrolled by an operator (nshub unenroll)\n");
      expect(await podNetState(web.netnsPath)).toEqual(CLEAN_STATE);
      expect(zds.events.at(-1)).toEqual({ kind: "del", uid: web.uid });
      expect(zds.served.has(web.uid)).toBe(false);
      expect(await probeSet(sim)).toEqual([]);
      const p = (await paths.client().listPods({ namespace: "mesh" })).pods[0]!;
      expect([p.state, p.override, p.netnsHeld]).toEqual([PodState.NOT_ENROLLED, "unenroll", false]);
      // Unenrolling again is a no-op.
      const again = await run([NSHUB, "unenroll", "mesh/web-0", "--api-socket", paths.apiSocket, "--json"]);
      expect(again.code).toBe(0);
      expect(JSON.parse(again.stdout)).toMatchObject({ pod: "mesh/web-0", state: "not enrolled", reason: "already not enrolled: no change" });
    }, T);

    test("nshub enroll brings a running pod back (late enrollment)", async () => {
      const r = await run([NSHUB, "enroll", "mesh/web-0", "--api-socket", paths.apiSocket]);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: "mesh/web-0: enrolled — rules in place; a proxy acked the pod\n" });
      expect(await podNetState(web.netnsPath)).toEqual(ENROLLED_STATE);
      expect(zds.events.at(-1)).toEqual({ kind: "add", uid: web.uid, info: { name: "web-0", namespace: "mesh", serviceAccount: "default" }, netns: idOf(web.netnsPath) });
      expect(await probeSet(sim)).toEqual([`${web.ip} ${web.uid}`]);
    }, T);

    test("late enrollment of a pod whose netns path is gone: found by the /proc scan", async () => {
      late = await sim.addPod({ name: "late", namespace: "default" });
      const id = idOf(late.netnsPath);
      // A process keeps the netns alive; its /var/run/netns name goes away.
      lateHolder = late.spawn(["sleep", "600"]);
      await eventually(async () => existsSync(`/proc/${lateHolder.pid}/ns/net`) && idOf(`/proc/${lateHolder.pid}/ns/net`) === id, "the holder process in the pod");
      lateNetns = `/proc/${lateHolder.pid}/ns/net`;
      await run(["ip", "netns", "del", late.name]);
      expect(existsSync(late.netnsPath)).toBe(false);
      const r = await run([NSHUB, "enroll", "default/late", "--api-socket", paths.apiSocket, "--service-account", "late-sa"]);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: "default/late: enrolled — rules in place; a proxy acked the pod\n", stderr: "" });
      expect(await podNetState(lateNetns)).toEqual(ENROLLED_STATE);
      expect(zds.events.at(-1)).toEqual({ kind: "add", uid: late.uid, info: { name: "late", namespace: "default", serviceAccount: "late-sa" }, netns: id });
      expect(await probeSet(sim)).toEqual([`${late.ip} ${late.uid}`, `${web.ip} ${web.uid}`].sort());
    }, T);

    test("agent restart: pods survive, the cache is rebuilt from state + /proc, the proxy gets the same snapshot; the node's own netns is untouched", async () => {
      // A pod deleted while the agent is down: its DEL must still succeed, and the rebuild drops it.
      const gone = await sim.addPod({ name: "gone-0", namespace: "mesh" });
      expect(zds.served.has(gone.uid)).toBe(true);
      const podsBefore = await Promise.all([podNetState(web.netnsPath), podNetState(lateNetns)]);
      const setBefore = await probeSet(sim);
      const nodeRulesBefore = (await sim.node.execOrThrow(["iptables-save"])).stdout;
      const stateBefore = paths.state();

      await agent.stop();
      expect(await agent.exited).toBe(0);
      await zds.close();
      // Rules stay while the agent is away (an agent restart must not disturb traffic).
      expect(await podNetState(web.netnsPath)).toEqual(ENROLLED_STATE);
      // DEL with the agent away succeeds (logged), so pod teardown never blocks on the agent.
      await sim.deletePod(gone);
      expect(await Bun.file(paths.cniLog).text()).toContain("DEL: agent not reachable; succeeding anyway");

      agent = await startAgent(sim, paths);
      zds = await TestZdsClient.connect(paths.zdsSocket);
      await eventually(() => zds.snapshotReceived, "the snapshot");
      const snap = zds.events.filter((e) => e.kind === "add").sort((a, b) => a.uid.localeCompare(b.uid));
      expect(snap).toEqual(
        [
          { kind: "add" as const, uid: web.uid, info: { name: "web-0", namespace: "mesh", serviceAccount: "default" }, netns: idOf(web.netnsPath) },
          { kind: "add" as const, uid: late.uid, info: { name: "late", namespace: "default", serviceAccount: "late-sa" }, netns: idOf(lateNetns) },
        ].sort((a, b) => a.uid.localeCompare(b.uid)),
      );
      expect(zds.events.at(-1)?.kind).toBe("snapshotSent");
      expect(uids("add")).not.toContain(gone.uid);
      expect(zds.events.every((e) => e.netns !== nodeId)).toBe(true);
      // Same pods, same states; the deleted one is gone from cache, state file and probe set.
      const pods = (await paths.client().listPods({})).pods.map((p) => [p.uid, p.state, p.netnsHeld]).sort();
      expect(pods).toEqual(
        [
          [web.uid, PodState.ENROLLED, true],
          [late.uid, PodState.ENROLLED, true],
          [plain.uid, PodState.NOT_ENROLLED, false],
        ].sort(),
      );
      expect(paths.state().map((p) => p.uid).sort()).toEqual(stateBefore.filter((p) => p.uid !== gone.uid).map((p) => p.uid).sort());
      expect(await probeSet(sim)).toEqual(setBefore.filter((l) => !l.endsWith(gone.uid)));
      // The pods' rules are exactly as before (re-asserted, nothing duplicated).
      expect(await Promise.all([podNetState(web.netnsPath), podNetState(lateNetns)])).toEqual(podsBefore);
      // The node: only the host probe rule is ours; no in-pod chain, ip rule or table-100 route.
      const strip = (s: string) => s.split("\n").filter((l) => !l.startsWith("#")).map((l) => l.replace(/\[\d+:\d+\]/g, "")).join("\n");
      expect(strip((await sim.node.execOrThrow(["iptables-save"])).stdout)).toBe(strip(nodeRulesBefore));
      const nodeState = await podNetState(sim.node.netnsPath);
      expect(nodeState.ipRules).toEqual(CLEAN_STATE.ipRules);
      expect(nodeState.table100).toEqual([]);
      expect(nodeState.rules.filter((l) => /NSHUB_(PRERT|OUTPUT)/.test(l))).toEqual([]);
      expect((await admin(sim, "/readyz")).status).toBe(200);
    }, T);

    test("DEL removes everything (checked through a netns fd the test keeps open)", async () => {
      const held = Netns.open(web.netnsPath);
      try {
        const at = `/proc/${process.pid}/fd/${held.fd}`;
        expect(await podNetState(at)).toEqual(ENROLLED_STATE);
        await sim.deletePod(web);
        expect(zds.events.at(-1)).toEqual({ kind: "del", uid: web.uid });
        expect(zds.served.has(web.uid)).toBe(false);
        expect(await podNetState(at)).toEqual(CLEAN_STATE);
        expect((await paths.client().listPods({})).pods.map((p) => p.uid)).not.toContain(web.uid);
        expect(paths.state().map((p) => p.uid)).not.toContain(web.uid);
        expect(await probeSet(sim)).toEqual([`${late.ip} ${late.uid}`]);
        // DEL again (the runtime retries): nothing to delete, success.
        const again = await runPlugin(sim, paths, web, "DEL", { prevResult: JSON.stringify(web.result) });
        expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 0, stdout: "" });
      } finally {
        held.close();
      }
    }, T);

    test("the late pod's DEL cleans up although its netns path is gone", async () => {
      await sim.deletePod(late);
      expect(zds.events.at(-1)).toEqual({ kind: "del", uid: late.uid });
      expect(await probeSet(sim)).toEqual([]);
      expect((await paths.client().listPods({})).pods.map((p) => p.uid)).toEqual([plain.uid]);
    }, T);
  });

  describe("policy changes take effect when the agent restarts", () => {
    test("pods the policy no longer covers are unenrolled, pods it now covers are enrolled, operator overrides stay", async () => {
      const a = await sim.addPod({ name: "pol-a", namespace: "mesh" }); // enrolled by policy
      const b = await sim.addPod({ name: "pol-b", namespace: "other" }); // not enrolled
      const c = await sim.addPod({ name: "pol-c", namespace: "mesh" });
      expect((await run([NSHUB, "unenroll", "mesh/pol-c", "--api-socket", paths.apiSocket])).code).toBe(0); // override: stays out
      expect(await podNetState(a.netnsPath)).toEqual(ENROLLED_STATE);
      expect(await podNetState(b.netnsPath)).toEqual(CLEAN_STATE);

      const restart = async () => {
        await zds.close();
        await agent.stop();
        agent = await startAgent(sim, paths);
        zds = await TestZdsClient.connect(paths.zdsSocket);
        await eventually(() => zds.snapshotReceived, "the snapshot");
      };
      paths.writeConfig({ namespaces: ["other", "mesh-*"] });
      await restart();
      const state = async () => Object.fromEntries((await paths.client().listPods({})).pods.map((p) => [p.name, PodState[p.state]]));
      expect(await podNetState(a.netnsPath)).toEqual(CLEAN_STATE);
      expect(await podNetState(b.netnsPath)).toEqual(ENROLLED_STATE);
      expect(await podNetState(c.netnsPath)).toEqual(CLEAN_STATE);
      expect(zds.of("add").map((e) => e.uid)).toEqual([b.uid]);
      await eventually(async () => (await state())["pol-b"] === "ENROLLED", "pol-b enrolled after the snapshot");
      expect(await state()).toMatchObject({ "pol-a": "NOT_ENROLLED", "pol-b": "ENROLLED", "pol-c": "NOT_ENROLLED" });
      expect(await probeSet(sim)).toEqual([`${b.ip} ${b.uid}`]);

      paths.writeConfig({ namespaces: ["mesh"] });
      await restart();
      expect(await podNetState(a.netnsPath)).toEqual(ENROLLED_STATE);
      expect(await podNetState(b.netnsPath)).toEqual(CLEAN_STATE);
      expect(await podNetState(c.netnsPath)).toEqual(CLEAN_STATE);
      await eventually(async () => (await state())["pol-a"] === "ENROLLED", "pol-a enrolled after the snapshot");
      expect(await state()).toMatchObject({ "pol-a": "ENROLLED", "pol-b": "NOT_ENROLLED", "pol-c": "NOT_ENROLLED" });
      for (const p of [a, b, c]) await sim.deletePod(p);
      expect(await probeSet(sim)).toEqual([]);
    }, T);
  });

  describe("bad input: a precise error, nothing half-applied, nothing leaked", () => {
    let pod: Pod;
    let eventsBefore: number;
    let podsBefore: string[];

    beforeAll(async () => {
      pod = await sim.addPod({ name: "victim", namespace: "default" });
      eventsBefore = zds.events.length;
      podsBefore = (await paths.client().listPods({})).pods.map((p) => p.uid).sort();
    }, T);

    const mesh = (p: Pod) => `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=bad;K8S_POD_UID=${p.uid}-x`;

    test("CNI_NETNS that does not exist", async () => {
      const r = await runPlugin(sim, paths, pod, "ADD", { prevResult: JSON.stringify(pod.result), netns: "/var/run/netns/nshub-no-such-ns", cniArgs: mesh(pod) });
      expect(r.code).toBe(1);
      expect(r.json).toEqual({ cniVersion: "1.0.0", code: 100, msg: "pod mesh/bad: the nshub agent refused it: CNI_NETNS /var/run/netns/nshub-no-such-ns does not exist" });
    }, T);

    test("CNI_NETNS that is a regular file", async () => {
      const file = join(paths.dir, "not-a-netns");
      writeFileSync(file, "");
      const r = await runPlugin(sim, paths, pod, "ADD", { prevResult: JSON.stringify(pod.result), netns: file, cniArgs: mesh(pod) });
      expect(r.json).toEqual({ cniVersion: "1.0.0", code: 100, msg: `pod mesh/bad: the nshub agent refused it: CNI_NETNS: ${file} is not a network namespace: not a namespace file (ENOTTY)` });
    }, T);

    test("CNI_NETNS that is the node's own netns", async () => {
      const r = await runPlugin(sim, paths, pod, "ADD", { prevResult: JSON.stringify(pod.result), netns: sim.node.netnsPath, cniArgs: mesh(pod) });
      expect(r.json?.code).toBe(100);
      expect(r.json?.msg).toBe(`pod mesh/bad: the nshub agent refused it: CNI_NETNS ${sim.node.netnsPath} is the node's own network namespace: refusing to touch it`);
    }, T);

    test("a pod with no IP", async () => {
      const noIp = JSON.stringify({ ...pod.result, ips: [] });
      const r = await runPlugin(sim, paths, pod, "ADD", { prevResult: noIp, cniArgs: mesh(pod) });
      expect(r.json?.code).toBe(100);
      expect(r.json?.msg).toBe("pod mesh/bad: the nshub agent refused it: pod mesh/bad has no IP address (the previous plugin's result lists none for the pod): cannot enroll it");
    }, T);

    test("missing or wrong prevResult, malformed netconf", async () => {
      const missing = await runPlugin(sim, paths, pod, "ADD", { cniArgs: mesh(pod) });
      expect(missing.json?.code).toBe(7);
      const wrong = await runPlugin(sim, paths, pod, "ADD", { prevResult: '{"ips":"10.0.0.1/24"}', cniArgs: mesh(pod) });
      expect(wrong.json).toEqual({ cniVersion: "1.0.0", code: 7, msg: "prevResult.ips must be an array, got a string" });
      const badVersion = await runPlugin(sim, paths, pod, "ADD", { prevResult: JSON.stringify(pod.result), conf: { cniVersion: "0.1.0" } });
      expect(badVersion.json).toEqual({ cniVersion: "1.1.0", code: 1, msg: 'incompatible CNI version "0.1.0"', details: "nshub-cni supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" });
      const garbage = await run(["ip", "netns", "exec", sim.node.name, NSHUB + "-cni"], {
        stdin: "{oops",
        env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: pod.containerId, CNI_NETNS: pod.netnsPath, CNI_IFNAME: "eth0", CNI_PATH: "/x", CNI_ARGS: mesh(pod) },
      });
      expect(garbage.code).toBe(1);
      expect(JSON.parse(garbage.stdout)).toMatchObject({ code: 6, msg: "network configuration on stdin is not valid JSON" });
    }, T);

    test("none of it reached the pod, the proxy or the cache", async () => {
      expect(await podNetState(pod.netnsPath)).toEqual(CLEAN_STATE);
      expect(zds.events.length).toBe(eventsBefore);
      expect((await paths.client().listPods({})).pods.map((p) => p.uid).sort()).toEqual(podsBefore);
      expect(await probeSet(sim)).toEqual([]);
    }, T);

    test("garbage on the event socket of the running agent", async () => {
      const fdsBefore = await settledFdCount(agent.pid);
      const post = (path: string, body: string | Uint8Array, ctype: string) =>
        fetch(`http://agent${path}`, { method: "POST", body, headers: { "content-type": ctype }, unix: paths.apiSocket, keepalive: false } as RequestInit);
      for (let i = 0; i < 30; i++) {
        const raw = await run(["socat", "-t", "2", "-", `UNIX-CONNECT:${paths.apiSocket}`], { stdin: "\x16\x03\x01 not http at all\r\n\r\n" });
        expect(raw.stdout).toStartWith("HTTP/1.1 400");
        const ct = await post("/nshub.agent.v1.AgentService/PodAdd", "x", "text/plain");
        expect([ct.status, ((await ct.json()) as { code: string }).code]).toEqual([400, "invalid_argument"]);
        const pb = await post("/nshub.agent.v1.AgentService/PodAdd", new Uint8Array([0x12, 0x7f]), "application/proto");
        expect(((await pb.json()) as { message: string }).message).toStartWith("cannot decode message nshub.agent.v1.PodAddRequest from binary");
        const js = await post("/nshub.agent.v1.AgentService/PodDelete", "[1,2", "application/json");
        expect(((await js.json()) as { code: string }).code).toBe("invalid_argument");
      }
      expect(agent.running).toBe(true);
      expect((await paths.client().listPods({})).pods.map((p) => p.uid).sort()).toEqual(podsBefore);
      expect(await settledFdCount(agent.pid)).toBe(fdsBefore);
    }, T);

    afterAll(async () => {
      await sim.deletePod(pod);
    });
  });
});

netnsDescribe("nshub agent with no proxy connected: fail closed, pending, then enrolled", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let zds: TestZdsClient | undefined;

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    sim = await createSim({ plugins: [paths.plugin] });
    await startAgent(sim, paths);
  }, T);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    paths?.cleanup();
  }, T);

  test("ADD fails with CNI error 11; the runtime's DEL then removes the pod", async () => {
    const err = await sim.addPod({ name: "early", namespace: "mesh" }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CniError);
    const e = err as CniError;
    expect([e.plugin, e.code]).toEqual(["nshub-cni", 11]);
    expect(e.msg).toMatch(/^pod mesh\/early is pending: no nshub proxy has taken it yet \(no proxy acked the pod: no proxy connected\)$/);
    expect((await paths.client().listPods({})).pods).toEqual([]);
    expect(await probeSet(sim)).toEqual([]);
    const metrics = (await admin(sim, "/metrics")).body;
    expect(metrics).toContain('nshub_agent_cni_requests_total{method="PodAdd",result="pending"} 1');
    expect(metrics).toContain("nshub_agent_zds_connections 0");
  }, T);

  test("nshub enroll with no proxy: exit 3, pending, rules in place; nshub unenroll takes them out again", async () => {
    const pod = await sim.addPod({ name: "lonely", namespace: "default" });
    const r = await run([NSHUB, "enroll", "default/lonely", "--api-socket", paths.apiSocket]);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 3, stdout: "default/lonely: pending — no proxy acked the pod: no proxy connected\n" });
    expect(await podNetState(pod.netnsPath)).toEqual(ENROLLED_STATE);
    expect(await probeSet(sim)).toEqual([`${pod.ip} ${pod.uid}`]);
    const u = await run([NSHUB, "unenroll", "default/lonely", "--api-socket", paths.apiSocket]);
    expect(u.code).toBe(0);
    expect(await podNetState(pod.netnsPath)).toEqual(CLEAN_STATE);
    expect(await probeSet(sim)).toEqual([]);
    await sim.deletePod(pod);
    expect((await paths.client().listPods({})).pods).toEqual([]);
  }, T);

  test("with the runtime's DEL held back, the pod shows pending with its rules in place; a proxy connects and it becomes enrolled", async () => {
    // Keep the failed sandbox around (as between the failed ADD and the runtime's DEL).
    const realDelete = sim.deletePod.bind(sim);
    sim.deletePod = async () => undefined;
    let err: unknown;
    try {
      err = await sim.addPod({ name: "held", namespace: "mesh" }).then(
        () => null,
        (x: unknown) => x,
      );
    } finally {
      sim.deletePod = realDelete;
    }
    expect((err as CniError).code).toBe(11);
    const pod = sim.pods.at(-1)!;
    expect(pod.podName).toBe("held");
    const p = (await paths.client().listPods({})).pods;
    expect(p.map((x) => [x.uid, x.state, x.reason])).toEqual([[pod.uid, PodState.PENDING, "no proxy acked the pod: no proxy connected"]]);
    expect(await podNetState(pod.netnsPath)).toEqual(ENROLLED_STATE); // fail closed
    expect((await admin(sim, "/metrics")).body).toContain('nshub_agent_pods{state="pending"} 1');
    // CHECK reports the pending pod as "try again later".
    const check = await runPlugin(sim, paths, pod, "CHECK", { prevResult: '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}' });
    expect(check.json?.code).toBe(11);

    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds!.snapshotReceived, "the snapshot");
    expect(zds.of("add")).toEqual([{ kind: "add", uid: pod.uid, info: { name: "held", namespace: "mesh", serviceAccount: "default" }, netns: idOf(pod.netnsPath) }]);
    await eventually(async () => (await paths.client().listPods({})).pods[0]?.state === PodState.ENROLLED, "the pod to be enrolled");
    expect((await paths.client().listPods({})).pods[0]!.reason).toBe("acked by a proxy in its snapshot");
    expect(paths.state()[0]!.state).toBe("enrolled");
    await sim.deletePod(pod);
    expect(zds.events.at(-1)).toEqual({ kind: "del", uid: pod.uid });
  }, T);

  test("the runtime's retry after the proxy connected succeeds", async () => {
    const pod = await sim.addPod({ name: "retried", namespace: "mesh" });
    expect((await paths.client().listPods({})).pods.map((x) => [x.uid, x.state])).toEqual([[pod.uid, PodState.ENROLLED]]);
    expect(await podNetState(pod.netnsPath)).toEqual(ENROLLED_STATE);
  }, T);

  test("a proxy that nacks: the pod stays pending (rules in place) and is retried", async () => {
    await zds!.close();
    let nacks = 1;
    zds = await TestZdsClient.connect(paths.zdsSocket, {
      respond: (ev) => (ev.kind === "add" && ev.info?.name === "nacked" && nacks-- > 0 ? "failure to start proxy : bind: address in use" : undefined),
    });
    await eventually(() => zds!.snapshotReceived, "the snapshot");
    const pod = await sim.addPod({ name: "nacked", namespace: "mesh" }).then(
      () => null,
      (x: unknown) => x,
    );
    // The first attempt was nacked: ADD failed with 11 and the runtime deleted the sandbox.
    expect((pod as CniError).code).toBe(11);
    expect((pod as CniError).msg).toContain("failure to start proxy : bind: address in use");
    // The runtime retries with a new sandbox: now the proxy takes it.
    const again = await sim.addPod({ name: "nacked", namespace: "mesh" });
    expect((await paths.client().listPods({ namespace: "mesh" })).pods.find((x) => x.uid === again.uid)?.state).toBe(PodState.ENROLLED);
  }, T);
});
