// The host-namespace guard (src/agent/host-netns.ts) without root: where the agent reads the
// host's netns identities from, over fake procfs trees (pid 1's ns unreadable, pid 2 a kernel
// thread or not), and what a real Agent does with them: it refuses to start when it cannot
// identify its own netns (the node's), and refuses its own netns under any other path even
// when pid 1's cannot be read. The netns test test/netns/agent-host-netns.test.ts covers the
// same through the real CNI chain.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../src/agent/agent.ts";
import type { Dataplane } from "../../src/agent/dataplane.ts";
import { AgentError } from "../../src/agent/errors.ts";
import { HostNetns, HostNetnsError, hostSources, SELF_NETNS_PATHS } from "../../src/agent/host-netns.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { readStateFile } from "../../src/agent/state.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-host-netns-"));
const logs: string[] = [];
const keyOf = (p: string) => `${statSync(p).dev}:${statSync(p).ino}`;
const OWN = keyOf("/proc/self/ns/net");

class RecordingDataplane implements Dataplane {
  calls: string[] = [];
  async applyPod(p: string) {
    this.calls.push(`apply ${p}`);
  }
  async removePod(p: string) {
    this.calls.push(`remove ${p}`);
  }
  async resetHost() {}
  async addHostPod(ip: string) {
    this.calls.push(`host+ ${ip}`);
  }
  async removeHostPod(ip: string) {
    this.calls.push(`host- ${ip}`);
  }
  async addresses() {
    return [];
  }
}

/**
 * A fake procfs: pid 1's ns/net a dangling link (unreadable, like EACCES on a sandboxed pid 1);
 * pid 2 with a stat line whose flags are `flags` and an ns/net link to `ns2`, when given.
 */
function fakeProc(name: string, pid2?: { flags: number; ns: string }): string {
  const root = join(dir, name);
  mkdirSync(join(root, "1", "ns"), { recursive: true });
  symlinkSync(join(root, "nowhere"), join(root, "1", "ns", "net"));
  if (pid2) {
    mkdirSync(join(root, "2", "ns"), { recursive: true });
    writeFileSync(join(root, "2", "stat"), `2 (kthreadd) S 0 0 0 0 -1 ${pid2.flags} 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0\n`);
    symlinkSync(pid2.ns, join(root, "2", "ns", "net"));
  }
  return root;
}

function agentWith(root: string, self: readonly string[], dp = new RecordingDataplane()): Agent {
  return new Agent({
    policy: EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } }),
    dataplane: dp,
    stateFile: join(dir, `state-${Math.random().toString(36).slice(2)}.json`),
    procRoot: root,
    log: createLogger("host-netns-test"),
    pendingRetryMs: 60_000,
    hostSources: { self, procRoots: [root] },
  });
}

