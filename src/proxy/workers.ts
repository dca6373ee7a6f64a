// Data-plane workers (`proxy.workers`). One JavaScript thread relays at most about one CPU's worth of traffic and
// new connections, so with `proxy.workers` = n the proxy runs n-1 Worker threads next to the main
// thread. Each thread binds every pod's listeners itself, in the same netns and on the same
// ports, with SO_REUSEPORT: the kernel spreads new connections over the threads, and each thread
// relays what it accepted from start to end (Bun sockets cannot move between threads). The main
// thread stays one of the data-plane threads and also runs ZDS, the admin servers and the
// readiness; it forwards every pod add/delete to the Workers (a dup of the netns fd each) and
// merges their metrics, connection lists and drain results on demand.
import { Netns } from "../sys/index.ts";
import type { ProxyConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import type { WorkloadIdentity, WorkloadManager } from "../zds/types.ts";
import type { ProxyWorkloadManager } from "./manager.ts";
import type { PolicyDocuments } from "../policy/load.ts";
import type { LabelsByUid } from "./authorize.ts";
import type { CertificatePems, MeshEntry } from "./hbone-context.ts";
import type { ConnectionsAnswer, FromWorker, PlainRecord, Question, ToWorker } from "./worker-protocol.ts";

/** How long a question to a Worker may take before it is answered without that Worker. */
const ASK_TIMEOUT_MS = 5_000;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** The main thread's handle on one data-plane Worker thread: messages, questions, failure. */
class DataPlaneWorker {
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #failed: string | undefined;

  constructor(
    readonly index: number,
    readonly worker: Worker,
    log: Logger,
    onFailed: (index: number, error: string) => void,
  ) {
    worker.onerror = (ev) => {
      const error = ev.message || "uncaught error";
      if (this.#failed !== undefined) return;
      this.#failed = error;
      log.error("data-plane thread failed", { thread: index, error });
      for (const p of this.#pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`thread ${index} failed: ${error}`));
      }
      this.#pending.clear();
      onFailed(index, error);
    };
  }

  get failed(): string | undefined {
    return this.#failed;
  }

  send(m: ToWorker): void {
    if (this.#failed === undefined) this.worker.postMessage(m);
  }

  ask<T>(q: Question, timeoutMs = ASK_TIMEOUT_MS): Promise<T> {
    if (this.#failed !== undefined) return Promise.reject(new Error(`thread ${this.index} failed: ${this.#failed}`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`thread ${this.index} did not answer "${q.q}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.worker.postMessage({ t: "ask", id, q } satisfies ToWorker);
    });
  }

  settle(m: FromWorker): void {
    if (m.t === "ready") return;
    const p = this.#pending.get(m.id);
    if (!p) return;
    this.#pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.t === "answer") p.resolve(m.data);
    else p.reject(new Error(`thread ${this.index}: ${m.error}`));
  }
}

/** Where the Worker's code is (an extra entrypoint of the compiled binary, like the fd poller's). */
function workerUrl(): string {
  if (import.meta.url.startsWith("file:///$bunfs/")) return "/$bunfs/root/proxy/dataplane-worker.js";
  return new URL("./dataplane-worker.ts", import.meta.url).href;
}

export class WorkerPool {
  #onFailure: ((thread: number, error: string) => void) | undefined;
  /** Threads that failed before a failure handler was set (reported when it is). */
  #failedEarly: Array<[number, string]> = [];

  private constructor(
    readonly workers: DataPlaneWorker[],
    private readonly log: Logger,
  ) {}

  /**
   * Starts `count` Workers (threads 1..count) and waits until each is initialised. `workerUrl`
   * replaces the Worker's code (tests).
   */
  static async start(count: number, cfg: ProxyConfig, logLevel: string, log: Logger, opts: { workerUrl?: string } = {}): Promise<WorkerPool> {
    const pool = new WorkerPool([], log);
    const ready: Promise<void>[] = [];
    for (let i = 1; i <= count; i++) {
      const worker = new Worker(opts.workerUrl ?? workerUrl());
      let startFailed: ((e: Error) => void) | undefined;
      const handle = new DataPlaneWorker(i, worker, log, (index, error) => {
        startFailed?.(new Error(`data-plane thread ${index} failed while starting: ${error}`));
        pool.#failed(index, error);
      });
      ready.push(
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`data-plane thread ${i} did not start within 10 s`)), 10_000);
          startFailed = (e) => {
            clearTimeout(timer);
            reject(e);
          };
          worker.onmessage = (ev: MessageEvent<FromWorker>) => {
            if (ev.data.t === "ready") {
              clearTimeout(timer);
              startFailed = undefined;
              resolve();
            }
            handle.settle(ev.data);
          };
        }),
      );
      worker.postMessage({ t: "init", cfg, logLevel, index: i, count: count + 1 } satisfies ToWorker);
      pool.workers.push(handle);
    }
    try {
      await Promise.all(ready);
    } catch (e) {
      await pool.stop();
      throw e;
    }
    return pool;
  }

  /**
   * Called once per thread that dies (an uncaught error ends a Worker). Its listeners would stay
   * open in the kernel with nobody accepting: SO_REUSEPORT would keep handing it a share of new
   * connections, so the proxy must not carry on as if nothing happened (main.ts shuts down).
   */
  onFailure(fn: (thread: number, error: string) => void): void {
    this.#onFailure = fn;
    for (const [t, e] of this.#failedEarly.splice(0)) fn(t, e);
  }

  #failed(thread: number, error: string): void {
    if (this.#onFailure) this.#onFailure(thread, error);
    else this.#failedEarly.push([thread, error]);
  }

  /**
   * Hands pod `uid` to every Worker, each with its own fd for the pod's netns (opened through
   * /proc/self/fd while `netns` is still open; the Worker owns and closes it).
   */
  add(uid: string, info: WorkloadIdentity | undefined, dups: readonly Netns[]): void {
    this.workers.forEach((w, i) => {
      // A dead thread would never close its fd.
      if (w.failed !== undefined) dups[i]!.close();
      else w.send({ t: "add", uid, info, fd: dups[i]!.fd });
    });
  }

  /** One extra fd per Worker for `netns`. */
  dupNetns(netns: Netns): Netns[] {
    const out: Netns[] = [];
    try {
      for (let i = 0; i < this.workers.length; i++) out.push(Netns.open(`/proc/self/fd/${netns.fd}`));
    } catch (e) {
      for (const d of out) d.close();
      throw e;
    }
    return out;
  }

  del(uid: string): void {
    for (const w of this.workers) w.send({ t: "del", uid });
  }

  resetPending(): void {
    for (const w of this.workers) w.send({ t: "reset" });
  }

  setLogLevel(level: string): void {
    for (const w of this.workers) w.send({ t: "level", level });
  }

  closeAll(): void {
    for (const w of this.workers) w.send({ t: "closeAll" });
  }

  /** A new policy set for every Worker (each builds its own PolicySet: sets do not cross threads). */
  setPolicies(docs: PolicyDocuments): void {
    for (const w of this.workers) w.send({ t: "policies", docs });
  }

  setLabels(labels: LabelsByUid): void {
    for (const w of this.workers) w.send({ t: "labels", labels });
  }

  setCertificate(identity: string, pems: CertificatePems | undefined): void {
    for (const w of this.workers) w.send({ t: "cert", identity, pems });
  }

  setMesh(entries: readonly MeshEntry[]): void {
    for (const w of this.workers) w.send({ t: "mesh", entries: [...entries] });
  }

  /** Every Worker's answer; a Worker that fails or times out is logged and left out. */
  async askAll<T>(q: Question, timeoutMs?: number): Promise<T[]> {
    const results = await Promise.allSettled(this.workers.map((w) => w.ask<T>(q, timeoutMs)));
    const out: T[] = [];
    for (const r of results) {
      if (r.status === "fulfilled") out.push(r.value);
      else this.log.warn("data-plane thread did not answer", { question: q.q, error: (r.reason as Error).message });
    }
    return out;
  }

  metricsJson(): Promise<unknown[]> {
    return this.askAll<unknown>({ q: "metrics" });
  }

  async connections(recent: boolean): Promise<{ live: PlainRecord[]; recent: PlainRecord[] }> {
    const answers = await this.askAll<ConnectionsAnswer>({ q: "connections", recent });
    return { live: answers.flatMap((a) => a.live), recent: answers.flatMap((a) => a.recent ?? []) };
  }

  /** Live connections per pod uid, summed over the Workers. */
  async podConnections(): Promise<Map<string, number>> {
    const sum = new Map<string, number>();
    for (const a of await this.askAll<Record<string, number>>({ q: "podConnections" })) {
      for (const [uid, n] of Object.entries(a)) sum.set(uid, (sum.get(uid) ?? 0) + n);
    }
    return sum;
  }

  /** Drains every Worker (listeners closed at once, connections until the deadline). */
  async drain(deadlineMs: number): Promise<{ finished: number; reset: number }> {
    const rs = await this.askAll<{ finished: number; reset: number }>({ q: "drain", deadlineMs }, deadlineMs + ASK_TIMEOUT_MS);
    return rs.reduce((a, r) => ({ finished: a.finished + r.finished, reset: a.reset + r.reset }), { finished: 0, reset: 0 });
  }

  /** Stops the Workers' helper threads, then the Workers. */
  async stop(): Promise<void> {
    await this.askAll<boolean>({ q: "stop" }, 2_000);
    for (const w of this.workers) if (w.failed === undefined) w.worker.terminate();
  }
}

