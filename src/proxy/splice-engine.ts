// The owning thread's handle on its splice relay thread (splice-worker.ts): hands it listeners
// and connections, and turns its event batches back into callbacks. One per JS thread that
// serves pods (the main thread and each data-plane Worker), started on first use.
import { closeFd, closeReset, eventFd, signalEventFd } from "../sys/index.ts";
import { ERRNO_NAMES } from "../sys/errno.ts";
import { CMD_INTS, Cmd, End, HEAD, MAX_SLOTS, RING_BASE, RING_ENTRIES, RING_INTS, SLEEPING, SleepState, TAIL, type SpliceEvents } from "./splice-shared.ts";

export { End } from "./splice-shared.ts";

export interface SpliceConnHandlers {
  /** The upstream connect completed; bytes flow now. */
  established(): void;
  /** One direction finished: its FIN was passed on, the other direction still flows. */
  halfClosed(): void;
  /** The connection is over and both sockets are closed (`errno` 0 unless it failed). */
  done(how: End, errno: number, sent: number, received: number): void;
}

export interface SpliceEngineOptions {
  /** Pipe size per direction in bytes (default 256 KiB; the kernel caps it at fs.pipe-max-size). */
  pipeSize?: number;
  /** Problems the relay thread reports (a listener out of fds…), for the log. */
  onWarning?: (message: string) => void;
  /** The relay thread's code (tests substitute a failing one). */
  workerUrl?: string;
}

/**
 * What happens when a relay thread dies (a bug): its listeners stay open with nobody accepting
 * and its connections stall, so the proxy must not carry on as if nothing happened. The proxy
 * command drains and exits non-zero; a data-plane Worker fails, which does the same.
 */
let onFailure: (error: string) => void = (error) => {
  throw new Error(`splice relay thread failed: ${error}`);
};

export function setSpliceFailureHandler(fn: (error: string) => void): void {
  onFailure = fn;
}

export class SpliceEngine {
  readonly #ring = new Int32Array(new SharedArrayBuffer(RING_INTS * 4));
  readonly #counters = new Float64Array(new SharedArrayBuffer(MAX_SLOTS * 2 * 8));
  readonly #wakeFd: number;
  readonly #worker: Worker;
  readonly #onWarning: (message: string) => void;
  readonly #listeners = new Map<number, (fd: number) => void>();
  /** Listeners asked to close whose acknowledgement has not come back yet. */
  readonly #closing = new Map<number, PromiseWithResolvers<void>>();
  readonly #conns = new Map<number, SpliceConnHandlers>();
  readonly #freeSlots: number[] = [];
  #highSlot = 0;
  #nextTag = 1;
  #tail = 0;
  #referenced = false;
  #stopped: Promise<void> | undefined;
  #onStopped: (() => void) | undefined;
  #failed: string | undefined;

