// `nshub connections [--watch]`: the proxy's live connections — pod, direction, source,
// original and actual destination, bytes each way, age, mTLS identities — from its /config_dump.
import type { ConfigDump, DumpConnection } from "../admin/config-dump.ts";
import {
  DEFAULT_PROXY_ADMIN,
  type Daemon,
  type Io,
  UsageError,
  formatAge,
  formatBytes,
  parseDaemonUrl,
  parseTimeout,
  renderTable,
  requestJson,
  stdio,
} from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub connections [--watch [--interval <s>] [--count <n>]] [-n <namespace>] [--pod <ns/name>] [--json] [--admin <url>]

Lists the node proxy's live connections: the pod whose listener accepted it, direction, source,
original destination (where the client meant to go), actual destination (where the proxy
connected), bytes each way, age, and whether it rides HBONE (mTLS: the source and destination
identities, as <namespace>/<service account>; --json gives the full SPIFFE IDs) or plaintext.

  --watch           refresh until interrupted (Ctrl-C)
  --interval <s>    refresh period with --watch (default 2)
  --count <n>       with --watch: stop after n refreshes
  -n, --namespace   only connections of pods in this namespace
  --pod <ns/name>   only connections of this pod
  --admin <url>     proxy admin (default ${DEFAULT_PROXY_ADMIN})
  --timeout <s>     per request (default 3)
  --json            machine-readable output (with --watch: one JSON line per refresh)`;

export interface ConnectionRow {
  pod: { uid: string; namespace: string; name: string };
  direction: "inbound" | "outbound";
  id: number;
  source: string;
  originalDst: string;
  actualDst: string;
  /** client → destination */
  bytesSent: number;
  /** destination → client */
  bytesReceived: number;
  ageSeconds: number;
  startedAt: string;
  state: string;
  /** "HBONE" (mutual TLS, identities below) or "TCP" (plaintext). */
  protocol: "TCP" | "HBONE";
  srcIdentity?: string;
  dstIdentity?: string;
}

export function connectionRows(dump: ConfigDump): ConnectionRow[] {
  const rows: ConnectionRow[] = [];
  for (const [uid, st] of Object.entries(dump.workloadState ?? {})) {
    const pod = { uid, namespace: st.info?.namespace ?? "", name: st.info?.name ?? "" };
    for (const direction of ["inbound", "outbound"] as const) {
      for (const c of (st.connections?.[direction] ?? []) as DumpConnection[]) {
        rows.push({
          pod,
          direction,
          id: c.id,
          source: c.src,
          originalDst: c.originalDst,
          actualDst: c.actualDst,
          bytesSent: c.bytesSent,
          bytesReceived: c.bytesReceived,
          ageSeconds: c.ageSeconds,
          startedAt: c.startedAt,
          state: c.state,
          protocol: c.protocol ?? "TCP",
          ...(c.srcIdentity ? { srcIdentity: c.srcIdentity, dstIdentity: c.dstIdentity } : {}),
        });
      }
    }
  }
  // Oldest first, like the proxy's table.
  return rows.sort((a, b) => b.ageSeconds - a.ageSeconds || a.id - b.id);
}

export function renderConnections(rows: readonly ConnectionRow[]): string {
  if (rows.length === 0) return "no live connections";
  return renderTable(
    [
      { header: "POD" },
      { header: "DIR" },
      { header: "SOURCE" },
      { header: "ORIGINAL DST" },
      { header: "ACTUAL DST" },
      { header: "SRC→DST", align: "right" },
      { header: "DST→SRC", align: "right" },
      { header: "AGE", align: "right" },
      { header: "STATE" },
      { header: "SECURITY" },
      { header: "IDENTITIES (SRC → DST)" },
    ],
    rows.map((r) => [
      `${r.pod.namespace}/${r.pod.name}`,
      r.direction === "inbound" ? "in" : "out",
      r.source,
      r.originalDst,
      r.actualDst,
      formatBytes(r.bytesSent),
      formatBytes(r.bytesReceived),
      formatAge(r.ageSeconds),
      r.state,
      r.protocol === "HBONE" ? "mTLS" : "plaintext",
      r.srcIdentity ? `${shortId(r.srcIdentity)} → ${shortId(r.dstIdentity ?? "")}` : "-",
    ]),
  );
}

/** spiffe://td/ns/<ns>/sa/<sa> → <ns>/<sa> (the trust domain is the node's; --json has it all). */
function shortId(id: string): string {
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id);
  return m ? `${m[1]}/${m[2]}` : id;
}

function positive(flag: string, v: string | undefined, dflt: number, integer = false): number {
  if (v === undefined) return dflt;
  const n = Number(v.replace(/s$/, ""));
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) throw new UsageError(`${flag}: expected a ${integer ? "whole " : ""}number > 0, got ${JSON.stringify(v)}`);
  return n;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "connections", help: HELP, options: { watch: { type: "boolean", short: "w" }, interval: { type: "string" }, count: { type: "string" }, namespace: { type: "string", short: "n" }, pod: { type: "string" } } } as const;
  return runOperatorCommand(cmd, args, io, async (values) => {
    const timeoutMs = parseTimeout(values.timeout);
    const intervalMs = positive("--interval", values.interval, 2) * 1000;
    const count = values.count === undefined ? Infinity : positive("--count", values.count, 1, true);
    if (values.pod !== undefined && !/^[^/]+\/[^/]+$/.test(values.pod)) throw new UsageError(`--pod: expected <namespace>/<name>, got ${JSON.stringify(values.pod)}`);
    const proxy: Daemon = { kind: "proxy", url: parseDaemonUrl(values.admin ?? DEFAULT_PROXY_ADMIN, "--admin") };
    const fetchRows = async () => {
      let rows = connectionRows(await requestJson<ConfigDump>(proxy, "/config_dump", { timeoutMs }));
      if (values.namespace !== undefined) rows = rows.filter((r) => r.pod.namespace === values.namespace);
      if (values.pod !== undefined) rows = rows.filter((r) => `${r.pod.namespace}/${r.pod.name}` === values.pod);
      return rows;
    };

    if (!values.watch) {
      const rows = await fetchRows();
      io.out(values.json ? JSON.stringify(rows, null, 2) : renderConnections(rows));
      return 0;
    }

    // Watch: refresh until Ctrl-C (exit 0) or --count refreshes; a daemon that goes away ends
    // the watch with its sentence (exit 1, via runCommand).
    let stopped = false;
    let wake: () => void = () => undefined;
    const onSignal = () => {
      stopped = true;
      wake();
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      for (let i = 0; i < count && !stopped; i++) {
        const rows = await fetchRows();
        const now = new Date();
        if (values.json) io.out(JSON.stringify({ time: now.toISOString(), connections: rows }));
        else {
          const header = `every ${intervalMs / 1000}s: nshub connections (${rows.length} live)  ${now.toLocaleTimeString()}`;
          io.out(io.isTTY ? `\x1b[H\x1b[2J${header}\n\n${renderConnections(rows)}` : `${header}\n${renderConnections(rows)}\n`);
        }
        if (i + 1 < count && !stopped) {
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, intervalMs);
            wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
        }
      }
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
    return 0;
  });
}
