// The registry's merge of several sources: the pods this node serves (ZDS) over a file's
// entries, by uid and by IP; lookups by IPv4, IPv6 and IPv4-mapped addresses; ztunnel's
// tie-break between workloads sharing an IP; HostNetwork workloads never found by IP; the ZDS
// source's calls before and after start; and the shape a Kubernetes list+watch will use.
import { describe, expect, test } from "bun:test";
import { parseLocalConfig } from "../../src/registry/local-config.ts";
import { WorkloadRegistry } from "../../src/registry/registry.ts";
import { PRECEDENCE, type SourceSink, type WorkloadSource } from "../../src/registry/source.ts";
import { makeWorkload, type WorkloadInput } from "../../src/registry/workload.ts";
import { ZdsWorkloadSource, type ZdsPod } from "../../src/registry/zds-source.ts";

const TD = "cluster.local";

/** A source fed by the test, as a Kubernetes list+watch would feed it. */
class ManualSource implements WorkloadSource {
  sink: SourceSink | undefined;
  stopped = false;
  constructor(
    readonly name: string,
    readonly precedence: number,
  ) {}
  start(sink: SourceSink) {
    this.sink = sink;
  }
  stop() {
    this.stopped = true;
  }
  w(input: Partial<WorkloadInput> & { uid: string }) {
    return makeWorkload({ namespace: "ns", workloadIps: [], ...input }, { trustDomain: this.sink!.trustDomain, source: this.name });
  }
}

function fileSource(yaml: string): WorkloadSource {
  const cfg = parseLocalConfig(yaml, { file: "/f.yaml", trustDomain: TD });
  return { name: "file:/f.yaml", precedence: PRECEDENCE.file, start: (s) => s.snapshot(cfg.workloads), stop: () => undefined };
}

const FILE = `workloads:
- uid: Kubernetes//Pod/shop/cart
  name: cart
  namespace: shop
  serviceAccount: cart
  workloadIps: ["10.1.0.5", "fd00:1::5"]
  protocol: HBONE
  node: node-2
  services: {}
- uid: Kubernetes//Pod/shop/old-web
  name: old-web
  namespace: shop
  serviceAccount: web-old
  workloadIps: ["10.1.0.9"]
  protocol: HBONE
  node: node-1
  services: {}
- uid: Kubernetes//Pod/plain/db
  name: db
  namespace: plain
  workloadIps: ["10.1.0.20"]
  protocol: TCP
  services: {}
`;

const web: ZdsPod = { uid: "8c0e7a52-web", name: "web", namespace: "shop", serviceAccount: "web", ips: ["10.1.0.9", "fd00:1::9"] };

async function setup() {
  const registry = new WorkloadRegistry({ trustDomain: TD });
  const zds = new ZdsWorkloadSource({ node: "node-1" });
  await registry.addSource(fileSource(FILE));
  await registry.addSource(zds);
  await registry.start();
  return { registry, zds };
}

describe("lookups", () => {
  test("by IPv4, IPv6 (any spelling) and IPv4-mapped IPv6; by uid; the list sorted by uid", async () => {
    const { registry } = await setup();
    expect(registry.findByIp("10.1.0.5")?.uid).toBe("Kubernetes//Pod/shop/cart");
    expect(registry.findByIp("fd00:1::5")?.uid).toBe("Kubernetes//Pod/shop/cart");
    expect(registry.findByIp("FD00:1:0:0:0:0:0:5")?.uid).toBe("Kubernetes//Pod/shop/cart");
    expect(registry.findByIp("::ffff:10.1.0.5")?.uid).toBe("Kubernetes//Pod/shop/cart");
    expect(registry.findByIp("10.1.0.6")).toBeUndefined();
    expect(registry.findByIp("not an ip")).toBeUndefined();
    expect(registry.byUid("Kubernetes//Pod/plain/db")?.identity).toBe("spiffe://cluster.local/ns/plain/sa/default");
    expect(registry.list().map((w) => w.uid)).toEqual(["Kubernetes//Pod/plain/db", "Kubernetes//Pod/shop/cart", "Kubernetes//Pod/shop/old-web"]);
  });

  test("meshDestination: HBONE workloads only, with the identity to expect", async () => {
    const { registry } = await setup();
    expect(registry.meshDestination("fd00:1::5")).toEqual({ workload: registry.byUid("Kubernetes//Pod/shop/cart")!, identities: ["spiffe://cluster.local/ns/shop/sa/cart"] });
    expect(registry.meshDestination("10.1.0.20")).toBeUndefined(); // TCP: not in the mesh
    expect(registry.findByIp("10.1.0.20")?.protocol).toBe("TCP");
  });
});

