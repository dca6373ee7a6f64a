// fdStream: a TCP fd made by libnshub (src/sys connectTcp) as a node Duplex over
// Bun.connect({ fd }) — what the HBONE client dials over and the server's upstream uses.
// Bytes with backpressure, half-close both ways, resets both ways.
import { afterAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { fdStream } from "../../src/hbone/index.ts";
import { connectTcp, stopFdPoller } from "../../src/sys/index.ts";

afterAll(() => stopFdPoller());

async function server(onConn: (s: net.Socket) => void) {
  const srv = net.createServer({ allowHalfOpen: true }, onConn);
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  return { port, close: () => srv.close() };
}

test("16 MiB echoed byte-exact; our end() is a half-close (the reply still arrives)", async () => {
  const srv = await server((s) => s.pipe(s));
  try {
    const d = fdStream(await connectTcp({ host: "127.0.0.1", port: srv.port, timeoutMs: 2000 }));
    const payload = randomBytes(16 << 20);
    const chunks: Buffer[] = [];
    d.on("data", (c: Buffer) => chunks.push(c));
    const ended = new Promise((r) => d.on("end", r));
    d.end(payload);
    await ended;
    const got = Buffer.concat(chunks);
    expect(got.length).toBe(payload.length);
    expect(createHash("sha256").update(got).digest("hex")).toBe(createHash("sha256").update(payload).digest("hex"));
  } finally {
    srv.close();
  }
});

test("the peer's FIN ends our readable side while we can still write", async () => {
  const got = Promise.withResolvers<string>();
  const srv = await server((s) => {
    s.end("first");
    let t = "";
    s.on("data", (c) => (t += c));
    s.on("end", () => got.resolve(t));
  });
  try {
    const d = fdStream(await connectTcp({ host: "127.0.0.1", port: srv.port, timeoutMs: 2000 }));
    let t = "";
    d.on("data", (c) => (t += c));
    await new Promise((r) => d.on("end", r));
    expect(t).toBe("first");
    d.end("after FIN");
    expect(await got.promise).toBe("after FIN");
  } finally {
    srv.close();
  }
});

test("resetAndDestroy sends an RST; a peer's RST destroys us with an error", async () => {
  const peerErr = Promise.withResolvers<string>();
  const srv = await server((s) => {
    s.on("error", (e) => peerErr.resolve((e as NodeJS.ErrnoException).code!));
    s.once("data", () => setTimeout(() => s.resetAndDestroy(), 20));
  });
  try {
    const d1 = fdStream(await connectTcp({ host: "127.0.0.1", port: srv.port, timeoutMs: 2000 }));
    d1.write("x");
    await Bun.sleep(5);
    const d2err = Promise.withResolvers<string>();
    const d2 = fdStream(await connectTcp({ host: "127.0.0.1", port: srv.port, timeoutMs: 2000 }));
    d2.on("error", (e) => d2err.resolve((e as NodeJS.ErrnoException).code ?? e.message));
    d2.on("data", () => {});
    d2.write("y");
    d1.resetAndDestroy();
    expect(["ECONNRESET", "EPIPE"]).toContain(await peerErr.promise);
    expect(await d2err.promise).toMatch(/ECONNRESET|EPIPE|reset/i);
  } finally {
    srv.close();
  }
});
