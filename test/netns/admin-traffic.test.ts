// Issue 6's done criteria on a virtual node with the real daemons: `dist/nshub agent` and
// `dist/nshub proxy` as separate processes in the node's netns, nshub-cni chained into the CNI
// config (pods in namespace "mesh" are enrolled, "other" is not), default addresses (proxy admin
// 127.0.0.1:15000, metrics 0.0.0.0:15020, readiness 0.0.0.0:15021, agent admin 127.0.0.1:15010);
// the proxy's admin socket (where its writes are: issue 16, defect 10) is in a test directory,
// never the default /var/run/nshub/proxy-admin.sock that a proxy of the host may hold.
//
// Traffic: mesh/client → mesh/server:7070, one connection that sends exactly N bytes, is held
// open (both legs checked live in /config_dump and the CLI), then half-closes; the server answers
// exactly M bytes and half-closes. The proxy sees it twice: client's outbound leg
// (reporter=source) and server's inbound leg (reporter=destination); each must count exactly N
// received and M sent. Everything is read the way an operator would: curl and dist/nshub inside
// the node's netns. No timing is asserted (waits are bounded polls for eventual state).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import type { ConfigDump } from "../../src/admin/config-dump.ts";
import { parsePrometheus, sumOf, type Sample } from "../../src/demo/observe.ts";
import { identityKey, netnsIdentityOfPath } from "../../src/sys/index.ts";
import { AgentPaths, assertBuilt, eventually, NSHUB, startAgent } from "../fixtures/agent-harness.ts";
import { createSim, run, type NetSim, type Pod, type SimNamespace, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 90_000;
const EXCHANGE = resolve(import.meta.dir, "../fixtures/exact-exchange.ts");
const BUN = process.execPath;
/** Client → server bytes and server → client bytes: odd sizes, several socket buffers each. */
const N = 1_234_567;
const M = 654_321;
const PORT = 7070;
const ENV = { ...process.env, NO_COLOR: "1", NSHUB_CONFIG: undefined };
const NOT_RUNNING = "the nshub proxy is not running (nothing listens on 127.0.0.1:15000); start it with: nshub proxy\n";
const ADMIN_DIR = mkdtempSync(join(tmpdir(), "nshub-admin-traffic-"));
const ADMIN_SOCKET = join(ADMIN_DIR, "proxy-admin.sock");

interface Http {
  status: number;
  body: string;
  /** curl's exit code: 0, or 7 (could not connect), 56 (reset), … */
  code: number;
  stderr: string;
}

/** curl inside `ns`; status 0 when there was no HTTP answer. */
async function curl(ns: SimNamespace, url: string, opts: { method?: string; accept?: string; unix?: string } = {}): Promise<Http> {
  const argv = ["curl", "-sS", "-m", "5", "-X", opts.method ?? "GET", "-o", "-", "-w", "\n%{http_code}"];
  if (opts.accept) argv.push("-H", `accept: ${opts.accept}`);
  if (opts.unix) argv.push("-v", "--unix-socket", opts.unix);
  const r = await ns.exec([...argv, url]);
  const i = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(i + 1)) || 0, body: i >= 0 ? r.stdout.slice(0, i) : r.stdout, code: r.code, stderr: r.stderr };
}

/**
 * `promtool check metrics` (Prometheus' own parser and linter) on a scrape. The text goes through
 * a file and a shell redirection: a Uint8Array stdin would leave a GC-owned memfd in this process.
 */
async function promtool(text: string, dir: string): Promise<{ code: number; output: string }> {
  const file = join(dir, `scrape-${Date.now()}-${Math.random().toString(36).slice(2)}.prom`);
  writeFileSync(file, text);
  const r = await run(["sh", "-c", 'exec promtool check metrics < "$0"', file]);
  return { code: r.code, output: (r.stdout + r.stderr).trim() };
}

