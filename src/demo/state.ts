// The state file of a demo and the teardown of a recorded demo, from any process: `nshub demo
// --down` (a new process) finds a demo kept with --keep through it, and a new demo removes what an
// interrupted one left.
//
// Layout: every demo has a work dir /run/nshub-demo/demo-XXXXXX/ holding `demo.json` (this
// module's DemoRecord), the shared CA, and one dir per node (node-1/, node-2/: config, sockets,
// agent state, logs). Its namespaces come from src/sim with the prefix "nshd-": one netsim tag
// per node and one for the fabric between them (nshd-<6 hex> each).
import { readFileSync, readdirSync, writeFileSync, renameSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, rmdir } from "node:fs/promises";
import { join } from "node:path";
import { listNetns } from "../sim/namespace.ts";
import { run, type ExecResult } from "../sim/process.ts";
import { MARKER_DIR } from "../sim/stale.ts";
import { alive, DEMO_ROOT, STATE_FILE_NAME, stopProcesses, type RecordedProcess } from "./env.ts";

/** One netsim instance of a demo: a node or the fabric. */
export interface RecordedNet {
  /** "node-1", "node-2" or "fabric". */
  what: string;
  /** netsim tag: the prefix of its namespaces, temp dir and owner marker. */
  tag: string;
  /** Its main namespace (`<tag>-node`, `<tag>-fab`). */
  netns: string;
  tmpDir: string;
}

export interface DemoRecord {
  version: 1;
  /** The `nshub demo` process that created it, and its start time. */
  ownerPid: number;
  ownerStart: string | null;
  /** Left running on purpose (--keep): only `nshub demo --down` removes it. */
  kept: boolean;
  startedAt: string;
  workDir: string;
  exe: string;
  /** Node 1's netns (for messages); set once it exists. */
  nodeNetns?: string;
  /** Every node and the fabric, each recorded as soon as it exists. */
  nets?: RecordedNet[];
  /** Written by demos before the second node: node 1's tag and temp dir. */
  tag?: string;
  simTmpDir?: string;
  pods: { node?: string; namespace: string; name: string; netns: string; ip: string; uid: string }[];
  processes: RecordedProcess[];
}

/** The record's netsim instances (an older record's single node too). */
export function recordedNets(rec: DemoRecord): RecordedNet[] {
  const nets = [...(rec.nets ?? [])];
  if (rec.tag && !nets.some((n) => n.tag === rec.tag)) nets.push({ what: "node", tag: rec.tag, netns: `${rec.tag}-node`, tmpDir: rec.simTmpDir ?? "" });
  return nets;
}

/** "nshd-1a2b3c-node, nshd-4d5e6f-node" (the nodes, for messages). */
export function recordedNodes(rec: DemoRecord): string {
  const nodes = recordedNets(rec).filter((n) => n.what !== "fabric").map((n) => n.netns);
  return nodes.length ? nodes.join(", ") : (rec.nodeNetns ?? "being built");
}

export async function createWorkDir(): Promise<string> {
  await mkdir(DEMO_ROOT, { recursive: true, mode: 0o755 });
  return mkdtemp(join(DEMO_ROOT, "demo-"));
}

/** Written atomically (temp file + rename): a reader never sees half a record. */
export function writeRecord(rec: DemoRecord): void {
  const path = join(rec.workDir, STATE_FILE_NAME);
  writeFileSync(`${path}.tmp`, JSON.stringify(rec, null, 2) + "\n");
  renameSync(`${path}.tmp`, path);
}

export async function readRecords(): Promise<DemoRecord[]> {
  let dirs: string[];
  try {
    dirs = await readdir(DEMO_ROOT);
  } catch {
    return [];
  }
  const out: DemoRecord[] = [];
  for (const d of dirs.sort()) {
    if (!/^demo-[A-Za-z0-9]+$/.test(d)) continue;
    try {
      const rec = JSON.parse(await readFile(join(DEMO_ROOT, d, STATE_FILE_NAME), "utf8")) as DemoRecord;
      if (rec.version === 1 && rec.workDir === join(DEMO_ROOT, d)) out.push(rec);
    } catch {
      // a dir without a readable record: its owner died before writing one; removeOrphanDirs
      out.push({ version: 1, ownerPid: 0, ownerStart: null, kept: false, startedAt: "", workDir: join(DEMO_ROOT, d), exe: "", pods: [], processes: [] });
    }
  }
  return out;
}

