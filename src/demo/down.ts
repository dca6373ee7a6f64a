// `nshub demo --down`: removes a demo left running with --keep (or what a crashed one left),
// from any later process, using only its recorded state and netsim's owner markers.
import { listNetns } from "../sim/namespace.ts";
import { cleanupStale } from "../sim/stale.ts";
import { DEMO_PREFIX } from "./env.ts";
import { readRecords, recordedNodes, recordStatus, teardownRecord } from "./state.ts";
import { plural, type Printer } from "./printer.ts";

export async function down(out: Printer, json: boolean): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("nshub demo --down: needs root (it removes network namespaces)");
    return 1;
  }
  const removed: { node: string | undefined; nodes: string; namespaces: string[]; processes: number; errors: string[] }[] = [];
  const skipped: string[] = [];
  for (const rec of await readRecords()) {
    const status = recordStatus(rec);
    if (status === "running") {
      skipped.push(`a demo is running in process ${rec.ownerPid} (nodes ${recordedNodes(rec)}): it tears itself down when it ends; stop it with Ctrl-C`);
      continue;
    }
    out.line(`tearing down the ${status === "kept" ? "demo left running with --keep" : "leftovers of an interrupted demo"} (nodes ${recordedNodes(rec)}) …`);
    const r = await teardownRecord(rec);
    removed.push({ node: rec.nodeNetns, nodes: recordedNodes(rec), ...r });
    out.line(`  stopped ${plural(r.processes, "process", "processes")}, removed ${plural(r.namespaces.length, "namespace")}${r.namespaces.length ? ` (${r.namespaces.join(", ")})` : ""} and ${rec.workDir}`);
    for (const e of r.errors) out.line(`  ${out.mark(false)} ${e}`);
  }
  // Namespaces whose demo left no state file (its owner is gone): netsim's marker tells.
  const stale = await cleanupStale(DEMO_PREFIX, 0);
  if (stale.length) out.line(`removed leftover namespaces: ${stale.join(", ")}`);
  for (const s of skipped) out.line(s);
  const errors = removed.flatMap((r) => r.errors);
  const left = (await listNetns()).filter((n) => n.startsWith(DEMO_PREFIX));
  if (removed.length === 0 && stale.length === 0 && skipped.length === 0) out.line("nothing to tear down: no demo is running");
  else if (errors.length === 0) out.line(`${out.mark(true)} done${left.length ? ` (still present, owned by a running demo: ${left.join(", ")})` : ""}`);
  if (json) process.stdout.write(JSON.stringify({ ok: errors.length === 0, removed, staleNamespaces: stale, skipped, left }, null, 2) + "\n");
  return errors.length === 0 ? 0 : 1;
}
