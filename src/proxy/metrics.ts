// The proxy's Prometheus metrics, on prom-client. Names and labels follow ztunnel's
// (https://github.com/istio/ztunnel/blob/master/src/proxy/metrics.rs for the traffic metrics,
// https://github.com/istio/ztunnel/blob/master/src/inpod/metrics.rs for the workload manager's)
// so Istio's dashboards and queries carry over:
//
//   istio_tcp_connections_opened_total   {traffic labels}
//   istio_tcp_connections_closed_total   {traffic labels}  (response_flags set at close)
//   istio_tcp_sent_bytes_total           {traffic labels}  bytes destination → source ("response")
//   istio_tcp_received_bytes_total       {traffic labels}  bytes source → destination ("request")
//   istio_tcp_connections_failed_total   {traffic labels}  connections that never relayed (connect failure, policy denial (DENY), loop, error)
//   istio_build                          {component, tag}  (src/admin/registry.ts)
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
import { Counter, Gauge, type Registry } from "prom-client";
import { responseFlagsFor, TRAFFIC_LABELS, type TrafficLabelName, type TrafficLabels } from "./traffic-labels.ts";

/** How a connection ended (the proxy's CloseHow). */
export type CloseReason = "done" | "reset" | "connect_failed" | "refused_loop" | "policy_denied" | "drained" | "deleted" | "error";

/** ztunnel counts a policy denial as failed too (response_flags DENY, its record_internal). */
const FAILED_BEFORE_RELAY: ReadonlySet<string> = new Set(["connect_failed", "refused_loop", "policy_denied", "error"]);

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
    help: "Connections that did not end with a clean close of both directions, by reason (connect_failed, refused_loop, policy_denied, error, reset, drained, deleted)",
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
// workload manager (ztunnel registers these under the prefix workload_manager, in
// https://github.com/istio/ztunnel/blob/master/src/app.rs)

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

