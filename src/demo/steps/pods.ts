// Step 4: pods through the CNI chain: demo/web and demo/client in the enrolled namespace "demo",
// other/outsider outside it. Checks that the proxy's listeners are inside exactly the enrolled ones.
// demo/web's runtime passes its service account (CNI_ARGS K8S_POD_SERVICE_ACCOUNT, as kubelet
// does); demo/client's does not, so the agent gives it Kubernetes' default, "default".
import type { Pod } from "../../sim/namespace.ts";
import { renderTable } from "../../cli/admin-client.ts";
import { writeRecord } from "../env.ts";
import { curlJson } from "../observe.ts";
import { AGENT_ADMIN, WEB_SERVICE_ACCOUNT, type DemoRun } from "../run.ts";

export async function createPods(demo: DemoRun): Promise<void> {
  demo.step(4, "creating pods through the CNI chain (loopback, bridge + host-local, nshub-cni)");
  const sim = demo.sim!;
  const add = async (namespace: string, name: string, serviceAccount?: string): Promise<Pod> => {
    demo.checkInterrupted();
    const pod = await sim.addPod({ namespace, name, ...(serviceAccount ? { cniArgs: { K8S_POD_SERVICE_ACCOUNT: serviceAccount } } : {}) });
    demo.record!.pods.push({ namespace, name, netns: pod.name, ip: pod.ip, uid: pod.uid });
    writeRecord(demo.record!);
    return pod;
  };
  const web = (demo.pods.web = await add("demo", "web", WEB_SERVICE_ACCOUNT));
  const client = (demo.pods.client = await add("demo", "client"));
  const outsider = (demo.pods.outsider = await add("other", "outsider"));
  const agentPods = (await curlJson<{ pods: { uid: string; state: string; reason: string }[] }>(demo.node, `${AGENT_ADMIN}/pods`))?.pods ?? [];
  const rows: string[][] = [];
  const podFacts: Record<string, unknown>[] = [];
  let enrolledOk = true;
  for (const pod of [web, client, outsider]) {
    const state = agentPods.find((p) => p.uid === pod.uid)?.state ?? "unknown";
    const ports = (await pod.listeningTcpPorts()).filter((p) => p === 15001 || p === 15006);
    const shouldEnroll = pod.podNamespace === "demo";
    const ok = shouldEnroll ? state === "enrolled" && ports.includes(15001) && ports.includes(15006) : state === "not-enrolled" && ports.length === 0;
    enrolledOk &&= ok;
    rows.push([`${pod.podNamespace}/${pod.podName}`, pod.ip, pod.name, state, ports.length ? ports.map((p) => `${p} (${p === 15001 ? "outbound" : "inbound"})`).join(", ") : "none"]);
    podFacts.push({ namespace: pod.podNamespace, name: pod.podName, uid: pod.uid, ip: pod.ip, netns: pod.name, agentState: state, proxyListeners: ports });
  }
  demo.facts.pods = podFacts;
  demo.out.info(renderTable([{ header: "POD" }, { header: "IP" }, { header: "NETNS" }, { header: "AGENT SAYS" }, { header: "PROXY LISTENERS INSIDE THE POD'S NETNS" }], rows));
  demo.out.info(demo.out.dim(`(listeners from \`ss -ltn\` run inside each pod; the proxy opened them from the node, in the pod's namespace)`));
  demo.checks.push({
    id: "enrolled",
    title: "enrolled pods get the proxy's listeners",
    ok: enrolledOk,
    detail: enrolledOk
      ? `demo/web and demo/client are enrolled with 15001/15006 inside their netns; other/outsider is not-enrolled and has none`
      : `unexpected enrollment: ${rows.map((r) => `${r[0]} ${r[3]} [${r[4]}]`).join("; ")}`,
  });
}
