// The proxy's admin, metrics and readiness apps (src/admin/servers.ts) over a FAKE
// ProxyView: a stand-in object built here, so every shape and edge case can be set up by hand.
// The real proxy behind the same apps is tested in test/netns/admin-traffic.test.ts.
// Every test name says so. The servers are real Bun.serve servers on loopback.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { formatHostPort, isLoopback, parseHostPort } from "../../src/admin/address.ts";
import type { ConfigDump } from "../../src/admin/config-dump.ts";
import { createMetricsApp, createProxyAdminApp, createReadinessApp, serveAdmin, type AdminServers } from "../../src/admin/servers.ts";
import type { ConnectionView, ProxyView, WorkloadView } from "../../src/admin/views.ts";

/** A stand-in for the real proxy: plain data plus recorded calls. */
class FakeProxyView implements ProxyView {
  level = "info";
  quits: string[] = [];
  ready = { ready: true, reason: "ready" };
  constructor(
    public pods: WorkloadView[],
    public conns: ConnectionView[],
  ) {}
  workloads() {
    return this.pods;
  }
  connections() {
    return this.conns;
  }
  config() {
    return { proxy: { adminAddress: "127.0.0.1:15000", outboundPort: 15001 }, logLevel: "info" };
  }
  version() {
    return { version: "9.9.9", bun: Bun.version };
  }
  readiness() {
    return this.ready;
  }
  getLogLevel() {
    return this.level;
  }
  setLogLevel(l: string) {
    this.level = l;
  }
  quit(reason: string) {
    this.quits.push(reason);
  }
}

const T0 = Date.now() - 42_000;

function fakeView(): FakeProxyView {
  const listeners = [
    { kind: "outbound", address: "0.0.0.0", port: 15001 },
    { kind: "inbound", address: "0.0.0.0", port: 15006 },
  ];
  const pods: WorkloadView[] = [
    { uid: "uid-b", name: "server", namespace: "shop", serviceAccount: "server-sa", netns: "4:4026532999", state: "Up", listeners, ips: ["10.1.0.5"] },
    { uid: "uid-a", name: "client", namespace: "default", serviceAccount: "default", netns: "4:4026532888", state: "Up", listeners },
    { uid: "uid-c", name: "broken", namespace: "default", serviceAccount: "default", netns: "4:4026532777", state: "Pending", listeners: [], error: "bind 15001: EADDRINUSE" },
  ];
  const conn = (id: number, pod: WorkloadView, direction: "inbound" | "outbound", src: string, dst: string, sent: number, recv: number): ConnectionView => ({
    id,
    pod: { uid: pod.uid, name: pod.name, namespace: pod.namespace },
    direction,
    source: { ip: src, port: 40000 + id },
    originalDst: { ip: dst, port: 8080 },
    upstream: { ip: dst, port: 8080 },
    bytesSent: sent,
    bytesReceived: recv,
    startedAt: T0 + id,
    state: "open",
  });
  return new FakeProxyView(pods, [conn(2, pods[1]!, "outbound", "10.1.0.4", "10.1.0.5", 1000, 20), conn(1, pods[0]!, "inbound", "10.1.0.4", "10.1.0.5", 1000, 20)]);
}

async function call(app: { fetch: (r: Request) => Response | Promise<Response> }, method: string, path: string, headers: Record<string, string> = {}) {
  const res = await app.fetch(new Request(`http://admin${path}`, { method, headers }));
  return { status: res.status, headers: res.headers, text: await res.text() };
}

