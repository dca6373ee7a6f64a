// The proxy's wiring of the Kubernetes sources (src/proxy/authz-setup.ts `ProxyAuthz`) against
// the STAND-IN API server: start waits for the complete lists, the file's and the API's policies
// are merged, the served pods' labels reach the authorizer (and follow label edits), the
// "labels unknown" warning is there only for served pods the API does not list, and bad
// credentials stop the start.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import type { PodProxy } from "../../src/proxy/pod.ts";
import type { PodRef } from "../../src/proxy/records.ts";
import { AuthzSetupError, ProxyAuthz } from "../../src/proxy/authz-setup.ts";
import { StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";
import { eventually, namespace, pod } from "../helpers/kube-test.ts";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const MESH = { "ambient.istio.io/redirection": "enabled" };
const denyWeb = (name: string) => ({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name, namespace: "shop" }, spec: { action: "DENY", selector: { matchLabels: { app: "web" } }, rules: [{ from: [{ source: { ipBlocks: ["10.9.0.1"] } }] }] } }) as KubeObj;

function setup(env: Record<string, string> = {}) {
  const s = new StandInApiServer().start();
  cleanup.push(() => s.close());
  s.put(namespace("shop"));
  const dir = mkdtempSync(join(tmpdir(), "nshub-kube-proxy-"));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const start = async (more: Record<string, string> = {}) => {
    const cfg = loadConfig({ file: "/dev/null", env: { NSHUB_PROXY_KUBERNETES_ENABLED: "true", NSHUB_PROXY_KUBERNETES_KUBECONFIG: s.kubeconfigPath, ...env, ...more } }).proxy;
    const a = await ProxyAuthz.start(cfg, silent);
    cleanup.push(() => a.close());
    return a;
  };
  return { s, dir, start };
}

const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, enabled: () => false, child: () => silent } as never;

/** What the workload manager hands ProxyAuthz for a pod it serves. */
function served(ref: PodRef, ip: string): PodProxy {
  return { ref, net: { addresses: [ip] } } as unknown as PodProxy;
}

describe("ProxyAuthz with proxy.kubernetes", () => {
  test("start resolves only once pods, AuthorizationPolicies and PeerAuthentications are each listed whole", async () => {
    const { s, start } = setup();
    s.put(denyWeb("deny-web"));
    s.truncateLists = 3; // every kind's first LIST is cut
    const lists = () => s.requests.filter((r) => !r.query.includes("watch=") && /\/(pods|authorizationpolicies|peerauthentications)$/.test(r.path)).length;
    const a = await start();
    expect(lists()).toBe(6);
    expect(a.authorizer.policies.policies.map((x) => x.ref.name)).toEqual(["deny-web"]);
    expect(a.status.kubernetes).toMatchObject({ server: s.url, synced: true, authorizationPolicies: 1, invalid: 0 });
  });

  test("file and API policies are merged; the same name in both is enforced twice and warned about", async () => {
    const { s, dir, start } = setup();
    s.put(denyWeb("deny-web"));
    s.put(denyWeb("both"));
    const file = join(dir, "p.yaml");
    writeFileSync(file, `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: from-file, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: both, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n`);
    const a = await start({ NSHUB_PROXY_POLICIES: file });
    expect(a.authorizer.policies.policies.map((x) => x.ref.name).sort()).toEqual(["both", "both", "deny-web", "from-file"]);
    expect(a.status.warnings.join("\n")).toContain("(both are enforced): AuthorizationPolicy shop/both");
    s.remove("AuthorizationPolicy", "shop", "deny-web");
    await eventually(() => a.authorizer.policies.policies.length === 3, "the deleted object gone, the file's kept");
  });

  test("served pods get their labels from the API: exact selector decisions, label edits followed, a warning only for a served pod the API does not list", async () => {
    const { s, start } = setup();
    s.put(denyWeb("deny-web"));
    const web = s.put(pod("shop", "web-0", { labels: { app: "web" }, annotations: MESH, ip: "10.9.1.1" }));
    const db = s.put(pod("shop", "db-0", { labels: { app: "db" }, annotations: MESH, ip: "10.9.1.2" }));
    const a = await start();
    const refOf = (o: KubeObj): PodRef => ({ uid: o.metadata.uid!, name: o.metadata.name, namespace: "shop", serviceAccount: "default" }) as PodRef;
    const webRef = refOf(web);
    const dbRef = refOf(db);
    a.podStarted(served(webRef, "10.9.1.1"));
    a.podStarted(served(dbRef, "10.9.1.2"));
    const decide = (ref: PodRef) => a.authorizer.policies.decide({ sourceIp: "10.9.0.1", destination: a.authorizer.destination(ref), destinationPort: 80, mtls: false });
    expect(decide(webRef).allowed).toBe(false);
    expect(decide(dbRef).allowed).toBe(true);
    expect(a.status.warnings).toEqual([]);

    // a label edit on the API object of a served pod (ZDS's workload wins its uid)
    s.put(pod("shop", "db-0", { labels: { app: "web" }, annotations: MESH, ip: "10.9.1.2" }));
    await eventually(() => !decide(dbRef).allowed, "db-0 now selected");

    // a served pod the API does not list: fail safe, and said so
    const ghost = { uid: "ghost-uid", name: "ghost-0", namespace: "shop", serviceAccount: "default" } as PodRef;
    a.podStarted(served(ghost, "10.9.1.3"));
    expect(decide(ghost).allowed).toBe(false);
    expect(a.status.warnings.join("\n")).toContain("labels unknown for 1 served pod(s)");
    a.podStopped(served(ghost, "10.9.1.3"));
    expect(a.status.warnings).toEqual([]);
  });

  test("unreadable credentials stop the start with the reason", async () => {
    const { start } = setup({ NSHUB_PROXY_KUBERNETES_KUBECONFIG: "/nonexistent/kubeconfig" });
    await expect(start()).rejects.toThrow(AuthzSetupError);
    await expect(start()).rejects.toThrow(/proxy.kubernetes: .*\/nonexistent\/kubeconfig/);
  });
});
