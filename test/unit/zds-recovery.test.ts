// How fast a real proxy-side ZdsClient (src/zds/client.ts) gets back to a real ZdsServer
// (src/zds/server.ts) after an agent outage. Every second without a connection, every new pod's
// enrollment fails (CNI error 11), so these are functional bounds, generous on purpose, not
// benchmarks: each would fail by seconds under the old behaviour.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, watch } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZdsClient, type ZdsBackoff } from "../../src/zds/client.ts";
import { openFdCount } from "../../src/sys/index.ts";
import { ZdsServer } from "../../src/zds/server.ts";
import { FakeManager } from "../fixtures/zds-fake-manager.ts";
import { LogRecorder, until, warmPoller } from "../fixtures/zds-raw.ts";

let root: string;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zds-recovery-"));
  await warmPoller();
  // The client's directory watch uses Bun's one inotify fd, made at the first watch and kept for
  // the process's life: make it now, so fd baselines include it.
  watch(root, { persistent: false }).close();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function sockPath(): string {
  const dir = join(root, `r${++seq}`);
  mkdirSync(dir);
  return join(dir, "zds.sock");
}

function server(path: string, log = new LogRecorder()): ZdsServer {
  const s = new ZdsServer({ path, snapshot: () => [], log: log.log, helloTimeoutMs: 2000 }); // as the agent runs it
  s.start();
  cleanups.push(() => s.stop());
  return s;
}

function client(path: string, backoff?: ZdsBackoff) {
  const log = new LogRecorder();
  const manager = new FakeManager();
  const c = new ZdsClient({ path, manager, log: log.log, backoff });
  c.start();
  cleanups.push(() => manager.closeAll());
  cleanups.push(() => c.stop());
  return { client: c, log, manager };
}

/** Runs an agent outage of `outageMs`; returns how long after the agent is back the proxy has its snapshot. */
async function outage(path: string, c: ReturnType<typeof client>, outageMs: number, during?: () => void): Promise<number> {
  const first = server(path);
  await until(() => c.client.snapshotReceived, 10_000, "the first snapshot");
  await first.stop(); // the agent goes away; its socket file with it
  await until(() => !c.client.connected, 10_000, "the client to notice");
  c.log.clear();
  during?.();
  await Bun.sleep(outageMs);
  const back = Date.now();
  server(path);
  await until(() => c.client.snapshotReceived, 20_000, "the snapshot after the outage");
  return Date.now() - back;
}

describe("ZDS client: reconnect after an agent outage", () => {
  test("default backoff: back within 2 s of the agent after a 6 s outage; the client logs the outage (downMs, attempts)", async () => {
    const path = sockPath();
    const c = client(path); // the proxy's defaults
    const ms = await outage(path, c, 6000);
    console.log(`agent back -> proxy snapshot: ${ms} ms after a 6 s outage`);
    expect(ms).toBeLessThan(2000);
    const hello = c.log.find(/connected to the node agent; hello sent/)!;
    expect(hello.fields?.downMs as number).toBeGreaterThanOrEqual(6000);
    expect(hello.fields?.attempts as number).toBeGreaterThan(1);
    const snap = c.log.find(/snapshot received/)!;
    expect(snap.fields?.downMs as number).toBeGreaterThanOrEqual(hello.fields?.downMs as number);
  }, 30_000);

  test("the socket file reappearing ends the backoff: back within 1 s even with a 30 s backoff", async () => {
    const path = sockPath();
    const c = client(path, { initialMs: 30_000, maxMs: 30_000 });
    const ms = await outage(path, c, 1500);
    console.log(`agent back -> proxy snapshot with a 30 s backoff: ${ms} ms`);
    expect(ms).toBeLessThan(1000);
  }, 30_000);

  test("the socket's directory was gone too: back within 2 s of the agent (the capped backoff, then the watch again)", async () => {
    const path = sockPath();
    const c = client(path);
    const ms = await outage(path, c, 3000, () => rmSync(join(path, ".."), { recursive: true }));
    console.log(`agent back -> proxy snapshot, directory recreated: ${ms} ms`);
    expect(ms).toBeLessThan(2000);
  }, 30_000);
});

/**
 * Another process that opens `n` ZDS connections (blocking connects, as a stuck or buggy client
 * would) and never says hello. It writes "connected <n>", then "closed <k>" each time the server
 * closes one, to a file (no pipe to this process: the fd check counts this process's fds), and
 * exits when all are closed (or after 60 s).
 */
function idleFlood(path: string, n: number): { lines: () => string[]; exited: Promise<number> } {
  const py = `
import socket, selectors, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    socks.append(s)
print("connected", len(socks), flush=True)
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
closed, deadline = 0, time.time() + 60
while closed < n and time.time() < deadline:
    for key, _ in sel.select(1):
        if key.fileobj.recv(1024) == b"":
            sel.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
            print("closed", closed, flush=True)
`;
  const out = join(root, `flood-${++seq}.out`);
  const proc = Bun.spawn(["python3", "-c", py, path, String(n)], { stdin: "ignore", stdout: Bun.file(out), stderr: "inherit" });
  cleanups.push(() => proc.kill());
  return { lines: () => (existsSync(out) ? readFileSync(out, "utf8").split("\n") : []), exited: proc.exited };
}

describe("ZDS server: a flood of connections that never say hello", () => {
  test("66 idle connections (backlog 64): a proxy connecting next has its snapshot within 1 s; the idle ones are closed by the hello deadline; fds back to baseline", async () => {
    const path = sockPath();
    const log = new LogRecorder();
    const s = server(path, log);
    const before = openFdCount();
    const flood = idleFlood(path, 66);
    await until(() => flood.lines().includes("connected 66"), 20_000, "66 idle connections");

    const t0 = Date.now();
    const c = client(path); // the proxy's defaults
    await until(() => c.client.snapshotReceived, 20_000, "the proxy's snapshot");
    const ms = Date.now() - t0;
    console.log(`proxy connect -> snapshot behind 66 idle connections: ${ms} ms`);
    expect(ms).toBeLessThan(1000);

    // Every idle one is closed: the oldest beyond the cap at once, the rest at the hello deadline.
    await until(() => flood.lines().includes("closed 66"), 10_000, "the server to close all 66");
    expect(await flood.exited).toBe(0);
    const stats = s.stats();
    expect(stats.evicted + stats.helloTimeouts).toBe(66);
    expect(stats.evicted).toBeGreaterThanOrEqual(66 - 16);
    expect(stats).toMatchObject({ admitted: 1, waiting: 0 });
    expect(log.find(/too many ZDS connections waiting for their hello \(at most 16\): closing the oldest/)?.level).toBe("warn");
    expect(log.find(/no ZdsHello from the proxy within 2000 ms/)?.level).toBe("warn");
    expect(s.connectionCount()).toBe(1);

    await c.client.stop();
    await until(() => s.connectionCount() === 0, 10_000, "the proxy's disconnect");
    expect(openFdCount()).toBe(before);
  }, 60_000);
});
