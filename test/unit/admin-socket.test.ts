// Issue 16, defect 10: the proxy's admin API trusted every local user (any of them could quit the
// proxy over loopback TCP). Now the TCP admin serves reads only and the writes are on a unix
// socket only root can use (src/admin/servers.ts serveAdmin, src/admin/admin-socket.ts).
// The servers are the real src/admin servers over a FAKE ProxyView (a stand-in that records
// what it was asked); the real proxy is in test/netns/admin-traffic.test.ts. The tests that run
// a client as `nobody` need root (to switch user) and are skipped without it.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { Registry } from "prom-client";
import { serveAdmin, type AdminServers } from "../../src/admin/servers.ts";
import type { ProxyView } from "../../src/admin/views.ts";
import { FakeProxyView } from "../helpers/fake-proxy-view.ts";

const ROOT = process.getuid?.() === 0;
const SRC = resolve(import.meta.dir, "../../src");

// 0755 and not mkdtemp's 0700: a refusal of `nobody` must come from the socket's own mode.
const dir = mkdtempSync(join(tmpdir(), "nshub-admin-socket-"));
chmodSync(dir, 0o755);
let n = 0;
const sockPath = () => join(dir, `s${++n}`, "proxy-admin.sock");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A GC route like the proxy's (src/proxy/admin-routes.ts), counting its calls. */
function gcExtension(counter: { gc: number }) {
  return { endpoints: [{ method: "POST", path: "/debug/gc", description: "gc" }], routes: (app: import("hono").Hono) => void app.post("/debug/gc", (c) => (counter.gc++, c.json({ rss: 1 }))) };
}

async function call(base: string | { unix: string }, method: string, path: string) {
  const res = typeof base === "string" ? await fetch(new URL(path, base), { method }) : await fetch(`http://localhost${path}`, { method, unix: base.unix });
  return { status: res.status, text: await res.text() };
}

