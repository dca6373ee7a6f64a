#!/usr/bin/env bun
// Reference figures for the HBONE library on loopback, one process (client, server and app share
// one Bun thread, so these are per-thread figures): single-stream throughput each way, CONNECT
// streams per second on a pooled connection (sequential and 32 in parallel), new mTLS
// connections per second, RSS. The later proxy benchmark compares against these.
//   bun scripts/bench-hbone.ts [--mib 512] [--seconds 3]
import net from "node:net";
import type http2 from "node:http2";
import { dialHbone, HbonePool, openStream, type PoolRequest } from "../src/hbone/index.ts";
import { ID_A, ID_B, makePki } from "../test/helpers/hbone-pki.ts";
import { startFront, startHarness } from "../test/helpers/hbone-harness.ts";

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const MIB = arg("mib", 512);
const SECONDS = arg("seconds", 3);
const CHUNK = Buffer.alloc(256 * 1024, 7);

const pki = await makePki();
// The app: "down <n>" sends n bytes; anything else is counted and dropped; replies "ok" at FIN.
const h = await startHarness(pki.b, {
  app: (s: net.Socket) => {
    s.once("data", (first: Buffer) => {
      const m = /^down (\d+)\n/.exec(first.subarray(0, 32).toString());
      if (!m) {
        s.on("data", () => {});
        s.on("end", () => s.end("ok"));
        return;
      }
      let left = Number(m[1]);
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, CHUNK.length);
          left -= n;
          if (!s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return void s.once("drain", pump);
        }
        s.end();
      };
      pump();
    });
  },
});
const target = { ip: "127.0.0.1", port: h.appPort };
const req: PoolRequest = { sourceIdentity: ID_A, certificate: pki.a, destinationIp: "127.0.0.1", port: h.port, expectedIdentities: [ID_B], target };
const rows: [string, string][] = [];

{
  // First, before the big transfers grow the heap. Idle streams: 2,000 open tunnels (client stream + server stream + upstream socket + app
  // socket each, all in this process), RSS before and after, after a full GC.
  const N = 2000;
  const pool = new HbonePool();
  await (await pool.connect(req)).end(); // warm: first dial and buffers
  Bun.gc(true);
  const before = process.memoryUsage().rss;
  const open = await Promise.all(Array.from({ length: N }, () => pool.connect(req)));
  for (const s of open) s.write("up\n");
  await Bun.sleep(200);
  Bun.gc(true);
  const per = (process.memoryUsage().rss - before) / N;
  rows.push([`memory per idle tunnel, ${N} open (both ends + app socket)`, `${(per / 1024).toFixed(1)} KiB`]);
  for (const s of open) s.close();
  pool.close();
}

async function upload(s: http2.ClientHttp2Stream, bytes: number): Promise<void> {
  const done = new Promise<void>((r) => s.on("end", () => r()));
  s.on("data", () => {});
  s.write("up\n");
  let left = bytes;
  while (left > 0) {
    left -= CHUNK.length;
    if (!s.write(CHUNK)) await new Promise((r) => s.once("drain", r));
  }
  s.end();
  await done;
}

async function download(s: http2.ClientHttp2Stream, bytes: number): Promise<number> {
  let got = 0;
  s.on("data", (d: Buffer) => (got += d.length));
  const done = new Promise<void>((r) => s.on("end", () => r()));
  s.end(`down ${bytes}\n`);
  await done;
  return got;
}

const gbps = (bytes: number, ms: number) => `${((bytes * 8) / ms / 1e6).toFixed(2)} Gb/s (${(bytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s)`;

{
  const conn = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_B] });
  const bytes = MIB * 1048576;
  let t = performance.now();
  await upload(await openStream(conn, target), bytes);
  rows.push([`1 stream upload, ${MIB} MiB`, gbps(bytes, performance.now() - t)]);
  t = performance.now();
  const got = await download(await openStream(conn, target), bytes);
  if (got !== bytes) throw new Error(`download got ${got} of ${bytes}`);
  rows.push([`1 stream download, ${MIB} MiB`, gbps(bytes, performance.now() - t)]);
  conn.session.close();
}

{
  // The whole relay path in one thread: TCP client → front (outbound) → HBONE → server → app.
  const pool = new HbonePool();
  const front = await startFront(pool, () => req);
  const bytes = MIB * 1048576;
  const t = performance.now();
  await new Promise<void>((resolve, reject) => {
    const c = net.connect({ host: "127.0.0.1", port: front.port, allowHalfOpen: true });
    c.on("data", () => {});
    c.on("error", reject);
    c.on("close", () => resolve());
    let left = bytes;
    c.write("up\n");
    const pump = () => {
      while (left > 0) {
        left -= CHUNK.length;
        if (!c.write(CHUNK)) return void c.once("drain", pump);
      }
      c.end();
    };
    pump();
  });
  rows.push([`1 connection TCP → HBONE → TCP upload, ${MIB} MiB`, gbps(bytes, performance.now() - t)]);
  front.close();
  pool.close();
}

async function streamsPerSecond(parallel: number): Promise<string> {
  const pool = new HbonePool();
  let n = 0;
  const end = performance.now() + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (performance.now() < end) {
        const s = await pool.connect(req);
        s.on("data", () => {});
        const done = new Promise((r) => s.on("close", r));
        s.end("x");
        await done;
        n++;
      }
    }),
  );
  const conns = pool.dials;
  pool.close();
  return `${Math.round(n / SECONDS)} /s (${conns} connection${conns === 1 ? "" : "s"})`;
}
rows.push(["CONNECT + 1 byte echo + close, sequential", await streamsPerSecond(1)]);
rows.push(["same, 32 in parallel", await streamsPerSecond(32)]);

{
  let n = 0;
  const end = performance.now() + SECONDS * 1000;
  while (performance.now() < end) {
    const c = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_B] });
    c.session.destroy();
    n++;
  }
  rows.push(["new mTLS + HTTP/2 connections, sequential", `${Math.round(n / SECONDS)} /s`]);
}
rows.push(["RSS after the runs", `${(process.memoryUsage().rss / 1048576).toFixed(0)} MiB`]);

await h.close();
pki.cleanup();
const w = Math.max(...rows.map((r) => r[0].length));
console.log(`HBONE on loopback, Bun ${Bun.version}, one thread (client + server + app), ${new Date().toISOString()}`);
console.log(`${"measurement".padEnd(w)} | result`);
console.log(`${"-".repeat(w)}-|-------`);
for (const [k, v] of rows) console.log(`${k.padEnd(w)} | ${v}`);
process.exit(0);
