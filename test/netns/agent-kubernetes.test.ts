// Enrollment from the Kubernetes API on a virtual node: `nshub agent` (dist/nshub) with
// agent.kubernetes on, watching the STAND-IN API server (test/fixtures/kube-apiserver: no real
// kube-apiserver runs here; its fidelity is checked against the real kubectl in
// test/unit/k8s-standin-kubectl.test.ts), started inside the node's netns so the agent reaches
// it on the node's loopback. Pods are made by the real CNI chain with nshub-cni; a test ZDS
// client stands in for the proxy. Judged by the rules in each pod's netns, real traffic (a
// captured connection goes to 15001, where no proxy listens here, so it fails; uncaptured, it
// reaches the server), the annotation on the API's pod object and the agent's own state.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { Netns, withNetns } from "../../src/sys/index.ts";
import { TestZdsClient } from "../fixtures/agent-zds-client.ts";
import { AgentPaths, assertBuilt, CLEAN_STATE, ENROLLED_STATE, eventually, podNetState, startAgent } from "../fixtures/agent-harness.ts";
import { startStandInApiServer, type StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import { RESOURCES } from "../fixtures/kube-apiserver/resources.ts";
import { namespace, pod } from "../helpers/kube-test.ts";
import { createSim, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;
const NODE = "node-1";
const MODE = "istio.io/dataplane-mode";
const REDIRECTION = "ambient.istio.io/redirection";

netnsDescribe("nshub agent: enrollment from the Kubernetes API (stand-in API server)", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let zds: TestZdsClient;
  let api: StandInApiServer;
  let server: Pod;

  /** The pod object in the API, then the pod through the CNI chain with the same uid. */
  async function makePod(ns: string, name: string, opts: { labels?: Record<string, string>; serviceAccount?: string } = {}): Promise<Pod> {
    const obj = pod(ns, name, { node: NODE, labels: opts.labels });
    (obj.spec as { serviceAccountName: string }).serviceAccountName = opts.serviceAccount ?? "default";
    const created = api.put(obj);
    return sim.addPod({ name, namespace: ns, uid: created.metadata.uid });
  }
  const PODS = RESOURCES.find((r) => r.group === "" && r.plural === "pods")!;
  const annotation = (p: Pod) => (api.store.get(PODS, p.podNamespace, p.podName).metadata.annotations ?? {})[REDIRECTION];
  const labelNamespace = (name: string, labels: Record<string, string>) => api.put(namespace(name, labels));
  /** One connection from `from` to the echo server: true when it got its bytes back. */
  async function reaches(from: Pod): Promise<boolean> {
    const r = await from.exec(["socat", "-t", "2", "-T", "3", "-", `TCP:${server.ip}:7000,connect-timeout=2`], { stdin: "ping\n", timeoutMs: 15_000 });
    return r.stdout === "ping\n";
  }

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: [] });
    sim = await createSim({ plugins: [paths.plugin] });
    // The stand-in listens on the node's loopback: bind inside the node's netns.
    const nodeNs = Netns.open(sim.node.netnsPath);
    try {
      api = withNetns(nodeNs, () => startStandInApiServer());
    } finally {
      nodeNs.close();
    }
    for (const ns of ["mesh", "apps", "outside"]) api.put(namespace(ns));
    labelNamespace("mesh", { [MODE]: "ambient" });
    writeFileSync(paths.config, readFileSync(paths.config, "utf8").replace("agent:\n", `agent:\n  kubernetes:\n    enabled: true\n    kubeconfig: ${api.kubeconfigPath}\n    nodeName: ${NODE}\n`));
    agent = await startAgent(sim, paths);
    zds = await TestZdsClient.connect(paths.zdsSocket);
    await eventually(() => zds.snapshotReceived, "the first (empty) snapshot");
    await eventually(() => agent.stdout().includes("Kubernetes API listed") || agent.stderr().includes("Kubernetes API listed"), "the agent's first list");
    // A server outside the mesh that every test client talks to.
    server = await makePod("outside", "server-0");
    server.spawn(["socat", `TCP-LISTEN:7000,reuseaddr,fork`, "PIPE"]);
    await server.waitForTcpPort(7000);
  }, T);

  afterAll(async () => {
    await zds?.close();
    await sim?.destroy();
    await api?.close();
    paths?.cleanup();
  }, T);

  test(
    "a new pod of a labelled namespace is enrolled at CNI ADD, with its service account from the API, and annotated",
    async () => {
      const web = await makePod("mesh", "web-0", { serviceAccount: "web-sa" });
      expect(await podNetState(web.netnsPath)).toEqual(ENROLLED_STATE);
      expect(zds.of("add").find((e) => e.uid === web.uid)?.info).toEqual({ name: "web-0", namespace: "mesh", serviceAccount: "web-sa" });
      await eventually(() => annotation(web) === "enabled", "the redirection annotation");
      expect(await reaches(web)).toBe(false); // captured: 15001, where no proxy listens here
    },
    T,
  );

  test(
    "a pod that opts out by label stays out in a labelled namespace",
    async () => {
      const out = await makePod("mesh", "batch-0", { labels: { [MODE]: "none" } });
      expect(await podNetState(out.netnsPath)).toEqual(CLEAN_STATE);
      expect(annotation(out)).toBeUndefined();
      expect(await reaches(out)).toBe(true);
    },
    T,
  );

  test(
    "labelling the namespace of a running pod enrolls it without a restart; removing the label unenrolls it; the annotation follows",
    async () => {
      const late = await makePod("apps", "late-0");
      expect(await podNetState(late.netnsPath)).toEqual(CLEAN_STATE);
      expect(await reaches(late)).toBe(true);

      const labelledAt = Date.now();
      labelNamespace("apps", { [MODE]: "ambient" });
      await eventually(async () => JSON.stringify(await podNetState(late.netnsPath)) === JSON.stringify(ENROLLED_STATE), "late-0's rules after the label");
      console.log(`namespace labelled → running pod's rules in place: ${Date.now() - labelledAt} ms`);
      expect(zds.served.has(late.uid)).toBe(true);
      await eventually(() => annotation(late) === "enabled", "the annotation");
      expect(await reaches(late)).toBe(false);

      labelNamespace("apps", {});
      await eventually(async () => JSON.stringify(await podNetState(late.netnsPath)) === JSON.stringify(CLEAN_STATE), "late-0's rules gone");
      await eventually(() => annotation(late) === undefined, "the annotation removed");
      expect(await reaches(late)).toBe(true);
    },
    T,
  );

  test(
    "the API server going away loses nothing: enrolled pods stay enrolled through the outage, and a change made meanwhile applies once it is back",
    async () => {
      const web = sim.pods.find((p) => p.podName === "web-0")!;
      await api.stop();
      await eventually(() => /unreachable/i.test(agent.stdout() + agent.stderr()), "the outage logged");
      // the agent keeps what it knew
      const during = await podNetState(web.netnsPath);
      expect(during).toEqual(ENROLLED_STATE);
      // meanwhile the namespace loses its label (in the store: the server is down)
      labelNamespace("mesh", {});
      const nodeNs = Netns.open(sim.node.netnsPath);
      try {
        withNetns(nodeNs, () => api.start());
      } finally {
        nodeNs.close();
      }
      await eventually(async () => JSON.stringify(await podNetState(web.netnsPath)) === JSON.stringify(CLEAN_STATE), "web-0 unenrolled once the API is back", 30_000);
      await eventually(() => annotation(web) === undefined, "its annotation removed");
    },
    T,
  );
});