describe("precedence: ZDS over the file", () => {
  test("a pod this node serves wins an IP a stale file entry still names, and the file's entry wins back when the pod goes", async () => {
    const { registry, zds } = await setup();
    expect(registry.meshDestination("10.1.0.9")?.identities).toEqual(["spiffe://cluster.local/ns/shop/sa/web-old"]);
    expect(zds.upsert(web)).toBe(true);
    expect(registry.findByIp("10.1.0.9")).toMatchObject({ uid: "8c0e7a52-web", source: "zds", node: "node-1", protocol: "HBONE" });
    expect(registry.meshDestination("10.1.0.9")?.identities).toEqual(["spiffe://cluster.local/ns/shop/sa/web"]);
    expect(registry.findByIp("fd00:1::9")?.uid).toBe("8c0e7a52-web");
    // Both stay listed (ztunnel lists every workload); the conflict is reported.
    expect(registry.list()).toHaveLength(4);
    expect(registry.conflicts().map((c) => [c.ip, c.winner.uid, c.others.map((o) => o.uid)])).toEqual([["10.1.0.9", "8c0e7a52-web", ["Kubernetes//Pod/shop/old-web"]]]);
    zds.remove(web.uid);
    expect(registry.findByIp("10.1.0.9")?.uid).toBe("Kubernetes//Pod/shop/old-web");
    expect(registry.findByIp("fd00:1::9")).toBeUndefined();
    expect(registry.conflicts()).toEqual([]);
  });

  test("the same uid in both: ZDS's version is the workload; the file's returns when ZDS drops it", async () => {
    const { registry, zds } = await setup();
    zds.upsert({ uid: "Kubernetes//Pod/shop/cart", name: "cart", namespace: "shop", serviceAccount: "cart", ips: ["10.1.0.77"] });
    const w = registry.byUid("Kubernetes//Pod/shop/cart")!;
    expect(w.source).toBe("zds");
    expect(w.workloadIps).toEqual(["10.1.0.77"]);
    expect(registry.findByIp("10.1.0.5")).toBeUndefined(); // the file's IPs are not the workload's any more
    expect(registry.findByIp("10.1.0.77")?.uid).toBe("Kubernetes//Pod/shop/cart");
    zds.remove("Kubernetes//Pod/shop/cart");
    expect(registry.byUid("Kubernetes//Pod/shop/cart")?.source).toBe("file:/f.yaml");
    expect(registry.findByIp("10.1.0.5")?.uid).toBe("Kubernetes//Pod/shop/cart");
    expect(registry.findByIp("10.1.0.77")).toBeUndefined();
  });

  test("the order sources are added in does not matter; equal precedence: the first added wins", async () => {
    const registry = new WorkloadRegistry({ trustDomain: TD });
    const zds = new ZdsWorkloadSource();
    await registry.addSource(zds);
    await registry.addSource(fileSource(FILE));
    const a = new ManualSource("file:/a.yaml", PRECEDENCE.file);
    await registry.addSource(a);
    await registry.start();
    zds.upsert(web);
    expect(registry.findByIp("10.1.0.9")?.uid).toBe(web.uid);
    a.sink!.upsert(a.w({ uid: "Kubernetes//Pod/shop/cart", serviceAccount: "other", workloadIps: ["10.1.0.5"] }));
    expect(registry.byUid("Kubernetes//Pod/shop/cart")?.serviceAccount).toBe("cart");
    expect(registry.sources().map((s) => [s.name, s.precedence, s.workloads])).toEqual([["zds", 300, 1], ["file:/f.yaml", 100, 3], ["file:/a.yaml", 100, 1]]);
  });
});

describe("one IP, several workloads of one source: ztunnel's tie-break", () => {
  test("a Pod over other kinds, then HBONE over TCP, then the smaller uid; HostNetwork never found by IP", async () => {
    const registry = new WorkloadRegistry({ trustDomain: TD });
    const src = new ManualSource("kubernetes", PRECEDENCE.kubernetes);
    await registry.addSource(src);
    await registry.start();
    const ip = ["10.2.0.1"];
    src.sink!.upsert(src.w({ uid: "c/networking.istio.io/WorkloadEntry/ns/vm", workloadIps: ip, protocol: "HBONE" }));
    src.sink!.upsert(src.w({ uid: "c//Pod/ns/b", workloadIps: ip, protocol: "TCP" }));
    expect(registry.findByIp("10.2.0.1")?.uid).toBe("c//Pod/ns/b");
    src.sink!.upsert(src.w({ uid: "c//Pod/ns/z", workloadIps: ip, protocol: "HBONE" }));
    expect(registry.findByIp("10.2.0.1")?.uid).toBe("c//Pod/ns/z");
    src.sink!.upsert(src.w({ uid: "c//Pod/ns/a", workloadIps: ip, protocol: "HBONE" }));
    expect(registry.findByIp("10.2.0.1")?.uid).toBe("c//Pod/ns/a");
    src.sink!.upsert(src.w({ uid: "c//Pod/ns/host", workloadIps: ["10.2.0.99"], protocol: "HBONE", networkMode: "HostNetwork" }));
    expect(registry.findByIp("10.2.0.99")).toBeUndefined();
    expect(registry.byUid("c//Pod/ns/host")).toBeDefined();
  });
});

