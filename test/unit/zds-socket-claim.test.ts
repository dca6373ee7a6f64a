// Taking over a socket path (src/sys/socket-path.ts), as the agent does for its ZDS socket
// (ZdsServer.start) and its event API socket (serveApi): a socket file left by a dead process is
// removed and served; a socket a live process still listens on is left alone and the newcomer
// refuses to start, naming the path. Removing a live socket would leave its server serving the
// clients it has while new ones reach the newcomer (two agents during a rollout with surge).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hono } from "hono";
import type { Server } from "bun";
import { serveApi } from "../../src/agent/api.ts";
import type { Logger } from "../../src/log/logger.ts";
import * as sys from "../../src/sys/index.ts";
import { ZdsServer } from "../../src/zds/server.ts";
import { hex, LogRecorder, RawPeer, warmPoller, wire } from "../fixtures/zds-raw.ts";

let root: string;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "socket-claim-"));
  await warmPoller();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function sockPath(name: string): string {
  const dir = join(root, `d${++seq}`);
  mkdirSync(dir);
  return join(dir, name);
}

/** A socket file whose listener is gone (the process that made it died). */
function staleSocket(path: string, type: number): void {
  sys.closeFd(sys.listenUnix(path, type));
  expect(statSync(path).isSocket()).toBe(true);
}

function zdsServer(path: string, log = new LogRecorder()): ZdsServer {
  const s = new ZdsServer({ path, snapshot: () => [], log: log.log });
  cleanups.push(() => s.stop());
  return s;
}

describe("ZDS socket", () => {
  test("a live agent's socket: a second server refuses to start, naming the path; the first keeps serving new proxies", async () => {
    const path = sockPath("zds.sock");
    const first = zdsServer(path);
    first.start();
    const ino = statSync(path).ino;

    const second = zdsServer(path);
    expect(() => second.start()).toThrow(sys.SocketInUseError);
    expect(() => zdsServer(path).start()).toThrow(`another agent is serving the ZDS socket ${path} (it accepted a connection); refusing to start`);
    expect(statSync(path).ino).toBe(ino); // not removed, not replaced
    await second.stop(); // and stopping the refused one leaves the file alone too
    expect(statSync(path).ino).toBe(ino);

    // A proxy connecting now reaches the first server: hello, then its snapshot.
    const p = RawPeer.connect(path);
    cleanups.push(() => p.close());
    p.send(wire.hello());
    expect(hex((await p.packet()).data)).toBe("1a 00");
    p.send(wire.ack());
    await Bun.sleep(20);
    expect(first.connectionCount()).toBe(1);
  });

  test("a dead agent's socket file is removed and served", async () => {
    const path = sockPath("zds.sock");
    staleSocket(path, sys.SOCK_SEQPACKET);
    const log = new LogRecorder();
    const s = zdsServer(path, log);
    s.start();
    expect(log.find(/removed stale ZDS socket/)).toBeDefined();
    const p = RawPeer.connect(path);
    cleanups.push(() => p.close());
    p.send(wire.hello());
    expect(hex((await p.packet()).data)).toBe("1a 00");
  });
});

describe("API socket", () => {
  const app = () => new Hono().get("/ping", (c) => c.text("pong"));
  const ping = (path: string) => fetch("http://localhost/ping", { unix: path }).then((r) => r.text());
  const lines: string[] = [];
  const record = (level: string) => (msg: string) => void lines.push(`${level}: ${msg}`);
  const log: Logger = {
    enabled: () => true,
    trace: record("trace"),
    debug: record("debug"),
    info: record("info"),
    warn: record("warn"),
    error: record("error"),
    child: () => log,
  };

  function api(path: string): Server<undefined> {
    const s = serveApi(app(), { socketPath: path, socketMode: 0o600 }, log);
    cleanups.push(() => s.stop(true));
    return s;
  }

  test("a live agent's API socket: a second serveApi refuses, naming the path; the first still answers", async () => {
    const path = sockPath("agent.sock");
    api(path);
    expect(await ping(path)).toBe("pong");
    const ino = statSync(path).ino;
    expect(() => api(path)).toThrow(`another agent is serving the API socket ${path} (it accepted a connection); refusing to start`);
    expect(statSync(path).ino).toBe(ino);
    expect(await ping(path)).toBe("pong");
  });

  test("a dead agent's API socket file is removed and served", async () => {
    const path = sockPath("agent.sock");
    staleSocket(path, sys.SOCK_STREAM);
    api(path);
    expect(lines).toContain("info: removed stale API socket");
    expect(await ping(path)).toBe("pong");
  });
});

describe("probeSocketPath", () => {
  test("absent, stale, live; a full backlog and a listener of another type count as live", () => {
    const path = sockPath("x.sock");
    expect(sys.probeSocketPath(path, sys.SOCK_SEQPACKET)).toEqual({ state: "absent" });
    staleSocket(path, sys.SOCK_SEQPACKET);
    expect(sys.probeSocketPath(path, sys.SOCK_SEQPACKET)).toEqual({ state: "stale" });
    rmSync(path);

    // backlog 1, never accepted: connects succeed until the queue is full, then EAGAIN
    const fd = sys.listenUnix(path, sys.SOCK_SEQPACKET, 1);
    const queued: number[] = [];
    cleanups.push(() => [fd, ...queued].forEach(sys.closeFd));
    for (;;) {
      const probe = sys.probeSocketPath(path, sys.SOCK_SEQPACKET);
      expect(probe.state).toBe("live");
      if (probe.state === "live" && probe.how.includes("backlog is full")) break;
      queued.push(sys.connectUnix(path)); // keep one more in the queue
      expect(queued.length).toBeLessThan(10);
    }

    const stream = sockPath("y.sock");
    const sfd = sys.listenUnix(stream, sys.SOCK_STREAM);
    cleanups.push(() => sys.closeFd(sfd));
    expect(sys.probeSocketPath(stream, sys.SOCK_SEQPACKET)).toEqual({ state: "live", how: "a listener of another socket type is on it" });
    expect(() => sys.claimSocketPath(stream, sys.SOCK_SEQPACKET, "ZDS")).toThrow(sys.SocketInUseError);
    expect(existsSync(stream)).toBe(true);
  });
});
