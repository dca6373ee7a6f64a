// The policies' Kubernetes source (src/policy/kube-source.ts) against the STAND-IN API server
// (test/fixtures/kube-apiserver): nothing before both kinds are listed whole, every change
// rebuilds the set (status-only writes do not), invalid objects reported with kind,
// namespace/name and field and held at their last valid version, an outage keeps the set, and
// the set decides as the file source's would (a selector by labels).
import { afterEach, describe, expect, test } from "bun:test";
import { KubeClient } from "../../src/k8s/client.ts";
import { loadKubeconfig } from "../../src/k8s/config.ts";
import { PolicySet } from "../../src/policy/engine.ts";
import { PolicyKubeSource } from "../../src/policy/kube-source.ts";
import { formatLoadError, type LoadError, type PolicyDocuments } from "../../src/policy/load.ts";
import { StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";
import { eventually, namespace, recordingLogger } from "../helpers/kube-test.ts";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function standIn(): StandInApiServer {
  const s = new StandInApiServer().start();
  cleanup.push(() => s.close());
  for (const ns of ["shop", "istio-system"]) s.put(namespace(ns));
  return s;
}

function ap(ns: string, name: string, spec: unknown, annotations?: Record<string, string>): KubeObj {
  return { apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name, namespace: ns, ...(annotations ? { annotations } : {}) }, spec } as KubeObj;
}
function pa(ns: string, name: string, spec: unknown): KubeObj {
  return { apiVersion: "security.istio.io/v1", kind: "PeerAuthentication", metadata: { name, namespace: ns }, spec } as KubeObj;
}
const denyFrom = (ip: string, selector?: Record<string, string>) => ({ action: "DENY", ...(selector ? { selector: { matchLabels: selector } } : {}), rules: [{ from: [{ source: { ipBlocks: [ip] } }] }] });

function source(s: StandInApiServer) {
  const log = recordingLogger();
  const updates: (PolicyDocuments & { files: string[] })[] = [];
  const errors: LoadError[][] = [];
  const src = new PolicyKubeSource({ client: new KubeClient(loadKubeconfig(s.kubeconfigPath)), onUpdate: (d) => updates.push(d), onError: (e) => errors.push(e), backoff: { initialMs: 20, maxMs: 100 }, log });
  cleanup.push(() => src.close());
  const names = (i = updates.length - 1) => [...updates[i]!.authorizationPolicies, ...updates[i]!.peerAuthentications].map((d) => `${d.object.kind} ${d.object.metadata.namespace}/${d.object.metadata.name}`).sort();
  return { src, log, updates, errors, names };
}