describe("the source contract (what a Kubernetes list+watch will do)", () => {
  test("snapshot replaces, upsert changes, remove deletes; an unchanged snapshot is no change; errors keep the workloads", async () => {
    const registry = new WorkloadRegistry({ trustDomain: TD });
    const src = new ManualSource("kubernetes", PRECEDENCE.kubernetes);
    await registry.addSource(src);
    await registry.start();
    let changes = 0;
    registry.onChange(() => changes++);
    const a = src.w({ uid: "a", workloadIps: ["10.3.0.1"] });
    const b = src.w({ uid: "b", workloadIps: ["10.3.0.2"] });
    src.sink!.snapshot([a, b]);
    expect(changes).toBe(1);
    src.sink!.snapshot([src.w({ uid: "a", workloadIps: ["10.3.0.1"] }), b]); // a relist with nothing new
    expect(changes).toBe(1);
    src.sink!.snapshot([b]);
    expect(registry.list().map((w) => w.uid)).toEqual(["b"]);
    expect(registry.findByIp("10.3.0.1")).toBeUndefined();
    src.sink!.upsert(src.w({ uid: "b", workloadIps: ["10.3.0.3"] }));
    expect(registry.findByIp("10.3.0.2")).toBeUndefined();
    expect(registry.findByIp("10.3.0.3")?.uid).toBe("b");
    src.sink!.error(new Error("watch expired"));
    expect(registry.sources()[0]).toMatchObject({ name: "kubernetes", workloads: 1, error: "watch expired" });
    expect(registry.findByIp("10.3.0.3")?.uid).toBe("b");
    src.sink!.remove("b");
    src.sink!.remove("never-there");
    expect(registry.list()).toEqual([]);
    const before = registry.generation;
    await registry.stop();
    expect(src.stopped).toBe(true);
    src.sink!.upsert(a); // after stop: ignored
    expect(registry.list()).toEqual([]);
    expect(registry.generation).toBe(before + 1);
  });
});

describe("the ZDS source", () => {
  test("pods given before start become the first snapshot, with the registry's trust domain", async () => {
    const zds = new ZdsWorkloadSource({ node: "n1" });
    zds.upsert(web);
    const registry = new WorkloadRegistry({ trustDomain: "mesh.example" });
    await registry.addSource(zds);
    expect(registry.list()).toEqual([]);
    await registry.start();
    expect(registry.findByIp("10.1.0.9")).toMatchObject({ uid: web.uid, identity: "spiffe://mesh.example/ns/shop/sa/web", node: "n1", protocol: "HBONE" });
  });

  test("replaceAll (after a ZDS snapshot) drops pods not named; a pod without namespace is left out, not thrown", async () => {
    const { registry, zds } = await setup();
    zds.upsert(web);
    zds.upsert({ uid: "p2", name: "p2", namespace: "shop", serviceAccount: "", ips: ["10.1.0.30"] });
    expect(registry.byUid("p2")?.serviceAccount).toBe("default");
    zds.replaceAll([{ uid: "p3", name: "p3", namespace: "shop", serviceAccount: "x", ips: ["10.1.0.31"] }, { uid: "p4", name: "", namespace: "", serviceAccount: "", ips: [] }]);
    expect(registry.byUid(web.uid)).toBeUndefined();
    expect(registry.byUid("p2")).toBeUndefined();
    expect(registry.byUid("p3")?.workloadIps).toEqual(["10.1.0.31"]);
    expect(registry.byUid("p4")).toBeUndefined();
    expect(zds.upsert({ uid: "p5", name: "p5", namespace: "shop", serviceAccount: "", ips: ["300.1.1.1"] })).toBe(false);
    expect(zds.pods().map((p) => p.uid)).toEqual(["p3"]);
  });
});
