// One run of `nshub demo`: what the steps share (the node, the pods, the record of what was
// started, the checks and facts for the summary) and the few things every step does.
import { join } from "node:path";
import type { NetSim } from "../sim/node.ts";
import type { Pod } from "../sim/namespace.ts";
import type { SimProcess } from "../sim/process.ts";
import { resolveBinary, writeRecord, type DemoBinary, type DemoRecord, type RecordedProcess } from "./env.ts";
import { curlIn, parsePrometheus, snapshotOf, type MetricsSnapshot } from "./observe.ts";
import { Printer } from "./printer.ts";

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

export interface Check {
  id: "enrolled" | "identity" | "captured-outbound" | "captured-inbound" | "source-ip" | "not-captured" | "bytes" | "teardown";
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
  web: Pod;
  client: Pod;
  outsider: Pod;
}

export class DemoRun {
  readonly out: Printer;
  readonly bin: DemoBinary;
  readonly checks: Check[] = [];
  sim: NetSim | undefined;
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

  get node() {
    return this.sim!.node;
  }

  /** The three pods, once step 4 made them. */
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

  /** The proxy's traffic counters, or undefined when its metrics endpoint does not answer. */
  async metrics(): Promise<MetricsSnapshot | undefined> {
    const a = await curlIn(this.node, `${PROXY_METRICS}/metrics`);
    if (a.status !== 200) return undefined;
    return snapshotOf(parsePrometheus(a.body));
  }
}
