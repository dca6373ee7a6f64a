// The ZDS server: the node agent's end of the agent → proxy hand-off (Istio's istio-cni role).
//
// It listens on an AF_UNIX SOCK_SEQPACKET socket. Each proxy that connects sends a ZdsHello;
// the server then sends it a snapshot of every pod the agent knows (AddWorkload with the pod's
// netns fd, or KeepWorkload when the agent has no netns for it), then SnapshotSent, then live
// requests: AddWorkload to the newest connection only, DelWorkload to every connection. With
// several proxies connected (a rollout overlaps the old and the new one), the callbacks name the
// connection of each answer, so the agent can tell which proxy serves which pod.
//
// Three parts: gate.ts (listening, accepting, peer credentials, the hello), server-conn.ts (one
// proxy's connection: the single loop that reads and writes it) and this file (the proxies
// connected, and which of them gets which request). See docs/zds.md, "Server and client behaviour".
import { chmodSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { Netns, PeerCred } from "../sys/index.ts";
import { errorText, type PacketConn } from "./conn.ts";
import { ZdsGate, type ZdsGateStats } from "./gate.ts";
import { addRequest, delRequest, encodeRequest } from "./messages.ts";
import { ServerConn, type ServerConnHost } from "./server-conn.ts";
import { ZdsRequestError, type SnapshotEntry, type WorkloadIdentity, type ZdsLog } from "./types.ts";

export type { ZdsGateStats } from "./gate.ts";

export interface ZdsServerOptions {
  /** Socket path, e.g. /var/run/nshub/zds.sock (Istio: /var/run/ztunnel/ztunnel.sock). */
  path: string;
  /** Mode of the socket file (default 0o600). */
  socketMode?: number;
  /** Owner of the socket file (default: the agent's own uid/gid, i.e. root). */
  socketOwner?: { uid: number; gid: number };
  /** If set, only peers whose SO_PEERCRED uid is listed may connect; others are logged and closed. */
  allowedUids?: number[];
  /** How long a new connection may take to send its ZdsHello (default 2000; a proxy sends it at once). */
  helloTimeoutMs?: number;
  /** Connections waiting for their hello at most; beyond that the oldest is closed (default 16). */
  maxWaitingHellos?: number;
  /** How long to wait for each ack (and for room to send); on expiry the connection is closed (default 5000). */
  ackTimeoutMs?: number;
  /** How often an idle connection is checked for a dead or misbehaving peer (default 5000). */
  keepaliveIntervalMs?: number;
  /** listen(2) backlog (default 64). */
  backlog?: number;
  /** The pods to send to a newly connected proxy. Called once per connection, after its hello. */
  snapshot: () => SnapshotEntry[];
  log?: ZdsLog;
  /** A proxy connected and sent its hello (its snapshot starts now; its answers come after this). */
  onConnected?: (connId: number, peer: PeerCred) => void;
  /** A connection that had sent its hello ended (after its last answer): it serves nothing any more. */
  onDisconnected?: (connId: number, reason: string) => void;
  /** One snapshot entry was answered by connection `connId`: `error` is the nack text (or why the exchange failed), undefined on success. */
  onSnapshotResult?: (uid: string, error: string | undefined, connId: number) => void;
  /** SnapshotSent was acked (or nacked, which is only logged); live requests flow from now on. */
  onSnapshotDone?: (connId: number) => void;
}

/** What `connections()` reports about each accepted connection. */
export interface ZdsConnectionInfo {
  id: number;
  state: "hello" | "snapshot" | "live";
  peer: PeerCred;
  queued: number;
  /** Requests this proxy nacked so far (snapshot and live). */
  nacks: number;
}

const defaultLog: ZdsLog = (level, msg, fields) => {
  if (level === "debug" || level === "info") return;
  console.error(`zds-server ${level}: ${msg}${fields ? " " + JSON.stringify(fields) : ""}`);
};

export class ZdsServer {
  readonly path: string;
  readonly #opts: ZdsServerOptions;
  readonly #log: ZdsLog;
  readonly #gate: ZdsGate;
  readonly #host: ServerConnHost;
  /** Connections past their hello, in accept order (the newest gets Adds). */
  #conns: ServerConn[] = [];
  readonly #loops = new Set<Promise<void>>();
  #started = false;
  #stopped = false;
  #stopping: Promise<void> | undefined;

  constructor(options: ZdsServerOptions) {
    this.#opts = options;
    this.path = options.path;
    this.#log = options.log ?? defaultLog;
    this.#gate = new ZdsGate({
      path: options.path,
      socketMode: options.socketMode ?? 0o600,
      socketOwner: options.socketOwner,
      allowedUids: options.allowedUids,
      helloTimeoutMs: options.helloTimeoutMs ?? 2000,
      maxWaiting: options.maxWaitingHellos ?? 16,
      backlog: options.backlog ?? 64,
      log: this.#log,
      admit: (id, conn, peer) => this.#admit(id, conn, peer),
    });
    this.#host = {
      log: this.#log,
      ackTimeoutMs: options.ackTimeoutMs ?? 5000,
      keepaliveMs: options.keepaliveIntervalMs ?? 5000,
      snapshot: () => options.snapshot(),
      onSnapshotResult: (uid, error, id) => this.#emit("onSnapshotResult", options.onSnapshotResult, uid, error, id),
      onSnapshotDone: (id) => this.#emit("onSnapshotDone", options.onSnapshotDone, id),
      onClosed: (c, reason) => {
        this.#conns = this.#conns.filter((x) => x !== c);
        this.#emit("onDisconnected", options.onDisconnected, c.id, reason);
      },
    };
  }

  /**
   * Creates the socket directory (0755) if missing, removes a stale socket file (refusing to
   * remove anything that is not a socket, or a socket another agent still serves), listens,
   * sets the socket's mode (and owner), and starts accepting. Throws if the socket cannot be
   * set up.
   */
  start(): void {
    if (this.#started) throw new Error("ZdsServer already started");
    this.#started = true;
    const dir = dirname(this.path);
    if (mkdirSync(dir, { recursive: true, mode: 0o755 }) !== undefined) chmodSync(dir, 0o755);
    this.#gate.listen();
    this.#track(this.#gate.run());
    this.#log("info", "ZDS server listening", { path: this.path, mode: (this.#opts.socketMode ?? 0o600).toString(8) });
  }

  /**
   * Closes the listener and every connection; queued and in-flight requests reject with
   * "server stopped". Resolves once every loop has ended (they never wait on the peer).
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#stopped = true;
    await this.#gate.close();
    for (const c of [...this.#conns]) c.close("server stopped", "stopped", "info");
    await Promise.allSettled([...this.#loops]);
    this.#log("info", "ZDS server stopped", { path: this.path });
  }

  /** Number of proxies connected (hello received, connection still open). */
  connectionCount(): number {
    return this.#conns.length;
  }

  /** Every open connection, also those still waiting for their hello, in accept order. */
  connections(): ZdsConnectionInfo[] {
    const waiting = this.#gate.waiting().map((w) => ({ id: w.id, state: "hello" as const, peer: w.peer, queued: 0, nacks: 0 }));
    const connected = this.#conns.map((c) => ({ id: c.id, state: c.state as "snapshot" | "live", peer: c.peer, queued: c.queue.length, nacks: c.nacks }));
    return [...waiting, ...connected].sort((a, b) => a.id - b.id);
  }

  /** Counters of the accept/hello gate (refused peers, evictions, hello timeouts, versions…). */
  stats(): ZdsGateStats {
    return this.#gate.stats();
  }

  /**
   * Sends AddWorkload{uid, info} with `netns` attached to the newest connected proxy. If that
   * proxy is still receiving its snapshot, the request goes out right after SnapshotSent.
   * `netns` stays owned by the caller, who must keep it open until the promise settles (a netns
   * closed before its turn is not sent: the promise rejects). Resolves with the id of the
   * connection that acked. Rejects with a ZdsRequestError: "no proxy connected", the nack text
   * (`conn` names the connection), a timeout, or the connection/server ending.
   */
  addWorkload(uid: string, info: WorkloadIdentity, netns: Netns): Promise<number> {
    if (this.#stopped) return Promise.reject(new ZdsRequestError("stopped", "server stopped"));
    const c = this.#conns[this.#conns.length - 1];
    if (c === undefined) return Promise.reject(new ZdsRequestError("no-connection", "no proxy connected"));
    let bytes: Uint8Array;
    try {
      bytes = encodeRequest(addRequest(uid, info));
    } catch (e) {
      return Promise.reject(new ZdsRequestError("io", errorText(e)));
    }
    return c.enqueue({ what: "AddWorkload", uid, bytes, netns }).then(() => c.id);
  }

  /**
   * Sends DelWorkload{uid} to every connected proxy and resolves when all have acked. With no
   * proxy connected there is nobody to tell: resolves at once. If some connections fail, rejects
   * with that error (one connection) or a combined ZdsRequestError listing each (`errors`).
   */
  async delWorkload(uid: string): Promise<void> {
    if (this.#stopped) throw new ZdsRequestError("stopped", "server stopped");
    const conns = [...this.#conns];
    if (conns.length === 0) return;
    const bytes = encodeRequest(delRequest(uid));
    const results = await Promise.allSettled(conns.map((c) => c.enqueue({ what: "DelWorkload", uid, bytes })));
    const failures: ZdsRequestError[] = [];
    results.forEach((r, i) => {
      if (r.status === "rejected") {
        const e = r.reason instanceof ZdsRequestError ? r.reason : new ZdsRequestError("io", errorText(r.reason));
        failures.push(new ZdsRequestError(e.kind, `connection ${conns[i]!.id}: ${e.message}`, { nack: e.nack }));
      }
    });
    if (failures.length === 0) return;
    if (failures.length === 1) {
      const only = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
      throw only.reason;
    }
    throw new ZdsRequestError(failures[0]!.kind, failures.map((f) => f.message).join("; "), { errors: failures });
  }

  // ---- internals ---------------------------------------------------------------------------

  /** A proxy said hello (gate.ts): it joins the connected ones and its snapshot starts. */
  #admit(id: number, conn: PacketConn, peer: PeerCred): void {
    if (this.#stopped) {
      conn.close();
      return;
    }
    const c = new ServerConn(id, conn, peer, this.#host);
    // Accept order, as Istio keeps it: a proxy that said hello late is not "newer" for that.
    this.#conns = [...this.#conns, c].sort((a, b) => a.id - b.id);
    this.#emit("onConnected", this.#opts.onConnected, id, peer);
    this.#track(
      c.run().catch((e) => {
        this.#log("error", "ZDS connection handler failed", { conn: id, error: errorText(e) });
        c.close(`handler failed: ${errorText(e)}`, "io", "error");
      }),
    );
  }

  #track(p: Promise<void>): void {
    this.#loops.add(p);
    void p.finally(() => this.#loops.delete(p));
  }

  #emit<A extends unknown[]>(name: string, fn: ((...args: A) => void) | undefined, ...args: A): void {
    if (fn === undefined) return;
    try {
      fn(...args);
    } catch (e) {
      this.#log("error", `ZDS server callback ${name} threw`, { error: errorText(e) });
    }
  }
}
