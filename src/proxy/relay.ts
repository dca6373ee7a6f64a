// The byte relay between an accepted client socket and the upstream socket the proxy opened.
//
// Bun sockets do not buffer: write() returns how many bytes the kernel took and drops the rest
// (bun-runtime.md §2.5). So each direction has its own queue: bytes the destination did not
// take wait there, and once a queue holds more than `maxQueuedBytes` the reader feeding it is
// paused until the destination drains. Memory per connection is therefore bounded by roughly
// 2 × (maxQueuedBytes + one read). Bytes the client sends before the upstream is connected wait
// in the same (bounded) queue.
//
// TCP semantics: both sockets are half-open (allowHalfOpen). A FIN from one side is passed on
// as shutdown(SHUT_WR) on the other once its queue is flushed (never end(), which closes the
// socket and loses the reply); both sockets are closed only when both directions are done.
// A reset or error on one side resets the other (terminate() = RST).
import { closeFd, peerFinished } from "../sys/index.ts";
import type { ConnectionTable, CloseHow, ConnectionRecord } from "./records.ts";

/** The part of a Bun TCP socket the relay uses (Bun's d.ts lacks `fd`). */
export interface RelaySocket {
  data: unknown;
  readonly fd?: number;
  write(data: Uint8Array): number;
  shutdown(halfClose?: boolean): void;
  end(): void;
  terminate(): void;
  pause(): void;
  resume(): void;
}

export interface RelayOptions {
  /** Most bytes queued per direction before the reader feeding that queue is paused. */
  maxQueuedBytes: number;
}

class Side {
  sock: RelaySocket | undefined;
  /** Bytes waiting to be written to this side. */
  readonly queue: Uint8Array[] = [];
  queued = 0;
  /** The other side sent FIN: shut this side's write direction once the queue is empty. */
  finPending = false;
  /** shutdown(SHUT_WR) done on this socket. */
  shutdownSent = false;
  /** This side sent FIN (its `end` event). */
  eof = false;
  /** Its `close` event fired. */
  closed = false;
  /** We paused reading from this side because the other side's queue is full. */
  paused = false;

  constructor(readonly name: "client" | "upstream") {}
}

/**
 * One relayed connection. Created for the accepted client socket; the upstream socket arrives
 * later through `upstreamConnected` (or the connect fails: `connectFailed`). The Bun socket
 * handlers (see `clientHandlers`/`upstreamHandlers`) forward their events here through
 * `sock.data`.
 */
export class Relay {
  readonly client = new Side("client");
  readonly upstream = new Side("upstream");
  /** Set once the relay finished (record closed); later events only clean up. */
  #done = false;
  readonly #wantsBytes: boolean;
  #onFinish: ((relay: Relay) => void) | undefined;

  constructor(
    readonly rec: ConnectionRecord,
    client: RelaySocket,
    private readonly table: ConnectionTable,
    private readonly opts: RelayOptions,
  ) {
    this.client.sock = client;
    client.data = this;
    this.#wantsBytes = table.wantsBytes;
  }

  get finished(): boolean {
    return this.#done;
  }

  /** Called once when the relay ends (pods use it to forget the connection). */
  onFinish(fn: (relay: Relay) => void): void {
    this.#onFinish = fn;
  }

  /** Connects the upstream: adopts the connected fd as a Bun socket and starts relaying. */
  async adoptUpstream(fd: number): Promise<void> {
    if (this.#done) {
      closeFd(fd);
      return;
    }
    try {
      // Bun.connect({fd}) does not wait for a connect in progress; connectTcp already did.
      await Bun.connect({ fd, allowHalfOpen: true, data: this, socket: upstreamHandlers } as never);
    } catch (e) {
      closeFd(fd);
      this.connectFailed(`adopting upstream socket: ${(e as Error).message}`);
    }
  }

  /** From upstreamHandlers.open. */
  upstreamOpened(sock: RelaySocket): void {
    if (this.#done) {
      sock.terminate();
      return;
    }
    this.upstream.sock = sock;
    this.table.established(this.rec);
    // Flush what the client sent meanwhile, and a FIN it may have sent too.
    this.#flush(this.upstream);
    this.#updateState();
  }

