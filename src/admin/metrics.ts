// Prometheus metrics for the proxy (and the agent's helpers), on prom-client. Names and labels
// follow ztunnel (reference/ztunnel.md §2.5) so Istio's dashboards and queries carry over:
//
//   istio_tcp_connections_opened_total   {traffic labels}
//   istio_tcp_connections_closed_total   {traffic labels}  (response_flags set at close)
//   istio_tcp_sent_bytes_total           {traffic labels}  bytes destination → source ("response")
//   istio_tcp_received_bytes_total       {traffic labels}  bytes source → destination ("request")
//   istio_tcp_connections_failed_total   {traffic labels}  connections that never relayed (connect failure, loop, error)
//   istio_build                          {component, tag}
//   nshub_connection_failures_total      {direction, reason}  every close that was not a clean FIN/FIN
//   workload_manager_active_proxies / _pending_proxies (gauges), workload_manager_proxies_started_total
//   / _stopped_total (counters). ztunnel's gauges are named *_proxy_count; Prometheus' linter
//   (promtool check metrics) rejects a "_count" suffix on a gauge, so ours drop it.
//
// Cost on the data path. prom-client's labelled child (`counter.labels({...})`) does NOT cache
// the label hash: every `child.inc(n)` re-hashes and re-validates all 23 labels. Measured with
// scripts/bench-metrics.ts (Bun 1.4.5, 2-vCPU AMD EPYC VM, best of 5):
//   prom-client child.inc(n), labels resolved once ..... ~1.7–2.5 µs per update
//   prom-client counter.inc(n), no labels .............. ~21–37 ns
//   ConnectionHandle.sent(n) (below) ................... ~10 ns (a bare method call: ~5 ns)
// At 20k chunks/s per direction prom-client's child would cost ~5-10% of a core; so a handle only
// adds to two plain numbers on the hot path, and pending bytes — and the opened/closed/failed
// counts, which would otherwise cost 4 prom-client updates per connection — move into the
// prom-client counters when Prometheus scrapes (the counters' collect hook), summed per label
// set first: ~42 ns per live connection per scrape when a pod's
// connections share a label set, ~2.4 µs when every connection has its own. Scrapes see exact
// byte counts. With the proxy's records (./connection-observer.ts) even the handle call goes
// away: totals are read from the records at scrape time.
// A full scrape with 1000 distinct series takes ~40 ms of the (single) event loop: that is
// prom-client's text rendering, off the per-chunk path but worth watching (ztunnel keeps metrics
// on their own port for the same reason).
import { Counter, Gauge, Registry } from "prom-client";
import pkg from "../../package.json" with { type: "json" };
import { registerProcessMetrics, type ProcessMetrics, type ProcessMetricsOptions } from "./process-metrics.ts";

// ---------------------------------------------------------------------------------------------
// registry

export interface MetricsRegistry {
  readonly registry: Registry;
  /** Stops background samplers (event-loop lag). */
  stop(): void;
}

/**
 * A registry with `istio_build{component,tag}` and the process metrics. Pass `process: false`
 * for a registry without samplers (tests that compare exact output).
 */
export function createRegistry(opts: { component?: string; process?: boolean | ProcessMetricsOptions } = {}): MetricsRegistry {
  const registry = new Registry();
  const build = new Gauge({ name: "istio_build", help: "Istio component build info", labelNames: ["component", "tag"] as const, registers: [registry] });
  build.set({ component: opts.component ?? "nshub", tag: pkg.version }, 1);
  let proc: ProcessMetrics | undefined;
  if (opts.process !== false) proc = registerProcessMetrics(registry, typeof opts.process === "object" ? opts.process : {});
  return { registry, stop: () => proc?.stop() };
}

// ---------------------------------------------------------------------------------------------
// traffic labels (ztunnel's CommonTrafficLabels, without the locality labels, which ztunnel
// only emits when the locality is known — we never know it)

export const TRAFFIC_LABELS = [
  "reporter",
  "source_workload",
  "source_canonical_service",
  "source_canonical_revision",
  "source_workload_namespace",
  "source_principal",
  "source_app",
  "source_version",
  "source_cluster",
  "destination_service",
  "destination_service_namespace",
  "destination_service_name",
  "destination_workload",
  "destination_canonical_service",
  "destination_canonical_revision",
  "destination_workload_namespace",
  "destination_principal",
  "destination_app",
  "destination_version",
  "destination_cluster",
  "request_protocol",
  "response_flags",
  "connection_security_policy",
] as const;

