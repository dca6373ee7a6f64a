// The HBONE connection pool, keyed like ztunnel's WorkloadKey
// (https://github.com/istio/ztunnel/blob/master/src/proxy/pool.rs): (source identity, source IP,
// destination identities, destination IP). Each connection carries at most 100 streams
// (POOL_MAX_STREAMS_PER_CONNECTION, or fewer if the server's SETTINGS say so); beyond that a new
// connection is dialled. Streams wait for a dial in progress instead of each dialling its own.
// A connection with no stream for `idleMs` is closed; a PING every 10 s that is not answered
// within 20 s drops the connection (src/proxy/h2.rs do_ping_pong).
import type { Duplex } from "node:stream";
import type http2 from "node:http2";
import { dialHbone, HboneError, openStream, type ClientCertificate, type HboneConnection } from "./client.ts";
import { PING_INTERVAL_MS, PING_TIMEOUT_MS, POOL_IDLE_MS, POOL_MAX_STREAMS_PER_CONNECTION, type HboneHeaders, type Target } from "./wire.ts";

export interface PoolRequest {
  sourceIdentity: string;
  /**
   * The source pod's IP: part of the key (ztunnel's WorkloadKey has it too), because a pooled
   * connection's socket lives in that pod's netns and carries its address.
   */
  sourceIp?: string;
  certificate: ClientCertificate;
  /** The destination pod's IP; the tunnel goes to its :15008 (or `port`). */
  destinationIp: string;
  port?: number;
  expectedIdentities: readonly string[];
  target: Target;
  headers?: HboneHeaders;
  /** Makes the TCP socket of a new connection (in the source pod's netns, marked). */
  createSocket?: () => Promise<number | Duplex>;
}

export interface PoolOptions {
  maxStreamsPerConnection?: number;
  idleMs?: number;
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  timeoutMs?: number;
  /** How long a CONNECT may wait for its answer (default 15 s). */
  responseTimeoutMs?: number;
}

interface Entry {
  key: string;
  sourceIp: string | undefined;
  conn?: HboneConnection;
  dialing?: Promise<HboneConnection>;
  /** Streams open or promised (waiting on the dial). */
  streams: number;
  /** Streams actually opened on the connection (≤ limit). */
  open: number;
  limit: number;
  closed: boolean;
  idleTimer?: ReturnType<typeof setTimeout>;
  pingTimer?: ReturnType<typeof setInterval>;
}

export class HbonePool {
  private readonly entries = new Map<string, Entry[]>();
  private readonly max: number;
  private readonly idleMs: number;
  private readonly pingIntervalMs: number;
  private readonly pingTimeoutMs: number;
  /** Connections dialled so far (tests and metrics). */
  dials = 0;

  constructor(private readonly o: PoolOptions = {}) {
    this.max = o.maxStreamsPerConnection ?? POOL_MAX_STREAMS_PER_CONNECTION;
    this.idleMs = o.idleMs ?? POOL_IDLE_MS;
    this.pingIntervalMs = o.pingIntervalMs ?? PING_INTERVAL_MS;
    this.pingTimeoutMs = o.pingTimeoutMs ?? PING_TIMEOUT_MS;
  }

  static key(r: Pick<PoolRequest, "sourceIdentity" | "sourceIp" | "expectedIdentities" | "destinationIp" | "port">): string {
    return `${r.sourceIdentity}|${r.sourceIp ?? ""}|${[...r.expectedIdentities].sort().join(",")}|${r.destinationIp}:${r.port ?? 15008}`;
  }

  /** A CONNECT stream to `r.target` on a pooled connection; rejects with HboneError. */
  async connect(r: PoolRequest): Promise<http2.ClientHttp2Stream> {
    let retried = false;
    for (;;) {
      const entry = this.reserve(r);
      let conn: HboneConnection;
      try {
        conn = entry.conn ?? (await entry.dialing!);
      } catch (e) {
        this.release(entry);
        throw e;
      }
      // Streams reserved during the dial assumed 100; the server's SETTINGS may say fewer.
      // The excess goes elsewhere (Bun's client would queue it, waiting on streams that wait too).
      if (entry.open >= entry.limit) {
        this.release(entry);
        continue;
      }
      // A pooled connection whose peer went away before we heard of it (its close event not yet
      // handled): drop it and take another, rather than fail a stream on a dead connection.
      if (dead(conn)) {
        this.release(entry);
        this.drop(entry);
        continue;
      }
      entry.open++;
      let stream: http2.ClientHttp2Stream;
      try {
        stream = await openStream(conn, r.target, r.headers, this.o.responseTimeoutMs);
      } catch (e) {
        entry.open--;
        this.release(entry);
        // The connection died under this stream (not a refusal): once more on a fresh one.
        if (!retried && e instanceof HboneError && e.kind === "stream" && dead(conn)) {
          retried = true;
          this.drop(entry);
          continue;
        }
        throw e;
      }
      stream.once("close", () => {
        entry.open--;
        this.release(entry);
      });
      return stream;
    }
  }

