// The ZDS client: the node proxy's end of the agent → proxy hand-off (Istio's ztunnel role).
//
// It connects to the agent's SOCK_SEQPACKET socket (retrying with a short backoff, and at once
// when the socket file reappears), sends
// ZdsHello{V1}, then answers every request with exactly one ack, in order, after handing the
// request to the WorkloadManager. Requests are checked with Istio's receive rules
// (messages.ts); unlike ztunnel, the fd on an AddWorkload must be a network namespace.
//
// Outcomes, as ztunnel words them:
//   success                       → Ack{error: ""}
//   ProxyStartError from add      → "failure to start proxy : …", connection kept
//   any other processing error    → "failure to process message : …", then reconnect
//   unreadable / invalid packet   → "failure to read message : …", then reconnect
//   EOF                           → manager.connectionLost(), reconnect
// Every fd that arrives is either handed to the manager (inside a Netns) or closed.
// See docs/zds.md, "Server and client behaviour".
import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import { connectUnix, Netns } from "../sys/index.ts";
import { closeAll, errorText, hexPreview, PacketConn, Sleeper, type ConnRecv } from "./conn.ts";
import {
  ackResponse,
  decodeRequest,
  encodeHello,
  encodeResponse,
  failureToProcessMessage,
  failureToReadMessage,
  failureToStartProxy,
  type ZdsRequest,
} from "./messages.ts";
import { ProxyStartError, type WorkloadIdentity, type WorkloadManager, type ZdsLog } from "./types.ts";

export interface ZdsBackoff {
  /** First retry delay (default 10 ms). */
  initialMs?: number;
  /** Cap of the doubling delay (default 1000 ms). */
  maxMs?: number;
  /** Each delay is randomised by ± this fraction (default 0.2). */
  jitter?: number;
}

export interface ZdsClientOptions {
  /** The agent's ZDS socket, e.g. /var/run/nshub/zds.sock (Istio: /var/run/ztunnel/ztunnel.sock). */
  path: string;
  manager: WorkloadManager;
  log?: ZdsLog;
  /** Reconnect backoff; doubles after each failed attempt or ended connection, reset once a snapshot completes. */
  backoff?: ZdsBackoff;
  /** How long to wait for room in the socket buffer when sending the hello or an ack (default 5000). */
  sendTimeoutMs?: number;
}

type Outcome = "continue" | "reconnect";
type AddWorkload = Extract<ZdsRequest["payload"], { case: "add" }>["value"];

/** Per-connection protocol state. */
interface Session {
  conn: PacketConn;
  /** uids named (Add or Keep) since this connection began, for snapshot reconciliation. */
  named: Set<string>;
  snapshotDone: boolean;
  ended: boolean;
}

class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

const defaultLog: ZdsLog = (level, msg, fields) => {
  if (level === "debug" || level === "info") return;
  console.error(`zds-client ${level}: ${msg}${fields ? " " + JSON.stringify(fields) : ""}`);
};

export class ZdsClient {
  readonly path: string;
  readonly #manager: WorkloadManager;
  readonly #log: ZdsLog;
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #jitter: number;
  readonly #sendTimeoutMs: number;
  readonly #sleeper = new Sleeper();
  #delayMs: number;
  /** Watches the socket's directory: the agent (re)creating the socket ends a backoff at once. */
  #watcher: FSWatcher | undefined;
  /** The socket file changed since the last connect attempt (a wake-up may come before the sleep). */
  #poked = false;
  /** When the client last had no working connection (start, or the last one ended), and how many connects since. */
  #downSince: number;
  #attempts = 0;
  #session: Session | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  #inManager = false;