export type TrafficLabelName = (typeof TRAFFIC_LABELS)[number];
export type TrafficLabels = Record<TrafficLabelName, string>;
export type Reporter = "source" | "destination";
/** `-` none; `CONNECT` upstream connect failed; `DENY` policy (not produced yet). */
export type ResponseFlags = "-" | "CONNECT" | "DENY";

export const UNKNOWN = "unknown";

/** Fills every label the caller left out: `unknown`, protocol `tcp`, flags `-`, policy `unknown`. */
export function trafficLabels(partial: Partial<TrafficLabels> & { reporter: Reporter }): TrafficLabels {
  const out = {} as TrafficLabels;
  for (const name of TRAFFIC_LABELS) {
    const v = partial[name];
    out[name] = v === undefined || v === "" ? UNKNOWN : v;
  }
  if (partial.request_protocol === undefined) out.request_protocol = "tcp";
  if (partial.response_flags === undefined) out.response_flags = "-";
  return out;
}

/** A workload as the traffic labels see it. `workload` defaults to the pod name. */
export interface LabelWorkload {
  name: string;
  namespace: string;
  serviceAccount?: string;
  /** The owner's name (e.g. the Deployment), when known; ztunnel's workload_name. */
  workload?: string;
  /** app.kubernetes.io/name or app label (canonical service), when known. */
  canonicalService?: string;
  canonicalRevision?: string;
}

/**
 * Labels for one connection the proxy relays, the way ztunnel fills them without mTLS: an
 * outbound connection is reported by its source (the enrolled pod), an inbound one by its
 * destination. The enrolled pod's identity is known from ZDS; the peer only when the caller
 * can tell (e.g. another pod on this node). Principals: the local pod's identity is given for
 * the destination side (ztunnel takes it from the workload); source_principal stays `unknown`
 * (ztunnel only takes it from an mTLS peer certificate, and there is no mTLS yet).
 */
export function connectionLabels(opts: {
  direction: "inbound" | "outbound";
  pod: LabelWorkload;
  peer?: LabelWorkload;
  trustDomain?: string;
  cluster?: string;
}): TrafficLabels {
  const td = opts.trustDomain ?? "cluster.local";
  const side = (prefix: "source" | "destination", w: LabelWorkload | undefined): Partial<TrafficLabels> => {
    if (!w) return {};
    const canonical = w.canonicalService;
    const l: Partial<TrafficLabels> = {
      [`${prefix}_workload`]: w.workload ?? w.name,
      [`${prefix}_workload_namespace`]: w.namespace,
      [`${prefix}_canonical_service`]: canonical,
      [`${prefix}_canonical_revision`]: w.canonicalRevision,
      [`${prefix}_app`]: canonical,
      [`${prefix}_version`]: w.canonicalRevision,
      [`${prefix}_cluster`]: opts.cluster,
    };
    if (prefix === "destination" && w.serviceAccount) l.destination_principal = `spiffe://${td}/ns/${w.namespace}/sa/${w.serviceAccount}`;
    return l;
  };
  const [src, dst] = opts.direction === "outbound" ? [opts.pod, opts.peer] : [opts.peer, opts.pod];
  const reporter: Reporter = opts.direction === "outbound" ? "source" : "destination";
  return trafficLabels({ ...side("source", src), ...side("destination", dst), reporter });
}

// ---------------------------------------------------------------------------------------------
// proxy metrics

/** How a connection ended (the proxy's CloseHow). */
export type CloseReason = "done" | "reset" | "connect_failed" | "refused_loop" | "drained" | "deleted" | "error";

const FAILED_BEFORE_RELAY: ReadonlySet<string> = new Set(["connect_failed", "refused_loop", "error"]);

export function responseFlagsFor(reason: string): ResponseFlags {
  return reason === "connect_failed" ? "CONNECT" : "-";
}

export interface ProxyMetrics {
  readonly registry: Registry;
  readonly opened: Counter<TrafficLabelName>;
  readonly closed: Counter<TrafficLabelName>;
  readonly sentBytes: Counter<TrafficLabelName>;
  readonly receivedBytes: Counter<TrafficLabelName>;
  readonly failed: Counter<TrafficLabelName>;
  readonly failures: Counter<"direction" | "reason">;
  readonly connections: ConnectionMetrics;
  readonly workloads: WorkloadManagerMetrics;
}

