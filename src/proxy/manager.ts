// The proxy's workload manager: what the ZDS client drives. Per pod it starts a PodProxy (the
// listener set inside the pod's netns); a pod whose listeners cannot be opened stays pending
// and is retried every pendingRetryMs. Readiness: the snapshot was received and nothing is
// pending (and we are not draining). Drain: stop accepting everywhere, wait for connections up
// to a deadline, reset the rest.
import type { Netns } from "../sys/index.ts";
import type { ProxyConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { ProxyStartError, type WorkloadIdentity, type WorkloadManager } from "../zds/types.ts";
import type { InboundAuthorizer } from "./authorize.ts";
import type { HboneContext } from "./hbone-context.ts";
import { LISTENER_KINDS, proxyPorts, type ListenerKind } from "./listeners.ts";
import { PodProxy, type PodProxyDeps } from "./pod.ts";
import { ConnectionTable } from "./records.ts";

interface PendingPod {
  uid: string;
  info: WorkloadIdentity | undefined;
  netns: Netns;
  error: string;
  since: number;
  attempts: number;
  timer: ReturnType<typeof setInterval>;
}

export interface Readiness {
  ready: boolean;
  /** Why not ready ("ready" when ready). */
  reason: string;
}

export interface PodStatus {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  state: "running" | "pending";
  netns: string;
  listeners: Array<{ kind: string; address: string; port: number }>;
  /** The pod's own addresses (loopback and link-local excluded), when running. */
  ips: string[];
  connections: number;
  error?: string;
  attempts?: number;
}

/** Pod proxy lifecycle events, for the workload-manager metrics (started/stopped totals). */
export interface ManagerEvents {
  /** A pod's listeners are open (first start or a pending pod's successful retry). */
  podStarted?(pod: PodProxy): void;
  /** A running pod's proxy stopped (pod deleted, netns replaced, drain, immediate stop). */
  podStopped?(pod: PodProxy): void;
}

export interface ManagerOptions {
  cfg: ProxyConfig;
  log: Logger;
  table?: ConnectionTable;
  /**
   * This manager's data-plane thread (index 0 = main) of `count`: its default table numbers its
   * connections index+1, index+1+count, … so ids stay unique across threads.
   */
  thread?: { index: number; count: number };
  kinds?: readonly ListenerKind[];
  events?: ManagerEvents;
  /** This thread's inbound authorization (authorize.ts). */
  authorizer?: InboundAuthorizer;
  /** This thread's HBONE state (hbone-context.ts), when the proxy has certificates. */
  hbone?: HboneContext;
}

export class ProxyWorkloadManager implements WorkloadManager {
  readonly table: ConnectionTable;
  readonly #pods = new Map<string, PodProxy>();
  readonly #pending = new Map<string, PendingPod>();
  readonly #deps: PodProxyDeps;
  readonly #log: Logger;
  readonly #events: ManagerEvents;
  /** Running pods by their own (non-loopback) addresses: who is behind a peer address. */
  readonly #byIp = new Map<string, PodProxy>();
  #snapshotDone = false;
  #zdsConnected = false;
  #draining = false;
  #readinessListeners: Array<(r: Readiness) => void> = [];

  constructor(opts: ManagerOptions) {
    this.#log = opts.log;
    this.#events = opts.events ?? {};
    this.table =
      opts.table ??
      new ConnectionTable({
        firstId: (opts.thread?.index ?? 0) + 1,
        idStep: opts.thread?.count ?? 1,
        onObserverError: (e) => opts.log.warn("connection observer failed", { error: (e as Error).message }),
      });
    const kinds = opts.kinds ?? LISTENER_KINDS;
    this.#deps = { cfg: opts.cfg, table: this.table, log: opts.log, kinds, proxyPorts: proxyPorts(opts.cfg, kinds), authorizer: opts.authorizer, hbone: opts.hbone };
  }

  // ---- WorkloadManager ------------------------------------------------------------------------

  async add(uid: string, info: WorkloadIdentity | undefined, netns: Netns): Promise<void> {
    if (this.#draining) {
      netns.close();
      throw new ProxyStartError("proxy is draining");
    }
    const running = this.#pods.get(uid);
    // The replaced pod's listeners close on their relay thread; waited for at the end only, so
    // this method's changes to the pod maps stay synchronous (messages are not awaited in order).
    let replaced: Promise<void> | undefined;
    if (running) {
      if (running.netns.key === netns.key) {
        netns.close();
        this.#log.debug("pod already served in this netns", { uid });
        return;
      }
      this.#log.info("pod's netns changed; replacing its proxy", { uid, old: running.netns.key, new: netns.key });
      replaced = this.#removeRunning(uid, running);
    }
    const pending = this.#pending.get(uid);
    if (pending) {
      if (pending.netns.key === netns.key) {
        netns.close();
        // Same pod, still pending: try now, and report the outcome to the agent.
        if (this.#tryPending(pending)) return;
        throw new ProxyStartError(pending.error);
      }
      this.#dropPending(pending);
    }
    try {
      this.#start(uid, info, netns);
      await replaced;
    } catch (e) {
      const error = (e as Error).message;
      const p: PendingPod = {
        uid,
        info,
        netns,
        error,
        since: Date.now(),
        attempts: 1,
        timer: setInterval(() => this.#tryPending(p), this.#deps.cfg.pendingRetryMs),
      };
      this.#pending.set(uid, p);
      this.#log.warn("pod proxy failed to start; pending, will retry", { uid, pod: podName(info), error, retryMs: this.#deps.cfg.pendingRetryMs });
      this.#notify();
      throw new ProxyStartError(error, { cause: e });
    }
  }

  keep(uid: string): void {
    // The agent lost this pod's netns but the pod lives: nothing to start; the client's snapshot
    // reconciliation simply does not delete it.
    this.#log.debug("keep workload", { uid, known: this.#pods.has(uid) || this.#pending.has(uid) });
  }

  async del(uid: string): Promise<void> {
    const running = this.#pods.get(uid);
    const closed = running ? this.#removeRunning(uid, running) : undefined;
    const pending = this.#pending.get(uid);
    if (pending) this.#dropPending(pending);
    if (running || pending) {
      this.#log.info("pod removed", { uid, pod: running ? podName(running.ref) : podName(pending?.info) });
      this.#notify();
    }
    // The ack then means the pod's listeners are closed, not only asked to close.
    await closed;
  }

  uids(): Iterable<string> {
    return [...this.#pods.keys(), ...this.#pending.keys()];
  }

  connectionStarted(): void {
    this.#zdsConnected = true;
    // Like ztunnel: a new connection brings a fresh snapshot; pending retries are forgotten.
    for (const p of [...this.#pending.values()]) this.#dropPending(p);
    this.#notify();
  }

  snapshotDone(): void {
    this.#snapshotDone = true;
    this.#log.info("snapshot received", { pods: this.#pods.size, pending: this.#pending.size });
    this.#notify();
  }

  connectionLost(): void {
    this.#zdsConnected = false;
    this.#notify();
  }

  // ---- status ---------------------------------------------------------------------------------

  readiness(): Readiness {
    if (this.#draining) return { ready: false, reason: "draining" };
    if (!this.#snapshotDone) return { ready: false, reason: this.#zdsConnected ? "waiting for the ZDS snapshot" : "not connected to the node agent (ZDS)" };
    if (this.#pending.size > 0) {
      const names = [...this.#pending.values()].map((p) => `${podName(p.info) || p.uid}: ${p.error}`);
      return { ready: false, reason: `${this.#pending.size} pod(s) pending: ${names.join("; ")}` };
    }
    return { ready: true, reason: "ready" };
  }

  /** Called on every readiness-relevant change. */
  onReadinessChange(fn: (r: Readiness) => void): void {
    this.#readinessListeners.push(fn);
  }

  get zdsConnected(): boolean {
    return this.#zdsConnected;
  }

  get draining(): boolean {
    return this.#draining;
  }

  pod(uid: string): PodProxy | undefined {
    return this.#pods.get(uid);
  }

  /**
   * The workload labels of a peer address when it is a pod this proxy serves (the metrics' peer
   * lookup: e.g. the destination of an outbound connection to another pod of this node). Once per
   * connection.
   * "::ffff:10.0.0.1" (a peer of a dual-stack listener) counts as 10.0.0.1.
   */
  peerWorkload(ip: string): { name: string; namespace: string; serviceAccount: string } | undefined {
    const p = this.#byIp.get(ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip);
    return p ? { name: p.ref.name, namespace: p.ref.namespace, serviceAccount: p.ref.serviceAccount } : undefined;
  }

  /** Running ("active") and pending pods, for the workload-manager gauges. */
  counts(): { active: number; pending: number } {
    return { active: this.#pods.size, pending: this.#pending.size };
  }

  pods(): PodStatus[] {
    const out: PodStatus[] = [];
    for (const p of this.#pods.values()) {
      out.push({
        ...p.ref,
        state: "running",
        netns: p.netns.key,
        listeners: p.listeners.map((l) => ({ kind: l.kind, address: l.address, port: l.port })),
        ips: podIps(p),
        connections: p.relays.size,
      });
    }
    for (const p of this.#pending.values()) {
      out.push({
        uid: p.uid,
        name: p.info?.name ?? "",
        namespace: p.info?.namespace ?? "",
        serviceAccount: p.info?.serviceAccount ?? "",
        state: "pending",
        netns: p.netns.key,
        listeners: [],
        ips: [],
        connections: 0,
        error: p.error,
        attempts: p.attempts,
      });
    }
    return out;
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  /**
   * Graceful stop: every pod stops accepting at once (a second proxy sharing the ports takes
   * the new connections), open connections get until `deadlineMs` to finish, then the rest are
   * reset. Resolves with how many were reset. Pods are released afterwards.
   */
  async drain(deadlineMs: number): Promise<{ finished: number; reset: number }> {
    this.#draining = true;
    this.#notify();
    for (const p of this.#pending.values()) this.#dropPending(p);
    // Every connection a listener accepted before closing must be in the table before we wait
    // for the table to empty (the splice relay thread hands them over asynchronously).
    await Promise.all([...this.#pods.values()].map((p) => p.stopAccepting()));
    const open = this.table.size;
    this.#log.info("draining: listeners closed", { pods: this.#pods.size, connections: open, deadlineMs });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = await Promise.race([
      this.table.whenIdle().then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), deadlineMs))),
    ]);
    clearTimeout(timer);
    const reset = timedOut ? this.table.size : 0;
    if (timedOut) this.#log.warn("drain deadline reached; resetting the remaining connections", { connections: reset });
    for (const [uid, p] of this.#pods) {
      this.#pods.delete(uid);
      this.#stopped(p, "drained");
    }
    return { finished: open - reset, reset };
  }

  /** Immediate stop: everything closed and reset now. */
  closeAll(): void {
    this.#draining = true;
    for (const p of [...this.#pending.values()]) this.#dropPending(p);
    for (const [uid, p] of this.#pods) {
      this.#pods.delete(uid);
      this.#stopped(p, "drained");
    }
    this.#notify();
  }

  // ---- internals ------------------------------------------------------------------------------

  #start(uid: string, info: WorkloadIdentity | undefined, netns: Netns): PodProxy {
    const pod = PodProxy.start(uid, info, netns, this.#deps);
    this.#pods.set(uid, pod);
    for (const ip of podIps(pod)) this.#byIp.set(ip, pod);
    this.#emit(() => this.#events.podStarted?.(pod));
    this.#log.info("pod proxy started", {
      uid,
      pod: podName(info),
      netns: netns.key,
      listeners: pod.listeners.map((l) => `${l.kind}@${l.address.includes(":") ? `[${l.address}]` : l.address}:${l.port}`).join(","),
      tcpMigrateReq: pod.net.migrateReq,
    });
    return pod;
  }

  /** One retry of a pending pod; true when it now runs. */
  #tryPending(p: PendingPod): boolean {
    if (this.#pending.get(p.uid) !== p) return false;
    p.attempts++;
    try {
      this.#start(p.uid, p.info, p.netns);
    } catch (e) {
      p.error = (e as Error).message;
      this.#log.debug("pending pod still failing", { uid: p.uid, attempts: p.attempts, error: p.error });
      return false;
    }
    clearInterval(p.timer);
    this.#pending.delete(p.uid);
    this.#log.info("pending pod now running", { uid: p.uid, attempts: p.attempts });
    this.#notify();
    return true;
  }

  #dropPending(p: PendingPod): void {
    clearInterval(p.timer);
    if (this.#pending.get(p.uid) === p) this.#pending.delete(p.uid);
    p.netns.close();
  }

  /** Resolves once the pod's listeners are closed. */
  #removeRunning(uid: string, pod: PodProxy): Promise<void> {
    this.#pods.delete(uid);
    return this.#stopped(pod, "deleted");
  }

  /**
   * Closes a running pod's proxy (already out of #pods) and reports it stopped; the promise
   * resolves once its listeners are closed.
   */
  #stopped(pod: PodProxy, how: "deleted" | "drained"): Promise<void> {
    if (pod.closed) return Promise.resolve();
    for (const ip of podIps(pod)) if (this.#byIp.get(ip) === pod) this.#byIp.delete(ip);
    const closed = pod.close(how);
    this.#emit(() => this.#events.podStopped?.(pod));
    return closed;
  }

  #emit(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.#log.warn("pod event listener failed", { error: (e as Error).message });
    }
  }

  #notify(): void {
    if (this.#readinessListeners.length === 0) return;
    const r = this.readiness();
    for (const fn of this.#readinessListeners) fn(r);
  }
}

/** A pod's own addresses, as Kubernetes would list them: loopback and link-local excluded. */
export function podIps(p: PodProxy): string[] {
  return p.net.addresses.filter((a) => !a.startsWith("127.") && a !== "::1" && !a.startsWith("169.254.") && !/^fe[89ab][0-9a-f]:/i.test(a));
}

function podName(info: { name?: string; namespace?: string } | undefined): string {
  if (!info || (!info.name && !info.namespace)) return "";
  return `${info.namespace}/${info.name}`;
}
