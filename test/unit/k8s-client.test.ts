// src/k8s's configuration loading and client against the STAND-IN API server
// (test/fixtures/kube-apiserver; checked against kubectl in k8s-standin-kubectl.test.ts): the
// kubeconfig with a token and with a client certificate, the in-cluster service account, pod
// annotation patches and TokenReview.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeError, KubeApiError, KubeClient } from "../../src/k8s/client.ts";
import { KubeConfigError, loadClusterConfig, loadInCluster, loadKubeconfig } from "../../src/k8s/config.ts";
import { PODS, resourcePath, type Pod } from "../../src/k8s/objects.ts";
import { RESOURCES } from "../fixtures/kube-apiserver/resources.ts";
import { StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import { pod } from "../helpers/kube-test.ts";

const PODS_RES = RESOURCES.find((r) => r.plural === "pods")!;
let s: StandInApiServer;
let dir: string;

beforeAll(() => {
  s = new StandInApiServer().start();
  s.put(pod("default", "web-0", { annotations: { keep: "me" }, labels: { app: "web" } }));
  dir = mkdtempSync(join(tmpdir(), "nshub-k8s-client-"));
});
afterAll(async () => {
  await s.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("configuration", () => {
  test("kubeconfig with a bearer token and the cluster's CA: a LIST over HTTPS", async () => {
    const cfg = loadKubeconfig(s.kubeconfigPath);
    expect(cfg.server).toBe(s.url);
    expect(cfg.ca).toBe(s.pki!.ca);
    expect(cfg.token).toBe(s.adminToken);
    expect(cfg.origin).toBe(`kubeconfig ${s.kubeconfigPath} (context standin)`);
    const r = await new KubeClient(cfg).list<Pod>(resourcePath(PODS));
    expect(r.items.map((p) => p.metadata.name)).toEqual(["web-0"]);
    expect(r.resourceVersion).toBe(String(s.store.rv));
  });

  test("kubeconfig with a client certificate and key (files)", async () => {
    const cc = new StandInApiServer({ auth: "client-cert" }).start();
    try {
      const cfg = loadKubeconfig(cc.kubeconfigPath);
      expect(cfg.clientCert).toContain("BEGIN CERTIFICATE");
      expect(cfg.token).toBeUndefined();
      const r = await new KubeClient(cfg).list("/api/v1/namespaces");
      expect(r.items.map((n) => n.metadata.name).sort()).toEqual(["default", "kube-system"]);
      // without the certificate the TLS handshake is refused
      await expect(new KubeClient({ ...cfg, clientCert: undefined, clientKey: undefined }).list("/api/v1/namespaces")).rejects.toThrow();
    } finally {
      await cc.close();
    }
  });

  test("in-cluster: the service account's token and CA, KUBERNETES_SERVICE_HOST/PORT", async () => {
    const sa = join(dir, "serviceaccount");
    mkdirSync(sa);
    writeFileSync(join(sa, "token"), s.adminToken + "\n");
    writeFileSync(join(sa, "ca.crt"), s.pki!.ca);
    writeFileSync(join(sa, "namespace"), "istio-system");
    const env = { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(s.url).port };
    const cfg = loadInCluster(env, sa);
    expect(cfg).toMatchObject({ server: s.url, tokenFile: join(sa, "token"), namespace: "istio-system", origin: "in-cluster" });
    expect((await new KubeClient(cfg).list(resourcePath(PODS))).items.length).toBe(1);
    // in a cluster the service account wins over $KUBECONFIG; an explicit kubeconfig wins over both
    expect(loadClusterConfig({ env: { ...env, KUBECONFIG: "/nonexistent" }, serviceAccountDir: sa }).origin).toBe("in-cluster");
    expect(loadClusterConfig({ kubeconfig: s.kubeconfigPath, env, serviceAccountDir: sa }).origin).toStartWith("kubeconfig ");
    expect(loadClusterConfig({ env: { KUBECONFIG: `${s.kubeconfigPath}:/other` } }).server).toBe(s.url);
    expect(loadInCluster({ KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "443" }, sa).server).toBe("https://[fd00::1]:443");
    expect(() => loadInCluster({}, sa)).toThrow("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
    expect(() => loadInCluster(env, join(dir, "missing"))).toThrow(`cannot read the service account token ${join(dir, "missing", "token")}: ENOENT`);
  });

  test("kubeconfigs nshub cannot use are refused by name", () => {
    const write = (name: string, user: Record<string, unknown>, extra = "") => {
      const p = join(dir, name);
      writeFileSync(p, `apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\nusers:\n- name: u\n  user: ${JSON.stringify(user)}\n${extra}`);
      return p;
    };
    expect(() => loadKubeconfig(write("exec", { exec: { command: "aws" } }))).toThrow(`user "u" uses "exec", which nshub does not support`);
    expect(() => loadKubeconfig(write("half", { "client-certificate-data": "eA==" }))).toThrow("a client certificate without its key");
    expect(() => loadKubeconfig(write("ok", { token: "t" }), "other")).toThrow(`has no context "other"`);
    expect(() => loadKubeconfig(join(dir, "none"))).toThrow(KubeConfigError);
    expect(loadKubeconfig(write("ok2", { tokenFile: "tok" }))).toMatchObject({ server: "https://127.0.0.1:6443", tokenFile: join(dir, "tok") });
  });

  test("a server certificate from another CA is refused: the kubeconfig's CA is the only one trusted", async () => {
    const other = new StandInApiServer().start();
    try {
      const err = await new KubeClient({ ...loadKubeconfig(s.kubeconfigPath), ca: other.pki!.ca }).list(resourcePath(PODS)).catch((e) => e);
      expect(err).not.toBeInstanceOf(KubeApiError);
      expect(describeError(err)).not.toBe("");
      // and no CA at all (the system's) does not trust the stand-in either
      expect(await new KubeClient({ ...loadKubeconfig(s.kubeconfigPath), ca: undefined }).list(resourcePath(PODS)).catch((e) => describeError(e))).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE (unable to verify the first certificate)");
    } finally {
      await other.close();
    }
  });
});

describe("writes", () => {
  const client = () => new KubeClient(loadKubeconfig(s.kubeconfigPath));

  test("patchPodAnnotations sets and removes keys with a merge patch; other annotations stay", async () => {
    const p = await client().patchPodAnnotations("default", "web-0", { "ambient.istio.io/redirection": "enabled" });
    expect(p.metadata.annotations).toEqual({ keep: "me", "ambient.istio.io/redirection": "enabled" });
    const last = s.requests.at(-1)!;
    expect(`${last.method} ${last.path} ${last.contentType}`).toBe("PATCH /api/v1/namespaces/default/pods/web-0 application/merge-patch+json");
    await client().patchPodAnnotations("default", "web-0", { "ambient.istio.io/redirection": null });
    expect(s.store.get(PODS_RES, "default", "web-0").metadata.annotations).toEqual({ keep: "me" });
    const err = await client().patchPodAnnotations("default", "gone", { a: "b" }).catch((e) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    expect([err.status, err.reason, err.message]).toEqual([404, "NotFound", 'pods "gone" not found']);
  });

  test("the stand-in's strategic merge patch: maps like merge patch; refused for custom resources and directives", async () => {
    const c = client();
    const smp = "application/strategic-merge-patch+json";
    const p = await c.json<Pod>("PATCH", resourcePath(PODS, "default", "web-0"), { body: { metadata: { labels: { tier: "front", app: null } } }, contentType: smp });
    expect(p.metadata.labels).toEqual({ tier: "front" });
    s.put({ apiVersion: "security.istio.io/v1", kind: "PeerAuthentication", metadata: { name: "pa", namespace: "default" }, spec: {} });
    const crd = await c.request("PATCH", "/apis/security.istio.io/v1/namespaces/default/peerauthentications/pa", { body: { metadata: { labels: { a: "b" } } }, contentType: smp }).catch((e) => e);
    expect(crd.status).toBe(415);
    const directive = await c.request("PATCH", resourcePath(PODS, "default", "web-0"), { body: { spec: { $setElementOrder: [] } }, contentType: smp }).catch((e) => e);
    expect(directive.status).toBe(400);
  });

  test("createTokenReview: a known token's user, an unknown token, a token for another audience", async () => {
    s.tokens.set("pod-token", { username: "system:serviceaccount:shop:web", uid: "u-1", groups: ["system:serviceaccounts", "system:serviceaccounts:shop"] });
    s.tokens.set("istio-token", { username: "system:serviceaccount:shop:db", audiences: ["istio-ca"] });
    expect(await client().createTokenReview("pod-token")).toEqual({
      authenticated: true,
      user: { username: "system:serviceaccount:shop:web", uid: "u-1", groups: ["system:serviceaccounts", "system:serviceaccounts:shop"] },
      audiences: ["https://kubernetes.default.svc"],
    });
    const unknown = await client().createTokenReview("forged");
    expect(unknown.authenticated).toBe(false);
    expect(unknown.error).toContain("invalid bearer token");
    expect((await client().createTokenReview("istio-token")).authenticated).toBe(false);
    expect(await client().createTokenReview("istio-token", ["istio-ca"])).toMatchObject({ authenticated: true, audiences: ["istio-ca"], user: { username: "system:serviceaccount:shop:db" } });
  });
});
