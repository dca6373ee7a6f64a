// ZDS between two real processes: an nshub ZDS server (agent side) and nshub ZDS clients (proxy
// side), each a separate `bun` process (test/fixtures/zds-*-main.ts) that prints what it saw as
// JSON lines. Pods are real network namespaces (`ip netns add`), their fds travel over a real
// SOCK_SEQPACKET socket, and the client's netns identities are compared with `stat` of the
// namespace files. Root only.
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { netnsDescribe } from "../helpers/root.ts";

const FIXTURES = join(import.meta.dir, "..", "fixtures");
const FAMILY = "zdst"; // netns names: zdst-<pid>-<rand>-<n>
const T = 60_000;

type Line = Record<string, unknown> & { ev: string };

/** A fixture process: collects its JSON lines, answers `waitFor` and `request`. */
class Fixture {
  readonly lines: Line[] = [];
  readonly proc: Subprocess<"pipe", "pipe", "inherit">;
  #waiters: (() => void)[] = [];
  #nextId = 1;
  #reading: Promise<void>;

  constructor(
    readonly name: string,
    script: string,
    config: unknown,
  ) {
    this.proc = Bun.spawn([process.execPath, join(FIXTURES, script), JSON.stringify(config)], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "inherit",
    });
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of this.proc.stdout) {
      buf += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (text.trim() === "") continue;
        const line = JSON.parse(text) as Line;
        this.lines.push(line);
        if (process.env.ZDS_TEST_LOG) console.log(`${this.name}: ${text}`);
      }
      for (const w of this.#waiters.splice(0)) w();
    }
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Waits (bounded, not a timing assertion) for a line matching `pred`, from index `from`. */
  async waitFor(pred: (l: Line) => boolean, what: string, timeoutMs = 30_000, from = 0): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find(pred);
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0) break;
      await Promise.race([new Promise<void>((r) => this.#waiters.push(r)), Bun.sleep(Math.min(left, 200))]);
    }
    throw new Error(`${this.name}: no line for "${what}" (last lines: ${JSON.stringify(this.lines.slice(-5))})`);
  }

  count(pred: (l: Line) => boolean): number {
    return this.lines.filter(pred).length;
  }

  async request(cmd: Record<string, unknown>, timeoutMs = 30_000): Promise<Line> {
    const id = this.#nextId++;
    this.proc.stdin.write(JSON.stringify({ ...cmd, id }) + "\n");
    this.proc.stdin.flush();
    return this.waitFor((l) => l.ev === "result" && l.id === id, `result of ${String(cmd.op)} #${id}`, timeoutMs);
  }

  kill(): void {
    this.proc.kill("SIGKILL");
  }

  async stop(): Promise<number | undefined> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return undefined;
    const r = await this.request({ op: "stop" });
    await this.proc.exited;
    await this.#reading;
    return r.fds as number;
  }
}

