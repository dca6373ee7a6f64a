// One run of `nshub demo`: what the steps share (the two nodes and the fabric between them, the
// pods, the CA, the record of what was started, the checks and facts for the summary) and the few
// things every step does.
import { join } from "node:path";
import type { Fabric } from "../sim/fabric.ts";
import type { NetSim } from "../sim/node.ts";
import type { Pod } from "../sim/namespace.ts";
import type { SimProcess } from "../sim/process.ts";
import { resolveBinary, type DemoBinary, type RecordedProcess } from "./env.ts";
import { curlIn, parsePrometheus, snapshotOf, type MetricsSnapshot } from "./observe.ts";
import { Printer } from "./printer.ts";
import { writeRecord, type DemoRecord } from "./state.ts";

export const WEB_HTTP_PORT = 8080;
export const WEB_ECHO_PORT = 9000;
export const WEB_IPERF_PORT = 5201;
export const AGENT_ADMIN = "http://127.0.0.1:15010";
export const PROXY_ADMIN = "http://127.0.0.1:15000";
export const PROXY_METRICS = "http://127.0.0.1:15020";
export const PROXY_READY = "http://127.0.0.1:15021";
export const ECHO_TEXT = "hello through nshub";
export const TRUST_DOMAIN = "cluster.local";
/** demo/web's service account (CNI_ARGS K8S_POD_SERVICE_ACCOUNT); demo/client has none: "default". */
export const WEB_SERVICE_ACCOUNT = "web";
/** demo/backend (on node 2)'s service account. */
export const BACKEND_SERVICE_ACCOUNT = "backend";
/** Where `nshub ca serve` listens, in its pod istio-system/nshub-ca on node 1 (istiod's port). */
export const CA_PORT = 15012;
export const HBONE_PORT = 15008;

export interface Check {
  id: "enrolled" | "identity" | "captured-outbound" | "captured-inbound" | "source-ip" | "not-captured" | "bytes" | "cross-node" | "mtls" | "wire" | "teardown";
  title: string;
  ok: boolean;
  detail: string;
}

/** A failure the operator can act on: printed as is, without a stack. */
export class DemoError extends Error {
  override name = "DemoError";
}

export class Interrupted extends Error {
  override name = "Interrupted";
}

/** What the demo's web server answers (see serve.ts). */
export interface HttpReply {
  server: string;
  client: string;
}

export interface DemoPods {
  /** node 1 */
  web: Pod;
  client: Pod;
  outsider: Pod;
  /** node 2 */
  backend: Pod;
}

/** One virtual node of the demo: its netsim instance and its dir in the work dir. */
export class DemoNode {
  constructor(
    /** Kubernetes node name: "node-1", "node-2". */
    readonly name: string,
    readonly sim: NetSim,
    /** `<work dir>/<name>`: config, sockets, agent state, logs. */
    readonly dir: string,
  ) {}

  /** The node's own namespace. */
  get ns() {
    return this.sim.node;
  }

  /** A file in this node's dir. */
  path(file: string): string {
    return join(this.dir, file);
  }
}

/** The demo's CA: `nshub ca serve` in a plain pod of node 1, reached by both nodes' proxies. */
export interface DemoCa {
  pod: Pod;
  /** ip:port */
  address: string;
  dir: string;
  proc: RecordedProcess;
}

export class DemoRun {
  readonly out: Printer;
  readonly bin: DemoBinary;
  readonly checks: Check[] = [];
  /** node-1, node-2, in the order they were made. */
  readonly nodes: DemoNode[] = [];
  fabric: Fabric | undefined;
  ca: DemoCa | undefined;
  record: DemoRecord | undefined;
  pods: Partial<DemoPods> = {};
  /** The TCP echo client of step 6, left open until step 8 shows it live. */
  echo: SimProcess | undefined;
  interruptedBy: NodeJS.Signals | undefined;
  /** What the steps found, for the JSON summary (in the order they found it). */
  readonly facts: Record<string, unknown> = {};
  /** With --keep: commands to explore what was left running. */
  explore: string[] = [];

  constructor(readonly opts: { keep: boolean; json: boolean }) {
    this.out = new Printer(opts.json);
    this.bin = resolveBinary();
  }

  /** Node 1's netsim instance (where the single-node part of the story happens). */
  get sim(): NetSim | undefined {
    return this.nodes[0]?.sim;
  }

  get n1(): DemoNode {
    return this.nodes[0]!;
  }

  get n2(): DemoNode {
    return this.nodes[1]!;
  }

  /** Node 1's own namespace. */
  get node() {
    return this.n1.ns;
  }

  /** The pods, once step 4 made them. */
  get allPods(): DemoPods {
    return this.pods as DemoPods;
  }

  get workDir(): string {
    return this.record!.workDir;
  }

  /** A file in this run's work dir. */
  path(name: string): string {
    return join(this.workDir, name);
  }

  checkInterrupted(): void {
    if (this.interruptedBy) throw new Interrupted(this.interruptedBy);
  }

  /** A step's header; a step does not start after Ctrl-C. */
  step(n: number, text: string): void {
    this.checkInterrupted();
    this.out.step(n, text);
  }

  /** Recorded at once, so that a teardown from any later process finds it. */
  addProcess(p: RecordedProcess): RecordedProcess {
    this.record!.processes.push(p);
    writeRecord(this.record!);
    return p;
  }

  /** A command as run inside a pod, shown the way the operator would type it. */
  cmdIn(pod: Pod, text: string): void {
    this.out.cmd(`${pod.podNamespace}/${pod.podName}: ${text}`);
  }

  /** A proxy's traffic counters (node 1's by default), or undefined when its metrics endpoint does not answer. */
  async metrics(node: DemoNode = this.n1): Promise<MetricsSnapshot | undefined> {
    const a = await curlIn(node.ns, `${PROXY_METRICS}/metrics`);
    if (a.status !== 200) return undefined;
    return snapshotOf(parsePrometheus(a.body));
  }
}