describe("the admin's writes are only on the root-only socket (fake ProxyView stand-in, real servers)", () => {
  let servers: AdminServers | undefined;
  afterEach(() => {
    servers?.stop();
    servers = undefined;
  });

  function start(view: ProxyView, counter = { gc: 0 }, socket = sockPath()): AdminServers {
    servers = serveAdmin({ adminAddress: "127.0.0.1:0", adminSocket: socket, metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, view, {
      registry: new Registry(),
      extend: { admin: [gcExtension(counter)] },
    });
    return servers;
  }

  test("over loopback TCP: POST /quitquitquit, /logging?level=debug, /logging?reset, /debug/gc are 403 naming the socket, and change nothing", async () => {
    const view = new FakeProxyView();
    const counter = { gc: 0 };
    const s = start(view, counter);
    for (const path of ["/quitquitquit", "/logging?level=debug", "/logging?reset", "/debug/gc"]) {
      const r = await call(s.adminUrl, "POST", path);
      expect({ path, status: r.status }).toEqual({ path, status: 403 });
      expect(JSON.parse(r.text)).toMatchObject({ adminSocket: s.adminSocket });
      expect(r.text).toContain(`only on the proxy's admin socket ${s.adminSocket}`);
    }
    for (const method of ["PUT", "DELETE", "PATCH"]) expect((await call(s.adminUrl, method, "/logging?level=debug")).status).toBe(403);
    expect(view.quits).toEqual([]);
    expect(view.level).toBe("info");
    expect(counter.gc).toBe(0);
    // The reads still answer there, POST /logging without a level too (ztunnel's way to read it).
    expect(JSON.parse((await call(s.adminUrl, "GET", "/logging")).text)).toEqual({ level: "info" });
    expect(JSON.parse((await call(s.adminUrl, "POST", "/logging")).text)).toEqual({ level: "info" });
    expect((await call(s.adminUrl, "GET", "/config_dump")).status).toBe(200);
    // The index says where the writes are.
    const res = await fetch(s.adminUrl, { headers: { accept: "application/json" } });
    const index = (await res.json()) as { endpoints: { method: string; path: string; description: string }[] };
    const quit = index.endpoints.find((e) => e.path === "/quitquitquit")!;
    expect(quit.description).toContain(`only on the admin socket ${s.adminSocket}`);
    expect(index.endpoints.find((e) => e.path === "/config_dump")!.description).not.toContain("admin socket");
  });

  test("over the socket: the same writes work; the socket is mode 0600, owned by this process's user (root in a proxy)", async () => {
    const view = new FakeProxyView();
    const counter = { gc: 0 };
    const s = start(view, counter);
    const st = lstatSync(s.adminSocket);
    expect(st.isSocket()).toBe(true);
    expect((statSync(s.adminSocket).mode & 0o777).toString(8)).toBe("600");
    expect(st.uid).toBe(process.getuid!());
    const unix = { unix: s.adminSocket };
    expect(await call(unix, "POST", "/logging?level=debug")).toEqual({ status: 200, text: JSON.stringify({ level: "debug", previous: "info" }, null, 2) + "\n" });
    expect(view.level).toBe("debug");
    expect((await call(unix, "POST", "/logging?reset")).status).toBe(200);
    expect(view.level).toBe("info");
    expect((await call(unix, "POST", "/debug/gc")).status).toBe(200);
    expect(counter.gc).toBe(1);
    expect(await call(unix, "POST", "/quitquitquit")).toEqual({ status: 200, text: "OK: graceful shutdown started\n" });
    expect(view.quits).toEqual(["POST /quitquitquit"]);
    // and the reads
    expect((await call(unix, "GET", "/config_dump")).status).toBe(200);
  });

  test("the socket's directory is created; a stale socket is replaced; a live one (another proxy's) and a non-socket are left alone", async () => {
    const socket = sockPath();
    const first = start(new FakeProxyView(), undefined, socket);
    expect(existsSync(socket)).toBe(true);
    // A second proxy on the same socket: refused, and the first one keeps it.
    const second = new FakeProxyView();
    expect(() => serveAdmin({ adminAddress: "127.0.0.1:0", adminSocket: socket, metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, second, { registry: new Registry() })).toThrow(
      `cannot serve the admin socket on ${socket}: another process (another nshub proxy?) is listening on it`,
    );
    expect((await call({ unix: socket }, "POST", "/logging?level=warn")).status).toBe(200);
    expect(second.level).toBe("info");
    first.stop();
    servers = undefined;
    // A socket left by a proxy that died (SIGKILL: nothing unlinked it, nobody listens): replaced.
    const dead = Bun.spawn([process.execPath, "-e", `Bun.serve({ unix: ${JSON.stringify(socket)}, fetch: () => new Response("") }); console.log("up")`], { stdout: "pipe" });
    await dead.stdout.getReader().read();
    dead.kill("SIGKILL");
    await dead.exited;
    expect(lstatSync(socket).isSocket()).toBe(true);
    const again = start(new FakeProxyView(), undefined, socket);
    expect((await call({ unix: again.adminSocket }, "GET", "/logging")).status).toBe(200);
    // Not a socket: never removed.
    const file = sockPath();
    mkdirSync(dirname(file));
    writeFileSync(file, "mine\n");
    expect(() => serveAdmin({ adminAddress: "127.0.0.1:0", adminSocket: file, metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, new FakeProxyView(), { registry: new Registry() })).toThrow(
      `cannot serve the admin socket on ${file}: refusing to remove ${file}: it exists and is not a socket`,
    );
    expect(readFileSync(file, "utf8")).toBe("mine\n");
  });

  test.skipIf(!ROOT)("as nobody: the socket refuses the connection (permission denied); over TCP the writes are 403; nothing changes", async () => {
    const view = new FakeProxyView();
    const counter = { gc: 0 };
    const s = start(view, counter);
    const asNobody = async (argv: string[]) => {
      const p = Bun.spawn(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", ...argv], { stdout: "pipe", stderr: "pipe" });
      const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      return { out, err, code };
    };
    const viaSocket = await asNobody(["curl", "-sv", "-m", "5", "-X", "POST", "--unix-socket", s.adminSocket, "http://localhost/quitquitquit"]);
    expect(viaSocket.code).toBe(7); // could not connect
    expect(viaSocket.err).toContain("Permission denied");
    for (const path of ["/quitquitquit", "/logging?level=debug", "/debug/gc"]) {
      const r = await asNobody(["curl", "-s", "-m", "5", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", new URL(path, s.adminUrl).href]);
      expect({ path, status: r.out }).toEqual({ path, status: "403" });
    }
    expect(view.quits).toEqual([]);
    expect(view.level).toBe("info");
    expect(counter.gc).toBe(0);
  });
});

// A separate process whose quit() really exits, as the proxy's does: the refusal keeps it running.
const SERVER = (socket: string) => `
import { Registry } from "prom-client";
import { serveAdmin } from "${SRC}/admin/servers.ts";
let level = "info";
const view = {
  workloads: () => [], connections: () => [], config: () => ({}), version: () => ({ version: "test" }),
  readiness: () => ({ ready: true, reason: "ready" }), getLogLevel: () => level, setLogLevel: (l) => { level = l; },
  quit() { setTimeout(() => process.exit(0), 50); },
};
const s = serveAdmin({ adminAddress: "127.0.0.1:0", adminSocket: ${JSON.stringify(socket)}, metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, view, { registry: new Registry() });
console.log(s.adminUrl);
`;

test("process level: POST /quitquitquit over TCP leaves the server process running; over the socket it exits", async () => {
  const socket = sockPath();
  const script = join(dir, "server.ts");
  writeFileSync(script, SERVER(socket));
  const p = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "inherit", cwd: resolve(import.meta.dir, "../..") });
  try {
    const reader = p.stdout.getReader();
    const url = new TextDecoder().decode((await reader.read()).value).trim();
    expect((await call(url, "POST", "/quitquitquit")).status).toBe(403);
    expect((await call(url, "POST", "/logging?level=debug")).status).toBe(403);
    await Bun.sleep(200); // give an (unexpected) exit the time to happen: the process must still answer
    expect(p.exitCode).toBeNull();
    expect(JSON.parse((await call(url, "GET", "/logging")).text)).toEqual({ level: "info" });
    expect((await call({ unix: socket }, "POST", "/logging?level=debug")).status).toBe(200);
    expect(JSON.parse((await call(url, "GET", "/logging")).text)).toEqual({ level: "debug" });
    expect((await call({ unix: socket }, "POST", "/quitquitquit")).status).toBe(200);
    expect(await p.exited).toBe(0);
  } finally {
    p.kill();
  }
});
