// The summary at the end: one ✔/✘ line per check, the pods and the CNI chain, how the run ended,
// and with --keep how to explore and remove what was left running. With --json, the same as JSON.
import type { Pod } from "../sim/namespace.ts";
import { displayPath } from "./env.ts";
import type { DemoRun } from "./run.ts";
import type { TeardownOutcome } from "./teardown.ts";

export function printSummary(demo: DemoRun, allOk: boolean, error: unknown, kept: boolean): void {
  const o = demo.out;
  if (demo.checks.length > 0) {
    o.line("");
    o.line(o.bold("summary"));
  }
  const width = Math.max(0, ...demo.checks.map((c) => c.title.length));
  for (const c of demo.checks) {
    const [first, ...rest] = c.detail.split("\n");
    o.line(`  ${o.mark(c.ok)} ${c.title.padEnd(width)}  ${first}`);
    for (const r of rest) o.line(`    ${" ".repeat(width)}  ${r}`);
  }
  if (demo.pods.client) {
    o.line("");
    const pods = (ps: Array<Pod | undefined>) => ps.filter((p): p is Pod => p !== undefined).map((p) => `${p.podNamespace}/${p.podName} ${p.ip}`).join(", ");
    o.line(`  node-1 pods: ${pods([demo.pods.web, demo.pods.client, demo.pods.outsider, demo.ca?.pod])}`);
    if (demo.pods.backend) o.line(`  node-2 pods: ${pods([demo.pods.backend])}`);
    if (demo.ca) o.line(`  CA: nshub ca serve at ${demo.ca.address} (pod istio-system/nshub-ca on node-1), one root for both nodes, a token per node`);
    if (demo.facts.conflistPath) o.line(`  CNI chain: ${chainOf(demo.facts.conflist)} (node-1's conflist ${demo.facts.conflistPath}${kept ? "" : ", removed with the node"})`);
  }
  o.line("");
  if (demo.interruptedBy) o.line(`interrupted (${demo.interruptedBy}); everything the demo made was torn down${demo.checks.find((c) => c.id === "teardown")?.ok ? "" : " — see above for what was left"}`);
  else if (error) o.line(`${o.mark(false)} the demo did not run to the end (see the error above)`);
  else if (allOk) o.line(`${o.mark(true)} all ${demo.checks.length} checks passed`);
  else o.line(`${o.mark(false)} ${demo.checks.filter((c) => !c.ok).length} of ${demo.checks.length} checks failed`);
  if (kept) {
    o.line("");
    o.line(o.bold("the demo is still running — explore it:"));
    for (const c of demo.explore) o.line(`  ${c}`);
    o.line("");
    o.line(o.bold("tear it down:"));
    o.line(`  ${displayPath(demo.bin.exe)} demo --down`);
  }
}

export function jsonSummary(demo: DemoRun, allOk: boolean, error: unknown, kept: boolean, teardown: TeardownOutcome | undefined): unknown {
  return {
    ok: allOk,
    kept,
    interrupted: demo.interruptedBy ?? null,
    error: error ? (error instanceof Error ? error.message : String(error)) : null,
    checks: demo.checks,
    node: demo.sim ? { netns: demo.sim.node.name, bridge: demo.sim.node.bridge, subnet: demo.sim.subnet, gateway: demo.sim.node.gateway } : null,
    nodes: demo.nodes.map((n) => ({ name: n.name, netns: n.ns.name, bridge: n.ns.bridge, subnet: n.sim.subnet, gateway: n.ns.gateway, dir: n.dir, fabricIp: demo.fabric?.links.find((l) => l.node === n.sim)?.nodeIp ?? null })),
    fabric: demo.fabric ? { netns: demo.fabric.ns.name, linkSubnet: demo.fabric.linkSubnet } : null,
    ...demo.facts,
    processes: (demo.record?.processes ?? []).map((p) => ({ role: p.role, node: p.node ?? null, pid: p.pid, netns: p.netns, log: p.log })),
    workDir: demo.record?.workDir ?? null,
    teardown: teardown ?? null,
    explore: kept ? demo.explore : [],
    down: kept ? `${displayPath(demo.bin.exe)} demo --down` : null,
  };
}

function chainOf(conflist: unknown): string {
  const plugins = (conflist as { plugins?: { type: string; ipam?: { type?: string } }[] })?.plugins ?? [];
  return ["loopback (lo)", ...plugins.map((p) => (p.ipam?.type ? `${p.type} + ${p.ipam.type}` : p.type))].join(" → ");
}
