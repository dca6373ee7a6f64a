// The end of a run that was not kept: everything it made is removed, in the order a node would
// remove it, and then verified gone (the "clean teardown" check).
import { existsSync } from "node:fs";
import { alive, deleteNetnsHard, processesMentioning, stopProcesses, tagNamespaces, teardownRecord } from "./env.ts";
import { plural } from "./printer.ts";
import type { DemoRun } from "./run.ts";

export interface TeardownOutcome {
  ok: boolean;
  detail: string;
}

/** Removes everything, in the order a node would: servers, pods (CNI DEL), proxy, agent, node. */
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
  await step("stopping the servers", () => stopProcesses(procs.filter((p) => p.role.startsWith("web-")), 3000));
  let podsDeleted = 0;
  if (demo.sim) {
    // CNI DEL through the chain while agent and proxy still run: the agent removes the in-pod
    // rules and tells the proxy (DelWorkload), which closes the pod's listeners.
    for (const pod of [...demo.sim.pods].reverse()) {
      await step(`CNI DEL of ${pod.podNamespace}/${pod.podName}`, async () => {
        await demo.sim!.deletePod(pod);
        podsDeleted++;
      });
    }
  }
  await step("stopping the proxy", () => stopProcesses(procs.filter((p) => p.role === "proxy"), 5000));
  await step("stopping the agent", () => stopProcesses(procs.filter((p) => p.role === "agent"), 5000));
  if (demo.sim) await step("removing the node", () => demo.sim!.destroy());
  // Anything left of this demo's tag (a step interrupted half-way), then the files.
  const tag = demo.sim?.tag ?? rec?.tag;
  if (tag) for (const ns of await tagNamespaces(tag)) await step(`removing netns ${ns}`, () => deleteNetnsHard(ns));
  if (rec) await step("removing the work dir", () => teardownRecord({ ...rec, processes: procs }));

  // Verify: nothing of this demo remains.
  const leftNs = tag ? await tagNamespaces(tag) : [];
  const leftProcs = procs.filter((p) => alive(p.pid, p.start)).map((p) => `${p.role} (pid ${p.pid})`);
  const mentioning = rec ? processesMentioning(rec.workDir) : [];
  const leftFiles = [rec?.workDir, demo.sim?.tmpDir].filter((p): p is string => p !== undefined && existsSync(p));
  const ok = errors.length === 0 && leftNs.length === 0 && leftProcs.length === 0 && mentioning.length === 0 && leftFiles.length === 0;
  const what = `${plural(podsDeleted, "pod")} deleted through CNI DEL, ${plural(procs.length, "process", "processes")} stopped, node namespace and files removed`;
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
