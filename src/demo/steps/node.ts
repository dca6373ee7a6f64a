// Step 2: two virtual nodes (src/sim, prefix "nshd-"), each a namespace with a bridge and its own
// pod subnet, and a private CNI bin dir + conflist with nshub-cni (this binary) chained after
// loopback, bridge and host-local; joined by a routed fabric namespace (src/sim/fabric.ts: a flat
// pod network without NAT, as Kubernetes has, and where the demo captures "the wire"). Also each
// node's generated config (agent, proxy, nshub-cni) and the demo's CA (`nshub ca init`), which
// step 3 serves to both nodes.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createFabric } from "../../sim/fabric.ts";
import { randomSubnet, subnetsOverlap } from "../../sim/ipv4.ts";
import { createSim } from "../../sim/node.ts";
import { run } from "../../sim/process.ts";
import { DEMO_PREFIX, displayPath, pidStart } from "../env.ts";
import { DemoError, DemoNode, TRUST_DOMAIN, type DemoRun } from "../run.ts";
import { createWorkDir, writeRecord } from "../state.ts";

export const NODE_NAMES = ["node-1", "node-2"] as const;

export async function buildNodes(demo: DemoRun): Promise<void> {
  demo.step(2, "building two virtual nodes in network namespaces, joined by a fabric");
  const workDir = await createWorkDir();
  demo.record = { version: 1, ownerPid: process.pid, ownerStart: pidStart(process.pid), kept: false, startedAt: new Date().toISOString(), workDir, exe: demo.bin.exe, nets: [], pods: [], processes: [] };
  writeRecord(demo.record);
  // One trust root for both nodes: a CA of this demo alone, removed with the work dir.
  const ca = await run([demo.bin.exe, "ca", "init", "--dir", demo.path("ca"), "--trust-domain", TRUST_DOMAIN], { timeoutMs: 30_000 });
  if (ca.code !== 0) throw new DemoError(`nshub ca init failed: ${ca.stderr.trim() || ca.stdout.trim()}`);

  for (const name of NODE_NAMES) {
    demo.checkInterrupted();
    const dir = demo.path(name);
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(join(dir, "workloads.yaml"), "workloads: []\n");
    writeFileSync(join(dir, "config.yaml"), configYaml(dir));
    let subnet = randomSubnet();
    while (demo.nodes.some((n) => subnetsOverlap(n.sim.subnet, subnet))) subnet = randomSubnet();
    const sim = await createSim({
      prefix: DEMO_PREFIX,
      subnet,
      networkName: "nshub-demo",
      cleanStale: false,
      plugins: [{ type: "nshub-cni", binary: demo.bin.exe, config: { agentSocket: join(dir, "agent.sock"), logFile: join(dir, "cni.log") } }],
      pluginEnv: { NSHUB_CONFIG: join(dir, "config.yaml") },
    });
    demo.nodes.push(new DemoNode(name, sim, dir));
    demo.record.nets!.push({ what: name, tag: sim.tag, netns: sim.node.name, tmpDir: sim.tmpDir });
    demo.record.nodeNetns ??= sim.node.name;
    writeRecord(demo.record);
  }
  demo.checkInterrupted();
  const fabric = (demo.fabric = await createFabric(demo.nodes.map((n) => n.sim), { prefix: DEMO_PREFIX, cleanStale: false }));
  demo.record.nets!.push({ what: "fabric", tag: fabric.tag, netns: fabric.ns.name, tmpDir: fabric.tmpDir });
  writeRecord(demo.record);
  // Each node also reaches the other's own address (its end of the fabric link): node 2's proxy
  // asks the CA on node 1 for certificates from node 2's namespace, and the answer must find
  // its way back. `replace`: the fabric may have added this route already.
  for (const l of fabric.links) {
    const r = await run(["ip", "-n", l.node.node.name, "route", "replace", fabric.linkSubnet, "via", l.fabricIp, "dev", l.nodeIfname]);
    if (r.code !== 0) throw new DemoError(`route to the fabric's links in ${l.node.node.name}: ${r.stderr.trim()}`);
  }

  for (const n of demo.nodes) {
    const s = n.sim;
    const link = fabric.link(s);
    demo.out.info(`${n.name}    netns ${s.node.name}: bridge ${s.node.bridge}, pods' subnet ${s.subnet}, gateway ${s.node.gateway}; link to the fabric ${link.nodeIp}`);
  }
  demo.out.info(`fabric    netns ${fabric.ns.name}: a router between the nodes (links ${fabric.linkSubnet}), no NAT, no uplink: nothing leaves`);
  demo.out.info(`          the namespaces; each node routes the other's pod subnet through it`);
  demo.out.info(`CNI       on each node: loopback on lo, then bridge + host-local on eth0, then nshub-cni — chained last, as \`nshub install\` does`);
  demo.out.info(`          nshub-cni = ${displayPath(demo.bin.exe)}, linked into each node's private CNI bin dir (${join(demo.n1.sim.tmpDir, "bin")}, …)`);
  demo.out.info(`CA        ${displayPath(demo.bin.exe)} ca init --dir ${demo.path("ca")}: one root for trust domain ${TRUST_DOMAIN}, shared by both nodes`);
  demo.out.info(`conflist  ${demo.n1.sim.conflistPath} (node-2's is the same but for its subnet):`);
  demo.out.info(compactConflist(demo.n1.sim.conflist as unknown as { plugins: Record<string, unknown>[] }), 16);
  demo.facts.conflistPath = demo.n1.sim.conflistPath;
  demo.facts.conflist = demo.n1.sim.conflist;
}

/** What the proxy needs to get its pods' certificates from the demo's CA (step 3). */
export interface CaClientConfig {
  address: string;
  rootCert: string;
  tokenFile: string;
}

/** A node's configuration for its agent, proxy and nshub-cni; the proxy's CA once step 3 knows it. */
export function configYaml(dir: string, ca?: CaClientConfig): string {
  const q = (s: string) => JSON.stringify(s);
  const p = (f: string) => q(join(dir, f));
  return [
    "# nshub demo: agent, proxy and nshub-cni configuration of this node (generated; removed on teardown)",
    "logLevel: info",
    "agent:",
    `  zdsSocket: ${p("zds.sock")}`,
    `  apiSocket: ${p("agent.sock")}`,
    `  stateFile: ${p("agent-state.json")}`,
    `  adminAddress: "127.0.0.1:15010"`,
    "  enrollment:",
    "    namespaces:",
    '      include: ["demo"]',
    "proxy:",
    `  zdsSocket: ${p("zds.sock")}`,
    `  adminAddress: "127.0.0.1:15000"`,
    `  adminSocket: ${p("proxy-admin.sock")}`,
    `  metricsAddress: "0.0.0.0:15020"`,
    `  readinessAddress: "0.0.0.0:15021"`,
    "  drainDeadlineMs: 1000",
    "  # the other node's pods (ztunnel's local-config format), written once they exist",
    `  workloadsFile: ${p("workloads.yaml")}`,
    ...(ca
      ? [
          "  ca:",
          "    source: istio",
          `    address: ${q(ca.address)}`,
          `    rootCert: ${q(ca.rootCert)}`,
          `    tokenFile: ${q(ca.tokenFile)}`,
          `    trustDomain: ${TRUST_DOMAIN}`,
        ]
      : []),
    "cni:",
    `  agentSocket: ${p("agent.sock")}`,
    `  logFile: ${p("cni.log")}`,
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
