// The registry's Kubernetes source (src/registry/kube-source.ts) against the STAND-IN API server
// (test/fixtures/kube-apiserver; its fidelity is checked with kubectl in
// k8s-standin-kubectl.test.ts): what a pod becomes, nothing before a complete list, the watch's
// changes, a pod recreated under its name, an outage, and the merge with ZDS by uid.
import { afterEach, describe, expect, test } from "bun:test";
import { KubeClient } from "../../src/k8s/client.ts";
import { loadKubeconfig } from "../../src/k8s/config.ts";
import { KubeWorkloadSource, podWorkloadInput, REDIRECTION_ANNOTATION } from "../../src/registry/kube-source.ts";
import { WorkloadRegistry } from "../../src/registry/registry.ts";
import type { SourceSink } from "../../src/registry/source.ts";
import type { Workload } from "../../src/registry/workload.ts";
import { ZdsWorkloadSource } from "../../src/registry/zds-source.ts";
import { StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";
import { eventually, namespace, pod, recordingLogger } from "../helpers/kube-test.ts";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function standIn(): StandInApiServer {
  const s = new StandInApiServer().start();
  cleanup.push(() => s.close());
  s.put(namespace("shop"));
  return s;
}

function source(s: StandInApiServer, onReport?: () => void) {
  const log = recordingLogger();
  const client = new KubeClient(loadKubeconfig(s.kubeconfigPath));
  const src = new KubeWorkloadSource({ client, backoff: { initialMs: 20, maxMs: 100 }, log, ...(onReport ? { onReport } : {}) });
  cleanup.push(() => src.stop());
  return { src, log };
}

async function registryWith(s: StandInApiServer, onReport?: () => void) {
  const { src, log } = source(s, onReport);
  const reg = new WorkloadRegistry({ trustDomain: "cluster.local" });
  const zds = new ZdsWorkloadSource();
  await reg.addSource(zds);
  await reg.addSource(src);
  await reg.start();
  cleanup.push(() => reg.stop());
  return { reg, src, zds, log };
}

const MESH = { [REDIRECTION_ANNOTATION]: "enabled" };

/** A pod object with the fields the source reads. */
function kpod(name: string, o: { ip?: string; ips?: string[]; annotations?: Record<string, string>; labels?: Record<string, string>; sa?: string; node?: string; phase?: string; hostNetwork?: boolean } = {}): KubeObj {
  const p = pod("shop", name, { node: o.node ?? "node-1", ...(o.labels ? { labels: o.labels } : {}), ...(o.annotations ? { annotations: o.annotations } : {}), ...(o.ip ? { ip: o.ip } : {}) });
  const spec = p.spec as Record<string, unknown>;
  const status = p.status as Record<string, unknown>;
  if (o.sa !== undefined) spec.serviceAccountName = o.sa;
  if (o.hostNetwork) spec.hostNetwork = true;
  if (o.ips) Object.assign(status, { podIP: o.ips[0], podIPs: o.ips.map((ip) => ({ ip })) });
  if (o.phase) status.phase = o.phase;
  return p;
}

describe("a pod as a workload", () => {
  test("annotated → HBONE with its service account, IPs (dual stack), node and labels; others TCP; hostNetwork; ended pods are none", () => {
    const obj = (p: KubeObj) => ({ ...p, metadata: { ...p.metadata, uid: "u1" } }) as never;
    expect(podWorkloadInput(obj(kpod("web-0", { ips: ["10.0.0.5", "fd00::5"], annotations: MESH, labels: { app: "web" }, sa: "web-sa" })))).toEqual({
      uid: "u1",
      name: "web-0",
      namespace: "shop",
      serviceAccount: "web-sa",
      workloadIps: ["10.0.0.5", "fd00::5"],
      node: "node-1",
      protocol: "HBONE",
      networkMode: "Standard",
      labels: { app: "web" },
      details: { workloadType: "pod" },
    });
    expect(podWorkloadInput(obj(kpod("plain", { ip: "10.0.0.6", sa: "" })))).toMatchObject({ protocol: "TCP", serviceAccount: "default", labels: {} });
    expect(podWorkloadInput(obj(kpod("off", { ip: "10.0.0.7", annotations: { [REDIRECTION_ANNOTATION]: "disabled" } })))?.protocol).toBe("TCP");
    expect(podWorkloadInput(obj(kpod("host", { ip: "192.168.1.2", hostNetwork: true })))?.networkMode).toBe("HostNetwork");
    expect(podWorkloadInput(obj(kpod("pending", { phase: "Pending" })))).toMatchObject({ workloadIps: [], protocol: "TCP" });
    expect(podWorkloadInput(obj(kpod("done", { ip: "10.0.0.8", phase: "Succeeded" })))).toBeNull();
    expect(podWorkloadInput(obj(kpod("crashed", { ip: "10.0.0.9", phase: "Failed" })))).toBeNull();
  });
});

describe("the Kubernetes workload source against the stand-in API server", () => {
  test("one snapshot of every live pod after the first complete list; lookups by IP, identity, labels", async () => {
    const s = standIn();
    const web = s.put(kpod("web-0", { ip: "10.1.0.5", annotations: MESH, labels: { app: "web" }, sa: "web-sa" }));
    s.put(kpod("db-0", { ip: "10.1.0.6", labels: { app: "db" } }));
    s.put(kpod("host-0", { ip: "10.1.0.1", hostNetwork: true }));
    s.put(kpod("job-0", { ip: "10.1.0.7", phase: "Succeeded" }));
    s.put(kpod("new-0", { phase: "Pending" }));
    const { reg, src } = await registryWith(s);
    expect(src.synced).toBe(true);
    expect(reg.list().map((w) => `${w.name} ${w.protocol} ${w.networkMode} ${w.workloadIps.join(",")}`).sort()).toEqual([
      "db-0 TCP Standard 10.1.0.6",
      "host-0 TCP HostNetwork 10.1.0.1",
      "new-0 TCP Standard ",
      "web-0 HBONE Standard 10.1.0.5",
    ]);
    expect(reg.meshDestination("10.1.0.5")).toEqual({ workload: reg.byUid(web.metadata.uid!)!, identities: ["spiffe://cluster.local/ns/shop/sa/web-sa"] });
    expect(reg.meshDestination("10.1.0.6")).toBeUndefined();
    expect(reg.findByIp("10.1.0.1")).toBeUndefined(); // host network: never by IP
    expect(reg.labelsOf(web.metadata.uid!)).toEqual({ app: "web" });
    expect(reg.sources().find((x) => x.name === "kubernetes")).toMatchObject({ precedence: 200, workloads: 4 });
  });

  test("never a partial list: a cut LIST body and an API server down at start report nothing until a whole list is in", async () => {
    const s = standIn();
    for (let i = 0; i < 6; i++) s.put(kpod(`p-${i}`, { ip: `10.2.0.${i + 1}` }));
    s.truncateLists = 2;
    const calls: string[] = [];
    const sink: SourceSink = {
      trustDomain: "cluster.local",
      snapshot: (ws) => calls.push(`snapshot ${ws.length}`),
      upsert: (w) => calls.push(`upsert ${w.name}`),
      remove: (uid) => calls.push(`remove ${uid}`),
      error: () => calls.push("error"),
    };
    const { src } = source(s);
    let started = false;
    const done = Promise.resolve(src.start(sink)).then(() => (started = true));
    await eventually(() => s.requests.filter((r) => r.path === "/api/v1/pods" && !r.query.includes("watch")).length >= 3, "two cut lists and a whole one");
    await done;
    expect(started).toBe(true);
    expect(calls).toEqual(["snapshot 6"]);

    // Down at start: start() waits; the first thing reported is the whole list.
    const s2 = standIn();
    s2.put(kpod("a-0", { ip: "10.3.0.1" }));
    await s2.stop();
    const calls2: string[] = [];
    const { src: src2, log } = source(s2);
    const done2 = Promise.resolve(src2.start({ ...sink, snapshot: (ws) => calls2.push(`snapshot ${ws.map((w) => w.name).join(",")}`), upsert: (w) => calls2.push(`upsert ${w.name}`) }));
    await eventually(() => log.lines.some((l) => l.level === "warn" && /unreachable/.test(l.msg)), "the outage logged");
    expect(src2.synced).toBe(false);
    expect(calls2).toEqual([]);
    s2.put(kpod("b-0", { ip: "10.3.0.2" }));
    s2.start();
    await done2;
    expect(calls2).toEqual(["snapshot a-0,b-0"]);
  });

  test("the watch: annotation on/off switches HBONE/TCP, labels follow, a failed pod and a deleted one are removed", async () => {
    const s = standIn();
    const obj = s.put(kpod("web-0", { ip: "10.4.0.5", labels: { app: "web" } }));
    const uid = obj.metadata.uid!;
    const { reg } = await registryWith(s);
    expect(reg.byUid(uid)?.protocol).toBe("TCP");

    s.put(kpod("web-0", { ip: "10.4.0.5", labels: { app: "web" }, annotations: MESH }));
    await eventually(() => reg.meshDestination("10.4.0.5") !== undefined, "HBONE after the annotation");
    s.put(kpod("web-0", { ip: "10.4.0.5", labels: { app: "web", tier: "front" }, annotations: MESH }));
    await eventually(() => reg.labelsOf(uid)?.tier === "front", "the new label");
    s.put(kpod("web-0", { ip: "10.4.0.5", labels: { app: "web" } }));
    await eventually(() => reg.byUid(uid)?.protocol === "TCP", "TCP once the annotation is gone");
    expect(reg.meshDestination("10.4.0.5")).toBeUndefined();

    s.put(kpod("web-0", { ip: "10.4.0.5", phase: "Failed" }));
    await eventually(() => reg.byUid(uid) === undefined, "a failed pod removed");
    const again = s.put(kpod("db-0", { ip: "10.4.0.6" }));
    await eventually(() => reg.byUid(again.metadata.uid!) !== undefined, "db-0 in");
    s.remove("Pod", "shop", "db-0");
    await eventually(() => reg.byUid(again.metadata.uid!) === undefined, "a deleted pod removed");
    expect(reg.list()).toEqual([]);
  });

  test("a pod deleted and recreated under its name while unwatched (410 → re-list): the old uid goes, the new one comes", async () => {
    const s = standIn();
    const old = s.put(kpod("web-0", { ip: "10.5.0.5", annotations: MESH }));
    const { reg, src } = await registryWith(s);
    await eventually(() => s.openWatches === 1, "watching");
    await s.stop();
    s.remove("Pod", "shop", "web-0");
    const fresh = s.put(kpod("web-0", { ip: "10.5.0.9", annotations: MESH }));
    s.store.compact();
    s.start();
    await eventually(() => reg.byUid(fresh.metadata.uid!) !== undefined, "the new uid");
    expect(reg.byUid(old.metadata.uid!)).toBeUndefined();
    expect(reg.findByIp("10.5.0.5")).toBeUndefined();
    expect(reg.meshDestination("10.5.0.9")?.workload.uid).toBe(fresh.metadata.uid!);
    expect(src.informer.stats.gone).toBeGreaterThanOrEqual(1);
    // and the new uid is the one a later delete removes
    s.remove("Pod", "shop", "web-0");
    await eventually(() => reg.byUid(fresh.metadata.uid!) === undefined, "the new uid removed with the pod");
    expect(reg.list()).toEqual([]);
  });

  test("an outage keeps the last model; a change made meanwhile applies once the API server is back", async () => {
    const s = standIn();
    const a = s.put(kpod("a-0", { ip: "10.6.0.1", annotations: MESH }));
    const b = s.put(kpod("b-0", { ip: "10.6.0.2" }));
    const { reg, log } = await registryWith(s);
    await eventually(() => s.openWatches === 1, "watching");
    await s.stop();
    await eventually(() => log.lines.some((l) => l.level === "warn" && /unreachable/.test(l.msg)), "the outage logged");
    expect(reg.list().map((w) => w.name).sort()).toEqual([a, b].map((x) => x.metadata.name).sort());
    expect(reg.meshDestination("10.6.0.1")).toBeDefined();
    s.put(kpod("b-0", { ip: "10.6.0.2", annotations: MESH }));
    s.start();
    await eventually(() => reg.meshDestination("10.6.0.2") !== undefined, "b-0 HBONE after the outage", 15_000);
    expect(log.lines.some((l) => /reachable again/.test(l.msg))).toBe(true);
  });

  test("a pod this node serves (ZDS, same uid) stays ZDS's, and takes its labels from the API; label changes are reported", async () => {
    const s = standIn();
    const obj = s.put(kpod("web-0", { ip: "10.7.0.5", labels: { app: "web" }, annotations: MESH }));
    const uid = obj.metadata.uid!;
    let reports = 0;
    const { reg, zds } = await registryWith(s, () => reports++);
    zds.upsert({ uid, name: "web-0", namespace: "shop", serviceAccount: "default", ips: ["10.7.0.5"] });
    const w: Workload = reg.byUid(uid)!;
    expect(w.source).toBe("zds");
    expect(reg.findByIp("10.7.0.5")?.source).toBe("zds");
    expect(reg.labelsOf(uid)).toEqual({ app: "web" });
    const before = reports;
    const generation = reg.generation;
    s.put(kpod("web-0", { ip: "10.7.0.5", labels: { app: "web", version: "v2" }, annotations: MESH }));
    await eventually(() => reg.labelsOf(uid)?.version === "v2", "the new label");
    expect(reports).toBeGreaterThan(before);
    // the merged model did not change (ZDS's version wins), so only onReport tells a labels consumer
    expect(reg.generation).toBe(generation);
  });
});
