// The benchmark's result model (what scripts/bench.ts collects and report.ts renders).
import type { Iperf3Result, SockperfResult, WrkResult } from "./parse.ts";
import type { MachineInfo } from "./sys.ts";

/** The main comparison's paths, pod pairs on one node (issue 8). */
export const PATHS = ["direct", "nshub", "haproxy"] as const;
export type PathName = (typeof PATHS)[number];
/**
 * Paths added for issue 18, measured in the same interleaved loop when their set-up ran:
 * HAProxy with `option splice-auto` (one node, as "haproxy"), and the mTLS comparison on two
 * virtual nodes joined by the fabric (scripts/bench-lib/mtls.ts): direct across the nodes, nshub
 * HBONE across the nodes, the HAProxy TLS chain across the nodes, and nshub HBONE between two
 * pods of one node (no same-node shortcut).
 */
export const EXTRA_PATHS = ["haproxy-splice", "haproxy-splice-always", "direct-nodes", "hbone-nodes", "haproxy-tls", "hbone-local"] as const;
export type ExtraPath = (typeof EXTRA_PATHS)[number];
export type AnyPath = PathName | ExtraPath;
export const ALL_PATHS: readonly AnyPath[] = [...PATHS, ...EXTRA_PATHS];
export const MTLS_PATHS = ["direct-nodes", "hbone-nodes", "haproxy-tls", "hbone-local"] as const satisfies readonly ExtraPath[];
export type MtlsPath = (typeof MTLS_PATHS)[number];
export const PATH_LABEL: Record<AnyPath, string> = {
  direct: "direct",
  nshub: "nshub",
  haproxy: "HAProxy",
  "haproxy-splice": "HAProxy splice-auto",
  "haproxy-splice-always": "HAProxy splice forced",
  "direct-nodes": "direct, 2 nodes",
  "hbone-nodes": "nshub HBONE, 2 nodes",
  "haproxy-tls": "HAProxy TLS chain, 2 nodes",
  "hbone-local": "nshub HBONE, same node",
};
/** What a path's **added** latency is measured against: direct between the same kind of pods. */
export const BASELINE: Record<AnyPath, AnyPath> = {
  direct: "direct",
  nshub: "direct",
  haproxy: "direct",
  "haproxy-splice": "direct",
  "haproxy-splice-always": "direct",
  "direct-nodes": "direct-nodes",
  "hbone-nodes": "direct-nodes",
  "haproxy-tls": "direct-nodes",
  "hbone-local": "direct",
};
/**
 * The HAProxy configurations of the one-node comparison: default, `option splice-auto`, and
 * splicing forced (`option splice-request` + `option splice-response`); nshub is held to the
 * stronger one in each measure.
 */
export const HAPROXY_VARIANTS = ["haproxy", "haproxy-splice", "haproxy-splice-always"] as const satisfies readonly AnyPath[];
export type HaproxyVariant = (typeof HAPROXY_VARIANTS)[number];
/** Runs per path: the main paths always (maybe empty), the extra ones when measured. */
export type PerPath<T> = Record<PathName, T> & Partial<Record<ExtraPath, T>>;
/** A path's runs (empty when the path was not measured, e.g. in results from before it existed). */
export function runsOf<T>(rec: PerPath<T[]>, p: AnyPath): T[] {
  return (rec as Partial<Record<AnyPath, T[]>>)[p] ?? [];
}

export interface ProcCpu {
  user: number;
  sys: number;
}

export interface ThroughputRun {
  rep: number;
  /** 1-minute load average when the run started. */
  load1?: number;
  iperf: Iperf3Result;
  /** CPU seconds the proxy process used during the run (nshub proxy / haproxy); undefined for direct. */
  proxyCpu?: ProcCpu;
  /** Wall time of the iperf3 client (omitted first second, start-up and teardown included). */
  wallSec?: number;
  /** CPU seconds the bench's own process used during the run (it should only be waiting). */
  benchCpuSec?: number;
  /** A sample half-way through the run (HAProxy splice-auto: its pipes in use). */
  probe?: Record<string, number | undefined>;
  /** Share of the machine's CPU time that was busy during the run (all processes, 0..1). */
  machineBusy?: number;
}

