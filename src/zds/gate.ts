// The agent's ZDS socket up to a proxy's hello: listening, accepting, the peer's credentials,
// and the ZdsHello. Only a peer that passes all of these costs the agent more than a few
// bytes: its snapshot starts in server-conn.ts.
//
// Connections that never say hello must not delay a real proxy (66 idle ones once turned a
// 90 ms proxy restart into 10.8 s of outage). So the gate accepts everything queued at once (no
// accept rate limit: a backlog left waiting turns into EAGAIN on the proxy's connect), checks
// SO_PEERCRED against allowedUids before anything else, gives each connection a short hello
// deadline, and keeps at most maxWaiting connections waiting for one: beyond that the oldest
// waiting one is closed, so a newcomer (a proxy that says hello at once) always gets in.
// See docs/zds.md, "Server and client behaviour".
import { chmodSync, chownSync, lstatSync, unlinkSync } from "node:fs";
import {
  acceptUnix,
  claimSocketPath,
  closeFd,
  fdPoller,
  listenUnix,
  peerCred,
  POLLIN,
  SOCK_SEQPACKET,
  type PeerCred,
} from "../sys/index.ts";
import { closeAll, errorText, hexPreview, PacketConn, Sleeper } from "./conn.ts";
import { decodeHello, Version } from "./messages.ts";
import type { ZdsLog } from "./types.ts";

export interface GateOptions {
  path: string;
  socketMode: number;
  socketOwner?: { uid: number; gid: number };
  allowedUids?: number[];
  helloTimeoutMs: number;
  maxWaiting: number;
  backlog: number;
  log: ZdsLog;
  /** A peer said ZdsHello{V1}: the connection is the caller's from now on. */
  admit: (id: number, conn: PacketConn, peer: PeerCred) => void;
}

/** What the gate has seen since start (counters), and how many wait for their hello now. */
export interface ZdsGateStats {
  accepted: number;
  /** Closed at once: uid not in allowedUids, or SO_PEERCRED unreadable. */
  refusedPeers: number;
  /** Closed because maxWaiting connections were already waiting for their hello. */
  evicted: number;
  helloTimeouts: number;
  /** Garbage, an fd, or EOF instead of a hello. */
  badHellos: number;
  /** A hello with a version other than V1. */
  refusedVersions: number;
  admitted: number;
  waiting: number;
}

interface Waiting {
  id: number;
  conn: PacketConn;
  peer: PeerCred;
  since: number;
}

/** At most one line a second per kind of flood event; the next line says how many it skipped. */
class RateLog {
  readonly #last = new Map<string, { at: number; skipped: number }>();
  constructor(readonly log: ZdsLog) {}

  line(kind: string, level: "info" | "warn", msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    const last = this.#last.get(kind);
    if (last !== undefined && now - last.at < 1000) {
      last.skipped++;
      return;
    }
    this.#last.set(kind, { at: now, skipped: 0 });
    this.log(level, msg, last?.skipped ? { ...fields, skippedSinceLastLine: last.skipped } : fields);
  }
}

/** Accepts taken per poller wake-up before the loop yields to the rest of the agent. */
const ACCEPT_BATCH = 256;

export class ZdsGate {
  readonly #o: GateOptions;
  readonly #rate: RateLog;
  readonly #sleeper = new Sleeper();
  /** Connections waiting for their hello, oldest first (Map keeps insertion order). */
  readonly #waiting = new Map<number, Waiting>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #stats = { accepted: 0, refusedPeers: 0, evicted: 0, helloTimeouts: 0, badHellos: 0, refusedVersions: 0, admitted: 0 };
  #listenFd = -1;
  #socketIno: number | undefined;
  #nextId = 0;
  #closed = false;

  constructor(options: GateOptions) {
    this.#o = options;
    this.#rate = new RateLog(options.log);
  }

