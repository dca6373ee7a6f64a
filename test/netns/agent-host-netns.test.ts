// The agent never runs its rule tools in a host network namespace, whatever path names it. The
// agent runs inside a virtual node (the harness), which is its own netns. Two "hosts":
//   the node           named through /proc/<pid of a process in the node>/ns/net
//   a stand-in for the machine's own netns: a scratch namespace that the agent's procfs (a fake
//                      --proc-root, as a container's /host/proc) shows as the kernel's initial one
//                      (pid 2 a kernel thread in it) while pid 1's cannot be read, which is how this
//                      machine's /proc is (stat /proc/1/ns/net: EACCES even for root). Before the
//                      fix, the agent dropped what it could not stat and enrolled this namespace.
// The machine's real netns is never named here: a test must not risk its rules (docs/TESTING.md).
// That the agent knows it is checked in its start-up log instead.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TestZdsClient } from "../fixtures/agent-zds-client.ts";
import { AgentPaths, assertBuilt, eventually, NSHUB, normalizeSave, probeSet, runPlugin, startAgent } from "../fixtures/agent-harness.ts";
import { createSim, run, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;
const keyOf = (p: string) => `${statSync(p).dev}:${statSync(p).ino}`;

netnsDescribe("nshub agent: a host network namespace is refused under any path, by identity", () => {
  const standIn = `nshub-hostns-${process.pid}`;
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let zds: TestZdsClient;
  let victim: Pod;
  let nodeProc: SimProcess; // a process in the node's netns
  let standInPid = 0; // a process in the stand-in's netns

  /** iptables-save in a netns, reduced to the chains and rules (agent-harness normalizeSave). */
  const rulesIn = async (argv: string[]) => normalizeSave((await run([...argv, "iptables-save"])).stdout);
  const nodeRules = () => rulesIn(["ip", "netns", "exec", sim.node.name]);
  const standInRules = () => rulesIn(["ip", "netns", "exec", standIn]);
  const cniArgs = (name: string) => `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=${name};K8S_POD_UID=${victim.uid}-${name}`;

  beforeAll(async () => {
    assertBuilt();
    expect((await run(["ip", "netns", "add", standIn])).code).toBe(0);
    const p = Bun.spawn(["ip", "netns", "exec", standIn, "sleep", "600"], { stdout: "ignore", stderr: "ignore" });
    standInPid = p.pid;
    await eventually(() => keyOf(`/proc/${standInPid}/ns/net`) === keyOf(`/var/run/netns/${standIn}`), "the stand-in's process");

    // The agent's procfs: pid 1's netns unreadable (a dangling link, as EACCES here), pid 2 a
    // kernel thread in the stand-in.
    paths = new AgentPaths({ namespaces: ["mesh"] });
    const procRoot = join(paths.dir, "host-proc");
    mkdirSync(join(procRoot, "1", "ns"), { recursive: true });
    symlinkSync(join(procRoot, "unreadable"), join(procRoot, "1", "ns", "net"));
    mkdirSync(join(procRoot, "2", "ns"), { recursive: true });
    writeFileSync(join(procRoot, "2", "stat"), "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0\n");
    symlinkSync(`/var/run/netns/${standIn}`, join(procRoot, "2", "ns", "net"));

    sim = await createSim({ plugins: [paths.plugin] });
    agent = await startAgent(sim, paths, ["--proc-root", procRoot]);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds.snapshotReceived, "the first snapshot");
    victim = await sim.addPod({ name: "victim", namespace: "default" });
    nodeProc = sim.node.spawn(["sleep", "600"]);
    await eventually(() => keyOf(`/proc/${nodeProc.pid}/ns/net`) === keyOf(sim.node.netnsPath), "the node's process");
    expect(await nodeRules()).not.toContain(":NSHUB_PRERT");
    expect(await standInRules()).toEqual([]);
  }, T);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    if (standInPid) process.kill(standInPid, "SIGKILL");
    await run(["ip", "netns", "del", standIn]);
    paths?.cleanup();
  }, T);

  test("CNI ADD naming the node's netns through /proc/<pid>/ns/net: refused, no rule tool ran in the node", async () => {
    const netns = `/proc/${nodeProc.pid}/ns/net`;
    const r = await runPlugin(sim, paths, victim, "ADD", { prevResult: JSON.stringify(victim.result), netns, cniArgs: cniArgs("node-by-pid") });
    expect((await nodeRules()).filter((l) => /NSHUB_(PRERT|OUTPUT)/.test(l))).toEqual([]);
    expect(r.json).toEqual({ cniVersion: "1.0.0", code: 100, msg: `pod mesh/node-by-pid: the nshub agent refused it: CNI_NETNS ${netns} is the node's own network namespace: refusing to touch it` });
    expect((await run(["ip", "netns", "exec", sim.node.name, "ip", "-4", "rule", "show"])).stdout).not.toContain("lookup 100");
  }, T);

  test("nshub enroll --netns naming the node's netns through /proc/<pid>/ns/net: refused", async () => {
    const netns = `/proc/${nodeProc.pid}/ns/net`;
    const r = await run([NSHUB, "enroll", "mesh/node-by-pid", "--uid", "0d0e0f", "--netns", netns, "--api-socket", paths.apiSocket]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 1,
      stderr: `nshub enroll mesh/node-by-pid: the netns of pod mesh/node-by-pid (the given path) ${netns} is the node's own network namespace: refusing to touch it\n`,
    });
    expect((await nodeRules()).filter((l) => /NSHUB_(PRERT|OUTPUT)/.test(l))).toEqual([]);
  }, T);

  test("CNI ADD naming the machine's netns (the stand-in) through /proc/<pid>/ns/net while pid 1's cannot be read: refused, no rule there", async () => {
    const netns = `/proc/${standInPid}/ns/net`;
    const r = await runPlugin(sim, paths, victim, "ADD", { prevResult: JSON.stringify(victim.result), netns, cniArgs: cniArgs("machine-by-pid") });
    expect(await standInRules()).toEqual([]);
    expect(r.json).toEqual({ cniVersion: "1.0.0", code: 100, msg: `pod mesh/machine-by-pid: the nshub agent refused it: CNI_NETNS ${netns} is the node's own network namespace: refusing to touch it` });
  }, T);

  test("nshub enroll --netns naming the stand-in: refused, no rule there", async () => {
    const r = await run([NSHUB, "enroll", "mesh/machine-by-pid", "--uid", "0a0b0c", "--netns", `/proc/${standInPid}/ns/net`, "--api-socket", paths.apiSocket]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is the node's own network namespace: refusing to touch it");
    expect(await standInRules()).toEqual([]);
  }, T);

  test("nothing reached the proxy, the cache or the probe set; the agent logged which host netns it knows", async () => {
    expect(zds.of("add")).toEqual([]);
    expect((await paths.client().listPods({ namespace: "mesh" })).pods).toEqual([]);
    expect(await probeSet(sim)).toEqual([]);
    const started = agent.stderr();
    const found = (/host network namespaces identified.*/.exec(started) ?? [""])[0];
    // Its own (the node's), the stand-in through the fake procfs's kernel thread, and the machine's
    // own initial netns through the real /proc/2 (readable by root here, while /proc/1 is not).
    expect(found).toContain(keyOf(sim.node.netnsPath));
    expect(found).toContain(`/host-proc/2/ns/net = ${keyOf(`/var/run/netns/${standIn}`)}`);
    expect(found).toContain(`/proc/2/ns/net = ${keyOf("/proc/2/ns/net")}`);
  }, T);
});
