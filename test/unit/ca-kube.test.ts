// `nshub ca serve --kubernetes` against the stand-in API server: the CA server on loopback (gRPC +
// TLS, in-process), called by nshub's CA client and by python3-grpcio; tokens are registered in
// the stand-in's TokenReview table as kube-apiserver reports pod-bound service-account tokens.
// The node check is istiod's for ztunnel: the caller's node from its token, identities only of
// pods scheduled there.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fetchWorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { caRequest, readCaResponse } from "../fixtures/ca-raw.ts";
import { AGENT_NS, AGENT_SA, id, podOf, refusal, saToken, startCaKube, type CaKubeEnv } from "../helpers/ca-kube.ts";
import { eventually } from "../helpers/kube-test.ts";
import { certText, extension, opensslCsr, verifyChain } from "../helpers/openssl.ts";

const WEB = id("shop", "web"); // a pod on node-1
const PG = id("db", "postgres"); // a pod on node-2 only
let env: CaKubeEnv;
const tmp = mkdtempSync(join(tmpdir(), "nshub-cakube-py-"));

beforeAll(async () => {
  env = await startCaKube();
  const { api, uids } = env;
  const proxy1 = { name: "proxy-1", uid: uids.get(`${AGENT_NS}/proxy-1`)! };
  saToken(api, "node1-token", { pod: proxy1, node: "node-1" }); // Kubernetes ≥ 1.30: node-name in the review
  saToken(api, "node1-pod-only", { pod: proxy1 }); // older: the node from the pod
  saToken(api, "node2-token", { pod: { name: "proxy-2", uid: uids.get(`${AGENT_NS}/proxy-2`)! }, node: "node-2" });
  saToken(api, "api-audience", { pod: proxy1, node: "node-1", audiences: ["https://kubernetes.default.svc"] });
  saToken(api, "app-token", { ns: "shop", sa: "web", pod: { name: "web-0", uid: uids.get("shop/web-0")! }, node: "node-1" });
  saToken(api, "unbound", {}); // a legacy Secret token: bound to no pod
  saToken(api, "stale-uid", { pod: { name: "proxy-1", uid: "00000000-0000-0000-0000-000000000000" } });
  api.tokens.set("a-user", { username: "alice", groups: ["system:authenticated"], audiences: ["istio-ca"] });
  await eventually(() => env.ca.kube!.synced, "the CA's pods watch synced");
});

