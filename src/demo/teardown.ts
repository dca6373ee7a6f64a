// The end of a run that was not kept: everything it made is removed, in the order a cluster would
// remove it, and then verified gone (the "clean teardown" check).
import { existsSync } from "node:fs";
import { alive, stopProcesses } from "./env.ts";
import { plural } from "./printer.ts";
import type { DemoRun } from "./run.ts";
import { deleteNetnsHard, namespaceRank, processesMentioning, recordedNets, tagNamespaces, teardownRecord } from "./state.ts";

export interface TeardownOutcome {
  ok: boolean;
  detail: string;
}

/**
 * Removes everything, in the order a cluster would: the servers and the CA, the pods (CNI DEL on
 * their node), the proxies, the agents, the fabric, the nodes.
 */
export async function tearDown(demo: DemoRun): Promise<TeardownOutcome> {
  const errors: string[] = [];
  const step = async (what: string, f: () => Promise<unknown>) => {
    try {
      await f();
    } catch (e) {
      errors.push(`${what}: ${(e as Error).message.split("\n")[0]}`);
    }
  };
  const rec = demo.record;
  const procs = rec?.processes ?? [];
  await step("stopping the echo client", async () => demo.echo?.stop(1000));
  await step("stopping the servers and the CA", () => stopProcesses(procs.filter((p) => p.role !== "proxy" && p.role !== "agent"), 3000));
  let podsDeleted = 0;
  // CNI DEL through each node's chain while its agent and proxy still run: the agent removes the
  // in-pod rules and tells the proxy (DelWorkload), which closes the pod's listeners.
  for (const n of [...demo.nodes].reverse()) {
    for (const pod of [...n.sim.pods].reverse()) {
      await step(`CNI DEL of ${pod.podNamespace}/${pod.podName} on ${n.name}`, async () => {
        await n.sim.deletePod(pod);
        podsDeleted++;
      });
    }
  }
  await step("stopping the proxies", () => stopProcesses(procs.filter((p) => p.role === "proxy"), 5000));
  await step("stopping the agents", () => stopProcesses(procs.filter((p) => p.role === "agent"), 5000));
  if (demo.fabric) await step("removing the fabric", () => demo.fabric!.destroy());
  for (const n of [...demo.nodes].reverse()) await step(`removing ${n.name}`, () => n.sim.destroy());
  // Anything left of this demo's tags (a step interrupted half-way), then the files.
  const tags = [...new Set([...(rec ? recordedNets(rec).map((n) => n.tag) : []), ...demo.nodes.map((n) => n.sim.tag), ...(demo.fabric ? [demo.fabric.tag] : [])])];
  const leftover = async () => (await Promise.all(tags.map(tagNamespaces))).flat().sort((a, b) => namespaceRank(a) - namespaceRank(b));
  for (const ns of await leftover()) await step(`removing netns ${ns}`, () => deleteNetnsHard(ns));
  if (rec) await step("removing the work dir", () => teardownRecord({ ...rec, processes: procs }));

  // Verify: nothing of this demo remains.
  const leftNs = await leftover();
  const leftProcs = procs.filter((p) => alive(p.pid, p.start)).map((p) => `${p.role} (pid ${p.pid})`);
  const mentioning = rec ? processesMentioning(rec.workDir) : [];
  const leftFiles = [rec?.workDir, ...demo.nodes.map((n) => n.sim.tmpDir), demo.fabric?.tmpDir].filter((p): p is string => p !== undefined && existsSync(p));
  const ok = errors.length === 0 && leftNs.length === 0 && leftProcs.length === 0 && mentioning.length === 0 && leftFiles.length === 0;
  const what = `${plural(podsDeleted, "pod")} deleted through CNI DEL, ${plural(procs.length, "process", "processes")} stopped, ${plural(demo.nodes.length, "node")}${demo.fabric ? ", the fabric" : ""} and the files removed`;
  const detail = ok
    ? `${what}: no namespace, process or file of the demo left`
    : [
        `teardown incomplete:`,
        ...errors,
        ...(leftNs.length ? [`namespaces left: ${leftNs.join(", ")}`] : []),
        ...(leftProcs.length ? [`processes left: ${leftProcs.join(", ")}`] : []),
        ...(mentioning.length ? [`processes still using ${rec?.workDir}: ${mentioning.join(", ")}`] : []),
        ...(leftFiles.length ? [`files left: ${leftFiles.join(", ")}`] : []),
      ].join("\n");
  return { ok, detail };
}
