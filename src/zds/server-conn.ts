// One proxy's connection on the agent side, from its hello on (gate.ts admits it): the snapshot,
// then live requests, then the idle keepalive check.
//
// This loop is the only code that reads from or writes to the connection, so exactly one
// request is in flight and the next ack always belongs to it. Callers queue requests and get a
// promise. An ack that does not come within ackTimeoutMs closes the connection: a late ack could
// otherwise be paired with the next request (Istio keeps the connection here; nshub does not).
// See docs/zds.md, "Server and client behaviour".
import type { Netns, PeerCred } from "../sys/index.ts";
import { closeAll, ConnSendError, errorText, hexPreview, type PacketConn } from "./conn.ts";
import { ackError, addRequest, decodeResponse, encodeRequest, keepRequest, snapshotSentRequest } from "./messages.ts";
import { ZdsRequestError, type SnapshotEntry, type ZdsLog, type ZdsRequestErrorKind } from "./types.ts";

export interface Request {
  what: string;
  uid: string;
  bytes: Uint8Array;
  netns?: Netns;
  resolve: () => void;
  reject: (e: ZdsRequestError) => void;
}

/** What a connection needs from its server. */
export interface ServerConnHost {
  log: ZdsLog;
  ackTimeoutMs: number;
  keepaliveMs: number;
  snapshot: () => SnapshotEntry[];
  onSnapshotResult: (uid: string, error: string | undefined, connId: number) => void;
  onSnapshotDone: (connId: number) => void;
  /** The connection closed (once): the server forgets it. */
  onClosed: (c: ServerConn, reason: string) => void;
}

type Exchange = { ok: true; error: string } | { ok: false; err: ZdsRequestError };

export class ServerConn {
  state: "snapshot" | "live" | "closed" = "snapshot";
  readonly queue: Request[] = [];
  /** Nacks from this proxy (snapshot and live): with several proxies, one may refuse what another serves. */
  nacks = 0;
  #wake: (() => void) | undefined;
  #closeKind: ZdsRequestErrorKind = "closed";

  constructor(
    readonly id: number,
    readonly conn: PacketConn,
    readonly peer: PeerCred,
    readonly host: ServerConnHost,
  ) {}

