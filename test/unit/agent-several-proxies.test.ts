// Several proxies on the agent's ZDS socket (docs/zds.md, "Several proxies"): a pod's state is
// that of the proxies serving it. A real Agent (fake dataplane, no root) behind a real ZdsServer
// on a real seqpacket socket, wired as `nshub agent` wires them (src/agent/main.ts), with raw
// peers (test/fixtures/zds-raw.ts) playing the proxies: a good one that acks, and a client that
// nacks everything. The pods' netns is the test's own (the raw peers only receive its fd), put in
// the cache as a CNI ADD leaves a pod before its hand-over: pending, rules in place, netns held.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createAdminApp } from "../../src/agent/admin.ts";
import { Agent } from "../../src/agent/agent.ts";
import { newEntry, setState } from "../../src/agent/pod-entry.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { readStateFile } from "../../src/agent/state.ts";
import type { Logger } from "../../src/log/logger.ts";
import * as sys from "../../src/sys/index.ts";
import { ZdsServer } from "../../src/zds/server.ts";
import { hex, LogRecorder, RawPeer, until, warmPoller } from "../fixtures/zds-raw.ts";
import { fakeDataplane } from "../fixtures/agent-api-stub.ts";

const NACK = "failure to start proxy : misbehaving client";
const UIDS = ["uid-a", "uid-b", "uid-c"];


/** A Logger that keeps its lines (level, message, fields). */
function recordingLogger(lines: { level: string; msg: string; fields?: Record<string, unknown> }[]): Logger {
  const at =
    (level: string) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      lines.push({ level, msg, fields });
    };
  const l: Logger = { enabled: () => true, trace: at("trace"), debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: () => l };
  return l;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** An agent with three pods awaiting their hand-over, and its ZDS server wired as main.ts does. */
