// What the splice relay's two sides share: the owning JS thread (splice-engine.ts) and its
// relay thread (splice-worker.ts). Commands go owner → relay thread through a ring in a
// SharedArrayBuffer plus an eventfd wake-up (the relay thread sits in epoll_wait, where it
// cannot receive messages); events come back as ordinary postMessage batches. Byte counters
// live in a second SharedArrayBuffer so the owner reads them at any time without asking.

/**
 * Ring header: head (next entry the relay thread reads), tail (next entry the owner writes),
 * and whether the relay thread is (about to be) asleep in epoll_wait: only then does the owner
 * pay for an eventfd write to wake it, and only once per sleep (see SleepState).
 */
export const HEAD = 0;
export const TAIL = 1;
export const SLEEPING = 2;
/** Values of the SLEEPING word. */
export const enum SleepState {
  Awake = 0,
  /** Set by the relay thread before epoll_wait. */
  Asleep = 1,
  /** Set by the owner that wakes it (compare-and-swap from Asleep), so the next commands of
   * the same sleep do not write the eventfd again. */
  WakeSent = 2,
}
export const RING_BASE = 4;
export const CMD_INTS = 5;
export const RING_ENTRIES = 1 << 16;
export const RING_INTS = RING_BASE + RING_ENTRIES * CMD_INTS;

/** Connection slots per relay thread: index into the byte counters (2 float64 each). */
export const MAX_SLOTS = 1 << 18;

export const enum Cmd {
  /** [tag, listenFd]: accept on this listener (the relay thread owns the fd from now on). */
  Listen = 1,
  /** [tag]: stop accepting and close the listener. */
  Unlisten = 2,
  /** [slot, clientFd, upstreamFd, connectTimeoutMs]: relay these sockets (owned from now on);
   * the upstream connect may still be in progress. */
  Relay = 3,
  /** [slot]: reset both sockets of the connection. */
  Abort = 4,
  /** Close everything (connections reset) and end the thread. */
  Stop = 5,
}

/** How a relayed connection ended (the done event's `how`). */
export const enum End {
  /** Both directions finished with FIN. */
  Done = 0,
  /** A socket failed or was reset; the other one was reset. */
  Reset = 1,
  /** The upstream connect failed or timed out; the client was reset. */
  ConnectFailed = 2,
  /** Reset on the owner's request (Cmd.Abort, Cmd.Stop). */
  Aborted = 3,
}

export interface SpliceInit {
  ring: SharedArrayBuffer;
  counters: SharedArrayBuffer;
  wakeFd: number;
  /** Pipe size per direction in bytes (F_SETPIPE_SZ). */
  pipeSize: number;
}

/**
 * One batch of events, flat arrays for cheap cloning:
 * accepted: [tag, fd, …]; established, halfClosed: [slot, …]; done: [slot, how, errno, sent, received, …].
 */
export interface SpliceEvents {
  accepted?: number[];
  /** Listener tags closed (after every socket they accepted was reported above or earlier). */
  unlistened?: number[];
  established?: number[];
  /** Connections where one direction has finished (FIN passed on): [slot, …]. */
  halfClosed?: number[];
  done?: number[];
  stopped?: true;
  /** A listener whose accept ran out of fds or memory (it rests 100 ms): [tag, errno]. */
  listenError?: [number, number];
  /** Something the relay thread could not do (a command with a bad fd), for the log. */
  warning?: string;
}