  /**
   * Takes the socket path (a stale socket is removed; a live one, or anything that is not a
   * socket, throws), listens, and sets the socket's mode and owner. Throws on any failure.
   */
  listen(): void {
    const path = this.#o.path;
    // Throws while another agent still listens here: taking its path would split the proxies.
    if (claimSocketPath(path, SOCK_SEQPACKET, "ZDS")) this.#o.log("info", "removed stale ZDS socket", { path });
    const fd = listenUnix(path, SOCK_SEQPACKET, this.#o.backlog);
    try {
      chmodSync(path, this.#o.socketMode);
      if (this.#o.socketOwner) chownSync(path, this.#o.socketOwner.uid, this.#o.socketOwner.gid);
      this.#socketIno = lstatSync(path).ino;
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    this.#listenFd = fd;
  }

  /** The accept loop; resolves after close(). */
  async run(): Promise<void> {
    while (!this.#closed) {
      await fdPoller().wait(this.#listenFd, POLLIN);
      for (let i = 0; i < ACCEPT_BATCH && !this.#closed; i++) {
        let fd: number | null;
        try {
          fd = acceptUnix(this.#listenFd);
        } catch (e) {
          // EMFILE and friends: do not spin; try again shortly.
          this.#o.log("error", "accept on the ZDS socket failed", { path: this.#o.path, error: errorText(e) });
          await this.#sleeper.sleep(100);
          break;
        }
        if (fd === null) break;
        this.#accepted(fd);
      }
    }
  }

  /**
   * Stops accepting, closes the listener (removing the socket file if it is still the one this
   * gate created: another agent may have replaced it) and every connection still waiting for
   * its hello. Resolves when their tasks have ended.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#sleeper.wake();
    if (this.#listenFd >= 0) {
      fdPoller().cancel(this.#listenFd);
      closeFd(this.#listenFd);
      this.#listenFd = -1;
      try {
        if (this.#socketIno !== undefined && lstatSync(this.#o.path).ino === this.#socketIno) unlinkSync(this.#o.path);
      } catch {
        // already gone
      }
    }
    for (const w of this.#waiting.values()) w.conn.close();
    this.#waiting.clear();
    await Promise.allSettled([...this.#tasks]);
  }

  /** Connections waiting for their hello, oldest first. */
  waiting(): { id: number; peer: PeerCred }[] {
    return [...this.#waiting.values()].map((w) => ({ id: w.id, peer: w.peer }));
  }

  stats(): ZdsGateStats {
    return { ...this.#stats, waiting: this.#waiting.size };
  }

  #accepted(fd: number): void {
    const id = ++this.#nextId;
    this.#stats.accepted++;
    // The peer's credentials first: a refused peer costs one getsockopt and a close.
    let peer: PeerCred;
    try {
      peer = peerCred(fd);
    } catch (e) {
      closeFd(fd);
      this.#stats.refusedPeers++;
      this.#o.log("warn", "could not read the ZDS peer's credentials; closing", { conn: id, error: errorText(e) });
      return;
    }
    const allowed = this.#o.allowedUids;
    if (allowed !== undefined && !allowed.includes(peer.uid)) {
      closeFd(fd);
      this.#stats.refusedPeers++;
      this.#rate.line("uid", "warn", `rejected ZDS connection from uid ${peer.uid} (pid ${peer.pid}): uid not allowed`, {
        conn: id,
        uid: peer.uid,
        pid: peer.pid,
        allowedUids: allowed,
        refusedPeers: this.#stats.refusedPeers,
      });
      return;
    }
    if (this.#waiting.size >= this.#o.maxWaiting) this.#evictOldest();
    const w: Waiting = { id, conn: new PacketConn(fd), peer, since: Date.now() };
    this.#waiting.set(id, w);
    this.#o.log("debug", "ZDS connection accepted", { conn: id, pid: peer.pid, uid: peer.uid });
    const task = this.#greet(w).catch((e) => {
      this.#o.log("warn", "reading the ZdsHello failed; closing", { conn: id, error: errorText(e) });
      this.#drop(w, `reading the hello failed: ${errorText(e)}`);
    });
    this.#tasks.add(task);
    void task.finally(() => this.#tasks.delete(task));
  }

  #evictOldest(): void {
    const oldest = this.#waiting.values().next().value as Waiting;
    this.#stats.evicted++;
    this.#rate.line("evict", "warn", `too many ZDS connections waiting for their hello (at most ${this.#o.maxWaiting}): closing the oldest`, {
      conn: oldest.id,
      pid: oldest.peer.pid,
      uid: oldest.peer.uid,
      waitedMs: Date.now() - oldest.since,
      evicted: this.#stats.evicted,
    });
    this.#waiting.delete(oldest.id);
    oldest.conn.close(); // its #greet sees "closed" and ends quietly
  }

  /** Closes a waiting connection (the line saying why was logged, rate-limited, by the caller). */
  #drop(w: Waiting, reason: string): void {
    if (!this.#waiting.delete(w.id)) return;
    w.conn.close();
    this.#o.log("debug", `ZDS connection closed: ${reason}`, { conn: w.id, pid: w.peer.pid });
  }

  async #greet(w: Waiting): Promise<void> {
    const r = await w.conn.recv(this.#o.helloTimeoutMs);
    switch (r.kind) {
      case "closed":
        return; // evicted, or the gate closed
      case "timeout":
        this.#stats.helloTimeouts++;
        this.#rate.line("timeout", "warn", `no ZdsHello from the proxy within ${this.#o.helloTimeoutMs} ms; closing`, {
          conn: w.id,
          pid: w.peer.pid,
          helloTimeouts: this.#stats.helloTimeouts,
        });
        this.#drop(w, "no hello");
        return;
      case "eof":
        // Also what another agent's liveness check of this socket looks like (socket-path.ts).
        this.#stats.badHellos++;
        this.#rate.line("eof", "info", "proxy closed the connection before sending its hello", { conn: w.id, pid: w.peer.pid });
        this.#drop(w, "EOF before the hello");
        return;
    }
    closeAll(r.fds);
    const hello = decodeHello(r.data, r.fds.length, r.truncated);
    if (!hello.ok) {
      this.#stats.badHellos++;
      this.#rate.line("bad", "warn", `invalid ZdsHello from the proxy: ${hello.error}`, {
        conn: w.id,
        pid: w.peer.pid,
        bytes: hexPreview(r.data),
        fds: r.fds.length,
      });
      this.#drop(w, `invalid hello: ${hello.error}`);
      return;
    }
    const version = hello.msg.version;
    const name = Version[version] ?? String(version);
    if (version !== Version.V1) {
      // Messages of another version could mean something else; a V1 proxy reconnects and is served.
      this.#stats.refusedVersions++;
      this.#rate.line("version", "warn", `refusing proxy: its ZdsHello announces version ${name}; this agent speaks only V1`, {
        conn: w.id,
        pid: w.peer.pid,
        version: name,
        bytes: hexPreview(r.data),
      });
      this.#drop(w, `unsupported ZDS version ${name}`);
      return;
    }
    this.#waiting.delete(w.id);
    this.#stats.admitted++;
    this.#o.log("info", "received hello from proxy", { conn: w.id, pid: w.peer.pid, version: name });
    this.#o.admit(w.id, w.conn, w.peer);
  }
}
