// The ZDS server (agent side) against a raw test peer that plays ztunnel by hand: the bytes the
// server sends are compared with protobuf bytes built here from Istio's field numbers
// (test/fixtures/zds-raw.ts, independent of src/zds/messages.ts), and every misbehaviour of the
// peer must end in the defined outcome, a log line naming it, no stuck promise and no leaked fd.
// No root needed: the netns fds are the test process's own (/proc/self/ns/net).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as sys from "../../src/sys/index.ts";
import { ZdsServer, type ZdsServerOptions } from "../../src/zds/server.ts";
import { ZdsRequestError, type SnapshotEntry } from "../../src/zds/types.ts";
import { hex, LogRecorder, RawPeer, until, warmPoller, wire } from "../fixtures/zds-raw.ts";

const INFO = { name: "web-0", namespace: "shop", serviceAccount: "web" };
const OWN_NETNS = sys.netnsIdentityOfPath("/proc/self/ns/net");

let root: string;
const servers: ZdsServer[] = [];
const peers: RawPeer[] = [];
const netnses: sys.Netns[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zds-server-"));
  await warmPoller();
});

afterEach(async () => {
  for (const p of peers.splice(0)) p.close();
  await Promise.all(servers.splice(0).map((s) => s.stop()));
  for (const ns of netnses.splice(0)) ns.close();
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function sockPath(): string {
  return join(root, `s${++seq}`, "zds.sock");
}

function ownNetns(): sys.Netns {
  const ns = sys.Netns.open("/proc/self/ns/net");
  netnses.push(ns);
  return ns;
}

function startServer(opts: Partial<ZdsServerOptions> & { snapshot?: () => SnapshotEntry[] } = {}) {
  const log = new LogRecorder();
  const events: string[] = [];
  const results: [string, string | undefined][] = [];
  const server = new ZdsServer({
    path: sockPath(),
    snapshot: () => [],
    log: log.log,
    onConnected: (id) => events.push(`connected ${id}`),
    onDisconnected: (id) => events.push(`disconnected ${id}`),
    onSnapshotDone: (id) => events.push(`snapshotDone ${id}`),
    onSnapshotResult: (uid, err) => results.push([uid, err]),
    ...opts,
  });
  server.start();
  servers.push(server);
  return { server, log, events, results };
}

function connect(server: ZdsServer): RawPeer {
  const p = RawPeer.connect(server.path);
  peers.push(p);
  return p;
}

/** Connects, says hello, and acks an empty snapshot (expects exactly SnapshotSent). */
async function connectReady(server: ZdsServer): Promise<RawPeer> {
  const p = connect(server);
  p.send(wire.hello());
  expect(hex((await p.packet()).data)).toBe("1a 00");
  p.send(wire.ack());
  return p;
}

async function rejection(p: Promise<unknown>): Promise<ZdsRequestError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ZdsRequestError);
    return e as ZdsRequestError;
  }
  throw new Error("expected the promise to reject");
}

describe("ZDS transport", () => {
  // Regression test for src/sys/poller.ts: poll(2) holds a reference to every file it waits on,
  // so a wait that timed out (or was cancelled) must wake the poller thread, or a close() of
  // that fd would not release the socket and the peer would never see EOF.
  test("closing an fd whose poller wait timed out releases the socket: the peer sees EOF", async () => {
    const [a, b] = sys.socketPair();
    const peerWait = sys.fdPoller().wait(b, sys.POLLIN, 10_000); // in the poll set first
    expect(await sys.fdPoller().wait(a, sys.POLLIN, 20)).toBe(0); // times out
    sys.closeFd(a);
    expect(await peerWait).not.toBe(0);
    expect(sys.recvPacket(b).kind).toBe("eof");
    sys.closeFd(b);
  });
});

