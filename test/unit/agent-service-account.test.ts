// A pod's service account in the agent: what the request says, else Kubernetes' default
// "default" (a CNI ADD without K8S_POD_SERVICE_ACCOUNT, an enroll without --service-account, a
// state file of an older agent), kept in the state file and handed to the proxy in ZDS
// WorkloadInfo, which makes the pod's identity spiffe://<td>/ns/<ns>/sa/<sa>. The real ZDS
// path with real pods is covered by test/netns/admin-traffic.test.ts (config_dump's
// serviceAccount) and test/netns/proxy-certs.test.ts (certificates per service account).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../src/agent/agent.ts";
import type { Dataplane } from "../../src/agent/dataplane.ts";
import { entryFromRecord, identityOf, newEntry } from "../../src/agent/pod-entry.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { readStateFile } from "../../src/agent/state.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-agent-sa-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
setLogSink(() => undefined);

const req = { uid: "u-1", namespace: "shop", name: "web-0", serviceAccount: "", netnsPath: "/var/run/netns/none", ips: ["10.9.0.2"], containerId: "c1" };

describe("the pod's service account", () => {
  test("none given: 'default'; given: kept; the ZDS identity carries it", () => {
    expect(newEntry(req, undefined).serviceAccount).toBe("default");
    expect(newEntry({ ...req, serviceAccount: "web" }, undefined).serviceAccount).toBe("web");
    expect(identityOf(newEntry(req, undefined))).toEqual({ name: "web-0", namespace: "shop", serviceAccount: "default" });
  });

  test("a state file of an older agent without one reads as 'default'", () => {
    const record = { uid: "u-1", namespace: "shop", name: "web-0", serviceAccount: "", ips: [], netnsPath: "/x", containerId: "c", state: "pending" as const, reason: "", updatedAt: "2026-12-01T00:00:00Z" };
    expect(entryFromRecord(record).serviceAccount).toBe("default");
  });

  test("a CNI ADD without K8S_POD_SERVICE_ACCOUNT: the reply and the state file say 'default'", async () => {
    const stateFile = join(dir, "state.json");
    const noop = async () => undefined;
    const dataplane: Dataplane = { applyPod: noop, removePod: noop, resetHost: noop, addHostPod: noop, removeHostPod: noop, addresses: async () => [] };
    // The namespace is not enrolled: the pod is cached (and written) without touching a netns.
    const policy = EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } });
    const agent = new Agent({ policy, dataplane, stateFile, procRoot: "/proc", log: createLogger("test"), pendingRetryMs: 60_000 });
    await agent.rebuild();
    try {
      const r = await agent.podAdd(req);
      expect(r.state).toBe("not-enrolled");
      expect(r.pod.serviceAccount).toBe("default");
      expect(readStateFile(stateFile).map((p) => p.serviceAccount)).toEqual(["default"]);
      const named = await agent.podAdd({ ...req, uid: "u-2", name: "db-0", serviceAccount: "db" });
      expect(named.pod.serviceAccount).toBe("db");
    } finally {
      agent.stop();
    }
  });
});