  constructor(opts: SpliceEngineOptions = {}) {
    this.#onWarning = opts.onWarning ?? ((m) => console.error(`nshub: ${m}`));
    this.#wakeFd = eventFd();
    this.#worker = new Worker(opts.workerUrl ?? workerUrl());
    this.#worker.onmessage = (ev: MessageEvent<SpliceEvents>) => this.#events(ev.data);
    this.#worker.onerror = (ev) => {
      this.#failed = ev.message || "unknown error";
      // Its connections are gone with it: end their records now, so a drain does not wait for them.
      const conns = [...this.#conns];
      this.#conns.clear();
      for (const [slot, h] of conns) h.done(End.Aborted, 0, this.sent(slot), this.received(slot));
      for (const c of this.#closing.values()) c.resolve();
      this.#closing.clear();
      this.#onStopped?.();
      onFailure(this.#failed);
    };
    this.#worker.postMessage({ ring: this.#ring.buffer, counters: this.#counters.buffer, wakeFd: this.#wakeFd, pipeSize: opts.pipeSize ?? 256 * 1024 });
    this.#worker.unref();
  }

  /** Accept on `fd` (owned by the relay thread from now on); `onAccept` gets each new socket. */
  listen(fd: number, onAccept: (fd: number) => void): number {
    const tag = this.#nextTag++;
    this.#listeners.set(tag, onAccept);
    this.#send(Cmd.Listen, tag, fd);
    this.#updateRef();
    return tag;
  }

  /**
   * Stop accepting: the relay thread closes the listener. Sockets it accepted before that still
   * reach `onAccept` (a draining pod serves them); connections are not touched.
   */
  unlisten(tag: number): Promise<void> {
    const pending = this.#closing.get(tag);
    if (pending) return pending.promise;
    if (!this.#listeners.has(tag)) return Promise.resolve();
    const closing = Promise.withResolvers<void>();
    this.#closing.set(tag, closing);
    try {
      this.#send(Cmd.Unlisten, tag);
    } catch {
      // the relay thread is gone, and the listener with it
      this.#listeners.delete(tag);
      this.#closing.delete(tag);
      closing.resolve();
    }
    return closing.promise;
  }

  /**
   * Relays between `client` and `upstream` (both owned by the relay thread from now on). The
   * upstream connect may still be in progress; it fails with ETIMEDOUT after `connectTimeoutMs`.
   * Returns the connection's slot (for `bytes` and `abort`).
   */
  relay(client: number, upstream: number, connectTimeoutMs: number, handlers: SpliceConnHandlers): number {
    const slot = this.#freeSlots.pop() ?? this.#highSlot++;
    if (slot >= MAX_SLOTS) {
      this.#highSlot--;
      throw new Error(`the splice relay thread already carries ${MAX_SLOTS} connections`);
    }
    this.#counters[2 * slot] = 0;
    this.#counters[2 * slot + 1] = 0;
    this.#conns.set(slot, handlers);
    try {
      this.#send(Cmd.Relay, slot, client, upstream, connectTimeoutMs);
    } catch (e) {
      this.#conns.delete(slot);
      this.#freeSlots.push(slot);
      throw e;
    }
    this.#updateRef();
    return slot;
  }

  /** Resets the connection in `slot`; its `done` follows with End.Aborted. */
  abort(slot: number): void {
    if (this.#conns.has(slot) && !this.#failed) this.#send(Cmd.Abort, slot);
  }

  /** Bytes relayed so far: [client → upstream, upstream → client]. */
  sent(slot: number): number {
    return this.#counters[2 * slot]!;
  }

  received(slot: number): number {
    return this.#counters[2 * slot + 1]!;
  }

  get connections(): number {
    return this.#conns.size;
  }

  /** Ends the relay thread: listeners closed, remaining connections reset (their `done` runs). */
  stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopped = new Promise<void>((resolve) => {
      this.#onStopped = () => {
        for (const c of this.#closing.values()) c.resolve();
        this.#closing.clear();
        this.#worker.terminate();
        closeFd(this.#wakeFd);
        resolve();
      };
    });
    if (this.#failed) this.#onStopped!();
    else {
      this.#worker.ref();
      this.#send(Cmd.Stop);
    }
    return this.#stopped;
  }

  #send(op: Cmd, a = 0, b = 0, c = 0, d = 0): void {
    if (this.#failed) throw new Error(`the splice relay thread has failed: ${this.#failed}`);
    const ring = this.#ring;
    if (this.#tail - Atomics.load(ring, HEAD) >= RING_ENTRIES) throw new Error("the splice relay thread is not keeping up (command ring full)");
    const at = RING_BASE + (this.#tail % RING_ENTRIES) * CMD_INTS;
    ring[at] = op;
    ring[at + 1] = a;
    ring[at + 2] = b;
    ring[at + 3] = c;
    ring[at + 4] = d;
    this.#tail = (this.#tail + 1) | 0;
    Atomics.store(ring, TAIL, this.#tail);
    // One wake-up per sleep: under load the owner queues many commands before the relay
    // thread gets to run, and each eventfd write is a scheduler wake-up.
    if (Atomics.compareExchange(ring, SLEEPING, SleepState.Asleep, SleepState.WakeSent) === SleepState.Asleep) signalEventFd(this.#wakeFd);
  }

  #events(m: SpliceEvents): void {
    if (m.accepted) {
      const a = m.accepted;
      for (let i = 0; i < a.length; i += 2) {
        const onAccept = this.#listeners.get(a[i]!);
        const fd = a[i + 1]!;
        // No callback: the engine is stopping and nobody serves it any more.
        if (!onAccept) {
          closeReset(fd);
          continue;
        }
        try {
          onAccept(fd);
        } catch (e) {
          this.#onWarning(`handling an accepted connection failed: ${(e as Error).message}`);
        }
      }
    }
    if (m.unlistened) {
      for (const tag of m.unlistened) {
        this.#listeners.delete(tag);
        this.#closing.get(tag)?.resolve();
        this.#closing.delete(tag);
      }
      this.#updateRef();
    }
    if (m.established) for (const slot of m.established) this.#conns.get(slot)?.established();
    if (m.halfClosed) for (const slot of m.halfClosed) this.#conns.get(slot)?.halfClosed();
    if (m.done) {
      const d = m.done;
      for (let i = 0; i < d.length; i += 5) {
        const slot = d[i]!;
        const h = this.#conns.get(slot);
        this.#conns.delete(slot);
        this.#freeSlots.push(slot);
        h?.done(d[i + 1]! as End, d[i + 2]!, d[i + 3]!, d[i + 4]!);
      }
      this.#updateRef();
    }
    if (m.listenError) this.#onWarning(`accept failed on a pod listener: ${ERRNO_NAMES[m.listenError[1]] ?? `errno ${m.listenError[1]}`} (the connection stays queued; the listener rests 100 ms)`);
    if (m.warning) this.#onWarning(`splice relay thread: ${m.warning}`);
    if (m.stopped) this.#onStopped?.();
  }

  /** The thread keeps the process alive only while it serves something. */
  #updateRef(): void {
    const busy = this.#listeners.size > 0 || this.#conns.size > 0;
    if (busy === this.#referenced || this.#stopped) return;
    this.#referenced = busy;
    if (busy) this.#worker.ref();
    else this.#worker.unref();
  }
}

/** Where the relay thread's code is (an extra entrypoint of the compiled binary). */
function workerUrl(): string {
  if (import.meta.url.startsWith("file:///$bunfs/")) return "/$bunfs/root/proxy/splice-worker.js";
  return new URL("./splice-worker.ts", import.meta.url).href;
}

let engine: SpliceEngine | undefined;

/** This thread's splice relay, started on first use. */
export function spliceEngine(opts?: SpliceEngineOptions): SpliceEngine {
  engine ??= new SpliceEngine(opts);
  return engine;
}

/** Stops this thread's splice relay if it was started (at shutdown). */
export async function stopSpliceEngine(): Promise<void> {
  const e = engine;
  engine = undefined;
  await e?.stop();
}