describe("ZDS server: wire compatibility with a hand-written ztunnel", () => {
  test("snapshot (Add with fd, Keep), SnapshotSent, live Add and Del are Istio's bytes", async () => {
    const ns = ownNetns();
    const { server, events, results } = startServer({
      snapshot: () => [
        { uid: "pod-a", info: INFO, netns: ns },
        { uid: "pod-b", info: { name: "db-0", namespace: "shop", serviceAccount: "db" } },
      ],
    });
    const p = connect(server);
    p.send([0x08, 0x01]); // ZdsHello{V1}, as ztunnel sends it

    const add = await p.packet(10_000, true);
    expect(hex(add.data)).toBe(hex(wire.add("pod-a", INFO)));
    // the exact layout: 0a <len> 0a 05 "pod-a" 12 <len> 0a 05 "web-0" 12 04 "shop" 1a 03 "web"
    expect(add.data.slice(0, 9)).toEqual([0x0a, add.data.length - 2, 0x0a, 0x05, ...new TextEncoder().encode("pod-a")]);
    expect(add.fds).toHaveLength(1);
    expect(sys.netnsIdentity(add.fds[0]!)).toEqual(OWN_NETNS);
    expect(add.fds[0]).not.toBe(ns.fd);
    sys.closeFd(add.fds[0]!);
    p.send([0x0a, 0x00]);

    const keep = await p.packet(10_000, true);
    expect(hex(keep.data)).toBe(hex(wire.keep("pod-b")));
    expect(hex(keep.data)).toBe("2a 07 0a 05 70 6f 64 2d 62");
    expect(keep.fds).toHaveLength(0);
    p.send(wire.ack());

    const snap = await p.packet(10_000, true);
    expect(hex(snap.data)).toBe("1a 00");
    expect(snap.fds).toHaveLength(0);
    p.send(wire.ack());
    await until(() => events.includes("snapshotDone 1"), 10_000, "snapshot done");
    expect(results).toEqual([
      ["pod-a", undefined],
      ["pod-b", undefined],
    ]);
    expect(server.connectionCount()).toBe(1);

    // live Add to the (only, hence newest) connection
    const liveNs = ownNetns();
    const pending = server.addWorkload("pod-c", INFO, liveNs);
    const live = await p.packet(10_000, true);
    expect(hex(live.data)).toBe(hex(wire.add("pod-c", INFO)));
    expect(live.fds).toHaveLength(1);
    expect(sys.netnsIdentity(live.fds[0]!)).toEqual(OWN_NETNS);
    sys.closeFd(live.fds[0]!);
    p.send(wire.ack());
    await pending;
    expect(liveNs.closed).toBe(false); // the caller still owns it

    // live Del: uid in field 2 of DelWorkload, no fd
    const del = server.delWorkload("pod-c");
    const d = await p.packet(10_000, true);
    expect(hex(d.data)).toBe("12 07 12 05 70 6f 64 2d 63");
    expect(hex(d.data)).toBe(hex(wire.del("pod-c")));
    expect(d.fds).toHaveLength(0);
    p.send(wire.ack());
    await del;

    // a nack is the rejection text, and the connection stays
    const nacked = server.addWorkload("pod-d", INFO, liveNs);
    await p.packet();
    p.send(wire.ack("failure to start proxy : bind 15001: EADDRINUSE"));
    const err = await rejection(nacked);
    expect(err.kind).toBe("nack");
    expect(err.message).toBe("failure to start proxy : bind 15001: EADDRINUSE");
    expect(err.isProxyStartFailure).toBe(true);
    expect(err.conn).toBe(1); // with several proxies, the agent must know which one refused
    expect(server.connectionCount()).toBe(1);
    expect(server.connections()[0]!.nacks).toBe(1);
  });

  test("a snapshot nack is reported per pod and the snapshot goes on", async () => {
    const ns = ownNetns();
    const { server, results, log } = startServer({
      snapshot: () => [
        { uid: "a", info: INFO, netns: ns },
        { uid: "b", info: INFO, netns: ns },
      ],
    });
    const p = connect(server);
    p.send(wire.hello());
    await p.packet();
    p.send(wire.ack("failure to start proxy : no"));
    await p.packet();
    p.send(wire.ack());
    expect(hex((await p.packet()).data)).toBe("1a 00");
    p.send(wire.ack());
    await until(() => server.connections()[0]?.state === "live", 10_000, "live");
    expect(results).toEqual([
      ["a", "failure to start proxy : no"],
      ["b", undefined],
    ]);
    expect(log.find(/snapshot: proxy nacked AddWorkload/)?.fields?.uid).toBe("a");
    expect(server.connections()[0]!.nacks).toBe(1);
  });

  test("an Add requested during the snapshot goes out right after SnapshotSent", async () => {
    const ns = ownNetns();
    const { server } = startServer({ snapshot: () => [{ uid: "snap", info: INFO, netns: ns }] });
    const p = connect(server);
    p.send(wire.hello());
    expect(hex((await p.packet()).data)).toBe(hex(wire.add("snap", INFO)));
    await until(() => server.connectionCount() === 1);
    const live = server.addWorkload("live", INFO, ns);
    const del = server.delWorkload("gone");
    p.send(wire.ack());
    expect(hex((await p.packet()).data)).toBe("1a 00");
    p.send(wire.ack());
    expect(hex((await p.packet()).data)).toBe(hex(wire.add("live", INFO)));
    p.send(wire.ack());
    expect(hex((await p.packet()).data)).toBe(hex(wire.del("gone")));
    p.send(wire.ack());
    await live;
    await del;
  });
});

