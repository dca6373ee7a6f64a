// The agent's metrics (src/agent/admin.ts binds them to the agent and serves them on /metrics),
// on a registry from src/admin/registry.ts (istio_build and the process metrics):
//   nshub_agent_pods{state}, nshub_agent_cni_requests_total{method,result},
//   nshub_agent_zds_connections, nshub_agent_ready, nshub_agent_state_write_errors_total,
//   nshub_agent_pods_reconciled_total{reason}
// The agent binds each to its own counts (bind*), read at scrape time.
import { Counter, Gauge, type Registry } from "prom-client";

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
  /** nshub_agent_pods_reconciled_total{reason}: pods removed without a CNI DEL (reason "netns_gone": src/agent/reconcile.ts). */
  readonly podsReconciled: Counter<"reason">;
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
  /** Pods removed without a CNI DEL so far, by reason, read at each scrape (every reason given is exported, 0 included). */
  bindPodsReconciled(fn: () => Iterable<[reason: string, count: number]>): void;
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
  let reconciledCounts: (() => Iterable<[string, number]>) | undefined;
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
  const podsReconciled = new Counter({
    name: "nshub_agent_pods_reconciled_total",
    help: "Pods removed from the agent and the proxy without a CNI DEL, by reason (netns_gone: the pod's network namespace died)",
    labelNames: ["reason"] as const,
    registers,
    collect() {
      if (!reconciledCounts) return;
      this.reset();
      for (const [reason, n] of reconciledCounts()) this.inc({ reason }, n);
    },
  });
  return {
    registry,
    pods,
    cniRequests,
    zdsConnections,
    ready,
    stateWriteErrors,
    podsReconciled,
    bindPodCounts: (fn, states = []) => {
      podCounts = fn;
      podStates = states;
    },
    cniRequest: (method, result) => cniRequests.inc({ method, result }),
    bindCniRequests: (fn) => void (requestCounts = fn),
    bindStateWriteErrors: (fn) => void (writeErrors = fn),
    bindPodsReconciled: (fn) => void (reconciledCounts = fn),
    bindZdsConnections: (fn) => void (zdsCount = fn),
    bindReady: (fn) => void (isReady = fn),
  };
}