/**
 * The WorkloadManager the ZDS client drives when there are Worker threads: the main thread's
 * manager decides (its outcome is what the agent is told) and every pod event is mirrored to the
 * Workers.
 */
export class WorkerPoolWorkloadManager implements WorkloadManager {
  constructor(
    readonly main: ProxyWorkloadManager,
    readonly pool: WorkerPool,
    private readonly log: Logger,
  ) {}

  async add(uid: string, info: WorkloadIdentity | undefined, netns: Netns): Promise<void> {
    // Dup first: the main manager owns `netns` from the call on and may close it at once.
    let dups: Netns[] | undefined;
    if (!this.main.draining) {
      try {
        dups = this.pool.dupNetns(netns);
      } catch (e) {
        // Out of fds, most likely: the main thread still serves the pod, the Workers do not.
        this.log.error("cannot hand the pod's netns to the data-plane threads; only the main thread serves it", { uid, error: (e as Error).message });
      }
    }
    try {
      await this.main.add(uid, info, netns);
    } finally {
      if (dups && this.main.draining) for (const d of dups) d.close();
      else if (dups) this.pool.add(uid, info, dups);
    }
  }

  keep(uid: string): void {
    this.main.keep(uid);
  }

  async del(uid: string): Promise<void> {
    this.pool.del(uid);
    await this.main.del(uid);
  }

  uids(): Iterable<string> {
    return this.main.uids();
  }

  connectionStarted(): void {
    this.pool.resetPending();
    this.main.connectionStarted();
  }

  snapshotDone(): void {
    this.main.snapshotDone();
  }

  connectionLost(): void {
    this.main.connectionLost();
  }
}
