// Interoperability with an HBONE peer that is not nshub: Python's h2 + ssl from Debian
// (/usr/bin/python3, python3-h2), with certificates from the same root. The Python client dials
// nshub's server and gets its bytes through; the Python server accepts nshub's CONNECT and
// reports the :authority and headers it received.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildForwarded, dialHbone, HboneError, newTraceparent, openStream } from "../../src/hbone/index.ts";
import { ID_A, ID_B, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { startHarness, type Harness } from "../helpers/hbone-harness.ts";

const PY = "/usr/bin/python3";
const FIX = join(import.meta.dir, "..", "fixtures");

let pki: Pki;
const files: Record<string, string> = {};
beforeAll(async () => {
  pki = await makePki();
  for (const [name, c] of Object.entries({ a: pki.a, b: pki.b, c: pki.c })) {
    for (const [part, pem] of Object.entries({ cert: c.presented, key: c.keyPem, ca: c.roots })) {
      const f = join(pki.dir, `${name}-${part}.pem`);
      writeFileSync(f, pem, { mode: 0o600 });
      files[`${name}-${part}`] = f;
    }
  }
});
afterAll(() => pki?.cleanup());

const payloadOf = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => i % 251));

describe("a Python h2 HBONE client → nshub's server", () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness(pki.b);
  });
  afterAll(() => h?.close());

  const runClient = async (args: string[]) => {
    const p = Bun.spawn([PY, join(FIX, "hbone-client.py"), "--connect", `127.0.0.1:${h.port}`, "--cert", files["a-cert"]!, "--key", files["a-key"]!, "--ca", files["a-ca"]!, ...args], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    if (!out.trim()) throw new Error(`python client exited ${code}: ${err}`);
    return JSON.parse(out.trim().split("\n").at(-1)!);
  };

  test("1 MiB echoed byte-exact through the tunnel, headers and identities seen by nshub", async () => {
    const size = 1 << 20;
    const r = await runClient(["--expect", ID_B, "--authority", `127.0.0.1:${h.appPort}`, "--size", String(size), "--forwarded", 'for="10.9.8.7:5555"', "--baggage", "k8s.namespace.name=py", "--traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"]);
    expect(r).toMatchObject({ tls: "TLSv1.3", alpn: "h2", peer: [ID_B], status: 200, received: size, sent: size });
    expect(r.sha256).toBe(createHash("sha256").update(payloadOf(size)).digest("hex"));
    expect(r.sha256).toBe(r.sent_sha256);
    const req = h.requests.at(-1)!;
    expect(req.peerIdentity).toBe(ID_A);
    expect(req.forwardedFor).toEqual({ ip: "10.9.8.7", port: 5555 });
    expect(req.headers).toEqual({ forwarded: 'for="10.9.8.7:5555"', baggage: "k8s.namespace.name=py", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00" });
  });

  test("a target that is not the workload gets ztunnel's 400", async () => {
    const r = await runClient(["--expect", ID_B, "--authority", `10.1.2.3:${h.appPort}`]);
    expect(r.status).toBe(400);
    expect(r.received).toBe(0);
  });

  test("the Python client's own identity check bites too (it expects C, nshub presents B)", async () => {
    const r = await runClient(["--expect", "spiffe://cluster.local/ns/x/sa/c", "--authority", `127.0.0.1:${h.appPort}`]);
    expect(r.error).toBe("unexpected server identity");
  });
});

describe("nshub's client → a Python h2 HBONE server", () => {
  const startPy = async (authority: string, connections = 1) => {
    const p = Bun.spawn([PY, join(FIX, "hbone-server.py"), "--cert", files["b-cert"]!, "--key", files["b-key"]!, "--ca", files["b-ca"]!, "--authority", authority, "--connections", String(connections)], { stdout: "pipe", stderr: "pipe" });
    const reader = p.stdout.getReader();
    let buf = "";
    const lines: unknown[] = [];
    const nextLine = async () => {
      while (!buf.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`python server ended: ${await new Response(p.stderr).text()}`);
        buf += new TextDecoder().decode(value);
      }
      const i = buf.indexOf("\n");
      const line = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      lines.push(line);
      return line;
    };
    const { port } = (await nextLine()) as { port: number };
    return { port, nextLine, kill: () => p.kill() };
  };

  test("CONNECT with :authority and ztunnel's headers (no :scheme/:path); 1 MiB echoed byte-exact", async () => {
    const py = await startPy("10.0.0.2:8080");
    try {
      const conn = await dialHbone({ address: "127.0.0.1", port: py.port, certificate: pki.a, expectedIdentities: [ID_B] });
      const traceparent = newTraceparent();
      const forwarded = buildForwarded({ ip: "10.0.0.1", port: 34567 });
      const s = await openStream(conn, { ip: "10.0.0.2", port: 8080 }, { forwarded, baggage: "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns-a", traceparent });
      const payload = payloadOf(1 << 20);
      const chunks: Buffer[] = [];
      s.on("data", (d: Buffer) => chunks.push(d));
      const ended = new Promise((r) => s.on("end", r));
      s.end(payload);
      await ended;
      expect(Buffer.concat(chunks).equals(payload)).toBe(true);
      const seen = await py.nextLine();
      expect(seen).toEqual({
        peer: ID_A,
        method: "CONNECT",
        authority: "10.0.0.2:8080",
        scheme: null,
        path: null,
        forwarded: 'for="10.0.0.1:34567"',
        baggage: "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns-a",
        traceparent,
        tls: "TLSv1.3",
        alpn: "h2",
        echoed: 1 << 20,
      });
      conn.session.close();
    } finally {
      py.kill();
    }
  });

  test("the Python server's 400 becomes an HboneError with the status", async () => {
    const py = await startPy("10.0.0.2:8080");
    try {
      const conn = await dialHbone({ address: "127.0.0.1", port: py.port, certificate: pki.a, expectedIdentities: [ID_B] });
      const e = (await openStream(conn, { ip: "10.0.0.9", port: 8080 }).catch((x) => x)) as HboneError;
      expect(e).toBeInstanceOf(HboneError);
      expect(e.status).toBe(400);
      expect(await py.nextLine()).toMatchObject({ authority: "10.0.0.9:8080", status: 400 });
      conn.session.close();
    } finally {
      py.kill();
    }
  });

  test("nshub refuses the Python server when it is not the expected identity", async () => {
    const py = await startPy("10.0.0.2:8080");
    try {
      const e = (await dialHbone({ address: "127.0.0.1", port: py.port, certificate: pki.a, expectedIdentities: ["spiffe://cluster.local/ns/x/sa/other"] }).catch((x) => x)) as HboneError;
      expect(e.kind).toBe("identity");
      expect(e.message).toEndWith(`server identity ${ID_B} is not the expected spiffe://cluster.local/ns/x/sa/other`);
    } finally {
      py.kill();
    }
  });
});
