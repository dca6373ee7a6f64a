// Loopback TCP peers for the relay unit tests (userspace and splice): a Bun server with
// scripted behaviour, a Bun client that records what it receives, a writer that honours
// backpressure, and small waiting helpers.
import { createHash } from "node:crypto";

export interface Server {
  port: number;
  sockets: any[];
  stop(): void;
}

/** A TCP server; `behaviour` gets each accepted socket's events. */
export function server(behaviour: {
  open?(s: any): void;
  data?(s: any, d: Uint8Array): void;
  end?(s: any): void;
  close?(s: any, e?: any): void;
}): Server {
  const sockets: any[] = [];
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      binaryType: "uint8array",
      open(s: any) {
        sockets.push(s);
        behaviour.open?.(s);
      },
      data(s: any, d: Uint8Array) {
        behaviour.data?.(s, d);
      },
      end(s: any) {
        behaviour.end?.(s);
      },
      close(s: any, e?: any) {
        behaviour.close?.(s, e);
      },
      error() {},
    },
  } as any);
  return { port: l.port, sockets, stop: () => l.stop(true) };
}

export interface Client {
  sock: any;
  received: Uint8Array[];
  ended: Promise<void>;
  closed: Promise<string>;
  bytes(): number;
  text(): string;
}

export async function client(port: number, onDrain?: (s: any) => void): Promise<Client> {
  const received: Uint8Array[] = [];
  let endResolve!: () => void;
  let closeResolve!: (v: string) => void;
  const ended = new Promise<void>((r) => (endResolve = r));
  const closed = new Promise<string>((r) => (closeResolve = r));
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: {
      binaryType: "uint8array",
      data(_s: any, d: Uint8Array) {
        received.push(d);
      },
      end() {
        endResolve();
      },
      close(_s: any, e?: any) {
        closeResolve(e ? (e.code ?? "error") : "clean");
      },
      drain(s: any) {
        onDrain?.(s);
      },
      error() {},
    },
  } as any);
  return {
    sock,
    received,
    ended,
    closed,
    bytes: () => received.reduce((n, b) => n + b.byteLength, 0),
    text: () => Buffer.concat(received).toString(),
  };
}

/** Writes all of `data` honouring backpressure (write() drops what it does not accept). */
export async function writeAll(sock: any, data: Uint8Array, chunk = 256 * 1024): Promise<void> {
  let off = 0;
  while (off < data.byteLength) {
    const n = sock.write(data.subarray(off, Math.min(off + chunk, data.byteLength)));
    if (n < 0) throw new Error("socket closed while writing");
    off += n;
    if (n === 0) await Bun.sleep(1);
  }
}

export const waitFor = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await Bun.sleep(5);
  }
};


/**
 * Writes `total` bytes of numbered 1 MiB blocks to `sock` honouring backpressure, then shuts
 * its write side. `written()` tells how far it got (it stalls when nobody reads); `sha256` is
 * the digest of everything it wrote, once `done` has resolved.
 */
export function blockWriter(sock: any, total: number): { done: Promise<void>; written(): number; sha256(): string } {
  const block = new Uint8Array(1024 * 1024);
  const hash = createHash("sha256");
  let off = 0;
  const done = (async () => {
    for (let i = 0; off < total; i++) {
      block.fill(i & 0xff);
      block[0] = i >> 8;
      hash.update(block);
      let boff = 0;
      while (boff < block.byteLength) {
        const n = sock.write(block.subarray(boff));
        if (n < 0) throw new Error("closed");
        boff += n;
        off += n;
        if (n === 0) await Bun.sleep(2);
      }
    }
    sock.shutdown();
  })();
  return { done, written: () => off, sha256: () => hash.digest("hex") };
}

/**
 * A server that accepts one connection but does not read it until `resume()`: the backpressure
 * tests' upstream. It then counts and hashes what arrives and shuts its side at the client's EOF.
 */
export function pausedSink(): Server & { resume(): void; received(): number; sha256(): string } {
  const hash = createHash("sha256");
  let got = 0;
  let sock: any;
  const s = server({
    open: (x) => {
      sock = x;
      x.pause();
    },
    data: (_x, d) => {
      got += d.byteLength;
      hash.update(d);
    },
    end: (x) => x.shutdown(),
  });
  return { ...s, resume: () => sock.resume(), received: () => got, sha256: () => hash.digest("hex") };
}