describe("the Kubernetes policy source against the stand-in API server", () => {
  test("the first set comes once both kinds are listed whole (a cut list and an outage deliver nothing), with both kinds in it", async () => {
    const s = standIn();
    s.put(ap("shop", "deny-a", denyFrom("10.0.0.1")));
    s.put(pa("shop", "strict", { mtls: { mode: "STRICT" } }));
    s.truncateLists = 1;
    const { src, updates, names } = source(s);
    await src.start();
    expect(updates).toHaveLength(1);
    expect(names()).toEqual(["AuthorizationPolicy shop/deny-a", "PeerAuthentication shop/strict"]);
    expect(updates[0]!.files).toEqual([]);
    expect(updates[0]!.authorizationPolicies[0]!.origin.file).toMatch(/^kubernetes:shop\/deny-a@\d+$/);
    // one of the two LISTs was cut, and listed again before anything was delivered
    expect(s.requests.filter((r) => r.path.startsWith("/apis/security.istio.io/") && !r.query.includes("watch=")).length).toBe(3);

    const s2 = standIn();
    s2.put(ap("shop", "deny-b", denyFrom("10.0.0.2")));
    await s2.stop();
    const b = source(s2);
    let done = false;
    const started = b.src.start().then(() => (done = true));
    await eventually(() => b.log.lines.filter((l) => l.level === "warn" && /unreachable/.test(l.msg)).length >= 2, "both informers' outage logged");
    expect(done).toBe(false);
    expect(b.updates).toEqual([]);
    s2.start();
    await started;
    expect(b.names()).toEqual(["AuthorizationPolicy shop/deny-b"]);
  });

  test("every change rebuilds the set; a status-only write does not deliver it again; a delete lifts the policy", async () => {
    const s = standIn();
    const { src, updates, names } = source(s);
    await src.start();
    expect(names()).toEqual([]);
    s.put(ap("shop", "deny-a", denyFrom("10.0.0.1")));
    await eventually(() => updates.length === 2, "the new policy");
    expect(names()).toEqual(["AuthorizationPolicy shop/deny-a"]);
    s.put(ap("shop", "deny-a", denyFrom("10.0.0.9")));
    await eventually(() => updates.length === 3, "the edit");
    expect(JSON.stringify(updates[2]!.authorizationPolicies[0]!.object.spec)).toContain("10.0.0.9");

    // istiod writes status: the set is the same
    const rebuilds = src.rebuilds;
    s.put({ ...ap("shop", "deny-a", denyFrom("10.0.0.9")), status: { conditions: [{ type: "Reconciled", status: "True" }] } } as KubeObj);
    await eventually(() => src.rebuilds > rebuilds, "a rebuild");
    expect(updates).toHaveLength(3);

    s.remove("AuthorizationPolicy", "shop", "deny-a");
    await eventually(() => updates.length === 4, "the delete");
    expect(names()).toEqual([]);
  });

  test("an invalid edit is reported with kind, namespace/name and field, and the last valid version stays; a never-valid object is left out; fixing clears the errors", async () => {
    const s = standIn();
    s.put(ap("shop", "deny-a", denyFrom("10.0.0.1")));
    const { src, updates, errors, log } = source(s);
    await src.start();
    const goodOrigin = updates[0]!.authorizationPolicies[0]!.origin.file;

    s.put(ap("shop", "deny-a", { action: "DENY", rules: [{ from: [{ source: { ipBlock: ["10.0.0.2"] } }] }] }));
    s.put(ap("shop", "never", { action: "DENY" })); // the webhook's "DENY without rules"
    await eventually(() => new Set(errors.at(-1)?.map((e) => e.object)).size === 2, "both objects' errors");
    const text = errors.at(-1)!.map(formatLoadError).join("\n");
    expect(text).toContain('AuthorizationPolicy shop/deny-a: spec.rules[0].from[0].source.ipBlock: unknown field "ipBlock"');
    expect(text).toContain("AuthorizationPolicy shop/never: spec");
    // the set in force still has deny-a's last valid version, and no `never`
    const last = updates.at(-1)!;
    expect(last.authorizationPolicies.map((d) => [d.object.metadata.name, d.origin.file])).toEqual([["deny-a", goodOrigin]]);
    expect(JSON.stringify(last.authorizationPolicies[0]!.object.spec)).toContain("10.0.0.1");
    expect(src.counts).toEqual({ authorizationPolicies: 1, peerAuthentications: 0, invalid: 2 });
    expect(log.lines.some((l) => l.level === "error" && /shop\/deny-a is invalid: its last valid version stays in force/.test(l.msg))).toBe(true);
    expect(log.lines.some((l) => l.level === "error" && /shop\/never is invalid and was never valid: left out/.test(l.msg))).toBe(true);

    s.put(ap("shop", "deny-a", denyFrom("10.0.0.2")));
    s.remove("AuthorizationPolicy", "shop", "never");
    await eventually(() => errors.at(-1)?.length === 0, "errors cleared");
    await eventually(() => JSON.stringify(updates.at(-1)!.authorizationPolicies[0]!.object.spec).includes("10.0.0.2"), "the fixed version in force");
  });

  test("an API outage keeps the set; a change made meanwhile is applied once it is back", async () => {
    const s = standIn();
    s.put(ap("shop", "deny-a", denyFrom("10.0.0.1")));
    const { src, updates, names, log } = source(s);
    await src.start();
    await eventually(() => s.openWatches === 2, "both watching");
    await s.stop();
    await eventually(() => log.lines.some((l) => l.level === "warn" && /unreachable/.test(l.msg)), "the outage logged");
    expect(updates).toHaveLength(1);
    s.put(ap("shop", "deny-b", denyFrom("10.0.0.2")));
    s.start();
    await eventually(() => updates.length === 2, "the change after the outage", 15_000);
    expect(names()).toEqual(["AuthorizationPolicy shop/deny-a", "AuthorizationPolicy shop/deny-b"]);
  });

  test("the set decides as a file's would: a selector policy applies to the labelled pod only", async () => {
    const s = standIn();
    s.put(ap("shop", "deny-web", denyFrom("10.0.0.1/32", { app: "web" })));
    const { src, updates } = source(s);
    await src.start();
    const set = new PolicySet(updates[0]!, { rootNamespace: "istio-system" });
    const conn = (labels?: Record<string, string>) => ({ sourceIp: "10.0.0.1", destination: { namespace: "shop", name: "x", ...(labels ? { labels } : {}) }, destinationIp: "10.0.0.50", destinationPort: 80, mtls: false });
    expect(set.decide(conn({ app: "web" })).allowed).toBe(false);
    expect(set.decide(conn({ app: "db" })).allowed).toBe(true);
    expect(set.decide(conn(undefined)).allowed).toBe(false); // labels unknown: fail safe
  });
});
