// The benchmark's result model (what scripts/bench.ts collects and report.ts renders).
import type { Iperf3Result, SockperfResult, WrkResult } from "./parse.ts";
import type { MachineInfo } from "./sys.ts";

export const PATHS = ["direct", "nshub", "haproxy"] as const;
export type PathName = (typeof PATHS)[number];
export const PATH_LABEL: Record<PathName, string> = { direct: "direct", nshub: "nshub", haproxy: "HAProxy" };

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
  path: PathName;
  /** Client address the HTTP server in B saw for a request from A. */
  peerSeen: string;
  /** Packets that hit A's outbound REDIRECT rule (undefined: no rules in A). */
  redirectPackets?: number;
  ok: boolean;
  note: string;
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
  throughput: Record<"1" | "4", Record<PathName, ThroughputRun[]>>;
  latency: Record<PathName, LatencyRun[]>;
  cps: Record<PathName, CpsRun[]>;
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
  errors: string[];
}

export function emptyPerPath<T>(): Record<PathName, T[]> {
  return { direct: [], nshub: [], haproxy: [] };
}