  /** The upstream connect failed: reset the client promptly. */
  connectFailed(error: string): void {
    this.abort("connect_failed", error);
  }

  /** Reset both sides (RST) and close the record with `how`. Idempotent. */
  abort(how: CloseHow, error?: string): void {
    for (const side of [this.client, this.upstream]) {
      if (side.sock && !side.closed) {
        side.closed = true;
        try {
          side.sock.terminate();
        } catch {
          // already gone
        }
      }
      side.queue.length = 0;
      side.queued = 0;
    }
    this.#finish(how, error);
  }

  // ---- events, from the socket handlers -----------------------------------------------------

  onData(from: Side, chunk: Uint8Array): void {
    if (this.#done) return;
    this.#forward(from, chunk);
    // Bun reports a FIN one event-loop turn after the bytes before it. Passed on that late, the
    // FIN often lets the far side read a complete response and close first, so its socket (not
    // ours) ends in TIME_WAIT, in the pod's own port range: under a Connection: close storm the
    // connects from that pod then search a nearly full range (wrk through this relay fell to a
    // tenth of its rate after ~10 s, 2026-11-25; after ~40 s with this check). So look for a
    // FIN that is already there right behind the bytes (one poll per read).
    const fd = from.sock?.fd;
    if (!this.#done && !from.eof && fd !== undefined && peerFinished(fd)) this.onEnd(from);
  }

  #forward(from: Side, chunk: Uint8Array): void {
    const to = from === this.client ? this.upstream : this.client;
    if (to.closed || to.shutdownSent) return; // nowhere to go; a close/reset is on its way
    if (to.sock && to.queued === 0) {
      const n = this.#write(to, chunk);
      if (n < 0) return;
      if (n === chunk.byteLength) return;
      chunk = chunk.subarray(n);
    }
    // Bun hands each read its own buffer, so keeping a view of it is safe.
    to.queue.push(chunk);
    to.queued += chunk.byteLength;
    if (to.queued > this.opts.maxQueuedBytes && !from.paused && from.sock) {
      from.paused = true;
      from.sock.pause();
    }
  }

  onDrain(side: Side): void {
    if (this.#done) return;
    this.#flush(side);
  }

  onEnd(from: Side): void {
    if (this.#done || from.eof) return;
    from.eof = true;
    const to = from === this.client ? this.upstream : this.client;
    to.finPending = true;
    if (to.sock) this.#flush(to);
    this.#updateState();
    this.#maybeComplete();
  }

  onClose(side: Side, error: unknown): void {
    if (side.closed) return;
    if (this.#done) {
      side.closed = true;
      return;
    }
    if (error) {
      // ECONNRESET, EPIPE…: pass it on as a reset.
      const code = (error as { code?: string }).code;
      side.closed = true;
      this.abort("reset", `${side.name} ${code ?? (error as Error).message ?? "error"}`);
      return;
    }
    // A clean close. Bun closes a socket by itself once both directions are finished: after
    // our shutdown() when the peer's FIN had already come, and also when the peer's FIN comes
    // after our shutdown() — then without an `end` event. So a clean close means "this side
    // sent FIN"; it is fine as long as nothing more had to be written to it.
    if (!side.eof) this.onEnd(side);
    side.closed = true;
    if (this.#done) return;
    if (!side.shutdownSent || side.queued > 0) {
      this.abort("reset", `${side.name} closed before the other side finished`);
      return;
    }
    this.#maybeComplete();
  }

  onError(side: Side, error: unknown): void {
    if (this.#done) return;
    const code = (error as { code?: string }).code;
    this.abort("reset", `${side.name} error ${code ?? (error as Error).message}`);
  }

  // ---- internals ----------------------------------------------------------------------------

  /** Writes to `to`, counting bytes; -1 when the socket is closed (then the relay is reset). */
  #write(to: Side, chunk: Uint8Array): number {
    const n = to.sock!.write(chunk);
    if (n < 0) {
      this.onClose(to, { code: "EPIPE" });
      return -1;
    }
    if (n > 0) {
      const toUpstream = to === this.upstream;
      if (toUpstream) this.rec.bytesSent += n;
      else this.rec.bytesReceived += n;
      if (this.#wantsBytes) this.table.bytes(this.rec, toUpstream, n);
    }
    return n;
  }

  /** Writes as much of `to`'s queue as it takes; resumes the paused reader; passes on a FIN. */
  #flush(to: Side): void {
    if (!to.sock || to.closed) return;
    while (to.queue.length > 0) {
      const head = to.queue[0]!;
      const n = this.#write(to, head);
      if (n < 0) return;
      to.queued -= n;
      if (n < head.byteLength) {
        to.queue[0] = head.subarray(n);
        break;
      }
      to.queue.shift();
    }
    const from = to === this.upstream ? this.client : this.upstream;
    if (from.paused && to.queued <= this.opts.maxQueuedBytes / 2 && from.sock && !from.closed) {
      from.paused = false;
      from.sock.resume();
    }
    if (to.queued === 0 && to.finPending && !to.shutdownSent) {
      to.shutdownSent = true;
      to.sock.shutdown();
      this.#maybeComplete();
    }
  }

  #updateState(): void {
    if (this.rec.state === "closed" || this.rec.state === "connecting") return;
    this.rec.state = this.client.eof || this.upstream.eof ? "half_closed" : "open";
  }

  /** Both directions finished (FIN received and passed on each way): close both, cleanly. */
  #maybeComplete(): void {
    const c = this.client;
    const u = this.upstream;
    if (!(c.eof && u.eof && c.shutdownSent && u.shutdownSent)) return;
    for (const side of [c, u]) {
      if (side.sock && !side.closed) {
        side.closed = true;
        side.sock.end();
      }
    }
    this.#finish("done");
  }

  #finish(how: CloseHow, error?: string): void {
    if (this.#done) return;
    this.#done = true;
    this.table.close(this.rec, how, error);
    this.#onFinish?.(this);
  }
}

type AnySocket = RelaySocket & { data: Relay | undefined };

/**
 * Handlers for adopted upstream sockets (one object for all of them; the relay travels in
 * `sock.data`).
 */
export const upstreamHandlers = {
  binaryType: "uint8array",
  open(sock: AnySocket) {
    sock.data?.upstreamOpened(sock);
  },
  data(sock: AnySocket, chunk: Uint8Array) {
    const r = sock.data;
    if (r) r.onData(r.upstream, chunk);
  },
  drain(sock: AnySocket) {
    const r = sock.data;
    if (r) r.onDrain(r.upstream);
  },
  end(sock: AnySocket) {
    const r = sock.data;
    if (r) r.onEnd(r.upstream);
  },
  close(sock: AnySocket, error?: unknown) {
    const r = sock.data;
    if (r) r.onClose(r.upstream, error);
  },
  error(sock: AnySocket, error: unknown) {
    const r = sock.data;
    if (r) r.onError(r.upstream, error);
  },
};

/**
 * Socket handlers for a listener whose accepted sockets are relayed. `accept` runs in `open`
 * and must attach a Relay to the socket (or reset it).
 */
export function clientHandlers(accept: (sock: RelaySocket) => void) {
  return {
    binaryType: "uint8array" as const,
    open(sock: AnySocket) {
      sock.data = undefined;
      accept(sock);
    },
    data(sock: AnySocket, chunk: Uint8Array) {
      const r = sock.data;
      if (r) r.onData(r.client, chunk);
    },
    drain(sock: AnySocket) {
      const r = sock.data;
      if (r) r.onDrain(r.client);
    },
    end(sock: AnySocket) {
      const r = sock.data;
      if (r) r.onEnd(r.client);
    },
    close(sock: AnySocket, error?: unknown) {
      const r = sock.data;
      if (r) r.onClose(r.client, error);
    },
    error(sock: AnySocket, error: unknown) {
      const r = sock.data;
      if (r) r.onError(r.client, error);
    },
  };
}
