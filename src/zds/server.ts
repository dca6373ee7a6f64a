// The ZDS server: the node agent's end of the agent → proxy hand-off (Istio's istio-cni role).
//
// It listens on an AF_UNIX SOCK_SEQPACKET socket. Each proxy that connects sends a ZdsHello;
// the server then sends it a snapshot of every pod the agent knows (AddWorkload with the pod's
// netns fd, or KeepWorkload when the agent has no netns for it), then SnapshotSent, then live
// requests: AddWorkload to the newest connection only, DelWorkload to every connection.
//
// One loop per connection is the only code that writes to or reads from that connection, so
// there is exactly one request in flight and the next ack always belongs to it. Callers queue
// requests and get a promise. An ack that does not come within ackTimeoutMs closes the
// connection: a late ack could otherwise be paired with the next request (Istio keeps the
// connection here; nshub does not). See docs/zds.md, "Server and client behaviour".
import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import {
  acceptUnix,
  claimSocketPath,
  closeFd,
  fdPoller,
  listenUnix,
  peerCred,
  POLLIN,
  SOCK_SEQPACKET,
  type Netns,
  type PeerCred,
} from "../sys/index.ts";
import { closeAll, ConnSendError, errorText, hexPreview, PacketConn, Sleeper } from "./conn.ts";
import {
  ackError,
  addRequest,
  decodeHello,
  decodeResponse,
  delRequest,
  encodeRequest,
  keepRequest,
  snapshotSentRequest,
  Version,
} from "./messages.ts";
import {
  ZdsRequestError,
  type SnapshotEntry,
  type WorkloadIdentity,
  type ZdsLog,
  type ZdsRequestErrorKind,
} from "./types.ts";

export interface ZdsServerOptions {
  /** Socket path, e.g. /var/run/nshub/zds.sock (Istio: /var/run/ztunnel/ztunnel.sock). */
  path: string;
  /** Mode of the socket file (default 0o600). */
  socketMode?: number;
  /** Owner of the socket file (default: the agent's own uid/gid, i.e. root). */
  socketOwner?: { uid: number; gid: number };
  /** If set, only peers whose SO_PEERCRED uid is listed may connect; others are logged and closed. */
  allowedUids?: number[];
  /** How long a new connection may take to send its ZdsHello (default 5000). */
  helloTimeoutMs?: number;
  /** How long to wait for each ack (and for room to send); on expiry the connection is closed (default 5000). */
  ackTimeoutMs?: number;
  /** How often an idle connection is checked for a dead or misbehaving peer (default 5000). */
  keepaliveIntervalMs?: number;
  /** Accept rate limit, burst 1 (default 5 per second, as Istio). 0 or Infinity: unlimited. */
  acceptsPerSecond?: number;
  /** listen(2) backlog (default 64). */
  backlog?: number;
  /** The pods to send to a newly connected proxy. Called once per connection, after its hello. */
  snapshot: () => SnapshotEntry[];
  log?: ZdsLog;
  /** A proxy connected and sent its hello (its snapshot starts now). */
  onConnected?: (connId: number, peer: PeerCred) => void;
  /** A connection that had sent its hello ended. */
  onDisconnected?: (connId: number, reason: string) => void;
  /** One snapshot entry was answered: `error` is the nack text (or why the exchange failed), undefined on success. */
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
}

type ConnState = "hello" | "snapshot" | "live" | "closed";

interface Request {
  what: string;
  uid: string;
  bytes: Uint8Array;
  netns?: Netns;
  resolve: () => void;
  reject: (e: ZdsRequestError) => void;
}

interface Conn {
  id: number;
  conn: PacketConn;
  peer: PeerCred;
  state: ConnState;
  queue: Request[];
  wake: (() => void) | undefined;
  closeKind: ZdsRequestErrorKind;
}

type Exchange = { ok: true; error: string } | { ok: false; err: ZdsRequestError };

const defaultLog: ZdsLog = (level, msg, fields) => {
  if (level === "debug" || level === "info") return;
  console.error(`zds-server ${level}: ${msg}${fields ? " " + JSON.stringify(fields) : ""}`);
};

