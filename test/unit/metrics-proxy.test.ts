// Proxy metrics (src/proxy/metrics.ts): byte counters equal exactly what went through the
// connection handles, ztunnel's label set, close/failure accounting, the observer that ties the
// proxy's real ConnectionTable (src/proxy/records.ts) to metrics and access logs, process
// metrics checked against /proc, and the whole /metrics output through Prometheus' own
// checker (promtool check metrics).
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import type { Registry } from "prom-client";
import { createRegistry } from "../../src/admin/registry.ts";
import { createMetricsApp } from "../../src/admin/servers.ts";
import { createAgentMetrics } from "../../src/agent/metrics.ts";
import { createConnectionObserver } from "../../src/proxy/connection-observer.ts";
import { createProxyMetrics } from "../../src/proxy/metrics.ts";
import { TRAFFIC_LABELS, connectionLabels, trafficLabels } from "../../src/proxy/traffic-labels.ts";
import { accessFields } from "../../src/log/access.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";
import { ConnectionTable } from "../../src/proxy/records.ts";

type Values = { labels: Record<string, string | number>; value: number }[];

async function values(reg: Registry, name: string): Promise<Values> {
  const m = reg.getSingleMetric(name);
  if (!m) throw new Error(`no metric ${name}`);
  return (await m.get()).values as Values;
}

async function sum(reg: Registry, name: string, match: Record<string, string> = {}): Promise<number> {
  return (await values(reg, name)).filter((v) => Object.entries(match).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

const client = { name: "client-5d8f9", namespace: "default", serviceAccount: "client-sa" };
const server = { name: "server-0", namespace: "shop", serviceAccount: "server-sa" };

describe("traffic labels (ztunnel's CommonTrafficLabels)", () => {
  test("every label present; unknown values are `unknown`; tcp, '-' and unknown policy by default", () => {
    const l = trafficLabels({ reporter: "source" });
    expect(Object.keys(l)).toEqual([...TRAFFIC_LABELS]);
    expect(l).toMatchObject({ reporter: "source", source_workload: "unknown", destination_workload: "unknown", request_protocol: "tcp", response_flags: "-", connection_security_policy: "unknown" });
  });

  test("outbound: reported by the source pod; inbound: by the destination pod, whose principal is known", () => {
    const out = connectionLabels({ direction: "outbound", pod: client });
    expect(out).toMatchObject({ reporter: "source", source_workload: "client-5d8f9", source_workload_namespace: "default", source_principal: "unknown", destination_workload: "unknown" });
    const inb = connectionLabels({ direction: "inbound", pod: server, peer: client, trustDomain: "td.example" });
    expect(inb).toMatchObject({
      reporter: "destination",
      source_workload: "client-5d8f9",
      source_workload_namespace: "default",
      source_principal: "unknown",
      destination_workload: "server-0",
      destination_workload_namespace: "shop",
      destination_principal: "spiffe://td.example/ns/shop/sa/server-sa",
    });
  });
});

describe("ConnectionMetrics", () => {
  test("byte counters equal exactly the bytes fed through the handles, at every scrape", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    const a = m.connections.open(connectionLabels({ direction: "outbound", pod: client }));
    const b = m.connections.open(connectionLabels({ direction: "outbound", pod: client }));
    const c = m.connections.open(connectionLabels({ direction: "inbound", pod: server }));
    let req = 0;
    let resp = 0;
    for (let i = 1; i <= 1000; i++) {
      a.received(i); // source → destination
      req += i;
      b.received(7);
      req += 7;
      a.sent(3 * i); // destination → source
      resp += 3 * i;
      if (i === 500) {
        // A scrape in the middle sees exactly what was fed so far.
        expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "source" })).toBe(req);
        expect(await sum(registry, "istio_tcp_sent_bytes_total", { reporter: "source" })).toBe(resp);
      }
    }
    c.received(65536);
    c.sent(1);
    expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "source" })).toBe(req);
    expect(await sum(registry, "istio_tcp_sent_bytes_total", { reporter: "source" })).toBe(resp);
    expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "destination" })).toBe(65536);
    expect(await sum(registry, "istio_tcp_sent_bytes_total", { reporter: "destination" })).toBe(1);
    // a and b share a label set: one series.
    expect((await values(registry, "istio_tcp_received_bytes_total")).filter((v) => v.labels.reporter === "source")).toHaveLength(1);
    // bytes after the last scrape are flushed on close
    a.received(11);
    a.close("done");
    b.close("done");
    c.close("reset");
    expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "source" })).toBe(req + 11);
    expect(m.connections.live).toBe(0);
    expect(await sum(registry, "istio_tcp_connections_opened_total")).toBe(3);
    expect(await sum(registry, "istio_tcp_connections_closed_total")).toBe(3);
  });

  test("setTotals (pull mode) counts the delta only, never twice", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    const rec = { toClient: 0, fromClient: 0 };
    const h = m.connections.open(connectionLabels({ direction: "outbound", pod: client }), { pull: (x) => x.setTotals(rec.toClient, rec.fromClient) });
    rec.fromClient = 100;
    rec.toClient = 5;
    expect(await sum(registry, "istio_tcp_received_bytes_total")).toBe(100);
    rec.fromClient = 250;
    expect(await sum(registry, "istio_tcp_received_bytes_total")).toBe(250);
    expect(await sum(registry, "istio_tcp_sent_bytes_total")).toBe(5);
    rec.toClient = 9;
    h.close("done");
    h.close("done"); // idempotent
    expect(await sum(registry, "istio_tcp_sent_bytes_total")).toBe(9);
    expect(await sum(registry, "istio_tcp_connections_closed_total")).toBe(1);
  });

  test("close: CONNECT flag and failed counter for connect failures; nshub_connection_failures_total by reason", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    const open = () => m.connections.open(connectionLabels({ direction: "outbound", pod: client }));
    open().close("connect_failed");
    open().close("refused_loop");
    open().close("reset");
    open().close("done");
    open().close("drained");
    expect(await sum(registry, "istio_tcp_connections_closed_total", { response_flags: "CONNECT" })).toBe(1);
    expect(await sum(registry, "istio_tcp_connections_closed_total", { response_flags: "-" })).toBe(4);
    expect(await sum(registry, "istio_tcp_connections_failed_total")).toBe(2);
    expect(await sum(registry, "istio_tcp_connections_failed_total", { response_flags: "CONNECT" })).toBe(1);
    // opened always with '-' (the outcome is not known yet)
    expect(await sum(registry, "istio_tcp_connections_opened_total", { response_flags: "-" })).toBe(5);
    const failures = await values(registry, "nshub_connection_failures_total");
    expect(Object.fromEntries(failures.map((v) => [v.labels.reason, v.value]))).toEqual({ connect_failed: 1, refused_loop: 1, reset: 1, drained: 1 });
    expect(failures.every((v) => v.labels.direction === "outbound")).toBe(true);
  });

  test("workload manager gauges (bound) and counters", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    let counts = { active: 2, pending: 1 };
    m.workloads.bindCounts(() => counts);
    m.workloads.started();
    m.workloads.started();
    m.workloads.stopped();
    expect(await sum(registry, "workload_manager_active_proxies")).toBe(2);
    expect(await sum(registry, "workload_manager_pending_proxies")).toBe(1);
    counts = { active: 3, pending: 0 };
    expect(await sum(registry, "workload_manager_active_proxies")).toBe(3);
    expect(await sum(registry, "workload_manager_proxies_started_total")).toBe(2);
    expect(await sum(registry, "workload_manager_proxies_stopped_total")).toBe(1);
  });
});

