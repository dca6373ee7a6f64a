// src/k8s's informer (watch cache) against the STAND-IN API server of
// test/fixtures/kube-apiserver (no real kube-apiserver runs on test machines; the stand-in's
// fidelity is checked with kubectl in k8s-standin-kubectl.test.ts). Over HTTPS with the
// stand-in's CA and token, through the same kubeconfig loading nshub uses.
import { afterEach, describe, expect, test } from "bun:test";
import { KubeClient } from "../../src/k8s/client.ts";
import { loadKubeconfig } from "../../src/k8s/config.ts";
import { Informer, type EventType } from "../../src/k8s/informer.ts";
import { AUTHORIZATION_POLICIES, NAMESPACES, PODS, type IstioObject, type KubeObject, type Pod } from "../../src/k8s/objects.ts";
import { StandInApiServer, type StandInOptions } from "../fixtures/kube-apiserver/server.ts";
import { eventually, namespace, pod, recordingLogger } from "../helpers/kube-test.ts";

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function standIn(opts: StandInOptions = {}): StandInApiServer {
  const s = new StandInApiServer(opts).start();
  cleanup.push(() => s.close());
  return s;
}

interface Seen {
  type: EventType;
  key: string;
  rv: string;
}

function informer<T extends KubeObject>(s: StandInApiServer, opts: Partial<ConstructorParameters<typeof Informer<T>>[0]> = {}) {
  const log = recordingLogger();
  const client = new KubeClient(loadKubeconfig(s.kubeconfigPath));
  const inf = new Informer<T>({ client, resource: PODS, backoff: { initialMs: 20, maxMs: 100 }, log, ...opts });
  const seen: Seen[] = [];
  inf.onEvent((type, o) => seen.push({ type, key: `${o.metadata.namespace ?? ""}/${o.metadata.name}`, rv: o.metadata.resourceVersion! }));
  cleanup.push(() => inf.stop());
  return { inf, seen, log, client };
}

const kinds = (seen: Seen[]) => seen.map((e) => `${e.type} ${e.key}`);

