// What `nshub demo` reads back from the daemons it started, and how it shows it. The admin
// servers listen on the node's loopback (inside the node's netns), so every request runs curl
// inside that netns: the demo process itself never enters a namespace and never calls fetch.
//
// Connection records come from the proxy's admin API: `/connections?recent` (live and recently
// closed records) when the proxy has it, else `/config_dump` (live ones) plus the proxy's access
// log ("connection complete" lines) for the finished ones. Counters come from the metrics
// endpoint (`istio_tcp_*`). What demo/web's servers saw comes from their own logs.
import { readFileSync } from "node:fs";
import { renderTable, formatBytes } from "../cli/admin-client.ts";
import type { SimNamespace } from "../sim/namespace.ts";

export interface HttpAnswer {
  status: number;
  body: string;
  /** curl's exit code (7: nothing listens, 28: timeout). */
  curlCode: number;
}

/** GET `url` with curl inside `ns`; status 0 when curl could not connect. */
export async function curlIn(ns: SimNamespace, url: string, timeoutSec = 3): Promise<HttpAnswer> {
  const r = await ns.exec(["curl", "-sS", "-m", String(timeoutSec), "-o", "-", "-w", "\n%{http_code}", url], { timeoutMs: (timeoutSec + 5) * 1000 });
  const i = r.stdout.lastIndexOf("\n");
  const status = Number(r.stdout.slice(i + 1)) || 0;
  return { status, body: i >= 0 ? r.stdout.slice(0, i) : r.stdout, curlCode: r.code };
}

