// The relay (src/proxy/relay.ts) on loopback, no namespaces: a listener whose accepted sockets
// are relayed to an upstream server through a socket made by src/sys connectTcp and adopted, as
// in the proxy. Checks data both ways, half-close, resets, connect failure, backpressure
// (bounded queues) and early data.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import * as sys from "../../src/sys/index.ts";
import { ConnectionTable, type CloseHow, type ConnectionRecord } from "../../src/proxy/records.ts";
import { clientHandlers, Relay, type RelaySocket } from "../../src/proxy/relay.ts";
import { setKeepalive } from "../../src/proxy/handlers.ts";
import { client, server, waitFor, writeAll } from "../helpers/loopback-tcp.ts";

const MAX_Q = 64 * 1024;

interface Proxy {
  port: number;
  table: ConnectionTable;
  relays: Relay[];
  closed: Array<{ rec: ConnectionRecord; how: CloseHow }>;
  stop(): void;
}

/** The relay listener: every accepted socket is relayed to 127.0.0.1:`upstreamPort`. */
function relayProxy(upstreamPort: number, opts: { connectDelayMs?: number } = {}): Proxy {
  const table = new ConnectionTable();
  const relays: Relay[] = [];
  const closed: Proxy["closed"] = [];
  table.addObserver({ onConnectionClose: (rec, how) => closed.push({ rec, how }) });
  const pod = { uid: "u1", name: "p", namespace: "ns", serviceAccount: "sa" };
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: clientHandlers((sock: RelaySocket) => {
      const rec = table.open({
        pod,
        direction: "outbound",
        source: { ip: "127.0.0.1", port: 0 },
        originalDst: { ip: "127.0.0.1", port: upstreamPort },
        upstream: { ip: "127.0.0.1", port: upstreamPort },
      });
      const relay = new Relay(rec, sock, table, { maxQueuedBytes: MAX_Q });
      relays.push(relay);
      const go = () =>
        sys.connectTcp({ host: "127.0.0.1", port: upstreamPort, mark: 0, timeoutMs: 2000 }).then(
          (fd) => {
            // Keepalive as the proxy sets it (handlers.ts): on the upstream fd before Bun adopts it.
            setKeepalive(fd, 60);
            return relay.adoptUpstream(fd);
          },
          (e) => relay.connectFailed((e as sys.SysError).code ?? String(e)),
        );
      if (opts.connectDelayMs) setTimeout(go, opts.connectDelayMs);
      else void go();
    }),
  } as any);
  // …and on the listener, whose accepted sockets inherit it.
  setKeepalive((l as unknown as { fd: number }).fd, 60);
  return { port: l.port, table, relays, closed, stop: () => l.stop(true) };
}

beforeAll(() => {
  sys.homeNetns();
});
afterAll(() => sys.stopFdPoller());

