// The ZDS client (proxy side) against a raw test peer that plays istio-cni by hand: requests are
// protobuf bytes built here from Istio's field numbers (test/fixtures/zds-raw.ts, independent of
// src/zds/messages.ts), and the client's hello and acks are compared byte for byte. Every bad
// input must give the defined nack (or reconnect), a log line naming it, and leak no fd.
// No root needed: netns fds are the test process's own (/proc/self/ns/net, /proc/self/ns/mnt).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as sys from "../../src/sys/index.ts";
import { ZdsClient } from "../../src/zds/client.ts";
import { FakeManager } from "../fixtures/zds-fake-manager.ts";
import { ackText, hex, LogRecorder, RawListener, RawPeer, until, warmPoller, wire } from "../fixtures/zds-raw.ts";

const INFO = { name: "web-0", namespace: "shop", serviceAccount: "web" };
const OWN_NETNS = sys.netnsIdentityOfPath("/proc/self/ns/net");
const OWN_KEY = sys.identityKey(OWN_NETNS);

let root: string;
let regularFile: string;
const cleanups: (() => void | Promise<void>)[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zds-client-"));
  regularFile = join(root, "plain-file");
  writeFileSync(regularFile, "not a namespace");
  await warmPoller();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function sockPath(): string {
  const dir = join(root, `c${++seq}`);
  mkdirSync(dir);
  return join(dir, "zds.sock");
}

interface Rig {
  path: string;
  listener: RawListener;
  client: ZdsClient;
  manager: FakeManager;
  log: LogRecorder;
}

/** A raw agent listening, and a client (fast backoff) connecting to it. */
function rig(opts: { listen?: boolean; manager?: FakeManager } = {}): Rig {
  const path = sockPath();
  const listener = opts.listen === false ? (undefined as unknown as RawListener) : RawListener.listen(path);
  const manager = opts.manager ?? new FakeManager();
  const log = new LogRecorder();
  const client = new ZdsClient({ path, manager, log: log.log, backoff: { initialMs: 1, maxMs: 5 } });
  client.start();
  cleanups.push(() => listener?.close());
  cleanups.push(() => manager.closeAll());
  cleanups.push(() => client.stop());
  return { path, listener, client, manager, log };
}

const openPeers: RawPeer[] = [];
afterEach(() => {
  for (const p of openPeers.splice(0)) p.close();
});

/** Accepts the client's next connection and checks its hello is exactly `08 01`. */
async function nextConn(listener: RawListener): Promise<RawPeer> {
  const p = await listener.accept();
  openPeers.push(p);
  const hello = await p.packet();
  expect(hex(hello.data)).toBe("08 01");
  expect(hello.fds).toHaveLength(0);
  return p;
}

/** Sends a request and returns the text of the ack it got ("" = success). */
async function request(p: RawPeer, bytes: number[], fd = -1): Promise<string> {
  p.send(bytes, fd);
  const r = await p.packet();
  expect(r.fds).toHaveLength(0);
  return ackText(r.data);
}

function openNs(path = "/proc/self/ns/net"): sys.Netns {
  const ns = sys.Netns.open(path);
  cleanups.push(() => ns.close());
  return ns;
}

let rawOpened = 0;

/** An fd to anything (a regular file, a mount namespace), closed by the test in afterEach. */
function openRaw(path: string): number {
  const fd = openSync(path, "r");
  rawOpened++;
  cleanups.push(() => {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  });
  return fd;
}

describe("ZDS client: wire compatibility with a hand-written istio-cni", () => {
  test("hello 08 01; Add/Keep/Del/SnapshotSent acked with 0a 00; snapshot reconciliation", async () => {
    const manager = new FakeManager();
    const stale = openNs();
    await manager.add("old-1", INFO, stale); // a pod from before this connection, not in the snapshot
    const { listener } = rig({ manager });
    const p = await nextConn(listener);
    const ns = openNs();

    // Add with workload_info and the netns fd
    p.send(wire.add("pod-a", INFO), ns.fd);
    const ack = await p.packet();
    expect(hex(ack.data)).toBe("0a 00");
    const add = await manager.waitFor((e) => e.ev === "add" && e.uid === "pod-a");
    expect(add).toEqual({ ev: "add", uid: "pod-a", key: OWN_KEY, info: INFO, outcome: "new" });

    // Add again with the same netns identity: the manager sees it (and makes it a no-op)
    expect(await request(p, wire.add("pod-a", INFO), ns.fd)).toBe("");
    expect(manager.events.filter((e) => e.ev === "add" && e.uid === "pod-a").at(-1)).toMatchObject({ outcome: "same" });

    // Add without workload_info (an Istio 1.21 agent): passed on with info undefined
    expect(await request(p, wire.add("pod-old-istio"), ns.fd)).toBe("");
    expect(manager.events.at(-1)).toMatchObject({ ev: "add", uid: "pod-old-istio", info: undefined });

    // Keep: no fd
    expect(await request(p, wire.keep("pod-k"))).toBe("");
    expect(manager.events.at(-1)).toEqual({ ev: "keep", uid: "pod-k" });

    // Del before the snapshot ends
    expect(await request(p, wire.del("pod-old-istio"))).toBe("");
    expect(manager.events.at(-1)).toMatchObject({ ev: "del", uid: "pod-old-istio" });

    // SnapshotSent: old-1 was not named → deleted; then snapshotDone
    p.send([0x1a, 0x00]);
    expect(hex((await p.packet()).data)).toBe("0a 00");
    const done = await manager.waitFor((e) => e.ev === "snapshotDone");
    expect(done).toEqual({ ev: "snapshotDone", uids: ["pod-a", "pod-k"] });
    expect(manager.events.find((e) => e.ev === "del" && e.uid === "old-1")).toBeDefined();
    expect(stale.closed).toBe(true);

    // live Del after the snapshot
    expect(await request(p, wire.del("pod-a"))).toBe("");
    expect(manager.pods.has("pod-a")).toBe(false);
    expect(manager.events.map((e) => e.ev)).toEqual([
      "add", // old-1, before the client started
      "connectionStarted",
      "add",
      "add",
      "add",
      "keep",
      "del",
      "del", // old-1, reconciled
      "snapshotDone",
      "del",
    ]);
  });

  test("ProxyStartError: nack 'failure to start proxy : …', the connection is kept", async () => {
    const { listener, manager, log } = rig();
    manager.startFail.add("pod-x");
    const p = await nextConn(listener);
    const ns = openNs();
    p.send(wire.add("pod-x", INFO), ns.fd);
    const nack = await p.packet();
    const text = "failure to start proxy : failed to bind to address 0.0.0.0:15001 in pod pod-x: EADDRINUSE";
    expect(hex(nack.data)).toBe(hex(wire.ack(text)));
    expect(log.find(/proxy for pod pod-x failed to start/)).toBeDefined();
    // same connection goes on
    expect(await request(p, wire.snapshotSent())).toBe("");
    expect(manager.pending.has("pod-x")).toBe(true);
  });

  test("another manager error: nack 'failure to process message : …', then reconnect", async () => {
    const { listener, manager, log } = rig();
    manager.processFail.add("pod-y");
    const p = await nextConn(listener);
    const ns = openNs();
    expect(await request(p, wire.add("pod-y", INFO), ns.fd)).toBe(
      "failure to process message : injected processing failure for pod pod-y",
    );
    await p.eof();
    await log.waitFor(/processing AddWorkload for pod pod-y failed/);
    const p2 = await nextConn(listener);
    expect(await request(p2, wire.snapshotSent())).toBe("");
    expect(manager.events.filter((e) => e.ev === "connectionStarted")).toHaveLength(2);
    expect(manager.events.filter((e) => e.ev === "connectionLost")).toHaveLength(1);
  });
});

describe("ZDS client: bad input from the agent", () => {
  type Case = {
    name: string;
    /** What the raw agent sends (it may send good requests first). */
    run: (p: RawPeer) => Promise<string>;
    nack: string | RegExp;
    log: RegExp;
  };
  const cases: Case[] = [
    {
      name: "garbage bytes",
      run: (p) => request(p, [0xff, 0xff, 0xff, 0xff]),
      nack: /^failure to read message : invalid protobuf: /,
      log: /bad request from the node agent: invalid protobuf/,
    },
    {
      name: "a 64 KiB packet",
      run: (p) => request(p, new Array(65536).fill(0x0a)),
      nack: "failure to read message : received truncated message",
      log: /bad request from the node agent: received truncated message/,
    },
    {
      name: "an fd to a regular file",
      run: (p) => request(p, wire.add("pod-f", INFO), openRaw(regularFile)),
      nack: /^failure to read message : netns fd of pod pod-f is not a network namespace: not a namespace file \(ENOTTY\)$/,
      log: /rejected AddWorkload for pod pod-f: .* is not a network namespace/,
    },
    {
      name: "an fd to a mount namespace",
      run: (p) => request(p, wire.add("pod-m", INFO), openRaw("/proc/self/ns/mnt")),
      nack: "failure to read message : netns fd of pod pod-m is not a network namespace: it is a mount namespace",
      log: /rejected AddWorkload for pod pod-m: .* it is a mount namespace/,
    },
    {
      name: "an Add without an fd",
      run: (p) => request(p, wire.add("pod-n", INFO)),
      nack: "failure to read message : no control message",
      log: /bad request from the node agent: no control message/,
    },
    {
      name: "a Del with an fd",
      run: (p) => request(p, wire.del("pod-d"), openRaw("/proc/self/ns/net")),
      nack: "failure to read message : unexpected control message",
      log: /bad request from the node agent: unexpected control message/,
    },
    {
      name: "an empty oneof (only an unknown field)",
      run: (p) => request(p, [0x20, 0x01]),
      nack: "failure to read message : no payload",
      log: /bad request from the node agent: no payload/,
    },
    {
      name: "a second SnapshotSent",
      run: async (p) => {
        expect(await request(p, wire.snapshotSent())).toBe("");
        return request(p, wire.snapshotSent());
      },
      nack: "failure to process message : pod snapshot received already",
      log: /processing snapshotSent from the node agent failed: pod snapshot received already/,
    },
    {
      name: "Keep after the snapshot",
      run: async (p) => {
        expect(await request(p, wire.snapshotSent())).toBe("");
        return request(p, wire.keep("pod-late"));
      },
      nack: "failure to process message : pod keep received after snapshot",
      log: /processing keep from the node agent failed: pod keep received after snapshot/,
    },
  ];

  for (const c of cases) {
    test(`${c.name}: nack, log line, reconnect, no fd leaked`, async () => {
      const { listener, manager, log } = rig();
      let p = await nextConn(listener);
      // one good exchange first so the baseline includes everything a live connection holds
      expect(await request(p, wire.keep("warm"))).toBe("");
      const before = sys.openFdCount();
      const opened = rawOpened;
      const nack = await c.run(p);
      if (typeof c.nack === "string") expect(nack).toBe(c.nack);
      else expect(nack).toMatch(c.nack);
      await p.eof(); // the client closes after a read/process failure
      expect((await log.waitFor(c.log)).level).toBe("warn");
      p.close();
      p = await nextConn(listener); // and reconnects
      await manager.waitFor((e) => e.ev === "connectionLost");
      // One live connection again on both sides; the only extra fds are the ones the test
      // itself opened to send (closed in afterEach). The fd the client received is closed.
      expect(sys.openFdCount()).toBe(before + (rawOpened - opened));
    });
  }

  test("two fds with one Add (sent by Python's socket.send_fds): nack, reconnect, no leak", async () => {
    const path = sockPath();
    const out = join(root, `py-${seq}.txt`);
    const script = `
import os, socket, sys
path, n, add, out = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
l = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
l.bind(path)
l.listen(4)
res = []
for i in range(n):
    c, _ = l.accept()
    assert c.recv(1024) == bytes([8, 1]), "hello"
    fds = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(2)]
    socket.send_fds(c, [add], fds)
    for f in fds: os.close(f)
    res.append(c.recv(1024).hex())
    assert c.recv(1024) == b"", "client must close after the nack"
    c.close()
open(out, "w").write("\\n".join(res))
`;
    const before = sys.openFdCount();
    const py = Bun.spawn(["python3", "-c", script, path, "50", hex(wire.add("pod-2fd", INFO)).replaceAll(" ", ""), out], {
      stdio: ["ignore", "inherit", "inherit"],
    });
    const manager = new FakeManager();
    const log = new LogRecorder();
    const client = new ZdsClient({ path, manager, log: log.log, backoff: { initialMs: 1, maxMs: 5 } });
    client.start();
    cleanups.push(() => client.stop());
    cleanups.push(() => void py.kill());
    expect(await py.exited).toBe(0);
    await client.stop();
    const nacks = readFileSync(out, "utf8").split("\n");
    expect(nacks).toHaveLength(50);
    for (const n of nacks) expect(n).toBe(hex(wire.ack("failure to read message : expected 1 FD, got 2")).replaceAll(" ", ""));
    expect(log.count(/bad request from the node agent: expected 1 FD, got 2/)).toBe(50);
    expect(manager.events.filter((e) => e.ev === "add")).toHaveLength(0);
    expect(sys.openFdCount()).toBe(before);
  }, 60_000);

  test("the agent vanishes mid-request: the ack send fails, logged, reconnect", async () => {
    const { listener, manager, log } = rig();
    manager.addDelayMs = 100;
    const p = await nextConn(listener);
    const ns = openNs();
    p.send(wire.add("pod-v", INFO), ns.fd);
    p.close();
    await manager.waitFor((e) => e.ev === "add" && e.uid === "pod-v");
    await log.waitFor(/sending the ack to the node agent failed/);
    await manager.waitFor((e) => e.ev === "connectionLost");
    await nextConn(listener);
    expect(manager.pods.get("pod-v")?.key).toBe(OWN_KEY); // the manager owns the netns it got
  });

  test("EOF from the agent: connectionLost, then a new connection with a fresh snapshot", async () => {
    const { listener, manager } = rig();
    const ns = openNs();
    const p = await nextConn(listener);
    expect(await request(p, wire.add("a", INFO), ns.fd)).toBe("");
    expect(await request(p, wire.snapshotSent())).toBe("");
    p.close();
    await manager.waitFor((e) => e.ev === "connectionLost");
    const p2 = await nextConn(listener);
    // the new snapshot names nothing: "a" is dropped at SnapshotSent
    expect(await request(p2, wire.snapshotSent())).toBe("");
    expect(manager.pods.size).toBe(0);
    expect(manager.events.map((e) => e.ev)).toEqual([
      "connectionStarted",
      "add",
      "snapshotDone",
      "connectionLost",
      "connectionStarted",
      "del",
      "snapshotDone",
    ]);
  });

  test("1,000 bad messages: the fd count returns to baseline", async () => {
    const { listener, manager, client } = rig();
    manager.startFail.add("pending");
    let p = await nextConn(listener);
    expect(await request(p, wire.keep("warm"))).toBe("");
    const mnt = openRaw("/proc/self/ns/mnt");
    const file = openRaw(regularFile);
    const ns = openNs();
    const before = sys.openFdCount();
    let reconnects = 0;
    for (let i = 0; i < 1000; i++) {
      const kind = i % 9;
      let nack: string;
      switch (kind) {
        case 0: nack = await request(p, [0xff, 0xff, 0xff, 0xff]); break;
        case 1: nack = await request(p, new Array(65536).fill(0x0a)); break;
        case 2: nack = await request(p, wire.add("f", INFO), file); break;
        case 3: nack = await request(p, wire.add("m", INFO), mnt); break;
        case 4: nack = await request(p, wire.del("d"), ns.fd); break;
        case 5: nack = await request(p, wire.add("n", INFO)); break;
        case 6:
          expect(await request(p, wire.snapshotSent())).toBe("");
          nack = await request(p, wire.snapshotSent());
          break;
        case 7:
          expect(await request(p, wire.snapshotSent())).toBe("");
          nack = await request(p, wire.keep("late"));
          break;
        default:
          nack = await request(p, wire.add("pending", INFO), ns.fd);
      }
      expect(nack).toMatch(kind === 8 ? /^failure to start proxy : / : kind >= 6 ? /^failure to process message : / : /^failure to read message : /);
      if (kind !== 8) {
        await p.eof();
        p.close();
        p = await nextConn(listener);
        reconnects++;
      }
    }
    expect(reconnects).toBe(1000 - 111);
    // the manager holds at most the one pending pod's netns; release it, then count
    manager.closeAll();
    expect(sys.openFdCount()).toBe(before);
    expect(client.connected).toBe(true);
  }, 120_000);
});

describe("ZDS client: start and stop", () => {
  test("no agent yet: logs the connect failure and retries until the agent appears", async () => {
    const { path, client, log } = rig({ listen: false });
    const line = await log.waitFor(/failed to connect to the node agent/);
    expect(line.msg).toBe(`failed to connect to the node agent at ${path}; is the agent running?`);
    expect(line.level).toBe("warn");
    expect(client.connected).toBe(false);
    const listener = RawListener.listen(path);
    cleanups.push(() => listener.close());
    await nextConn(listener);
    await until(() => client.connected);
  });

  test("stop() while retrying, while connected, and during a slow manager call: never hangs", async () => {
    // retrying
    const a = rig({ listen: false });
    await a.log.waitFor(/failed to connect/);
    await a.client.stop();

    // connected and idle: the agent sees EOF
    const b = rig();
    const pb = await nextConn(b.listener);
    await until(() => b.client.connected);
    await b.client.stop();
    await pb.eof();
    expect(b.manager.events.at(-1)).toEqual({ ev: "connectionLost" });

    // inside manager.add: stop() returns without waiting for it; no ack is sent afterwards
    const c = rig();
    c.manager.addDelayMs = 300;
    const pc = await nextConn(c.listener);
    const ns = openNs();
    pc.send(wire.add("slow", INFO), ns.fd);
    await until(() => c.manager.addsStarted > 0, 10_000, "the manager call to begin");
    await c.client.stop();
    expect(c.manager.events.some((e) => e.ev === "add")).toBe(false); // stop did not wait for it
    await c.manager.waitFor((e) => e.ev === "add" && e.uid === "slow");
    await pc.eof(); // connection closed, and no ack was written
    const evs = c.manager.events.map((e) => e.ev);
    expect(evs).toEqual(["connectionStarted", "connectionLost", "add"]);
  });
});