netnsDescribe("admin API, metrics, access log and CLI against the real agent and proxy with traffic", () => {
  let sim: NetSim;
  let paths: AgentPaths;
  let agent: SimProcess;
  let proxy: SimProcess;
  let client: Pod, server: Pod, outsider: Pod;
  let serverProc: SimProcess;
  let clientLocal = ""; // the client's ip:port of the exchange (source of the outbound leg)
  let hopLocal = ""; // the proxy's upstream socket in the client pod (source of the inbound leg: client IP, its own port)

  /** dist/nshub <args> inside the node (where the daemons' loopback is). */
  const nshub = (...args: string[]) => sim.node.exec([NSHUB, ...args], { env: ENV, timeoutMs: 20_000 });
  const admin = (path: string, opts?: { method?: string; accept?: string }) => curl(sim.node, `http://127.0.0.1:15000${path}`, opts);
  /** The admin socket: the whole API, the writes included (root only). */
  const control = (path: string, opts: { method?: string } = {}) => curl(sim.node, `http://localhost${path}`, { method: "POST", ...opts, unix: ADMIN_SOCKET });
  const dump = async () => JSON.parse((await admin("/config_dump")).body) as ConfigDump;
  const scrape = async (path = "/metrics"): Promise<{ text: string; samples: Sample[] }> => {
    const r = await curl(sim.node, `http://127.0.0.1:15020${path}`);
    expect(r.status).toBe(200);
    return { text: r.body, samples: parsePrometheus(r.body) };
  };
  const idOf = (p: Pod) => identityKey(netnsIdentityOfPath(p.netnsPath));
  const logLines = () =>
    proxy
      .stderr()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  beforeAll(async () => {
    assertBuilt();
    paths = new AgentPaths({ namespaces: ["mesh"] });
    sim = await createSim({ prefix: "nsha-", plugins: [paths.plugin] });
    agent = await startAgent(sim, paths);
    // The proxy before any enrolled pod: enrollment fails closed while no proxy is connected.
    proxy = sim.node.spawn([NSHUB, "proxy", "--config", paths.config, "--zds-socket", paths.zdsSocket, "--admin-socket", ADMIN_SOCKET, "--log-level", "info"], {
      env: { ...ENV, NSHUB_LOG_FORMAT: "json" },
    });
    await eventually(async () => (await curl(sim.node, "http://127.0.0.1:15021/healthz/ready")).status === 200, "proxy ready", 20_000);
    client = await sim.addPod({ name: "client", namespace: "mesh" });
    server = await sim.addPod({ name: "server", namespace: "mesh" });
    outsider = await sim.addPod({ name: "outsider", namespace: "other" });
    serverProc = server.spawn([BUN, EXCHANGE, "server", "--port", String(PORT), "--reply-bytes", String(M)]);
    await serverProc.waitForOutput(/"listening"/, 20_000);
  }, T);

  afterAll(async () => {
    await proxy?.stop(5_000);
    await agent?.stop(5_000);
    await sim?.destroy();
    paths?.cleanup();
    rmSync(ADMIN_DIR, { recursive: true, force: true });
    // The CNI runs (stdin configs) leave GC-owned memfds in this process; collect them now so
    // that the next test file's fd counts do not see them vanish mid-test.
    Bun.gc(true);
  }, T);

  test(
    "before traffic: GET / lists the endpoints, /healthz/ready is 200, /config_dump has both pods Up with listeners, IPs, netns, config and version",
    async () => {
      const html = await admin("/");
      expect(html.status).toBe(200);
      for (const p of ["/config_dump", "/logging", "/quitquitquit", "/pods", "/connections", "/debug/gc"]) expect(html.body).toContain(p);
      const index = JSON.parse((await admin("/", { accept: "application/json" })).body) as { endpoints: { method: string; path: string }[] };
      expect(index.endpoints.map((e) => `${e.method} ${e.path.replace(/\?.*/, "")}`)).toEqual(
        expect.arrayContaining(["GET /", "GET /config_dump", "GET /logging", "POST /logging", "POST /quitquitquit", "GET /pods", "GET /connections", "POST /debug/gc"]),
      );
      expect(await curl(sim.node, "http://127.0.0.1:15021/healthz/ready")).toMatchObject({ status: 200, body: "ready\n" });

      const d = await dump();
      expect(d.workloads.map((w) => `${w.namespace}/${w.name}`).sort()).toEqual(["mesh/client", "mesh/server"]);
      for (const pod of [client, server]) {
        const w = d.workloads.find((x) => x.uid === pod.uid)!;
        expect(w).toMatchObject({ name: pod.podName, namespace: "mesh", serviceAccount: "default", state: "Up", protocol: "TCP", netns: idOf(pod), workloadIps: [pod.ip] });
        expect(w.listeners).toEqual([
          { kind: "outbound", address: "0.0.0.0", port: 15001 },
          { kind: "inbound", address: "0.0.0.0", port: 15006 },
        ]);
        expect(w.connections).toEqual({ inbound: 0, outbound: 0 });
        expect(d.workloadState[pod.uid]).toEqual({ state: "Up", info: { name: pod.podName, namespace: "mesh", serviceAccount: "default" }, connections: { inbound: [], outbound: [] } });
      }
      expect(d.workloads.some((w) => w.uid === outsider.uid)).toBe(false);
      const cfg = d.config as { logLevel: string; proxy: Record<string, unknown> };
      expect(cfg.logLevel).toBe("info");
      expect(cfg.proxy).toMatchObject({ zdsSocket: paths.zdsSocket, adminAddress: "127.0.0.1:15000", adminSocket: ADMIN_SOCKET, metricsAddress: "0.0.0.0:15020", readinessAddress: "0.0.0.0:15021", outboundPort: 15001, inboundPort: 15006 });
      expect(d.version).toMatchObject({ version: pkg.version, bun: Bun.version });

      const { samples } = await scrape();
      expect(sumOf(samples, "workload_manager_active_proxies")).toBe(2);
      expect(sumOf(samples, "workload_manager_pending_proxies")).toBe(0);
      expect(sumOf(samples, "workload_manager_proxies_started_total")).toBe(2);
      expect(sumOf(samples, "workload_manager_proxies_stopped_total")).toBe(0);
      expect(sumOf(samples, "istio_tcp_connections_opened_total")).toBe(0);
      expect(sumOf(samples, "istio_build", { component: "nshub-proxy", tag: pkg.version })).toBe(1);
      for (const name of ["process_open_fds", "process_max_fds", "process_resident_memory_bytes", "nshub_event_loop_lag_max_seconds"]) {
        expect(samples.some((s) => s.name === name)).toBe(true);
      }
    },
    T,
  );

  test(
    "a connection held open: both legs live in /config_dump (source, original and actual destination, bytes, age), in nshub connections/pods/status, and counted",
    async () => {
      const holdFile = join(paths.dir, "release");
      const c = client.spawn([BUN, EXCHANGE, "client", "--host", server.ip, "--port", String(PORT), "--bytes", String(N), "--hold-file", holdFile]);
      try {
        clientLocal = JSON.parse((await c.waitForOutput(/\{"event":"sent".*\}/, 20_000))[0]).local;
        expect(clientLocal.startsWith(`${client.ip}:`)).toBe(true);
        // Both legs relayed all N bytes (eventual state; the client is still holding its side open).
        await eventually(async () => {
          const st = (await dump()).workloadState;
          return st[client.uid]?.connections.outbound[0]?.bytesSent === N && st[server.uid]?.connections.inbound[0]?.bytesSent === N;
        }, "both legs relayed N bytes");
        // The outbound leg's upstream socket (opened by the proxy inside the client pod, from the
        // client's IP) is the client the server pod's inbound leg sees.
        const records = JSON.parse((await admin("/connections")).body) as { live: Array<{ direction: string; upstreamLocal: string | null }> };
        hopLocal = records.live.find((r) => r.direction === "outbound")!.upstreamLocal!;
        expect(hopLocal.startsWith(`${client.ip}:`)).toBe(true);
        const d = await dump();
        const dst = `${server.ip}:${PORT}`;
        const out = d.workloadState[client.uid]!.connections;
        const inb = d.workloadState[server.uid]!.connections;
        expect(out.inbound).toEqual([]);
        expect(inb.outbound).toEqual([]);
        expect(out.outbound).toHaveLength(1);
        expect(inb.inbound).toHaveLength(1);
        for (const [conn, src] of [[out.outbound[0]!, clientLocal], [inb.inbound[0]!, hopLocal]] as const) {
          expect(conn).toMatchObject({ src, originalDst: dst, actualDst: dst, protocol: "TCP", state: "open", bytesSent: N, bytesReceived: 0 });
          expect(conn.ageSeconds).toBeGreaterThanOrEqual(0);
          expect(Number.isNaN(Date.parse(conn.startedAt))).toBe(false);
        }
        expect(d.workloads.find((w) => w.uid === client.uid)!.connections).toEqual({ inbound: 0, outbound: 1 });
        expect(d.workloads.find((w) => w.uid === server.uid)!.connections).toEqual({ inbound: 1, outbound: 0 });

        // Exact bytes already while open (pending bytes are flushed at scrape time).
        const { samples } = await scrape();
        for (const reporter of ["source", "destination"]) {
          expect(sumOf(samples, "istio_tcp_connections_opened_total", { reporter })).toBe(1);
          expect(sumOf(samples, "istio_tcp_connections_closed_total", { reporter })).toBe(0);
          expect(sumOf(samples, "istio_tcp_received_bytes_total", { reporter })).toBe(N);
          expect(sumOf(samples, "istio_tcp_sent_bytes_total", { reporter })).toBe(0);
        }

        // nshub connections --json and the table
        const cj = await nshub("connections", "--json");
        expect(cj.code).toBe(0);
        const rows = JSON.parse(cj.stdout) as Array<Record<string, any>>;
        expect(rows.map((r) => [`${r.pod.namespace}/${r.pod.name}`, r.direction, r.source, r.originalDst, r.actualDst, r.bytesSent, r.bytesReceived, r.state]).sort()).toEqual([
          ["mesh/client", "outbound", clientLocal, dst, dst, N, 0, "open"],
          ["mesh/server", "inbound", hopLocal, dst, dst, N, 0, "open"],
        ]);
        const ct = await nshub("connections");
        expect(ct.code).toBe(0);
        expect(ct.stdout).toMatch(/^POD\s+DIR\s+SOURCE\s+ORIGINAL DST\s+ACTUAL DST/);
        expect(ct.stdout).toMatch(new RegExp(`mesh/client\\s+out\\s+${clientLocal}\\s+${dst}\\s+${dst}\\s+1\\.2 MiB\\s+0 B`));
        expect(ct.stdout).toMatch(new RegExp(`mesh/server\\s+in\\s+${hopLocal}\\s+${dst}\\s+${dst}\\s+1\\.2 MiB\\s+0 B`));
        // --admin / --agent-admin point at the same daemons explicitly
        const explicit = await nshub("connections", "--json", "--admin", "http://127.0.0.1:15000");
        expect(JSON.parse(explicit.stdout)).toHaveLength(2);
        expect((await nshub("status", "--admin", "127.0.0.1:15000", "--agent-admin", "127.0.0.1:15010")).code).toBe(0);
        const only = JSON.parse((await nshub("connections", "--json", "--pod", "mesh/server")).stdout) as Array<Record<string, any>>;
        expect(only.map((r) => r.direction)).toEqual(["inbound"]);

        // nshub pods --json and the table
        const pj = await nshub("pods", "--json");
        expect(pj.code).toBe(0);
        const pods = JSON.parse(pj.stdout) as Array<Record<string, any>>;
        expect(pods.map((p) => [`${p.namespace}/${p.name}`, p.uid, p.ips, p.state, p.netns, p.listeners.map((l: any) => l.port), p.connections])).toEqual([
          ["mesh/client", client.uid, [client.ip], "Up", idOf(client), [15001, 15006], { inbound: 0, outbound: 1 }],
          ["mesh/server", server.uid, [server.ip], "Up", idOf(server), [15001, 15006], { inbound: 1, outbound: 0 }],
        ]);
        const pt = await nshub("pods");
        expect(pt.code).toBe(0);
        expect(pt.stdout).toMatch(new RegExp(`mesh/client\\s+${client.uid}\\s+${client.ip}\\s+Up\\s+outbound:15001 inbound:15006\\s+1 \\(0 in, 1 out\\)`));
        expect(pt.stdout).toMatch(new RegExp(`mesh/server\\s+${server.uid}\\s+${server.ip}\\s+Up\\s+outbound:15001 inbound:15006\\s+1 \\(1 in, 0 out\\)`));

        // nshub status --json and the table: both daemons, readiness, pod and connection counts
        const sj = await nshub("status", "--json");
        expect(sj.code).toBe(0);
        const status = JSON.parse(sj.stdout);
        expect(status.agent).toMatchObject({ address: "127.0.0.1:15010", running: true, ready: true, pods: { total: 3, byState: { enrolled: 2, pending: 0, "not-enrolled": 1 } } });
        expect(status.proxy).toMatchObject({
          address: "127.0.0.1:15000",
          running: true,
          ready: true,
          version: pkg.version,
          pods: { total: 2, byState: { Up: 2, Pending: 0 } },
          connections: { inbound: 1, outbound: 1 },
        });
        const st = await nshub("status");
        expect(st.code).toBe(0);
        expect(st.stdout).toMatch(/agent\s+127\.0\.0\.1:15010\s+running\s+yes\s+2 enrolled, 1 not-enrolled/);
        expect(st.stdout).toMatch(new RegExp(`proxy\\s+127\\.0\\.0\\.1:15000\\s+running\\s+yes\\s+2 Up\\s+2 \\(1 in, 1 out\\)\\s+${pkg.version.replaceAll(".", "\\.")}`));
      } finally {
        writeFileSync(holdFile, "");
        await c.exited;
      }
      const result = JSON.parse(c.stdout().trim().split("\n").pop()!);
      expect(result).toEqual({ sent: N, received: M });
    },
    T,
  );

  test(
    "after both half-closes: istio_tcp_* match the bytes exactly for both reporters, with workload labels; /stats/prometheus is the same; one access-log line per leg",
    async () => {
      await serverProc.waitForOutput(/"replied"/, 10_000);
      expect(JSON.parse(serverProc.stdout().trim().split("\n").pop()!)).toMatchObject({ received: N, replied: M });
      await eventually(async () => (await dump()).workloadState[client.uid]!.connections.outbound.length === 0, "connections closed");
      await eventually(async () => (await dump()).workloadState[server.uid]!.connections.inbound.length === 0, "connections closed");

      const { samples } = await scrape();
      const labels = {
        source: { source_workload: "client", source_workload_namespace: "mesh", destination_workload: "server", destination_workload_namespace: "mesh", response_flags: "-" },
        destination: { source_workload: "client", source_workload_namespace: "mesh", destination_workload: "server", destination_workload_namespace: "mesh", response_flags: "-" },
      };
      for (const reporter of ["source", "destination"] as const) {
        const where = { reporter, ...labels[reporter], request_protocol: "tcp", connection_security_policy: "unknown" };
        expect(sumOf(samples, "istio_tcp_connections_opened_total", where)).toBe(1);
        expect(sumOf(samples, "istio_tcp_connections_closed_total", where)).toBe(1);
        expect(sumOf(samples, "istio_tcp_received_bytes_total", where)).toBe(N);
        expect(sumOf(samples, "istio_tcp_sent_bytes_total", where)).toBe(M);
        // and nothing else was counted for this reporter
        expect(sumOf(samples, "istio_tcp_received_bytes_total", { reporter })).toBe(N);
        expect(sumOf(samples, "istio_tcp_sent_bytes_total", { reporter })).toBe(M);
      }
      expect(sumOf(samples, "istio_tcp_connections_failed_total")).toBe(0);
      expect(sumOf(samples, "nshub_connection_failures_total")).toBe(0);
      const traffic = (s: Sample[]) => s.filter((x) => x.name.startsWith("istio_tcp_") || x.name.startsWith("workload_manager_"));
      expect(traffic((await scrape("/stats/prometheus")).samples)).toEqual(traffic(samples));

      // Access log: bytes from the enrolled pod's side (outbound: the client; inbound: the server).
      await eventually(() => logLines().filter((l) => l.msg === "connection complete").length >= 2, "two access-log lines");
      const access = logLines().filter((l) => l.msg === "connection complete" && (l["src.addr"] === clientLocal || l["src.addr"] === hopLocal));
      expect(access.map((l) => [l.scope, l.direction, l["dst.addr"], l.bytes_sent, l.bytes_recv, l.reason]).sort()).toEqual([
        ["access", "inbound", `${server.ip}:${PORT}`, M, N, "done"],
        ["access", "outbound", `${server.ip}:${PORT}`, N, M, "done"],
      ]);
      for (const l of access) {
        expect(l).toMatchObject({ "src.workload": "client", "src.namespace": "mesh", "dst.workload": "server", "dst.namespace": "mesh" });
        expect(l.duration).toMatch(/^\d+ms$/);
      }
      expect(access.find((l) => l.direction === "outbound")!["src.addr"]).toBe(clientLocal);
      expect(access.find((l) => l.direction === "inbound")!["src.addr"]).toBe(hopLocal);
    },
    T,
  );

  test(
    "the admin cannot be reached from a pod (node bridge IP or the pod's own 127.0.0.1), enrolled or not; from the node's loopback it can",
    async () => {
      const gw = sim.node.gateway;
      const before = (await scrape()).samples;
      for (const pod of [outsider, client]) {
        const viaNode = await curl(pod, `http://${gw}:15000/config_dump`);
        expect(viaNode.status).toBe(0);
        expect(viaNode.code).not.toBe(0);
        const viaLoopback = await curl(pod, "http://127.0.0.1:15000/config_dump");
        expect(viaLoopback.status).toBe(0);
        expect(viaLoopback.code).toBe(7); // the pod's own loopback: nothing listens
        const quit = await curl(pod, `http://${gw}:15000/quitquitquit`, { method: "POST" });
        expect(quit.status).toBe(0);
        // the path to the node works: metrics and readiness are on the wildcard address
        expect((await curl(pod, `http://${gw}:15020/metrics`)).status).toBe(200);
        expect((await curl(pod, `http://${gw}:15021/healthz/ready`)).status).toBe(200);
      }
      // Not enrolled: refused by the node's kernel (nothing listens on the bridge IP).
      expect((await curl(outsider, `http://${gw}:15000/config_dump`)).code).toBe(7);
      expect(proxy.running).toBe(true);
      expect((await admin("/config_dump")).status).toBe(200);
      const ss = (await sim.node.execOrThrow(["ss", "-ltnH"])).stdout;
      expect(ss).toMatch(/\s127\.0\.0\.1:15000\s/);
      expect(ss).toMatch(/\s127\.0\.0\.1:15010\s/);

      // The enrolled pod's attempt went through its proxy, whose connect from the pod was refused:
      // counted as a failed outbound connection (response_flags CONNECT).
      const after = (await scrape()).samples;
      const failed = (s: Sample[]) => sumOf(s, "istio_tcp_connections_failed_total", { reporter: "source", source_workload: "client", response_flags: "CONNECT" });
      expect(failed(after) - failed(before)).toBe(2); // GET /config_dump and POST /quitquitquit to the bridge IP
      expect(sumOf(after, "nshub_connection_failures_total", { direction: "outbound", reason: "connect_failed" })).toBe(2);
    },
    T,
  );

  test(
    "the full /metrics of the proxy and of the agent pass promtool check metrics",
    async () => {
      const p = await scrape();
      for (const name of ["istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total", "istio_tcp_connections_failed_total", "workload_manager_active_proxies", "process_open_fds"]) {
        expect(p.text).toContain(`# TYPE ${name} `);
      }
      expect(await promtool(p.text, paths.dir)).toEqual({ code: 0, output: "" });
      expect(await promtool((await scrape("/stats/prometheus")).text, paths.dir)).toEqual({ code: 0, output: "" });

      const a = await curl(sim.node, "http://127.0.0.1:15010/metrics");
      expect(a.status).toBe(200);
      const as = parsePrometheus(a.body);
      expect(sumOf(as, "nshub_agent_pods", { state: "enrolled" })).toBe(2);
      expect(sumOf(as, "nshub_agent_pods", { state: "not-enrolled" })).toBe(1);
      expect(sumOf(as, "nshub_agent_pods", { state: "pending" })).toBe(0);
      expect(sumOf(as, "nshub_agent_cni_requests_total", { method: "PodAdd" })).toBe(3);
      expect(sumOf(as, "nshub_agent_zds_connections")).toBe(1);
      expect(sumOf(as, "nshub_agent_ready")).toBe(1);
      expect(sumOf(as, "istio_build", { component: "nshub-agent" })).toBe(1);
      expect(as.some((s) => s.name === "process_open_fds")).toBe(true);
      expect(await promtool(a.body, paths.dir)).toEqual({ code: 0, output: "" });
    },
    T,
  );

  test(
    "the admin socket is root's alone (mode 0600, owner 0); log level: GET /logging on TCP, POST only on the socket (TCP: 403), and nshub logs-level (read over TCP, set over the socket)",
    async () => {
      const st = lstatSync(ADMIN_SOCKET);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(0);

      expect(JSON.parse((await admin("/logging")).body)).toEqual({ level: "info" });
      const refused = await admin("/logging?level=debug", { method: "POST" });
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body)).toMatchObject({ adminSocket: ADMIN_SOCKET });
      expect(JSON.parse((await admin("/logging")).body)).toEqual({ level: "info" });
      const set = await control("/logging?level=debug");
      expect([set.status, JSON.parse(set.body)]).toEqual([200, { level: "debug", previous: "info" }]);
      expect(JSON.parse((await admin("/logging")).body)).toEqual({ level: "debug" });
      const bad = await control("/logging?level=loud");
      expect(bad.status).toBe(400);
      expect(JSON.parse(bad.body).error).toContain('unknown log level "loud"');
      expect((await control("/logging", { method: "PUT" })).status).toBe(405);
      expect(logLines().some((l) => l.msg === "log level changed" && l.from === "info" && l.to === "debug")).toBe(true);

      const sock = ["--admin-socket", ADMIN_SOCKET];
      expect(await nshub("logs-level")).toMatchObject({ code: 0, stdout: "debug\n" });
      expect(await nshub("logs-level", "warn", ...sock)).toMatchObject({ code: 0, stdout: "log level: debug → warn\n" });
      expect(JSON.parse((await nshub("logs-level", "--json")).stdout)).toEqual({ level: "warn" });
      const wrong = await nshub("logs-level", "loud", ...sock);
      expect(wrong.code).toBe(2);
      expect(wrong.stderr).toContain('unknown log level "loud"');
      expect(wrong.stderr.trim().split("\n")).toHaveLength(1);
      expect(await nshub("logs-level", "--reset", ...sock)).toMatchObject({ code: 0, stdout: "log level: warn → info\n" });
      expect(JSON.parse((await admin("/logging")).body)).toEqual({ level: "info" });
      expect(await nshub("logs-level", "debug", ...sock)).toMatchObject({ code: 0, stdout: "log level: info → debug\n" });
      expect(JSON.parse((await admin("/logging")).body)).toEqual({ level: "debug" });
      expect(await nshub("logs-level", "--reset", ...sock)).toMatchObject({ code: 0, stdout: "log level: debug → info\n" });
    },
    T,
  );

  test(
    "a pod enrolled, then deleted through CNI: /config_dump and the workload-manager gauges and counters follow",
    async () => {
      const extra = await sim.addPod({ name: "extra", namespace: "mesh" });
      expect((await dump()).workloads.find((w) => w.uid === extra.uid)).toMatchObject({ name: "extra", state: "Up", workloadIps: [extra.ip] });
      let m = (await scrape()).samples;
      expect([sumOf(m, "workload_manager_active_proxies"), sumOf(m, "workload_manager_proxies_started_total"), sumOf(m, "workload_manager_proxies_stopped_total")]).toEqual([3, 3, 0]);
      await sim.deletePod(extra);
      await eventually(async () => !(await dump()).workloads.some((w) => w.uid === extra.uid), "extra gone from the proxy");
      m = (await scrape()).samples;
      expect([sumOf(m, "workload_manager_active_proxies"), sumOf(m, "workload_manager_pending_proxies"), sumOf(m, "workload_manager_proxies_started_total"), sumOf(m, "workload_manager_proxies_stopped_total")]).toEqual([2, 0, 3, 1]);
      const pods = JSON.parse((await nshub("pods", "--json")).stdout) as Array<{ name: string }>;
      expect(pods.map((p) => p.name)).toEqual(["client", "server"]);
    },
    T,
  );

  test(
    "POST /quitquitquit on the admin socket stops the proxy (exit 0); then every CLI command says in one sentence that it is not running, exit 1, no stack trace",
    async () => {
      const q = await control("/quitquitquit");
      expect(q.status).toBe(200);
      expect(await proxy.exited).toBe(0);
      expect(logLines().some((l) => l.msg === "shutting down: draining" && l.reason === "POST /quitquitquit")).toBe(true);

      for (const args of [["pods"], ["pods", "--json"], ["connections"], ["connections", "--json"], ["logs-level"]]) {
        const r = await nshub(...args);
        expect({ args, code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ args, code: 1, stdout: "", stderr: NOT_RUNNING });
      }
      // Setting the level goes to the admin socket, which the proxy removed on its way out.
      const set = await nshub("logs-level", "debug", "--admin-socket", ADMIN_SOCKET);
      expect({ code: set.code, stdout: set.stdout, stderr: set.stderr }).toEqual({
        code: 1,
        stdout: "",
        stderr: `the nshub proxy is not running (nothing listens on ${ADMIN_SOCKET}); start it with: nshub proxy\n`,
      });
      // status: the agent still runs; the proxy's row says it does not, with the sentence.
      const st = await nshub("status");
      expect(st.code).toBe(1);
      expect(st.stdout).toMatch(/agent\s+127\.0\.0\.1:15010\s+running\s+yes/);
      expect(st.stdout).toMatch(/proxy\s+127\.0\.0\.1:15000\s+not running\s+-/);
      expect(st.stdout).toContain(NOT_RUNNING.trim());
      expect(st.stderr).toBe("");
      const sj = await nshub("status", "--json");
      expect(sj.code).toBe(1);
      const status = JSON.parse(sj.stdout);
      expect(status.proxy).toMatchObject({ running: false, ready: null, error: NOT_RUNNING.trim() });
      expect(status.agent).toMatchObject({ running: true, ready: true });
      for (const r of [st, sj]) expect(r.stdout + r.stderr).not.toMatch(/^\s+at |Error:/m);

      // The agent noticed: no proxy connected over ZDS any more.
      await eventually(async () => parsePrometheus((await curl(sim.node, "http://127.0.0.1:15010/metrics")).body).some((s) => s.name === "nshub_agent_zds_connections" && s.value === 0), "agent sees no proxy");
    },
    T,
  );
});
