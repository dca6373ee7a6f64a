// Step 4: pods through each node's CNI chain: on node 1 demo/web and demo/client in the enrolled
// namespace "demo", other/outsider outside it; on node 2 demo/backend. Checks that the proxy's
// listeners are inside exactly the enrolled ones. demo/web's and demo/backend's runtime passes
// their service accounts (CNI_ARGS K8S_POD_SERVICE_ACCOUNT, as kubelet does); demo/client's does
// not, so the agent gives it Kubernetes' default, "default".
import type { Pod } from "../../sim/namespace.ts";
import { renderTable } from "../../cli/admin-client.ts";
import { curlJson } from "../observe.ts";
import { AGENT_ADMIN, BACKEND_SERVICE_ACCOUNT, HBONE_PORT, WEB_SERVICE_ACCOUNT, type DemoNode, type DemoRun } from "../run.ts";
import { writeRecord } from "../state.ts";

const LISTENER_PORTS: Record<number, string> = { 15001: "outbound", 15006: "inbound", [HBONE_PORT]: "HBONE" };

export async function createPods(demo: DemoRun): Promise<void> {
  demo.step(4, "creating pods through each node's CNI chain (loopback, bridge + host-local, nshub-cni)");
  const add = async (node: DemoNode, namespace: string, name: string, serviceAccount?: string): Promise<Pod> => {
    demo.checkInterrupted();
    const pod = await node.sim.addPod({ namespace, name, ...(serviceAccount ? { cniArgs: { K8S_POD_SERVICE_ACCOUNT: serviceAccount } } : {}) });
    demo.record!.pods.push({ node: node.name, namespace, name, netns: pod.name, ip: pod.ip, uid: pod.uid });
    writeRecord(demo.record!);
    return pod;
  };
  const { n1, n2 } = demo;
  const web = (demo.pods.web = await add(n1, "demo", "web", WEB_SERVICE_ACCOUNT));
  const client = (demo.pods.client = await add(n1, "demo", "client"));
  const outsider = (demo.pods.outsider = await add(n1, "other", "outsider"));
  const backend = (demo.pods.backend = await add(n2, "demo", "backend", BACKEND_SERVICE_ACCOUNT));
  const rows: string[][] = [];
  const podFacts: Record<string, unknown>[] = [];
  let enrolledOk = true;
  for (const [node, pods] of [
    [n1, [web, client, outsider]],
    [n2, [backend]],
  ] as const) {
    const agentPods = (await curlJson<{ pods: { uid: string; state: string }[] }>(node.ns, `${AGENT_ADMIN}/pods`))?.pods ?? [];
    for (const pod of pods) {
      const state = agentPods.find((p) => p.uid === pod.uid)?.state ?? "unknown";
      const ports = (await listenersIn(demo, pod)).filter((p) => p in LISTENER_PORTS);
      const shouldEnroll = pod.podNamespace === "demo";
      const ok = shouldEnroll ? state === "enrolled" && ports.includes(15001) && ports.includes(15006) && ports.includes(HBONE_PORT) : state === "not-enrolled" && ports.length === 0;
      enrolledOk &&= ok;
      rows.push([node.name, `${pod.podNamespace}/${pod.podName}`, pod.ip, pod.name, state, ports.length ? ports.map((p) => `${p} (${LISTENER_PORTS[p]})`).join(", ") : "none"]);
      podFacts.push({ node: node.name, namespace: pod.podNamespace, name: pod.podName, uid: pod.uid, ip: pod.ip, netns: pod.name, agentState: state, proxyListeners: ports });
    }
  }
  demo.facts.pods = podFacts;
  demo.out.info(renderTable([{ header: "NODE" }, { header: "POD" }, { header: "IP" }, { header: "NETNS" }, { header: "AGENT SAYS" }, { header: "PROXY LISTENERS INSIDE THE POD'S NETNS" }], rows));
  demo.out.info(demo.out.dim(`(listeners from \`ss -ltn\` run inside each pod; each node's proxy opened them from the node, in the pod's namespace;`));
  demo.out.info(demo.out.dim(` ${demo.ca ? `${demo.ca.pod.podNamespace}/${demo.ca.pod.podName} ${demo.ca.pod.ip} on node-1, the CA's pod, is not enrolled either)` : ")"}`));
  demo.checks.push({
    id: "enrolled",
    title: "enrolled pods get the proxy's listeners",
    ok: enrolledOk,
    detail: enrolledOk
      ? `demo/web and demo/client (node-1) and demo/backend (node-2) are enrolled with 15001/15006/15008 inside their netns; other/outsider is not-enrolled and has none`
      : `unexpected enrollment: ${rows.map((r) => `${r[0]} ${r[1]} ${r[4]} [${r[5]}]`).join("; ")}`,
  });
}

/**
 * The proxy's listeners in a pod. The HBONE listener (15008) comes a moment after 15001/15006:
 * it waits for the pod identity's certificate, so an enrolled pod is given a few seconds.
 */
async function listenersIn(demo: DemoRun, pod: Pod): Promise<number[]> {
  const deadline = Date.now() + (pod.podNamespace === "demo" ? 15_000 : 0);
  for (;;) {
    const ports = await pod.listeningTcpPorts();
    if ([15001, 15006, HBONE_PORT].every((p) => ports.includes(p)) || Date.now() >= deadline) return ports;
    demo.checkInterrupted();
    await Bun.sleep(100);
  }
}
