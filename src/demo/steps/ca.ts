// Step 3, the middle: the demo's CA. `nshub ca serve` runs in a pod of its own on node 1,
// istio-system/nshub-ca (made through the CNI chain; its namespace is not enrolled, like
// istiod's), on istiod's port 15012. Each node gets its own credential (`nshub ca issue-node`: a
// bearer token) and its proxy asks the CA for its pods' certificates: node 1's proxy across its
// bridge, node 2's across the fabric. Both nodes' certificates chain to the one root of step 2.
import { readFileSync, writeFileSync } from "node:fs";
import type { Pod } from "../../sim/namespace.ts";
import { run } from "../../sim/process.ts";
import { alive, childEnv, displayPath, spawnDetached, tail } from "../env.ts";
import { CA_PORT, DemoError, type DemoRun } from "../run.ts";
import { writeRecord } from "../state.ts";
import { configYaml } from "./node.ts";

export const CA_NAMESPACE = "istio-system";
export const CA_POD = "nshub-ca";

export async function startCa(demo: DemoRun): Promise<void> {
  const exe = demo.bin.exe;
  const dir = demo.path("ca");
  const pod = await addPlainPod(demo);
  const address = `${pod.ip}:${CA_PORT}`;
  const argv = [exe, "ca", "serve", "--dir", dir, "--address", address, "--metrics-address", "127.0.0.1:15014"];
  const proc = demo.addProcess(spawnDetached("ca", pod.name, argv, demo.path("ca.log"), childEnv({ NSHUB_LOG_FORMAT: "json" }), demo.n1.name));
  const deadline = Date.now() + 20_000;
  while (!(await pod.listeningTcpPorts()).includes(CA_PORT)) {
    demo.checkInterrupted();
    if (!alive(proc.pid, proc.start)) throw new DemoError(`nshub ca serve exited; its log (${proc.log}):\n${tail(proc.log)}`);
    if (Date.now() > deadline) throw new DemoError(`nshub ca serve does not listen on ${address} after 20 s; its log:\n${tail(proc.log)}`);
    await Bun.sleep(50);
  }
  demo.ca = { pod, address, dir, proc };
  demo.out.info(`ca     pid ${proc.pid}: ${displayPath(exe)} ca serve --dir ${dir} --address ${address}`);
  demo.out.info(`       in pod ${CA_NAMESPACE}/${CA_POD} on ${demo.n1.name} (${pod.ip}; namespace not enrolled, like istiod): Istio's certificate API`);

  // One credential per node; the proxy's config names the CA, its root and the node's token.
  const issued: string[] = [];
  for (const n of demo.nodes) {
    const tokenFile = n.path("ca-token");
    const r = await run([exe, "ca", "issue-node", "--dir", dir, "--node", n.name, "--token-file", tokenFile], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new DemoError(`nshub ca issue-node --node ${n.name} failed: ${r.stderr.trim() || r.stdout.trim()}`);
    writeFileSync(n.path("config.yaml"), configYaml(n.dir, { address, rootCert: `${dir}/root-cert.pem`, tokenFile }));
    issued.push(`${n.name} → ${tokenFile}`);
  }
  demo.out.info(`       ${displayPath(exe)} ca issue-node --node <node> --token-file …: one bearer token per node (${issued.join(", ")})`);
  demo.facts.ca = { pod: `${CA_NAMESPACE}/${CA_POD}`, node: demo.n1.name, address, dir, credentials: "a bearer token per node (nshub ca issue-node)" };
}

/** istio-system/nshub-ca on node 1, through the CNI chain; the agent leaves it alone. */
async function addPlainPod(demo: DemoRun): Promise<Pod> {
  demo.checkInterrupted();
  const pod = await demo.n1.sim.addPod({ namespace: CA_NAMESPACE, name: CA_POD });
  demo.record!.pods.push({ node: demo.n1.name, namespace: CA_NAMESPACE, name: CA_POD, netns: pod.name, ip: pod.ip, uid: pod.uid });
  writeRecord(demo.record!);
  return pod;
}

/** The CA's "certificate issued" log lines: which node asked for which identity, from where. */
export function caIssued(log: string): { node: string; identity: string; serial: string; peer: string }[] {
  const out: { node: string; identity: string; serial: string; peer: string }[] = [];
  let text = "";
  try {
    text = readFileSync(log, "utf8");
  } catch {
    return out;
  }
  for (const line of text.split("\n")) {
    if (!line.startsWith("{") || !line.includes("certificate issued")) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      out.push({ node: String(j.node ?? "?"), identity: String(j.identity ?? "?"), serial: String(j.serial ?? "?"), peer: String(j.peer ?? "?") });
    } catch {
      // not ours
    }
  }
  return out;
}