export class ZdsServer {
  readonly path: string;
  readonly #opts: ZdsServerOptions;
  readonly #log: ZdsLog;
  readonly #helloTimeoutMs: number;
  readonly #ackTimeoutMs: number;
  readonly #keepaliveMs: number;
  readonly #acceptIntervalMs: number;
  readonly #sleeper = new Sleeper();
  /** Accepted connections, oldest first (the newest connected one gets Adds). */
  #conns: Conn[] = [];
  readonly #loops = new Set<Promise<void>>();
  #listenFd = -1;
  #socketIno: number | undefined;
  #nextId = 0;
  #started = false;
  #stopped = false;
  #stopping: Promise<void> | undefined;

  constructor(options: ZdsServerOptions) {
    this.#opts = options;
    this.path = options.path;
    this.#log = options.log ?? defaultLog;
    this.#helloTimeoutMs = options.helloTimeoutMs ?? 5000;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.#keepaliveMs = options.keepaliveIntervalMs ?? 5000;
    const rate = options.acceptsPerSecond ?? 5;
    this.#acceptIntervalMs = rate > 0 && Number.isFinite(rate) ? 1000 / rate : 0;
  }

  /**
   * Creates the socket directory (0755) if missing, removes a stale socket file (refusing to
   * remove anything that is not a socket, or a socket another agent still serves), listens, sets the socket's mode (and owner), and
   * starts accepting. Throws if the socket cannot be set up.
   */
  start(): void {
    if (this.#started) throw new Error("ZdsServer already started");
    this.#started = true;
    const dir = dirname(this.path);
    if (mkdirSync(dir, { recursive: true, mode: 0o755 }) !== undefined) chmodSync(dir, 0o755);
    // Throws while another agent still listens here: taking its path would split the proxies.
    if (claimSocketPath(this.path, SOCK_SEQPACKET, "ZDS")) this.#log("info", "removed stale ZDS socket", { path: this.path });
    const fd = listenUnix(this.path, SOCK_SEQPACKET, this.#opts.backlog ?? 64);
    try {
      chmodSync(this.path, this.#opts.socketMode ?? 0o600);
      if (this.#opts.socketOwner) chownSync(this.path, this.#opts.socketOwner.uid, this.#opts.socketOwner.gid);
      this.#socketIno = lstatSync(this.path).ino;
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    this.#listenFd = fd;
    this.#track(this.#acceptLoop());
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
    this.#sleeper.wake();
    if (this.#listenFd >= 0) {
      fdPoller().cancel(this.#listenFd);
      closeFd(this.#listenFd);
      this.#listenFd = -1;
      try {
        // Only remove the file if it is still ours (another agent may have replaced it).
        if (this.#socketIno !== undefined && lstatSync(this.path).ino === this.#socketIno) unlinkSync(this.path);
      } catch {
        // already gone
      }
    }
    for (const c of [...this.#conns]) this.#closeConn(c, "server stopped", "stopped", "info");
    await Promise.allSettled([...this.#loops]);
    this.#log("info", "ZDS server stopped", { path: this.path });
  }

  /** Number of proxies connected (hello received, connection still open). */
  connectionCount(): number {
    return this.#connected().length;
  }

  connections(): ZdsConnectionInfo[] {
    return this.#conns
      .filter((c) => c.state !== "closed")
      .map((c) => ({ id: c.id, state: c.state as ZdsConnectionInfo["state"], peer: c.peer, queued: c.queue.length }));
  }

  /**
   * Sends AddWorkload{uid, info} with `netns` attached to the newest connected proxy. If that
   * proxy is still receiving its snapshot, the request goes out right after SnapshotSent.
   * `netns` stays owned by the caller, who must keep it open until the promise settles (a netns
   * closed before its turn is not sent: the promise rejects). Rejects with a ZdsRequestError:
   * "no proxy connected", the nack text, a timeout, or the connection/server ending.
   */
  addWorkload(uid: string, info: WorkloadIdentity, netns: Netns): Promise<void> {
    if (this.#stopped) return Promise.reject(new ZdsRequestError("stopped", "server stopped"));
    const connected = this.#connected();
    const c = connected[connected.length - 1];
    if (c === undefined) return Promise.reject(new ZdsRequestError("no-connection", "no proxy connected"));
    let bytes: Uint8Array;
    try {
      bytes = encodeRequest(addRequest(uid, info));
    } catch (e) {
      return Promise.reject(new ZdsRequestError("io", errorText(e)));
    }
    return this.#enqueue(c, { what: "AddWorkload", uid, bytes, netns });
  }

  /**
   * Sends DelWorkload{uid} to every connected proxy and resolves when all have acked. With no
   * proxy connected there is nobody to tell: resolves at once. If some connections fail, rejects
   * with that error (one connection) or a combined ZdsRequestError listing each (`errors`).
   */
  async delWorkload(uid: string): Promise<void> {
    if (this.#stopped) throw new ZdsRequestError("stopped", "server stopped");
    const conns = this.#connected();
    if (conns.length === 0) return;
    const bytes = encodeRequest(delRequest(uid));
    const results = await Promise.allSettled(conns.map((c) => this.#enqueue(c, { what: "DelWorkload", uid, bytes })));
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

  #connected(): Conn[] {
    return this.#conns.filter((c) => c.state === "snapshot" || c.state === "live");
  }

  #enqueue(c: Conn, r: Omit<Request, "resolve" | "reject">): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      c.queue.push({ ...r, resolve, reject });
      c.wake?.();
    });
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

  async #acceptLoop(): Promise<void> {
    let nextAt = 0;
    while (!this.#stopped) {
      const wait = nextAt - Date.now();
      if (wait > 0) {
        await this.#sleeper.sleep(wait);
        continue;
      }
      await fdPoller().wait(this.#listenFd, POLLIN);
      if (this.#stopped) break;
      let fd: number | null;
      try {
        fd = acceptUnix(this.#listenFd);
      } catch (e) {
        // EMFILE and friends: do not spin; try again shortly.
        this.#log("error", "accept on the ZDS socket failed", { path: this.path, error: errorText(e) });
        await this.#sleeper.sleep(100);
        continue;
      }
      if (fd === null) continue;
      nextAt = Date.now() + this.#acceptIntervalMs;
      this.#accepted(fd);
    }
  }

  #accepted(fd: number): void {
    const id = ++this.#nextId;
    let peer: PeerCred;
    try {
      peer = peerCred(fd);
    } catch (e) {
      this.#log("warn", "could not read the ZDS peer's credentials; closing", { conn: id, error: errorText(e) });
      closeFd(fd);
      return;
    }
    const allowed = this.#opts.allowedUids;
    if (allowed !== undefined && !allowed.includes(peer.uid)) {
      this.#log("warn", `rejected ZDS connection from uid ${peer.uid} (pid ${peer.pid}): uid not allowed`, {
        conn: id,
        uid: peer.uid,
        pid: peer.pid,
        allowedUids: allowed,
      });
      closeFd(fd);
      return;
    }
    const c: Conn = { id, conn: new PacketConn(fd), peer, state: "hello", queue: [], wake: undefined, closeKind: "closed" };
    this.#conns.push(c);
    this.#log("debug", "ZDS connection accepted", { conn: id, pid: peer.pid, uid: peer.uid });
    this.#track(
      this.#runConn(c).catch((e) => {
        this.#log("error", "ZDS connection handler failed", { conn: id, error: errorText(e) });
        this.#closeConn(c, `handler failed: ${errorText(e)}`, "io", "error");
      }),
    );
  }

  #closeConn(c: Conn, reason: string, kind: ZdsRequestErrorKind, level: "debug" | "info" | "warn" | "error"): void {
    if (c.state === "closed") return;
    const wasConnected = c.state !== "hello";
    c.state = "closed";
    c.closeKind = kind;
    c.conn.close();
    this.#conns = this.#conns.filter((x) => x !== c);
    this.#log(level, `ZDS connection closed: ${reason}`, { conn: c.id, pid: c.peer.pid, queued: c.queue.length });
    const text = kind === "stopped" ? "server stopped" : "connection closed before request sent";
    for (const r of c.queue.splice(0)) r.reject(new ZdsRequestError(kind === "stopped" ? "stopped" : "closed", text));
    c.wake?.();
    if (wasConnected) this.#emit("onDisconnected", this.#opts.onDisconnected, c.id, reason);
  }

  /** Error for a request whose connection was closed under it (by stop or another path). */
  #closedError(c: Conn, phase: "sent" | "response received"): ZdsRequestError {
    if (c.closeKind === "stopped") return new ZdsRequestError("stopped", "server stopped");
    return new ZdsRequestError("closed", `connection closed before ${phase}`);
  }

  async #runConn(c: Conn): Promise<void> {
    if (!(await this.#readHello(c))) return;
    c.state = "snapshot";
    this.#emit("onConnected", this.#opts.onConnected, c.id, c.peer);
    if (!(await this.#sendSnapshot(c))) return;
    c.state = "live";
    this.#emit("onSnapshotDone", this.#opts.onSnapshotDone, c.id);
    await this.#serveLive(c);
  }

  async #readHello(c: Conn): Promise<boolean> {
    let r;
    try {
      r = await c.conn.recv(this.#helloTimeoutMs);
    } catch (e) {
      this.#closeConn(c, `reading the hello failed: ${errorText(e)}`, "io", "warn");
      return false;
    }
    switch (r.kind) {
      case "closed":
        return false;
      case "timeout":
        this.#closeConn(c, `no ZdsHello from the proxy within ${this.#helloTimeoutMs} ms`, "closed", "warn");
        return false;
      case "eof":
        this.#closeConn(c, "proxy closed the connection before sending its hello", "closed", "info");
        return false;
    }
    closeAll(r.fds);
    const hello = decodeHello(r.data, r.fds.length, r.truncated);
    if (!hello.ok) {
      this.#log("warn", `invalid ZdsHello from the proxy: ${hello.error}`, {
        conn: c.id,
        bytes: hexPreview(r.data),
        fds: r.fds.length,
      });
      this.#closeConn(c, `invalid hello: ${hello.error}`, "closed", "warn");
      return false;
    }
    const version = hello.msg.version;
    const versionName = Version[version] ?? String(version);
    if (version !== Version.V1) {
      // Istio does not enforce the version either; say so and carry on.
      this.#log("warn", "proxy announced an unknown ZDS version; continuing", { conn: c.id, version: versionName });
    } else {
      this.#log("info", "received hello from proxy", { conn: c.id, pid: c.peer.pid, version: versionName });
    }
    return true;
  }

  async #sendSnapshot(c: Conn): Promise<boolean> {
    let entries: SnapshotEntry[];
    try {
      entries = this.#opts.snapshot();
    } catch (e) {
      this.#closeConn(c, `building the snapshot failed: ${errorText(e)}`, "io", "error");
      return false;
    }
    let sent = 0;
    let nacked = 0;
    for (const entry of entries) {
      if (c.state === "closed") return false;
      if (entry.netns?.closed) {
        // The pod went away after the snapshot was taken; its fd number may already be reused.
        this.#log("debug", "snapshot: skipping pod whose netns was closed meanwhile", { conn: c.id, uid: entry.uid });
        continue;
      }
      const what = entry.netns ? "AddWorkload" : "KeepWorkload";
      let bytes: Uint8Array;
      try {
        bytes = encodeRequest(entry.netns ? addRequest(entry.uid, entry.info) : keepRequest(entry.uid));
      } catch (e) {
        this.#log("error", `snapshot: cannot encode ${what}`, { conn: c.id, uid: entry.uid, error: errorText(e) });
        this.#emit("onSnapshotResult", this.#opts.onSnapshotResult, entry.uid, errorText(e), c.id);
        continue;
      }
      const res = await this.#exchange(c, bytes, entry.netns, `${what} ${entry.uid}`);
      if (!res.ok) {
        this.#log("warn", "snapshot aborted", { conn: c.id, uid: entry.uid, error: res.err.message });
        this.#emit("onSnapshotResult", this.#opts.onSnapshotResult, entry.uid, res.err.message, c.id);
        return false;
      }
      sent++;
      if (res.error !== "") {
        nacked++;
        this.#log("warn", `snapshot: proxy nacked ${what}`, { conn: c.id, uid: entry.uid, error: res.error });
        this.#emit("onSnapshotResult", this.#opts.onSnapshotResult, entry.uid, res.error, c.id);
      } else {
        this.#emit("onSnapshotResult", this.#opts.onSnapshotResult, entry.uid, undefined, c.id);
      }
    }
    const res = await this.#exchange(c, encodeRequest(snapshotSentRequest()), undefined, "SnapshotSent");
    if (!res.ok) {
      this.#log("warn", "snapshot aborted at SnapshotSent", { conn: c.id, error: res.err.message });
      return false;
    }
    if (res.error !== "") this.#log("warn", "proxy nacked SnapshotSent", { conn: c.id, error: res.error });
    this.#log("info", "snapshot sent", { conn: c.id, pods: sent, nacked });
    return true;
  }

  async #serveLive(c: Conn): Promise<void> {
    while (c.state !== "closed") {
      // Before every request and after every idle wait: nothing may be waiting to be read.
      if (!this.#checkIdle(c)) return;
      const req = c.queue.shift();
      if (req !== undefined) {
        await this.#runRequest(c, req);
        continue;
      }
      const queued = new Promise<void>((resolve) => (c.wake = resolve));
      await Promise.race([queued, c.conn.waitReadable(this.#keepaliveMs)]);
      c.wake = undefined;
      c.conn.cancelWait();
    }
  }

  /** The keepalive check: false (and the connection closed) on EOF, error or stray data. */
  #checkIdle(c: Conn): boolean {
    let r;
    try {
      r = c.conn.poll();
    } catch (e) {
      this.#closeConn(c, `keepalive read failed: ${errorText(e)}`, "io", "warn");
      return false;
    }
    switch (r.kind) {
      case "again":
        return true;
      case "closed":
        return false;
      case "eof":
        this.#closeConn(c, "proxy closed the connection", "closed", "info");
        return false;
      case "packet":
        closeAll(r.fds);
        this.#log("warn", "protocol error: unexpected message from the proxy while idle", {
          conn: c.id,
          bytes: hexPreview(r.data),
          fds: r.fds.length,
        });
        this.#closeConn(c, "protocol error: unexpected message while idle", "closed", "warn");
        return false;
    }
  }

  async #runRequest(c: Conn, req: Request): Promise<void> {
    if (req.netns?.closed) {
      req.reject(new ZdsRequestError("io", `netns of pod ${req.uid} was closed before the request was sent`));
      return;
    }
    const res = await this.#exchange(c, req.bytes, req.netns, `${req.what} ${req.uid}`);
    if (!res.ok) {
      req.reject(res.err);
    } else if (res.error !== "") {
      this.#log("warn", `proxy nacked ${req.what}`, { conn: c.id, uid: req.uid, error: res.error });
      req.reject(new ZdsRequestError("nack", res.error, { nack: res.error }));
    } else {
      this.#log("debug", `${req.what} acked`, { conn: c.id, uid: req.uid });
      req.resolve();
    }
  }

  /**
   * Sends one request and reads its ack. Any failure other than a nack closes the connection,
   * so a later ack can never be taken for the answer to another request.
   */
  async #exchange(c: Conn, bytes: Uint8Array, netns: Netns | undefined, what: string): Promise<Exchange> {
    try {
      await c.conn.send(bytes, netns ?? -1, this.#ackTimeoutMs);
    } catch (e) {
      if (c.state === "closed") return { ok: false, err: this.#closedError(c, "sent") };
      const code = e instanceof ConnSendError ? e.code : "";
      if (code === "ENETNSCLOSED") {
        // Nothing went out; the connection is still in step.
        return { ok: false, err: new ZdsRequestError("io", errorText(e)) };
      }
      const err = new ZdsRequestError("io", `sending ${what} failed: ${errorText(e)}`);
      const peerGone = code === "EPIPE" || code === "ECONNRESET";
      this.#closeConn(c, peerGone ? `proxy closed the connection; ${err.message}` : err.message, "closed", peerGone ? "info" : "warn");
      return { ok: false, err };
    }
    let r;
    try {
      r = await c.conn.recv(this.#ackTimeoutMs);
    } catch (e) {
      const err = new ZdsRequestError("io", `reading the ack for ${what} failed: ${errorText(e)}`);
      this.#closeConn(c, err.message, "closed", "warn");
      return { ok: false, err };
    }
    switch (r.kind) {
      case "closed":
        return { ok: false, err: this.#closedError(c, "response received") };
      case "timeout": {
        const err = new ZdsRequestError(
          "timeout",
          `timed out after ${this.#ackTimeoutMs} ms waiting for the proxy's ack to ${what}; connection closed`,
        );
        this.#closeConn(c, `no ack to ${what} within ${this.#ackTimeoutMs} ms`, "closed", "warn");
        return { ok: false, err };
      }
      case "eof":
        this.#closeConn(c, `proxy closed the connection while ${what} was waiting for its ack`, "closed", "info");
        return { ok: false, err: new ZdsRequestError("closed", "connection closed before response received") };
    }
    closeAll(r.fds);
    const resp = decodeResponse(r.data, r.fds.length, r.truncated);
    if (!resp.ok) {
      this.#log("warn", `invalid ack from the proxy: ${resp.error}`, {
        conn: c.id,
        request: what,
        bytes: hexPreview(r.data),
        fds: r.fds.length,
      });
      this.#closeConn(c, `invalid ack: ${resp.error}`, "closed", "warn");
      return { ok: false, err: new ZdsRequestError("io", `invalid ack from the proxy to ${what}: ${resp.error}`) };
    }
    return { ok: true, error: ackError(resp.msg) };
  }
}
