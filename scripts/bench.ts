#!/usr/bin/env bun
// The nshub benchmark (issues 8 and 18). Run through `scripts/bench` (root), which installs the
// tools and builds dist/nshub first. Measures, in one run, interleaved, each repeated ≥ 3 times:
// direct, nshub and HAProxy (default, splice-auto, splice forced) between pods of one node, and
// (phase "mtls", scripts/bench-lib/mtls.ts) direct, nshub HBONE and an HAProxy TLS chain between
// two nodes joined by a fabric, plus HBONE on one node; then enrollment time, proxy resync and
// memory, idle HBONE streams; and writes docs/BENCHMARKS.md (see scripts/bench-lib/report.ts and
// mtls-report.ts for the page, docs/BENCHMARKS.md "Method").
//
// Network safety (docs/TESTING.md): everything runs inside namespaces this script creates
// (virtual nodes without uplink, their pods, the fabric joining two of them); every load is
// bounded; all of it is torn down in `finally` (and on SIGINT/SIGTERM). Nothing here asserts a
// timing.
//
//   usage: scripts/bench [--quick] [--reps N] [--out FILE] [--json FILE] [--no-profile] [--profile]
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { applyPodRules, detectIptablesBackend, removePodRules } from "../src/agent/rules/index.ts";
import { randomUUID } from "node:crypto";
import { createAgentClient } from "../src/agent/client.ts";
import { PodState } from "../src/gen/nshub/agent/v1/agent_pb.ts";
import { createSim, run, type NetSim, type Pod, type SimProcess } from "../src/sim/index.ts";
import { renderHaproxyConfig } from "./bench-lib/haproxy.ts";
import { applyHaproxyPodRules, haproxyCommand, haproxyMaxconn, startHaproxy, waitHaproxyPort } from "./bench-lib/haproxy-proc.ts";
import { parseShowInfo, pipesInfo } from "./bench-lib/haproxy-tls.ts";
import { MtlsBench } from "./bench-lib/mtls.ts";
import { profileMtls } from "./bench-lib/mtls-profile.ts";
import { mtlsTargets } from "./bench-lib/mtls-report.ts";
import { parseCniTimingLog, parseIperf3Json, parseSockperf, parseWrk } from "./bench-lib/parse.ts";
import { carryOverKept, checkTargets, derive, fmt, renderReport } from "./bench-lib/report.ts";
import { emptyPerPath, MTLS_PATHS, PATHS, PATH_LABEL, pushRun, RELAYS, type AnyPath, type BenchParams, type PathName, type BenchResults, type EnrollmentRun, type MtlsPath, type PathCheck, type ProcCpu, type RelayAbRun, type RelayKind } from "./bench-lib/results.ts";
import { rotate } from "./bench-lib/stats.ts";
import { cpuSeconds, cpuWithChildren, fdCount, machineCpu, machineInfo, sampleRssKiB, threadCount, threadCpuByName, threadCpuSample } from "./bench-lib/sys.ts";
import { profileProxy } from "./bench-lib/profile.ts";
import { analysis } from "./bench-lib/analysis.ts";

const REPO = resolve(import.meta.dir, "..");
const NSHUB = join(REPO, "dist/nshub");
const NSHUB_CNI = join(REPO, "dist/nshub-cni");
const BUN = process.execPath;
const TOOLS = join(import.meta.dir, "bench-lib/tools");
/** Benchmark clients run as nobody on every path (see the HAProxy rule difference). */
const NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
/**
 * Prefix that raises the fd limit of the processes holding many sockets (proxy, haproxy, idle
 * client/server) — when this machine lets us (raising the hard limit needs CAP_SYS_RESOURCE, which
 * containers often drop); otherwise empty, and the bench sizes the idle-connection measure to the
 * limit it has (see fdLimit).
 */
let MANY_FDS: string[] = [];
/** The fd limit the bench's processes will have (soft = hard after MANY_FDS). */
let fdLimit = 1024;
const WANT_FDS = 1_048_576;

function currentFdLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
  const n = (x: string | undefined) => (x === undefined || x === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(x));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

async function setupFdLimit(): Promise<void> {
  const r = await run(["prlimit", `--nofile=${WANT_FDS}:${WANT_FDS}`, "--", "true"]);
  if (r.code === 0) {
    MANY_FDS = ["prlimit", `--nofile=${WANT_FDS}:${WANT_FDS}`, "--"];
    fdLimit = WANT_FDS;
    return;
  }
  const { hard } = currentFdLimit();
  MANY_FDS = ["prlimit", `--nofile=${hard}:${hard}`, "--"];
  fdLimit = hard;
}
const ENROLLED_NS = "bench";
const PLAIN_NS = "plain";
const PORTS = { iperf: 5201, sockperf: 11111, http: 8080, idle: 9000 };
/** Length of each path's unmeasured iperf3 warm-up run before the measured ones. */
const WARMUP_SECONDS = 2;
const PROXY_ADMIN = "127.0.0.1:15000";
const PROXY_READY = "127.0.0.1:15021";

// ---------------------------------------------------------------------------------------------
// options

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    reps: { type: "string" },
    out: { type: "string" },
    json: { type: "string" },
    profile: { type: "boolean" },
    "no-profile": { type: "boolean", default: false },
    phases: { type: "string" },
    "wait-quiet": { type: "string" },
    "from-json": { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});
if (flags.help) {
  console.log(`usage: scripts/bench [--quick] [--reps N] [--out FILE] [--json FILE] [--profile | --no-profile]

  --quick        short runs and small counts (development); writes to a temp file unless --out
  --reps N       repetitions of each traffic measure per path (default 3, at least 3 for the page)
  --out FILE     markdown report (default docs/BENCHMARKS.md; quick: $TMPDIR/nshub-bench-quick.md)
  --json FILE    also write the raw results as JSON
  --profile      always profile the proxy under iperf3 (default: only when a traffic target is missed)
  --no-profile   never profile
  --wait-quiet S before starting, wait up to S seconds for the 1-minute load average to drop
                 below 1 (a shared machine; the wait is not part of the reported runtime)
  --from-json F  measure nothing: re-render the page from results saved with --json (after a
                 change to the page's text; the numbers stay those of that run)
  --phases LIST  only these phases (development): traffic,relay,enroll,scale,idle,mtls (default: all;
                 mtls = the two-node mTLS paths in the traffic loop and their idle streams);
                 a partial run is marked as such on the page`);
  process.exit(0);
}
const quick = flags.quick!;
const params: BenchParams = quick
  ? { reps: 3, tpSeconds: 3, latSeconds: 2, cpsSeconds: 2, wrkWarmupSeconds: 2, wrkConnections: 16, msgSize: 64, enrollSeq: 20, enrollConc: 10, scalePods: 60, idleConns: 2000 }
  : { reps: 3, tpSeconds: 10, latSeconds: 5, cpsSeconds: 5, wrkWarmupSeconds: 10, wrkConnections: 16, msgSize: 64, enrollSeq: 100, enrollConc: 50, scalePods: 500, idleConns: 10_000 };
if (flags.reps !== undefined) params.reps = Math.max(1, Number(flags.reps));
const PHASES = ["traffic", "relay", "enroll", "scale", "idle", "mtls"] as const;
const phases = new Set((flags.phases ?? PHASES.join(",")).split(",").map((x) => x.trim()));
for (const p of phases) if (!(PHASES as readonly string[]).includes(p)) throw new Error(`unknown phase ${p} (phases: ${PHASES.join(", ")})`);
const phase = (p: (typeof PHASES)[number]) => phases.has(p);
const outFile = flags.out ?? (quick ? join(tmpdir(), "nshub-bench-quick.md") : join(REPO, "docs/BENCHMARKS.md"));

