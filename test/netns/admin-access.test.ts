// Issue 16, defect 10, against the real proxy: which local user may do what on its admin API.
// `dist/nshub proxy` runs as root in a virtual node's netns with its default admin address
// (127.0.0.1:15000) and its admin socket in a test directory (0755, so that a refusal comes from
// the socket's own mode 0600). No agent: the admin serves without one (readiness stays 503),
// and no pod traffic is needed to show who may quit the proxy. Before the fix, `nobody` could
// stop the proxy with one POST to loopback. Requests are made as an operator or another local
// user would: curl and dist/nshub, as root or under `setpriv` as `nobody`.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertBuilt, eventually, NSHUB } from "../fixtures/agent-harness.ts";
import { createSim, type NetSim, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;
const NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"];
const ENV = { ...process.env, NO_COLOR: "1", NSHUB_CONFIG: undefined };

netnsDescribe("the proxy's admin API: reads for every local user on loopback, writes for root on the admin socket (real proxy)", () => {
  let sim: NetSim;
  let proxy: SimProcess;
  const dir = mkdtempSync(join(tmpdir(), "nshub-admin-access-"));
  chmodSync(dir, 0o755);
  const socket = join(dir, "run", "proxy-admin.sock");

  /** curl inside the node, optionally as another user; status 0 when there was no HTTP answer. */
  async function curl(url: string, opts: { method?: string; unix?: string; as?: string[] } = {}) {
    const argv = [...(opts.as ?? []), "curl", "-sS", "-v", "-m", "5", "-X", opts.method ?? "GET", "-o", "-", "-w", "\n%{http_code}"];
    if (opts.unix) argv.push("--unix-socket", opts.unix);
    const r = await sim.node.exec([...argv, url]);
    const i = r.stdout.lastIndexOf("\n");
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i), code: r.code, stderr: r.stderr };
  }
  const tcp = (path: string, opts: { method?: string; as?: string[] } = {}) => curl(`http://127.0.0.1:15000${path}`, opts);
  const level = async () => (JSON.parse((await tcp("/logging")).body) as { level: string }).level;

  beforeAll(async () => {
    assertBuilt();
    sim = await createSim({ prefix: "nshs-" });
    const config = join(dir, "config.yaml");
    writeFileSync(config, "{}\n");
    proxy = sim.node.spawn([NSHUB, "proxy", "--config", config, "--zds-socket", join(dir, "no-agent.sock"), "--admin-socket", socket, "--log-level", "info"], {
      env: { ...ENV, NSHUB_LOG_FORMAT: "json" },
    });
    await eventually(async () => (await tcp("/logging")).status === 200, "proxy admin up", 20_000);
  }, T);

  afterAll(async () => {
    await proxy?.stop(5_000);
    await sim?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }, T);

  test(
    "the admin socket is made with its directory, mode 0600, owned by root",
    () => {
      const st = lstatSync(socket);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(0);
      expect(lstatSync(join(dir, "run")).mode & 0o777).toBe(0o755);
    },
    T,
  );

  test(
    "as nobody over loopback TCP: POST /quitquitquit, /logging?level=debug, /debug/gc are 403 naming the socket; the proxy keeps running at level info; reads are answered",
    async () => {
      for (const path of ["/quitquitquit", "/logging?level=debug", "/logging?reset", "/debug/gc"]) {
        const r = await tcp(path, { method: "POST", as: NOBODY });
        expect({ path, status: r.status }).toEqual({ path, status: 403 });
        expect(JSON.parse(r.body)).toMatchObject({ adminSocket: socket });
      }
      await Bun.sleep(300); // room for a shutdown that must not happen; the checks below are on state, not time
      expect(proxy.running).toBe(true);
      expect(proxy.stderr()).not.toContain("shutting down");
      expect(await level()).toBe("info");
      for (const path of ["/", "/config_dump", "/logging", "/pods", "/connections"]) expect({ path, status: (await tcp(path, { as: NOBODY })).status }).toEqual({ path, status: 200 });
    },
    T,
  );

  test(
    "as nobody on the admin socket: permission denied (curl cannot connect); nshub logs-level debug says to run as root, exit 1; reading the level works",
    async () => {
      const r = await curl("http://localhost/quitquitquit", { method: "POST", unix: socket, as: NOBODY });
      expect(r.status).toBe(0);
      expect(r.code).toBe(7); // curl: could not connect
      expect(r.stderr).toContain("Permission denied");
      expect(proxy.running).toBe(true);

      const set = await sim.node.exec([...NOBODY, NSHUB, "logs-level", "debug", "--admin-socket", socket], { env: ENV, timeoutMs: 20_000 });
      expect({ code: set.code, stdout: set.stdout, stderr: set.stderr }).toEqual({
        code: 1,
        stdout: "",
        stderr: `permission denied on the nshub proxy's admin socket ${socket}: only root may change the log level; run as root (sudo nshub logs-level debug). Reading it needs no root: nshub logs-level\n`,
      });
      expect(await level()).toBe("info");
      expect(await sim.node.exec([...NOBODY, NSHUB, "logs-level"], { env: ENV, timeoutMs: 20_000 })).toMatchObject({ code: 0, stdout: "info\n" });
    },
    T,
  );

  test(
    "as root on the admin socket: nshub logs-level debug sets it, POST /debug/gc answers memory figures, POST /quitquitquit stops the proxy (exit 0)",
    async () => {
      const set = await sim.node.exec([NSHUB, "logs-level", "debug", "--admin-socket", socket], { env: ENV, timeoutMs: 20_000 });
      expect({ code: set.code, stdout: set.stdout }).toEqual({ code: 0, stdout: "log level: info → debug\n" });
      expect(await level()).toBe("debug");
      const gc = await curl("http://localhost/debug/gc", { method: "POST", unix: socket });
      expect(gc.status).toBe(200);
      expect((JSON.parse(gc.body) as { rss: number }).rss).toBeGreaterThan(0);
      const quit = await curl("http://localhost/quitquitquit", { method: "POST", unix: socket });
      expect(quit.status).toBe(200);
      expect(await proxy.exited).toBe(0);
    },
    T,
  );
});
