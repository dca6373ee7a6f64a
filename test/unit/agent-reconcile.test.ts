// The sweep for pods whose netns died without a CNI DEL (src/agent/reconcile.ts), without root:
// plain files stand in for netns files (the sweep compares stat identities only) and a fake
// procfs for the processes. Which pods count as gone (no bind mount at the path, no process in
// the netns), that a pod is removed only at the second sweep in a row that finds it gone, and a
// real Agent dropping a not-enrolled pod that way, counted for /metrics. The netns test
// test/netns/agent-reconcile.test.ts does it with real namespaces, the real agent and proxy.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createAgentRegistry } from "../../src/agent/admin.ts";
import { Agent } from "../../src/agent/agent.ts";
import type { Dataplane } from "../../src/agent/dataplane.ts";
import { newEntry, type PodEntry } from "../../src/agent/pod-entry.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { NetnsReconciler, podsWithGoneNetns } from "../../src/agent/reconcile.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-reconcile-"));
const proc = join(dir, "proc");
const noHost = { has: () => false };
const logs: string[] = [];
const keyOf = (p: string) => `${statSync(p).dev}:${statSync(p).ino}`;

/** A stand-in netns file at `path`; returns its identity key. */
function netnsFile(path: string): string {
  writeFileSync(path, "");
  return keyOf(path);
}

/** A fake process `pid` whose ns/net is `target`. */
function processIn(pid: number, target: string): void {
  mkdirSync(join(proc, String(pid), "ns"), { recursive: true });
  symlinkSync(target, join(proc, String(pid), "ns", "net"));
}

function entry(uid: string, netnsPath: string, identityOf: string | undefined): PodEntry {
  const e = newEntry({ uid, namespace: "mesh", name: uid, serviceAccount: "", netnsPath, ips: ["10.0.0.1"], containerId: "c" }, undefined);
  e.state = "enrolled";
  if (identityOf) e.identity = { dev: statSync(identityOf).dev, ino: statSync(identityOf).ino };
  return e;
}

beforeAll(() => {
  setLogSink((l) => logs.push(l), "json");
  mkdirSync(proc);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("podsWithGoneNetns", () => {
  test("alive: a bind mount at its path (even with no process yet), or a process in it; gone: neither", () => {
    const mounted = join(dir, "mounted");
    netnsFile(mounted);
    const held = join(dir, "held-by-process");
    netnsFile(held);
    processIn(100, held);
    const gone = join(dir, "gone");
    const goneKey = netnsFile(gone);
    const reused = join(dir, "reused");
    const reusedKey = netnsFile(reused);
    const pods = [
      entry("mounted", mounted, mounted), // a just-created sandbox: only the bind mount
      entry("held", join(dir, "held-path-removed"), held), // `ip netns del` done, a process still in it
      entry("gone", join(dir, "gone-path-removed"), gone),
      entry("reused", mounted, reused), // its path now names another netns, and no process is in its own
      entry("unknown", join(dir, "nothing"), undefined), // never identified: cannot be judged, left alone
    ];
    expect(podsWithGoneNetns(pods, proc, noHost)).toEqual(
      new Map([
        ["gone", goneKey],
        ["reused", reusedKey],
      ]),
    );
  });
});

describe("NetnsReconciler", () => {
  test("a pod is removed only when two sweeps in a row find the same netns gone", async () => {
    const path = join(dir, "flappy");
    netnsFile(path);
    const e = entry("flappy", path, path);
    const aside = join(dir, "flappy-aside");
    const removed: string[] = [];
    const r = new NetnsReconciler({ procRoot: proc, host: noHost, log: createLogger("t"), pods: () => [e], remove: async (uid, key) => void removed.push(`${uid} ${key}`) });
    const key = keyOf(path);
    renameSync(path, aside); // gone for one sweep (the runtime between two steps)
    await r.sweep();
    renameSync(aside, path); // back
    await r.sweep();
    renameSync(path, aside);
    await r.sweep();
    expect(removed).toEqual([]);
    await r.sweep(); // second in a row
    expect(removed).toEqual([`flappy ${key}`]);
  });

  test("a different netns at the second sweep (the pod re-added meanwhile) starts over", async () => {
    const a = join(dir, "first");
    const b = join(dir, "second");
    netnsFile(a);
    netnsFile(b);
    let e = entry("readded", join(dir, "readded-path"), a);
    const removed: string[] = [];
    const r = new NetnsReconciler({ procRoot: proc, host: noHost, log: createLogger("t"), pods: () => [e], remove: async (uid) => void removed.push(uid) });
    await r.sweep();
    e = entry("readded", join(dir, "readded-path"), b);
    await r.sweep();
    expect(removed).toEqual([]);
    await r.sweep();
    expect(removed).toEqual(["readded"]);
  });
});

describe("the agent", () => {
  test("drops a cached pod whose netns is gone, logs it and counts it in nshub_agent_pods_reconciled_total", async () => {
    const dp: Dataplane = {
      applyPod: async () => undefined,
      removePod: async () => undefined,
      resetHost: async () => undefined,
      addHostPod: async () => undefined,
      removeHostPod: async () => undefined,
      addresses: async () => [],
    };
    const agent = new Agent({
      policy: EnrollmentPolicy.fromConfig({ namespaces: { include: [], exclude: [] }, pods: { include: [], exclude: [] } }),
      dataplane: dp,
      stateFile: join(dir, "state.json"),
      procRoot: proc,
      log: createLogger("reconcile-test"),
      reconcileIntervalMs: 100,
      hostSources: { self: ["/proc/self/ns/net"], procRoots: [proc] },
    });
    await agent.rebuild();
    try {
      const live = join(dir, "pod-live");
      const dead = join(dir, "pod-dead");
      netnsFile(live);
      netnsFile(dead);
      const add = (uid: string, path: string) => agent.podAdd({ uid, namespace: "default", name: uid, serviceAccount: "", netnsPath: path, ips: ["10.0.0.9"], containerId: uid });
      expect((await add("live", live)).state).toBe("not-enrolled");
      expect((await add("dead", dead)).state).toBe("not-enrolled");
      const registry = createAgentRegistry({ agent, zdsConnections: () => 0, listening: () => true }, { process: false });
      expect(await registry.registry.metrics()).toContain('nshub_agent_pods_reconciled_total{reason="netns_gone"} 0');
      unlinkSync(dead);
      const deadline = Date.now() + 5000;
      while (agent.pods.has("dead") && Date.now() < deadline) await Bun.sleep(20);
      expect([...agent.pods.keys()]).toEqual(["live"]);
      expect(await registry.registry.metrics()).toContain('nshub_agent_pods_reconciled_total{reason="netns_gone"} 1');
      expect(logs.some((l) => l.includes("pod default/dead removed without a CNI DEL: its netns") && l.includes(`nothing at ${dead}`))).toBe(true);
      registry.stop();
    } finally {
      agent.stop();
    }
  });
});
