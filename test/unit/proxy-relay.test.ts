// The userspace relay (src/proxy/relay.ts) on loopback, no namespaces: a listener whose accepted
// sockets are relayed to an upstream server through a socket made by src/sys connectTcp and
// adopted, as in the proxy. The scenarios both relays share (data both ways, half-close, resets,
// connect failure, early data) come from test/helpers/relay-scenarios.ts; here also
// backpressure with bounded queues and the socket options.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as sys from "../../src/sys/index.ts";
import { ConnectionTable, type CloseHow, type ConnectionRecord } from "../../src/proxy/records.ts";
import { clientHandlers, Relay, type RelaySocket } from "../../src/proxy/relay.ts";
import { setKeepalive } from "../../src/proxy/handlers.ts";
import { blockWriter, client, pausedSink, server, waitFor } from "../helpers/loopback-tcp.ts";
import { relayScenarios, testTable } from "../helpers/relay-scenarios.ts";

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
  const { table, closed, open } = testTable(upstreamPort);
  const relays: Relay[] = [];
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: clientHandlers((sock: RelaySocket) => {
      const rec = open();
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
  relayScenarios(relayProxy, {
    // While the upstream is still connecting, the relay holds at most ~one queue's worth.
    whileConnecting: (h) => expect((h.relays[0] as Relay).upstream.queued).toBeLessThanOrEqual(MAX_Q + 512 * 1024),
  });

  test("backpressure: a server that stops reading pauses the client; queues stay bounded; nothing is lost", async () => {
    const up = pausedSink();
    const p = relayProxy(up.port);
    const c = await client(p.port);
    const total = 64 * 1024 * 1024;
    let maxQueued = 0;
    const sampler = setInterval(() => {
      const r = p.relays[0];
      if (r) maxQueued = Math.max(maxQueued, r.upstream.queued);
    }, 1);
    // Write until the kernel buffers and the relay's queue are full: the writer stalls.
    const writer = blockWriter(c.sock, total);
    // Give it time to fill everything, then check it stalled with the relay queue bounded.
    await Bun.sleep(500);
    expect(writer.written()).toBeLessThan(total);
    expect(p.relays[0]!.client.paused).toBe(true);
    expect(p.relays[0]!.upstream.queued).toBeLessThanOrEqual(MAX_Q + 1024 * 1024);
    up.resume();
    await writer.done;
    await c.closed;
    clearInterval(sampler);
    expect(up.received()).toBe(total);
    expect(up.sha256()).toBe(writer.sha256());
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
