// The agent's admin endpoints (loopback by default, agent.adminAddress):
//   /healthz  200 while the process runs
//   /readyz   200 once the pod cache is rebuilt and the servers listen; 503 before
//   /metrics  Prometheus text (prom-client registry, ./metrics.ts createAgentMetrics):
//             nshub_agent_pods{state}, nshub_agent_cni_requests_total{method,result},
//             nshub_agent_zds_connections, nshub_agent_ready, nshub_agent_state_write_errors_total,
//             nshub_agent_pods_reconciled_total{reason}, nshub_agent_open_fds,
//             istio_build{component="nshub-agent"} and the process metrics (process_open_fds,
//             process_max_fds, process_resident_memory_bytes, CPU, event-loop lag)
//   /pods     the pod cache as JSON
// Every value is read from the agent when Prometheus scrapes: the agent keeps its own counts
// (Agent.requests, Agent.reconciled, Agent.stateWriteErrors); nothing is updated on the request
// path.
import { Hono } from "hono";
import type { Server } from "bun";
import { Gauge, type Registry } from "prom-client";
import { createRegistry } from "../admin/registry.ts";
import type { ProcessMetricsOptions } from "../admin/process-metrics.ts";
import { openFdCount } from "../sys/index.ts";
import type { Agent } from "./agent.ts";
import { createAgentMetrics, type AgentMetrics } from "./metrics.ts";
import type { PodStateName } from "./state.ts";

export interface AdminDeps {
  agent: Agent;
  /** Number of connected proxies (ZDS). */
  zdsConnections: () => number;
  /** Whether the agent's servers are up (readiness is rebuilt && listening). */
  listening: () => boolean;
}

/** Pod states always exported (0 when none), so a state that empties shows 0. */
const POD_STATES: readonly PodStateName[] = ["enrolled", "pending", "not-enrolled"];

export interface AgentRegistry {
  readonly registry: Registry;
  readonly metrics: AgentMetrics;
  /** Stops the process-metrics sampler. */
  stop(): void;
}

/** The agent's registry, bound to the agent's state (values are read at scrape time). */
export function createAgentRegistry(deps: AdminDeps, opts: { process?: boolean | ProcessMetricsOptions } = {}): AgentRegistry {
  const base = createRegistry({ component: "nshub-agent", process: opts.process });
  const registry = base.registry;
  const metrics = createAgentMetrics(registry);
  const ready = () => deps.agent.ready && deps.listening();
  metrics.bindPodCounts(() => {
    const counts: Record<string, number> = {};
    for (const p of deps.agent.listPods()) counts[p.state] = (counts[p.state] ?? 0) + 1;
    return counts;
  }, POD_STATES);
  metrics.bindZdsConnections(deps.zdsConnections);
  metrics.bindReady(ready);

  // Counters the agent keeps itself (Agent.count, Agent.stateWriteErrors), read at scrape time.
  metrics.bindCniRequests(function* () {
    for (const [k, count] of deps.agent.requests) {
      const [method = "", result = ""] = k.split("|");
      yield { method, result, count };
    }
  });
  metrics.bindStateWriteErrors(() => deps.agent.stateWriteErrors);
  metrics.bindPodsReconciled(() => deps.agent.reconciled);

  // Kept from the hand-written exporter (dashboards may use it); same value as process_open_fds.
  new Gauge({
    name: "nshub_agent_open_fds",
    help: "Open file descriptors of the agent (same as process_open_fds)",
    registers: [registry],
    collect() {
      this.set(openFdCount());
    },
  });
  return { registry, metrics, stop: base.stop };
}

export function createAdminApp(deps: AdminDeps, reg: AgentRegistry = createAgentRegistry(deps, { process: false })): Hono {
  const app = new Hono();
  const ready = () => deps.agent.ready && deps.listening();
  app.get("/healthz", (c) => c.text("ok\n"));
  app.get("/readyz", (c) => (ready() ? c.text("ready\n") : c.text("not ready: rebuilding the pod cache\n", 503)));
  app.get("/pods", (c) => c.json({ ready: ready(), pods: deps.agent.listPods() }));
  app.get("/metrics", async () => new Response(await reg.registry.metrics(), { headers: { "content-type": reg.registry.contentType } }));
  app.notFound((c) => c.text("not found: /healthz, /readyz, /metrics, /pods\n", 404));
  app.onError((e) => new Response(`internal error: ${e instanceof Error ? e.message : String(e)}\n`, { status: 500 }));
  return app;
}

/** "127.0.0.1:15010" / "[::1]:15010" / "localhost:15010" → hostname and port. */
export function parseHostPort(addr: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(addr);
  if (!m) throw new Error(`admin address ${JSON.stringify(addr)} is not host:port`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`admin address ${addr}: port ${port} is out of range`);
  return { hostname: m[1] ?? m[2]!, port };
}

export function serveAdmin(app: Hono, address: string): Server<undefined> {
  const { hostname, port } = parseHostPort(address);
  return Bun.serve({ hostname, port, fetch: app.fetch });
}
