// The wire behaviour both relays (userspace: src/proxy/relay.ts; splice: splice-*.ts) must
// share, as bun:test cases over loopback: each relay's test file calls relayScenarios with a
// factory for its own listener + relay, then adds the tests only it needs.
import { expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { ConnectionTable, type CloseHow, type ConnectionRecord } from "../../src/proxy/records.ts";
import { client, server, waitFor, writeAll } from "./loopback-tcp.ts";

export interface RelayHarness {
  port: number;
  relays: Array<{ rec: ConnectionRecord }>;
  closed: Array<{ rec: ConnectionRecord; how: CloseHow }>;
  stop(): void;
}

export type MakeRelay = (upstreamPort: number, opts?: { connectDelayMs?: number }) => RelayHarness;

/**
 * What each test proxy keeps: a connection table, the records it closed (with how), and
 * `open()` for an accepted connection's record (outbound, to 127.0.0.1:`upstreamPort`).
 */
export function testTable(upstreamPort: number): { table: ConnectionTable; closed: RelayHarness["closed"]; open(): ConnectionRecord } {
  const table = new ConnectionTable();
  const closed: RelayHarness["closed"] = [];
  table.addObserver({ onConnectionClose: (rec, how) => closed.push({ rec, how }) });
  const pod = { uid: "u1", name: "p", namespace: "ns", serviceAccount: "sa" };
  const upstream = { ip: "127.0.0.1", port: upstreamPort };
  return {
    table,
    closed,
    open: () => table.open({ pod, direction: "outbound", source: { ip: "127.0.0.1", port: 0 }, originalDst: upstream, upstream }),
  };
}

export function relayScenarios(make: MakeRelay, hooks: { whileConnecting?: (h: RelayHarness) => void } = {}): void {
  test("relays both ways, passes FINs as shutdown, counts bytes, ends 'done'", async () => {
    const up = server({ data: (s, d) => s.write(d), end: (s) => s.shutdown() });
    const p = make(up.port);
    const c = await client(p.port);
    c.sock.write("hello through the relay");
    await waitFor(() => c.bytes() === 23);
    expect(p.relays[0]!.rec.state).toBe("open");
    expect(p.relays[0]!.rec.bytesSent).toBe(23); // counted while the connection is open
    c.sock.shutdown();
    // Bun reports a FIN that arrives after our own shutdown() as a clean close (no `end`).
    expect(await c.closed).toBe("clean");
    await waitFor(() => p.closed.length === 1);
    const { rec, how } = p.closed[0]!;
    expect(how).toBe("done");
    expect(rec.bytesSent).toBe(23);
    expect(rec.bytesReceived).toBe(23);
    expect(c.text()).toBe("hello through the relay");
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
    const p = make(up.port);
    const c = await client(p.port);
    const payload = new Uint8Array(3 * 1024 * 1024).fill(7);
    await writeAll(c.sock, payload);
    c.sock.shutdown();
    expect(await c.closed).toBe("clean");
    expect(c.text()).toBe(`got ${payload.byteLength} bytes`);
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("done");
    expect(p.closed[0]!.rec.bytesSent).toBe(payload.byteLength);
    p.stop();
    up.stop();
  });

  test("the server's half-close reaches the client while the client keeps sending", async () => {
    let got = 0;
    const up = server({
      open: (s) => {
        s.write("bye");
        s.shutdown(); // server done sending first
      },
      data: (_s, d) => void (got += d.byteLength),
      end: (s) => s.end(),
    });
    const p = make(up.port);
    const c = await client(p.port);
    await c.ended; // FIN from the server arrived
    expect(c.text()).toBe("bye");
    await waitFor(() => p.relays[0]!.rec.state === "half_closed");
    c.sock.write("still talking");
    await waitFor(() => got === 13);
    c.sock.shutdown();
    await c.closed;
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("done");
    p.stop();
    up.stop();
  });

  test("a reset from the server resets the client", async () => {
    const up = server({ data: (s) => s.terminate() });
    const p = make(up.port);
    const c = await client(p.port);
    c.sock.write("x");
    expect(await c.closed).toBe("ECONNRESET");
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("reset");
    expect(p.closed[0]!.rec.error).toContain("ECONNRESET");
    p.stop();
    up.stop();
  });

  test("a reset from the client resets the server side", async () => {
    let serverClose: string | undefined;
    const up = server({ close: (_s, e) => (serverClose = e ? (e.code ?? "error") : "clean") });
    const p = make(up.port);
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
    const p = make(port, { connectDelayMs: 50 });
    const c = await client(p.port);
    c.sock.write("anyone?");
    expect(await c.closed).toBe("ECONNRESET");
    await waitFor(() => p.closed.length === 1);
    expect(p.closed[0]!.how).toBe("connect_failed");
    expect(p.closed[0]!.rec.error).toBe("ECONNREFUSED");
    p.stop();
  });

  test("data sent before the upstream is connected waits (bounded) and arrives intact", async () => {
    const chunks: Uint8Array[] = [];
    const up = server({ data: (_s, d) => void chunks.push(d), end: (s) => s.shutdown() });
    const p = make(up.port, { connectDelayMs: 300 });
    const c = await client(p.port);
    const payload = new Uint8Array(1024 * 1024).map((_, i) => (i * 31) & 0xff);
    await writeAll(c.sock, payload);
    c.sock.shutdown();
    hooks.whileConnecting?.(p);
    await c.closed;
    const got = Buffer.concat(chunks);
    expect(got.byteLength).toBe(payload.byteLength);
    expect(createHash("sha256").update(got).digest("hex")).toBe(createHash("sha256").update(payload).digest("hex"));
    p.stop();
    up.stop();
  });
}