describe("informer against the stand-in API server", () => {
  test("initial list as ADDED, then the server's events in order, at the server's version", async () => {
    const s = standIn();
    for (const n of ["a", "b", "c"]) s.put(pod("default", n));
    const { inf, seen, client } = informer<Pod>(s);
    expect(inf.synced).toBe(false);
    inf.start();
    await inf.ready;
    expect(inf.synced).toBe(true);
    expect(kinds(seen).sort()).toEqual(["ADDED default/a", "ADDED default/b", "ADDED default/c"]);
    expect(inf.list().every((p) => p.kind === "Pod" && p.apiVersion === "v1")).toBe(true);
    await eventually(() => s.openWatches === 1, "watch open");

    s.put(pod("default", "d"));
    await client.patchPodAnnotations("default", "a", { "ambient.istio.io/redirection": "enabled" });
    s.remove("Pod", "default", "b");
    await eventually(() => seen.length === 6, "three events");
    expect(kinds(seen.slice(3))).toEqual(["ADDED default/d", "MODIFIED default/a", "DELETED default/b"]);
    expect(inf.get("default", "a")?.metadata.annotations).toEqual({ "ambient.istio.io/redirection": "enabled" });
    expect(inf.get("default", "b")).toBeUndefined();
    expect(inf.list().map((p) => p.metadata.name).sort()).toEqual(["a", "c", "d"]);
    expect(inf.resourceVersion).toBe(String(s.store.rv));
    expect(inf.stats.lists).toBe(1);
  });

  test("a bookmark advances the version without an event", async () => {
    const s = standIn();
    s.put(namespace("shop", { "istio.io/dataplane-mode": "ambient" }));
    const { inf, seen } = informer(s, { resource: NAMESPACES, labelSelector: "istio.io/dataplane-mode=ambient" });
    await inf.start().ready;
    expect(kinds(seen)).toEqual(["ADDED /shop"]);
    await eventually(() => s.openWatches === 1, "watch open");
    const before = inf.resourceVersion;
    s.put(pod("default", "unrelated")); // moves the server's version, not this watch
    s.bookmark();
    await eventually(() => inf.stats.bookmarks >= 1, "bookmark applied");
    expect(inf.resourceVersion).toBe(String(s.store.rv));
    expect(Number(inf.resourceVersion)).toBeGreaterThan(Number(before));
    expect(seen.length).toBe(1);
    const watches = s.requests.filter((r) => r.query.includes("watch=true"));
    expect(watches.every((r) => r.query.includes("allowWatchBookmarks=true"))).toBe(true);
  });

  for (const goneAs of ["event", "status"] as const) {
    test(`410 Gone (${goneAs === "event" ? "ERROR event, as kube-apiserver sends it" : "HTTP 410"}) re-lists and emits only the difference`, async () => {
      const s = standIn({ goneAs });
      for (const n of ["keep", "change", "go"]) s.put(pod("default", n));
      const { inf, seen } = informer<Pod>(s);
      await inf.start().ready;
      await eventually(() => s.openWatches === 1, "watch open");
      seen.length = 0;
      // changes the informer cannot see as events: made while the server is down, history dropped
      await s.stop();
      s.put({ ...pod("default", "change"), metadata: { name: "change", namespace: "default", labels: { v: "2" } } });
      s.remove("Pod", "default", "go");
      s.put(pod("default", "new"));
      s.store.compact();
      s.start();
      await eventually(() => inf.stats.gone === 1 && inf.stats.lists === 2 && s.openWatches === 1, "re-listed after 410");
      expect(kinds(seen).sort()).toEqual(["ADDED default/new", "DELETED default/go", "MODIFIED default/change"]);
      expect(inf.list().map((p) => p.metadata.name).sort()).toEqual(["change", "keep", "new"]);
      expect(inf.get("default", "change")?.metadata.labels).toEqual({ v: "2" });
      expect(inf.synced).toBe(true);
    });
  }

  test("API server down: one clear warning, the cache kept and synced; back: resumes and catches up", async () => {
    const s = standIn();
    s.put(pod("default", "a"));
    s.put(pod("default", "b"));
    const { inf, seen, log } = informer<Pod>(s);
    await inf.start().ready;
    await eventually(() => s.openWatches === 1, "watch open");
    await s.stop();
    await eventually(() => inf.stats.failures >= 4, "several failed retries");
    const warns = log.lines.filter((l) => l.level === "warn");
    expect(warns.length).toBe(1);
    expect(warns[0]!.msg).toBe(`API server ${s.url} unreachable: ECONNREFUSED; keeping the last known 2 pods`);
    expect(inf.synced).toBe(true);
    expect(inf.list().map((p) => p.metadata.name).sort()).toEqual(["a", "b"]);

    // missed while down, still in the server's history: the watch catches up without a re-list
    s.put(pod("default", "c"));
    s.remove("Pod", "default", "a");
    s.start();
    await eventually(() => inf.get("default", "c") !== undefined && inf.get("default", "a") === undefined, "caught up");
    expect(kinds(seen.slice(2))).toEqual(["ADDED default/c", "DELETED default/a"]);
    expect(inf.stats.lists).toBe(1);
    expect(log.lines.some((l) => l.level === "info" && l.msg.startsWith(`API server ${s.url} reachable again after `) && l.msg.includes("watching pods from version"))).toBe(true);
  });

  test("nothing is emitted before the first complete list: server down at start, then a truncated list", async () => {
    const s = standIn();
    s.put(pod("default", "a"));
    await s.stop();
    const { inf, seen, log } = informer<Pod>(s);
    let ready = false;
    void inf.ready.then(() => (ready = true));
    inf.start();
    await eventually(() => inf.stats.failures >= 2, "failed tries");
    expect(log.lines.filter((l) => l.level === "warn").map((l) => l.msg)).toEqual([`API server ${s.url} unreachable: ECONNREFUSED; no pods known yet (nothing is acted on before the first complete list)`]);
    s.truncateLists = 2; // 200 with half a body: must count as a failure, never as a list
    s.start();
    await eventually(() => s.truncateLists === 0 && inf.stats.failures >= 4, "truncated lists answered");
    expect(inf.synced).toBe(false);
    expect(ready).toBe(false);
    expect(seen).toEqual([]);
    await inf.ready;
    expect(kinds(seen)).toEqual(["ADDED default/a"]);
    expect(inf.stats.lists).toBe(1);
  });

  test("field and label selectors: the node's pods only; leaving or entering the selection is DELETED or ADDED", async () => {
    const s = standIn();
    s.put(namespace("shop"));
    s.put(pod("shop", "web-1", { node: "node-1", labels: { app: "web" } }));
    s.put(pod("shop", "db-1", { node: "node-1", labels: { app: "db" } }));
    s.put(pod("shop", "web-2", { node: "node-2", labels: { app: "web" } }));
    s.put(pod("shop", "job-1", { node: "node-1", labels: { app: "job" } }));
    s.put(pod("shop", "pending", { labels: { app: "web" } }));
    const { inf, seen } = informer<Pod>(s, { fieldSelector: "spec.nodeName=node-1", labelSelector: "app in (web,db)" });
    await inf.start().ready;
    expect(inf.list().map((p) => p.metadata.name).sort()).toEqual(["db-1", "web-1"]);
    await eventually(() => s.openWatches === 1, "watch open");
    s.put(pod("shop", "pending", { node: "node-1", labels: { app: "web" } })); // scheduled here
    s.put(pod("shop", "db-1", { node: "node-1", labels: { app: "other" } })); // relabelled away
    s.put(pod("shop", "web-2", { node: "node-2", labels: { app: "web", x: "y" } })); // not ours
    await eventually(() => seen.length === 4, "two events");
    expect(kinds(seen.slice(2))).toEqual(["ADDED shop/pending", "DELETED shop/db-1"]);
    const q = s.requests.find((r) => r.method === "GET" && !r.query.includes("watch"))!.query;
    expect(decodeURIComponent(q)).toContain("fieldSelector=spec.nodeName=node-1");
  });

  test("Istio custom resources in one namespace", async () => {
    const s = standIn();
    s.put(namespace("shop"));
    s.put({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name: "allow-web", namespace: "shop" }, spec: { action: "ALLOW" } });
    s.put({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name: "deny-all", namespace: "default" }, spec: {} });
    const { inf } = informer<IstioObject>(s, { resource: AUTHORIZATION_POLICIES, namespace: "shop" });
    await inf.start().ready;
    expect(inf.list().map((o) => `${o.kind} ${o.metadata.namespace}/${o.metadata.name}`)).toEqual(["AuthorizationPolicy shop/allow-web"]);
    expect(inf.get("shop", "allow-web")?.spec).toEqual({ action: "ALLOW" });
  });

  test("a 403 is logged as a refusal with the server's message, and retried", async () => {
    const s = standIn();
    const { inf, log } = informer(s, { client: new KubeClient({ ...loadKubeconfig(s.kubeconfigPath), token: "wrong" }) });
    inf.start();
    await eventually(() => inf.stats.failures >= 2, "retried");
    const warns = log.lines.filter((l) => l.level === "warn");
    expect(warns.length).toBe(1);
    expect(warns[0]!.msg).toStartWith(`API server ${s.url} refused pods: 401 Unauthorized: Unauthorized; no pods known yet`);
  });
});
