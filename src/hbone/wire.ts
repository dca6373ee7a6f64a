// HBONE on the wire, as ztunnel speaks it: HTTP/2 CONNECT over mutual TLS to port 15008.
// Request headers from https://github.com/istio/ztunnel/blob/master/src/proxy/outbound.rs
// (create_hbone_request, build_forwarded), statuses from
// https://github.com/istio/ztunnel/blob/master/src/proxy/inbound.rs (serve_connect,
// build_inbound_request), HTTP/2 settings from src/proxy/h2/{client,server}.rs and src/config.rs.
import { isIP } from "node:net";
import { randomBytes } from "node:crypto";

export const HBONE_PORT = 15008;

/** Status codes ztunnel's inbound answers with. */
export const STATUS = {
  ok: 200,
  /** not CONNECT, a bad :authority, or a target IP that is not the pod the connection reached */
  badRequest: 400,
  /** denied by authorization policy (ztunnel: assert_rbac → UNAUTHORIZED) */
  unauthorized: 401,
  forbidden: 403,
  /** the upstream (the app in the pod) refused or could not be reached */
  serviceUnavailable: 503,
} as const;

/** RST_STREAM codes: CANCEL is what h2 sends for a stream dropped mid-way (a reset). */
export const RST_NO_ERROR = 0x0;
export const RST_CANCEL = 0x8;

export const HEADER_FORWARDED = "forwarded";
export const HEADER_BAGGAGE = "baggage";
export const HEADER_TRACEPARENT = "traceparent";

/** ztunnel's defaults: stream window 4 MiB, frame 1 MiB, 100 streams per pooled connection. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
/**
 * The connection-level receive window, raised with setLocalWindowSize() once the session is up
 * (HTTP/2 starts it at 64 KiB, which capped a tunnel at 64 KiB in flight: ~1.3 Gb/s across two
 * virtual nodes, docs/BENCHMARKS.md). ztunnel uses 16 MiB; on Bun 1.4.5 a value above the
 * stream window also raises every new stream's receive window without telling the peer, and
 * transfers stall at 64 KiB (oven-sh/bun#40180), so it stays at the stream window.
 */
export const CONNECTION_WINDOW = STREAM_WINDOW;
export const MAX_FRAME = 1024 * 1024;
export const POOL_MAX_STREAMS_PER_CONNECTION = 100;
export const SERVER_MAX_CONCURRENT_STREAMS = 200;
export const PING_INTERVAL_MS = 10_000;
export const PING_TIMEOUT_MS = 20_000;
export const POOL_IDLE_MS = 5 * 60_000;

/** TLS 1.3 suites ztunnel allows (rustls). */
export const TLS13_CIPHERS = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";

/** A CONNECT target: an IP literal and a port (hostname targets are not served yet). */
export interface Target {
  ip: string;
  port: number;
}

export function formatAuthority(t: Target): string {
  return isIP(t.ip) === 6 ? `[${t.ip}]:${t.port}` : `${t.ip}:${t.port}`;
}

/** Parses `ip:port` / `[ip6]:port`; throws with the reason (the server answers 400). */
export function parseAuthority(authority: string | undefined): Target {
  if (!authority) throw new Error("missing :authority");
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(authority) ?? /^([^:\[\]]+):(\d{1,5})$/.exec(authority);
  if (!m) throw new Error(`:authority ${JSON.stringify(authority)} is not <ip>:<port>`);
  const ip = m[1]!;
  const port = Number(m[2]);
  if (isIP(ip) === 0) throw new Error(`:authority ${JSON.stringify(authority)}: ${ip} is not an IP address (hostname targets are not supported)`);
  if (port < 1 || port > 65535) throw new Error(`:authority ${JSON.stringify(authority)}: port ${port} out of range`);
  return { ip, port };
}

/** ztunnel's `forwarded` value: `for="<ip>:<port>"` (IPv6 bracketed), `;host=<svc>` when known. */
export function buildForwarded(client: Target, host?: string): string {
  const v = `for="${formatAuthority(client)}"`;
  return host ? `${v};host=${host}` : v;
}

/**
 * The client address from `forwarded` (RFC 7239 `for=`, quoted or not, with or without port).
 * Undefined when absent or not an IP (an obfuscated identifier).
 */
export function parseForwardedFor(value: string | undefined): { ip: string; port?: number } | undefined {
  if (!value) return undefined;
  // Only the first element (the proxy closest to the client) matters here.
  const first = value.split(",")[0]!;
  for (const part of first.split(";")) {
    const [k, ...rest] = part.trim().split("=");
    if (k?.toLowerCase() !== "for") continue;
    let v = rest.join("=").trim();
    if (v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(v) ?? /^([^:]+)(?::(\d+))?$/.exec(v);
    const ip = m ? m[1]! : v;
    if (isIP(ip) === 0) return undefined;
    return m?.[2] ? { ip, port: Number(m[2]) } : { ip };
  }
  return undefined;
}

/** `;host=` of `forwarded` (the destination service ztunnel picks for telemetry). */
export function parseForwardedHost(value: string | undefined): string | undefined {
  const part = value?.split(";").find((p) => p.trim().startsWith("host="));
  const h = part?.trim().slice(5).replace(/^"|"$/g, "");
  return h || undefined;
}

/** A random W3C traceparent (version 00, sampled off): ztunnel sends one per connection. */
export function newTraceparent(): string {
  return `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-00`;
}

/** Baggage for a source workload, in ztunnel's key order (src/baggage.rs baggage_header_val). */
export function buildBaggage(b: { cluster?: string; namespace?: string; workloadType?: string; workloadName?: string; service?: string; revision?: string; region?: string; zone?: string }): string {
  return [
    b.cluster && `k8s.cluster.name=${b.cluster}`,
    b.namespace && `k8s.namespace.name=${b.namespace}`,
    b.workloadName && `k8s.${b.workloadType ?? "deployment"}.name=${b.workloadName}`,
    b.service && `service.name=${b.service}`,
    b.revision && `service.version=${b.revision}`,
    b.region && `cloud.region=${b.region}`,
    b.zone && `cloud.availability_zone=${b.zone}`,
  ]
    .filter(Boolean)
    .join(",");
}

/** The headers of one HBONE request (besides :method and :authority). */
export interface HboneHeaders {
  forwarded?: string;
  baggage?: string;
  traceparent?: string;
}

/** HTTP/2 settings both ends send (ztunnel's); the connection window: CONNECTION_WINDOW. */
export function h2Settings(maxConcurrentStreams?: number) {
  return {
    enablePush: false,
    initialWindowSize: STREAM_WINDOW,
    maxFrameSize: MAX_FRAME,
    maxHeaderListSize: 64 * 1024,
    ...(maxConcurrentStreams !== undefined ? { maxConcurrentStreams } : {}),
  };
}
