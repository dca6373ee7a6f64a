// Step 1: the machine has what the demo needs, and no earlier demo is in the way.
import { run } from "../../sim/process.ts";
import { cleanupStale } from "../../sim/stale.ts";
import { DEMO_PREFIX, displayPath, missingPrerequisites, missingText } from "../env.ts";
import { readRecords, recordedNodes, recordStatus, teardownRecord } from "../state.ts";
import { plural } from "../printer.ts";
import { DemoError, type DemoRun } from "../run.ts";

export async function checkPrerequisites(demo: DemoRun): Promise<void> {
  demo.step(1, "checking prerequisites");
  const missing = missingPrerequisites(demo.bin);
  if (missing.length) throw new DemoError(`this machine lacks what the demo needs:\n${missingText(missing)}`);
  if (demo.bin.fromSource) {
    demo.out.info(`running from source: the agent, the proxy, the CNI plugin and the web server are ${displayPath(demo.bin.exe)}`);
    const r = await run([demo.bin.exe, "demo", "--help"], { timeoutMs: 20_000 });
    if (r.code !== 0) throw new DemoError(`${displayPath(demo.bin.exe)} was built before nshub demo existed: rebuild it with scripts/build`);
  }
  // Demos from earlier runs: remove what an interrupted one left; refuse to wipe a kept one.
  for (const rec of await readRecords()) {
    const status = recordStatus(rec);
    if (status === "running") {
      demo.out.info(`another demo is running (pid ${rec.ownerPid}, nodes ${recordedNodes(rec)}); this one runs next to it`);
    } else if (status === "kept") {
      throw new DemoError(
        `a demo left running with --keep is still there (nodes ${recordedNodes(rec)}, started ${rec.startedAt}).\n` +
          `tear it down first:  ${displayPath(demo.bin.exe)} demo --down`,
      );
    } else {
      const r = await teardownRecord(rec);
      demo.out.info(`removed the leftovers of an interrupted demo (${plural(r.namespaces.length, "namespace")}, ${plural(r.processes, "process", "processes")})`);
    }
  }
  const stale = await cleanupStale(DEMO_PREFIX);
  if (stale.length) demo.out.info(`removed ${stale.length} leftover namespaces of an earlier demo: ${stale.join(", ")}`);
  demo.out.info("root; ip, ss, iptables, ipset, nsenter, socat, curl, iperf3, tcpdump; CNI plugins loopback, bridge, host-local in /usr/lib/cni: all present");
}