  enqueue(r: Omit<Request, "resolve" | "reject">): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ...r, resolve, reject });
      this.#wake?.();
    });
  }

  /** Closes the connection; every queued request rejects ("server stopped" for kind "stopped"). */
  close(reason: string, kind: ZdsRequestErrorKind, level: "debug" | "info" | "warn" | "error"): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.#closeKind = kind;
    this.conn.close();
    this.host.log(level, `ZDS connection closed: ${reason}`, { conn: this.id, pid: this.peer.pid, queued: this.queue.length, nacks: this.nacks });
    const text = kind === "stopped" ? "server stopped" : "connection closed before request sent";
    for (const r of this.queue.splice(0)) r.reject(new ZdsRequestError(kind === "stopped" ? "stopped" : "closed", text));
    this.#wake?.();
    this.host.onClosed(this, reason);
  }

  /** The connection's loop: snapshot, then live requests until it closes. */
  async run(): Promise<void> {
    if (!(await this.#sendSnapshot())) return;
    this.state = "live";
    this.host.onSnapshotDone(this.id);
    await this.#serveLive();
  }

  /** Error for a request whose connection was closed under it (by stop or another path). */
  #closedError(phase: "sent" | "response received"): ZdsRequestError {
    if (this.#closeKind === "stopped") return new ZdsRequestError("stopped", "server stopped");
    return new ZdsRequestError("closed", `connection closed before ${phase}`);
  }

  async #sendSnapshot(): Promise<boolean> {
    const { log, onSnapshotResult } = this.host;
    let entries: SnapshotEntry[];
    try {
      entries = this.host.snapshot();
    } catch (e) {
      this.close(`building the snapshot failed: ${errorText(e)}`, "io", "error");
      return false;
    }
    let sent = 0;
    let nacked = 0;
    for (const entry of entries) {
      if (this.state === "closed") return false;
      if (entry.netns?.closed) {
        // The pod went away after the snapshot was taken; its fd number may already be reused.
        log("debug", "snapshot: skipping pod whose netns was closed meanwhile", { conn: this.id, uid: entry.uid });
        continue;
      }
      const what = entry.netns ? "AddWorkload" : "KeepWorkload";
      let bytes: Uint8Array;
      try {
        bytes = encodeRequest(entry.netns ? addRequest(entry.uid, entry.info) : keepRequest(entry.uid));
      } catch (e) {
        log("error", `snapshot: cannot encode ${what}`, { conn: this.id, uid: entry.uid, error: errorText(e) });
        onSnapshotResult(entry.uid, errorText(e), this.id);
        continue;
      }
      const res = await this.#exchange(bytes, entry.netns, `${what} ${entry.uid}`);
      if (!res.ok) {
        log("warn", "snapshot aborted", { conn: this.id, uid: entry.uid, error: res.err.message });
        onSnapshotResult(entry.uid, res.err.message, this.id);
        return false;
      }
      sent++;
      if (res.error !== "") {
        nacked++;
        this.nacks++;
        log("warn", `snapshot: proxy nacked ${what}`, { conn: this.id, uid: entry.uid, error: res.error });
        onSnapshotResult(entry.uid, res.error, this.id);
      } else {
        onSnapshotResult(entry.uid, undefined, this.id);
      }
    }
    const res = await this.#exchange(encodeRequest(snapshotSentRequest()), undefined, "SnapshotSent");
    if (!res.ok) {
      log("warn", "snapshot aborted at SnapshotSent", { conn: this.id, error: res.err.message });
      return false;
    }
    if (res.error !== "") {
      this.nacks++;
      log("warn", "proxy nacked SnapshotSent", { conn: this.id, error: res.error });
    }
    log("info", "snapshot sent", { conn: this.id, pods: sent, nacked });
    return true;
  }

  async #serveLive(): Promise<void> {
    while (this.state !== "closed") {
      // Before every request and after every idle wait: nothing may be waiting to be read.
      if (!this.#checkIdle()) return;
      const req = this.queue.shift();
      if (req !== undefined) {
        await this.#runRequest(req);
        continue;
      }
      const queued = new Promise<void>((resolve) => (this.#wake = resolve));
      await Promise.race([queued, this.conn.waitReadable(this.host.keepaliveMs)]);
      this.#wake = undefined;
      this.conn.cancelWait();
    }
  }

  /** The keepalive check: false (and the connection closed) on EOF, error or stray data. */
  #checkIdle(): boolean {
    let r;
    try {
      r = this.conn.poll();
    } catch (e) {
      this.close(`keepalive read failed: ${errorText(e)}`, "io", "warn");
      return false;
    }
    switch (r.kind) {
      case "again":
        return true;
      case "closed":
        return false;
      case "eof":
        this.close("proxy closed the connection", "closed", "info");
        return false;
      case "packet":
        closeAll(r.fds);
        this.host.log("warn", "protocol error: unexpected message from the proxy while idle", {
          conn: this.id,
          bytes: hexPreview(r.data),
          fds: r.fds.length,
        });
        this.close("protocol error: unexpected message while idle", "closed", "warn");
        return false;
    }
  }

  async #runRequest(req: Request): Promise<void> {
    if (req.netns?.closed) {
      req.reject(new ZdsRequestError("io", `netns of pod ${req.uid} was closed before the request was sent`));
      return;
    }
    const res = await this.#exchange(req.bytes, req.netns, `${req.what} ${req.uid}`);
    if (!res.ok) {
      req.reject(res.err);
    } else if (res.error !== "") {
      this.nacks++;
      this.host.log("warn", `proxy nacked ${req.what}`, { conn: this.id, uid: req.uid, error: res.error, nacks: this.nacks });
      req.reject(new ZdsRequestError("nack", res.error, { nack: res.error, conn: this.id }));
    } else {
      this.host.log("debug", `${req.what} acked`, { conn: this.id, uid: req.uid });
      req.resolve();
    }
  }

  /**
   * Sends one request and reads its ack. Any failure other than a nack closes the connection,
   * so a later ack can never be taken for the answer to another request.
   */
  async #exchange(bytes: Uint8Array, netns: Netns | undefined, what: string): Promise<Exchange> {
    const ackTimeoutMs = this.host.ackTimeoutMs;
    try {
      await this.conn.send(bytes, netns ?? -1, ackTimeoutMs);
    } catch (e) {
      if (this.state === "closed") return { ok: false, err: this.#closedError("sent") };
      const code = e instanceof ConnSendError ? e.code : "";
      if (code === "ENETNSCLOSED") {
        // Nothing went out; the connection is still in step.
        return { ok: false, err: new ZdsRequestError("io", errorText(e)) };
      }
      const err = new ZdsRequestError("io", `sending ${what} failed: ${errorText(e)}`);
      const peerGone = code === "EPIPE" || code === "ECONNRESET";
      this.close(peerGone ? `proxy closed the connection; ${err.message}` : err.message, "closed", peerGone ? "info" : "warn");
      return { ok: false, err };
    }
    let r;
    try {
      r = await this.conn.recv(ackTimeoutMs);
    } catch (e) {
      const err = new ZdsRequestError("io", `reading the ack for ${what} failed: ${errorText(e)}`);
      this.close(err.message, "closed", "warn");
      return { ok: false, err };
    }
    switch (r.kind) {
      case "closed":
        return { ok: false, err: this.#closedError("response received") };
      case "timeout": {
        const err = new ZdsRequestError("timeout", `timed out after ${ackTimeoutMs} ms waiting for the proxy's ack to ${what}; connection closed`);
        this.close(`no ack to ${what} within ${ackTimeoutMs} ms`, "closed", "warn");
        return { ok: false, err };
      }
      case "eof":
        this.close(`proxy closed the connection while ${what} was waiting for its ack`, "closed", "info");
        return { ok: false, err: new ZdsRequestError("closed", "connection closed before response received") };
    }
    closeAll(r.fds);
    const resp = decodeResponse(r.data, r.fds.length, r.truncated);
    if (!resp.ok) {
      this.host.log("warn", `invalid ack from the proxy: ${resp.error}`, { conn: this.id, request: what, bytes: hexPreview(r.data), fds: r.fds.length });
      this.close(`invalid ack: ${resp.error}`, "closed", "warn");
      return { ok: false, err: new ZdsRequestError("io", `invalid ack from the proxy to ${what}: ${resp.error}`) };
    }
    return { ok: true, error: ackError(resp.msg) };
  }
}