export function createProxyMetrics(registry: Registry): ProxyMetrics {
  const registers = [registry];
  const labelNames = TRAFFIC_LABELS;
  // Pending bytes of live connections are flushed when either byte counter is collected.
  let connections: ConnectionMetrics | undefined;
  const flush = () => connections?.flush();
  const opened = new Counter({ name: "istio_tcp_connections_opened_total", help: "The total number of TCP connections opened", labelNames, registers, collect: flush });
  const closed = new Counter({ name: "istio_tcp_connections_closed_total", help: "The total number of TCP connections closed", labelNames, registers, collect: flush });
  const receivedBytes = new Counter({
    name: "istio_tcp_received_bytes_total",
    help: "The size of total bytes received during request in case of a TCP connection",
    labelNames,
    registers,
    collect: flush,
  });
  const sentBytes = new Counter({
    name: "istio_tcp_sent_bytes_total",
    help: "The size of total bytes sent during response in case of a TCP connection",
    labelNames,
    registers,
    collect: flush,
  });
  const failed = new Counter({
    name: "istio_tcp_connections_failed_total",
    help: "The total number of TCP connections that failed before any byte was relayed (unstable)",
    labelNames,
    registers,
    collect: flush,
  });
  const failures = new Counter({
    name: "nshub_connection_failures_total",
    help: "Connections that did not end with a clean close of both directions, by reason (connect_failed, refused_loop, error, reset, drained, deleted)",
    labelNames: ["direction", "reason"] as const,
    registers,
  });
  connections = new ConnectionMetrics({ opened, closed, sentBytes, receivedBytes, failed, failures });
  const workloads = new WorkloadManagerMetrics(registry);
  return { registry, opened, closed, sentBytes, receivedBytes, failed, failures, connections, workloads };
}

type Counters = Pick<ProxyMetrics, "opened" | "closed" | "sentBytes" | "receivedBytes" | "failed" | "failures">;

/**
 * Per-connection metric handles. `open` counts the connection and fixes its label set once;
 * the handle's `sent`/`received` only add to plain numbers (see the cost note at the top).
 */
export class ConnectionMetrics {
  readonly #c: Counters;
  readonly #live = new Set<ConnectionHandle>();
  readonly #interned = new Map<string, TrafficLabels>();
  readonly #internedSets = new WeakSet<TrafficLabels>();
  /**
   * Counts and bytes not yet in the prom-client counters, per interned label set: a connection's
   * open and close only add here, the counters are updated once per series at scrape (each
   * prom-client update re-hashes 23 labels; per connection that was 4 updates per relay).
   */
  readonly #pending = new Map<TrafficLabels, PendingCounts>();

  constructor(counters: Counters) {
    this.#c = counters;
  }

