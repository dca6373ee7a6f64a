// Two `nshub agent` processes on one node with the same socket paths, as a DaemonSet rollout
// with surge runs them: the second must refuse to start while the first serves its sockets
// (removing them would leave the proxy on the old agent and fail every new pod with CNI error
// 11), and must take over once the first has died and left its socket files behind.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { PodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { TestZdsClient } from "../fixtures/agent-zds-client.ts";
import { AgentPaths, assertBuilt, eventually, NSHUB, startAgent } from "../fixtures/agent-harness.ts";
import { createSim, type NetSim, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;

netnsDescribe("a second nshub agent on the same sockets", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let zds: TestZdsClient | undefined;

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    sim = await createSim({ plugins: [paths.plugin] });
  }, T);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    paths?.cleanup();
  }, T);

  function spawnAgent(extra: string[] = []): SimProcess {
    return sim.node.spawn([NSHUB, "agent", "--config", paths.config, ...extra], { env: { ...process.env, NSHUB_LOG_FORMAT: "text", NSHUB_CONFIG: undefined } });
  }

  /** The exit code, or "ready" if the agent started serving instead. */
  async function exitOrReady(p: SimProcess): Promise<number | "ready"> {
    const ready = p.waitForOutput(/agent ready/, 20_000).then(
      () => "ready" as const,
      () => new Promise<never>(() => {}),
    );
    const r = await Promise.race([p.exited, ready]);
    if (r === "ready") await p.stop();
    return r;
  }

  test("refused while the first agent lives; the first keeps serving new pods; after it dies, the next one takes over", async () => {
    const first = await startAgent(sim, paths);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds!.snapshotReceived, "the first agent's snapshot");
    const inodes = [statSync(paths.zdsSocket).ino, statSync(paths.apiSocket).ino];

    // Same socket paths (its own admin address, as a surge pod in its own netns would have):
    // refused, naming the ZDS socket. Only the API socket shared: refused, naming that one.
    const second = spawnAgent(["--admin-address", "127.0.0.1:15011"]);
    expect(await exitOrReady(second)).toBe(1);
    expect(second.stderr()).toContain(`nshub agent: another agent is serving the ZDS socket ${paths.zdsSocket}`);
    expect(second.stdout() + second.stderr()).not.toMatch(/removed stale|agent ready/);
    const third = spawnAgent(["--zds-socket", `${paths.dir}/run/other-zds.sock`, "--admin-address", "127.0.0.1:15012"]);
    expect(await exitOrReady(third)).toBe(1);
    expect(third.stderr()).toContain(`nshub agent: another agent is serving the API socket ${paths.apiSocket}`);
    expect([statSync(paths.zdsSocket).ino, statSync(paths.apiSocket).ino]).toEqual(inodes);

    // The first agent still gets new pods to the proxy (before the fix: CNI error 11 from here on).
    const pod = await sim.addPod({ name: "web-0", namespace: "mesh" });
    await eventually(() => zds!.served.has(pod.uid), "the new pod at the proxy");
    expect((await paths.client().listPods({})).pods.map((p) => [p.uid, p.state])).toEqual([[pod.uid, PodState.ENROLLED]]);

    // The first agent dies without cleaning up: its socket files stay, stale. The next one takes over.
    first.proc.kill("SIGKILL");
    await first.exited;
    await zds.close();
    expect(statSync(paths.zdsSocket).isSocket()).toBe(true);
    const next = await startAgent(sim, paths);
    expect(next.stdout() + next.stderr()).toMatch(/removed stale ZDS socket/);
    expect(next.stdout() + next.stderr()).toMatch(/removed stale API socket/);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds!.served.has(pod.uid), "the pod in the next agent's snapshot");
    await next.stop();
  }, T);
});