export interface LatencyRun {
  rep: number;
  /** 1-minute load average when the run started. */
  load1?: number;
  sockperf: SockperfResult;
}

export interface CpsRun {
  rep: number;
  /** 1-minute load average when the run started. */
  load1?: number;
  wrk: WrkResult;
  proxyCpu?: ProcCpu;
  /** The proxy's CPU seconds during the run per thread name (nshub: nshub-dataplane, nshub-relay, JITWorker…). */
  proxyThreads?: Record<string, ProcCpu>;
  /**
   * A sample taken half-way through the run (mTLS paths): the HAProxy TLS chain's `show info`
   * TLS counters of both instances, nshub's pooled HBONE connections.
   */
  probe?: Record<string, number | undefined>;
  /** TCP sockets in TIME_WAIT in pod A right after the run (wrk's and, on a proxied path, the proxy's upstream sockets there). */
  timeWaitA?: number;
  /** CPU seconds the bench's own process used during the run; wrk ran `wallSec`. */
  benchCpuSec?: number;
  wallSec?: number;
}

export interface EnrollmentRun {
  pods: number;
  concurrency: number;
  /** nshub-cni ADD, exec to exit, measured by the timing wrapper (ms), one per pod. */
  pluginMs: number[];
  /** The same ADDs as the plugin logs them itself ("ADD done" ms: after its process started). */
  inPluginMs: number[];
  /** The pod's whole network set-up as the harness ran it: netns creation, loopback, bridge/host-local, nshub-cni (ms). */
  chainMs: number[];
  /** Wall time of the whole batch (ms). */
  wallMs: number;
  failures: string[];
  /**
   * CPU seconds during the batch: the whole machine (busy, and the total its CPUs had), the
   * agent with the tools it spawned (iptables, ip, ipset), and the proxy.
   */
  cpu?: { machineBusySec: number; machineTotalSec: number; agentSec: number; proxySec: number };
}

export interface ResyncResult {
  pods: number;
  /** Proxy process spawned → its readiness endpoint says ready (ms). */
  readyMs: number;
  /** From the proxy's own log: spawn → "proxy ready" log line (ms), when it logged one. */
  readyLogMs?: number;
  /** Spawn → the last "pod proxy started" line (every pod's listeners bound), ms. */
  lastPodMs?: number;
  podsServed: number;
  /** Old proxy: SIGTERM → exit (drain with no connections), ms. */
  stopMs: number;
}

export interface MemoryResult {
  /** Fresh proxy, no pod enrolled. */
  rss0KiB: number;
  /** Fresh proxy (after the restart) serving `pods` pods. */
  rssPodsKiB: number;
  pods: number;
  /**
   * Relays per idle connection: 1 = from a pod that is not enrolled into B (through B's inbound
   * listener only: "connections through one pod"); 2 = A → B, both enrolled (runs before
   * 2026-11-24 evening; absent in their JSON).
   */
  legs?: 1 | 2;
  /** Same proxy before and after `conns` idle connections were opened through it. */
  rssBeforeConnsKiB: number;
  rssConnsKiB: number;
  conns: number;
  /** Connections the proxy relays end to end (reached the server in B): the divisor. */
  connsOpened: number;
  /** Connections the client opened. */
  clientConns: number;
  /** The proxy's closed-connection records from the idle phase, grouped ("N× direction: error"). */
  lostReasons?: string[];
  /** TcpExtListenDrops during the burst, in the client's pod (a) and B. */
  listenDrops: { a: number; b: number };
  connectMs?: number;
  fdsBefore: number;
  fdsConns: number;
  /** HAProxy RSS for comparison (same pods idle / with connections when measured). */
  haproxyRssKiB?: number;
}

