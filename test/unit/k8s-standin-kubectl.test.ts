// Fidelity of the STAND-IN API server (test/fixtures/kube-apiserver): the real kubectl (Debian's
// kubernetes-client) is run against it, and what kubectl prints and what the stand-in then holds
// are both checked. If kubectl accepts the stand-in's discovery, tables, watch stream, patches
// and errors, the stand-in answers as kube-apiserver does for what nshub uses.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NAMESPACES, PODS, AUTHORIZATION_POLICIES, PEER_AUTHENTICATIONS } from "../../src/k8s/objects.ts";
import { RESOURCES, type Resource } from "../fixtures/kube-apiserver/resources.ts";
import { StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import { eventually, namespace, pod } from "../helpers/kube-test.ts";

const KUBECTL = Bun.which("kubectl");
const res = (plural: string): Resource => RESOURCES.find((r) => r.plural === plural)!;

let s: StandInApiServer;
let home: string;

/**
 * Runs kubectl against the stand-in, with its own HOME and discovery cache. Asynchronously: the
 * stand-in answers from this very process.
 */
async function kubectl(args: string[], server = s): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn([KUBECTL!, "--kubeconfig", server.kubeconfigPath, "--cache-dir", join(home, "cache"), ...args], { env: { HOME: home, PATH: process.env.PATH ?? "" }, stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out, err };
}

async function ok(args: string[]): Promise<string> {
  const r = await kubectl(args);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${r.code}): ${r.err}`);
  return r.out;
}

/** Output lines as whitespace-separated columns. */
const rows = (out: string) => out.trim().split("\n").map((l) => l.trim().split(/\s+/));

const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/web"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: shop
spec:
  mtls:
    mode: STRICT
`;

// kubectl is a test dependency like openssl: without it the suite is skipped by hand and fails
// under CI, so CI cannot go green without having run it.
const suite = KUBECTL ? describe : process.env.CI === "true" ? describe : describe.skip;
if (!KUBECTL) console.warn("k8s-standin-kubectl: kubectl not found (apt-get install kubernetes-client)");

suite("the stand-in API server as the real kubectl sees it", async () => {
  beforeAll(() => {
    if (!KUBECTL) throw new Error("kubectl not found: apt-get install kubernetes-client");
    home = mkdtempSync(join(tmpdir(), "nshub-kubectl-"));
    s = new StandInApiServer().start();
    s.put(namespace("shop"));
    s.put(pod("shop", "web-0", { node: "node-1", labels: { app: "web" }, annotations: { keep: "me" } }));
    s.put(pod("shop", "db-0", { node: "node-2", labels: { app: "db" } }));
    s.put(pod("default", "tool", { node: "node-1" }));
  });
  afterAll(async () => {
    await s?.close();
    if (home) rmSync(home, { recursive: true, force: true });
  });

  test("get pods -A: every namespace, kubectl's columns", async () => {
    const t = rows(await ok(["get", "pods", "-A"]));
    expect(t[0]).toEqual(["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    expect(t.slice(1).map((r) => `${r[0]}/${r[1]} ${r[3]}`).sort()).toEqual(["default/tool Running", "shop/db-0 Running", "shop/web-0 Running"]);
  });

  test("label and field selectors, and the errors kubectl prints", async () => {
    expect(rows(await ok(["get", "pods", "-A", "-l", "app in (web,db)", "--field-selector", "spec.nodeName=node-1", "-o", "name"]))).toEqual([["pod/web-0"]]);
    expect(rows(await ok(["get", "pods", "-A", "-l", "!app", "-o", "name"]))).toEqual([["pod/tool"]]);
    expect(rows(await ok(["get", "pods", "-n", "shop", "-l", "app!=web", "-o", "name"]))).toEqual([["pod/db-0"]]);
    const missing = await kubectl(["get", "pod", "nope", "-n", "shop"]);
    expect(missing.code).toBe(1);
    expect(missing.err.trim()).toBe('Error from server (NotFound): pods "nope" not found');
    const badField = await kubectl(["get", "pods", "-A", "--field-selector", "spec.hostname=x"]);
    expect(badField.err).toContain("field label not supported: spec.hostname");
  });

  test("get pods -w: a pod created afterwards appears in kubectl's watch", async () => {
    const w = Bun.spawn([KUBECTL!, "--kubeconfig", s.kubeconfigPath, "--cache-dir", join(home, "cache"), "get", "pods", "-n", "shop", "-w"], { env: { HOME: home, PATH: process.env.PATH ?? "" }, stdout: "pipe", stderr: "pipe" });
    let out = "";
    const reader = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of w.stdout) out += dec.decode(chunk);
    })();
    try {
      await eventually(() => out.includes("web-0") && s.openWatches > 0, "kubectl listed and watches");
      s.put(pod("shop", "api-0", { node: "node-1" }));
      await eventually(() => /\napi-0\s+0\/1\s+Running/.test(out), "the new pod in kubectl's output");
      expect(out.split("\n")[0]!.split(/\s+/)).toEqual(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
      const watch = s.requests.find((r) => r.path === "/api/v1/namespaces/shop/pods" && r.query.includes("watch=true"))!;
      expect(new URLSearchParams(watch.query).get("resourceVersion")).toMatch(/^\d+$/);
    } finally {
      w.kill();
      await w.exited;
      await reader;
    }
  });

  test("label ns and annotate pod: merge patches the stand-in applies", async () => {
    expect((await ok(["label", "ns", "shop", "istio.io/dataplane-mode=ambient"])).trim()).toBe("namespace/shop labeled");
    expect(s.store.get(res("namespaces"), undefined, "shop").metadata.labels).toEqual({ "istio.io/dataplane-mode": "ambient" });
    expect(rows(await ok(["get", "ns", "-l", "istio.io/dataplane-mode=ambient", "-o", "name"]))).toEqual([["namespace/shop"]]);
    expect((await ok(["label", "ns", "shop", "istio.io/dataplane-mode-"])).trim()).toBe("namespace/shop unlabeled");
    expect(s.store.get(res("namespaces"), undefined, "shop").metadata.labels ?? {}).toEqual({});

    expect((await ok(["annotate", "pod", "web-0", "-n", "shop", "ambient.istio.io/redirection=enabled"])).trim()).toBe("pod/web-0 annotated");
    expect(s.store.get(res("pods"), "shop", "web-0").metadata.annotations).toEqual({ keep: "me", "ambient.istio.io/redirection": "enabled" });
    const patches = s.requests.filter((r) => r.method === "PATCH").map((r) => `${r.path} ${r.contentType}`);
    expect(patches).toEqual([
      "/api/v1/namespaces/shop application/merge-patch+json",
      "/api/v1/namespaces/shop application/merge-patch+json",
      "/api/v1/namespaces/shop/pods/web-0 application/merge-patch+json",
    ]);
    const json = JSON.parse(await ok(["get", "pod", "web-0", "-n", "shop", "-o", "json"]));
    expect(json.metadata.annotations["ambient.istio.io/redirection"]).toBe("enabled");
    expect(json.spec.nodeName).toBe("node-1");
  });

  test("apply -f of an AuthorizationPolicy and a PeerAuthentication: created, unchanged, configured", async () => {
    const file = join(home, "policies.yaml");
    writeFileSync(file, POLICIES);
    expect((await ok(["apply", "-f", file])).trim().split("\n")).toEqual(["authorizationpolicy.security.istio.io/allow-web created", "peerauthentication.security.istio.io/strict created"]);
    expect((await ok(["apply", "-f", file])).trim().split("\n")).toEqual(["authorizationpolicy.security.istio.io/allow-web unchanged", "peerauthentication.security.istio.io/strict unchanged"]);
    writeFileSync(file, POLICIES.replace("STRICT", "PERMISSIVE"));
    expect((await ok(["apply", "-f", file])).trim().split("\n")).toEqual(["authorizationpolicy.security.istio.io/allow-web unchanged", "peerauthentication.security.istio.io/strict configured"]);

    const ap = s.store.get(res("authorizationpolicies"), "shop", "allow-web");
    expect(ap.spec).toEqual({ action: "ALLOW", rules: [{ from: [{ source: { principals: ["cluster.local/ns/shop/sa/web"] } }] }] });
    expect(ap.metadata.annotations?.["kubectl.kubernetes.io/last-applied-configuration"]).toContain('"allow-web"');
    const pa = s.store.get(res("peerauthentications"), "shop", "strict");
    expect(pa.spec).toEqual({ mtls: { mode: "PERMISSIVE" } });
    expect(pa.metadata.generation).toBe(2);
    // kubectl PATCHed the custom resource with a merge patch (strategic merge is refused for them)
    expect(s.requests.some((r) => r.method === "PATCH" && r.path === "/apis/security.istio.io/v1/namespaces/shop/peerauthentications/strict")).toBe(true);

    const t = rows(await ok(["get", "authorizationpolicies", "-A"]));
    expect(t).toEqual([
      ["NAMESPACE", "NAME", "ACTION", "AGE"],
      ["shop", "allow-web", "ALLOW", t[1]![3]!],
    ]);
    expect(rows(await ok(["get", "peerauthentications", "-n", "shop"]))[1]!.slice(0, 2)).toEqual(["strict", "PERMISSIVE"]);
  });

  test("delete: kubectl's words, and the objects gone from the stand-in", async () => {
    expect((await ok(["delete", "authorizationpolicy", "allow-web", "-n", "shop"])).trim()).toBe('authorizationpolicy.security.istio.io "allow-web" deleted');
    expect((await ok(["delete", "pod", "db-0", "-n", "shop"])).trim()).toBe('pod "db-0" deleted');
    expect(s.store.list({ resource: res("authorizationpolicies"), matches: () => true })).toEqual([]);
    expect(s.store.list({ resource: res("pods"), namespace: "shop", matches: () => true }).map((p) => p.metadata.name).sort()).toEqual(["api-0", "web-0"]);
    expect((await kubectl(["get", "authorizationpolicies", "-A"])).err.trim()).toBe("No resources found");
  });

  test("a client-certificate kubeconfig works, and a wrong token is refused", async () => {
    const cc = new StandInApiServer({ auth: "client-cert" }).start();
    try {
      expect(rows((await kubectl(["get", "ns", "-o", "name"], cc)).out)).toEqual([["namespace/default"], ["namespace/kube-system"]]);
    } finally {
      await cc.close();
    }
    const bad = await kubectl(["--token", "wrong", "get", "pods"]);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain("Unauthorized");
  });

  test("the resources the stand-in serves are the ones src/k8s names", async () => {
    for (const r of [PODS, NAMESPACES, AUTHORIZATION_POLICIES, PEER_AUTHENTICATIONS]) {
      expect(RESOURCES.some((x) => x.group === r.group && x.version === r.version && x.plural === r.plural && x.kind === r.kind && x.namespaced === r.namespaced)).toBe(true);
    }
  });
});
