// One end of a ZDS connection: an AF_UNIX SOCK_SEQPACKET fd that nshub owns itself (never Bun,
// which would drop SCM_RIGHTS fds), read and written without ever blocking the JS thread. Waiting
// for readability goes through the process-wide fd poller (src/sys). Shared by the server (agent
// side) and the client (proxy side).
//
// Every operation first checks that this end is still open: fd numbers are recycled by the
// kernel, so a late send or receive on a closed number could hit some unrelated file.
import { closeFd, fdPoller, POLLIN, POLLOUT, recvPacket, sendPacket, SysError } from "../sys/index.ts";
import { ZDS_MAX_MESSAGE } from "./messages.ts";

export type ConnRecv =
  | { kind: "packet"; data: Uint8Array; fds: number[]; truncated: boolean }
  | { kind: "eof" }
  | { kind: "timeout" }
  /** This end was closed locally (stop, or another error path) while we waited. */
  | { kind: "closed" };

/** A send that could not complete: the peer is gone, the buffer stayed full, or we closed. */
export class ConnSendError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "ConnSendError";
    this.code = code;
  }
}

/** Something that holds an fd and knows whether it closed it (e.g. a Netns). */
export interface FdOwner {
  readonly fd: number;
  readonly closed: boolean;
  readonly label: string;
}

export class PacketConn {
  readonly fd: number;
  #closed = false;

  constructor(fd: number) {
    this.fd = fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Receives one packet (at most `capacity` bytes; longer ones come back flagged truncated),
   * waiting up to `timeoutMs` (forever when undefined). The caller owns every fd returned.
   * A reset connection counts as EOF; other receive errors throw SysError.
   */
  async recv(timeoutMs?: number, capacity = ZDS_MAX_MESSAGE): Promise<ConnRecv> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      if (this.#closed) return { kind: "closed" };
      const r = receive(this.fd, capacity);
      if (r.kind !== "again") return r;
      let remaining: number | undefined;
      if (deadline !== undefined) {
        remaining = deadline - Date.now();
        if (remaining <= 0) return { kind: "timeout" };
      }
      await fdPoller().wait(this.fd, POLLIN, remaining);
    }
  }

  /**
   * Receives one packet only if one is waiting right now: "again" when none is. Used by the
   * idle keepalive check.
   */
  poll(capacity = ZDS_MAX_MESSAGE): ReturnType<typeof recvPacket> | { kind: "closed" } {
    if (this.#closed) return { kind: "closed" };
    return receive(this.fd, capacity);
  }

  /**
   * Resolves when the socket becomes readable (revents), after `timeoutMs` (0), or when
   * `cancelWait()`/`close()` is called (0).
   */
  waitReadable(timeoutMs?: number): Promise<number> {
    if (this.#closed) return Promise.resolve(0);
    return fdPoller().wait(this.fd, POLLIN, timeoutMs);
  }

  cancelWait(): void {
    if (!this.#closed) fdPoller().cancel(this.fd);
  }

  /**
   * Sends one packet, optionally carrying an fd (the kernel duplicates it; the caller keeps its
   * own copy). `pass` may be an fd number or an owner such as a Netns, whose `closed` flag is
   * checked right before each attempt, so a closed (and maybe recycled) fd number is never
   * sent. If the socket buffer is full, waits up to `timeoutMs` for room.
   */
  async send(data: Uint8Array, pass: number | FdOwner = -1, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#closed) throw new ConnSendError("ECLOSED", "connection closed before request sent");
      let passFd = -1;
      if (typeof pass === "number") passFd = pass;
      else if (pass.closed) throw new ConnSendError("ENETNSCLOSED", `${pass.label} was closed before the request was sent`);
      else passFd = pass.fd;
      try {
        sendPacket(this.fd, data, passFd);
        return;
      } catch (e) {
        if (!(e instanceof SysError)) throw e;
        if (e.code !== "EAGAIN") throw new ConnSendError(e.code, e.message);
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new ConnSendError("ETIMEDOUT", `sendmsg: socket buffer still full after ${timeoutMs} ms`);
      await fdPoller().wait(this.fd, POLLOUT, remaining);
    }
  }

  /** Cancels every wait on the fd and closes it. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    fdPoller().cancel(this.fd);
    closeFd(this.fd);
  }
}

/**
 * recvPacket, with ECONNRESET reported as EOF: on a unix socket it only means the peer went away
 * while packets we sent were still unread in its queue (e.g. a proxy killed mid-snapshot).
 */
function receive(fd: number, capacity: number): ReturnType<typeof recvPacket> {
  try {
    return recvPacket(fd, capacity);
  } catch (e) {
    if (e instanceof SysError && e.code === "ECONNRESET") return { kind: "eof" };
    throw e;
  }
}

/** Closes every fd in `fds` (fds that arrived with a packet we reject). */
export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}

/** A sleep that `wake()` ends early (resolving false instead of true). */
export class Sleeper {
  #pending = new Set<{ timer: ReturnType<typeof setTimeout>; resolve: (slept: boolean) => void }>();

  sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.#pending.delete(entry);
          resolve(true);
        }, Math.max(0, ms)),
        resolve,
      };
      this.#pending.add(entry);
    });
  }

  wake(): void {
    for (const entry of this.#pending) {
      clearTimeout(entry.timer);
      entry.resolve(false);
    }
    this.#pending.clear();
  }
}

/** Formats any thrown value for a log line or an error text. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Bytes as "0a 00 …" for debug logs (at most `max` bytes). */
export function hexPreview(bytes: Uint8Array, max = 32): string {
  const shown = Array.from(bytes.subarray(0, max), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return bytes.length > max ? `${shown} … (${bytes.length} bytes)` : shown;
}