beforeAll(() => setLogSink((l) => logs.push(l), "json"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("HostNetns.establish", () => {
  test("the agent's own netns is required: without it, a HostNetnsError that says why and what the agent needs", () => {
    const root = fakeProc("no-self");
    let err: unknown;
    try {
      HostNetns.establish({ self: [join(dir, "no-such-ns")], procRoots: [root] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HostNetnsError);
    const msg = (err as Error).message;
    expect(msg).toBe(
      `cannot identify the agent's own network namespace, which is the node's (${join(dir, "no-such-ns")}: ENOENT): ` +
        "without it the agent could not tell the node's namespace from a pod's, so it does not start. " +
        "It needs procfs mounted at /proc, and to run in the node's network namespace (hostNetwork: true)",
    );
  });

  test("pid 1's netns unreadable: the agent's own is still known, and the kernel's initial netns through a kernel thread", () => {
    const initial = join(dir, "initial-ns"); // stands in for the initial netns's nsfs file
    writeFileSync(initial, "");
    const root = fakeProc("kthread", { flags: 0x208040, ns: initial });
    const host = HostNetns.establish({ self: SELF_NETNS_PATHS, procRoots: [root] });
    expect(host.own).toBe(OWN);
    expect(host.has(OWN)).toBe(true);
    expect(host.has(keyOf(initial))).toBe(true);
    expect(host.hostKnown).toBe(true);
    expect(host.unreadable).toEqual([`${root}/1/ns/net: ENOENT`]);
  });

  test("pid 2 that is not a kernel thread (a PID namespace of its own) is not taken for the host", () => {
    const other = join(dir, "other-ns");
    writeFileSync(other, "");
    const root = fakeProc("not-kthread", { flags: 0x400100, ns: other });
    const host = HostNetns.establish({ self: SELF_NETNS_PATHS, procRoots: [root] });
    expect(host.has(keyOf(other))).toBe(false);
    expect(host.hostKnown).toBe(false);
    expect(host.unreadable).toEqual([`${root}/1/ns/net: ENOENT`, `${root}/2/ns/net: pid 2 is not a kernel thread (a PID namespace of its own?)`]);
  });

  test("the default sources: both self paths, /proc and the configured procRoot", () => {
    expect(hostSources("/host/proc")).toEqual({ self: ["/proc/thread-self/ns/net", "/proc/self/ns/net"], procRoots: ["/proc", "/host/proc"] });
    expect(hostSources("/proc").procRoots).toEqual(["/proc"]);
  });
});

describe("the agent", () => {
  test("refuses to start when it cannot identify its own netns: rebuild throws, nothing is served", async () => {
    const agent = agentWith(fakeProc("start"), [join(dir, "unreadable-self")]);
    await expect(agent.rebuild()).rejects.toThrow(HostNetnsError);
    expect(agent.ready).toBe(false);
    const refusal = await agent.podAdd({ uid: "u1", namespace: "mesh", name: "p", serviceAccount: "", netnsPath: "/proc/self/ns/net", ips: ["10.1.0.2"], containerId: "c1" }).catch((e: unknown) => e);
    expect(refusal).toBeInstanceOf(AgentError);
    expect((refusal as AgentError).kind).toBe("unavailable");
    agent.stop();
  });

  test("with pid 1's netns unreadable, its own netns under any path is refused and nothing runs there", async () => {
    const dp = new RecordingDataplane();
    const agent = agentWith(fakeProc("refuse-own"), SELF_NETNS_PATHS, dp);
    await agent.rebuild();
    try {
      for (const path of [`/proc/${process.pid}/ns/net`, `/proc/${process.pid}/task/${process.pid}/ns/net`, "/proc/thread-self/ns/net"]) {
        const add = await agent.podAdd({ uid: "u-own", namespace: "mesh", name: "own", serviceAccount: "", netnsPath: path, ips: ["10.1.0.2"], containerId: "c1" }).catch((e: unknown) => e);
        expect(add).toBeInstanceOf(AgentError);
        expect((add as AgentError).message).toBe(`CNI_NETNS ${path} is the node's own network namespace: refusing to touch it`);
        const enroll = await agent.enroll({ uid: "u-own", namespace: "mesh", name: "own", netnsPath: path, serviceAccount: "" }).catch((e: unknown) => e);
        expect((enroll as AgentError).message).toBe(`the netns of pod mesh/own (the given path) ${path} is the node's own network namespace: refusing to touch it`);
      }
      expect(dp.calls).toEqual([]);
      expect(agent.listPods()).toEqual([]);
    } finally {
      agent.stop();
    }
  });

  test("a not-enrolled pod whose CNI_NETNS is the node's netns is answered but not cached (nor written to the state file)", async () => {
    const dp = new RecordingDataplane();
    const agent = agentWith(fakeProc("not-cached"), SELF_NETNS_PATHS, dp);
    await agent.rebuild();
    try {
      const path = `/proc/${process.pid}/ns/net`;
      const r = await agent.podAdd({ uid: "u-plain", namespace: "default", name: "plain", serviceAccount: "", netnsPath: path, ips: ["10.1.0.3"], containerId: "c2" });
      expect(r.state).toBe("not-enrolled");
      expect(r.reason).toBe(`no agent.enrollment include pattern matches pod default/plain; CNI_NETNS ${path} is the node's own network namespace: not cached`);
      expect(r.pod.netnsInode).toBe(0);
      expect(agent.listPods()).toEqual([]);
      expect(readStateFile((agent as unknown as { opts: { stateFile: string } }).opts.stateFile)).toEqual([]);
      expect(dp.calls).toEqual([]);
      // Another pod's netns path that is not the node's is cached as before.
      const other = await agent.podAdd({ uid: "u-other", namespace: "default", name: "other", serviceAccount: "", netnsPath: "/var/run/netns/nshub-none", ips: ["10.1.0.4"], containerId: "c3" });
      expect(other.state).toBe("not-enrolled");
      expect(agent.listPods().map((p) => p.uid)).toEqual(["u-other"]);
    } finally {
      agent.stop();
    }
  });
});