describe("proxy admin app over a fake ProxyView (stand-in)", () => {
  test("GET / lists every endpoint (HTML, or JSON on Accept: application/json)", async () => {
    const app = createProxyAdminApp(fakeView());
    const html = await call(app, "GET", "/");
    expect(html.status).toBe(200);
    expect(html.headers.get("content-type")).toContain("text/html");
    for (const p of ["/config_dump", "/logging", "/quitquitquit"]) expect(html.text).toContain(p);
    const json = await call(app, "GET", "/", { accept: "application/json" });
    const paths = (JSON.parse(json.text) as { endpoints: { path: string }[] }).endpoints.map((e) => e.path);
    expect(paths).toEqual(["/", "/config_dump", "/logging", "/logging?level=<level>", "/quitquitquit"]);
  });

  test("GET /config_dump: workloads by uid with identity, netns, state, listeners; live connections per pod; config; version", async () => {
    const r = await call(createProxyAdminApp(fakeView()), "GET", "/config_dump");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toContain("application/json");
    const d = JSON.parse(r.text) as ConfigDump;
    expect(Object.keys(d).sort()).toEqual(["config", "version", "workloadState", "workloads"]);
    expect(d.workloads.map((w) => w.uid)).toEqual(["uid-a", "uid-b", "uid-c"]);
    expect(d.workloads[1]).toEqual({
      uid: "uid-b",
      name: "server",
      namespace: "shop",
      serviceAccount: "server-sa",
      workloadIps: ["10.1.0.5"],
      protocol: "TCP",
      state: "Up",
      netns: "4:4026532999",
      listeners: [
        { kind: "outbound", address: "0.0.0.0", port: 15001 },
        { kind: "inbound", address: "0.0.0.0", port: 15006 },
      ],
      connections: { inbound: 1, outbound: 0 },
    });
    expect(d.workloads[2]!.state).toBe("Pending");
    expect(d.workloads[2]!.error).toBe("bind 15001: EADDRINUSE");
    // ztunnel's workloadState: state, info, connections {inbound, outbound}
    const st = d.workloadState["uid-a"]!;
    expect(st.state).toBe("Up");
    expect(st.info).toEqual({ name: "client", namespace: "default", serviceAccount: "default" });
    expect(st.connections.inbound).toEqual([]);
    const c = st.connections.outbound[0]!;
    expect(c).toMatchObject({ id: 2, src: "10.1.0.4:40002", originalDst: "10.1.0.5:8080", actualDst: "10.1.0.5:8080", protocol: "TCP", state: "open", bytesSent: 1000, bytesReceived: 20 });
    expect(c.ageSeconds).toBeGreaterThanOrEqual(41);
    expect(c.ageSeconds).toBeLessThan(120);
    expect(new Date(c.startedAt).getTime()).toBe(T0 + 2);
    expect(d.workloadState["uid-b"]!.connections.inbound).toHaveLength(1);
    expect(d.workloadState["uid-c"]!.state).toBe("Pending");
    expect(d.version.version).toBe("9.9.9");
    expect(d.config).toEqual({ proxy: { adminAddress: "127.0.0.1:15000", outboundPort: 15001 }, logLevel: "info" });
  });

  test("config_dump: a connection of a pod no longer listed is still shown (state Unknown)", async () => {
    const v = fakeView();
    v.pods = v.pods.filter((p) => p.uid !== "uid-b");
    const d = JSON.parse((await call(createProxyAdminApp(v), "GET", "/config_dump")).text) as ConfigDump;
    expect(d.workloadState["uid-b"]!.state).toBe("Unknown");
    expect(d.workloadState["uid-b"]!.connections.inbound).toHaveLength(1);
  });

  test("logging: GET reads, POST ?level= sets (round trip), ?reset restores the start level", async () => {
    const v = fakeView();
    const app = createProxyAdminApp(v);
    expect(JSON.parse((await call(app, "GET", "/logging")).text)).toEqual({ level: "info" });
    const set = await call(app, "POST", "/logging?level=debug");
    expect(set.status).toBe(200);
    expect(JSON.parse(set.text)).toEqual({ level: "debug", previous: "info" });
    expect(v.level).toBe("debug");
    expect(JSON.parse((await call(app, "GET", "/logging")).text)).toEqual({ level: "debug" });
    // POST without parameters prints the level, as ztunnel does.
    expect(JSON.parse((await call(app, "POST", "/logging")).text)).toEqual({ level: "debug" });
    expect(JSON.parse((await call(app, "POST", "/logging?level=WARN")).text)).toEqual({ level: "warn", previous: "debug" });
    expect(JSON.parse((await call(app, "POST", "/logging?reset")).text)).toEqual({ level: "info", previous: "warn" });
  });

  test("logging: a bad level is 400 with a message naming the valid levels; the level is unchanged", async () => {
    const v = fakeView();
    const app = createProxyAdminApp(v);
    const bad = await call(app, "POST", "/logging?level=loud");
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.text)).toEqual({ error: 'unknown log level "loud"; use one of: trace, debug, info, warn, error', level: "info" });
    const target = await call(app, "POST", "/logging?level=access=debug");
    expect(target.status).toBe(400);
    expect(JSON.parse(target.text).error).toContain("per-target log levels");
    expect((await call(app, "POST", "/logging?level=")).status).toBe(400);
    expect(v.level).toBe("info");
    const put = await call(app, "PUT", "/logging?level=debug");
    expect(put.status).toBe(405);
    expect(put.headers.get("allow")).toBe("GET, POST");
  });

  test("POST /quitquitquit starts the shutdown; GET is 405", async () => {
    const v = fakeView();
    const app = createProxyAdminApp(v);
    const r = await call(app, "POST", "/quitquitquit");
    expect(r.status).toBe(200);
    expect(v.quits).toEqual(["POST /quitquitquit"]);
    expect((await call(app, "GET", "/quitquitquit")).status).toBe(405);
    expect(v.quits).toHaveLength(1);
  });

  test("unknown paths are 404 pointing at the index", async () => {
    const r = await call(createProxyAdminApp(fakeView()), "GET", "/nope");
    expect(r.status).toBe(404);
    expect(r.text).toContain("GET /");
  });

  test("readiness app: 200 ready / 503 with the reason", async () => {
    const v = fakeView();
    const app = createReadinessApp(v);
    expect(await call(app, "GET", "/healthz/ready")).toMatchObject({ status: 200, text: "ready\n" });
    v.ready = { ready: false, reason: "waiting for the ZDS snapshot" };
    expect(await call(app, "GET", "/healthz/ready")).toMatchObject({ status: 503, text: "not ready: waiting for the ZDS snapshot\n" });
  });

  test("metrics app: /metrics and /stats/prometheus serve the registry in the text format", async () => {
    const reg = new Registry();
    const { Counter } = await import("prom-client");
    new Counter({ name: "x_total", help: "x", registers: [reg] }).inc(3);
    const app = createMetricsApp(reg);
    for (const p of ["/metrics", "/stats/prometheus"]) {
      const r = await call(app, "GET", p);
      expect(r.status).toBe(200);
      expect(r.headers.get("content-type")).toContain("text/plain; version=0.0.4");
      expect(r.text).toContain("x_total 3");
    }
  });
});