  constructor(options: ZdsClientOptions) {
    this.path = options.path;
    this.#manager = options.manager;
    this.#log = options.log ?? defaultLog;
    this.#initialMs = options.backoff?.initialMs ?? 10;
    // ztunnel doubles up to 15 s: after a 4 s agent outage its next try came ~5 s after the
    // agent was back, and every new pod failed meanwhile. Trying a local socket once a second
    // costs nothing; the directory watch usually ends the wait sooner still.
    this.#maxMs = options.backoff?.maxMs ?? 1000;
    this.#jitter = options.backoff?.jitter ?? 0.2;
    this.#sendTimeoutMs = options.sendTimeoutMs ?? 5000;
    this.#delayMs = this.#initialMs;
    this.#downSince = Date.now();
  }

  /** Starts connecting (in the background); the client keeps reconnecting until stop(). */
  start(): void {
    if (this.#loop !== undefined) throw new Error("ZdsClient already started");
    this.#downSince = Date.now();
    this.#watch();
    this.#loop = this.#run().catch((e) => {
      this.#log("error", "ZDS client loop failed", { error: errorText(e) });
    });
  }

  /**
   * Closes the connection and ends the reconnect loop. Never waits on the agent. If a manager
   * call is in progress it resolves without waiting for it; the client makes no further
   * manager calls after that one (connectionLost for the open connection is called here).
   */
  async stop(): Promise<void> {
    if (this.#stopped) return this.#inManager ? undefined : this.#loop;
    this.#stopped = true;
    this.#watcher?.close();
    this.#watcher = undefined;
    this.#sleeper.wake();
    const s = this.#session;
    if (s !== undefined) {
      s.conn.close();
      this.#endSession(s, "client stopped");
    }
    if (!this.#inManager) await this.#loop;
    this.#log("info", "ZDS client stopped", { path: this.path });
  }

  /** True while connected to an agent (hello sent). */
  get connected(): boolean {
    return this.#session !== undefined && !this.#session.ended;
  }

  /** True once the current connection's snapshot is complete. */
  get snapshotReceived(): boolean {
    return this.connected && this.#session!.snapshotDone;
  }

  // ---- internals ---------------------------------------------------------------------------

  async #run(): Promise<void> {
    while (!this.#stopped) {
      let fd: number;
      this.#poked = false;
      this.#attempts++;
      try {
        fd = connectUnix(this.path);
      } catch (e) {
        const retryInMs = this.#nextDelay();
        this.#log("warn", `failed to connect to the node agent at ${this.path}; is the agent running?`, {
          error: errorText(e),
          retryInMs,
        });
        this.#watch(); // the directory may exist by now
        await this.#backoff(retryInMs);
        continue;
      }
      const s: Session = { conn: new PacketConn(fd), named: new Set(), snapshotDone: false, ended: false };
      this.#session = s;
      try {
        await this.#serve(s);
      } finally {
        s.conn.close();
        this.#endSession(s, "connection ended");
        if (this.#session === s) this.#session = undefined;
      }
      if (!this.#stopped) await this.#backoff(this.#nextDelay());
    }
  }

  /** Sleeps `ms`, less if the socket file changes meanwhile (or changed since the last try). */
  async #backoff(ms: number): Promise<void> {
    if (this.#poked) return;
    await this.#sleeper.sleep(ms);
  }

  /**
   * Watches the socket's directory (once it exists) so that the agent creating its socket ends
   * the backoff. Best effort: without a watch the capped backoff still bounds the wait.
   */
  #watch(): void {
    if (this.#watcher !== undefined || this.#stopped) return;
    const name = basename(this.path);
    try {
      const w = watch(dirname(this.path), { persistent: false }, (_event, file) => {
        if (file !== name || this.#session !== undefined) return;
        this.#poked = true;
        this.#sleeper.wake();
      });
      // The directory went away (removed, unmounted): watch again at the next failed connect.
      w.on("error", () => {
        w.close();
        if (this.#watcher === w) this.#watcher = undefined;
      });
      this.#watcher = w;
    } catch {
      // no directory yet
    }
  }

  #nextDelay(): number {
    const base = this.#delayMs;
    this.#delayMs = Math.min(this.#delayMs * 2, this.#maxMs);
    const factor = 1 + this.#jitter * (2 * Math.random() - 1);
    return Math.max(0, Math.round(base * factor));
  }

  #endSession(s: Session, reason: string): void {
    if (s.ended) return;
    s.ended = true;
    this.#downSince = Date.now();
    this.#attempts = 0;
    this.#log("info", "ZDS connection to the node agent ended", { reason });
    try {
      this.#manager.connectionLost();
    } catch (e) {
      this.#log("error", "workload manager connectionLost threw", { error: errorText(e) });
    }
  }

  async #serve(s: Session): Promise<void> {
    try {
      this.#manager.connectionStarted();
    } catch (e) {
      this.#log("error", "workload manager connectionStarted threw", { error: errorText(e) });
    }
    try {
      await s.conn.send(encodeHello(), -1, this.#sendTimeoutMs);
    } catch (e) {
      if (!s.conn.closed) this.#log("warn", "failed to send the hello to the node agent", { error: errorText(e) });
      return;
    }
    // How long the proxy was without an agent, for the outage → reconnect figure.
    this.#log("info", "connected to the node agent; hello sent", {
      path: this.path,
      attempts: this.#attempts,
      downMs: Date.now() - this.#downSince,
    });
    for (;;) {
      let r: ConnRecv;
      try {
        r = await s.conn.recv();
      } catch (e) {
        this.#log("warn", "reading from the node agent failed", { error: errorText(e) });
        return;
      }
      if (r.kind === "closed" || r.kind === "timeout") return;
      if (r.kind === "eof") {
        this.#log("info", "node agent closed the connection", { path: this.path });
        return;
      }
      const outcome = await this.#handle(s, r);
      if (outcome === "reconnect" || this.#stopped) return;
    }
  }

  /** Handles one received packet and sends its ack. Every fd in `r.fds` is consumed. */
  async #handle(s: Session, r: Extract<ConnRecv, { kind: "packet" }>): Promise<Outcome> {
    const decoded = decodeRequest(r.data, r.fds.length, r.truncated);
    if (!decoded.ok) {
      closeAll(r.fds);
      this.#log("warn", `bad request from the node agent: ${decoded.error}`, {
        bytes: hexPreview(r.data),
        fds: r.fds.length,
        truncated: r.truncated,
      });
      await this.#reply(s, failureToReadMessage(decoded.error));
      return "reconnect";
    }
    const req = decoded.msg;
    if (req.payload.case === "add") return this.#handleAdd(s, req.payload.value, r.fds[0]!);
    try {
      await this.#process(s, req);
    } catch (e) {
      this.#log("warn", `processing ${req.payload.case} from the node agent failed: ${errorText(e)}`, {
        uid: "uid" in req.payload.value ? req.payload.value.uid : undefined,
      });
      await this.#reply(s, failureToProcessMessage(e));
      return "reconnect";
    }
    return (await this.#reply(s, "")) ? "continue" : "reconnect";
  }

  async #handleAdd(s: Session, add: AddWorkload, fd: number): Promise<Outcome> {
    let netns: Netns;
    try {
      netns = Netns.adopt(fd, `netns fd of pod ${add.uid}`); // closes fd when it is not a netns
    } catch (e) {
      this.#log("warn", `rejected AddWorkload for pod ${add.uid}: ${errorText(e)}`, { uid: add.uid });
      await this.#reply(s, failureToReadMessage(e));
      return "reconnect";
    }
    if (this.#stopped) {
      netns.close();
      return "reconnect";
    }
    s.named.add(add.uid);
    const wi = add.workloadInfo;
    const info: WorkloadIdentity | undefined =
      wi === undefined ? undefined : { name: wi.name, namespace: wi.namespace, serviceAccount: wi.serviceAccount };
    try {
      // From here the manager owns netns (also when add throws).
      await this.#managerCall(() => this.#manager.add(add.uid, info, netns));
    } catch (e) {
      if (e instanceof ProxyStartError) {
        this.#log("warn", `proxy for pod ${add.uid} failed to start: ${e.message}`, { uid: add.uid, netns: netns.key });
        return (await this.#reply(s, failureToStartProxy(e))) ? "continue" : "reconnect";
      }
      this.#log("warn", `processing AddWorkload for pod ${add.uid} failed: ${errorText(e)}`, { uid: add.uid });
      await this.#reply(s, failureToProcessMessage(e));
      return "reconnect";
    }
    this.#log("debug", "AddWorkload processed", { uid: add.uid, netns: netns.key, snapshot: !s.snapshotDone });
    return (await this.#reply(s, "")) ? "continue" : "reconnect";
  }

  /** Keep, Del and SnapshotSent. Throws for a protocol or manager error. */
  async #process(s: Session, req: ZdsRequest): Promise<void> {
    switch (req.payload.case) {
      case "keep": {
        if (s.snapshotDone) throw new ProtocolError("pod keep received after snapshot");
        const uid = req.payload.value.uid;
        s.named.add(uid);
        this.#manager.keep(uid);
        this.#log("debug", "KeepWorkload processed", { uid });
        return;
      }
      case "del": {
        const uid = req.payload.value.uid;
        // Before the snapshot ends ztunnel only forgets the uid (reconcile would stop it); we also
        // stop it now through manager.del, which reaches the same end state sooner.
        s.named.delete(uid);
        await this.#managerCall(() => this.#manager.del(uid));
        this.#log("debug", "DelWorkload processed", { uid, snapshot: !s.snapshotDone });
        return;
      }
      case "snapshotSent": {
        if (s.snapshotDone) throw new ProtocolError("pod snapshot received already");
        const stale = [...this.#manager.uids()].filter((uid) => !s.named.has(uid));
        for (const uid of stale) {
          if (this.#stopped) throw new Error("client stopped");
          this.#log("info", "snapshot: removing pod the node agent no longer knows", { uid });
          await this.#managerCall(() => this.#manager.del(uid));
        }
        if (this.#stopped) throw new Error("client stopped");
        s.snapshotDone = true;
        this.#manager.snapshotDone();
        this.#delayMs = this.#initialMs; // a good connection: the next reconnect starts fast
        this.#log("info", "snapshot received", {
          named: s.named.size,
          removed: stale.length,
          // without an agent until now: the outage as the pods saw it (no enrollment possible)
          downMs: Date.now() - this.#downSince,
        });
        return;
      }
      case "add":
        throw new Error("unreachable: add is handled by #handleAdd");
    }
  }

  async #managerCall<T>(fn: () => Promise<T>): Promise<T> {
    this.#inManager = true;
    try {
      return await fn();
    } finally {
      this.#inManager = false;
    }
  }

  /** Sends an ack ("" = success) or nack. False when it could not be sent (reconnect). */
  async #reply(s: Session, error: string): Promise<boolean> {
    try {
      await s.conn.send(encodeAck(error), -1, this.#sendTimeoutMs);
      return true;
    } catch (e) {
      if (!s.conn.closed) this.#log("warn", "sending the ack to the node agent failed", { error: errorText(e), ack: error });
      return false;
    }
  }
}

/**
 * Encodes an ack. A nack text too long for one ZDS packet (a manager error can say anything) is
 * shortened to fit, so the agent always gets its one answer.
 */
function encodeAck(error: string): Uint8Array {
  let text = error;
  for (;;) {
    try {
      return encodeResponse(ackResponse(text));
    } catch (e) {
      if (!(e instanceof RangeError) || text.length === 0) throw e;
      text = text.slice(0, Math.floor(text.length * 0.9)) ;
      if (!text.endsWith("…")) text = text.slice(0, -1) + "…";
    }
  }
}
