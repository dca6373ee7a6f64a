// The contracts around ZDS: what the proxy side's workload manager must offer the ZDS client,
// and what the agent side hands the ZDS server. Kept apart from the wire code so the agent and
// the proxy depend on these types only.
import type { Netns } from "../sys/index.ts";

/** Pod identity carried by AddWorkload.workload_info. */
export interface WorkloadIdentity {
  name: string;
  namespace: string;
  serviceAccount: string;
}

/**
 * Thrown by WorkloadManager.add when the pod's proxy could not start (e.g. a listener failed to
 * bind). The client nacks with "failure to start proxy : …" and keeps the connection; the
 * manager keeps the pod pending and retries it itself every 5 s.
 */
export class ProxyStartError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ProxyStartError";
  }
}

/**
 * Implemented by the proxy (src/proxy). The ZDS client calls it, one call at a time, in
 * message order, and acks each message after the call settles.
 */
export interface WorkloadManager {
  /**
   * Start serving pod `uid` in `netns` (already verified to be a network namespace). The
   * manager owns `netns` from now on and closes it when done with it. A known uid with the
   * same netns identity is a no-op (close the new fd); a different identity replaces the old
   * pod proxy. Throw ProxyStartError for a start failure; any other error is a protocol-level
   * failure ("failure to process message : …") after which the client reconnects.
   */
  add(uid: string, info: WorkloadIdentity | undefined, netns: Netns): Promise<void>;
  /** Before the snapshot ends: keep `uid` although the agent has no netns for it. */
  keep(uid: string): void;
  /** Stop serving `uid` at once: close its listeners and connections. Unknown uid: no-op. */
  del(uid: string): Promise<void>;
  /** Every uid the manager serves or has pending, for snapshot reconciliation. */
  uids(): Iterable<string>;
  /** A new ZDS connection began (before its snapshot): forget pending retries, as ztunnel does. */
  connectionStarted(): void;
  /** The snapshot is complete (pods not named in it were already deleted via del). */
  snapshotDone(): void;
  /** The ZDS connection was lost (the manager keeps serving; readiness may drop). */
  connectionLost(): void;
}

/** One pod the agent knows, as the ZDS server sends it in a snapshot. */
export interface SnapshotEntry {
  uid: string;
  info: WorkloadIdentity;
  /** Absent when the agent has lost the pod's netns: sent as KeepWorkload. */
  netns?: Netns;
}

/** Log sink used by the ZDS server and client; `fields` carry the structured details. */
export type ZdsLogLevel = "debug" | "info" | "warn" | "error";
export type ZdsLog = (level: ZdsLogLevel, msg: string, fields?: Record<string, unknown>) => void;

/**
 * Why a ZdsServer request (addWorkload / delWorkload) failed:
 * - `no-connection`: no proxy connected (add only);
 * - `nack`: the proxy answered with a non-empty Ack.error (`nack` holds the text);
 * - `timeout`: no ack within ackTimeoutMs (the server closed that connection);
 * - `closed`: the connection ended before the ack arrived (or before the request was sent);
 * - `stopped`: the server was stopped;
 * - `io`: sending failed (e.g. EPIPE), or the netns was closed before the request was sent.
 */
export type ZdsRequestErrorKind = "no-connection" | "nack" | "timeout" | "closed" | "stopped" | "io";

export class ZdsRequestError extends Error {
  readonly kind: ZdsRequestErrorKind;
  /** The proxy's Ack.error text for kind "nack". */
  readonly nack: string | undefined;
  /** For a delWorkload that failed on more than one connection: each connection's error. */
  readonly errors: ZdsRequestError[];
  /** The connection that nacked (kind "nack"): with several proxies, the others may still serve the pod. */
  readonly conn: number | undefined;

  constructor(kind: ZdsRequestErrorKind, message: string, options?: { nack?: string; errors?: ZdsRequestError[]; conn?: number }) {
    super(message);
    this.name = "ZdsRequestError";
    this.kind = kind;
    this.nack = options?.nack;
    this.errors = options?.errors ?? [];
    this.conn = options?.conn;
  }

  /** A nack saying the pod's proxy failed to start (the proxy keeps retrying it). */
  get isProxyStartFailure(): boolean {
    return this.kind === "nack" && (this.nack ?? "").startsWith("failure to start proxy");
  }
}