async function run(argv: string[], stdin?: string): Promise<string> {
  const p = Bun.spawn(argv, { stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")} failed (${code}): ${err}`);
  return out;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Deletes namespaces of this test family left behind by runs whose process is gone. */
async function cleanupStale(): Promise<void> {
  let names: string[] = [];
  try {
    names = readdirSync("/var/run/netns");
  } catch {
    return;
  }
  const stale = names.filter((n) => {
    const m = new RegExp(`^${FAMILY}-(\\d+)-`).exec(n);
    return m !== null && !pidAlive(Number(m[1]));
  });
  if (stale.length > 0) await run(["ip", "-batch", "-"], stale.map((n) => `netns del ${n}\n`).join(""));
}

interface Pod {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  netns?: string;
}

netnsDescribe("ZDS between two processes with real network namespaces", () => {
  const prefix = `${FAMILY}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const nsNames = Array.from({ length: 54 }, (_, i) => `${prefix}-${i}`);
  /** netns name → "dev:ino", from stat(1), independent of nshub's code. */
  const statKey = new Map<string, string>();
  let dir: string;
  const fixtures: Fixture[] = [];

  beforeAll(async () => {
    await cleanupStale();
    dir = mkdtempSync(join(tmpdir(), "zds-proc-"));
    await run(["ip", "-batch", "-"], nsNames.map((n) => `netns add ${n}\n`).join(""));
    const out = await run(["stat", "-L", "-c", "%n %d:%i", ...nsNames.map((n) => `/var/run/netns/${n}`)]);
    for (const line of out.trim().split("\n")) {
      const [path, key] = line.split(" ");
      statKey.set(path!.replace("/var/run/netns/", ""), key!);
    }
  }, T);

  afterEach(async () => {
    for (const f of fixtures.splice(0)) {
      try {
        await f.stop();
      } catch {
        f.kill();
      }
    }
  });

  afterAll(async () => {
    try {
      await run(["ip", "-batch", "-"], nsNames.map((n) => `netns del ${n}\n`).join(""));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, T);

  let seq = 0;
  function sockPath(): string {
    return join(dir, `s${++seq}`, "zds.sock");
  }

  /** 50 pods with a netns each (namespaces 0..49) and 2 pods the agent has no netns for. */
  function pods(): Pod[] {
    const list: Pod[] = nsNames.slice(0, 50).map((n, i) => ({
      uid: `uid-${i}`,
      name: `pod-${i}`,
      namespace: i % 2 ? "shop" : "default",
      serviceAccount: `sa-${i % 3}`,
      netns: `/var/run/netns/${n}`,
    }));
    list.push({ uid: "uid-keep-a", name: "lost-a", namespace: "shop", serviceAccount: "sa" });
    list.push({ uid: "uid-keep-b", name: "lost-b", namespace: "shop", serviceAccount: "sa" });
    return list;
  }

  function expectedIdentities(list: Pod[]): Record<string, string> {
    return Object.fromEntries(list.map((p) => [p.uid, p.netns ? statKey.get(p.netns.replace("/var/run/netns/", ""))! : ""]));
  }

  function startServer(extra: Record<string, unknown> = {}): Fixture {
    const f = new Fixture("server", "zds-server-main.ts", { path: sockPath(), pods: pods(), ...extra });
    fixtures.push(f);
    return f;
  }

  function startClient(path: string, extra: Record<string, unknown> = {}): Fixture {
    const f = new Fixture(`client${fixtures.length}`, "zds-client-main.ts", { path, ...extra });
    fixtures.push(f);
    return f;
  }

  const isMgr = (kind: string, uid?: string) => (l: Line) => l.ev === "mgr" && l.kind === kind && (uid === undefined || l.uid === uid);

  test(
    "a snapshot of 50 pods with real netns fds reaches the client process; identities equal the pods'",
    async () => {
      const server = startServer();
      const listening = await server.waitFor((l) => l.ev === "listening", "listening");
      const client = startClient(String(listening.path));
      const done = await client.waitFor(isMgr("snapshotDone"), "client snapshot done");
      expect((done.uids as string[]).length).toBe(52);
      await server.waitFor((l) => l.ev === "snapshotDone", "server snapshot done");

      const state = await client.request({ op: "state" });
      expect(state.identities).toEqual(expectedIdentities(pods()));
      expect(new Set(Object.values(state.identities as Record<string, string>)).size).toBe(51); // 50 distinct + ""
      expect(state.snapshotReceived).toBe(true);

      // what the client's manager saw: 50 adds with the pods' identity and workload info, 2 keeps
      const adds = client.lines.filter(isMgr("add"));
      expect(adds).toHaveLength(50);
      const p7 = adds.find((a) => a.uid === "uid-7")!;
      expect(p7.info).toEqual({ name: "pod-7", namespace: "shop", serviceAccount: "sa-1" });
      expect(p7.key).toBe(statKey.get(nsNames[7]!));
      expect(client.count(isMgr("keep"))).toBe(2);
      // and the server heard 52 successful acks
      const results = server.lines.filter((l) => l.ev === "snapshotResult");
      expect(results).toHaveLength(52);
      expect(results.every((r) => r.error === undefined)).toBe(true);
    },
    T,
  );

  test(
    "reconnect: the client is killed mid-snapshot; a new client receives the full snapshot; no fd leak in the server",
    async () => {
      const server = startServer();
      const listening = await server.waitFor((l) => l.ev === "listening", "listening");
      const path = String(listening.path);
      // Warm-up: one full connection first, so what the server creates once (its poller
      // thread, lazily started runtime threads) exists before the baseline is taken.
      const warm = startClient(path);
      await warm.waitFor(isMgr("snapshotDone"), "warm-up client snapshot done");
      await warm.stop();
      fixtures.splice(fixtures.indexOf(warm), 1);
      await server.waitFor((l) => l.ev === "disconnected" && l.conn === 1, "the warm-up client's disconnect");
      const base = (await server.request({ op: "status" })).fds as number;

      const first = startClient(path, { addDelayMs: 20 });
      await first.waitFor((l) => l.ev === "mgr" && l.kind === "add" && l.uid === "uid-9", "ten adds in the first client");
      first.kill();
      await first.proc.exited;
      const gone = await server.waitFor((l) => l.ev === "disconnected" && l.conn === 2, "the server to notice the killed client");
      expect(String(gone.reason)).toMatch(/proxy closed the connection/);
      expect(server.count((l) => l.ev === "snapshotDone")).toBe(1); // only the warm-up client's

      const second = startClient(path);
      const done = await second.waitFor(isMgr("snapshotDone"), "second client snapshot done");
      expect((done.uids as string[]).length).toBe(52);
      const state = await second.request({ op: "state" });
      expect(state.identities).toEqual(expectedIdentities(pods()));

      const secondFds = await second.stop();
      fixtures.splice(fixtures.indexOf(second), 1);
      await server.waitFor((l) => l.ev === "disconnected" && l.conn === 3, "the second client's disconnect");
      const after = await server.request({ op: "status" });
      expect(after.connections).toBe(0);
      expect(after.fds).toBe(base);
      expect(typeof secondFds).toBe("number");
    },
    T,
  );

  test(
    "two clients at once: Add goes to the newest only, Del to both; when the newest dies, the older gets Adds",
    async () => {
      const server = startServer();
      const listening = await server.waitFor((l) => l.ev === "listening", "listening");
      const path = String(listening.path);
      const older = startClient(path);
      await older.waitFor(isMgr("snapshotDone"), "older snapshot done");
      const newer = startClient(path);
      await newer.waitFor(isMgr("snapshotDone"), "newer snapshot done");
      expect((await server.request({ op: "status" })).connections).toBe(2);

      const olderAdds = older.count(isMgr("add"));
      const add = await server.request({
        op: "add",
        uid: "uid-new",
        name: "new-0",
        namespace: "shop",
        serviceAccount: "sa",
        netns: `/var/run/netns/${nsNames[50]}`,
      });
      expect(add).toMatchObject({ ok: true });
      const got = await newer.waitFor(isMgr("add", "uid-new"), "the add at the newer client");
      expect(got.key).toBe(statKey.get(nsNames[50]!));
      expect(older.count(isMgr("add"))).toBe(olderAdds);
      expect(older.count(isMgr("add", "uid-new"))).toBe(0);

      const del = await server.request({ op: "del", uid: "uid-3" });
      expect(del).toMatchObject({ ok: true });
      await older.waitFor(isMgr("del", "uid-3"), "del at the older client");
      await newer.waitFor(isMgr("del", "uid-3"), "del at the newer client");

      newer.kill();
      await newer.proc.exited;
      await server.waitFor((l) => l.ev === "disconnected", "the newer client's disconnect");
      const add2 = await server.request({
        op: "add",
        uid: "uid-new-2",
        name: "new-1",
        namespace: "shop",
        serviceAccount: "sa",
        netns: `/var/run/netns/${nsNames[51]}`,
      });
      expect(add2).toMatchObject({ ok: true });
      const got2 = await older.waitFor(isMgr("add", "uid-new-2"), "the add at the older client");
      expect(got2.key).toBe(statKey.get(nsNames[51]!));
    },
    T,
  );

  test(
    "a pod whose proxy fails to start is nacked 'failure to start proxy : …' and the connection stays; the server's Add rejects with that text",
    async () => {
      const server = startServer();
      const listening = await server.waitFor((l) => l.ev === "listening", "listening");
      const client = startClient(String(listening.path), { startFail: ["uid-5", "uid-late"] });
      await client.waitFor(isMgr("snapshotDone"), "snapshot done");
      const r5 = await server.waitFor((l) => l.ev === "snapshotResult" && l.uid === "uid-5", "uid-5 result");
      expect(String(r5.error)).toMatch(/^failure to start proxy : failed to bind/);
      const add = await server.request({
        op: "add",
        uid: "uid-late",
        name: "late",
        namespace: "shop",
        serviceAccount: "sa",
        netns: `/var/run/netns/${nsNames[52]}`,
      });
      expect(add).toMatchObject({ ok: false, kind: "nack" });
      expect(String(add.error)).toMatch(/^failure to start proxy : /);
      expect((await server.request({ op: "status" })).connections).toBe(1);
      expect(client.count(isMgr("connectionLost"))).toBe(0);
    },
    T,
  );

  test(
    "no proxy connected: the server's Add rejects with 'no proxy connected', Del resolves",
    async () => {
      const server = startServer();
      await server.waitFor((l) => l.ev === "listening", "listening");
      const add = await server.request({
        op: "add",
        uid: "uid-x",
        name: "x",
        namespace: "shop",
        serviceAccount: "sa",
        netns: `/var/run/netns/${nsNames[53]}`,
      });
      expect(add).toMatchObject({ ok: false, kind: "no-connection", error: "no proxy connected" });
      expect(await server.request({ op: "del", uid: "uid-x" })).toMatchObject({ ok: true });
    },
    T,
  );
});