  /** Live connections and their stream counts. */
  stats(): { connections: number; streams: number; perConnection: number[] } {
    const all = [...this.entries.values()].flat();
    return { connections: all.length, streams: all.reduce((n, e) => n + e.streams, 0), perConnection: all.map((e) => e.streams) };
  }

  close(): void {
    for (const list of this.entries.values()) for (const e of [...list]) this.drop(e);
  }

  /**
   * Closes the connections made for these source IPs (a source pod that left: its sockets
   * live in its netns and would keep that alive until they idle out).
   */
  closeSources(ips: Iterable<string>): void {
    const gone = new Set(ips);
    for (const list of [...this.entries.values()]) for (const e of [...list]) if (e.sourceIp !== undefined && gone.has(e.sourceIp)) this.drop(e);
  }

  private reserve(r: PoolRequest): Entry {
    const key = HbonePool.key(r);
    const list = this.entries.get(key) ?? [];
    this.entries.set(key, list);
    let e = list.find((x) => !x.closed && x.streams < x.limit && !(x.conn && dead(x.conn)));
    if (!e) {
      e = { key, sourceIp: r.sourceIp, streams: 0, open: 0, limit: this.max, closed: false };
      list.push(e);
      this.dial(e, r);
    }
    e.streams++;
    if (e.idleTimer) clearTimeout(e.idleTimer);
    e.idleTimer = undefined;
    return e;
  }

  private dial(e: Entry, r: PoolRequest): void {
    this.dials++;
    e.dialing = (async () => {
      const socket = r.createSocket ? await r.createSocket() : undefined;
      return dialHbone({ address: r.destinationIp, port: r.port, certificate: r.certificate, expectedIdentities: r.expectedIdentities, socket, timeoutMs: this.o.timeoutMs });
    })();
    e.dialing.then(
      (conn) => {
        e.conn = conn;
        e.dialing = undefined;
        // The server may allow fewer streams than we would use (ztunnel takes the minimum).
        e.limit = Math.min(this.max, conn.remoteMaxStreams);
        conn.session.on("close", () => this.drop(e));
        conn.session.on("goaway", () => (e.closed = true));
        this.startPing(e, conn);
        if (e.streams === 0) this.armIdle(e);
      },
      () => this.drop(e),
    );
  }

  private startPing(e: Entry, conn: HboneConnection): void {
    e.pingTimer = setInterval(() => {
      const timeout = setTimeout(() => conn.session.destroy(new HboneError("timeout", `no PING answer within ${this.pingTimeoutMs} ms`)), this.pingTimeoutMs);
      const sent = conn.session.ping((err) => {
        clearTimeout(timeout);
        if (err && !conn.session.destroyed) conn.session.destroy(err);
      });
      if (!sent) clearTimeout(timeout);
    }, this.pingIntervalMs);
    e.pingTimer.unref?.();
  }

  private release(e: Entry): void {
    e.streams--;
    if (e.streams === 0 && !e.closed) this.armIdle(e);
  }

  private armIdle(e: Entry): void {
    if (!e.conn) return;
    e.idleTimer = setTimeout(() => this.drop(e), this.idleMs);
    e.idleTimer.unref?.();
  }

  private drop(e: Entry): void {
    e.closed = true;
    if (e.idleTimer) clearTimeout(e.idleTimer);
    if (e.pingTimer) clearInterval(e.pingTimer);
    const list = this.entries.get(e.key);
    const i = list?.indexOf(e) ?? -1;
    if (i >= 0) list!.splice(i, 1);
    if (list?.length === 0) this.entries.delete(e.key);
    // Streams still open keep running; close() lets them finish, new ones go elsewhere.
    if (e.conn && !e.conn.session.closed) e.conn.session.close();
  }
}

/** The session is gone or going (closed, destroyed, or its socket ended). */
function dead(conn: HboneConnection): boolean {
  const s = conn.session;
  return s.closed || s.destroyed || s.socket?.destroyed === true;
}
