// Per-connection records and the observer hook. Every connection the proxy relays has one
// record from accept to close; the admin API (connections list, config dump) reads the live
// ones and the metrics attach to the observer hook. Label sets are resolved once per connection
// (in onConnectionOpen, cached on `rec.ext`), never per chunk.

/** The pod a connection belongs to: the same object for every record of that pod. */
export interface PodRef {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

export interface Endpoint {
  ip: string;
  port: number;
}

/** Which listener accepted the connection (a row of the listener table, see listeners.ts). */
export type Direction = "outbound" | "inbound";

/**
 * connecting: accepted, upstream connect in progress;
 * open: both sides connected, relaying;
 * half_closed: one direction finished (FIN relayed), the other still flows;
 * closed: both sockets closed (the record then leaves the live table).
 */
export type ConnectionState = "connecting" | "open" | "half_closed" | "closed";

/**
 * How a connection ended:
 * done: both directions finished with FIN; reset: one side reset or failed, the other was reset;
 * connect_failed: the upstream connect failed (refused, timeout, unreachable), the client was reset;
 * refused_loop: the destination was one of the proxy's own ports (self call), the client was reset;
 * drained: still open at the drain deadline, reset; deleted: its pod was deleted, reset;
 * policy_denied: an inbound connection the authorization policies refused (before any upstream
 * connect), reset;
 * error: an internal error (e.g. no original destination), reset.
 */
export type CloseHow = "done" | "reset" | "connect_failed" | "refused_loop" | "policy_denied" | "drained" | "deleted" | "error";

/** Which policy refused a connection (closeHow policy_denied), for the access log and the admin. */
export interface Denial {
  /** "namespace/name" of the deciding policy; absent when no ALLOW policy matched. */
  policy?: string;
  /** Its rule index (`spec.rules[i]`), when a rule decided. */
  rule?: number;
  /** src/policy DecisionCode: explicitly-denied, mtls-required, not-allowed. */
  code: string;
}

/**
 * An HBONE connection's security facts (mTLS). Outbound: the pod's own identity and the one the
 * destination must present (the one it did, once connected); inbound: the client's verified
 * identity and the pod's.
 */
export interface MtlsInfo {
  srcIdentity: string;
  dstIdentity: string;
  /** The tunnel's TCP endpoint: the destination pod's `<IP>:15008` (both directions). */
  tunnelAddr: string;
}

export interface ConnectionRecord {
  readonly id: number;
  readonly pod: PodRef;
  readonly direction: Direction;
  /** The client's address (peer of the accepted socket). */
  readonly source: Endpoint;
  /** Where the client meant to go (SO_ORIGINAL_DST, or the local address when not redirected). */
  readonly originalDst: Endpoint;
  /** Where the proxy actually connects (today always the original destination). */
  upstream: Endpoint;
  /** The upstream socket's local address once connected (the client IP for inbound). */
  upstreamLocal: Endpoint | undefined;
  /** Bytes read from the client and written upstream. */
  bytesSent: number;
  /** Bytes read from upstream and written to the client. */
  bytesReceived: number;
  /** ms since the epoch. */
  readonly startedAt: number;
  connectedAt: number | undefined;
  closedAt: number | undefined;
  state: ConnectionState;
  closeHow: CloseHow | undefined;
  /** Why it failed, for connect_failed / reset / error / policy_denied. */
  error: string | undefined;
  /** Set when an authorization policy refused it. */
  denial?: Denial;
  /** Set for a connection carried over HBONE (mutual TLS); plaintext otherwise. */
  readonly mtls: MtlsInfo | undefined;
  /** Free slots for observers (e.g. metrics' resolved label set), keyed by observer name. */
  readonly ext: Record<string, unknown>;
}

/** Hooks called synchronously on the event loop; they must not throw (errors are logged, then ignored). */
export interface ConnectionObserver {
  /** After accept, with the original destination known; before the upstream connect starts. */
  onConnectionOpen?(rec: ConnectionRecord): void;
  /** The upstream connect succeeded. */
  onConnectionEstablished?(rec: ConnectionRecord): void;
  /** Bytes relayed (`toUpstream`: client → upstream). Called per chunk: keep it cheap. */
  onBytes?(rec: ConnectionRecord, toUpstream: boolean, n: number): void;
  /** Once, after both sockets are closed. */
  onConnectionClose?(rec: ConnectionRecord, how: CloseHow): void;
}

/** Plain-JSON view of a record for the admin API. */
export function recordJson(r: ConnectionRecord): Record<string, unknown> {
  return {
    id: r.id,
    pod: { uid: r.pod.uid, name: r.pod.name, namespace: r.pod.namespace },
    direction: r.direction,
    source: `${fmt(r.source)}`,
    originalDst: fmt(r.originalDst),
    upstream: fmt(r.upstream),
    upstreamLocal: r.upstreamLocal ? fmt(r.upstreamLocal) : null,
    bytesSent: r.bytesSent,
    bytesReceived: r.bytesReceived,
    startedAt: new Date(r.startedAt).toISOString(),
    connectedAt: r.connectedAt ? new Date(r.connectedAt).toISOString() : null,
    closedAt: r.closedAt ? new Date(r.closedAt).toISOString() : null,
    state: r.state,
    closeHow: r.closeHow ?? null,
    error: r.error ?? null,
    ...(r.denial ? { denial: r.denial } : {}),
    security: r.mtls ? "mutual_tls" : "none",
    ...(r.mtls ? { srcIdentity: r.mtls.srcIdentity, dstIdentity: r.mtls.dstIdentity, tunnelAddr: r.mtls.tunnelAddr } : {}),
  };
}

export function fmt(e: Endpoint): string {
  return e.ip.includes(":") ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

/**
 * The live connections of the whole process, the recently closed ones (a bounded ring, for
 * debugging and tests), and the observers. One instance per proxy process.
 */
export class ConnectionTable {
  readonly #live = new Map<number, ConnectionRecord>();
  readonly #recent: ConnectionRecord[] = [];
  readonly #observers: ConnectionObserver[] = [];
  readonly #recentMax: number;
  #nextId: number;
  readonly #idStep: number;
  #onError: (e: unknown) => void;
  /** Called each time the live table becomes empty (drain waits on it). */
  #idleWaiters: Array<() => void> = [];

  /**
   * `firstId`/`idStep`: each data-plane thread numbers its connections firstId, firstId+idStep, …
   * so ids stay unique across threads (thread i of n: firstId i+1, idStep n).
   */
  constructor(opts: { recentMax?: number; onObserverError?: (e: unknown) => void; firstId?: number; idStep?: number } = {}) {
    this.#recentMax = opts.recentMax ?? 1024;
    this.#nextId = opts.firstId ?? 1;
    this.#idStep = opts.idStep ?? 1;
    this.#onError = opts.onObserverError ?? (() => undefined);
  }

  addObserver(o: ConnectionObserver): () => void {
    this.#observers.push(o);
    return () => {
      const i = this.#observers.indexOf(o);
      if (i >= 0) this.#observers.splice(i, 1);
    };
  }

  /** Whether any observer wants per-chunk byte callbacks (the relay skips the call otherwise). */
  get wantsBytes(): boolean {
    return this.#observers.some((o) => o.onBytes);
  }

  open(init: { pod: PodRef; direction: Direction; source: Endpoint; originalDst: Endpoint; upstream: Endpoint; mtls?: MtlsInfo }): ConnectionRecord {
    const rec: ConnectionRecord = {
      id: this.#nextId,
      pod: init.pod,
      direction: init.direction,
      source: init.source,
      originalDst: init.originalDst,
      upstream: init.upstream,
      upstreamLocal: undefined,
      bytesSent: 0,
      bytesReceived: 0,
      startedAt: Date.now(),
      connectedAt: undefined,
      closedAt: undefined,
      state: "connecting",
      closeHow: undefined,
      error: undefined,
      mtls: init.mtls,
      ext: {},
    };
    this.#nextId += this.#idStep;
    this.#live.set(rec.id, rec);
    for (const o of this.#observers) this.#call(() => o.onConnectionOpen?.(rec));
    return rec;
  }

  established(rec: ConnectionRecord): void {
    rec.connectedAt = Date.now();
    if (rec.state === "connecting") rec.state = "open";
    for (const o of this.#observers) this.#call(() => o.onConnectionEstablished?.(rec));
  }

  bytes(rec: ConnectionRecord, toUpstream: boolean, n: number): void {
    for (const o of this.#observers) if (o.onBytes) this.#call(() => o.onBytes!(rec, toUpstream, n));
  }

  close(rec: ConnectionRecord, how: CloseHow, error?: string): void {
    if (rec.state === "closed") return;
    rec.state = "closed";
    rec.closeHow = how;
    rec.closedAt = Date.now();
    if (error !== undefined && rec.error === undefined) rec.error = error;
    this.#live.delete(rec.id);
    this.#recent.push(rec);
    if (this.#recent.length > this.#recentMax) this.#recent.splice(0, this.#recent.length - this.#recentMax);
    for (const o of this.#observers) this.#call(() => o.onConnectionClose?.(rec, how));
    if (this.#live.size === 0 && this.#idleWaiters.length > 0) {
      const ws = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of ws) w();
    }
  }

  get size(): number {
    return this.#live.size;
  }

  live(): IterableIterator<ConnectionRecord> {
    return this.#live.values();
  }

  /** Recently closed records, oldest first (at most recentMax). */
  recent(): readonly ConnectionRecord[] {
    return this.#recent;
  }

  /** Resolves when no connection is live (at once if none is). */
  whenIdle(): Promise<void> {
    if (this.#live.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #call(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.#onError(e);
    }
  }
}
