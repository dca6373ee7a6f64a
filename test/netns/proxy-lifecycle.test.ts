// The node proxy's lifecycle on a virtual node: pod delete, add/delete cycles without leaks,
// pending pods and readiness, hand-over to a second proxy under load, drain on SIGTERM and
// POST /quitquitquit, and the startup capability check. Each proxy is a separate
// `bun src/main.ts proxy` process inside the node netns, driven by a ZdsServer in the test (the
// agent's job in miniature). Timings are never asserted.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as sys from "../../src/sys/index.ts";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod, SimProcess } from "../helpers/netsim.ts";
import { BUN, MAIN, createProxyEnv, eventually, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;

/** The JSON log lines of a proxy (its stderr). */
function logLines(p: ProxyProcess): Array<Record<string, any>> {
  return p.proc
    .stderr()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l));
}

netnsDescribe("proxy: lifecycle", () => {
  let env: ProxyEnv;
  let A: Pod, B: Pod, E: Pod;

  beforeAll(async () => {
    env = await createProxyEnv();
    A = await env.sim.addPod({ name: "client-a" });
    B = await env.sim.addPod({ name: "server-b" });
    E = await env.sim.addPod({ name: "churn-e" });
    await env.enroll(A);
    await env.enroll(B);
    env.tool(B, ["echo", "--port", "5002"]);
    env.tool(B, ["sink", "--port", "5001"]);
    await B.waitForTcpPort(5002);
    await B.waitForTcpPort(5001);
  }, T);

  afterAll(async () => {
    await env?.destroy();
  }, T);

  /** Starts a proxy and waits until it is ready. */
  async function readyProxy(args: string[] = [], addrs: { admin?: string; readiness?: string; metrics?: string } = {}): Promise<ProxyProcess> {
    const p = env.startProxy({ args, ...addrs });
    await p.waitReady();
    return p;
  }

  /** A long transfer A → B:5001 (sink) in the background: `blocks` MiB, one per `delayMs`. */
  function longTransfer(blocks: number, delayMs: number): Promise<any> {
    return env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", String(blocks << 20), "--chunk-delay-ms", String(delayMs)], T);
  }

  async function waitLive(p: ProxyProcess, n: number): Promise<void> {
    await eventually(async () => (await p.connections()).live.filter((c) => c.bytesSent > 0).length >= n, 10_000, `${n} live connections`);
  }

  test("readiness is 503 until the proxy has the agent's snapshot", async () => {
    const p = env.startProxy({ args: ["--zds-socket", join(env.tmp, "nobody-here.sock")] });
    await eventually(async () => (await p.readiness()).status !== 0, 10_000, "readiness server up");
    const r = await p.readiness();
    expect(r.status).toBe(503);
    expect(r.body).toContain("ZDS");
    await p.stop();
  }, T);

  test("pod delete: its listeners vanish from the pod at once and its connections are reset", async () => {
    const p = await readyProxy();
    try {
      const transfer = longTransfer(200, 50); // ~10 s unless cut
      await waitLive(p, 2);
      await env.unenroll(B); // DelWorkload, then the rules go
      const r = await transfer;
      expect(["ECONNRESET", "EPIPE"]).toContain(r.error);
      const ports = await B.listeningTcpPorts();
      expect(ports).not.toContain(15001);
      expect(ports).not.toContain(15006);
      expect((await p.pods()).map((x) => x.uid)).not.toContain(B.uid);
      const recent = (await p.connections()).recent.filter((c) => c.pod.uid === B.uid && c.originalDst === `${B.ip}:5001`);
      expect(recent.map((c) => c.closeHow)).toContain("deleted");
    } finally {
      await env.enroll(B);
      await p.stop();
    }
  }, T);

  test("200 pod add/delete cycles: the proxy's fd count and RSS return to baseline (±10%)", async () => {
    const p = await readyProxy();
    try {
      const info = { name: E.podName, namespace: E.podNamespace, serviceAccount: "default" };
      const cycle = async (i: number) => {
        const ns = sys.Netns.open(E.netnsPath);
        try {
          await env.zds.addWorkload(`churn-${i}`, info, ns);
        } finally {
          ns.close();
        }
        await env.zds.delWorkload(`churn-${i}`);
      };
      for (let i = 0; i < 100; i++) await cycle(i); // warm-up: JIT, allocator pools
      // Measured after a full GC in the proxy (POST /debug/gc on its admin socket): garbage is not a leak.
      const mem = async () => JSON.parse((await p.control("/debug/gc")).body) as { rss: number; heapUsed: number };
      const m0 = await mem();
      const fd0 = p.fdCount();
      for (let i = 100; i < 300; i++) await cycle(i);
      expect((await E.listeningTcpPorts()).filter((x) => x === 15001 || x === 15006)).toEqual([]);
      const m1 = await mem();
      const fd1 = p.fdCount();
      const rss0 = m0.rss / 1024;
      const rss1 = m1.rss / 1024;
      const mib = (b: number) => (b / 1048576).toFixed(1);
      console.log(`[proxy] 200 add/delete cycles: fds ${fd0} → ${fd1}, RSS ${mib(m0.rss)} → ${mib(m1.rss)} MiB, JS heap ${mib(m0.heapUsed)} → ${mib(m1.heapUsed)} MiB`);
      expect(Math.abs(fd1 - fd0)).toBeLessThanOrEqual(Math.ceil(fd0 * 0.1));
      expect(Math.abs(rss1 - rss0)).toBeLessThanOrEqual(rss0 * 0.1);
    } finally {
      await p.stop();
    }
  }, T);

  test("a pod whose listeners cannot bind stays pending, blocks readiness, and is retried", async () => {
    const F = await env.sim.addPod({ name: "busy-f" });
    // Something else owns 15001 in F (without SO_REUSEPORT): the proxy cannot bind there.
    const squatter = F.spawn(["socat", "TCP-LISTEN:15001,reuseaddr", "-"], { stdin: true });
    await F.waitForTcpPort(15001);
    const p = await readyProxy(["--pending-retry-ms", "200"]);
    try {
      let nack = "";
      await env.enroll(F).catch((e) => (nack = String(e.nack ?? e.message)));
      expect(nack).toStartWith("failure to start proxy");
      const r = await p.readiness();
      expect(r.status).toBe(503);
      expect(r.body).toContain("pending");
      expect(r.body).toContain("busy-f");
      expect((await p.pods()).find((x) => x.uid === F.uid)?.state).toBe("pending");
      await squatter.stop();
      await eventually(async () => (await p.readiness()).status === 200, 10_000, "ready after the retry");
      expect((await p.pods()).find((x) => x.uid === F.uid)?.state).toBe("running");
      expect(await F.listeningTcpPorts()).toContain(15006);
    } finally {
      await env.unenroll(F).catch(() => undefined);
      await env.sim.deletePod(F);
      await p.stop();
    }
  }, T);

  test("hand-over under load: a second proxy takes over, the first drains; no new connection fails", async () => {
    const p1 = await readyProxy(["--drain-deadline-ms", "20000"]);
    const stopFile = join(env.tmp, `loop-stop-${Date.now()}`);
    const loop = env.tool(A, ["loop", "--host", B.ip, "--port", "5002", "--stop-file", stopFile, "--parallel", "8"]);
    let p2: ProxyProcess | undefined;
    try {
      await eventually(async () => (await p1.connections()).recent.some((c) => c.originalDst === `${B.ip}:5002`), 10_000, "loop traffic via p1");
      // The new proxy: same ZDS socket, same in-pod ports (SO_REUSEPORT), its own admin ports.
      p2 = await readyProxy(["--drain-deadline-ms", "20000"], { admin: "127.0.0.1:15100", readiness: "127.0.0.1:15121", metrics: "127.0.0.1:15120" });
      // Like Kubernetes after the new pod is ready: SIGTERM the old one.
      p1.proc.proc.kill("SIGTERM");
      expect(await p1.proc.exited).toBe(0);
      // Keep the loop running on p2 alone for a while.
      const p2Before = (await p2.connections()).recent.length;
      await eventually(async () => (await p2!.connections()).recent.length > p2Before + 200, 20_000, "loop traffic via p2");
      writeFileSync(stopFile, "");
      const summary = await waitLoop(loop);
      console.log(`[proxy] hand-over under load: ${summary.ok} connections, ${summary.failed} failed`);
      expect(summary.errors).toEqual({});
      expect(summary.failed).toBe(0);
      expect(summary.ok).toBeGreaterThan(50);
      expect(logLines(p1).some((l) => l.msg === "drained; exiting")).toBe(true);
    } finally {
      writeFileSync(stopFile, "");
      await loop.stop();
      await p1.stop();
      await p2?.stop();
      rmSync(stopFile, { force: true });
    }
  }, T);

  test("SIGTERM with an open long transfer: new connections are refused, the transfer completes, then exit 0", async () => {
    const p = await readyProxy(["--drain-deadline-ms", "30000"]);
    const transfer = longTransfer(40, 50); // ~2 s
    await waitLive(p, 2);
    p.proc.proc.kill("SIGTERM");
    await eventually(async () => !(await A.listeningTcpPorts()).includes(15001), 5000, "A's listeners closed");
    // No proxy accepts in A any more: a new outbound connection is refused by the kernel.
    const refused = await env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", "10"]);
    expect(refused.error).toBe("ECONNREFUSED");
    const r = await transfer;
    expect(r.error).toBeUndefined();
    expect(JSON.parse(r.reply)).toMatchObject({ bytes: 40 << 20, sha256: r.sha256, peer: A.ip });
    expect(await p.proc.exited).toBe(0);
    const drained = logLines(p).find((l) => l.msg === "drained; exiting");
    expect(drained).toMatchObject({ reset: 0 });
    expect(drained!.finished).toBeGreaterThanOrEqual(2);
  }, T);

  test("drain deadline: connections still open when it expires are reset, then exit 0", async () => {
    const p = await readyProxy(["--drain-deadline-ms", "1000"]);
    const transfer = longTransfer(400, 50); // ~20 s: outlives the deadline
    await waitLive(p, 2);
    p.proc.proc.kill("SIGTERM");
    const r = await transfer;
    expect(["ECONNRESET", "EPIPE"]).toContain(r.error);
    expect(await p.proc.exited).toBe(0);
    // Two relays (A's outbound, B's inbound). With several data-plane threads they may sit on
    // different threads, each with its own deadline: the first reset can end the other relay
    // just before its own thread resets it, which that thread counts as finished.
    const drained = logLines(p).find((l) => l.msg === "drained; exiting")!;
    expect(drained.reset).toBeGreaterThanOrEqual(1);
    expect(drained.reset + drained.finished).toBe(2);
  }, T);

  test("POST /quitquitquit (on the admin socket) drains and exits 0", async () => {
    const p = await readyProxy();
    // The loopback admin refuses it (any local user can reach that one) and the proxy stays up.
    const refused = await p.http("POST", p.admin, "/quitquitquit");
    expect(refused.status).toBe(403);
    expect(refused.body).toContain(p.adminSocket);
    expect((await p.readiness()).status).toBe(200);
    expect(p.proc.running).toBe(true);
    const r = await p.control("/quitquitquit");
    expect(r.status).toBe(200);
    expect(await p.proc.exited).toBe(0);
    expect(logLines(p).some((l) => l.msg === "shutting down: draining" && l.reason === "POST /quitquitquit")).toBe(true);
  }, T);

  test("the startup check names the missing capability", async () => {
    const cases: Array<[string, string]> = [
      ["cap_sys_admin", "CAP_SYS_ADMIN"],
      ["cap_net_admin,cap_net_raw", "CAP_NET_ADMIN"],
    ];
    for (const [drop, named] of cases) {
      const r = await env.sim.node.exec(
        ["capsh", `--drop=${drop}`, "--", "-c", `exec "$0" "$@"`, BUN, MAIN, "proxy", "--config", env.configPath, "--zds-socket", join(env.tmp, "x.sock"), "--admin-address", "127.0.0.1:15200", "--readiness-address", "127.0.0.1:15221", "--metrics-address", "127.0.0.1:15220"],
        { timeoutMs: 30_000 },
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(named);
    }
  }, T);
});

async function waitLoop(loop: SimProcess): Promise<{ ok: number; failed: number; errors: Record<string, number> }> {
  await loop.exited;
  const line = loop
    .stdout()
    .trim()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .pop();
  if (!line) throw new Error(`loop printed nothing: ${loop.stderr()}`);
  return JSON.parse(line);
}