describe("ZDS server: connections", () => {
  test("no proxy: Add rejects with 'no proxy connected', Del resolves", async () => {
    const { server } = startServer();
    const err = await rejection(server.addWorkload("x", INFO, ownNetns()));
    expect(err.message).toBe("no proxy connected");
    expect(err.kind).toBe("no-connection");
    await server.delWorkload("x");
    expect(server.connectionCount()).toBe(0);
  });

  test("two proxies: Add goes to the newest only, Del to both; when the newest leaves, the older gets Adds", async () => {
    const { server, events } = startServer();
    const older = await connectReady(server);
    await until(() => events.includes("snapshotDone 1"));
    const newer = await connectReady(server);
    await until(() => events.includes("snapshotDone 2"));
    expect(server.connectionCount()).toBe(2);
    const ns = ownNetns();

    const add = server.addWorkload("p1", INFO, ns);
    expect(hex((await newer.packet()).data)).toBe(hex(wire.add("p1", INFO)));
    newer.send(wire.ack());
    expect(await add).toBe(2); // resolves with the connection that acked
    expect((await older.recv(100)).kind).toBe("timeout"); // nothing went to the older one

    const del = server.delWorkload("p1");
    expect(hex((await older.packet()).data)).toBe(hex(wire.del("p1")));
    expect(hex((await newer.packet()).data)).toBe(hex(wire.del("p1")));
    older.send(wire.ack());
    newer.send(wire.ack());
    await del;

    newer.close();
    await until(() => server.connectionCount() === 1, 10_000, "the newer connection to be noticed gone");
    expect(events).toContain("disconnected 2");
    const add2 = server.addWorkload("p2", INFO, ns);
    expect(hex((await older.packet()).data)).toBe(hex(wire.add("p2", INFO)));
    older.send(wire.ack());
    expect(await add2).toBe(1);
  });

  test("a Del that fails on two connections names both", async () => {
    const { server } = startServer();
    const a = await connectReady(server);
    const b = await connectReady(server);
    await until(() => server.connections().filter((c) => c.state === "live").length === 2);
    const del = server.delWorkload("p");
    await a.packet();
    await b.packet();
    a.send(wire.ack("failure to process message : x"));
    b.send(wire.ack("failure to process message : y"));
    const err = await rejection(del);
    expect(err.errors).toHaveLength(2);
    expect(err.message).toContain("failure to process message : x");
    expect(err.message).toContain("failure to process message : y");
  });

  test("allowedUids: a peer with another uid is logged and closed", async () => {
    const { server, log } = startServer({ allowedUids: [4242] });
    const p = connect(server);
    await p.eof();
    expect((await log.waitFor(/rejected ZDS connection from uid 0/)).level).toBe("warn");
    expect(server.connectionCount()).toBe(0);
  });

  test("allowedUids: refused peers never wait for a hello, and a flood of them is one log line a second", async () => {
    const { server, log } = startServer({ allowedUids: [4242] });
    const ps = Array.from({ length: 40 }, () => connect(server));
    for (const p of ps) await p.eof();
    expect(server.stats()).toMatchObject({ accepted: 40, refusedPeers: 40, waiting: 0, evicted: 0 });
    expect(log.count(/rejected ZDS connection from uid 0/)).toBe(1);
  });

  test("start(): creates the directory 0755, socket 0600; removes a stale socket; refuses a regular file", async () => {
    const path = sockPath();
    const s1 = new ZdsServer({ path, snapshot: () => [], log: () => {} });
    s1.start();
    expect(statSync(join(path, "..")).mode & 0o777).toBe(0o755);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(path).isSocket()).toBe(true);
    await s1.stop();
    expect(existsSync(path)).toBe(false);

    // a stale socket (the listener is gone, the file is not)
    const fd = sys.listenUnix(path);
    sys.closeFd(fd);
    expect(statSync(path).isSocket()).toBe(true);
    const s2 = new ZdsServer({ path, snapshot: () => [], log: () => {}, socketMode: 0o660 });
    s2.start();
    expect(statSync(path).mode & 0o777).toBe(0o660);
    await s2.stop();

    writeFileSync(path, "not a socket");
    const s3 = new ZdsServer({ path, snapshot: () => [], log: () => {} });
    expect(() => s3.start()).toThrow(/refusing to remove .* not a socket/);
    expect(existsSync(path)).toBe(true);
    rmSync(path);
  });

  test("stop(): queued and in-flight requests reject with 'server stopped', nothing hangs", async () => {
    const { server } = startServer();
    const p = await connectReady(server);
    await until(() => server.connections()[0]?.state === "live");
    const ns = ownNetns();
    const inflight = server.addWorkload("a", INFO, ns);
    const queued = server.addWorkload("b", INFO, ns);
    const del = server.delWorkload("c");
    await p.packet(); // the first one is on the wire; never acked
    await server.stop();
    for (const pr of [inflight, queued, del]) {
      const err = await rejection(pr);
      expect(err.message).toContain("server stopped");
    }
    await p.eof();
    expect((await rejection(server.addWorkload("d", INFO, ns))).message).toBe("server stopped");
  });

});