// ---------------------------------------------------------------------------------------------
// logging

const t0 = performance.now();
function log(msg: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
  console.log(`[bench ${s}s] ${msg}`);
}

// ---------------------------------------------------------------------------------------------
// state shared with cleanup

let sim: NetSim | undefined;
/** The two-node mTLS comparison (phase "mtls"). */
let mtls: MtlsBench | undefined;
let workDir: string | undefined;
let cleaning: Promise<void> | undefined;
/** What was measured so far: written to a temp file when the run fails. */
let partial: BenchResults | undefined;
/** Time spent in --wait-quiet (not part of the run's duration). */
let waitedMs = 0;

async function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    if (mtls) {
      log("cleanup: the mTLS nodes and their fabric");
      await mtls.destroy();
    }
    if (sim) {
      log("cleanup: deleting pods and the virtual node");
      const s = sim;
      // Pods in parallel batches (netsim's destroy deletes them one by one).
      await inBatches([...s.pods], 16, (p) => s.deletePod(p).catch(() => undefined));
      await s.destroy().catch((e) => console.error(`cleanup: ${(e as Error).message}`));
    }
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

async function inBatches<T, R>(items: T[], width: number, fn: (x: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

// ---------------------------------------------------------------------------------------------
// helpers

/** /proc/loadavg's 1, 5 and 15 minute averages. */
function load1Text(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

function load1(): number {
  return Number(load1Text().split(" ")[0]);
}

/** A random 10.x.y.0/21 (room for the 500+ pods of the scale measure). */
function subnet21(): string {
  const a = 1 + Math.floor(Math.random() * 250);
  const b = Math.floor(Math.random() * 32) * 8;
  return `10.${a}.${b}.0/21`;
}

async function nodeHttp(path: string, addr = PROXY_ADMIN): Promise<{ status: number; body: string }> {
  const r = await sim!.node.exec(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", `http://${addr}${path}`], { timeoutMs: 15_000 });
  const i = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
}

/** The proxy's admin socket (writeConfig): POST /debug/gc is only served there. */
let proxyAdminSocket = "";

/** A full GC in every proxy thread (POST /debug/gc), so RSS samples hold live memory, not garbage. */
async function proxyGc(): Promise<void> {
  const r = await sim!.node.exec(["curl", "-s", "-m", "30", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", proxyAdminSocket, "http://localhost/debug/gc"], { timeoutMs: 35_000 });
  if (r.stdout.trim() !== "200") throw new Error(`POST /debug/gc on the proxy answered ${r.stdout.trim() || r.stderr.trim()}`);
}

/** The proxy process, or the two of a two-proxy path (their CPU is summed). */
type Pids = number | number[] | undefined;
const pidList = (pids: Pids): number[] => (pids === undefined ? [] : typeof pids === "number" ? [pids] : pids);

function cpuDelta(pids: Pids, before: ProcCpu | undefined): ProcCpu | undefined {
  const now = cpuNow(pids);
  if (now === undefined || before === undefined) return undefined;
  return { user: now.user - before.user, sys: now.sys - before.sys };
}

function cpuNow(pids: Pids): ProcCpu | undefined {
  const list = pidList(pids);
  if (list.length === 0) return undefined;
  try {
    return list.map(cpuSeconds).reduce((a, b) => ({ user: a.user + b.user, sys: a.sys + b.sys }));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// the nshub daemons

interface Daemons {
  config: string;
  agent: SimProcess;
  proxy: SimProcess;
  cniLog: string;
  timingLog: string;
}

function writeConfig(dir: string): { config: string; cniLog: string; agentSocket: string } {
  const agentSocket = join(dir, "run/agent.sock");
  const cniLog = join(dir, "cni.log");
  const config = join(dir, "config.yaml");
  proxyAdminSocket = join(dir, "run/proxy-admin.sock");
  writeFileSync(
    config,
    [
      "logLevel: info",
      "agent:",
      `  zdsSocket: ${join(dir, "run/zds.sock")}`,
      `  apiSocket: ${agentSocket}`,
      `  stateFile: ${join(dir, "state/agent-state.json")}`,
      "  adminAddress: 127.0.0.1:15010",
      "  enrollment:",
      "    namespaces:",
      `      include: ["${ENROLLED_NS}"]`,
      "proxy:",
      `  zdsSocket: ${join(dir, "run/zds.sock")}`,
      `  adminAddress: ${PROXY_ADMIN}`,
      `  adminSocket: ${proxyAdminSocket}`,
      "  metricsAddress: 127.0.0.1:15020",
      `  readinessAddress: ${PROXY_READY}`,
      "  drainDeadlineMs: 1000",
      "cni:",
      `  agentSocket: ${agentSocket}`,
      `  logFile: ${cniLog}`,
      "",
    ].join("\n"),
  );
  return { config, cniLog, agentSocket };
}

/** The chained plugin entry: a bash wrapper timing each run of dist/nshub-cni (see the report's Method). */
function writeTimingWrapper(dir: string): { wrapper: string; timingLog: string } {
  const wrapper = join(dir, "nshub-cni-timed");
  const timingLog = join(dir, "cni-timing.log");
  writeFileSync(
    wrapper,
    [
      "#!/bin/bash",
      "# scripts/bench: times one run of nshub-cni (exec to exit) and passes stdin/stdout/exit code through.",
      "LC_ALL=C",
      "t0=$EPOCHREALTIME",
      `${JSON.stringify(NSHUB_CNI)} "$@"`,
      "rc=$?",
      "t1=$EPOCHREALTIME",
      `printf '%s %s %s %s %s\\n' "$CNI_COMMAND" "$t0" "$t1" "$rc" "\${CNI_CONTAINERID:--}" >> ${JSON.stringify(timingLog)}`,
      "exit $rc",
      "",
    ].join("\n"),
  );
  chmodSync(wrapper, 0o755);
  writeFileSync(timingLog, "");
  return { wrapper, timingLog };
}

/** The bench's environment without a log-format override: the daemons pick their default. */
function daemonEnv(): Record<string, string | undefined> {
  const { NSHUB_LOG_FORMAT: _format, ...env } = process.env;
  return env;
}

function spawnProxy(config: string, extraEnv: Record<string, string> = {}): SimProcess {
  // Default log format (JSON lines when stderr is not a terminal), as a DaemonSet runs it: the
  // text format costs more per access-log line.
  return sim!.node.spawn([...MANY_FDS, NSHUB, "proxy", "--config", config], { env: { ...daemonEnv(), ...extraEnv } });
}

/** Spawns the proxy and measures spawn → /healthz/ready 200 with a poller started beforehand. */
async function startProxyTimed(config: string, extraEnv: Record<string, string> = {}): Promise<{ proxy: SimProcess; readyMs: number; spawnedAt: number }> {
  const poller = sim!.node.spawn([BUN, join(TOOLS, "wait-ready.ts"), `http://${PROXY_READY}/healthz/ready`, "60000", "5"]);
  await poller.waitForOutput(/polling/, 20_000);
  await Bun.sleep(200); // let the poller settle into its loop
  const spawnedAt = Date.now();
  const proxy = spawnProxy(config, extraEnv);
  const m = await poller.waitForOutput(/ready (\d+)|timeout/, 65_000);
  if (!m[1]) throw new Error(`proxy did not become ready within 60 s; stderr: ${proxy.stderr().slice(-2000)}`);
  await poller.stop();
  return { proxy, readyMs: Number(m[1]) - spawnedAt, spawnedAt };
}

/** The JSON objects among `text`'s lines (the daemons' and the plugin's logs); other lines are skipped. */
function* jsonLines(text: string): Generator<Record<string, unknown>> {
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      yield JSON.parse(line) as Record<string, unknown>;
    } catch {
      // not a JSON line
    }
  }
}

/**
 * The time of the last log line whose message matches `msg` (and scope, when given). The
 * daemons run with their default log format here, JSON lines, as under a container runtime.
 */
function logTimeMs(text: string, msg: RegExp, scope?: string): number | undefined {
  let last: number | undefined;
  for (const l of jsonLines(text)) {
    if (typeof l.msg !== "string" || !msg.test(l.msg) || (scope !== undefined && l.scope !== scope)) continue;
    const t = Date.parse(String(l.time));
    if (Number.isFinite(t)) last = t;
  }
  return last;
}

// ---------------------------------------------------------------------------------------------
// pods, servers, HAProxy

interface Pair {
  path: AnyPath;
  a: Pod;
  b: Pod;
}

async function startServers(b: Pod): Promise<void> {
  b.spawn(["iperf3", "-s", "-p", String(PORTS.iperf)]);
  b.spawn(["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", String(PORTS.sockperf)]);
  b.spawn([BUN, join(TOOLS, "http-server.ts"), String(PORTS.http)]);
  for (const port of [PORTS.iperf, PORTS.sockperf, PORTS.http]) await b.waitForTcpPort(port, { timeoutMs: 20_000 });
}

let iptablesCmd = "iptables";

async function redirectPackets(a: Pod): Promise<number | undefined> {
  const r = await a.exec([iptablesCmd, "-t", "nat", "-L", "NSHUB_OUTPUT", "-v", "-x", "-n"]);
  if (r.code !== 0) return undefined;
  const line = r.stdout.split("\n").find((l) => /REDIRECT/.test(l) && /redir ports 15001/.test(l));
  return line ? Number(line.trim().split(/\s+/)[0]) : undefined;
}

/** TcpExtListenDrops of a pod's netns (SYNs dropped because a listener's accept queue was full). */
async function listenDrops(p: Pod): Promise<number> {
  const r = await p.exec(["nstat", "-asz", "TcpExtListenDrops"]);
  const m = /TcpExtListenDrops\s+(\d+)/.exec(r.stdout);
  return m ? Number(m[1]) : NaN;
}

async function checkPath(pair: Pair): Promise<PathCheck> {
  const before = await redirectPackets(pair.a);
  const r = await pair.a.exec([...NOBODY, "curl", "-s", "-m", "5", `http://${pair.b.ip}:${PORTS.http}/peer`]);
  const after = await redirectPackets(pair.a);
  const peerSeen = r.stdout.trim() || `(curl exit ${r.code})`;
  const redirected = before !== undefined && after !== undefined ? after - before : undefined;
  let ok: boolean;
  let note: string;
  switch (pair.path) {
    case "direct":
      ok = peerSeen === pair.a.ip && redirected === undefined;
      note = "B sees A's address; no capture rules in A";
      break;
    case "nshub":
      ok = peerSeen === pair.a.ip && (redirected ?? 0) > 0;
      note = "captured in A, and B's server sees A's address (nshub preserves the source on inbound)";
      break;
    default: // haproxy and its splice variants
      ok = peerSeen === pair.b.ip && (redirected ?? 0) > 0;
      note = "captured in A, and B's server sees B's own address (HAProxy's upstream socket inside B)";
      break;
  }
  return { path: pair.path, peerSeen, redirectPackets: redirected, ok, note };
}

async function setupHaproxy(dir: string, pods: Pod[], splice?: "auto" | "always"): Promise<{ proc: SimProcess; rules: BenchResults["rules"] }> {
  let rules: BenchResults["rules"];
  for (const p of pods) rules = await applyHaproxyPodRules(p, iptablesCmd);
  // HAProxy needs about 2 fds per connection; the bench never has more than a few dozen at once.
  const name = `haproxy${splice ? `-splice-${splice}` : ""}`;
  const statsSocket = join(dir, `${name}.sock`);
  const config = renderHaproxyConfig({ pods: pods.map((p, i) => ({ netns: p.name, label: `pod${i}` })), maxconn: haproxyMaxconn(fdLimit, splice), splice, statsSocket });
  const proc = await startHaproxy(sim!.node, join(dir, `${name}.cfg`), config, MANY_FDS);
  for (const p of pods) {
    await waitHaproxyPort(proc, p, 15001);
    await waitHaproxyPort(proc, p, 15006);
  }
  return { proc, rules };
}

// ---------------------------------------------------------------------------------------------
// traffic measures

type Probe = () => Promise<Record<string, number | undefined> | undefined>;

async function runIperf(
  pair: Pair,
  streams: number,
  proxyPid: Pids,
  seconds = params.tpSeconds,
  probe?: Probe,
): Promise<{ iperf: ReturnType<typeof parseIperf3Json>; proxyCpu?: ProcCpu; wallSec: number; benchCpuSec: number; probe?: Record<string, number | undefined>; machineBusy: number }> {
  const before = cpuNow(proxyPid);
  const bench0 = process.cpuUsage();
  const m0 = machineCpu();
  const w0 = performance.now();
  const running = pair.a.exec([...NOBODY, "iperf3", "-c", pair.b.ip, "-p", String(PORTS.iperf), "-t", String(seconds), "-O", "1", "-P", String(streams), "-J"], {
    timeoutMs: (seconds + 30) * 1000,
  });
  const sampled = probe ? Bun.sleep(((seconds + 1) * 1000) / 2).then(probe).catch(() => undefined) : undefined;
  const r = await running;
  const wallSec = (performance.now() - w0) / 1000;
  const proxyCpu = cpuDelta(proxyPid, before);
  const m1 = machineCpu();
  const machineBusy = (m1.busySec - m0.busySec) / Math.max(m1.totalSec - m0.totalSec, 1e-9);
  return { iperf: parseIperf3Json(r.stdout), proxyCpu, wallSec, benchCpuSec: benchCpuSince(bench0), probe: await sampled, machineBusy };
}

async function runSockperf(pair: Pair): Promise<ReturnType<typeof parseSockperf>> {
  const r = await pair.a.exec(
    [...NOBODY, "sockperf", "ping-pong", "--tcp", "-i", pair.b.ip, "-p", String(PORTS.sockperf), "-t", String(params.latSeconds), "-m", String(params.msgSize), "--full-rtt"],
    { timeoutMs: (params.latSeconds + 30) * 1000 },
  );
  if (r.code !== 0) throw new Error(`sockperf exited ${r.code}: ${r.stdout.slice(-500)}${r.stderr.slice(-500)}`);
  return parseSockperf(r.stdout + r.stderr);
}

async function runWrk(
  pair: Pair,
  proxyPid: Pids,
  seconds = params.cpsSeconds,
  probe?: Probe,
): Promise<{ wrk: ReturnType<typeof parseWrk>; proxyCpu?: ProcCpu; proxyThreads?: Record<string, ProcCpu>; timeWaitA?: number; benchCpuSec: number; wallSec: number; probe?: Record<string, number | undefined> }> {
  const threads0 = typeof proxyPid === "number" ? threadCpuSample(proxyPid) : undefined;
  const before = cpuNow(proxyPid);
  const bench0 = process.cpuUsage();
  const w0 = performance.now();
  const running = pair.a.exec(
    [...NOBODY, "wrk", "-t1", `-c${params.wrkConnections}`, `-d${seconds}s`, "--timeout", "5s", "-H", "Connection: close", `http://${pair.b.ip}:${PORTS.http}/`],
    { timeoutMs: (seconds + 30) * 1000 },
  );
  // Half-way through: what the path's own counters say (TLS handshakes, pooled connections).
  const sampled = probe ? Bun.sleep((seconds * 1000) / 2).then(probe).catch(() => undefined) : undefined;
  const r = await running;
  const proxyCpu = cpuDelta(proxyPid, before);
  const proxyThreads = threads0 && typeof proxyPid === "number" ? threadCpuByName(threads0, threadCpuSample(proxyPid)) : undefined;
  const wallSec = (performance.now() - w0) / 1000;
  if (r.code !== 0) throw new Error(`wrk exited ${r.code}: ${r.stderr.slice(-500)}`);
  const tw = await pair.a.exec(["ss", "-Htan", "state", "time-wait"]);
  const timeWaitA = tw.code === 0 ? tw.stdout.split("\n").filter((l) => l.trim() !== "").length : undefined;
  return { wrk: parseWrk(r.stdout), proxyCpu, proxyThreads, timeWaitA, benchCpuSec: benchCpuSince(bench0), wallSec, probe: await sampled };
}

/** CPU seconds (user + system) this process used since `start` (a process.cpuUsage() value). */
function benchCpuSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// enrollment

async function enroll(label: string, n: number, concurrency: number, d: Daemons): Promise<{ run: EnrollmentRun; pods: Pod[] }> {
  const pods: Pod[] = [];
  const chainMs: number[] = [];
  const failures: string[] = [];
  const m0 = machineCpu();
  const a0 = cpuWithChildren(d.agent.pid);
  const p0 = cpuWithChildren(d.proxy.pid);
  const w0 = performance.now();
  await inBatches(
    Array.from({ length: n }, (_, i) => i),
    concurrency,
    async (i) => {
      const s = performance.now();
      try {
        const pod = await sim!.addPod({ name: `${label}-${i}`, namespace: ENROLLED_NS });
        chainMs.push(performance.now() - s);
        pods.push(pod);
      } catch (e) {
        failures.push((e as Error).message.split("\n")[0]!);
      }
    },
  );
  const wallMs = performance.now() - w0;
  const m1 = machineCpu();
  const cpu = { machineBusySec: m1.busySec - m0.busySec, machineTotalSec: m1.totalSec - m0.totalSec, agentSec: cpuWithChildren(d.agent.pid) - a0, proxySec: cpuWithChildren(d.proxy.pid) - p0 };
  const ids = new Map(pods.map((p) => [p.containerId, p]));
  const timings = parseCniTimingLog(readFileSync(d.timingLog, "utf8")).filter((t) => t.command === "ADD" && ids.has(t.containerId));
  const pluginMs = timings.filter((t) => t.exitCode === 0).map((t) => t.ms);
  // The plugin's own log: JSON lines {"msg":"ADD done","ms":…,"containerId":"<12 chars>"}.
  const shortIds = new Set(pods.map((p) => p.containerId.slice(0, 12)));
  const inPluginMs: number[] = [];
  for (const j of jsonLines(readFileSync(d.cniLog, "utf8"))) {
    if (j.msg === "ADD done" && typeof j.containerId === "string" && shortIds.has(j.containerId) && typeof j.ms === "number") inPluginMs.push(j.ms);
  }
  return { run: { pods: n, concurrency, pluginMs, inPluginMs, chainMs, wallMs, failures, cpu }, pods };
}

/**
 * Where a sequential ADD's time goes: the plugin process alone (CNI VERSION through the same
 * timing wrapper: exec, Bun start-up, exit; no agent call) and the agent's PodAdd as a warm client
 * sees it (policy, in-pod rules, ZDS AddWorkload with the netns fd, proxy bind and ack).
 */
async function enrollmentBreakdown(d: Daemons, wrapper: string, agentSocket: string, k: number): Promise<NonNullable<BenchResults["enrollment"]["breakdown"]>> {
  for (let i = 0; i < k; i++) {
    await sim!.node.exec([wrapper], { stdin: JSON.stringify({ cniVersion: "1.0.0", name: "bench", type: "nshub-cni" }), env: { ...process.env, CNI_COMMAND: "VERSION" } });
  }
  const startupMs = parseCniTimingLog(readFileSync(d.timingLog, "utf8"))
    .filter((t) => t.command === "VERSION" && t.exitCode === 0)
    .map((t) => t.ms);
  const client = createAgentClient({ socketPath: agentSocket, timeoutMs: 10_000 });
  const pods: Pod[] = [];
  for (let i = 0; i < k; i++) pods.push(await sim!.addPod({ name: `rpc-${i}`, namespace: "rpc" })); // not enrolled by the chain
  const rpcMs: number[] = [];
  const errors: string[] = [];
  for (const [i, pod] of pods.entries()) {
    const uid = randomUUID();
    const s = performance.now();
    try {
      const r = await client.podAdd({ uid, namespace: ENROLLED_NS, name: `rpc-${i}`, netnsPath: pod.netnsPath, ips: [pod.ip], containerId: `rpc${i}`.padEnd(64, "0"), interfaceName: "eth0" });
      rpcMs.push(performance.now() - s);
      if (r.state !== PodState.ENROLLED) errors.push(`PodAdd rpc-${i}: state ${r.state} ${r.reason}`);
    } catch (e) {
      errors.push(`PodAdd rpc-${i}: ${(e as Error).message}`);
    }
    await client.podDelete({ uid, namespace: ENROLLED_NS, name: `rpc-${i}`, containerId: `rpc${i}`.padEnd(64, "0"), netnsPath: pod.netnsPath }).catch((e) => errors.push(`PodDelete rpc-${i}: ${(e as Error).message}`));
  }
  // The in-pod rules alone (what the agent runs for each PodAdd), on the same pods, now clean again.
  const rulesMs: number[] = [];
  for (const pod of pods) {
    const s = performance.now();
    try {
      await applyPodRules(pod.netnsPath);
      rulesMs.push(performance.now() - s);
      await removePodRules(pod.netnsPath);
    } catch (e) {
      errors.push(`rules on ${pod.podName}: ${(e as Error).message}`);
    }
  }
  await inBatches(pods, 8, (p) => sim!.deletePod(p).catch(() => undefined));
  return { startupMs, rpcMs, rulesMs, errors };
}

// ---------------------------------------------------------------------------------------------
// main

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("scripts/bench needs root (network namespaces, iptables)");
    return 2;
  }
  if (flags["wait-quiet"] !== undefined) {
    const until = Date.now() + Number(flags["wait-quiet"]) * 1000;
    const w0 = performance.now();
    while (load1() >= 1 && Date.now() < until) {
      log(`waiting for a quiet machine: load average ${load1Text()}`);
      await Bun.sleep(15_000);
    }
    waitedMs = performance.now() - w0;
    log(`load average ${load1Text()}; starting`);
  }
  workDir = mkdtempSync(join(tmpdir(), "nshub-bench-"));
  // The binary measured: a rebuild during the run would give later-started processes other code.
  const binary0 = statSync(NSHUB);
  const newerSources = ["src", "zig", "proto"].flatMap((d) => {
    try {
      return (readdirSync(join(REPO, d), { recursive: true }) as string[]).map((f) => join(d, f)).filter((f) => statSync(join(REPO, f)).isFile() && statSync(join(REPO, f)).mtimeMs > binary0.mtimeMs);
    } catch {
      return [];
    }
  });
  const machine = await machineInfo(REPO, BUN);
  const loadStart = load1Text();
  const results: BenchResults = {
    mode: quick ? "quick" : "full",
    phases: phases.size === PHASES.length ? undefined : [...phases],
    startedAt: new Date().toISOString(),
    machine,
    params,
    nshubBinary: { builtAt: new Date(binary0.mtimeMs).toISOString(), newerSources: newerSources.sort() },
    checks: [],
    rules: undefined,
    throughput: { "1": emptyPerPath(), "4": emptyPerPath() },
    latency: emptyPerPath(),
    cps: emptyPerPath(),
    enrollment: {},
    errors: [],
  };
  partial = results;
  const notes: string[] = [];
  log(`${quick ? "quick" : "full"} run; ${machine.nproc} CPUs (${machine.cpuModel}), kernel ${machine.kernel}; report → ${outFile}`);

  await setupFdLimit();
  if (fdLimit < WANT_FDS) log(`fd limit: cannot raise RLIMIT_NOFILE above ${fdLimit} here (no CAP_SYS_RESOURCE); the idle-connection measure is sized to fit`);
  const backend = await detectIptablesBackend();
  iptablesCmd = backend === "nft" ? "iptables-nft" : "iptables-legacy";

  const { config, cniLog, agentSocket } = writeConfig(workDir);
  const { wrapper, timingLog } = writeTimingWrapper(workDir);
  sim = await createSim({
    prefix: "nbn-",
    subnet: subnet21(),
    plugins: [{ type: "nshub-cni", binary: wrapper, config: { agentSocket: join(workDir, "run/agent.sock"), logFile: cniLog } }],
  });
  log(`virtual node ${sim.node.name}, pods' subnet ${sim.subnet}`);

  // --- the nshub daemons; proxy RSS with no pod -------------------------------------------------
  const agent = sim.node.spawn([...MANY_FDS, NSHUB, "agent", "--config", config], { env: daemonEnv() });
  await agent.waitForOutput(/agent ready/, 30_000);
  let { proxy } = await startProxyTimed(config);
  const d: Daemons = { config, agent, proxy, cniLog, timingLog };
  await Bun.sleep(3000);
  await proxyGc();
  const memory: NonNullable<BenchResults["memory"]> = { rss0KiB: await sampleRssKiB(proxy.pid) };
  results.memory = memory;
  log(`proxy ready (pid ${proxy.pid}); RSS with no pod ${fmt(memory.rss0KiB! / 1024, 1)} MiB`);

  // --- the pod pairs of this node ----------------------------------------------------------------
  const pairs: Record<PathName | "haproxy-splice" | "haproxy-splice-always", Pair> = {
    direct: { path: "direct", a: await sim.addPod({ name: "direct-a", namespace: PLAIN_NS }), b: await sim.addPod({ name: "direct-b", namespace: PLAIN_NS }) },
    nshub: { path: "nshub", a: await sim.addPod({ name: "nshub-a", namespace: ENROLLED_NS }), b: await sim.addPod({ name: "nshub-b", namespace: ENROLLED_NS }) },
    haproxy: { path: "haproxy", a: await sim.addPod({ name: "haproxy-a", namespace: PLAIN_NS }), b: await sim.addPod({ name: "haproxy-b", namespace: PLAIN_NS }) },
    "haproxy-splice": { path: "haproxy-splice", a: await sim.addPod({ name: "hsplice-a", namespace: PLAIN_NS }), b: await sim.addPod({ name: "hsplice-b", namespace: PLAIN_NS }) },
    "haproxy-splice-always": { path: "haproxy-splice-always", a: await sim.addPod({ name: "hsplicef-a", namespace: PLAIN_NS }), b: await sim.addPod({ name: "hsplicef-b", namespace: PLAIN_NS }) },
  };
  // Pods keep the kernel's default sysctls (ephemeral ports 32768-60999: nshub's inbound takes its
  // transparent source ports below that range).
  for (const pr of Object.values(pairs)) await startServers(pr.b);
  await pairs.nshub.a.waitForTcpPort(15001);
  await pairs.nshub.b.waitForTcpPort(15006);
  const hap = await setupHaproxy(workDir, [pairs.haproxy.a, pairs.haproxy.b]);
  const hapSplice = await setupHaproxy(workDir, [pairs["haproxy-splice"].a, pairs["haproxy-splice"].b], "auto");
  const hapSpliceAlways = await setupHaproxy(workDir, [pairs["haproxy-splice-always"].a, pairs["haproxy-splice-always"].b], "always");
  results.rules = hap.rules;
  results.haproxyThreads = threadCount(hap.proc.pid);
  results.haproxySpliceThreads = threadCount(hapSplice.proc.pid);
  results.haproxySpliceAlwaysThreads = threadCount(hapSpliceAlways.proc.pid);
  results.proxyThreads = threadCount(proxy.pid);
  try {
    const pc = (JSON.parse((await nodeHttp("/config_dump")).body) as { config: { proxy: { workers: number; relay: RelayKind } } }).config.proxy;
    results.proxyWorkers = pc.workers;
    results.proxyRelay = pc.relay;
  } catch (e) {
    results.errors.push(`reading the proxy's threads and relay from /config_dump: ${(e as Error).message}`);
  }

  // --- the two-node mTLS comparison (issue 18) ----------------------------------------------------
  if (phase("mtls")) {
    const m = new MtlsBench({
      workDir,
      nshub: NSHUB,
      nshubCni: NSHUB_CNI,
      bun: BUN,
      tools: TOOLS,
      prefix: "nbn-",
      avoidSubnets: [sim.subnet],
      fdPrefix: MANY_FDS,
      nobody: NOBODY,
      fdLimit,
      iptablesCmd,
      env: daemonEnv(),
      ports: { http: PORTS.http, idle: PORTS.idle },
      startServers,
      log,
    });
    mtls = m;
    await m.setup();
    results.mtls = m.results;
  }
  const isMtls = (p: AnyPath): p is MtlsPath => (MTLS_PATHS as readonly AnyPath[]).includes(p);
  const pairOf = (p: AnyPath): Pair => (isMtls(p) ? { path: p, ...mtls!.pairs[p] } : pairs[p as keyof typeof pairs]);
  // A function: the nshub proxy is restarted by later phases.
  const proxyPidOf = (p: AnyPath): number | number[] | undefined =>
    isMtls(p) ? mtls!.pids(p) : p === "nshub" ? proxy.pid : p === "haproxy" ? hap.proc.pid : p === "haproxy-splice" ? hapSplice.proc.pid : p === "haproxy-splice-always" ? hapSpliceAlways.proc.pid : undefined;
  const probeOf = (p: AnyPath) => (isMtls(p) ? () => mtls!.probe(p) : undefined);
  // Whether splice-auto really splices: HAProxy's pipes in use half-way through each transfer.
  const iperfProbeOf = (p: AnyPath): Probe | undefined =>
    p === "haproxy-splice" || p === "haproxy-splice-always"
      ? async () => pipesInfo(parseShowInfo(await haproxyCommand(join(workDir!, `haproxy-splice-${p === "haproxy-splice" ? "auto" : "always"}.sock`), "show info")))
      : undefined;
  const onePaths = [...PATHS, "haproxy-splice", "haproxy-splice-always"] as const;
  const allPaths: AnyPath[] = [...onePaths, ...(mtls ? MTLS_PATHS : [])];

  for (const p of onePaths) {
    const c = await checkPath(pairs[p]);
    results.checks.push(c);
  }
  if (mtls) results.checks.push(...(await mtls.checks()));
  for (const c of results.checks) {
    log(`path check ${c.path}: ${c.ok ? "ok" : "FAILED"} (peer ${c.peerSeen}, redirected ${c.redirectPackets ?? "-"}${c.wire ? `; wire: ${c.wire}` : ""}${c.security ? `; ${c.security}` : ""})`);
    if (!c.ok) results.errors.push(`path check failed for ${c.path}: ${c.note}; peer seen ${c.peerSeen}, redirect packets ${c.redirectPackets}${c.wire ? `, wire: ${c.wire}` : ""}${c.security ? `, ${c.security}` : ""}`);
  }
  if (results.checks.some((c) => !c.ok)) throw new Error("a path does not behave as intended; refusing to measure it");

  // --- traffic, interleaved -----------------------------------------------------------------------
  // One short unmeasured pass per path first: nshub's JavaScript is compiled on its first
  // connections (JIT), and every path gets the same warm-up so none starts cold.
  if (phase("traffic")) {
    for (const p of allPaths) {
      try {
        await runIperf(pairOf(p), 1, proxyPidOf(p), WARMUP_SECONDS);
        await runWrk(pairOf(p), proxyPidOf(p), params.wrkWarmupSeconds!);
      } catch (e) {
        results.errors.push(`warm-up ${p}: ${(e as Error).message}`);
      }
      await Bun.sleep(1000);
    }
    log(`warm-up: each path ${WARMUP_SECONDS} s of iperf3 and ${params.wrkWarmupSeconds!} s of wrk, not measured`);
  }
  for (let rep = 1; rep <= (phase("traffic") ? params.reps : 0); rep++) {
    const order = rotate(allPaths, rep - 1);
    for (const streams of [1, 4] as const) {
      for (const p of order) {
        try {
          const l = load1();
          const r = await runIperf(pairOf(p), streams, proxyPidOf(p), params.tpSeconds, iperfProbeOf(p));
          pushRun(results.throughput[String(streams) as "1" | "4"], p, { rep, load1: l, ...r });
          log(`rep ${rep} iperf3 -P ${streams} ${PATH_LABEL[p]}: ${fmt(r.iperf.bitsPerSecond / 1e9, 2)} Gb/s${r.proxyCpu ? ` (proxy CPU ${fmt(r.proxyCpu.user, 1)}u+${fmt(r.proxyCpu.sys, 1)}s)` : ""}`);
        } catch (e) {
          results.errors.push(`rep ${rep} iperf3 -P ${streams} ${p}: ${(e as Error).message}`);
          log(`rep ${rep} iperf3 -P ${streams} ${p}: ERROR ${(e as Error).message}`);
        }
        await Bun.sleep(500);
      }
    }
    for (const p of order) {
      try {
        const l = load1();
        const s = await runSockperf(pairOf(p));
        pushRun(results.latency, p, { rep, load1: l, sockperf: s });
        log(`rep ${rep} sockperf ${PATH_LABEL[p]}: p50 ${fmt(s.p50Us, 1)} p99 ${fmt(s.p99Us, 1)} p99.9 ${fmt(s.p999Us, 1)} µs (${s.observations} obs)`);
      } catch (e) {
        results.errors.push(`rep ${rep} sockperf ${p}: ${(e as Error).message}`);
        log(`rep ${rep} sockperf ${p}: ERROR ${(e as Error).message}`);
      }
      await Bun.sleep(300);
    }
    for (const p of order) {
      try {
        const l = load1();
        const w = await runWrk(pairOf(p), proxyPidOf(p), params.cpsSeconds, probeOf(p));
        pushRun(results.cps, p, { rep, load1: l, ...w });
        const e = w.wrk.errors;
        log(`rep ${rep} wrk ${PATH_LABEL[p]}: ${fmt(w.wrk.requestsPerSecond, 0)} conn/s (errors c${e.connect} r${e.read} w${e.write} t${e.timeout}, non2xx ${w.wrk.non2xx3xx})`);
      } catch (e) {
        results.errors.push(`rep ${rep} wrk ${p}: ${(e as Error).message}`);
        log(`rep ${rep} wrk ${p}: ERROR ${(e as Error).message}`);
      }
      // TIME_WAIT from the previous path's run must not disturb the next one.
      await Bun.sleep(1000);
    }
  }

  // --- the two relays, same run: the proxy restarted with each ------------------------------------
  if (phase("relay")) {
    const seconds = Math.min(params.tpSeconds, 5);
    const restart = async (relay: RelayKind | undefined) => {
      await proxy.stop(15_000);
      proxy = (await startProxyTimed(config, relay ? { NSHUB_PROXY_RELAY: relay } : {})).proxy;
      d.proxy = proxy;
      await pairs.nshub.a.waitForTcpPort(15001);
      await pairs.nshub.b.waitForTcpPort(15006);
      await Bun.sleep(500);
    };
    const ab: RelayAbRun[] = [];
    results.relayAB = ab;
    for (let rep = 1; rep <= params.reps; rep++) {
      for (const relay of rotate(RELAYS, rep - 1)) {
        try {
          await restart(relay);
          const pair = pairs.nshub;
          await runWrk(pair, proxy.pid, params.wrkWarmupSeconds!); // the restarted proxy's warm-up
          await Bun.sleep(1000);
          const l = load1();
          const tp1 = await runIperf(pair, 1, proxy.pid, seconds);
          await Bun.sleep(300);
          const tp4 = await runIperf(pair, 4, proxy.pid, seconds);
          await Bun.sleep(300);
          const latency = await runSockperf(pair);
          await Bun.sleep(300);
          const cps = await runWrk(pair, proxy.pid);
          ab.push({ rep, relay, load1: l, seconds, tp1: { rep, ...tp1 }, tp4: { rep, ...tp4 }, latency, cps });
          log(`rep ${rep} relay ${relay}: ${fmt(tp1.iperf.bitsPerSecond / 1e9, 2)} / ${fmt(tp4.iperf.bitsPerSecond / 1e9, 2)} Gb/s, p50 ${fmt(latency.p50Us, 1)} µs, ${fmt(cps.wrk.requestsPerSecond, 0)} conn/s`);
        } catch (e) {
          results.errors.push(`rep ${rep} relay ${relay}: ${(e as Error).message}`);
          log(`rep ${rep} relay ${relay}: ERROR ${(e as Error).message}`);
        }
        await Bun.sleep(1000);
      }
    }
    await restart(undefined); // the configured relay again for the phases below
  }

  // --- enrollment -----------------------------------------------------------------------------------
  if (phase("enroll")) {
    const seq = await enroll("enroll-seq", params.enrollSeq, 1, d);
    results.enrollment.sequential = seq.run;
    log(`enrollment, ${params.enrollSeq} sequential: ${seq.run.pluginMs.length} timed, ${seq.run.failures.length} failed, wall ${fmt(seq.run.wallMs / 1000, 1)} s`);
    const conc = await enroll("enroll-conc", params.enrollConc, params.enrollConc, d);
    results.enrollment.concurrent = conc.run;
    log(`enrollment, ${params.enrollConc} concurrent: ${conc.run.pluginMs.length} timed, ${conc.run.failures.length} failed, wall ${fmt(conc.run.wallMs / 1000, 1)} s`);
    for (const f of [...seq.run.failures, ...conc.run.failures].slice(0, 5)) results.errors.push(`enrollment: ${f}`);
    try {
      results.enrollment.breakdown = await enrollmentBreakdown(d, wrapper, agentSocket, quick ? 5 : 10);
      for (const e of results.enrollment.breakdown.errors.slice(0, 3)) results.errors.push(`enrollment breakdown: ${e}`);
    } catch (e) {
      results.errors.push(`enrollment breakdown: ${(e as Error).message}`);
    }
    const dt = performance.now();
    await inBatches([...seq.pods, ...conc.pods], 16, (p) => sim!.deletePod(p).catch((e) => results.errors.push(`delete ${p.podName}: ${(e as Error).message}`)));
    log(`deleted the enrollment pods in ${fmt((performance.now() - dt) / 1000, 1)} s`);
  }

  // --- scale: N pods, proxy restart (resync), memory per pod ------------------------------------------
  if (phase("scale")) {
    const s0 = performance.now();
    const scale = await enroll("scale", params.scalePods, 16, d);
    log(`scale: ${scale.pods.length} pods enrolled (${scale.run.failures.length} failed) in ${fmt((performance.now() - s0) / 1000, 1)} s`);
    for (const f of scale.run.failures.slice(0, 5)) results.errors.push(`scale pods: ${f}`);
    const enrolledPods = scale.pods.length + 2;
    const st = performance.now();
    await proxy.stop(15_000);
    const stopMs = performance.now() - st;
    const timed = await startProxyTimed(config);
    proxy = timed.proxy;
    d.proxy = proxy;
    await Bun.sleep(500);
    const podsJson = await nodeHttp("/pods");
    let podsServed = -1;
    try {
      podsServed = (JSON.parse(podsJson.body) as { pods: unknown[] }).pods.length;
    } catch {
      results.errors.push(`proxy /pods: ${podsJson.status} ${podsJson.body.slice(0, 200)}`);
    }
    const text = proxy.stdout() + "\n" + proxy.stderr();
    const readyLog = logTimeMs(text, /^proxy ready$/, "proxy");
    const lastPod = logTimeMs(text, /^pod proxy started$/);
    results.resync = {
      pods: enrolledPods,
      readyMs: timed.readyMs,
      readyLogMs: readyLog !== undefined ? readyLog - timed.spawnedAt : undefined,
      lastPodMs: lastPod !== undefined ? lastPod - timed.spawnedAt : undefined,
      podsServed,
      stopMs,
    };
    log(`resync: proxy restart with ${enrolledPods} pods ready in ${fmt(timed.readyMs, 0)} ms (serving ${podsServed}; last pod bound at ${fmt(results.resync.lastPodMs, 0)} ms)`);
    await Bun.sleep(3000);
    await proxyGc();
    memory.rssPodsKiB = await sampleRssKiB(proxy.pid);
    memory.pods = enrolledPods;
    log(`proxy RSS with ${enrolledPods} pods: ${fmt(memory.rssPodsKiB / 1024, 1)} MiB`);
    // The nshub pair's listeners are back (the checks above need them for the idle connections).
    await pairs.nshub.a.waitForTcpPort(15001);
    await pairs.nshub.b.waitForTcpPort(15006);
  }

  // --- idle connections ---------------------------------------------------------------------------------
  if (phase("idle")) {
    // Connections through one pod (the issue's measure): from the direct pair's A, which is not
    // enrolled, into the enrolled B, so each is one relayed connection in the proxy (B's inbound
    // accept + its upstream: 2 sockets). Sized to the fd limit.
    const headroom = fdLimit - fdCount(proxy.pid) - 500;
    const n = Math.min(params.idleConns, Math.floor(headroom / 2 / 500) * 500);
    if (n < params.idleConns) {
      const why = `${n} idle connections instead of ${params.idleConns}: the proxy's fd limit is ${fdLimit} (RLIMIT_NOFILE hard limit; raising it needs CAP_SYS_RESOURCE, which this machine does not grant) and each connection through B's inbound listener holds 2 of its fds. The per-connection cost is the slope, measured over ${n} connections.`;
      log(why);
    }
    const b = pairs.nshub.b;
    const clientPod = pairs.direct.a;
    memory.legs = 1;
    const server = b.spawn([...MANY_FDS, BUN, join(TOOLS, "idle-server.ts"), String(PORTS.idle)], { stdin: true });
    await b.waitForTcpPort(PORTS.idle);
    await proxyGc();
    memory.rssBeforeConnsKiB = await sampleRssKiB(proxy.pid);
    memory.fdsBefore = fdCount(proxy.pid);
    memory.conns = n;
    const drops0 = { a: await listenDrops(clientPod), b: await listenDrops(b) };
    const idleStart = Date.now();
    // 32 connects in flight: a steady open rate, not a SYN flood (the measure is memory).
    const client = clientPod.spawn([...MANY_FDS, BUN, join(TOOLS, "idle-client.ts"), b.ip, String(PORTS.idle), String(n), "32"], { stdin: true });
    const m = await client.waitForOutput(/connected (\d+) in (\d+) ms|failed (\d+) of/, 180_000);
    if (m[3]) results.errors.push(`idle connections: ${m[0]}`);
    memory.connectMs = m[2] ? Number(m[2]) : undefined;
    const opened = m[1] ? Number(m[1]) : n - Number(m[3] ?? 0);
    const lastHeld = () => {
      const all = [...server.stdout().matchAll(/held (\d+) accepted (\d+)/g)];
      const m = all[all.length - 1];
      return m ? { held: Number(m[1]), accepted: Number(m[2]) } : { held: 0, accepted: 0 };
    };
    // Until every connection reached the server, or the count stood still for longer than the
    // proxy's 10 s connect timeout.
    let last = -1;
    let since = Date.now();
    const deadline = Date.now() + 90_000;
    while (lastHeld().held < opened && Date.now() < deadline && Date.now() - since < 12_000) {
      const h = lastHeld().held;
      if (h !== last) {
        last = h;
        since = Date.now();
      }
      await Bun.sleep(200);
    }
    const held = lastHeld();
    const drops = { a: (await listenDrops(clientPod)) - drops0.a, b: (await listenDrops(b)) - drops0.b };
    if (held.held < opened) {
      // What the proxy says about the connections it closed during this phase.
      try {
        const c = await nodeHttp("/connections?recent");
        const recent = (JSON.parse(c.body) as { recent?: Array<{ direction: string; startedAt: string; closeHow: string | null; error: string | null }> }).recent ?? [];
        const counts = new Map<string, number>();
        for (const rec of recent) {
          if (Date.parse(rec.startedAt) < idleStart) continue;
          const why = `${rec.direction}: ${rec.error ?? rec.closeHow ?? "closed"}`.replace(/\d+\.\d+\.\d+\.\d+:\d+/g, "<addr>");
          counts.set(why, (counts.get(why) ?? 0) + 1);
        }
        memory.lostReasons = [...counts.entries()].sort((x, y) => y[1] - x[1]).slice(0, 4).map(([why, n]) => `${n}× ${why}`);
      } catch (e) {
        memory.lostReasons = [`(could not read the proxy's /connections: ${(e as Error).message})`];
      }
      results.errors.push(
        `idle connections: ${opened} client connections opened, ${held.held} reached the server in B (listen-queue drops during the burst: pod A ${drops.a}, pod B ${drops.b}); the proxy's recently closed connections from this phase: ${memory.lostReasons?.join("; ") || "none recorded"}`,
      );
    }
    await Bun.sleep(3000);
    await proxyGc();
    memory.rssConnsKiB = await sampleRssKiB(proxy.pid);
    memory.fdsConns = fdCount(proxy.pid);
    memory.clientConns = opened;
    memory.connsOpened = held.held; // what the proxy holds end to end: the divisor of the per-connection cost
    memory.listenDrops = drops;
    log(`idle connections: ${opened} opened by the client, ${held.held} reached the server; proxy RSS ${fmt(memory.rssBeforeConnsKiB / 1024, 1)} → ${fmt(memory.rssConnsKiB / 1024, 1)} MiB, fds ${memory.fdsBefore} → ${memory.fdsConns}`);
    client.proc.stdin?.end();
    await client.stop(10_000);
    await server.stop();
  }

  // --- the mTLS path: what node 2's proxy counted, idle HBONE streams ------------------------------------
  if (mtls) {
    try {
      mtls.results.audit = await mtls.audit();
      log(`mTLS audit: node 2's proxy accepted ${mtls.results.audit.mutualTls} connections in mutual TLS, ${mtls.results.audit.plaintext} in plaintext`);
      if (mtls.results.audit.plaintext > 0) results.errors.push(`mTLS audit: node 2's proxy accepted ${mtls.results.audit.plaintext} plaintext connections (every connection to its pods should be HBONE)`);
    } catch (e) {
      results.errors.push(`mTLS audit: ${(e as Error).message}`);
    }
    try {
      // Each idle stream holds one fd in each proxy (node 1: the captured socket; node 2: the upstream).
      const headroom = fdLimit - Math.max(...mtls.proxies.map((x) => fdCount(x.pid))) - 500;
      const n = Math.min(params.idleConns, Math.floor(headroom / 500) * 500);
      const idle = await mtls.idleStreams(n, PORTS.idle);
      mtls.results.idle = idle;
      results.errors.push(...idle.errors);
      const per = ((idle.rssAfterKiB[0] + idle.rssAfterKiB[1] - idle.rssBeforeKiB[0] - idle.rssBeforeKiB[1]) * 1024) / Math.max(idle.held, 1);
      log(`idle HBONE streams: ${idle.held} of ${idle.clientConns} held on ${idle.poolConnections ?? "?"} pooled connections; proxies' RSS ${idle.rssBeforeKiB.map((x) => fmt(x / 1024, 1)).join(" + ")} → ${idle.rssAfterKiB.map((x) => fmt(x / 1024, 1)).join(" + ")} MiB: ${fmt(per / 1000, 2)} KB per stream`);
    } catch (e) {
      results.errors.push(`idle HBONE streams: ${(e as Error).message}`);
    }
  }

  // --- profile, when a traffic target is missed ------------------------------------------------------------
  const dd = derive(results);
  const trafficMissed = checkTargets(results, dd)
    .filter((t) => /throughput|latency|connection rate/.test(t.target))
    .some((t) => t.met === false);
  const wantProfile = flags["no-profile"] ? false : (flags.profile ?? (trafficMissed && !quick));
  if (wantProfile) {
    try {
      log("profiling the proxy under iperf3 (a traffic target was missed or --profile)");
      results.profile = await profileProxy({
        sim,
        pair: pairs.nshub,
        proxy,
        config,
        relay: results.proxyRelay,
        seconds: quick ? 3 : 6,
        nobody: NOBODY,
        iperfPort: PORTS.iperf,
        sockperfPort: PORTS.sockperf,
        httpPort: PORTS.http,
        workDir,
        fdPrefix: MANY_FDS,
        log,
      });
    } catch (e) {
      results.errors.push(`profile: ${(e as Error).message}`);
    }
  }

  // --- notes ------------------------------------------------------------------------------------------------
  results.load = { start: loadStart, end: load1Text() };
  results.fdLimit = fdLimit;
  results.nshubBinaryBytes = statSync(NSHUB).size;
  const binary1 = statSync(NSHUB);
  if (binary1.mtimeMs !== binary0.mtimeMs || binary1.size !== binary0.size) {
    results.errors.push(`dist/nshub was replaced during the run (at ${new Date(binary1.mtimeMs).toISOString()}): processes started after that ran the new binary`);
  }
  notes.push(...analysis(results, { binaryBytes: results.nshubBinaryBytes }));

  // --- the mTLS profile, when one of issue 18's targets is missed ---------------------------------------------
  if (mtls && !flags["no-profile"] && (flags.profile ?? (!quick && mtlsTargets(results, derive(results)).some((t) => t.met === false)))) {
    try {
      log("profiling the mTLS paths (an issue 18 target was missed or --profile)");
      mtls.results.profile = await profileMtls({ mtls, seconds: quick ? 3 : 6, nobody: NOBODY, iperfPort: PORTS.iperf, httpPort: PORTS.http, workDir, fdPrefix: MANY_FDS, log });
    } catch (e) {
      results.errors.push(`mTLS profile: ${(e as Error).message}`);
    }
  }

  await hap.proc.stop();
  await hapSplice.proc.stop();
  await hapSpliceAlways.proc.stop();
  results.finishedAt = new Date().toISOString();

  await cleanup();
  results.runtimeSec = (performance.now() - t0 - waitedMs) / 1000;
  const page = renderReport(results, { notes });
  writeFileSync(outFile, carryOverKept(previousPage(), page));
  if (flags.json) writeFileSync(flags.json, JSON.stringify(results, null, 2) + "\n");
  log(`wrote ${outFile}${flags.json ? ` and ${flags.json}` : ""}; total ${fmt(results.runtimeSec / 60, 1)} min`);
  console.log("\n" + page.slice(0, page.indexOf("## Method")));
  return results.errors.length ? 1 : 0;
}

/** The page about to be replaced (its kept sections survive: see carryOverKept). */
function previousPage(): string | undefined {
  try {
    return readFileSync(outFile, "utf8");
  } catch {
    return undefined;
  }
}

/** --from-json: the page from saved results (the notes are recomputed from the numbers). */
function renderFromJson(file: string): number {
  const results = JSON.parse(readFileSync(file, "utf8")) as BenchResults;
  const page = renderReport(results, { notes: analysis(results, { binaryBytes: results.nshubBinaryBytes ?? statSync(NSHUB).size }) });
  writeFileSync(outFile, carryOverKept(previousPage(), page));
  console.log(`rendered ${outFile} from ${file} (run of ${results.startedAt})`);
  return 0;
}

try {
  process.exitCode = flags["from-json"] ? renderFromJson(flags["from-json"]) : await main();
} catch (e) {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
  if (partial) {
    partial.errors.push(`the run failed: ${(e as Error).message}`);
    const f = join(tmpdir(), "nshub-bench-failed.md");
    try {
      writeFileSync(f, renderReport(partial, { notes: [] }));
      console.error(`what was measured before the failure: ${f} (${outFile} left unchanged)`);
    } catch {
      // nothing more to save
    }
  }
} finally {
  await cleanup();
}
