// Access log: one line per finished connection, with ztunnel's field names (its `access` target,
// message "connection complete"): src.addr, src.workload, src.namespace, src.identity, dst.addr,
// dst.hbone_addr, dst.service, dst.workload, dst.namespace, dst.identity, direction, bytes_sent,
// bytes_recv, duration ("123ms"), error. nshub adds `reason` (how the connection ended) and
// `dst.original_addr` when the proxy connected somewhere other than the original destination.
//
// Bytes are counted from the enrolled pod's side, as ztunnel does: outbound, the pod is the
// client (bytes_sent = client → server); inbound, the pod is the server (bytes_sent = server →
// client).
import { createLogger, type Fields, type Level, type Logger } from "./logger.ts";

export interface AccessPeer {
  addr: string;
  workload?: string;
  namespace?: string;
  identity?: string;
}

export interface AccessLogEntry {
  direction: "inbound" | "outbound";
  src: AccessPeer;
  dst: AccessPeer & { hboneAddr?: string; service?: string; originalAddr?: string };
  /** From the enrolled pod's side (see above). */
  bytesSent: number;
  bytesRecv: number;
  durationMs: number;
  /** done | reset | connect_failed | refused_loop | drained | deleted | error */
  reason: string;
  error?: string;
  /** The authorization policy that refused the connection (reason policy_denied): "ns/name". */
  policy?: string;
  /** Its deciding rule's index. */
  policyRule?: number;
}

/** The level a finished connection is logged at: clean and peer-reset closes are routine. */
export function accessLevel(reason: string): Level {
  switch (reason) {
    case "done":
    case "reset":
      return "info";
    case "drained":
    case "deleted":
      return "warn";
    default:
      return "error";
  }
}

/** The line's fields, in ztunnel's order; absent values are left out. */
export function accessFields(e: AccessLogEntry): Fields {
  const f: Fields = {};
  const put = (k: string, v: unknown) => {
    if (v !== undefined && v !== "") f[k] = v;
  };
  put("src.addr", e.src.addr);
  put("src.workload", e.src.workload);
  put("src.namespace", e.src.namespace);
  put("src.identity", e.src.identity);
  put("dst.addr", e.dst.addr);
  put("dst.original_addr", e.dst.originalAddr !== e.dst.addr ? e.dst.originalAddr : undefined);
  put("dst.hbone_addr", e.dst.hboneAddr);
  put("dst.service", e.dst.service);
  put("dst.workload", e.dst.workload);
  put("dst.namespace", e.dst.namespace);
  put("dst.identity", e.dst.identity);
  f.direction = e.direction;
  f.bytes_sent = e.bytesSent;
  f.bytes_recv = e.bytesRecv;
  f.duration = `${Math.max(0, Math.round(e.durationMs))}ms`;
  f.reason = e.reason;
  put("policy", e.policy);
  put("policy.rule", e.policyRule);
  put("error", e.error);
  return f;
}

let defaultAccessLogger: Logger | undefined;

/** The `access` logger (scope "access", like ztunnel's target). */
export function accessLogger(): Logger {
  return (defaultAccessLogger ??= createLogger("access"));
}

/** Writes the line (if the level is enabled; nothing is built otherwise). */
export function logAccess(e: AccessLogEntry, log: Logger = accessLogger()): void {
  const level = accessLevel(e.reason);
  if (!log.enabled(level)) return;
  log[level]("connection complete", accessFields(e));
}