describe("connection observer on the proxy's real ConnectionTable (no sockets)", () => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l), "json");
  afterAll(() => setLogSink((l) => process.stderr.write(l + "\n")));

  test("metrics from the records' own byte totals (no per-chunk callback) and one access-log line per close", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    const table = new ConnectionTable();
    table.addObserver(createConnectionObserver({ metrics: m.connections, accessLog: createLogger("access"), peerLookup: (ip) => (ip === "10.9.0.5" ? { name: "server-0", namespace: "shop", serviceAccount: "server-sa" } : undefined) }));
    expect(table.wantsBytes).toBe(false); // the relay skips per-chunk observer calls
    const pod = { uid: "u1", name: "client-5d8f9", namespace: "default", serviceAccount: "client-sa" };
    const out = table.open({ pod, direction: "outbound", source: { ip: "10.9.0.4", port: 40000 }, originalDst: { ip: "10.9.0.5", port: 8080 }, upstream: { ip: "10.9.0.5", port: 8080 } });
    table.established(out);
    out.bytesSent = 123_456; // client → server, as the relay counts
    out.bytesReceived = 789;
    expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "source", destination_workload: "server-0" })).toBe(123_456);
    expect(await sum(registry, "istio_tcp_sent_bytes_total", { reporter: "source" })).toBe(789);
    out.bytesSent += 44;
    table.close(out, "done");
    expect(await sum(registry, "istio_tcp_received_bytes_total", { reporter: "source" })).toBe(123_500);

    const inPod = { uid: "u2", name: "server-0", namespace: "shop", serviceAccount: "server-sa" };
    const inb = table.open({ pod: inPod, direction: "inbound", source: { ip: "10.9.0.4", port: 40001 }, originalDst: { ip: "10.9.0.5", port: 8080 }, upstream: { ip: "10.9.0.5", port: 8080 } });
    inb.bytesSent = 10;
    table.close(inb, "connect_failed", "ECONNREFUSED");
    expect(await sum(registry, "istio_tcp_connections_closed_total", { reporter: "destination", response_flags: "CONNECT", destination_principal: "spiffe://cluster.local/ns/shop/sa/server-sa" })).toBe(1);

    const access = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.scope === "access");
    expect(access).toHaveLength(2);
    expect(access[0]).toMatchObject({
      level: "info",
      msg: "connection complete",
      "src.addr": "10.9.0.4:40000",
      "src.workload": "client-5d8f9",
      "src.namespace": "default",
      "dst.addr": "10.9.0.5:8080",
      "dst.workload": "server-0",
      "dst.namespace": "shop",
      direction: "outbound",
      bytes_sent: 123_500,
      bytes_recv: 789,
      reason: "done",
    });
    expect(access[0]!.duration).toMatch(/^\d+ms$/);
    // inbound: bytes from the pod's (the server's) side, as ztunnel logs them
    expect(access[1]).toMatchObject({ level: "error", direction: "inbound", "dst.workload": "server-0", bytes_sent: 0, bytes_recv: 10, reason: "connect_failed", error: "ECONNREFUSED" });
    expect(access[1]!["src.workload"]).toBeUndefined();
  });

  test("label sets are reused per pod, direction and peer, and follow a change of the peer", async () => {
    const { registry } = createRegistry({ process: false });
    const m = createProxyMetrics(registry);
    const table = new ConnectionTable();
    let peerSa = "server-sa";
    table.addObserver(createConnectionObserver({ metrics: m.connections, accessLog: false, peerLookup: (ip) => (ip === "10.9.0.5" ? { name: "server-0", namespace: "shop", serviceAccount: peerSa } : undefined) }));
    const pod = { uid: "u1", name: "client", namespace: "default", serviceAccount: "client-sa" };
    const open = (dst: string) => table.open({ pod, direction: "outbound", source: { ip: "10.9.0.4", port: 40000 }, originalDst: { ip: dst, port: 80 }, upstream: { ip: dst, port: 80 } });
    const labelsOf = (rec: ReturnType<typeof open>) => (rec.ext.metrics as { labels: Record<string, string> }).labels;
    const [a, b, other] = [open("10.9.0.5"), open("10.9.0.5"), open("10.9.0.99")];
    expect(labelsOf(a)).toBe(labelsOf(b)); // the same interned object
    expect(labelsOf(a).destination_workload).toBe("server-0");
    expect(labelsOf(other).destination_workload).toBe("unknown");
    peerSa = "new-sa"; // e.g. the peer pod was replaced
    const c = open("10.9.0.5");
    expect(labelsOf(c).destination_principal).toBe("spiffe://cluster.local/ns/shop/sa/new-sa");
    expect(labelsOf(a).destination_principal).toBe("spiffe://cluster.local/ns/shop/sa/server-sa");
    for (const r of [a, b, other, c]) table.close(r, "done");
    expect(await sum(registry, "istio_tcp_connections_closed_total", { destination_workload: "server-0" })).toBe(3);
    expect(await sum(registry, "istio_tcp_connections_closed_total", { destination_principal: "spiffe://cluster.local/ns/shop/sa/new-sa" })).toBe(1);
  });

  test("access-log fields keep ztunnel's names and order", () => {
    const f = accessFields({
      direction: "outbound",
      src: { addr: "10.0.0.1:1", workload: "a", namespace: "ns" },
      dst: { addr: "10.0.0.2:80", originalAddr: "10.0.0.3:80", workload: "b", namespace: "ns2" },
      bytesSent: 1,
      bytesRecv: 2,
      durationMs: 12.4,
      reason: "done",
    });
    expect(Object.keys(f)).toEqual(["src.addr", "src.workload", "src.namespace", "dst.addr", "dst.original_addr", "dst.workload", "dst.namespace", "direction", "bytes_sent", "bytes_recv", "duration", "reason"]);
    expect(f.duration).toBe("12ms");
  });
});

