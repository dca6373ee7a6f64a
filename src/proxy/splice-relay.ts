// One connection relayed by the splice relay thread (splice-worker.ts): the JS side keeps its
// record up to date. While the connection lives, the record's byte counts read the relay
// thread's shared counters, so the admin API and the metrics see live totals without any
// per-chunk work; when it ends they become plain numbers.
import { closeFd } from "../sys/index.ts";
import { closeReset } from "../sys/splice.ts";
import { ERRNO_NAMES } from "../sys/errno.ts";
import type { CloseHow, ConnectionRecord, ConnectionTable } from "./records.ts";
import { End, type SpliceEngine } from "./splice-engine.ts";

export class SpliceRelay {
  #clientFd: number;
  #slot = -1;
  #done = false;
  #onFinish: ((relay: SpliceRelay) => void) | undefined;

  constructor(
    readonly rec: ConnectionRecord,
    clientFd: number,
    private readonly table: ConnectionTable,
    private readonly engine: SpliceEngine,
  ) {
    this.#clientFd = clientFd;
  }

  get finished(): boolean {
    return this.#done;
  }

  onFinish(fn: (relay: SpliceRelay) => void): void {
    this.#onFinish = fn;
  }

  /** Hands both sockets to the relay thread; `upstreamFd`'s connect may still be in progress. */
  start(upstreamFd: number, connectTimeoutMs: number): void {
    if (this.#done) {
      closeFd(upstreamFd);
      return;
    }
    const client = this.#clientFd;
    let slot: number;
    try {
      slot = this.engine.relay(client, upstreamFd, connectTimeoutMs, {
        established: () => {
          if (!this.#done) this.table.established(this.rec);
        },
        halfClosed: () => {
          if (this.rec.state === "open") this.rec.state = "half_closed";
        },
        done: (how, errno, sent, received) => this.#ended(how, errno, sent, received),
      });
    } catch (e) {
      closeFd(upstreamFd);
      this.abort("error", (e as Error).message);
      return;
    }
    this.#clientFd = -1;
    this.#slot = slot;
    const engine = this.engine;
    Object.defineProperty(this.rec, "bytesSent", { get: () => engine.sent(slot), enumerable: true, configurable: true });
    Object.defineProperty(this.rec, "bytesReceived", { get: () => engine.received(slot), enumerable: true, configurable: true });
  }

  connectFailed(error: string): void {
    this.abort("connect_failed", error);
  }

  /** Resets both sockets and closes the record with `how` now. Idempotent. */
  abort(how: CloseHow, error?: string): void {
    if (this.#done) return;
    if (this.#slot >= 0) {
      this.#freezeBytes(this.engine.sent(this.#slot), this.engine.received(this.#slot));
      this.engine.abort(this.#slot);
    } else {
      closeReset(this.#clientFd);
      this.#clientFd = -1;
    }
    this.#finish(how, error);
  }

  #ended(how: End, errno: number, sent: number, received: number): void {
    if (this.#done) return; // we aborted it ourselves
    this.#freezeBytes(sent, received);
    if (this.table.wantsBytes) {
      if (sent > 0) this.table.bytes(this.rec, true, sent);
      if (received > 0) this.table.bytes(this.rec, false, received);
    }
    const code = errno ? (ERRNO_NAMES[errno] ?? `E${errno}`) : undefined;
    if (how === End.Done) this.#finish("done");
    else if (how === End.ConnectFailed) this.#finish("connect_failed", code);
    else if (how === End.Reset) this.#finish("reset", code);
    else this.#finish("error", "relay thread stopped");
  }

  #freezeBytes(sent: number, received: number): void {
    Object.defineProperty(this.rec, "bytesSent", { value: sent, writable: true, enumerable: true, configurable: true });
    Object.defineProperty(this.rec, "bytesReceived", { value: received, writable: true, enumerable: true, configurable: true });
  }

  #finish(how: CloseHow, error?: string): void {
    if (this.#done) return;
    this.#done = true;
    this.table.close(this.rec, how, error);
    this.#onFinish?.(this);
  }
}