async function startNode() {
  await warmPoller();
  const dir = mkdtempSync(join(tmpdir(), "nshub-several-proxies-"));
  const lines: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const stateFile = join(dir, "state.json");
  const agent = new Agent({
    policy: EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } }),
    dataplane: fakeDataplane,
    stateFile,
    procRoot: "/proc",
    log: recordingLogger(lines),
    pendingRetryMs: 600_000, // only the retry a disconnect starts at once
  });
  await agent.rebuild();
  for (const [i, uid] of UIDS.entries()) {
    const e = newEntry({ uid, namespace: "mesh", name: `web-${i}`, serviceAccount: "web", netnsPath: "/proc/self/ns/net", ips: [`10.9.0.${i + 2}`], containerId: `c${i}` }, undefined);
    e.netns = sys.Netns.open("/proc/self/ns/net");
    e.identity = e.netns.identity;
    setState(e, "pending", "rules in place; handing the pod to the proxy");
    agent.pods.set(uid, e);
  }
  const zlog = new LogRecorder();
  const server = new ZdsServer({
    path: join(dir, "run", "zds.sock"),
    ackTimeoutMs: 3000,
    snapshot: () => agent.snapshot(),
    onSnapshotResult: (uid, error, id) => agent.onSnapshotResult(uid, error, id),
    onConnected: (id) => agent.onProxyConnection(id, true),
    onDisconnected: (id) => agent.onProxyConnection(id, false),
    log: zlog.log,
  });
  server.start();
  agent.attachZds(server);
  const admin = createAdminApp({ agent, zdsConnections: () => server.connectionCount(), listening: () => true });
  const peers: RawPeer[] = [];
  cleanups.push(async () => {
    for (const p of peers) p.close();
    await server.stop();
    agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const states = (): Record<string, string> => Object.fromEntries(agent.listPods().map((p) => [p.uid, p.state]));
  const all = (state: string): Record<string, string> => Object.fromEntries(UIDS.map((u) => [u, state]));
  const metric = async () => {
    const text = await (await admin.request("/metrics")).text();
    return Object.fromEntries([...text.matchAll(/^nshub_agent_pods\{state="([a-z-]+)"\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
  };
  const ready = async () => (await admin.request("/readyz")).status;
  const fileStates = (): Record<string, string> => Object.fromEntries(readStateFile(stateFile).map((r) => [r.uid, r.state]));

  /** A proxy connects and says hello. */
  const connect = (): RawPeer => {
    const p = RawPeer.connect(server.path);
    peers.push(p);
    p.send([0x08, 0x01]);
    return p;
  };

  /**
   * Answers requests until SnapshotSent (snapshot) or `count` requests (live): `answer` gives each
   * Add's ack text. Returns the uids of the Adds, in order.
   */
  const serve = async (p: RawPeer, answer: (uid: string) => string, until: { snapshot: true } | { count: number }): Promise<string[]> => {
    const uids: string[] = [];
    for (;;) {
      const { data } = await p.packet();
      if (hex(data) === "1a 00") {
        p.send([0x0a, 0x00]);
        if ("snapshot" in until) return uids;
        throw new Error("unexpected SnapshotSent");
      }
      // WorkloadRequest{add = 1: AddWorkload{uid = 1 …}}: 0a <len> 0a <len> <uid> …
      if (data[0] !== 0x0a || data[2] !== 0x0a) throw new Error(`expected an AddWorkload, got ${hex(data)}`);
      const uid = new TextDecoder().decode(Uint8Array.from(data.slice(4, 4 + data[3]!)));
      uids.push(uid);
      const text = answer(uid);
      p.send(text === "" ? [0x0a, 0x00] : [0x0a, text.length + 2, 0x0a, text.length, ...new TextEncoder().encode(text)]);
      if ("count" in until && uids.length === until.count) return uids;
    }
  };

  return { agent, server, zlog, lines, states, all, metric, ready, fileStates, connect, serve };
}

const ack = () => "";
const nack = () => NACK;

describe("several proxies: a pod's state is that of the proxies serving it", () => {
  test("a client that nacks everything changes no working pod; when the serving proxy leaves, pods are pending, retried, and enrolled by the next good proxy", async () => {
    const n = await startNode();

    // Proxy A takes every pod in its snapshot.
    const a = n.connect();
    expect((await n.serve(a, ack, { snapshot: true })).sort()).toEqual(UIDS);
    await until(() => JSON.stringify(n.states()) === JSON.stringify(n.all("enrolled")), 5000, "pods enrolled by A");
    const before = n.agent.listPods();
    expect(await n.metric()).toEqual({ enrolled: 3, pending: 0, "not-enrolled": 0 });

    // Client B connects and nacks its whole snapshot: A still serves every pod.
    const b = n.connect();
    expect((await n.serve(b, nack, { snapshot: true })).sort()).toEqual(UIDS);
    await until(() => n.zlog.count(/^snapshot sent$/) === 2, 5000, "B's snapshot done");
    expect(n.states()).toEqual(n.all("enrolled"));
    expect(n.agent.listPods()).toEqual(before); // reasons and timestamps too: nothing changed
    expect(await n.metric()).toEqual({ enrolled: 3, pending: 0, "not-enrolled": 0 });
    expect(await n.ready()).toBe(200);
    expect(n.fileStates()).toEqual(n.all("enrolled"));
    // B's nacks are logged and counted on its connection.
    const bId = n.server.connections().at(-1)!.id;
    expect(n.zlog.lines.filter((l) => l.msg === "snapshot: proxy nacked AddWorkload" && l.fields?.conn === bId).map((l) => l.fields?.uid).sort()).toEqual(UIDS);
    expect(n.server.connections().map((c) => c.nacks)).toEqual([0, 3]);
    const kept = n.lines.filter((l) => l.msg.includes(`proxy connection ${bId} did not take it in its snapshot; it stays enrolled, served by connection 1`));
    expect(kept).toHaveLength(3);

    // A leaves: nobody serves the pods. They are pending and retried at once on B, the only
    // proxy left (the newest); B nacks, so they stay pending.
    a.close();
    expect((await n.serve(b, nack, { count: 3 })).sort()).toEqual(UIDS);
    await until(() => n.lines.filter((l) => l.msg === "pod mesh/web-2 pending: failure to start proxy : misbehaving client").length > 0 && n.agent.listPods().every((p) => p.reason.startsWith("no proxy acked")), 5000, "B's retry nacks");
    expect(n.states()).toEqual(n.all("pending"));
    expect(n.agent.listPods().map((p) => p.reason)).toEqual(UIDS.map(() => `no proxy acked the pod: ${NACK}`));
    expect(await n.metric()).toEqual({ enrolled: 0, pending: 3, "not-enrolled": 0 });
    expect(n.fileStates()).toEqual(n.all("pending"));
    expect(n.lines.filter((l) => l.msg.endsWith("pending: the only proxy that served it disconnected"))).toHaveLength(3);
    expect(n.server.connections().map((c) => c.nacks)).toEqual([6]);

    // A good proxy C connects: its snapshot enrolls them again. Nothing more goes to B.
    const c = n.connect();
    expect((await n.serve(c, ack, { snapshot: true })).sort()).toEqual(UIDS);
    await until(() => JSON.stringify(n.states()) === JSON.stringify(n.all("enrolled")), 5000, "pods enrolled by C");
    expect(await n.metric()).toEqual({ enrolled: 3, pending: 0, "not-enrolled": 0 });
    expect(n.fileStates()).toEqual(n.all("enrolled"));
    expect((await b.recv(100)).kind).toBe("timeout");
    expect(await n.ready()).toBe(200);
  });

  test("the only proxy leaves: its pods are pending (no proxy serves them) until the next one acks them", async () => {
    const n = await startNode();
    const a = n.connect();
    await n.serve(a, ack, { snapshot: true });
    await until(() => JSON.stringify(n.states()) === JSON.stringify(n.all("enrolled")), 5000, "pods enrolled by A");
    a.close();
    await until(() => n.server.connectionCount() === 0, 5000, "A gone");
    await until(() => n.agent.listPods().every((p) => p.state === "pending"), 2000, "pods pending");
    expect(n.agent.listPods().map((p) => p.reason)).toEqual(UIDS.map(() => "the proxy that served it disconnected (connection 1); waiting for a proxy to take it"));
    expect(await n.metric()).toEqual({ enrolled: 0, pending: 3, "not-enrolled": 0 });
    expect(n.fileStates()).toEqual(n.all("pending"));
    const next = n.connect();
    expect((await n.serve(next, ack, { snapshot: true })).sort()).toEqual(UIDS);
    await until(() => JSON.stringify(n.states()) === JSON.stringify(n.all("enrolled")), 5000, "pods enrolled by the next proxy");
    expect(n.agent.listPods().map((p) => p.reason)).toEqual(UIDS.map(() => "acked by a proxy in its snapshot"));
  });

  test("hand-over: the new proxy acks its snapshot, the old one leaves; the pods stay enrolled throughout", async () => {
    const n = await startNode();
    const a = n.connect();
    await n.serve(a, ack, { snapshot: true });
    await until(() => JSON.stringify(n.states()) === JSON.stringify(n.all("enrolled")), 5000, "pods enrolled by A");

    // Sample the pods' states on every turn of the event loop while the proxies change.
    const seen = new Set<string>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const s of Object.values(n.states())) seen.add(s);
        await Bun.sleep(0);
      }
    })();
    const c = n.connect();
    expect((await n.serve(c, ack, { snapshot: true })).sort()).toEqual(UIDS);
    await until(() => n.server.connections().every((x) => x.state === "live") && n.server.connectionCount() === 2, 5000, "C live");
    a.close();
    await until(() => n.server.connectionCount() === 1, 5000, "A gone");
    await Bun.sleep(50);
    sampling = false;
    await sampler;

    expect([...seen]).toEqual(["enrolled"]);
    expect(await n.metric()).toEqual({ enrolled: 3, pending: 0, "not-enrolled": 0 });
    expect(n.fileStates()).toEqual(n.all("enrolled"));
    expect((await c.recv(100)).kind).toBe("timeout"); // no retry: C serves them
  });
});