afterAll(async () => {
  await env?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const refused = (reason: string) => env.metric("nshub_ca_requests_refused_total", `{reason="${reason}"}`);
const logged = (msg: string, f: (l: Record<string, unknown>) => boolean) => env.log.lines.find((l) => l.msg === msg && f(l.fields));

describe("a node agent's service-account token", () => {
  test("node-1's proxy gets the identity of a pod on node-1: chain verifies, log line names node, caller and how the node was found", async () => {
    const before = await env.metric("nshub_ca_certificates_issued_total");
    const cert = await fetchWorkloadCertificate(env.client("node1-token"), WEB, 600);
    expect(verifyChain(env.root, cert.leaf).stdout).toContain(": OK");
    expect(extension(certText(cert.leaf), "X509v3 Subject Alternative Name")?.value).toBe(`URI:${WEB}`);
    expect(logged("certificate issued", (f) => f.serial === cert.serial)?.fields).toMatchObject({
      node: "node-1",
      via: "kubernetes",
      serviceAccount: `${AGENT_NS}/${AGENT_SA}`,
      pod: `${AGENT_NS}/proxy-1`,
      nodeFrom: "token",
      identity: WEB,
    });
    expect(await env.metric("nshub_ca_certificates_issued_total")).toBe(before + 1);
    expect(JSON.stringify(env.log.lines)).not.toContain("node1-token");
    // the API server reviewed it
    const review = env.api.requests.filter((r) => r.path === "/apis/authentication.k8s.io/v1/tokenreviews");
    expect(review.length).toBeGreaterThan(0);
  });

  test("the same token asking for an identity whose pods run only on node-2: PERMISSION_DENIED, saying so; node-2's proxy gets it", async () => {
    const before = await refused("not_on_node");
    const e = await refusal(fetchWorkloadCertificate(env.client("node1-token"), PG, 600));
    expect(e.code).toBe("permission_denied");
    expect(e.message).toContain("request impersonation authentication failure: no running pod with service account db/postgres is scheduled on node node-1");
    expect(await refused("not_on_node")).toBe(before + 1);
    expect(logged("certificate refused", (f) => f.reason === "not_on_node" && f.node === "node-1" && f.identity === PG)).toBeDefined();
    await fetchWorkloadCertificate(env.client("node2-token"), PG, 600);
  });

  test("a token without node-name (Kubernetes < 1.30): the node comes from its pod in the watch", async () => {
    const cert = await fetchWorkloadCertificate(env.client("node1-pod-only"), WEB, 600);
    expect(logged("certificate issued", (f) => f.serial === cert.serial)?.fields).toMatchObject({ node: "node-1", nodeFrom: "pod", pod: `${AGENT_NS}/proxy-1` });
    expect((await refusal(fetchWorkloadCertificate(env.client("node1-pod-only"), PG, 600))).code).toBe("permission_denied");
  });

  test("a pod that finished (Succeeded) gives no identity", async () => {
    const e = await refusal(fetchWorkloadCertificate(env.client("node1-token"), id("shop", "batch"), 600));
    expect(e.message).toContain("no running pod with service account shop/batch is scheduled on node node-1");
  });

  test("the pods watch is followed: a postgres pod scheduled on node-1 makes the identity node-1's; deleting it takes it away", async () => {
    env.api.put(podOf("db", "pg-1", "node-1", "postgres"));
    await eventually(async () => (await fetchWorkloadCertificate(env.client("node1-token"), PG, 600).then(() => true, () => false)), "postgres on node-1 allowed");
    env.api.remove("Pod", "db", "pg-1");
    await eventually(async () => (await fetchWorkloadCertificate(env.client("node1-token"), PG, 600).then(() => false, () => true)), "postgres on node-1 refused again");
  });
});

describe("refused callers", () => {
  const cases: [string, string, string, string, RegExp][] = [
    ["an unknown token", "no-such-token", "unauthenticated", "unauthenticated", /request authenticate failure: the API server does not accept the token for audience istio-ca: \[invalid bearer token, token lookup failed\]/],
    ["a token for the API server's audience, not istio-ca", "api-audience", "unauthenticated", "unauthenticated", /token audiences is invalid for the target audiences/],
    ["a user's token, not a service account's", "a-user", "unauthenticated", "unauthenticated", /the token is not a service account's \(user "alice"\)/],
    ["a token of a service account that is not a node agent", "app-token", "permission_denied", "not_node_agent", /service account shop\/web is not a node agent of this CA \(trusted: nshub-system\/nshub-proxy; --node-agent-sa\)/],
    ["a node agent's token bound to no pod", "unbound", "permission_denied", "node_unknown", /is not bound to a pod \(the TokenReview has no authentication\.kubernetes\.io\/node-name or authentication\.kubernetes\.io\/pod-name\)/],
    ["a token of a pod since re-created (uid differs)", "stale-uid", "permission_denied", "node_unknown", /the caller's pod nshub-system\/proxy-1 has uid .+, the token was issued to uid 00000000-/],
  ];
  for (const [what, token, code, reason, message] of cases) {
    test(`${what}: ${code.toUpperCase()} (${reason})`, async () => {
      const before = await refused(reason);
      const e = await refusal(fetchWorkloadCertificate(env.client(token), WEB, 600));
      expect(e.code).toBe(code);
      expect(e.message).toMatch(message);
      expect(await refused(reason)).toBe(before + 1);
      expect(logged("certificate refused", (f) => f.reason === reason && f.identity === WEB)).toBeDefined();
    });
  }
});

describe("node credentials next to Kubernetes", () => {
  test("an nshub-ca.… token is checked against nodes.json, never sent to the API server, and bound to its node's pods", async () => {
    const reviews = () => env.api.requests.filter((r) => r.path.endsWith("/tokenreviews")).length;
    const before = reviews();
    const cert = await fetchWorkloadCertificate(env.client(env.nodeToken), WEB, 600);
    expect(logged("certificate issued", (f) => f.serial === cert.serial)?.fields).toMatchObject({ node: "node-1", via: "token" });
    const e = await refusal(fetchWorkloadCertificate(env.client(env.nodeToken), PG, 600));
    expect(e.message).toContain("scheduled on node node-1");
    expect(reviews()).toBe(before);
  });
});

describe("on the wire, seen by a gRPC client that is not nshub (python3-grpcio)", () => {
  const PY = resolve(import.meta.dir, "../fixtures/grpc-ca-call.py");
  // async: the CA runs in this process, so a blocking spawn would keep it from answering
  async function python(token: string, identity: string): Promise<{ ok: boolean; response?: string; code?: string; details?: string }> {
    const rootFile = join(tmp, "root.pem");
    writeFileSync(rootFile, env.root);
    const { csr } = opensslCsr(tmp, `py-${identity.split("/").pop()}`, `critical,URI:${identity}`);
    const p = Bun.spawn(["/usr/bin/python3", PY, `localhost:${env.ca.port}`, rootFile, token, Buffer.from(caRequest(csr, 600, identity)).toString("hex")], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    if (code !== 0) throw new Error(`python grpc client failed: ${err}`);
    return JSON.parse(out);
  }

  test("allowed → a chain; not on the node → PERMISSION_DENIED; unknown token → UNAUTHENTICATED", async () => {
    const ok = await python("node1-token", WEB);
    expect(ok.ok).toBe(true);
    expect(readCaResponse(Buffer.from(ok.response!, "hex"))).toHaveLength(2);
    expect(await python("node1-token", PG)).toMatchObject({ ok: false, code: "PERMISSION_DENIED" });
    expect(await python("no-such-token", WEB)).toMatchObject({ ok: false, code: "UNAUTHENTICATED" });
  }, 20_000);
});

test("/ready answers 200 once the pods are listed; the synced gauge says 1", async () => {
  expect(await env.ready()).toBe(200);
  expect(await env.metric("nshub_ca_kubernetes_pods_synced")).toBe(1);
  expect(await env.metric("nshub_ca_kubernetes_pods")).toBeGreaterThanOrEqual(4);
});