describe("relay", () => {
  test("relays both ways, passes FINs as shutdown, counts bytes, ends 'done'", async () => {
    const up = server({
      data: (s, d) => s.write(d), // echo
      end: (s) => s.shutdown(),
    });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    c.sock.write("hello through the relay");
    await waitFor(() => c.bytes() === 23);
    c.sock.shutdown();
    // Bun reports a FIN that arrives after our own shutdown() as a clean close (no `end`).
    expect(await c.closed).toBe("clean");
    await waitFor(() => p.closed.length === 1);
    const { rec, how } = p.closed[0]!;
    expect(how).toBe("done");
    expect(rec.bytesSent).toBe(23);
    expect(rec.bytesReceived).toBe(23);
    expect(c.text()).toBe("hello through the relay");
    expect(p.table.size).toBe(0);
    p.stop();
    up.stop();
  });

  test("half-close: the client shuts down its write side, the server still replies after reading everything", async () => {
    let got = 0;
    const up = server({
      data: (_s, d) => void (got += d.byteLength),
      // Reply only after the client's FIN: the reply must still reach the client.
      end: (s) => {
        s.write(`got ${got} bytes`);
        s.shutdown();
      },
    });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    const payload = new Uint8Array(3 * 1024 * 1024).fill(7);
    await writeAll(c.sock, payload);
    c.sock.shutdown();
    expect(await c.closed).toBe("clean");
    expect(c.text()).toBe(`got ${payload.byteLength} bytes`);
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("done");
    p.stop();
    up.stop();
  });

  test("the server's half-close reaches the client while the client keeps sending", async () => {
    let got = 0;
    let upSock: any;
    const up = server({
      open: (s) => {
        upSock = s;
        s.write("bye");
        s.shutdown(); // server done sending first
      },
      data: (_s, d) => void (got += d.byteLength),
      end: (s) => s.end(),
    });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    await c.ended; // FIN from the server arrived
    expect(c.text()).toBe("bye");
    c.sock.write("still talking");
    await waitFor(() => got === 13);
    c.sock.shutdown();
    await c.closed;
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("done");
    expect(upSock).toBeDefined();
    p.stop();
    up.stop();
  });

  test("a reset from the server resets the client", async () => {
    const up = server({ data: (s) => s.terminate() });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    c.sock.write("x");
    expect(await c.closed).toBe("ECONNRESET");
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("reset");
    p.stop();
    up.stop();
  });

  test("a reset from the client resets the server side", async () => {
    let serverClose: string | undefined;
    const up = server({ close: (_s, e) => (serverClose = e ? (e.code ?? "error") : "clean") });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    c.sock.write("x");
    await waitFor(() => p.relays[0]?.rec.state === "open");
    c.sock.terminate();
    await waitFor(() => serverClose !== undefined);
    expect(serverClose).not.toBe("clean");
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("reset");
    p.stop();
    up.stop();
  });

  test("an upstream connect failure resets the client promptly (connect_failed)", async () => {
    const dead = server({});
    const port = dead.port;
    dead.stop();
    // The delay lets the Bun client finish its own connect first: Bun misreports an RST that
    // arrives before it processed the connect as a FIN (the kernel does send the RST).
    const p = relayProxy(port, { connectDelayMs: 50 });
    const c = await client(p.port);
    c.sock.write("anyone?");
    expect(await c.closed).toBe("ECONNRESET");
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("connect_failed");
    expect(p.closed[0]!.rec.error).toBe("ECONNREFUSED");
    p.stop();
  });

  test("data sent before the upstream is connected is queued (bounded) and arrives intact", async () => {
    const chunks: Uint8Array[] = [];
    const up = server({ data: (_s, d) => void chunks.push(d), end: (s) => s.shutdown() });
    const p = relayProxy(up.port, { connectDelayMs: 300 });
    const c = await client(p.port);
    const payload = new Uint8Array(1024 * 1024).map((_, i) => (i * 31) & 0xff);
    await writeAll(c.sock, payload);
    c.sock.shutdown();
    // While the upstream is still connecting, the relay holds at most ~one queue's worth.
    const r = p.relays[0]!;
    expect(r.upstream.queued).toBeLessThanOrEqual(MAX_Q + 512 * 1024);
    await c.closed;
    const got = Buffer.concat(chunks);
    expect(got.byteLength).toBe(payload.byteLength);
    expect(createHash("sha256").update(got).digest("hex")).toBe(createHash("sha256").update(payload).digest("hex"));
    p.stop();
    up.stop();
  });

  test("backpressure: a server that stops reading pauses the client; queues stay bounded; nothing is lost", async () => {
    const hash = createHash("sha256");
    let got = 0;
    let upSock: any;
    const up = server({
      open: (s) => {
        upSock = s;
        s.pause(); // do not read at all for now
      },
      data: (_s, d) => {
        got += d.byteLength;
        hash.update(d);
      },
      end: (s) => s.shutdown(),
    });
    const p = relayProxy(up.port);
    const c = await client(p.port);
    const total = 64 * 1024 * 1024;
    const block = new Uint8Array(1024 * 1024);
    const sent = createHash("sha256");
    let maxQueued = 0;
    const sampler = setInterval(() => {
      const r = p.relays[0];
      if (r) maxQueued = Math.max(maxQueued, r.upstream.queued);
    }, 1);
    // Write until the kernel buffers and the relay's queue are full: the writer stalls.
    let off = 0;
    let stalledAt = -1;
    const writer = (async () => {
      for (let i = 0; off < total; i++) {
        block.fill(i & 0xff);
        block[0] = i >> 8;
        sent.update(block);
        let boff = 0;
        while (boff < block.byteLength) {
          const n = c.sock.write(block.subarray(boff));
          if (n < 0) throw new Error("closed");
          boff += n;
          off += n;
          if (n === 0) await Bun.sleep(2);
        }
      }
      c.sock.shutdown();
    })();
    // Give it time to fill everything, then check it stalled with the relay queue bounded.
    await Bun.sleep(500);
    stalledAt = off;
    expect(stalledAt).toBeLessThan(total);
    expect(p.relays[0]!.client.paused).toBe(true);
    expect(p.relays[0]!.upstream.queued).toBeLessThanOrEqual(MAX_Q + 1024 * 1024);
    upSock.resume();
    await writer;
    await c.closed;
    clearInterval(sampler);
    expect(got).toBe(total);
    expect(hash.digest("hex")).toBe(sent.digest("hex"));
    expect(maxQueued).toBeLessThanOrEqual(MAX_Q + 1024 * 1024);
    p.stop();
    up.stop();
  }, 30_000);

  test("both relay sockets have TCP_NODELAY (Bun's default) and keepalive", async () => {
    const up = server({});
    const p = relayProxy(up.port);
    const c = await client(p.port);
    await waitFor(() => p.relays[0]?.upstream.sock !== undefined);
    const r = p.relays[0]!;
    for (const s of [r.client.sock!, r.upstream.sock!]) {
      expect(sys.getSockOpt(s.fd!, sys.IPPROTO_TCP, sys.TCP_NODELAY)).toBe(1);
      expect(sys.getSockOpt(s.fd!, sys.SOL_SOCKET, sys.SO_KEEPALIVE)).toBe(1);
    }
    c.sock.terminate();
    await waitFor(() => p.closed.length === 1);
    p.stop();
    up.stop();
  });
});