describe("process metrics (checked against /proc, prom-client's defaults are not used on Bun)", () => {
  test("open fds, max fds and RSS match /proc/self", async () => {
    const { registry, stop } = createRegistry();
    try {
      const fds = await sum(registry, "process_open_fds");
      const actual = readdirSync("/proc/self/fd").length - 1;
      expect(Math.abs(fds - actual)).toBeLessThanOrEqual(2);
      const soft = Number(/^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))![1]);
      expect(await sum(registry, "process_max_fds")).toBe(soft);
      const rss = await sum(registry, "process_resident_memory_bytes");
      const statmRss = Number(readFileSync("/proc/self/statm", "utf8").split(" ")[1]) * 4096;
      expect(rss).toBeGreaterThan(10 * 1024 * 1024);
      expect(Math.abs(rss - statmRss) / statmRss).toBeLessThan(0.25);
      expect(await sum(registry, "process_cpu_seconds_total")).toBeGreaterThan(0);
    } finally {
      stop();
    }
  });

  test("event-loop lag: a 300 ms block of the loop shows up", async () => {
    const { registry, stop } = createRegistry({ process: { lagIntervalMs: 20 } });
    try {
      await Bun.sleep(60);
      const t = performance.now();
      while (performance.now() - t < 300) {
        // busy: the loop cannot run timers
      }
      await Bun.sleep(60);
      expect(await sum(registry, "nshub_event_loop_lag_max_seconds")).toBeGreaterThanOrEqual(0.25);
      const buckets = (await values(registry, "nshub_event_loop_lag_seconds")).filter((v) => v.labels.le === 0.1);
      const count = (await values(registry, "nshub_event_loop_lag_seconds")).find((v) => (v as unknown as { metricName: string }).metricName === "nshub_event_loop_lag_seconds_count")!;
      // at least one observation above 100 ms
      expect(count.value - buckets[0]!.value).toBeGreaterThanOrEqual(1);
    } finally {
      stop();
    }
  });
});

