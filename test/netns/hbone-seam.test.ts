// The seam between src/hbone and the proxy, measured on real namespaces: the HBONE server runs
// on the test's (host) thread but serves a listening socket that libnshub created inside pod B's
// netns; the client dials from pod A's netns over a marked socket libnshub created there; the
// upstream is a marked connect inside pod B. Plus what does not work in Bun 1.4.5, so a change
// in Bun shows up here.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import { createHboneServer, dialHbone, fdStream, HboneError, openStream, type HboneServer, type InboundRequest } from "../../src/hbone/index.ts";
import * as sys from "../../src/sys/index.ts";
import { netnsDescribe } from "../helpers/root.ts";
import { createSim, type NetSim, type Pod } from "../helpers/netsim.ts";
import { ID_A, ID_B, makePki, type Pki } from "../helpers/hbone-pki.ts";

const MARK = 0x539;
const APP_PORT = 8080;

netnsDescribe("HBONE across pod namespaces, served from the host thread", () => {
  let sim: NetSim;
  let a: Pod;
  let b: Pod;
  let nsA: sys.Netns;
  let nsB: sys.Netns;
  let pki: Pki;
  let server: HboneServer;
  const requests: InboundRequest[] = [];
  let listenFd = -1;

  beforeAll(async () => {
    pki = await makePki();
    sim = await createSim();
    a = await sim.addPod({ name: "hbone-a" });
    b = await sim.addPod({ name: "hbone-b" });
    nsA = sys.Netns.open(a.netnsPath);
    nsB = sys.Netns.open(b.netnsPath);
    b.spawn(["socat", `TCP-LISTEN:${APP_PORT},reuseaddr,fork`, "EXEC:cat"]);
    await b.waitForTcpPort(APP_PORT);
    server = createHboneServer({
      certificate: pki.b,
      trustDomain: "cluster.local",
      isLocalTarget: (t, local) => t.ip === b.ip && local === b.ip,
      // The upstream as the proxy makes it: inside pod B, marked before connect, then adopted.
      connectUpstream: async (req) => {
        requests.push(req);
        const fd = await sys.connectTcp({ netns: nsB, host: req.target.ip, port: req.target.port, mark: MARK, timeoutMs: 3000 });
        return fdStream(fd);
      },
    });
    // The listener: made by libnshub inside B's netns, served by node:http2 on this thread.
    listenFd = sys.withNetns(nsB, () => sys.tcpListen({ address: "0.0.0.0", port: 15008, backlog: 128, mark: MARK, transparent: true, netns: nsB.label }));
    await server.listenFd(listenFd);
  });

  afterAll(async () => {
    await server?.close();
    nsA?.close();
    nsB?.close();
    await sim?.destroy();
    pki?.cleanup();
    sys.stopFdPoller();
  });

  test("the listener lives in pod B's netns only", async () => {
    expect(await b.listeningTcpPorts()).toContain(15008);
    expect(await a.listeningTcpPorts()).not.toContain(15008);
    const fromHost = await sys.connectTcp({ host: "127.0.0.1", port: 15008, timeoutMs: 1000 }).catch((e) => e);
    expect(fromHost.code).toBe("ECONNREFUSED");
  });

  test("a client in pod A (marked socket made there) gets 8 MiB through, byte-exact, both identities checked", async () => {
    const fd = await sys.connectTcp({ netns: nsA, host: b.ip, port: 15008, mark: MARK, timeoutMs: 3000 });
    expect(sys.getMark(fd)).toBe(MARK);
    expect(sys.localAddress(fd).ip).toBe(a.ip);
    const conn = await dialHbone({ address: b.ip, socket: fd, certificate: pki.a, expectedIdentities: [ID_B] });
    expect(conn.peerIdentity).toBe(ID_B);
    const stream = await openStream(conn, { ip: b.ip, port: APP_PORT }, { forwarded: `for="${a.ip}:40000"` });
    const payload = randomBytes(8 * 1024 * 1024);
    const chunks: Buffer[] = [];
    stream.on("data", (d: Buffer) => chunks.push(d));
    const ended = new Promise((r) => stream.on("end", r));
    stream.end(payload);
    await ended;
    const got = Buffer.concat(chunks);
    expect(createHash("sha256").update(got).digest("hex")).toBe(createHash("sha256").update(payload).digest("hex"));
    const req = requests.at(-1)!;
    expect(req.peerIdentity).toBe(ID_A);
    // The server thread saw the pod addresses: the accepted socket is in B's netns.
    expect(req.peerAddress.ip).toBe(a.ip);
    expect(req.forwardedFor).toEqual({ ip: a.ip, port: 40000 });
    conn.session.close();
  });

  test("an independent client (Python h2 + ssl) running in pod A's netns gets its bytes through", async () => {
    const f = (name: string, pem: string) => {
      const path = join(pki.dir, `seam-${name}.pem`);
      writeFileSync(path, pem, { mode: 0o600 });
      return path;
    };
    const r = await a.exec(["/usr/bin/python3", join(import.meta.dir, "../fixtures/hbone-client.py"), "--connect", `${b.ip}:15008`, "--cert", f("cert", pki.a.presented), "--key", f("key", pki.a.keyPem), "--ca", f("ca", pki.a.roots), "--expect", ID_B, "--authority", `${b.ip}:${APP_PORT}`, "--size", String(1 << 20), "--forwarded", `for="${a.ip}:41000"`]);
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout.trim());
    expect(out).toMatchObject({ status: 200, received: 1 << 20, peer: [ID_B], tls: "TLSv1.3", alpn: "h2" });
    expect(out.sha256).toBe(out.sent_sha256);
    expect(requests.at(-1)).toMatchObject({ peerIdentity: ID_A, peerAddress: { ip: a.ip }, forwardedFor: { ip: a.ip, port: 41000 } });
  });

  test("a target IP that is not pod B → 400, even through B's own listener", async () => {
    const fd = await sys.connectTcp({ netns: nsA, host: b.ip, port: 15008, mark: MARK, timeoutMs: 3000 });
    const conn = await dialHbone({ address: b.ip, socket: fd, certificate: pki.a, expectedIdentities: [ID_B] });
    const e = (await openStream(conn, { ip: a.ip, port: APP_PORT }).catch((x) => x)) as HboneError;
    expect(e.status).toBe(400);
    conn.session.close();
  });

  test("a net.Server listen({ fd }) + emit('connection') serves the same way (the per-connection route)", async () => {
    const fd2 = sys.withNetns(nsB, () => sys.tcpListen({ address: b.ip, port: 15009, backlog: 16, mark: MARK, transparent: false, netns: nsB.label }));
    const front = net.createServer({ allowHalfOpen: true }, (s) => server.handleConnection(s));
    await new Promise<void>((r) => front.listen({ fd: fd2 }, r));
    try {
      const fd = await sys.connectTcp({ netns: nsA, host: b.ip, port: 15009, mark: MARK, timeoutMs: 3000 });
      const conn = await dialHbone({ address: b.ip, port: 15009, socket: fd, certificate: pki.a, expectedIdentities: [ID_B] });
      const s = await openStream(conn, { ip: b.ip, port: APP_PORT });
      let got = "";
      s.on("data", (d) => (got += d));
      const ended = new Promise((r) => s.on("end", r));
      s.end("via emit");
      await ended;
      expect(got).toBe("via emit");
      conn.session.close();
    } finally {
      front.close();
    }
  });

  test("Bun 1.4.5: new net.Socket({ fd }) over a connected TCP fd never completes TLS (why fdStream exists)", async () => {
    const fd = await sys.connectTcp({ netns: nsA, host: b.ip, port: 15008, mark: MARK, timeoutMs: 3000 });
    const sock = new net.Socket({ fd, readable: true, writable: true } as never);
    const t = tls.connect({ socket: sock, key: pki.a.keyPem, cert: pki.a.presented, ca: pki.a.roots, ALPNProtocols: ["h2"], checkServerIdentity: () => undefined });
    const outcome = await Promise.race([
      new Promise((r) => t.once("secureConnect", () => r("secure"))),
      new Promise((r) => t.once("error", (e) => r(`error ${e.message}`))),
      Bun.sleep(1500).then(() => "stalled"),
    ]);
    t.destroy();
    sock.destroy();
    // If this turns "secure", Bun learnt to read adopted TCP fds and fdStream can go.
    expect(outcome).not.toBe("secure");
  });

  test("Bun 1.4.5: an http2 server listen() inside a withNetns window binds in that netns (synchronous bind)", async () => {
    const h2 = http2.createSecureServer({ key: pki.b.keyPem, cert: pki.b.presented });
    sys.withNetns(nsB, () => h2.listen(15010, "0.0.0.0"));
    await new Promise((r) => (h2.listening ? r(undefined) : h2.once("listening", r)));
    try {
      const inB = (await b.listeningTcpPorts()).includes(15010);
      const onHost = await sys.connectTcp({ host: "127.0.0.1", port: 15010, timeoutMs: 1000 }).then(
        (fd) => (sys.closeFd(fd), true),
        () => false,
      );
      expect({ inB, onHost }).toEqual({ inB: true, onHost: false });
    } finally {
      h2.close();
    }
  });
});