  /**
   * A connection was accepted. `pull`, when given, is called before every flush so the handle
   * can read totals kept elsewhere (the proxy's ConnectionRecord) via `handle.setTotals` —
   * then nothing at all runs per chunk.
   */
  open(labels: TrafficLabels, opts: { direction?: "inbound" | "outbound"; pull?: (h: ConnectionHandle) => void } = {}): ConnectionHandle {
    const interned = this.intern(labels);
    this.pendingOf(interned).opened++;
    const direction = opts.direction ?? (labels.reporter === "source" ? "outbound" : "inbound");
    const h = new ConnectionHandle(this, this.#c, interned, direction, opts.pull);
    this.#live.add(h);
    return h;
  }

  /**
   * Moves every live connection's pending bytes into the counters (called on scrape). Bytes are
   * summed per label set first: connections of one pod to unknown peers share one label set,
   * so a scrape costs one prom-client update per series, not per connection.
   */
  flush(): void {
    for (const h of this.#live) h.takeInto(this);
    for (const [labels, p] of this.#pending) {
      if (p.opened > 0) this.#c.opened.inc(labels, p.opened);
      if (p.closed > 0) this.#c.closed.inc(labels, p.closed);
      if (p.failed > 0) this.#c.failed.inc(labels, p.failed);
      if (p.sent > 0) this.#c.sentBytes.inc(labels, p.sent);
      if (p.received > 0) this.#c.receivedBytes.inc(labels, p.received);
    }
    this.#pending.clear();
  }

  /** @internal The pending counts of one (interned) label set. */
  pendingOf(labels: TrafficLabels): PendingCounts {
    let p = this.#pending.get(labels);
    if (!p) {
      p = { opened: 0, closed: 0, failed: 0, sent: 0, received: 0 };
      this.#pending.set(labels, p);
    }
    return p;
  }

  /** One frozen object per distinct label set (what flush groups by); an interned set is returned as is. */
  intern(labels: TrafficLabels): TrafficLabels {
    if (this.#internedSets.has(labels)) return labels;
    let key = "";
    for (const n of TRAFFIC_LABELS) key += labels[n] + "\u0000";
    let v = this.#interned.get(key);
    if (!v) {
      v = Object.freeze({ ...labels });
      this.#interned.set(key, v);
      this.#internedSets.add(v);
    }
    return v;
  }

  get live(): number {
    return this.#live.size;
  }

  /** @internal */
  forget(h: ConnectionHandle): void {
    this.#live.delete(h);
  }
}

interface PendingCounts {
  opened: number;
  closed: number;
  failed: number;
  sent: number;
  received: number;
}

export class ConnectionHandle {
  /** Bytes destination → source not yet in istio_tcp_sent_bytes_total. */
  pendingSent = 0;
  /** Bytes source → destination not yet in istio_tcp_received_bytes_total. */
  pendingReceived = 0;
  #totalSent = 0;
  #totalReceived = 0;
  #closed = false;
  readonly #owner: ConnectionMetrics;
  readonly #c: Counters;
  readonly #pull: ((h: ConnectionHandle) => void) | undefined;
  readonly labels: TrafficLabels;
  readonly direction: "inbound" | "outbound";

  constructor(owner: ConnectionMetrics, c: Counters, labels: TrafficLabels, direction: "inbound" | "outbound", pull?: (h: ConnectionHandle) => void) {
    this.#owner = owner;
    this.#c = c;
    this.labels = labels;
    this.direction = direction;
    this.#pull = pull;
  }

  /** n bytes went destination → source (the response direction). Hot path: one addition. */
  sent(n: number): void {
    this.pendingSent += n;
  }

  /** n bytes went source → destination (the request direction). Hot path: one addition. */
  received(n: number): void {
    this.pendingReceived += n;
  }

  /** Totals so far (sent = destination → source, received = source → destination); only increases count. */
  setTotals(sent: number, received: number): void {
    const ds = sent - this.#totalSent - this.pendingSent;
    const dr = received - this.#totalReceived - this.pendingReceived;
    if (ds > 0) this.pendingSent += ds;
    if (dr > 0) this.pendingReceived += dr;
  }

  /** @internal Pending bytes [sent, received], now counted as flushed. */
  take(): [number, number] {
    this.#pull?.(this);
    const s = this.pendingSent;
    const r = this.pendingReceived;
    this.#totalSent += s;
    this.#totalReceived += r;
    this.pendingSent = 0;
    this.pendingReceived = 0;
    return [s, r];
  }

  /** @internal Moves this connection's pending bytes into its label set's pending sums. */
  takeInto(owner: ConnectionMetrics): void {
    const [s, r] = this.take();
    if (s === 0 && r === 0) return;
    const p = owner.pendingOf(this.labels);
    p.sent += s;
    p.received += r;
  }

  /** Counts the close (with ztunnel's response flag), any failure, and the last bytes. Idempotent. */
  close(reason: CloseReason | string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.takeInto(this.#owner);
    this.#owner.forget(this);
    const flags = responseFlagsFor(reason);
    const labels = flags === this.labels.response_flags ? this.labels : this.#owner.intern({ ...this.labels, response_flags: flags });
    const p = this.#owner.pendingOf(labels);
    p.closed++;
    if (FAILED_BEFORE_RELAY.has(reason)) p.failed++;
    if (reason !== "done") this.#c.failures.inc({ direction: this.direction, reason });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes counted so far, flushed or not. */
  get totals(): { sent: number; received: number } {
    return { sent: this.#totalSent + this.pendingSent, received: this.#totalReceived + this.pendingReceived };
  }
}

// ---------------------------------------------------------------------------------------------
// workload manager (ztunnel registers these under the prefix workload_manager)

export class WorkloadManagerMetrics {
  readonly active: Gauge;
  readonly pending: Gauge;
  readonly startedTotal: Counter;
  readonly stoppedTotal: Counter;
  #counts: (() => { active: number; pending: number }) | undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    const self = this;
    this.active = new Gauge({
      name: "workload_manager_active_proxies",
      help: "The number of workloads with active proxies (ztunnel: workload_manager_active_proxy_count)",
      registers,
      collect() {
        if (self.#counts) this.set(self.#counts().active);
      },
    });
    this.pending = new Gauge({
      name: "workload_manager_pending_proxies",
      help: "The number of workloads whose proxy failed to start and is retried (ztunnel: workload_manager_pending_proxy_count)",
      registers,
      collect() {
        if (self.#counts) this.set(self.#counts().pending);
      },
    });
    this.startedTotal = new Counter({ name: "workload_manager_proxies_started_total", help: "The total number of proxies that were started", registers });
    this.stoppedTotal = new Counter({ name: "workload_manager_proxies_stopped_total", help: "The total number of proxies that were stopped", registers });
  }

  /** Gauges read `fn` at every scrape (e.g. the manager's pod maps' sizes). */
  bindCounts(fn: () => { active: number; pending: number }): void {
    this.#counts = fn;
  }

  /** Or set them on every change. */
  setCounts(active: number, pending: number): void {
    this.active.set(active);
    this.pending.set(pending);
  }

  started(): void {
    this.startedTotal.inc();
  }

  stopped(): void {
    this.stoppedTotal.inc();
  }
}

// ---------------------------------------------------------------------------------------------
// agent metrics (src/agent/admin.ts binds them to the agent)

export interface AgentMetrics {
  readonly registry: Registry;
  /** nshub_agent_pods{state}: pods in the agent's cache by state. */
  readonly pods: Gauge<"state">;
  /** nshub_agent_cni_requests_total{method,result}: event API requests (CNI plugin and CLI). */
  readonly cniRequests: Counter<"method" | "result">;
  /** nshub_agent_zds_connections: proxies connected over ZDS. */
  readonly zdsConnections: Gauge;
  /** nshub_agent_ready: 1 once the pod cache is rebuilt and the agent serves. */
  readonly ready: Gauge;
  /** nshub_agent_state_write_errors_total */
  readonly stateWriteErrors: Counter;
  /**
   * Pod counts by state, read at each scrape. `states` are always exported (0 when absent),
   * so a state that empties shows 0 rather than disappearing.
   */
  bindPodCounts(fn: () => Record<string, number>, states?: readonly string[]): void;
  cniRequest(method: string, result: string): void;
  /**
   * Or: the agent keeps the request counts itself and they are read at each scrape (totals by
   * method and result). Once bound, the counter shows exactly what `fn` returns.
   */
  bindCniRequests(fn: () => Iterable<{ method: string; result: string; count: number }>): void;
  /** State-file write errors so far, read at each scrape. */
  bindStateWriteErrors(fn: () => number): void;
  /** Read at each scrape (or call zdsConnections.set yourself). */
  bindZdsConnections(fn: () => number): void;
  bindReady(fn: () => boolean): void;
}

export function createAgentMetrics(registry: Registry): AgentMetrics {
  const registers = [registry];
  let podCounts: (() => Record<string, number>) | undefined;
  let podStates: readonly string[] = [];
  let zdsCount: (() => number) | undefined;
  let isReady: (() => boolean) | undefined;
  let requestCounts: (() => Iterable<{ method: string; result: string; count: number }>) | undefined;
  let writeErrors: (() => number) | undefined;
  const pods = new Gauge({
    name: "nshub_agent_pods",
    help: "Pods in the agent's cache, by state",
    labelNames: ["state"] as const,
    registers,
    collect() {
      if (!podCounts) return;
      this.reset();
      const counts = podCounts();
      for (const state of podStates) this.set({ state }, counts[state] ?? 0);
      for (const [state, n] of Object.entries(counts)) if (!podStates.includes(state)) this.set({ state }, n);
    },
  });
  const cniRequests = new Counter({
    name: "nshub_agent_cni_requests_total",
    help: "Event API requests (CNI plugin and CLI), by method and result",
    labelNames: ["method", "result"] as const,
    registers,
    collect() {
      if (!requestCounts) return;
      this.reset();
      for (const r of requestCounts()) this.inc({ method: r.method, result: r.result }, r.count);
    },
  });
  const zdsConnections = new Gauge({
    name: "nshub_agent_zds_connections",
    help: "Proxies connected to the ZDS socket",
    registers,
    collect() {
      if (zdsCount) this.set(zdsCount());
    },
  });
  const ready = new Gauge({
    name: "nshub_agent_ready",
    help: "1 once the pod cache is rebuilt and the agent serves",
    registers,
    collect() {
      if (isReady) this.set(isReady() ? 1 : 0);
    },
  });
  const stateWriteErrors = new Counter({
    name: "nshub_agent_state_write_errors_total",
    help: "Failed writes of the state file",
    registers,
    collect() {
      if (!writeErrors) return;
      this.reset();
      this.inc(writeErrors());
    },
  });
  return {
    registry,
    pods,
    cniRequests,
    zdsConnections,
    ready,
    stateWriteErrors,
    bindPodCounts: (fn, states = []) => {
      podCounts = fn;
      podStates = states;
    },
    cniRequest: (method, result) => cniRequests.inc({ method, result }),
    bindCniRequests: (fn) => void (requestCounts = fn),
    bindStateWriteErrors: (fn) => void (writeErrors = fn),
    bindZdsConnections: (fn) => void (zdsCount = fn),
    bindReady: (fn) => void (isReady = fn),
  };
}