describe("serveAdmin: four real servers (fake ProxyView stand-in)", () => {
  let servers: AdminServers | undefined;
  const dir = mkdtempSync(join(tmpdir(), "nshub-admin-servers-"));
  let n = 0;
  /** A fresh admin socket path per server set (the writes' socket: test/unit/admin-socket.test.ts). */
  const sock = () => join(dir, `admin-${++n}.sock`);
  afterEach(() => {
    servers?.stop();
    servers = undefined;
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("admin on loopback and on its socket, metrics and readiness each on their own port; stop() closes all four", async () => {
    const socket = sock();
    servers = serveAdmin({ adminSocket: socket, adminAddress: "127.0.0.1:0", metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, fakeView(), { registry: new Registry() });
    const ports = new Set([servers.adminUrl, servers.metricsUrl, servers.readinessUrl].map((u) => new URL(u).port));
    expect(ports.size).toBe(3);
    expect((await fetch(new URL("/config_dump", servers.adminUrl))).status).toBe(200);
    expect((await fetch(new URL("/metrics", servers.metricsUrl))).status).toBe(200);
    expect(await (await fetch(new URL("/healthz/ready", servers.readinessUrl))).text()).toBe("ready\n");
    // The admin routes are not on the metrics port, and vice versa.
    expect((await fetch(new URL("/config_dump", servers.metricsUrl))).status).toBe(404);
    expect((await fetch("http://localhost/config_dump", { unix: socket })).status).toBe(200);
    const admin = servers.adminUrl;
    servers.stop();
    servers = undefined;
    await expect(fetch(new URL("/config_dump", admin))).rejects.toMatchObject({ code: "ECONNREFUSED" });
    expect(existsSync(socket)).toBe(false);
  });

  test("extensions add routes to each server and their endpoints to the admin index; close() lets an answer in flight finish", async () => {
    let release: () => void = () => undefined;
    const slow = new Promise<void>((r) => (release = r));
    servers = serveAdmin({ adminSocket: sock(), adminAddress: "127.0.0.1:0", metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, fakeView(), {
      registry: new Registry(),
      extend: {
        admin: [
          {
            endpoints: [{ method: "GET", path: "/extra", description: "an extra route" }],
            routes: (app) => {
              app.get("/extra", (c) => c.text("extra\n"));
              app.get("/slow", async (c) => {
                await slow;
                return c.text("finished\n");
              });
            },
          },
        ],
        metrics: [{ routes: (app) => app.get("/m-extra", (c) => c.text("m\n")) }],
        readiness: [{ routes: (app) => app.get("/r-extra", (c) => c.text("r\n")) }],
      },
    });
    expect(await (await fetch(new URL("/extra", servers.adminUrl))).text()).toBe("extra\n");
    expect(await (await fetch(new URL("/m-extra", servers.metricsUrl))).text()).toBe("m\n");
    expect(await (await fetch(new URL("/r-extra", servers.readinessUrl))).text()).toBe("r\n");
    expect((await fetch(new URL("/extra", servers.metricsUrl))).status).toBe(404);
    const index = (await (await fetch(new URL("/", servers.adminUrl), { headers: { accept: "application/json" } })).json()) as { endpoints: { path: string }[] };
    expect(index.endpoints.map((e) => e.path)).toContain("/extra");
    expect(index.endpoints.map((e) => e.path)).toContain("/config_dump");

    const inFlight = fetch(new URL("/slow", servers.adminUrl)).then((r) => r.text());
    await Bun.sleep(50); // let the request reach the handler (not a timing assertion)
    const admin = servers.adminUrl;
    const closing = servers.close(10_000);
    release();
    expect(await inFlight).toBe("finished\n");
    await closing;
    servers = undefined;
    await expect(fetch(new URL("/extra", admin))).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  test("IPv6 loopback in brackets", async () => {
    servers = serveAdmin({ adminSocket: sock(), adminAddress: "[::1]:0", metricsAddress: "[::1]:0", readinessAddress: "[::1]:0" }, fakeView(), { registry: new Registry() });
    expect(new URL(servers.adminUrl).hostname).toBe("[::1]");
    expect((await fetch(new URL("/logging", servers.adminUrl))).status).toBe(200);
  });

  test("a taken port fails with a sentence naming the server and the address, and nothing stays bound", async () => {
    const blocker = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const adminPort = probe.port;
    probe.stop(true);
    const socket = sock();
    try {
      expect(() =>
        serveAdmin({ adminSocket: socket, adminAddress: `127.0.0.1:${adminPort}`, metricsAddress: `127.0.0.1:${blocker.port}`, readinessAddress: "127.0.0.1:0" }, fakeView(), { registry: new Registry() }),
      ).toThrow(`cannot serve the metrics endpoint on 127.0.0.1:${blocker.port}: the address is in use`);
      // The admin server that had started was stopped again: its port is free.
      const again = Bun.serve({ hostname: "127.0.0.1", port: adminPort, fetch: () => new Response("") });
      again.stop(true);
      expect(existsSync(socket)).toBe(false);
    } finally {
      blocker.stop(true);
    }
  });

  test("a bad address is refused before anything binds", () => {
    expect(() => serveAdmin({ adminSocket: sock(), adminAddress: "::1:15000", metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, fakeView(), { registry: new Registry() })).toThrow(
      "put IPv6 addresses in brackets",
    );
  });

  test("a non-loopback admin address is logged as a warning", () => {
    const warnings: string[] = [];
    const log = { warn: (m: string) => warnings.push(m) } as unknown as import("../../src/log/logger.ts").Logger;
    servers = serveAdmin({ adminSocket: sock(), adminAddress: "0.0.0.0:0", metricsAddress: "127.0.0.1:0", readinessAddress: "127.0.0.1:0" }, fakeView(), { registry: new Registry(), log });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("not on loopback");
  });
});

describe("host:port addresses", () => {
  test("parse and format", () => {
    expect(parseHostPort("127.0.0.1:15000")).toEqual({ hostname: "127.0.0.1", port: 15000 });
    expect(parseHostPort("[::1]:15000")).toEqual({ hostname: "::1", port: 15000 });
    expect(parseHostPort("localhost:1")).toEqual({ hostname: "localhost", port: 1 });
    expect(() => parseHostPort("127.0.0.1")).toThrow("expected host:port");
    expect(() => parseHostPort("127.0.0.1:70000")).toThrow("out of range");
    expect(formatHostPort({ hostname: "::1", port: 15000 })).toBe("[::1]:15000");
  });
  test("loopback", () => {
    expect(["127.0.0.1", "127.3.2.1", "::1", "localhost"].every(isLoopback)).toBe(true);
    expect(["0.0.0.0", "::", "10.0.0.1"].some(isLoopback)).toBe(false);
  });
});
