// The proxy with `proxy.kubernetes` on a virtual node: `nshub proxy` (from the sources, like the
// other proxy tests) watching the STAND-IN API server (test/fixtures/kube-apiserver: no real
// kube-apiserver runs here; its fidelity is checked with the real kubectl in
// test/unit/k8s-standin-kubectl.test.ts), started inside the node's netns so the proxy reaches it
// on the node's loopback. Enrolled pods (the agent's part played by the harness, with the API
// objects' uids) talk over HBONE with certificates from a local CA. Judged by real traffic
// (the app's reply, or a reset), the proxy's `GET /workloads` and connection records, and an
// independent HBONE server (Python h2 + ssl) standing in for a pod of another node.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Netns, withNetns } from "../../src/sys/index.ts";
import { createProxyEnv, eventually, type ConnJson, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";
import { startStandInApiServer, type StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";
import { ID_B, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { namespace, pod } from "../helpers/kube-test.ts";
import type { Pod } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 120_000;
const NODE = "node-1";
const MESH = { "ambient.istio.io/redirection": "enabled" };
const PY = "/usr/bin/python3";
const FIXTURES = join(import.meta.dir, "..", "fixtures");

/** DENY connections from identity A (client-0) to the pods labelled `app: <app>` in shop. */
const denyClientTo = (name: string, app: string): KubeObj =>
  ({
    apiVersion: "security.istio.io/v1",
    kind: "AuthorizationPolicy",
    metadata: { name, namespace: "shop" },
    spec: { action: "DENY", selector: { matchLabels: { app } }, rules: [{ from: [{ source: { principals: ["cluster.local/ns/ns-a/sa/sa-a"] } }] }] },
  }) as KubeObj;

netnsDescribe("proxy: workloads and policies from the Kubernetes API (stand-in API server)", () => {
  let env: ProxyEnv;
  let pki: Pki;
  let api: StandInApiServer;
  let p: ProxyProcess;
  let client: Pod, web: Pod, apiPod: Pod, db: Pod, ext: Pod;
  const files: Record<string, string> = {};

  const inNode = <T>(fn: () => T): T => {
    const ns = Netns.open(env.sim.node.netnsPath);
    try {
      return withNetns(ns, fn);
    } finally {
      ns.close();
    }
  };

  /** The API object (this node, service account, labels), then the pod with its uid, then its IP and annotation. */
  async function meshPod(ns: string, name: string, sa: string, labels: Record<string, string>): Promise<Pod> {
    const obj = pod(ns, name, { node: NODE, labels });
    (obj.spec as { serviceAccountName: string }).serviceAccountName = sa;
    const created = api.put(obj);
    const simPod = await env.sim.addPod({ name, namespace: ns, uid: created.metadata.uid });
    api.put(withIp(obj, simPod.ip, MESH));
    await env.enroll(simPod, { serviceAccount: sa });
    return simPod;
  }
  function withIp(obj: KubeObj, ip: string, annotations?: Record<string, string>, labels?: Record<string, string>): KubeObj {
    const o = structuredClone(obj);
    o.metadata.annotations = annotations ?? {};
    if (labels) o.metadata.labels = labels;
    Object.assign(o.status as object, { podIP: ip, podIPs: [{ ip }] });
    return o;
  }
  /** The API object of a pod of another node, at ext's IP (where the Python HBONE server runs). */
  const remote = (annotations?: Record<string, string>) => {
    const o = pod("ns-b", "remote-0", { node: "node-2", ip: ext.ip, ...(annotations ? { annotations } : {}) });
    (o.spec as { serviceAccountName: string }).serviceAccountName = "sa-b";
    return o;
  };

  /** One connection from client-0 to `to`'s sink: true when the app answered. */
  async function reaches(to: Pod): Promise<boolean> {
    const r = await env.toolRun(client, ["send", "--host", to.ip, "--port", "7000", "--bytes", "1000"]);
    return typeof r.reply === "string" && r.reply.includes('"bytes":1000');
  }
  /** `n` connections in a row all end as `expected` (they land on both data-plane threads). */
  async function allReach(to: Pod, expected: boolean, n = 4): Promise<boolean> {
    for (let i = 0; i < n; i++) if ((await reaches(to)) !== expected) return false;
    return true;
  }
  const workloads = async () => JSON.parse((await p.http("GET", p.admin, "/workloads")).body) as { workloads: Array<Record<string, any>>; sources: Array<Record<string, any>> };
  const remoteWorkload = async () => (await workloads()).workloads.find((w) => w.name === "remote-0");
  const logs = () => p.proc.stderr() + p.proc.stdout();
  const policies = async () => JSON.parse((await p.http("GET", p.admin, "/policies")).body);

  beforeAll(async () => {
    pki = await makePki();
    env = await createProxyEnv();
    api = inNode(() => startStandInApiServer());
    for (const ns of ["ns-a", "ns-b", "shop"]) api.put(namespace(ns));
    for (const [name, c] of Object.entries({ b: pki.b })) {
      files[`${name}.crt`] = join(env.tmp, `${name}.crt`);
      files[`${name}.key`] = join(env.tmp, `${name}.key`);
      writeFileSync(files[`${name}.crt`]!, c.presented);
      writeFileSync(files[`${name}.key`]!, c.keyPem, { mode: 0o600 });
    }
    files.root = join(env.tmp, "root.crt");
    writeFileSync(files.root, pki.a.roots);
    ext = await env.sim.addPod({ name: "ext-0", namespace: "ext" }); // not enrolled: "another node"
    api.put(remote(MESH));
    p = env.startProxy({
      env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: join(pki.dir, "ca"), NSHUB_PROXY_KUBERNETES_ENABLED: "true", NSHUB_PROXY_KUBERNETES_KUBECONFIG: api.kubeconfigPath },
    });
    await p.waitReady(30_000);
    client = await meshPod("ns-a", "client-0", "sa-a", { app: "client" });
    web = await meshPod("shop", "web-0", "web", { app: "web" });
    apiPod = await meshPod("shop", "api-0", "api", { app: "api" });
    db = await meshPod("shop", "db-0", "db", { app: "db" });
    await eventually(async () => (await p.pods()).filter((x) => x.listeners.some((l: { port: number }) => l.port === 15008)).length === 4, 20_000, "15008 in the four pods");
    for (const s of [web, apiPod, db]) env.tool(s, ["sink", "--port", "7000"]);
    for (const s of [web, apiPod, db]) await s.waitForTcpPort(7000);
    env.tool(ext, ["echo", "--port", "9000"]);
    await ext.waitForTcpPort(9000);
  }, T);

  afterAll(async () => {
    await env?.destroy();
    await api?.close();
    pki?.cleanup();
  }, T);

  test(
    "an AuthorizationPolicy applied through the API with a selector denies exactly the labelled pod, not its neighbour; deleting it lifts it",
    async () => {
      expect(await allReach(web, true)).toBe(true);
      api.put(denyClientTo("deny-web", "web"));
      await eventually(() => allReach(web, false), 20_000, "web-0 denied");
      expect(await allReach(apiPod, true)).toBe(true); // same namespace, not labelled app=web
      // denied at web's 15008 over HBONE, with the policy named; labels known: no fail-safe warning
      const denied = await p.records<ConnJson & { srcIdentity?: string }>((c) => c.direction === "inbound" && c.closeHow === "policy_denied" && c.originalDst === `${web.ip}:7000`);
      expect(denied.length).toBeGreaterThan(0);
      expect(denied[0]!.srcIdentity).toBe("spiffe://cluster.local/ns/ns-a/sa/sa-a");
      const pol = await policies();
      expect(pol.warnings).toEqual([]);
      expect(pol.kubernetes).toMatchObject({ synced: true, authorizationPolicies: 1, invalid: 0 });
      expect(pol.policies.map((x: { name: string }) => x.name)).toEqual(["deny-web"]);

      api.remove("AuthorizationPolicy", "shop", "deny-web");
      await eventually(() => allReach(web, true), 20_000, "web-0 reachable again");
    },
    T,
  );

  test(
    "an annotated pod of another node is an HBONE destination with its identity (an independent HBONE server answers there); without the annotation it is TCP",
    async () => {
      const w = await remoteWorkload();
      expect(w).toMatchObject({ protocol: "HBONE", identity: ID_B, node: "node-2", source: "kubernetes", workloadIps: [ext.ip] });
      expect((await workloads()).sources.find((s) => s.name === "kubernetes")).toMatchObject({ precedence: 200 });

      const py = ext.spawn([PY, join(FIXTURES, "hbone-server.py"), "--listen", "0.0.0.0:15008", "--cert", files["b.crt"]!, "--key", files["b.key"]!, "--ca", files.root!, "--authority", `${ext.ip}:9000`]);
      let pyLines: Record<string, any>[] = [];
      try {
        await eventually(() => py.stdout().includes('"port"') || !py.running, 10_000, "the Python server");
        const r = await env.toolRun(client, ["many", "--host", ext.ip, "--port", "9000", "--conns", "1", "--bytes", "20000"]);
        expect(r).toMatchObject({ ok: 1, failed: 0 });
        await eventually(() => py.stdout().split("\n").some((l) => l.includes('"authority"')), 5000, "the server's line");
        pyLines = py.stdout().split("\n").filter((l) => l.startsWith("{") && l.includes('"authority"')).map((l) => JSON.parse(l));
      } finally {
        await py.stop(2000);
      }
      expect(pyLines[0]).toMatchObject({ peer: "spiffe://cluster.local/ns/ns-a/sa/sa-a", method: "CONNECT", authority: `${ext.ip}:9000`, echoed: 20000 });
      const out = await p.records<ConnJson & { security?: string; dstIdentity?: string }>((c) => c.direction === "outbound" && c.originalDst === `${ext.ip}:9000`);
      expect(out.map((c) => [c.security, c.dstIdentity])).toEqual([["mutual_tls", ID_B]]);

      api.put(remote());
      await eventually(async () => (await remoteWorkload())?.protocol === "TCP", 10_000, "remote-0 TCP");
      // now plaintext, straight to the echo server on 9000 (nothing listens on 15008 there any more)
      const r = await env.toolRun(client, ["many", "--host", ext.ip, "--port", "9000", "--conns", "1", "--bytes", "20000"]);
      expect(r).toMatchObject({ ok: 1, failed: 0 });
      const plain = await p.records<ConnJson & { security?: string }>((c) => c.direction === "outbound" && c.originalDst === `${ext.ip}:9000` && c.security !== "mutual_tls");
      expect(plain).toHaveLength(1);
    },
    T,
  );

  test(
    "the API server stopped: the last policies are enforced and the workloads kept; changes made meanwhile (a label, a new policy) apply once it is back",
    async () => {
      api.put(denyClientTo("deny-web", "web"));
      await eventually(() => allReach(web, false), 20_000, "web-0 denied");
      await api.stop();
      await eventually(() => /API server \S+ unreachable/.test(logs()), 20_000, "the outage seen by the proxy");
      expect(await allReach(web, false)).toBe(true);
      expect(await allReach(apiPod, true)).toBe(true);
      expect(await allReach(db, true)).toBe(true);
      expect(await remoteWorkload()).toMatchObject({ protocol: "TCP", source: "kubernetes" });
      expect((await workloads()).workloads.filter((w) => w.namespace === "shop").map((w) => w.name).sort()).toEqual(["api-0", "db-0", "web-0"]);

      // meanwhile: api-0 is relabelled app=web (the pods watch), db-0 gets a DENY (the policies watch)
      const apiObj = pod("shop", "api-0", { node: NODE });
      (apiObj.spec as { serviceAccountName: string }).serviceAccountName = "api";
      api.put(withIp(apiObj, apiPod.ip, MESH, { app: "web" }));
      api.put(denyClientTo("deny-db", "db"));
      inNode(() => api.start());
      await eventually(() => allReach(apiPod, false), 45_000, "api-0 denied by deny-web after its new label");
      await eventually(() => allReach(db, false), 45_000, "db-0 denied by the policy made during the outage");
      expect(await allReach(web, false)).toBe(true);
      expect(/reachable again/.test(logs())).toBe(true);
    },
    T,
  );
});
