// A connected TCP socket that someone else created (libnshub: inside a pod's netns, SO_MARK set
// before connect) as a node Duplex, so node:tls / node:http2 can run over it. On Bun 1.4.5
// `new net.Socket({ fd })` cannot read a TCP fd (the dial hangs in the TLS handshake, measured by
// test/netns/hbone-seam.test.ts), while `Bun.connect({ fd })` adopts it fully; this wraps the
// latter. Bun sockets do not buffer (write() returns what the kernel took), so the tail waits
// for `drain`; end() becomes shutdown(SHUT_WR) (Bun's own end() closes both ways) and
// destroy(err) an RST (terminate()).
import { Duplex } from "node:stream";

export interface BunSocket {
  write(data: Uint8Array): number;
  shutdown(): void;
  end(): void;
  terminate(): void;
  pause(): void;
  resume(): void;
  readonly remoteAddress?: string;
}

/** The fd must be connected (see src/sys finishConnect): Bun does not wait for a pending connect. */
export function fdStream(fd: number): Duplex & { resetAndDestroy(): void } {
  const { stream, handlers } = bunSocketStream();
  Bun.connect({ fd, allowHalfOpen: true, socket: handlers } as never);
  return stream;
}

/** Bun socket handlers (open/data/drain/end/error/close) and the Duplex they feed. */
export interface BunSocketStream {
  stream: Duplex & { resetAndDestroy(): void };
  handlers: {
    open(s: BunSocket): void;
    data(s: BunSocket, buf: Uint8Array): void;
    drain(s?: BunSocket): void;
    end(s?: BunSocket): void;
    error(s: BunSocket, err: Error): void;
    close(s: BunSocket, err?: Error): void;
  };
}

/**
 * The Duplex over a Bun socket, as the handlers to give Bun (`Bun.connect`/`Bun.listen`), or to
 * call from existing handlers for a socket that is already open (call `open` first).
 */
export function bunSocketStream(): BunSocketStream {
  let sock: BunSocket | undefined;
  let pending: Uint8Array | undefined;
  let pendingCb: ((e?: Error | null) => void) | undefined;
  let ended = false;
  const flush = (): boolean => {
    while (pending && sock) {
      const n = sock.write(pending);
      if (n < 0) {
        const cb = pendingCb;
        pending = pendingCb = undefined;
        cb?.(Object.assign(new Error("write after close"), { code: "EPIPE" }));
        return false;
      }
      if (n < pending.length) {
        pending = pending.subarray(n);
        return false;
      }
      const cb = pendingCb;
      pending = pendingCb = undefined;
      cb?.();
    }
    return true;
  };
  const d = new Duplex({
    allowHalfOpen: true,
    write(chunk: Uint8Array, _enc, cb) {
      pending = chunk;
      pendingCb = cb;
      if (sock) flush();
    },
    read() {
      sock?.resume();
    },
    final(cb) {
      ended = true;
      sock?.shutdown();
      cb();
    },
    destroy(err, cb) {
      if (sock) {
        if (err || resetAsked) sock.terminate();
        else sock.end();
      }
      cb(err);
    },
  }) as Duplex & { resetAndDestroy(): void };
  // As net.Socket's: an RST to the peer, no 'error' here (the caller chose it).
  let resetAsked = false;
  d.resetAndDestroy = () => {
    resetAsked = true;
    d.destroy();
  };
  const handlers = {
    open(s: BunSocket) {
      sock = s;
      flush();
      if (ended) s.shutdown();
    },
    data(s: BunSocket, buf: Uint8Array) {
      if (!d.push(buf)) s.pause();
    },
    drain() {
      flush();
    },
    end() {
      d.push(null);
    },
    error(_s: BunSocket, err: Error) {
      d.destroy(err);
    },
    close(_s: BunSocket, err?: Error) {
      // Bun reports a reset as a close with an error, a clean close after both FINs as none —
      // and sometimes a peer's RST as a clean close too (seen on 1.4.5: the app reset, Bun said
      // close, the next write failed EPIPE). A close before our own FIN (or with bytes still to
      // write) cannot be the clean end of both directions: it is passed on as a reset, not as an
      // end of stream (which would reach the other side as a FIN first).
      if (err) d.destroy(err);
      else if (!ended || pending) d.destroy(Object.assign(new Error("the peer closed the connection before our side finished"), { code: "ECONNRESET" }));
      else d.push(null);
    },
  };
  return { stream: d, handlers };
}
