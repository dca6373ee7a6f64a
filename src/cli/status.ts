// `nshub status`: is each daemon running, is it ready, how many pods (and connections) it has.
// Reads the agent admin (/readyz, /pods) and the proxy admin (/config_dump) and readiness
// (/healthz/ready). Exit 0 when both daemons run and are ready, 1 otherwise.
import type { ConfigDump } from "../admin/config-dump.ts";
import {
  DEFAULT_AGENT_ADMIN,
  DEFAULT_PROXY_ADMIN,
  DEFAULT_PROXY_READINESS,
  DaemonUnavailable,
  type Daemon,
  type Io,
  hostPortOf,
  parseDaemonUrl,
  parseTimeout,
  renderTable,
  request,
  requestJson,
  stdio,
  withPort,
} from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub status [--json] [--admin <url>] [--readiness <url>] [--agent-admin <url>] [--timeout <s>]

Shows whether the node agent and the node proxy are running and ready, and how many pods and
connections they have. Exit code 0 when both run and are ready, 1 otherwise.

  --admin <url>        proxy admin (default ${DEFAULT_PROXY_ADMIN})
  --readiness <url>    proxy readiness (default ${DEFAULT_PROXY_READINESS}, or port 15021 on the --admin host)
  --agent-admin <url>  agent admin (default ${DEFAULT_AGENT_ADMIN})
  --timeout <s>        per request (default 3)
  --json               machine-readable output`;

export interface DaemonStatus {
  address: string;
  running: boolean;
  /** null when unknown (not running, or readiness unreachable). */
  ready: boolean | null;
  /** "ready", or why not. */
  readiness: string;
  pods: { total: number; byState: Record<string, number> } | null;
  /** The one-sentence problem, when there is one. */
  error?: string;
}

export interface ProxyStatus extends DaemonStatus {
  version: string | null;
  connections: { inbound: number; outbound: number } | null;
}

export interface Status {
  agent: DaemonStatus;
  proxy: ProxyStatus;
}

const AGENT_STATES = ["enrolled", "pending", "not-enrolled"];
const PROXY_STATES = ["Up", "Pending"];

function countBy(items: readonly { state?: unknown }[], order: readonly string[]): { total: number; byState: Record<string, number> } {
  const byState: Record<string, number> = Object.fromEntries(order.map((s) => [s, 0]));
  for (const it of items) {
    const s = typeof it.state === "string" ? it.state : "unknown";
    byState[s] = (byState[s] ?? 0) + 1;
  }
  return { total: items.length, byState };
}

/** Readiness as {ready, text}; a 503 with a reason is an answer, not an error. */
async function readiness(d: Daemon, path: string, timeoutMs: number): Promise<{ ready: boolean; text: string }> {
  const a = await request(d, path, { timeoutMs, accept: [500, 503] });
  return { ready: a.status === 200, text: a.text.trim() || (a.status === 200 ? "ready" : `HTTP ${a.status}`) };
}

async function settle<T>(p: Promise<T>): Promise<T | DaemonUnavailable> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof DaemonUnavailable) return e;
    throw e;
  }
}

export async function collectStatus(opts: { proxy: Daemon; readiness: Daemon; agent: Daemon; timeoutMs: number }): Promise<Status> {
  const { timeoutMs } = opts;
  const [dump, pReady, aReady, aPods] = await Promise.all([
    settle(requestJson<ConfigDump>(opts.proxy, "/config_dump", { timeoutMs })),
    settle(readiness(opts.readiness, "/healthz/ready", timeoutMs)),
    settle(readiness(opts.agent, "/readyz", timeoutMs)),
    settle(requestJson<{ pods?: { state?: string }[] } | { state?: string }[]>(opts.agent, "/pods", { timeoutMs })),
  ]);

  const agent: DaemonStatus = { address: hostPortOf(opts.agent.url), running: false, ready: null, readiness: "unknown", pods: null };
  if (aReady instanceof DaemonUnavailable && aPods instanceof DaemonUnavailable) {
    agent.error = aReady.message;
  } else {
    agent.running = true;
    if (!(aReady instanceof DaemonUnavailable)) {
      agent.ready = aReady.ready;
      agent.readiness = aReady.text;
    } else agent.error = runsButNoReadiness("agent", aReady);
    if (!(aPods instanceof DaemonUnavailable)) {
      const list = Array.isArray(aPods) ? aPods : (aPods.pods ?? []);
      agent.pods = countBy(list, AGENT_STATES);
    } else agent.error ??= aPods.message;
  }

  const proxy: ProxyStatus = { address: hostPortOf(opts.proxy.url), running: false, ready: null, readiness: "unknown", pods: null, version: null, connections: null };
  if (dump instanceof DaemonUnavailable) {
    proxy.error = dump.message;
    // The admin is what `running` means; readiness alone (admin elsewhere?) is still reported.
    if (!(pReady instanceof DaemonUnavailable)) {
      proxy.ready = pReady.ready;
      proxy.readiness = pReady.text;
    }
  } else {
    proxy.running = true;
    proxy.version = dump.version?.version ?? null;
    proxy.pods = countBy(dump.workloads ?? [], PROXY_STATES);
    const connections = { inbound: 0, outbound: 0 };
    for (const w of dump.workloads ?? []) {
      connections.inbound += w.connections?.inbound ?? 0;
      connections.outbound += w.connections?.outbound ?? 0;
    }
    proxy.connections = connections;
    if (pReady instanceof DaemonUnavailable) proxy.error = runsButNoReadiness("proxy", pReady);
    else {
      proxy.ready = pReady.ready;
      proxy.readiness = pReady.text;
    }
  }
  return { agent, proxy };
}

function runsButNoReadiness(kind: string, e: DaemonUnavailable): string {
  const why = e.reason === "not-running" ? "nothing listens there" : e.message;
  return `the nshub ${kind} runs, but its readiness endpoint ${e.address} does not answer (${why})`;
}

function podsCell(p: DaemonStatus["pods"]): string {
  if (!p) return "-";
  const parts = Object.entries(p.byState)
    .filter(([, n]) => n > 0)
    .map(([s, n]) => `${n} ${s}`);
  return parts.length === 0 ? "0" : parts.join(", ");
}

function readyCell(s: DaemonStatus): string {
  return s.ready === null ? "-" : s.ready ? "yes" : "no";
}

export function renderStatus(s: Status): string {
  const row = (name: string, d: DaemonStatus, version: string | null, conns: ProxyStatus["connections"]) => [
    name,
    d.address,
    d.running ? "running" : "not running",
    readyCell(d),
    podsCell(d.pods),
    conns ? `${conns.inbound + conns.outbound} (${conns.inbound} in, ${conns.outbound} out)` : "-",
    version ?? "-",
  ];
  const table = renderTable(
    [{ header: "DAEMON" }, { header: "ADDRESS" }, { header: "STATUS" }, { header: "READY" }, { header: "PODS" }, { header: "CONNECTIONS" }, { header: "VERSION" }],
    [row("agent", s.agent, null, null), row("proxy", s.proxy, s.proxy.version, s.proxy.connections)],
  );
  const notes: string[] = [];
  for (const [name, d] of [["agent", s.agent], ["proxy", s.proxy]] as const) {
    if (d.error) notes.push(d.error);
    else if (d.ready === false) notes.push(`${name}: ${d.readiness}`);
  }
  return notes.length ? `${table}\n\n${notes.join("\n")}` : table;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "status", help: HELP, options: { readiness: { type: "string" }, "agent-admin": { type: "string" } } } as const;
  return runOperatorCommand(cmd, args, io, async (values) => {
    const proxyUrl = parseDaemonUrl(values.admin ?? DEFAULT_PROXY_ADMIN, "--admin");
    const readinessUrl = values.readiness
      ? parseDaemonUrl(values.readiness, "--readiness")
      : values.admin
        ? withPort(proxyUrl, 15021)
        : parseDaemonUrl(DEFAULT_PROXY_READINESS, "--readiness");
    const agentUrl = parseDaemonUrl(values["agent-admin"] ?? DEFAULT_AGENT_ADMIN, "--agent-admin");
    const status = await collectStatus({
      proxy: { kind: "proxy", url: proxyUrl },
      readiness: { kind: "proxy", url: readinessUrl },
      agent: { kind: "agent", url: agentUrl },
      timeoutMs: parseTimeout(values.timeout),
    });
    io.out(values.json ? JSON.stringify(status, null, 2) : renderStatus(status));
    const ok = status.agent.running && status.agent.ready === true && status.proxy.running && status.proxy.ready === true;
    return ok ? 0 : 1;
  });
}
