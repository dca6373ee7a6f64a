// The splice relay thread: one epoll loop that accepts on the listeners it was given and moves
// each connection's bytes socket → pipe → socket with splice(2), so payload never enters user
// space. Commands arrive through the shared ring (see splice-shared.ts); accepted sockets,
// established connects and finished connections go back to the owning thread in batches.
//
// Per direction: read from the source into the direction's pipe while it has room, write
// from the pipe to the destination while the destination takes it. A full pipe stops the
// reading (backpressure: the kernel's socket buffers then fill and TCP slows the sender).
// End of input is passed on as shutdown(SHUT_WR) once the pipe is empty (half-close); when
// both directions are finished both sockets are closed with a FIN. A reset or error on either
// socket resets the other. Pipes are taken from a pool only while a direction has bytes in
// flight, so an idle connection holds just its two sockets.
import {
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  acceptRaw,
  closeReset,
  epollAdd,
  epollDel,
  epollCreate,
  epollWait,
  makePipe,
  spliceRaw,
} from "../sys/splice.ts";
import { EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, ETIMEDOUT } from "../sys/errors.ts";
import { closeFd, drainEventFd, getSockOpt, shutdownFd, SHUT_WR, SOL_SOCKET, SO_ERROR } from "../sys/index.ts";
import { CMD_INTS, Cmd, End, HEAD, RING_BASE, RING_ENTRIES, SLEEPING, SleepState, TAIL, type SpliceEvents, type SpliceInit } from "./splice-shared.ts";
import { nameThisThread, THREAD_NAMES } from "../util/thread-name.ts";

declare const self: Worker;

nameThisThread(THREAD_NAMES.spliceRelay);

/** Cookie kinds (low 2 bits of the epoll cookie; the rest is a listener tag or a slot). */
const K_WAKE = 0;
const K_LISTENER = 1;
const K_CLIENT = 2;
const K_UPSTREAM = 3;

const CONN_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
/** Accepts per listener per wake-up (level-triggered: the rest come on the next round). */
const ACCEPT_BATCH = 64;
/** How long a listener rests after accept ran out of fds or memory. */
const ACCEPT_BACKOFF_MS = 100;
/** Free pipes kept for reuse; beyond this, emptied pipes are closed. */
const POOL_MAX = 256;

/** A pipe pair; pooled objects, so moving bytes allocates nothing in the steady state. */
interface Pipe {
  r: number;
  w: number;
}

interface Dir {
  src: number;
  dst: number;
  /** Only while bytes are in flight in this direction; back to the pool when empty. */
  pipe: Pipe | null;
  /** Bytes in the pipe, not yet written to dst. */
  inPipe: number;
  srcEof: boolean;
  shut: boolean;
  bytes: number;
}

interface Conn {
  slot: number;
  client: number;
  upstream: number;
  connecting: boolean;
  deadline: number;
  up: Dir; // client → upstream
  down: Dir; // upstream → client
  over: boolean;
}

self.onmessage = (ev: MessageEvent<SpliceInit>) => {
  try {
    new RelayLoop(ev.data).run();
  } catch (e) {
    console.error(`nshub: splice relay thread failed: ${(e as Error).stack ?? e}`);
    throw e;
  }
  self.postMessage({ stopped: true } satisfies SpliceEvents);
};

class RelayLoop {
  readonly #ring: Int32Array;
  readonly #counters: Float64Array;
  readonly #wakeFd: number;
  readonly #pipeSize: number;
  readonly #ep: number;
  readonly #listeners = new Map<number, number>(); // tag → fd
  readonly #conns = new Map<number, Conn>(); // slot → conn
  readonly #connecting = new Set<Conn>();
  /** Listeners resting after accept failed for lack of fds (tag → when to watch them again). */
  readonly #paused = new Map<number, number>();
  readonly #pool: Pipe[] = [];
  #pipeCap = 65536;
  #accepted: number[] = [];
  #unlistened: number[] = [];
  #established: number[] = [];
  #halfClosed: number[] = [];
  #done: number[] = [];
  #stopping = false;

