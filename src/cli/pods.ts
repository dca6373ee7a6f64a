// `nshub pods`: the pods the proxy serves — namespace/name, uid, IPs, state, listeners and
// connection counts — from the proxy's /config_dump. IPs come from the proxy when it knows
// them, else (best effort) from the agent's /pods.
import type { ConfigDump, DumpWorkload } from "../admin/config-dump.ts";
import {
  DEFAULT_AGENT_ADMIN,
  DEFAULT_PROXY_ADMIN,
  DaemonUnavailable,
  type Io,
  formatListeners,
  parseDaemonUrl,
  parseTimeout,
  renderTable,
  requestJson,
  stdio,
} from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub pods [-n <namespace>] [--json] [--admin <url>] [--agent-admin <url>] [--timeout <s>]

Lists the pods the node proxy serves: namespace/name, uid, IPs, state (Up or Pending),
listeners inside the pod, and live connections.

  -n, --namespace <ns>  only pods of this namespace
  --admin <url>         proxy admin (default ${DEFAULT_PROXY_ADMIN})
  --agent-admin <url>   agent admin, asked for pod IPs the proxy does not know (default ${DEFAULT_AGENT_ADMIN})
  --timeout <s>         per request (default 3)
  --json                machine-readable output`;

export interface PodRow {
  namespace: string;
  name: string;
  uid: string;
  serviceAccount: string;
  ips: string[];
  state: string;
  netns: string | null;
  listeners: { kind: string; address: string; port: number }[];
  connections: { inbound: number; outbound: number };
  error?: string;
}

export function podRows(dump: ConfigDump, agentIps: ReadonlyMap<string, string[]> = new Map()): PodRow[] {
  return (dump.workloads ?? [])
    .map((w: DumpWorkload) => ({
      namespace: w.namespace,
      name: w.name,
      uid: w.uid,
      serviceAccount: w.serviceAccount,
      ips: w.workloadIps?.length ? w.workloadIps : (agentIps.get(w.uid) ?? []),
      state: w.state,
      netns: w.netns,
      listeners: w.listeners ?? [],
      connections: w.connections ?? { inbound: 0, outbound: 0 },
      ...(w.error ? { error: w.error } : {}),
    }))
    .sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name) || a.uid.localeCompare(b.uid));
}

export function renderPods(rows: readonly PodRow[]): string {
  if (rows.length === 0) return "no pods: the proxy serves none (is the agent running and are pods enrolled?)";
  const table = renderTable(
    [{ header: "NAMESPACE/NAME" }, { header: "UID" }, { header: "IPS" }, { header: "STATE" }, { header: "LISTENERS" }, { header: "CONNECTIONS", align: "right" }],
    rows.map((r) => {
      const total = r.connections.inbound + r.connections.outbound;
      return [
        `${r.namespace}/${r.name}`,
        r.uid,
        r.ips.length ? r.ips.join(",") : "-",
        r.state,
        formatListeners(r.listeners),
        total === 0 ? "0" : `${total} (${r.connections.inbound} in, ${r.connections.outbound} out)`,
      ];
    }),
  );
  const notes = rows.filter((r) => r.error).map((r) => `${r.namespace}/${r.name} is pending: ${r.error}`);
  return notes.length ? `${table}\n\n${notes.join("\n")}` : table;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "pods", help: HELP, options: { namespace: { type: "string", short: "n" }, "agent-admin": { type: "string" } } } as const;
  return runOperatorCommand(cmd, args, io, async (values) => {
    const timeoutMs = parseTimeout(values.timeout);
    const proxy = { kind: "proxy" as const, url: parseDaemonUrl(values.admin ?? DEFAULT_PROXY_ADMIN, "--admin") };
    const agent = { kind: "agent" as const, url: parseDaemonUrl(values["agent-admin"] ?? DEFAULT_AGENT_ADMIN, "--agent-admin") };
    const dump = await requestJson<ConfigDump>(proxy, "/config_dump", { timeoutMs });
    // IPs from the agent only when the proxy lacks some; the agent being down is no error here.
    const agentIps = new Map<string, string[]>();
    if ((dump.workloads ?? []).some((w) => !w.workloadIps?.length)) {
      try {
        const ap = await requestJson<{ pods?: { uid: string; ips?: string[] }[] }>(agent, "/pods", { timeoutMs: Math.min(timeoutMs, 1000) });
        for (const p of ap.pods ?? []) if (p.ips?.length) agentIps.set(p.uid, p.ips);
      } catch (e) {
        if (!(e instanceof DaemonUnavailable)) throw e; // best effort: the agent may be down
      }
    }
    let rows = podRows(dump, agentIps);
    if (values.namespace !== undefined) rows = rows.filter((r) => r.namespace === values.namespace);
    io.out(values.json ? JSON.stringify(rows, null, 2) : renderPods(rows));
    return 0;
  });
}
