// Readiness of raw fds without blocking the JS thread. Bun has no "watch this fd" API, so one
// Worker sits in poll(2) and tells us when an fd we registered is ready (one-shot). Used for
// non-blocking connects and for the seqpacket sockets that Bun must not own (it would drop
// SCM_RIGHTS fds).
import { eventFd, signalEventFd } from "./fds.ts";
import { BASE, HIGH_WATER, MAX_SLOTS, SAB_INTS, SLOT_INTS, STOP, type PollEvent } from "./poller-shared.ts";

export { POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL } from "./poller-shared.ts";

interface Waiter {
  gen: number;
  fd: number;
  resolve: (revents: number) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

class FdPoller {
  readonly #shared = new Int32Array(new SharedArrayBuffer(SAB_INTS * 4));
  readonly #waiters = new Map<number, Waiter>();
  readonly #free: number[] = [];
  readonly #wakeFd: number;
  readonly #worker: Worker;
  #nextGen = 1;
  #highWater = 0;
  #stopped = false;

  constructor() {
    this.#wakeFd = eventFd();
    this.#worker = new Worker(workerUrl());
    this.#worker.onmessage = (ev: MessageEvent<PollEvent[] | { stopped: true }>) => {
      if (Array.isArray(ev.data)) for (const [slot, gen, revents] of ev.data) this.#fire(slot, gen, revents);
    };
    this.#worker.onerror = (ev) => console.error(`nshub: fd poller thread failed: ${ev.message}`);
    this.#worker.postMessage({ sab: this.#shared.buffer, wakeFd: this.#wakeFd });
    this.#worker.unref();
  }

  /**
   * Resolves with poll's revents once `fd` is ready for `events`, or with 0 after `timeoutMs`
   * or when cancelled. The caller must cancel before closing the fd.
   */
  wait(fd: number, events: number, timeoutMs?: number): Promise<number> {
    if (this.#stopped) return Promise.resolve(0);
    const slot = this.#allocSlot();
    const gen = this.#nextGen;
    this.#nextGen = this.#nextGen >= 0x7fffffff ? 1 : this.#nextGen + 1;
    const at = BASE + slot * SLOT_INTS;
    this.#shared[at] = fd;
    this.#shared[at + 1] = events;
    Atomics.store(this.#shared, at + 2, gen);
    return new Promise<number>((resolve) => {
      const w: Waiter = { gen, fd, resolve, timer: undefined };
      if (timeoutMs !== undefined) w.timer = setTimeout(() => this.#cancelSlot(slot, w), timeoutMs);
      this.#waiters.set(slot, w);
      if (this.#waiters.size === 1) this.#worker.ref();
      signalEventFd(this.#wakeFd);
    });
  }

  /** Cancels every wait on `fd` (they resolve with 0). Call before closing the fd. */
  cancel(fd: number): void {
    for (const [slot, w] of this.#waiters) if (w.fd === fd) this.#cancelSlot(slot, w);
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const [slot, w] of this.#waiters) this.#cancelSlot(slot, w);
    Atomics.store(this.#shared, STOP, 1);
    signalEventFd(this.#wakeFd);
  }

  #cancelSlot(slot: number, w: Waiter): void {
    const at = BASE + slot * SLOT_INTS + 2;
    // If the poller already claimed this registration its event is on the way; let #fire finish it.
    if (Atomics.compareExchange(this.#shared, at, w.gen, 0) !== w.gen) return;
    this.#finish(slot, w, 0);
    // Wake the thread so it drops the fd from its poll set: poll(2) holds a reference to every
    // file it waits on, so until it returns, closing the fd would not release the socket (its
    // peer would see no EOF).
    signalEventFd(this.#wakeFd);
  }

  #fire(slot: number, gen: number, revents: number): void {
    const w = this.#waiters.get(slot);
    if (!w || w.gen !== gen) return;
    this.#finish(slot, w, revents);
  }

  #finish(slot: number, w: Waiter, revents: number): void {
    if (w.timer) clearTimeout(w.timer);
    this.#waiters.delete(slot);
    this.#free.push(slot);
    if (this.#waiters.size === 0) this.#worker.unref();
    w.resolve(revents);
  }

  #allocSlot(): number {
    const s = this.#free.pop();
    if (s !== undefined) return s;
    if (this.#highWater >= MAX_SLOTS) throw new Error(`fd poller: more than ${MAX_SLOTS} fds waiting at once`);
    const slot = this.#highWater++;
    Atomics.store(this.#shared, HIGH_WATER, this.#highWater);
    return slot;
  }
}

/**
 * Where the poller worker's code is. In the compiled binary it is an extra entrypoint
 * (scripts/build lists it) stored under src/'s layout in Bun's embedded filesystem, while this
 * module is bundled into the main entry at the root; under `bun run` it sits next to us.
 */
function workerUrl(): string {
  if (import.meta.url.startsWith("file:///$bunfs/")) return "/$bunfs/root/sys/poller-worker.js";
  return new URL("./poller-worker.ts", import.meta.url).href;
}

let poller: FdPoller | undefined;

/** The process-wide poller, started on first use. */
export function fdPoller(): FdPoller {
  poller ??= new FdPoller();
  return poller;
}

/** Stops the poller thread (at shutdown) so nothing keeps the process alive. */
export function stopFdPoller(): void {
  poller?.stop();
  poller = undefined;
}

export type { FdPoller };
