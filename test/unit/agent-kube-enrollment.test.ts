// Enrollment from the Kubernetes API (src/agent/kube-enrollment.ts): istio-cni's rule table, and
// what label changes do through a stand-in of the agent's API view (an in-memory KubeObjects,
// named as such) and a recording stand-in of the agent.
import { describe, expect, test } from "bun:test";
import { ambientDecision, KubeEnrollment, type KubeObjects, type KubePod } from "../../src/agent/kube-enrollment.ts";

const pod = (over: Partial<KubePod> = {}): KubePod => ({ uid: "u1", namespace: "shop", name: "web-0", labels: {}, annotations: {}, serviceAccount: "web", ips: ["10.1.0.5"], nodeName: "node-1", hostNetwork: false, ...over });

describe("istio-cni's enrollment rule", () => {
  const cases: Array<[string, Partial<KubePod>, Record<string, string> | undefined, boolean, string]> = [
    ["namespace ambient", {}, { "istio.io/dataplane-mode": "ambient" }, true, "namespace shop is labelled"],
    ["pod ambient, namespace unlabelled", { labels: { "istio.io/dataplane-mode": "ambient" } }, {}, true, "pod shop/web-0 is labelled"],
    ["pod opts out of an ambient namespace", { labels: { "istio.io/dataplane-mode": "none" } }, { "istio.io/dataplane-mode": "ambient" }, false, "opted out"],
    ["nothing labelled", {}, {}, false, "neither"],
    ["namespace unknown", {}, undefined, false, "neither"],
    ["namespace with another mode", {}, { "istio.io/dataplane-mode": "sidecar" }, false, "neither"],
    ["hostNetwork pod in an ambient namespace", { hostNetwork: true }, { "istio.io/dataplane-mode": "ambient" }, false, "hostNetwork"],
    ["pod with a sidecar", { annotations: { "sidecar.istio.io/status": "{}" }, labels: { "istio.io/dataplane-mode": "ambient" } }, {}, false, "sidecar"],
  ];
  for (const [name, p, ns, enroll, reason] of cases) {
    test(name, () => {
      const d = ambientDecision(pod(p), ns);
      expect(d.enroll).toBe(enroll);
      expect(d.reason).toContain(reason);
    });
  }
});

/** Stand-in of the agent's API view: objects in memory, changes announced as the watch would. */
class StandInKube implements KubeObjects {
  synced = true;
  readonly ns = new Map<string, Record<string, string>>();
  readonly podsByKey = new Map<string, KubePod>();
  readonly patches: Array<[string, Record<string, string | null>]> = [];
  #fns: Array<Parameters<KubeObjects["onChange"]>[0]> = [];
  namespaceLabels = (n: string) => this.ns.get(n);
  pod = (n: string, name: string) => this.podsByKey.get(`${n}/${name}`);
  pods = () => this.podsByKey.values();
  async waitForPod(n: string, name: string) {
    return this.pod(n, name);
  }
  onChange(fn: Parameters<KubeObjects["onChange"]>[0]) {
    this.#fns.push(fn);
  }
  async patchPodAnnotations(n: string, name: string, patch: Record<string, string | null>) {
    this.patches.push([`${n}/${name}`, patch]);
    const p = this.pod(n, name)!;
    const a = { ...p.annotations };
    for (const [k, v] of Object.entries(patch)) v === null ? delete a[k] : (a[k] = v);
    p.annotations = a;
  }
  setNamespace(n: string, labels: Record<string, string>) {
    this.ns.set(n, labels);
    for (const fn of this.#fns) fn({ kind: "namespace", name: n });
  }
  putPod(p: KubePod) {
    this.podsByKey.set(`${p.namespace}/${p.name}`, p);
    for (const fn of this.#fns) fn({ kind: "pod", pod: p, deleted: false });
  }
}

/** Stand-in of the agent: which pods it knows, and what it was asked. */
function standInAgent(kube: KubeEnrollment, known: Set<string>) {
  const state = new Map<string, "enrolled" | "not-enrolled">();
  const calls: string[] = [];
  return {
    calls,
    state,
    async reapply(uid: string) {
      if (!known.has(uid)) return false;
      const p = [...(kube as unknown as { api: StandInKube }).api.pods()].find((x) => x.uid === uid)!;
      const d = kube.decide(p.namespace, p.name);
      calls.push(`reapply ${uid} → ${d.enroll ? "enroll" : "out"}`);
      state.set(uid, d.enroll ? "enrolled" : "not-enrolled");
      return true;
    },
    async adopt(p: { uid: string }) {
      calls.push(`adopt ${p.uid}`);
      known.add(p.uid);
      state.set(p.uid, "enrolled");
    },
    stateOf: (uid: string) => state.get(uid),
  };
}

describe("label changes enroll and unenroll running pods; the annotation follows", () => {
  test("namespace labelled: a known pod is re-decided, an unknown running one adopted; both annotated; the label removed: unenrolled and the annotation gone", async () => {
    const api = new StandInKube();
    const kube = new KubeEnrollment(api, { debug() {}, info() {}, warn() {}, error() {} } as never);
    api.putPod(pod({ uid: "known", name: "web-0" }));
    api.putPod(pod({ uid: "fresh", name: "web-1", ips: ["10.1.0.6"] }));
    api.ns.set("shop", {});
    const agent = standInAgent(kube, new Set(["known"]));
    kube.start(agent);
    api.setNamespace("shop", { "istio.io/dataplane-mode": "ambient" });
    await Bun.sleep(10);
    expect(agent.calls.sort()).toEqual(["adopt fresh", "reapply known → enroll"]);
    expect(api.pod("shop", "web-0")!.annotations["ambient.istio.io/redirection"]).toBe("enabled");
    expect(api.pod("shop", "web-1")!.annotations["ambient.istio.io/redirection"]).toBe("enabled");

    agent.calls.length = 0;
    api.setNamespace("shop", {});
    await Bun.sleep(10);
    expect(agent.calls.sort()).toEqual(["reapply fresh → out", "reapply known → out"]);
    expect(api.pod("shop", "web-0")!.annotations["ambient.istio.io/redirection"]).toBeUndefined();
    expect(api.patches.map(([k, p]) => `${k} ${JSON.stringify(p)}`)).toContain('shop/web-0 {"ambient.istio.io/redirection":null}');
  });

  test("a pod opting out by label is taken out; nothing is decided before the first list (unknown, not 'no')", async () => {
    const api = new StandInKube();
    const kube = new KubeEnrollment(api, { debug() {}, info() {}, warn() {}, error() {} } as never);
    api.ns.set("shop", { "istio.io/dataplane-mode": "ambient" });
    api.putPod(pod({ uid: "p" }));
    const agent = standInAgent(kube, new Set(["p"]));
    kube.start(agent);
    api.putPod(pod({ uid: "p", labels: { "istio.io/dataplane-mode": "none" } }));
    await Bun.sleep(10);
    expect(agent.calls).toEqual(["reapply p → out"]);
    api.synced = false;
    expect(kube.decide("shop", "web-0")).toMatchObject({ enroll: false, unknown: true });
    expect(kube.decide("shop", "nope")).toMatchObject({ enroll: false, unknown: true });
  });
});
