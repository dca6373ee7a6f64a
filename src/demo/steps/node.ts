// Step 2: the virtual node (src/sim, prefix "nshd-"): a namespace with a bridge and no uplink, and
// a private CNI bin dir + conflist with nshub-cni (this binary) chained after loopback, bridge
// and host-local. Also the generated config the agent, the proxy and nshub-cni read, and a local
// CA (`nshub ca init` in the work dir) the proxy signs the pods' workload certificates with.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSim } from "../../sim/node.ts";
import { run } from "../../sim/process.ts";
import { createWorkDir, DEMO_PREFIX, displayPath, pidStart, writeRecord } from "../env.ts";
import { DemoError, TRUST_DOMAIN, type DemoRun } from "../run.ts";

export async function buildNode(demo: DemoRun): Promise<void> {
  demo.step(2, "building a virtual node in network namespaces");
  const workDir = await createWorkDir();
  demo.record = {
    version: 1,
    ownerPid: process.pid,
    ownerStart: pidStart(process.pid),
    kept: false,
    startedAt: new Date().toISOString(),
    workDir,
    exe: demo.bin.exe,
    pods: [],
    processes: [],
  };
  writeRecord(demo.record);
  // The proxy's certificate source: a CA of this demo alone, removed with the work dir.
  const ca = await run([demo.bin.exe, "ca", "init", "--dir", demo.path("ca"), "--trust-domain", TRUST_DOMAIN], { timeoutMs: 30_000 });
  if (ca.code !== 0) throw new DemoError(`nshub ca init failed: ${ca.stderr.trim() || ca.stdout.trim()}`);
  writeFileSync(demo.path("config.yaml"), configYaml(demo));
  const plugin = { agentSocket: demo.path("agent.sock"), logFile: demo.path("cni.log") };
  demo.sim = await createSim({
    prefix: DEMO_PREFIX,
    networkName: "nshub-demo",
    cleanStale: false,
    plugins: [{ type: "nshub-cni", binary: demo.bin.exe, config: plugin }],
    pluginEnv: { NSHUB_CONFIG: demo.path("config.yaml") },
  });
  Object.assign(demo.record, { tag: demo.sim.tag, nodeNetns: demo.sim.node.name, simTmpDir: demo.sim.tmpDir });
  writeRecord(demo.record);
  const s = demo.sim;
  demo.out.info(`node      netns ${s.node.name}: bridge ${s.node.bridge}, pods' subnet ${s.subnet}, gateway ${s.node.gateway}; no uplink (nothing leaves it)`);
  demo.out.info(`CNI       loopback on lo, then bridge + host-local on eth0, then nshub-cni — chained last, as \`nshub install\` does on a node`);
  demo.out.info(`          nshub-cni = ${displayPath(demo.bin.exe)}, linked into the private CNI bin dir ${join(s.tmpDir, "bin")}`);
  demo.out.info(`CA        ${displayPath(demo.bin.exe)} ca init --dir ${demo.path("ca")}: a local CA for trust domain ${TRUST_DOMAIN}; the proxy signs`);
  demo.out.info(`          one certificate per pod identity with it (proxy.ca.source: local), key in memory only`);
  demo.out.info(`conflist  ${s.conflistPath}:`);
  demo.out.info(compactConflist(s.conflist as unknown as { plugins: Record<string, unknown>[] }), 16);
  demo.facts.conflistPath = s.conflistPath;
  demo.facts.conflist = s.conflist;
}

function configYaml(demo: DemoRun): string {
  const q = (s: string) => JSON.stringify(s);
  return [
    "# nshub demo: agent, proxy and nshub-cni configuration (generated; removed on teardown)",
    "logLevel: info",
    "agent:",
    `  zdsSocket: ${q(demo.path("zds.sock"))}`,
    `  apiSocket: ${q(demo.path("agent.sock"))}`,
    `  stateFile: ${q(demo.path("agent-state.json"))}`,
    `  adminAddress: "127.0.0.1:15010"`,
    "  enrollment:",
    "    namespaces:",
    '      include: ["demo"]',
    "proxy:",
    `  zdsSocket: ${q(demo.path("zds.sock"))}`,
    `  adminAddress: "127.0.0.1:15000"`,
    `  adminSocket: ${q(demo.path("proxy-admin.sock"))}`,
    `  metricsAddress: "0.0.0.0:15020"`,
    `  readinessAddress: "0.0.0.0:15021"`,
    "  drainDeadlineMs: 1000",
    "  ca:",
    "    source: local",
    `    localDir: ${q(demo.path("ca"))}`,
    `    trustDomain: ${TRUST_DOMAIN}`,
    "cni:",
    `  agentSocket: ${q(demo.path("agent.sock"))}`,
    `  logFile: ${q(demo.path("cni.log"))}`,
    "",
  ].join("\n");
}

/** The conflist as a short JSON block: one line per plugin. */
function compactConflist(list: { plugins: Record<string, unknown>[] } & Record<string, unknown>): string {
  const head = Object.fromEntries(Object.entries(list).filter(([k]) => k !== "plugins"));
  const lines = [`${JSON.stringify(head).slice(0, -1)}, "plugins": [`];
  list.plugins.forEach((p, i) => lines.push(`  ${JSON.stringify(p)}${i < list.plugins.length - 1 ? "," : ""}`));
  lines.push("]}");
  return lines.join("\n");
}