  constructor(init: SpliceInit) {
    this.#ring = new Int32Array(init.ring);
    this.#counters = new Float64Array(init.counters);
    this.#wakeFd = init.wakeFd;
    this.#pipeSize = init.pipeSize;
    this.#ep = epollCreate();
    epollAdd(this.#ep, this.#wakeFd, EPOLLIN, K_WAKE);
  }

  run(): void {
    const evs = new Uint32Array(2 * 256);
    const ring = this.#ring;
    while (!this.#stopping) {
      // Announce the sleep first, then look at the ring: a command the owner queued before it
      // saw the flag is found here (and then epoll_wait must not block); one queued after
      // comes with an eventfd wake-up.
      Atomics.store(ring, SLEEPING, SleepState.Asleep);
      const pending = Atomics.load(ring, TAIL) !== Atomics.load(ring, HEAD);
      const n = epollWait(this.#ep, evs, 256, pending ? 0 : this.#timeout());
      Atomics.store(ring, SLEEPING, SleepState.Awake);
      if (n < 0 && n !== -EINTR) throw new Error(`epoll_wait failed: errno ${-n}`);
      for (let i = 0; i < n; i++) this.#event(evs[2 * i]!, evs[2 * i + 1]!);
      this.#commands();
      if (this.#connecting.size > 0) this.#expireConnects();
      if (this.#paused.size > 0) this.#resumeListeners();
      this.#flushEvents();
    }
    for (const c of [...this.#conns.values()]) this.#end(c, End.Aborted, 0);
    for (const fd of this.#listeners.values()) closeFd(fd);
    for (const p of this.#pool) (closeFd(p.r), closeFd(p.w));
    closeFd(this.#ep);
    this.#flushEvents();
  }

  // ---- events -------------------------------------------------------------------------------

  #event(events: number, cookie: number): void {
    const kind = cookie & 3;
    const id = cookie >>> 2;
    if (kind === K_WAKE) {
      drainEventFd(this.#wakeFd);
      return;
    }
    if (kind === K_LISTENER) return this.#accept(id);
    const c = this.#conns.get(id);
    if (!c || c.over) return; // closed earlier in this batch
    const sock = kind === K_CLIENT ? c.client : c.upstream;
    if (events & EPOLLERR) {
      const err = soError(sock);
      // Only the upstream socket's error during its connect is a failed connect.
      if (err !== 0) return this.#end(c, c.connecting && kind === K_UPSTREAM ? End.ConnectFailed : End.Reset, err);
    }
    if (c.connecting) {
      if (kind === K_CLIENT) return; // client bytes wait in its socket until the upstream is up
      // The connect is over once the upstream reports writable or hung up; a failure came with
      // EPOLLERR and its SO_ERROR, handled above. (No poll/getsockopt to ask again.)
      if (!(events & (EPOLLOUT | EPOLLHUP | EPOLLERR))) return;
      c.connecting = false;
      this.#connecting.delete(c);
      this.#established.push(c.slot);
      this.#pump(c, c.up);
      if (!c.over) this.#pump(c, c.down);
    } else {
      // Input on `sock` feeds the direction it is the source of; room on it, the other one.
      const from = kind === K_CLIENT ? c.up : c.down;
      const to = kind === K_CLIENT ? c.down : c.up;
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) this.#pump(c, from);
      if (!c.over && events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) this.#pump(c, to);
    }
    if (!c.over) this.#maybeFinished(c);
  }

  #accept(tag: number): void {
    const fd = this.#listeners.get(tag);
    if (fd === undefined) return;
    for (let i = 0; i < ACCEPT_BATCH; i++) {
      const s = acceptRaw(fd);
      if (s >= 0) {
        this.#accepted.push(tag, s);
        continue;
      }
      if (s === -EAGAIN || s === -EINTR) return;
      // Out of fds or memory: the connection stays queued. The listener is level-triggered, so
      // leave it out of epoll for a moment instead of spinning on it; report once per pause.
      if (s === -EMFILE || s === -ENFILE || s === -ENOBUFS || s === -ENOMEM) {
        epollDel(this.#ep, fd);
        this.#paused.set(tag, Date.now() + ACCEPT_BACKOFF_MS);
        self.postMessage({ listenError: [tag, -s] } satisfies SpliceEvents);
        return;
      }
      // ECONNABORTED and the like: that one connection is gone; go on with the next.
    }
  }

  /** Moves what it can in one direction; ends the connection on a socket error. */
  #pump(c: Conn, d: Dir): void {
    for (;;) {
      let moved = false;
      if (!d.srcEof && d.inPipe < this.#pipeCap) {
        const pipe = d.pipe ?? this.#takePipe(d);
        if (!pipe) return this.#end(c, End.Reset, ENFILE);
        const n = spliceRaw(d.src, pipe.w, this.#pipeCap - d.inPipe);
        if (n > 0) {
          d.inPipe += n;
          moved = true;
        } else if (n === 0) {
          d.srcEof = true;
          moved = true;
        } else if (n !== -EAGAIN) {
          return this.#end(c, End.Reset, -n);
        }
      }
      if (d.inPipe > 0) {
        const n = spliceRaw(d.pipe!.r, d.dst, d.inPipe);
        if (n > 0) {
          d.inPipe -= n;
          d.bytes += n;
          this.#counters[2 * c.slot + (d === c.up ? 0 : 1)] = d.bytes;
          moved = true;
        } else if (n !== -EAGAIN) {
          return this.#end(c, End.Reset, -n);
        }
      }
      if (!moved) break;
    }
    if (d.inPipe === 0 && d.pipe) this.#givePipe(d);
    if (d.srcEof && d.inPipe === 0 && !d.shut) {
      d.shut = true;
      if (!(c.up.shut && c.down.shut)) this.#halfClosed.push(c.slot);
      try {
        shutdownFd(d.dst, SHUT_WR);
      } catch {
        // the peer is gone: its error or hang-up event ends the connection
      }
    }
  }

  #maybeFinished(c: Conn): void {
    if (c.up.shut && c.down.shut) this.#end(c, End.Done, 0);
  }

  /** Closes both sockets (FIN for Done, RST otherwise), returns the pipes, reports the end. */
  #end(c: Conn, how: End, errno: number): void {
    if (c.over) return;
    c.over = true;
    this.#conns.delete(c.slot);
    this.#connecting.delete(c);
    for (const d of [c.up, c.down]) {
      if (!d.pipe) continue;
      // A pipe that still holds bytes is thrown away, not reused.
      if (d.inPipe === 0) this.#givePipe(d);
      else (closeFd(d.pipe.r), closeFd(d.pipe.w), (d.pipe = null));
    }
    if (how === End.Done) {
      closeFd(c.client);
      closeFd(c.upstream);
    } else {
      closeReset(c.client);
      closeReset(c.upstream);
    }
    this.#done.push(c.slot, how, errno, c.up.bytes, c.down.bytes);
  }

  #takePipe(d: Dir): Pipe | null {
    let p = this.#pool.pop();
    if (!p) {
      try {
        const [r, w, cap] = makePipe(this.#pipeSize);
        this.#pipeCap = cap;
        p = { r, w };
      } catch {
        return null;
      }
    }
    d.pipe = p;
    return p;
  }

  #givePipe(d: Dir): void {
    const p = d.pipe!;
    d.pipe = null;
    if (this.#pool.length < POOL_MAX) this.#pool.push(p);
    else (closeFd(p.r), closeFd(p.w));
  }

  // ---- commands from the owner --------------------------------------------------------------

  #commands(): void {
    const ring = this.#ring;
    let head = Atomics.load(ring, HEAD);
    const tail = Atomics.load(ring, TAIL);
    while (head !== tail) {
      const at = RING_BASE + (head % RING_ENTRIES) * CMD_INTS;
      try {
        this.#command(ring[at]!, ring[at + 1]!, ring[at + 2]!, ring[at + 3]!, ring[at + 4]!);
      } catch (e) {
        // A bad fd from the owner (a bug there): say so, keep serving everything else.
        self.postMessage({ warning: `command ${ring[at]} failed: ${(e as Error).message}` } satisfies SpliceEvents);
      }
      head = (head + 1) | 0;
    }
    Atomics.store(ring, HEAD, head);
  }

  #command(op: number, a: number, b: number, c: number, d: number): void {
    switch (op) {
      case Cmd.Listen:
        this.#listeners.set(a, b);
        epollAdd(this.#ep, b, EPOLLIN, (a << 2) | K_LISTENER);
        return;
      case Cmd.Unlisten: {
        const fd = this.#listeners.get(a);
        this.#listeners.delete(a);
        this.#paused.delete(a);
        if (fd !== undefined) closeFd(fd);
        this.#unlistened.push(a);
        return;
      }
      case Cmd.Relay:
        return this.#relay(a, b, c, d);
      case Cmd.Abort: {
        const conn = this.#conns.get(a);
        if (conn) this.#end(conn, End.Aborted, 0);
        return;
      }
      case Cmd.Stop:
        this.#stopping = true;
        return;
    }
  }

  #relay(slot: number, client: number, upstream: number, timeoutMs: number): void {
    const dir = (src: number, dst: number): Dir => ({ src, dst, pipe: null, inPipe: 0, srcEof: false, shut: false, bytes: 0 });
    const c: Conn = { slot, client, upstream, connecting: true, deadline: Date.now() + timeoutMs, up: dir(client, upstream), down: dir(upstream, client), over: false };
    // The slot's byte counters were zeroed by the owner before it queued this command.
    this.#conns.set(slot, c);
    this.#connecting.add(c);
    try {
      epollAdd(this.#ep, client, CONN_EVENTS, (slot << 2) | K_CLIENT);
      epollAdd(this.#ep, upstream, CONN_EVENTS, (slot << 2) | K_UPSTREAM);
    } catch (e) {
      return this.#end(c, End.Reset, (e as { errno?: number }).errno ?? 0);
    }
  }

  #expireConnects(): void {
    const now = Date.now();
    for (const c of this.#connecting) if (c.deadline <= now) this.#end(c, End.ConnectFailed, ETIMEDOUT);
  }

  #resumeListeners(): void {
    const now = Date.now();
    for (const [tag, at] of this.#paused) {
      if (at > now) continue;
      this.#paused.delete(tag);
      const fd = this.#listeners.get(tag);
      if (fd !== undefined) epollAdd(this.#ep, fd, EPOLLIN, (tag << 2) | K_LISTENER);
    }
  }

  /** epoll_wait's timeout: until the earliest connect deadline or listener rest, else forever. */
  #timeout(): number {
    if (this.#connecting.size === 0 && this.#paused.size === 0) return -1;
    let first = Infinity;
    for (const c of this.#connecting) if (c.deadline < first) first = c.deadline;
    for (const at of this.#paused.values()) if (at < first) first = at;
    return Math.max(0, Math.min(60_000, first - Date.now()));
  }

  #flushEvents(): void {
    if (this.#accepted.length + this.#unlistened.length + this.#established.length + this.#halfClosed.length + this.#done.length === 0) return;
    const m: SpliceEvents = {};
    if (this.#accepted.length > 0) m.accepted = this.#accepted;
    if (this.#unlistened.length > 0) m.unlistened = this.#unlistened;
    if (this.#established.length > 0) m.established = this.#established;
    if (this.#halfClosed.length > 0) m.halfClosed = this.#halfClosed;
    if (this.#done.length > 0) m.done = this.#done;
    this.#accepted = [];
    this.#unlistened = [];
    this.#established = [];
    this.#halfClosed = [];
    this.#done = [];
    self.postMessage(m);
  }
}

function soError(fd: number): number {
  try {
    return getSockOpt(fd, SOL_SOCKET, SO_ERROR);
  } catch {
    return 0;
  }
}
