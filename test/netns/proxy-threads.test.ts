// The proxy's data-plane Worker threads (`proxy.workers` > 1, src/proxy/workers.ts): every thread
// binds every pod's listeners with SO_REUSEPORT, the kernel spreads connections over them, and
// the main thread's admin and metrics cover all threads. Real pods, rules and proxy processes
// (see test/fixtures/proxy-harness.ts); nothing here asserts a timing.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod } from "../helpers/netsim.ts";
import { createProxyEnv, eventually, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const THREADS = 3;

/** Sockets listening on `port` in `pod` (one per proxy thread). */
async function listeners(pod: Pod, port: number): Promise<number> {
  const r = await pod.execOrThrow(["ss", "-H", "-ltn", `sport = :${port}`]);
  return r.stdout.split("\n").filter((l) => l.trim() !== "").length;
}

/** Sum of a counter over all its series in a Prometheus text page. */
function counterSum(page: string, name: string): number {
  let sum = 0;
  for (const line of page.split("\n")) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}

netnsDescribe("proxy: data-plane threads", () => {
  let env: ProxyEnv;
  let A: Pod, B: Pod, E: Pod;
  let p: ProxyProcess;

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
    p = env.startProxy({ args: ["--workers", String(THREADS)] });
    await p.waitReady();
  }, T);

  afterAll(async () => {
    await p?.stop();
    await env?.destroy();
  }, T);

  test("each thread has its own listener in each pod", async () => {
    await eventually(async () => (await listeners(A, 15001)) === THREADS && (await listeners(B, 15006)) === THREADS, 10_000, `${THREADS} listeners per port`);
    expect(await listeners(A, 15006)).toBe(THREADS);
    expect(await listeners(B, 15001)).toBe(THREADS);
    // The admin's views still answer with Worker threads behind them.
    const dump = await p.http("GET", p.admin, "/config_dump");
    expect(dump.status).toBe(200);
    expect(JSON.parse(dump.body).workloads.map((w: { name: string }) => w.name).sort()).toEqual(["client-a", "server-b"]);
    const pods = await p.pods();
    expect(pods.every((x) => x.state === "running" && typeof x.connections === "number")).toBe(true);
  }, T);

  test("connections are spread over every thread; /connections and /metrics cover them all", async () => {
    const before = counterSum((await p.http("GET", p.metricsAddr, "/metrics")).body, "istio_tcp_connections_opened_total");
    const n = 90;
    const r = await env.toolRun(A, ["many", "--host", B.ip, "--port", "5002", "--conns", String(n), "--bytes", "1000"]);
    expect(r).toMatchObject({ ok: n, failed: 0 });
    // Each client connection is two relays (A's outbound, B's inbound); thread i numbers its
    // records i+1, i+1+THREADS, …
    const { recent } = await p.connections();
    const mine = recent.filter((c) => c.originalDst.endsWith(":5002") && c.closeHow === "done");
    expect(mine.length).toBeGreaterThanOrEqual(2 * n);
    const perThread = new Array(THREADS).fill(0);
    for (const c of mine) perThread[(c.id - 1) % THREADS]++;
    console.log(`[threads] relays per thread: ${perThread.join(", ")}`);
    for (const k of perThread) expect(k).toBeGreaterThan(0);
    expect(new Set(recent.map((c) => c.id)).size).toBe(recent.length); // ids unique across threads
    // Both reporters count every relay: the metrics page sums the threads' counters.
    await eventually(async () => counterSum((await p.http("GET", p.metricsAddr, "/metrics")).body, "istio_tcp_connections_opened_total") - before === 2 * n, 10_000, "opened counters summed over threads");
    const bytes = counterSum((await p.http("GET", p.metricsAddr, "/metrics")).body, "istio_tcp_sent_bytes_total");
    expect(bytes).toBeGreaterThanOrEqual(2 * n * 1000);
  }, T);

  test("a deleted pod loses every thread's listeners; add/delete cycles leak no fds", async () => {
    const fds0 = p.fdCount();
    for (let i = 0; i < 10; i++) {
      await env.enroll(E);
      await eventually(async () => (await listeners(E, 15001)) === THREADS, 10_000, `E's listeners (cycle ${i})`);
      await env.unenroll(E);
      await eventually(async () => (await listeners(E, 15001)) === 0 && (await listeners(E, 15006)) === 0, 10_000, `E's listeners gone (cycle ${i})`);
    }
    await eventually(() => p.fdCount() <= fds0, 10_000, `proxy fds back to ${fds0} (now ${p.fdCount()})`);
  }, T);

  test("SIGTERM drains the connections of every thread, then exit 0", async () => {
    const transfers = Array.from({ length: 6 }, () => env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", String(20 << 20), "--chunk-delay-ms", "100"], T)); // ~2 s each
    await eventually(async () => (await p.connections()).live.filter((c) => c.bytesSent > 0).length >= 12, 10_000, "12 live relays");
    const threadsLive = new Set((await p.connections()).live.map((c) => (c.id - 1) % THREADS));
    p.proc.proc.kill("SIGTERM");
    for (const t of await Promise.all(transfers)) {
      expect(t.error).toBeUndefined();
      expect(JSON.parse(t.reply)).toMatchObject({ bytes: 20 << 20, sha256: t.sha256, peer: A.ip });
    }
    expect(await p.proc.exited).toBe(0);
    const drained = p.drainedLine()!;
    expect(drained).toMatchObject({ reset: 0 });
    expect(drained.finished).toBeGreaterThanOrEqual(12);
    console.log(`[threads] drain: ${drained.finished} relays finished on threads ${[...threadsLive].join(",")}`);
  }, T);
});