export interface PathCheck {
  path: AnyPath;
  /** Client address the HTTP server in B saw for a request from A. */
  peerSeen: string;
  /** Packets that hit A's outbound REDIRECT rule (undefined: no rules in A). */
  redirectPackets?: number;
  ok: boolean;
  note: string;
  /** mTLS paths: what the fabric capture saw of this path's check request (flows, marker in clear or not). */
  wire?: string;
  /** nshub HBONE paths: the security the proxies recorded for the check connection (both legs). */
  security?: string;
}

export interface ProfileResult {
  /** What was profiled (command, duration). */
  what: string;
  /** CPU split of the proxy process during the profiled run. */
  cpu?: { user: number; sys: number; wallSec: number; gbps: number };
  /** `perf report` excerpts: by shared object and top symbols. */
  byDso?: string;
  topSymbols?: string;
  /** `strace -c` syscall summary. */
  syscalls?: string;
  /**
   * perf during a wrk run (connection rate): the proxy's CPU time during it, its samples by
   * thread and object (`--sort comm,dso`), and `perf report --children --sort sym` (kernel time
   * by syscall is read from it).
   */
  cps?: { cpu: { user: number; sys: number }; connections: number; byThread?: string; children?: string };
  /** Syscalls of the proxy per round trip (sockperf) and per new connection (wrk), from `strace -c -f`. */
  perOp?: {
    latency?: { messages: number; calls: Record<string, number> };
    cps?: { connections: number; calls: Record<string, number> };
  };
  notes: string[];
}

export type RelayKind = "splice" | "userspace";
export const RELAYS: readonly RelayKind[] = ["splice", "userspace"];

/** One repetition of the nshub path with one relay kind (the proxy restarted with it). */
export interface RelayAbRun {
  rep: number;
  relay: RelayKind;
  load1?: number;
  /** iperf3 seconds per run (shorter than the main throughput runs). */
  seconds: number;
  tp1: ThroughputRun;
  tp4: ThroughputRun;
  latency: LatencyRun["sockperf"];
  cps: Omit<CpsRun, "rep" | "load1">;
}

export interface BenchParams {
  reps: number;
  tpSeconds: number;
  latSeconds: number;
  cpsSeconds: number;
  /**
   * The unmeasured wrk run each path gets first (and each restarted proxy in the relay
   * comparison). JavaScriptCore keeps compiling the proxy's per-connection code for the first
   * ~10 s of a connection storm: its compiler thread used 16, then 8, then 0 µs of CPU per
   * connection in three 5 s wrk runs after a 4 s one (2026-11-25); measured runs should see the
   * steady state of a long-running proxy. Absent in results from before 2026-11-25 (2 s then).
   */
  wrkWarmupSeconds?: number;
  wrkConnections: number;
  msgSize: number;
  enrollSeq: number;
  enrollConc: number;
  scalePods: number;
  idleConns: number;
}

export interface BenchResults {
  mode: "full" | "quick";
  /** Set when only some phases ran (--phases). */
  phases?: string[];
  startedAt: string;
  finishedAt?: string;
  runtimeSec?: number;
  machine: MachineInfo;
  params: BenchParams;
  haproxyThreads?: number;
  proxyThreads?: number;
  /** The proxy's data-plane threads (its config's proxy.workers, from /config_dump); absent in older runs = 1. */
  proxyWorkers?: number;
  /** The proxy's relay (its config's proxy.relay, from /config_dump); absent in older runs = userspace. */
  proxyRelay?: RelayKind;
  /** The nshub path once per relay kind, same run, interleaved (phase "relay"). */
  relayAB?: RelayAbRun[];
  checks: PathCheck[];
  rules: { position: number; before: string; after: string } | undefined;
  throughput: Record<"1" | "4", PerPath<ThroughputRun[]>>;
  latency: PerPath<LatencyRun[]>;
  cps: PerPath<CpsRun[]>;
  /** HAProxy with `option splice-auto` ("haproxy-splice") and with splice-request + splice-response ("haproxy-splice-always"): thread counts. */
  haproxySpliceThreads?: number;
  haproxySpliceAlwaysThreads?: number;
  /** The mTLS comparison on two nodes (issue 18; absent when its set-up did not run). */
  mtls?: MtlsResults;
  enrollment: {
    sequential?: EnrollmentRun;
    concurrent?: EnrollmentRun;
    /** Where a sequential ADD goes: plugin process alone (VERSION) and the agent's PodAdd from a warm client (ms). */
    breakdown?: { startupMs: number[]; rpcMs: number[]; rulesMs?: number[]; errors: string[] };
  };
  /** /proc/loadavg (1, 5, 15 min) when the run started and ended: other work on the machine. */
  load?: { start: string; end: string };
  resync?: ResyncResult;
  memory?: Partial<MemoryResult>;
  profile?: ProfileResult;
  /** RLIMIT_NOFILE the bench's processes had (sizes the idle-connection measure). */
  fdLimit?: number;
  /** Size of dist/nshub (the plugin is this executable too). */
  nshubBinaryBytes?: number;
  /**
   * dist/nshub as measured: when it was built (its mtime) and the source files changed after that
   * (the run measured that build, not the sources of the commit shown; NSHUB_BENCH_NO_BUILD=1).
   */
  nshubBinary?: { builtAt: string; newerSources: string[] };
  errors: string[];
}