export type RecordStatus = "running" | "kept" | "crashed";

/** running: its demo process still runs it; kept: --keep, owner gone; crashed: owner gone without teardown. */
export function recordStatus(rec: DemoRecord): RecordStatus {
  if (rec.ownerPid > 0 && alive(rec.ownerPid, rec.ownerStart)) return "running";
  return rec.kept ? "kept" : "crashed";
}

// ---------------------------------------------------------------------------------------------
// teardown of a recorded demo (--down, and stale ones at start)

export interface TeardownReport {
  namespaces: string[];
  processes: number;
  errors: string[];
}

/** Namespaces of a netsim tag (a node and its pods, or the fabric). */
export async function tagNamespaces(tag: string): Promise<string[]> {
  return (await listNetns()).filter((n) => n.startsWith(`${tag}-`));
}

/** Removal order: pods first (their veths go with them), then the nodes, the fabric last. */
export function namespaceRank(name: string): number {
  return name.endsWith("-fab") ? 2 : name.endsWith("-node") ? 1 : 0;
}

/**
 * Removes everything a recorded demo made, without its NetSim or Fabric objects: the daemons,
 * the CA and the servers (SIGTERM, then SIGKILL), whatever else still runs in its namespaces,
 * the namespaces (pods first, which takes their veths along; then the nodes with their bridges
 * and rules; then the fabric), netsim's temp dirs and markers, and the work dir. Every step is
 * tried; errors are collected.
 */
export async function teardownRecord(rec: DemoRecord): Promise<TeardownReport> {
  const report: TeardownReport = { namespaces: [], processes: 0, errors: [] };
  const step = async (what: string, f: () => Promise<unknown>) => {
    try {
      await f();
    } catch (e) {
      report.errors.push(`${what}: ${(e as Error).message}`);
    }
  };
  // Servers and the CA first, then the proxies (they drain), then the agents.
  const order = (r: string) => (r.startsWith("agent") ? 2 : r.startsWith("proxy") ? 1 : 0);
  for (const rank of [0, 1, 2]) {
    const group = rec.processes.filter((p) => order(p.role) === rank);
    report.processes += group.filter((p) => alive(p.pid, p.start)).length;
    await step("stopping processes", () => stopProcesses(group));
  }
  const nets = recordedNets(rec);
  const names: string[] = [];
  for (const n of nets) names.push(...(await tagNamespaces(n.tag)));
  names.sort((a, b) => namespaceRank(a) - namespaceRank(b));
  for (const name of names) {
    await step(`removing netns ${name}`, async () => {
      await deleteNetnsHard(name);
      report.namespaces.push(name);
    });
  }
  for (const n of nets) {
    if (n.tmpDir && n.tmpDir.includes(`nshub-netsim-${n.tag}-`)) await step(`removing ${n.what}'s temp dir`, () => rm(n.tmpDir, { recursive: true, force: true }));
    await step("removing the netsim marker", () => rm(join(MARKER_DIR, `${n.tag}.json`), { force: true }));
  }
  if (rec.workDir.startsWith(`${DEMO_ROOT}/demo-`)) await step("removing the work dir", () => rm(rec.workDir, { recursive: true, force: true }));
  await rmdir(DEMO_ROOT).catch(() => undefined); // only when empty
  return report;
}

/** Kills what still runs in a namespace, then deletes it (a missing one is fine). */
export async function deleteNetnsHard(name: string): Promise<void> {
  if (!(await listNetns()).includes(name)) return;
  const pids = (await run(["ip", "netns", "pids", name])).stdout
    .split("\n")
    .map((l) => Number(l.trim()))
    .filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid);
  await stopProcesses(pids.map((pid) => ({ pid, start: null })), 1000);
  const r: ExecResult = await run(["ip", "netns", "del", name]);
  if (r.code !== 0 && (await listNetns()).includes(name)) throw new Error(`ip netns del ${name}: ${r.stderr.trim()}`);
}

/** Processes whose command line mentions `needle` (e.g. a demo's work dir), except this one. */
export function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmd.includes(needle) && alive(Number(d), null)) out.push(Number(d));
    } catch {
      // gone
    }
  }
  return out;
}