describe("promtool check metrics (Prometheus' own parser and linter)", () => {
  const promtool = Bun.which("promtool");
  const ci = process.env.CI === "true";
  const maybe = promtool ? test : ci ? test : test.skip;
  if (!promtool) console.warn(`[skip] promtool not found (Debian package "prometheus")${ci ? " — FAILING because CI=true" : ""}`);

  async function check(text: string): Promise<{ code: number; out: string }> {
    if (!promtool) throw new Error('promtool not found: CI must install Debian\'s "prometheus" package');
    const p = Bun.spawn([promtool, "check", "metrics"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    p.stdin.write(text);
    await p.stdin.end();
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, out: out + err };
  }

  maybe("the proxy's full /metrics output (traffic, failures, workload manager, process, build) passes", async () => {
    const { registry, stop } = createRegistry();
    try {
      const m = createProxyMetrics(registry);
      m.workloads.bindCounts(() => ({ active: 1, pending: 0 }));
      m.workloads.started();
      const h = m.connections.open(connectionLabels({ direction: "inbound", pod: { ...server, name: 'we"ird\\name' }, peer: client }));
      h.received(10);
      h.sent(20);
      m.connections.open(connectionLabels({ direction: "outbound", pod: client })).close("connect_failed");
      await Bun.sleep(150); // a lag sample
      const res = await createMetricsApp(registry).fetch(new Request("http://m/metrics"));
      const text = await res.text();
      for (const name of [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_failed_total",
        "nshub_connection_failures_total",
        "workload_manager_active_proxies",
        "workload_manager_pending_proxies",
        "workload_manager_proxies_started_total",
        "workload_manager_proxies_stopped_total",
        "istio_build",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "nshub_event_loop_lag_seconds_bucket",
        "nshub_event_loop_lag_max_seconds",
      ]) {
        expect(text).toMatch(new RegExp(`^${name}[ {]`, "m"));
      }
      const r = await check(text);
      expect(r.out).toBe("");
      expect(r.code).toBe(0);
    } finally {
      stop();
    }
  });

  maybe("the agent helpers' output passes", async () => {
    const { registry, stop } = createRegistry({ process: false });
    try {
      const a = createAgentMetrics(registry);
      a.bindPodCounts(() => ({ enrolled: 2 }), ["enrolled", "pending", "not-enrolled"]);
      a.cniRequest("PodAdd", "ok");
      a.bindZdsConnections(() => 1);
      a.bindReady(() => true);
      const text = await registry.metrics();
      expect(text).toContain('nshub_agent_pods{state="pending"} 0');
      expect(text).toContain('nshub_agent_pods{state="enrolled"} 2');
      expect(text).toContain('nshub_agent_cni_requests_total{method="PodAdd",result="ok"} 1');
      const r = await check(text);
      expect(r.out).toBe("");
      expect(r.code).toBe(0);
    } finally {
      stop();
    }
  });
});
