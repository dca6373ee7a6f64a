// `nshub ca serve --kubernetes` when the API server is away. Decided and documented in
// src/identity/README.md: before the first complete list of pods nothing is signed (UNAVAILABLE,
// /ready 503); after it, the last list is kept through an outage — node credentials are still
// checked against it — while service-account tokens cannot be reviewed (UNAVAILABLE) until the
// API server answers again. Bounded polling, no timing assertions.
import { afterEach, describe, expect, test } from "bun:test";
import { fetchWorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { AGENT_NS, id, refusal, saToken, startCaKube, type CaKubeEnv } from "../helpers/ca-kube.ts";
import { eventually } from "../helpers/kube-test.ts";

const WEB = id("shop", "web");
const PG = id("db", "postgres");
let env: CaKubeEnv | undefined;
afterEach(async () => {
  await env?.close();
  env = undefined;
});

const succeeds = (p: Promise<unknown>) => p.then(() => true, () => false);

describe("before the first list of pods", () => {
  test("UNAVAILABLE for every caller, /ready 503; once the API server is up, served", async () => {
    env = await startCaKube({ apiDown: true });
    const e = env;
    saToken(e.api, "node1-token", { pod: { name: "proxy-1", uid: e.uids.get(`${AGENT_NS}/proxy-1`)! }, node: "node-1" });
    expect(e.ca.kube!.synced).toBe(false);
    expect(await e.ready()).toBe(503);
    expect(await e.metric("nshub_ca_kubernetes_pods_synced")).toBe(0);

    const viaNode = await refusal(fetchWorkloadCertificate(e.client(e.nodeToken), WEB, 600));
    expect(viaNode.code).toBe("unavailable");
    expect(viaNode.message).toContain("the CA cannot check this request now: the CA has not listed the pods yet");
    const viaToken = await refusal(fetchWorkloadCertificate(e.client("node1-token"), WEB, 600));
    expect(viaToken.code).toBe("unavailable");
    expect(viaToken.message).toMatch(/cannot review the token: API server https:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
    expect(await e.metric("nshub_ca_requests_refused_total", '{reason="kube_unavailable"}')).toBe(2);

    e.api.start();
    await eventually(() => e.ca.kube!.synced, "the CA listed the pods once the API server is up");
    expect(await e.ready()).toBe(200);
    await fetchWorkloadCertificate(e.client("node1-token"), WEB, 600);
    await fetchWorkloadCertificate(e.client(e.nodeToken), WEB, 600);
  });
});

describe("an outage after the first list", () => {
  test("node credentials are checked against the last list; tokens are UNAVAILABLE until the API server is back", async () => {
    env = await startCaKube();
    const e = env;
    saToken(e.api, "node1-token", { pod: { name: "proxy-1", uid: e.uids.get(`${AGENT_NS}/proxy-1`)! }, node: "node-1" });
    await eventually(() => e.ca.kube!.synced, "synced");
    await fetchWorkloadCertificate(e.client("node1-token"), WEB, 600);

    await e.api.stop();
    await eventually(() => e.log.lines.some((l) => l.level === "warn" && /unreachable: .*keeping the last known \d+ pods/.test(l.msg)), "the outage logged by the watch");
    // the last view still decides, both ways
    await fetchWorkloadCertificate(e.client(e.nodeToken), WEB, 600);
    expect((await refusal(fetchWorkloadCertificate(e.client(e.nodeToken), PG, 600))).code).toBe("permission_denied");
    expect(await e.ready()).toBe(200);
    const t = await refusal(fetchWorkloadCertificate(e.client("node1-token"), WEB, 600));
    expect(t.code).toBe("unavailable");
    expect(t.message).toContain("cannot review the token");

    e.api.start();
    await eventually(() => succeeds(fetchWorkloadCertificate(e.client("node1-token"), WEB, 600)), "tokens reviewed again");
    await eventually(() => e.log.lines.some((l) => /reachable again after/.test(l.msg)), "the watch back");
  });
});