export async function curlJson<T>(ns: SimNamespace, url: string): Promise<T | undefined> {
  const a = await curlIn(ns, url);
  if (a.status !== 200) return undefined;
  try {
    return JSON.parse(a.body) as T;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parsePrometheus(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? "").matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[lm[1]!] = lm[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    const value = Number(m[3]);
    if (Number.isFinite(value)) out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** Sum of a metric's samples whose labels match `where`. */
export function sumOf(samples: readonly Sample[], name: string, where: Record<string, string> = {}): number {
  let s = 0;
  for (const x of samples) {
    if (x.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => x.labels[k] === v)) s += x.value;
  }
  return s;
}

export const TRAFFIC_METRICS = [
  "istio_tcp_connections_opened_total",
  "istio_tcp_connections_closed_total",
  "istio_tcp_received_bytes_total",
  "istio_tcp_sent_bytes_total",
] as const;

export interface MetricsSnapshot {
  /** metric → reporter ("source" = outbound leg, "destination" = inbound leg) → value */
  values: Record<string, { source: number; destination: number }>;
}

export function snapshotOf(samples: readonly Sample[]): MetricsSnapshot {
  const values: MetricsSnapshot["values"] = {};
  for (const m of TRAFFIC_METRICS) values[m] = { source: sumOf(samples, m, { reporter: "source" }), destination: sumOf(samples, m, { reporter: "destination" }) };
  return { values };
}

export function deltaOf(before: MetricsSnapshot, after: MetricsSnapshot): MetricsSnapshot {
  const values: MetricsSnapshot["values"] = {};
  for (const m of TRAFFIC_METRICS) {
    const a = after.values[m] ?? { source: 0, destination: 0 };
    const b = before.values[m] ?? { source: 0, destination: 0 };
    values[m] = { source: a.source - b.source, destination: a.destination - b.destination };
  }
  return { values };
}

export function renderMetricsDelta(d: MetricsSnapshot): string {
  const fmtVal = (m: string, v: number) => (m.endsWith("bytes_total") ? `+${v} (${formatBytes(v)})` : `+${v}`);
  return renderTable(
    [{ header: "METRIC" }, { header: "OUTBOUND (reporter=source)", align: "right" }, { header: "INBOUND (reporter=destination)", align: "right" }],
    TRAFFIC_METRICS.map((m) => [m, fmtVal(m, d.values[m]!.source), fmtVal(m, d.values[m]!.destination)]),
  );
}

// ---------------------------------------------------------------------------------------------
// connection records

/** One relayed connection leg, from whichever source the proxy offers. */
export interface Conn {
  /** The enrolled pod whose listener accepted it, "namespace/name". */
  pod: string;
  direction: "inbound" | "outbound";
  /** The client, ip:port. */
  src: string;
  /** Where the client meant to go (original destination), ip:port. */
  dst: string;
  /** client → server */
  bytesUp: number;
  /** server → client */
  bytesDown: number;
  /** "open", "half_closed", … while live; how it ended ("done", "reset", …) once closed. */
  state: string;
  live: boolean;
}

export interface ConnReport {
  conns: Conn[];
  /** Where they came from, said in the output. */
  source: string;
}

interface RecordJson {
  pod: { name: string; namespace: string };
  direction: "inbound" | "outbound";
  source: string;
  originalDst: string;
  bytesSent: number;
  bytesReceived: number;
  state: string;
  closeHow: string | null;
  closedAt?: string | null;
}

interface DumpJson {
  workloadState?: Record<string, { info?: { name?: string; namespace?: string }; connections?: Record<"inbound" | "outbound", Array<{ src: string; originalDst: string; bytesSent: number; bytesReceived: number; state: string }>> }>;
}

/** Reads every connection record the proxy can give (see the file comment). */
export async function readConnections(node: SimNamespace, adminUrl: string, proxyLog: string): Promise<ConnReport> {
  const rec = await curlJson<{ live?: RecordJson[]; recent?: RecordJson[] }>(node, `${adminUrl}/connections?recent`);
  if (rec && Array.isArray(rec.live)) {
    const conv = (r: RecordJson, live: boolean): Conn => ({
      pod: `${r.pod.namespace}/${r.pod.name}`,
      direction: r.direction,
      src: r.source,
      dst: r.originalDst,
      bytesUp: r.bytesSent,
      bytesDown: r.bytesReceived,
      state: live ? r.state : (r.closeHow ?? r.state),
      live,
    });
    return { conns: [...(rec.recent ?? []).map((r) => conv(r, false)), ...rec.live.map((r) => conv(r, true))], source: "the proxy's connection records (GET /connections?recent)" };
  }
  const conns: Conn[] = [...accessLogConnections(proxyLog), ...(await liveFromConfigDump(node, adminUrl))];
  return { conns, source: "the proxy's access log (finished) and GET /config_dump (live)" };
}

export async function liveFromConfigDump(node: SimNamespace, adminUrl: string): Promise<Conn[]> {
  const dump = await curlJson<DumpJson>(node, `${adminUrl}/config_dump`);
  const out: Conn[] = [];
  for (const st of Object.values(dump?.workloadState ?? {})) {
    for (const direction of ["inbound", "outbound"] as const) {
      for (const c of st.connections?.[direction] ?? []) {
        out.push({ pod: `${st.info?.namespace ?? "?"}/${st.info?.name ?? "?"}`, direction, src: c.src, dst: c.originalDst, bytesUp: c.bytesSent, bytesDown: c.bytesReceived, state: c.state, live: true });
      }
    }
  }
  return out;
}

/** The proxy's "connection complete" lines (JSON log format). Bytes there are from the pod's side. */
export function accessLogConnections(logFile: string): Conn[] {
  const out: Conn[] = [];
  for (const line of readLog(logFile).split("\n")) {
    if (!line.startsWith("{") || !line.includes("connection complete")) continue;
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (j.msg !== "connection complete") continue;
    const outbound = j.direction === "outbound";
    const ns = String((outbound ? j["src.namespace"] : j["dst.namespace"]) ?? "?");
    const name = String((outbound ? j["src.workload"] : j["dst.workload"]) ?? "?");
    const sent = Number(j.bytes_sent ?? 0);
    const recv = Number(j.bytes_recv ?? 0);
    out.push({
      pod: `${ns}/${name}`,
      direction: outbound ? "outbound" : "inbound",
      src: String(j["src.addr"] ?? "?"),
      dst: String(j["dst.original_addr"] ?? j["dst.addr"] ?? "?"),
      bytesUp: outbound ? sent : recv,
      bytesDown: outbound ? recv : sent,
      state: String(j.reason ?? "closed"),
      live: false,
    });
  }
  return out;
}

/** ip of "ip:port" / "[v6]:port". */
export function ipOf(endpoint: string): string {
  const m = /^\[([^\]]+)\]:\d+$/.exec(endpoint) ?? /^([^:]+):\d+$/.exec(endpoint);
  return m ? m[1]! : endpoint;
}

export function renderConnections(conns: readonly Conn[], label: (c: Conn) => string = () => ""): string {
  if (conns.length === 0) return "(none)";
  return renderTable(
    [{ header: "POD" }, { header: "DIRECTION" }, { header: "SOURCE" }, { header: "ORIGINAL DST" }, { header: "CLIENT→SERVER", align: "right" }, { header: "SERVER→CLIENT", align: "right" }, { header: "STATE" }, { header: "" }],
    conns.map((c) => [c.pod, c.direction, c.src, c.dst, formatBytes(c.bytesUp), formatBytes(c.bytesDown), c.state, label(c)]),
  );
}

// ---------------------------------------------------------------------------------------------
// what the servers saw (their logs)

/** Client IPs in the demo HTTP server's log, in order, without repeats. */
export function httpClientsSeen(log: string): string[] {
  const out: string[] = [];
  for (const line of readLog(log).split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const j = JSON.parse(line) as { client?: string };
      if (j.client) {
        const ip = ipOf(j.client);
        if (!out.includes(ip)) out.push(ip);
      }
    } catch {
      // not ours
    }
  }
  return out;
}

/** Peers in socat's `-d -d` log ("accepting connection from AF=2 10.1.2.3:45678 on …"). */
export function socatPeers(log: string): string[] {
  const out: string[] = [];
  for (const m of readLog(log).matchAll(/accepting connection from AF=\d+ \[?([0-9a-fA-F.:]+?)\]?:\d+ /g)) if (!out.includes(m[1]!)) out.push(m[1]!);
  return out;
}

/** A log's text; empty when it is not there (a server that never started writes none). */
function readLog(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}
