// The agent's admin endpoints (loopback by default, agent.adminAddress):
//   /healthz  200 while the process runs
//   /readyz   200 once the pod cache is rebuilt and the servers listen; 503 before
//   /metrics  Prometheus text: pods by state, event API requests by method and result, ZDS
//             connections, readiness, open fds, state file write errors
//   /pods     the pod cache as JSON
import { Hono } from "hono";
import type { Server } from "bun";
import { openFdCount } from "../sys/index.ts";
import type { Agent } from "./agent.ts";
import type { PodStateName } from "./state.ts";

export interface AdminDeps {
  agent: Agent;
  /** Number of connected proxies (ZDS). */
  zdsConnections: () => number;
  /** Whether the agent's servers are up (readiness is rebuilt && listening). */
  listening: () => boolean;
}

export function createAdminApp(deps: AdminDeps): Hono {
  const app = new Hono();
  const ready = () => deps.agent.ready && deps.listening();
  app.get("/healthz", (c) => c.text("ok\n"));
  app.get("/readyz", (c) => (ready() ? c.text("ready\n") : c.text("not ready: rebuilding the pod cache\n", 503)));
  app.get("/pods", (c) => c.json({ ready: ready(), pods: deps.agent.listPods() }));
  app.get("/metrics", (c) => c.text(renderMetrics(deps, ready()), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }));
  app.notFound((c) => c.text("not found: /healthz, /readyz, /metrics, /pods\n", 404));
  return app;
}

export function renderMetrics(deps: AdminDeps, ready: boolean): string {
  const states: PodStateName[] = ["enrolled", "pending", "not-enrolled"];
  const counts = new Map<PodStateName, number>(states.map((s) => [s, 0]));
  for (const p of deps.agent.listPods()) counts.set(p.state, (counts.get(p.state) ?? 0) + 1);
  const lines: string[] = [];
  lines.push("# HELP nshub_agent_pods Pods in the agent's cache, by state.", "# TYPE nshub_agent_pods gauge");
  for (const s of states) lines.push(`nshub_agent_pods{state="${s}"} ${counts.get(s)}`);
  lines.push("# HELP nshub_agent_cni_requests_total Event API requests (CNI plugin and CLI), by method and result.", "# TYPE nshub_agent_cni_requests_total counter");
  for (const [k, v] of [...deps.agent.requests].sort(([a], [b]) => a.localeCompare(b))) {
    const [method, result] = k.split("|");
    lines.push(`nshub_agent_cni_requests_total{method="${method}",result="${result}"} ${v}`);
  }
  lines.push("# HELP nshub_agent_zds_connections Proxies connected to the ZDS socket.", "# TYPE nshub_agent_zds_connections gauge", `nshub_agent_zds_connections ${deps.zdsConnections()}`);
  lines.push("# HELP nshub_agent_ready 1 once the pod cache is rebuilt and the agent serves.", "# TYPE nshub_agent_ready gauge", `nshub_agent_ready ${ready ? 1 : 0}`);
  lines.push("# HELP nshub_agent_state_write_errors_total Failed writes of the state file.", "# TYPE nshub_agent_state_write_errors_total counter", `nshub_agent_state_write_errors_total ${deps.agent.stateWriteErrors}`);
  lines.push("# HELP nshub_agent_open_fds Open file descriptors of the agent.", "# TYPE nshub_agent_open_fds gauge", `nshub_agent_open_fds ${openFdCount()}`);
  return lines.join("\n") + "\n";
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