describe("ZDS server: bad peers", () => {
  test("no hello within helloTimeoutMs: logged and closed", async () => {
    const { server, log } = startServer({ helloTimeoutMs: 100 });
    const p = connect(server);
    await p.eof();
    expect((await log.waitFor(/no ZdsHello from the proxy within 100 ms/)).level).toBe("warn");
  });

  // Istio's agent only logs the version; nshub refuses anything but V1 (docs/zds.md).
  for (const [bytes, name] of [
    [[0x08, 0x02], "2"],
    [[0x08, 0x00], "NOT_USED"],
    [[0x08, 0x96, 0x01], "150"],
  ] as const) {
    test(`a hello announcing version ${name} (${hex(bytes)}): refused with a log line, no snapshot; a V1 proxy is served`, async () => {
      const { server, log, events } = startServer({ snapshot: () => [{ uid: "pod-b", info: INFO }] });
      const p = connect(server);
      p.send(bytes);
      await p.eof(); // closed without a single request
      const line = await log.waitFor(/refusing proxy: its ZdsHello announces version/);
      expect(line.msg).toBe(`refusing proxy: its ZdsHello announces version ${name}; this agent speaks only V1`);
      expect(line.level).toBe("warn");
      expect(line.fields?.bytes).toBe(hex(bytes));
      expect(server.stats()).toMatchObject({ refusedVersions: 1, admitted: 0, waiting: 0 });
      expect(server.connectionCount()).toBe(0);
      expect(events).toEqual([]);

      const v1 = connect(server);
      v1.send([0x08, 0x01]);
      expect(hex((await v1.packet()).data)).toBe(hex(wire.keep("pod-b")));
      expect(events).toEqual(["connected 2"]);
    });
  }

  test("garbage instead of a hello: logged and closed", async () => {
    const { server, log } = startServer();
    const p = connect(server);
    p.send([0xff, 0xff, 0xff, 0xff]);
    await p.eof();
    expect((await log.waitFor(/invalid ZdsHello from the proxy: invalid protobuf/)).fields?.bytes).toBe("ff ff ff ff");
  });

  test("a hello carrying an fd: the fd is closed, logged, connection closed", async () => {
    const { server, log } = startServer();
    const before = sys.openFdCount();
    const p = connect(server);
    const ns = ownNetns();
    p.send(wire.hello(), ns.fd);
    await p.eof();
    await log.waitFor(/invalid ZdsHello from the proxy: unexpected control message/);
    p.close();
    ns.close();
    expect(sys.openFdCount()).toBe(before);
  });

  test("an ack that never comes: the request rejects with a timeout and the connection is closed", async () => {
    const { server, log, events } = startServer({ ackTimeoutMs: 150 });
    const p = await connectReady(server);
    await until(() => events.includes("snapshotDone 1"));
    const ns = ownNetns();
    const add = server.addWorkload("slow", INFO, ns);
    const queued = server.addWorkload("next", INFO, ns);
    await p.packet();
    const err = await rejection(add);
    expect(err.kind).toBe("timeout");
    expect(err.message).toMatch(/timed out after 150 ms waiting for the proxy's ack to AddWorkload slow; connection closed/);
    expect((await rejection(queued)).kind).toBe("closed");
    await p.eof();
    await log.waitFor(/no ack to AddWorkload slow within 150 ms/);
    expect(server.connectionCount()).toBe(0);
    expect(events).toContain("disconnected 1");
  });

  test("an ack that never comes during the snapshot closes the connection too", async () => {
    const ns = ownNetns();
    const { server, results } = startServer({ ackTimeoutMs: 150, snapshot: () => [{ uid: "a", info: INFO, netns: ns }] });
    const p = connect(server);
    p.send(wire.hello());
    await p.packet();
    await p.eof();
    expect(results[0]?.[1]).toMatch(/timed out/);
  });

  test("the peer vanishes mid-request: the request rejects, no fd is left behind", async () => {
    const { server, log, events } = startServer();
    const p = await connectReady(server);
    await until(() => events.includes("snapshotDone 1"));
    const ns = ownNetns();
    const before = sys.openFdCount();
    const add = server.addWorkload("a", INFO, ns);
    const got = await p.packet(10_000, true);
    expect(got.fds).toHaveLength(1);
    got.fds.forEach(sys.closeFd);
    p.close();
    const err = await rejection(add);
    expect(err.kind).toBe("closed");
    expect(err.message).toBe("connection closed before response received");
    await log.waitFor(/proxy closed the connection while AddWorkload a was waiting for its ack/);
    expect(server.connectionCount()).toBe(0);
    expect(sys.openFdCount()).toBe(before - 2); // the peer's socket and the server's end of it
  });

  test("idle: EOF is noticed; unexpected data is a protocol error", async () => {
    const { server, log, events } = startServer({ keepaliveIntervalMs: 50 });
    const a = await connectReady(server);
    const b = await connectReady(server);
    await until(() => events.includes("snapshotDone 2"));
    a.close();
    await until(() => events.includes("disconnected 1"), 10_000, "EOF to be noticed while idle");
    await log.waitFor(/ZDS connection closed: proxy closed the connection/);
    b.send(wire.ack()); // ztunnel never sends anything unprompted
    await b.eof();
    expect((await log.waitFor(/protocol error: unexpected message from the proxy while idle/)).fields?.bytes).toBe("0a 00");
    expect(server.connectionCount()).toBe(0);
  });

  test("bad acks: garbage, an fd, 64 KiB, no payload — each logged, rejected, connection closed", async () => {
    const { server, log } = startServer();
    const ns = ownNetns();
    const cases: [number[], number, RegExp][] = [
      [[0xff, 0xff, 0xff], -1, /invalid ack from the proxy: invalid protobuf/],
      [wire.ack(), ns.fd, /invalid ack from the proxy: unexpected control message/],
      [new Array(65536).fill(0x41), -1, /invalid ack from the proxy: received truncated message/],
      [[0x10, 0x01], -1, /invalid ack from the proxy: no payload/],
    ];
    const before = sys.openFdCount();
    for (const [bytes, fd, re] of cases) {
      const p = await connectReady(server);
      await until(() => server.connections().some((c) => c.state === "live"));
      const add = server.addWorkload("x", INFO, ns);
      await p.packet();
      p.send(bytes, fd);
      expect((await rejection(add)).kind).toBe("io");
      await p.eof();
      await log.waitFor(re);
      p.close();
    }
    expect(sys.openFdCount()).toBe(before);
  });

  test("an ack with two fds (sent by Python's socket.send_fds): both closed, logged", async () => {
    const ns = ownNetns();
    const { server, log } = startServer({ snapshot: () => [{ uid: "a", info: INFO, netns: ns }] });
    const before = sys.openFdCount();
    const script = `
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.send(bytes([8, 1]))
msg, fds, flags, addr = socket.recv_fds(s, 1024, 4)
for f in fds: os.close(f)
two = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(2)]
socket.send_fds(s, [bytes([0x0a, 0x00])], two)
sys.exit(0 if s.recv(1024) == b"" else 3)  # the server must close the connection
`;
    const py = Bun.spawn(["python3", "-c", script, server.path], { stdio: ["ignore", "inherit", "inherit"] });
    expect(await py.exited).toBe(0);
    await log.waitFor(/invalid ack from the proxy: expected 1 FD, got 2/);
    await until(() => server.connections().length === 0);
    expect(sys.openFdCount()).toBe(before);
  });

  test("1,000 bad messages: fd count returns to baseline, every request settles", async () => {
    const ns = ownNetns();
    const { server, log } = startServer({
      snapshot: () => [{ uid: "s", info: INFO, netns: ns }],
      helloTimeoutMs: 2000,
      ackTimeoutMs: 2000,
      keepaliveIntervalMs: 1000,
    });
    const nsFd = ns.fd;
    // warm-up cycle so every lazily created thing exists before the baseline
    {
      const p = connect(server);
      p.send(wire.hello());
      await p.packet();
      p.send(wire.ack());
      await p.packet();
      p.send(wire.ack());
      await until(() => server.connections()[0]?.state === "live");
      p.close();
      await until(() => server.connections().length === 0);
    }
    const before = sys.openFdCount();
    const settled: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) {
      const p = RawPeer.connect(server.path);
      const kind = i % 8;
      if (kind === 0) {
        p.send([0xff, 0xff, 0xff]); // garbage hello
        await p.eof();
      } else if (kind === 1) {
        p.send(wire.hello(), nsFd); // hello with an fd
        await p.eof();
      } else {
        p.send(wire.hello());
        await p.packet(); // the snapshot Add (its fd closed by packet())
        if (kind === 2) {
          p.send([0x0a, 0x05, 0x01]); // garbage ack
          await p.eof();
        } else if (kind === 3) {
          p.send(wire.ack(), nsFd); // ack with an fd
          await p.eof();
        } else if (kind === 4) {
          p.send(new Array(65536).fill(0)); // 64 KiB ack
          await p.eof();
        } else if (kind === 5) {
          // vanish mid-request
        } else {
          p.send(wire.ack());
          expect(hex((await p.packet()).data)).toBe("1a 00");
          p.send(wire.ack());
          await until(() => server.connections().some((c) => c.state === "live"));
          if (kind === 6) {
            p.send(wire.ack()); // unprompted data while idle
            await p.eof();
          } else {
            const add = server.addWorkload(`p${i}`, INFO, ns);
            settled.push(add.catch(() => undefined));
            await p.packet();
            p.send(wire.ack("failure to start proxy : nope")); // nack keeps the connection
            expect((await rejection(add)).kind).toBe("nack");
          }
        }
      }
      p.close();
    }
    await Promise.all(settled);
    await until(() => server.connections().length === 0, 20_000, "every connection to be closed");
    expect(sys.openFdCount()).toBe(before);
    // Bad hellos are counted each, logged at most once a second (a flood must not flood the log).
    expect(server.stats()).toMatchObject({ badHellos: 250, admitted: 751, waiting: 0 });
    expect(log.count(/^invalid ZdsHello from the proxy/)).toBeGreaterThanOrEqual(1);
    expect(log.count(/^invalid ack from the proxy/)).toBe(375);
    expect(log.count(/unexpected message from the proxy while idle/)).toBe(125);
  }, 120_000);
});
