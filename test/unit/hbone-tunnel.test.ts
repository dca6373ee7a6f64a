// nshub's HBONE client ↔ nshub's HBONE server on loopback, with real certificates from
// src/identity: a captured TCP connection (a front listener) → pooled CONNECT → server → app.
// Bytes byte-exact, 64 MiB with hashes, half-close both ways, resets both ways, headers, and
// every refusal status.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import http2 from "node:http2";
import net from "node:net";
import { buildForwarded, dialHbone, HboneError, HbonePool, newTraceparent, openStream, type PoolRequest } from "../../src/hbone/index.ts";
import { ID_A, ID_B, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { startFront, startHarness, type Harness } from "../helpers/hbone-harness.ts";

let pki: Pki;
beforeAll(async () => {
  pki = await makePki();
});
afterAll(() => pki?.cleanup());

/** Connects a plain TCP client to `port`, sends `send` (then FIN unless keepOpen), collects until close. */
function tcpExchange(port: number, send: Buffer | string, o: { keepOpen?: boolean } = {}) {
  const c = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  c.on("data", (d: Buffer) => chunks.push(d));
  const done = new Promise<{ data: Buffer; error?: string; ended: boolean }>((resolve) => {
    let ended = false;
    let error: string | undefined;
    c.on("end", () => (ended = true));
    c.on("error", (e) => (error = (e as NodeJS.ErrnoException).code));
    c.on("close", () => resolve({ data: Buffer.concat(chunks), error, ended }));
  });
  c.write(send);
  if (!o.keepOpen) c.end();
  return { socket: c, done };
}

function poolRequest(h: Harness, over: Partial<PoolRequest> = {}): (s: net.Socket) => PoolRequest {
  return (s) => ({
    sourceIdentity: ID_A,
    certificate: pki.a,
    destinationIp: "127.0.0.1",
    port: h.port,
    expectedIdentities: [ID_B],
    target: { ip: "127.0.0.1", port: h.appPort },
    headers: { forwarded: buildForwarded({ ip: s.remoteAddress!, port: s.remotePort! }), baggage: "k8s.namespace.name=ns-a", traceparent: newTraceparent() },
    ...over,
  });
}

describe("HBONE tunnel, loopback", () => {
  test("bytes arrive byte-exact both ways, with ztunnel's headers and the client IP from forwarded", async () => {
    const h = await startHarness(pki.b);
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const payload = randomBytes(300_000);
      const r = await tcpExchange(front.port, payload).done;
      expect(r.error).toBeUndefined();
      expect(r.data.equals(payload)).toBe(true);
      const req = h.requests[0]!;
      expect(req.peerIdentity).toBe(ID_A);
      expect(req.target).toEqual({ ip: "127.0.0.1", port: h.appPort });
      expect(req.headers.forwarded).toMatch(/^for="127\.0\.0\.1:\d+"$/);
      expect(req.forwardedFor?.ip).toBe("127.0.0.1");
      expect(req.headers.baggage).toBe("k8s.namespace.name=ns-a");
      expect(req.headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      expect(front.results[0]).toMatchObject({ outcome: "closed", tcpToStream: 300_000, streamToTcp: 300_000 });
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  });

  test("64 MiB each way through the tunnel: SHA-256 equal on both ends", async () => {
    const SIZE = 64 * 1024 * 1024;
    const down = randomBytes(SIZE);
    const downHash = createHash("sha256").update(down).digest("hex");
    // The app hashes what it received, then sends its 64 MiB and the hash of the upload last.
    const h = await startHarness(pki.b, {
      app: (s) => {
        const hash = createHash("sha256");
        let n = 0;
        s.on("data", (d) => {
          hash.update(d);
          n += d.length;
        });
        s.on("end", () => {
          s.write(down);
          s.end(`\n${n} ${hash.digest("hex")}`);
        });
      },
    });
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const up = randomBytes(SIZE);
      const upHash = createHash("sha256").update(up).digest("hex");
      const r = await tcpExchange(front.port, up).done;
      expect(r.error).toBeUndefined();
      expect(r.data.length).toBeGreaterThan(SIZE);
      expect(createHash("sha256").update(r.data.subarray(0, SIZE)).digest("hex")).toBe(downHash);
      expect(r.data.subarray(SIZE).toString()).toBe(`\n${SIZE} ${upHash}`);
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  }, 60_000);

  test("half-close client → app: the app sees FIN, its reply still comes back", async () => {
    const h = await startHarness(pki.b, {
      app: (s) => {
        let n = 0;
        s.on("data", (d) => (n += d.length));
        s.on("end", () => setTimeout(() => s.end(`app saw FIN after ${n} bytes`), 50));
      },
    });
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const r = await tcpExchange(front.port, "x".repeat(1000)).done;
      expect(r.data.toString()).toBe("app saw FIN after 1000 bytes");
      expect(r.ended).toBe(true);
      expect(r.error).toBeUndefined();
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  });

  test("half-close app → client: the client sees FIN and can still send", async () => {
    const appGot = Promise.withResolvers<string>();
    const h = await startHarness(pki.b, {
      app: (s) => {
        s.end("bye first"); // shutdown(SHUT_WR) with allowHalfOpen
        let got = "";
        s.on("data", (d) => (got += d));
        s.on("end", () => appGot.resolve(got));
      },
    });
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const x = tcpExchange(front.port, "", { keepOpen: true });
      const sawEnd = Promise.withResolvers<void>();
      x.socket.on("end", () => sawEnd.resolve());
      await sawEnd.promise;
      x.socket.end("after your FIN");
      expect(await appGot.promise).toBe("after your FIN");
      const r = await x.done;
      expect(r.data.toString()).toBe("bye first");
      expect(r.error).toBeUndefined();
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  });

  test("a reset by the client travels as RST_STREAM and resets the app's socket", async () => {
    const appError = Promise.withResolvers<string>();
    let appSawFin = false;
    const h = await startHarness(pki.b, {
      app: (s) => {
        s.on("end", () => (appSawFin = true));
        s.on("error", (e) => appError.resolve((e as NodeJS.ErrnoException).code!));
      },
    });
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const x = tcpExchange(front.port, "hello", { keepOpen: true });
      while (h.requests.length === 0) await Bun.sleep(5);
      await Bun.sleep(50);
      x.socket.resetAndDestroy();
      // Bun's node:net reports a received RST as ECONNRESET or EPIPE; a FIN would be no error.
      expect(["ECONNRESET", "EPIPE"]).toContain(await appError.promise);
      expect(appSawFin).toBe(false);
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  });

  test("a reset by the app travels as RST_STREAM and resets the captured connection", async () => {
    const h = await startHarness(pki.b, { app: (s) => s.once("data", () => s.resetAndDestroy()) });
    const pool = new HbonePool();
    const front = await startFront(pool, poolRequest(h));
    try {
      const r = await tcpExchange(front.port, "hello", { keepOpen: true }).done;
      expect(["ECONNRESET", "EPIPE"]).toContain(r.error!);
      expect(r.ended).toBe(false);
      expect(front.results[0]).toMatchObject({ outcome: "reset_by_stream", error: "RST_STREAM 8" });
    } finally {
      front.close();
      pool.close();
      await h.close();
    }
  });
});

describe("HBONE refusals (ztunnel's statuses) become errors and reset the captured connection", () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness(pki.b, {
      isLocalTarget: (t) => t.ip === "127.0.0.1",
      authorize: (req) => (req.target.port === 1 ? { status: 401, reason: "deny rule" } : req.target.port === 2 ? { status: 403 } : "allow"),
    });
  });
  afterAll(() => h?.close());

  const connect = async (ip: string, port: number) => {
    const conn = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_B] });
    try {
      return await openStream(conn, { ip, port }).then(
        () => "200",
        (e: HboneError) => e,
      );
    } finally {
      conn.session.close();
    }
  };

  test("a target that is not this workload → 400", async () => {
    const e = (await connect("127.0.0.2", h.appPort)) as HboneError;
    expect(e).toBeInstanceOf(HboneError);
    expect(e.kind).toBe("status");
    expect(e.status).toBe(400);
    expect(h.refusals.at(-1)?.reason).toBe(`target 127.0.0.2:${h.appPort} is not this workload (connection reached 127.0.0.1)`);
  });

  test("the policy hook denies → 401 or 403", async () => {
    expect(((await connect("127.0.0.1", 1)) as HboneError).status).toBe(401);
    expect(h.refusals.at(-1)).toMatchObject({ status: 401, reason: "denied: deny rule", peerIdentity: ID_A });
    expect(((await connect("127.0.0.1", 2)) as HboneError).status).toBe(403);
  });

  test("the app refusing the connection → 503", async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const port = (closed.address() as net.AddressInfo).port;
    closed.close();
    const e = (await connect("127.0.0.1", port)) as HboneError;
    expect(e.status).toBe(503);
    expect(e.message).toBe(`CONNECT 127.0.0.1:${port} answered 503`);
    expect(h.refusals.at(-1)?.reason).toContain("ECONNREFUSED");
  });

  test("a request that is not CONNECT, or a hostname :authority → 400", async () => {
    const conn = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_B] });
    try {
      const status = (headers: http2.OutgoingHttpHeaders) =>
        new Promise<number>((resolve, reject) => {
          const s = conn.session.request(headers);
          s.on("response", (r) => resolve(Number(r[":status"])));
          s.on("error", reject);
          s.end();
        });
      expect(await status({ ":method": "GET", ":path": "/", ":authority": `127.0.0.1:${h.appPort}` })).toBe(400);
      expect(h.refusals.at(-1)?.reason).toBe("method GET is not CONNECT");
      expect(await status({ ":method": "CONNECT", ":authority": "example.com:80" })).toBe(400);
      expect(h.refusals.at(-1)?.reason).toContain("is not an IP address");
    } finally {
      conn.session.close();
    }
  });

  test("a server that never answers → timeout error, the stream cancelled", async () => {
    const slow = await startHarness(pki.b, { connectUpstream: () => new Promise(() => {}) });
    const conn = await dialHbone({ address: "127.0.0.1", port: slow.port, certificate: pki.a, expectedIdentities: [ID_B] });
    try {
      const e = (await openStream(conn, { ip: "127.0.0.1", port: 9 }, {}, 200).catch((x) => x)) as HboneError;
      expect(e.kind).toBe("timeout");
      expect(e.message).toBe("CONNECT 127.0.0.1:9: no response within 200 ms");
    } finally {
      conn.session.close();
      await slow.close();
    }
  });

  test("through the front: a refused CONNECT resets the captured connection, no byte passes", async () => {
    const pool = new HbonePool();
    const front = await startFront(pool, (s) => ({ ...poolRequest(h)(s), target: { ip: "127.0.0.1", port: 1 } }));
    try {
      const r = await tcpExchange(front.port, "secret", { keepOpen: true }).done;
      expect(["ECONNRESET", "EPIPE"]).toContain(r.error!);
      expect(r.data.length).toBe(0);
      expect((front.results[0] as HboneError).status).toBe(401);
    } finally {
      front.close();
      pool.close();
    }
  });
});
