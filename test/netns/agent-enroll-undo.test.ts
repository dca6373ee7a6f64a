// The agent's enrollment sets up the in-pod rules and the host probe set at the same time; when
// either fails, what the other did is undone and the pod is not cached. A real Agent on a real
// (throwaway) pod netns, with a dataplane that records calls and fails on demand.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../src/agent/agent.ts";
import type { Dataplane } from "../../src/agent/dataplane.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { readStateFile } from "../../src/agent/state.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";
import { homeNetns } from "../../src/sys/index.ts";
import { netnsDescribe } from "../helpers/root.ts";

class FailingDataplane implements Dataplane {
  calls: string[] = [];
  failApply = false;
  failHostIp: string | undefined;
  async applyPod(p: string) {
    await Bun.sleep(5);
    if (this.failApply) throw new Error("iptables-restore failed (injected)");
    this.calls.push(`apply ${p}`);
  }
  async removePod(p: string) {
    this.calls.push(`remove ${p}`);
  }
  async resetHost() {}
  async addHostPod(ip: string, uid: string) {
    if (ip === this.failHostIp) throw new Error("ipset add failed (injected)");
    this.calls.push(`host+ ${ip} ${uid}`);
  }
  async removeHostPod(ip: string, uid: string) {
    this.calls.push(`host- ${ip} ${uid}`);
  }
  async addresses() {
    return [];
  }
}

netnsDescribe("agent: enrollment undo", () => {
  const ns = `nsh-undo-${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), "nshub-undo-"));
  const dp = new FailingDataplane();
  let agent: Agent;
  const req = (uid: string) => ({ uid, namespace: "mesh", name: uid, serviceAccount: "sa", netnsPath: `/var/run/netns/${ns}`, ips: ["10.77.0.2", "10.77.0.3"], containerId: `c-${uid}`, interfaceName: "eth0" });

  beforeAll(async () => {
    setLogSink(() => undefined, "json");
    homeNetns();
    expect((await Bun.spawn(["ip", "netns", "add", ns]).exited)).toBe(0);
    agent = new Agent({
      policy: EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } }),
      dataplane: dp,
      stateFile: join(dir, "state.json"),
      procRoot: "/proc",
      log: createLogger("undo-test"),
      pendingRetryMs: 60_000,
    });
    await agent.rebuild();
  });

  afterAll(async () => {
    agent?.stop();
    await Bun.spawn(["ip", "netns", "del", ns]).exited;
    rmSync(dir, { recursive: true, force: true });
  });

  test("in-pod rules fail: the probe-set entries already added are removed, nothing is cached", async () => {
    dp.calls = [];
    dp.failApply = true;
    dp.failHostIp = undefined;
    await expect(agent.podAdd(req("u-rules"))).rejects.toThrow("applying the in-pod rules");
    // Both IPs went into the probe set while the rules were being applied; both came out again.
    expect(dp.calls.filter((c) => c.startsWith("host+")).length).toBe(2);
    expect(dp.calls.filter((c) => c.startsWith("host-")).sort()).toEqual(["host- 10.77.0.2 u-rules", "host- 10.77.0.3 u-rules"]);
    expect(dp.calls.some((c) => c.startsWith("remove"))).toBe(false); // no rules were left to remove
    expect(readStateFile(join(dir, "state.json")).some((p) => p.uid === "u-rules")).toBe(false);
  });

  test("the probe set fails on the second IP: the first IP and the in-pod rules are removed, nothing is cached", async () => {
    dp.calls = [];
    dp.failApply = false;
    dp.failHostIp = "10.77.0.3";
    await expect(agent.podAdd(req("u-host"))).rejects.toThrow("adding its IPs to the host probe set failed");
    expect(dp.calls.filter((c) => c.startsWith("host-"))).toEqual(["host- 10.77.0.2 u-host"]);
    expect(dp.calls.filter((c) => c.startsWith("remove")).length).toBe(1);
    expect(readStateFile(join(dir, "state.json")).some((p) => p.uid === "u-host")).toBe(false);
  });
});
