// `nshub logs-level` (src/cli/logs-level.ts) against REAL servers laid out as the proxy's
// (src/admin/servers.ts serveAdmin): the admin app read-only on loopback TCP, and the whole app
// on a unix socket with mode 0600, both over a FAKE ProxyView (a stand-in holding the level).
// Reading goes over TCP; setting goes over the socket, the only place the proxy takes it
// (issue 16, defect 10). The same command against the real proxy is in
// test/netns/admin-traffic.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createProxyAdminApp } from "../../src/admin/servers.ts";
import { main as logsLevel } from "../../src/cli/logs-level.ts";
import { loadConfig } from "../../src/config/load.ts";
import { capture, closedPort } from "../helpers/cli-io.ts";
import { FakeProxyView } from "../helpers/fake-proxy-view.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const BUN = process.execPath;

const view = new FakeProxyView();
// 0755: the `nobody` test below must be refused by the socket's own mode, not by the directory.
const dir = mkdtempSync(join(tmpdir(), "nshub-cli-logs-level-"));
chmodSync(dir, 0o755);
const socket = join(dir, "proxy-admin.sock");
const noSocket = join(dir, "absent.sock");
let servers: ReturnType<typeof Bun.serve>[] = [];
let admin = "";

beforeAll(() => {
  const tcp = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: createProxyAdminApp(view, [], { writesOnlyOn: socket }).fetch });
  const unix = Bun.serve({ unix: socket, fetch: createProxyAdminApp(view).fetch });
  chmodSync(socket, 0o600); // as the proxy's (src/admin/admin-socket.ts)
  servers = [tcp, unix];
  admin = `127.0.0.1:${tcp.port}`;
});
afterAll(() => {
  for (const s of servers) s.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

describe("nshub logs-level against a running admin server (fake ProxyView stand-in): reads over TCP, sets over the admin socket", () => {
  test("read, set (round trip), reset; --json", async () => {
    let io = capture();
    expect(await logsLevel(["--admin", admin], io)).toBe(0);
    expect(io.stdout).toBe("info\n");
    io = capture();
    expect(await logsLevel(["debug", "--admin", admin, "--admin-socket", socket], io)).toBe(0);
    expect(io.stdout).toBe("log level: info → debug\n");
    expect(view.level).toBe("debug");
    io = capture();
    expect(await logsLevel(["--json", "--admin", admin], io)).toBe(0);
    expect(JSON.parse(io.stdout)).toEqual({ level: "debug" });
    io = capture();
    expect(await logsLevel(["--reset", "--admin", admin, "--admin-socket", socket], io)).toBe(0);
    expect(io.stdout).toBe("log level: debug → info\n");
  });

  test("the TCP admin refuses to set the level (403 naming the socket); the CLI's default socket is proxy.adminSocket's default", async () => {
    const r = await fetch(`http://${admin}/logging?level=debug`, { method: "POST" });
    expect(r.status).toBe(403);
    expect(await r.text()).toContain(socket);
    expect(view.level).toBe("info");
    const io = capture();
    expect(await logsLevel(["--help"], io)).toBe(0);
    const configured = loadConfig({ file: "/dev/null", env: {} }).proxy.adminSocket;
    expect(configured).toBe("/var/run/nshub/proxy-admin.sock");
    expect(io.stdout).toContain(`--admin-socket <path>  proxy admin socket, for setting (default ${configured};`);
  });

  test("no admin socket: while the TCP admin answers, a sentence says to give --admin-socket; with nothing running, that the proxy is not running", async () => {
    let io = capture();
    expect(await logsLevel(["debug", "--admin", admin, "--admin-socket", noSocket], io)).toBe(1);
    expect(io.stderr).toBe(
      `the nshub proxy answers on ${admin}, but nothing listens on its admin socket ${noSocket}, where the log level is set; give the socket it was started with (proxy.adminSocket): nshub logs-level debug --admin-socket <path>\n`,
    );
    const port = closedPort();
    io = capture();
    expect(await logsLevel(["--reset", "--admin", `127.0.0.1:${port}`, "--admin-socket", noSocket], io)).toBe(1);
    expect(io.stderr).toBe(`the nshub proxy is not running (nothing listens on ${noSocket}); start it with: nshub proxy\n`);
    expect(view.level).toBe("info");
  });

  test.skipIf(process.getuid?.() !== 0)("as nobody (bun src/main.ts under setpriv): permission denied on the socket, a sentence saying to run as root, exit 1, level unchanged; reading works", async () => {
    const asNobody = async (...args: string[]) => {
      const p = Bun.spawn(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", BUN, MAIN, "logs-level", ...args, "--admin", admin, "--admin-socket", socket], {
        stdout: "pipe",
        stderr: "pipe",
        stdin: "ignore",
        env: { ...process.env, HOME: "/nonexistent", BUN_INSTALL_CACHE_DIR: join(tmpdir(), "nshub-nobody-cache") },
      });
      const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      return { out, err, code };
    };
    const set = await asNobody("debug");
    expect(set).toEqual({
      code: 1,
      out: "",
      err: `permission denied on the nshub proxy's admin socket ${socket}: only root may change the log level; run as root (sudo nshub logs-level debug). Reading it needs no root: nshub logs-level\n`,
    });
    expect(view.level).toBe("info");
    expect(await asNobody()).toEqual({ code: 0, out: "info\n", err: "" });
  });

  test("a bad level: the proxy's message, exit 2, level unchanged", async () => {
    const io = capture();
    expect(await logsLevel(["loud", "--admin", admin, "--admin-socket", socket], io)).toBe(2);
    expect(io.stderr).toBe('nshub logs-level: unknown log level "loud"; use one of: trace, debug, info, warn, error\n');
    expect(io.stdout).toBe("");
    expect(view.level).toBe("info");
  });
});