export function emptyPerPath<T>(): Record<PathName, T[]> {
  return { direct: [], nshub: [], haproxy: [] };
}

/** Idle HBONE streams through the two-node mTLS path: both proxies' memory. */
export interface IdleStreamsResult {
  /** Streams the client opened / that reached the server in B (the divisor). */
  clientConns: number;
  held: number;
  /** RSS (KiB) of node 1's and node 2's proxy before and after, each after a full GC. */
  rssBeforeKiB: [number, number];
  rssAfterKiB: [number, number];
  fdsBefore: [number, number];
  fdsAfter: [number, number];
  /**
   * JS heap in use (bytes) of each proxy's main thread after the GC, before and after: one of its
   * two data-plane threads (SO_REUSEPORT spreads the connections over both), so about half the
   * streams' JavaScript objects.
   */
  heapBefore?: [number, number];
  heapAfter?: [number, number];
  /** node 1's pooled HBONE connections carrying them (`nshub_hbone_pool_connections`). */
  poolConnections?: number;
  connectMs?: number;
  errors: string[];
}

/** perf of one process during a run (the mTLS profile). */
export interface ProcessProfile {
  who: string;
  /** What ran through the path while perf sampled (absent = iperf3). */
  load?: "iperf3" | "wrk";
  cpu: { user: number; sys: number; wallSec: number };
  byDso?: string;
  topSymbols?: string;
  byThread?: string;
}

export interface MtlsProfile {
  what: string;
  /** iperf3 -P 1 through the path while perf ran, Gb/s. */
  gbps: Partial<Record<"hbone-nodes" | "haproxy-tls", number>>;
  procs: ProcessProfile[];
  /** Bun's sampling profiler (`--cpu-prof-md`) on node 1's proxy from source: per load, the hot-functions table. */
  js?: Array<{ load: string; hot: string }>;
  notes: string[];
}

export interface MtlsResults {
  /** Trust domain and how certificates were made. */
  trustDomain: string;
  /** node 1's and node 2's proxies: data-plane threads, relay, process threads. */
  proxyWorkers?: number;
  proxyRelay?: RelayKind;
  /** HAProxy TLS chain: threads of each instance. */
  haproxyThreads?: [number, number];
  /** The fabric link subnet and the nodes' pod subnets. */
  nodes: { subnet: string; pods: string[] }[];
  /** The wire's summary of all checks (the fabric capture). */
  wire?: string;
  /**
   * After the measured runs, node 2's proxy metrics: connections it accepted for its pods, by
   * security (mutual_tls vs plaintext): every HBONE-path connection must be mutual_tls.
   */
  audit?: { mutualTls: number; plaintext: number };
  idle?: IdleStreamsResult;
  profile?: MtlsProfile;
}

/** Appends a run to a path's list, creating the list for an extra path. */
export function pushRun<T>(rec: PerPath<T[]>, p: AnyPath, run: T): void {
  const m = rec as Partial<Record<AnyPath, T[]>>;
  (m[p] ??= []).push(run);
}
