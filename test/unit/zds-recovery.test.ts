// How fast a real proxy-side ZdsClient (src/zds/client.ts) gets back to a real ZdsServer
// (src/zds/server.ts) after an agent outage. Every second without a connection, every new pod's
// enrollment fails (CNI error 11), so these are functional bounds, generous on purpose, not
// benchmarks: each would fail by seconds under the old behaviour.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZdsClient, type ZdsBackoff } from "../../src/zds/client.ts";
import { ZdsServer } from "../../src/zds/server.ts";
import { FakeManager } from "../fixtures/zds-fake-manager.ts";
import { LogRecorder, until, warmPoller } from "../fixtures/zds-raw.ts";

let root: string;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zds-recovery-"));
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
  const dir = join(root, `r${++seq}`);
  mkdirSync(dir);
  return join(dir, "zds.sock");
}

function server(path: string, log = new LogRecorder()): ZdsServer {
  const s = new ZdsServer({ path, snapshot: () => [], log: log.log });
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
