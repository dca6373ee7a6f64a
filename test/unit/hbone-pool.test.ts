// The HBONE pool: 1,000 concurrent streams share connections of at most 100 streams each
// (ztunnel's POOL_MAX_STREAMS_PER_CONNECTION), keys separate identities, idle connections
// expire, PING keeps them checked, and a dial can run over a socket the caller made (an fd
// from src/sys, as the proxy will make it inside the source pod's netns).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type http2 from "node:http2";
import { HbonePool, type PoolRequest } from "../../src/hbone/index.ts";
import { connectTcp } from "../../src/sys/index.ts";
import { ID_A, ID_B, ID_C, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { startHarness, type Harness } from "../helpers/hbone-harness.ts";

let pki: Pki;
let h: Harness;
beforeAll(async () => {
  pki = await makePki();
  h = await startHarness(pki.b);
});
afterAll(async () => {
  await h?.close();
  pki?.cleanup();
});

const req = (over: Partial<PoolRequest> = {}): PoolRequest => ({
  sourceIdentity: ID_A,
  certificate: pki.a,
  destinationIp: "127.0.0.1",
  port: h.port,
  expectedIdentities: [ID_B],
  target: { ip: "127.0.0.1", port: h.appPort },
  ...over,
});

async function echo(stream: http2.ClientHttp2Stream, payload: string): Promise<string> {
  let got = "";
  stream.on("data", (d) => (got += d));
  const ended = new Promise((r) => stream.on("end", r));
  stream.end(payload);
  await ended;
  return got;
}

describe("HBONE pool", () => {
  test("1,000 concurrent streams: ≤ 100 per connection, ≥ 10 connections, every echo intact", async () => {
    const pool = new HbonePool();
    try {
      const streams = await Promise.all(Array.from({ length: 1000 }, () => pool.connect(req())));
      const st = pool.stats();
      expect(st.streams).toBe(1000);
      expect(Math.max(...st.perConnection)).toBeLessThanOrEqual(100);
      expect(st.connections).toBeGreaterThanOrEqual(10);
      expect(pool.dials).toBe(st.connections);
      // The server saw the same: no HTTP/2 session carried more than 100 streams.
      expect(h.server.stats().streams).toBe(1000);
      expect(h.server.stats().sessions).toBe(st.connections);
      const answers = await Promise.all(streams.map((s, i) => echo(s, `stream ${i}`)));
      expect(answers.every((a, i) => a === `stream ${i}`)).toBe(true);
      // Nothing left behind: every stream closed on both ends.
      for (let i = 0; i < 200 && (pool.stats().streams > 0 || h.server.stats().streams > 0); i++) await Bun.sleep(10);
      expect(pool.stats().streams).toBe(0);
      expect(h.server.stats().streams).toBe(0);
    } finally {
      pool.close();
    }
  }, 30_000);

  test("a server that allows fewer streams (SETTINGS) gets fewer per connection", async () => {
    const small = await startHarness(pki.b, { maxConcurrentStreams: 30 });
    const pool = new HbonePool();
    try {
      const streams = await Promise.all(Array.from({ length: 100 }, () => pool.connect(req({ port: small.port }))));
      // The first connection learns the limit from SETTINGS only after its dial: the streams
      // that were waiting on it beyond 30 must move to other connections.
      expect(Math.max(...pool.stats().perConnection)).toBeLessThanOrEqual(30);
      expect(small.server.stats().streams).toBe(100);
      const answers = await Promise.all(streams.map((s, i) => echo(s, `s${i}`)));
      expect(answers.every((a, i) => a === `s${i}`)).toBe(true);
      const later = await Promise.all(Array.from({ length: 90 }, () => pool.connect(req({ port: small.port }))));
      expect(Math.max(...pool.stats().perConnection)).toBeLessThanOrEqual(30);
      expect(pool.stats().connections).toBeGreaterThanOrEqual(3);
      await Promise.all(later.map((s) => echo(s, "x")));
    } finally {
      pool.close();
      await small.close();
    }
  });

  test("streams reuse a connection; different identities get different connections", async () => {
    const pool = new HbonePool();
    try {
      for (let i = 0; i < 5; i++) expect(await echo(await pool.connect(req()), "x")).toBe("x");
      expect(pool.dials).toBe(1);
      const other = { sourceIdentity: ID_C, certificate: pki.c };
      expect(await echo(await pool.connect(req(other)), "y")).toBe("y");
      expect(pool.dials).toBe(2);
      expect(HbonePool.key(req())).not.toBe(HbonePool.key(req(other)));
      expect(h.requests.at(-1)?.peerIdentity).toBe(ID_C);
    } finally {
      pool.close();
    }
  });

  test("an idle connection expires; PING keeps the live one checked", async () => {
    const pool = new HbonePool({ idleMs: 150, pingIntervalMs: 30 });
    try {
      const s = await pool.connect(req());
      const session = s.session as http2.ClientHttp2Session;
      let pings = 0;
      const ping = session.ping.bind(session);
      session.ping = ((cb: (err: Error | null, d: number, p: Buffer) => void) => ping((err, d, p) => (pings++, cb(err, d, p)))) as never;
      await Bun.sleep(200); // a stream is open: no expiry
      expect(pool.stats().connections).toBe(1);
      expect(pings).toBeGreaterThanOrEqual(2);
      expect(await echo(s, "z")).toBe("z");
      await Bun.sleep(300);
      expect(pool.stats().connections).toBe(0);
      expect(session.closed || session.destroyed).toBe(true);
    } finally {
      pool.close();
    }
  });

  test("a connection dialled over a socket the caller made (src/sys connectTcp fd)", async () => {
    const pool = new HbonePool();
    const fds: number[] = [];
    try {
      const createSocket = async () => {
        const fd = await connectTcp({ host: "127.0.0.1", port: h.port, timeoutMs: 2000 });
        fds.push(fd);
        return fd;
      };
      const payload = "y".repeat(1 << 20);
      expect(await echo(await pool.connect(req({ createSocket })), payload)).toBe(payload);
      expect(fds.length).toBe(1);
    } finally {
      pool.close();
    }
  });

  test("a refused dial fails every waiting stream and leaves nothing in the pool", async () => {
    const pool = new HbonePool();
    try {
      const rs = await Promise.allSettled(Array.from({ length: 5 }, () => pool.connect(req({ expectedIdentities: [ID_C] }))));
      expect(rs.every((r) => r.status === "rejected" && (r.reason as Error).message.includes(`is not the expected ${ID_C}`))).toBe(true);
      expect(pool.dials).toBe(1);
      expect(pool.stats()).toEqual({ connections: 0, streams: 0, perConnection: [] });
    } finally {
      pool.close();
    }
  });
});
