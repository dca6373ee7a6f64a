// The proxy's HTTP surface as the daemon assembles it (src/proxy/main.ts): src/admin's admin
// and readiness apps over the proxy's ProxyView (src/proxy/proxy-view.ts), plus the proxy's own admin
// routes (src/proxy/admin-routes.ts), and the connection records (src/proxy/records.ts) — without
// sockets or namespaces. The manager is a stand-in object with the few members the apps read
// (named as such).
import { describe, expect, test } from "bun:test";
import { createProxyAdminApp, createReadinessApp } from "../../src/admin/servers.ts";
import { proxyAdminRoutes } from "../../src/proxy/admin-routes.ts";
import type { ProxyWorkloadManager, Readiness } from "../../src/proxy/manager.ts";
import { ConnectionTable, type CloseHow } from "../../src/proxy/records.ts";
import { createProxyView } from "../../src/proxy/proxy-view.ts";

function standInManager(r: Readiness, table = new ConnectionTable()): ProxyWorkloadManager {
  return { readiness: () => r, table, pods: () => [] } as unknown as ProxyWorkloadManager;
}

/** The admin app as `nshub proxy` serves it, over a stand-in manager. */
function adminApp(manager: ProxyWorkloadManager, onQuit: (reason: string) => void = () => undefined) {
  const view = createProxyView({ manager, config: {}, version: { version: "test" }, quit: onQuit });
  return createProxyAdminApp(view, [proxyAdminRoutes(manager)]);
}

function readinessApp(manager: ProxyWorkloadManager) {
  return createReadinessApp(createProxyView({ manager, config: {}, version: { version: "test" }, quit: () => undefined }));
}

const pod = { uid: "u1", name: "web", namespace: "shop", serviceAccount: "sa" };
const ep = (ip: string, port: number) => ({ ip, port });

describe("readiness and admin apps over the proxy's view (stand-in manager)", () => {
  test("/healthz/ready: 200 'ready' or 503 with the reason", async () => {
    let res = await readinessApp(standInManager({ ready: true, reason: "ready" })).request("/healthz/ready");
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("ready\n");
    res = await readinessApp(standInManager({ ready: false, reason: "1 pod(s) pending: shop/web: EADDRINUSE" })).request("/healthz/ready");
    expect(res.status).toBe(503);
    expect(await res.text()).toContain("shop/web: EADDRINUSE");
  });

  test("POST /quitquitquit starts the shutdown; GET does not", async () => {
    const calls: string[] = [];
    const app = adminApp(standInManager({ ready: true, reason: "ready" }), (r) => calls.push(r));
    expect((await app.request("/quitquitquit")).status).toBe(405);
    expect(calls).toEqual([]);
    const res = await app.request("/quitquitquit", { method: "POST" });
    expect(res.status).toBe(200);
    expect(calls).toEqual(["POST /quitquitquit"]);
  });

  test("/connections lists live records and, on request, recent ones", async () => {
    const table = new ConnectionTable();
    const a = table.open({ pod, direction: "outbound", source: ep("10.0.0.2", 40000), originalDst: ep("10.0.0.3", 80), upstream: ep("10.0.0.3", 80) });
    const b = table.open({ pod, direction: "inbound", source: ep("fd00::2", 40001), originalDst: ep("fd00::3", 80), upstream: ep("fd00::3", 80) });
    table.close(a, "done");
    const app = adminApp(standInManager({ ready: true, reason: "ready" }, table));
    const live: any = await (await app.request("/connections")).json();
    expect(live.live.map((c: any) => c.id)).toEqual([b.id]);
    expect(live.live[0].source).toBe("[fd00::2]:40001");
    expect(live.recent).toBeUndefined();
    const all: any = await (await app.request("/connections?recent")).json();
    expect(all.recent.map((c: any) => [c.id, c.closeHow])).toEqual([[a.id, "done"]]);
  });

  test("the index lists the proxy's own routes next to src/admin's; /debug/gc answers memory figures on POST only", async () => {
    const app = adminApp(standInManager({ ready: true, reason: "ready" }));
    const index: any = await (await app.request("/", { headers: { accept: "application/json" } })).json();
    const paths = index.endpoints.map((e: any) => `${e.method} ${e.path}`);
    for (const p of ["GET /config_dump", "GET /logging", "POST /quitquitquit", "GET /pods", "GET /connections", "POST /debug/gc"]) expect(paths).toContain(p);
    expect((await app.request("/debug/gc")).status).toBe(404);
    const gc: any = await (await app.request("/debug/gc", { method: "POST" })).json();
    expect(gc.rss).toBeGreaterThan(0);
    expect(await (await app.request("/pods")).json()).toEqual({ pods: [] });
  });
});

describe("connection records", () => {
  test("observers see open, established, bytes and close once, in order; whenIdle resolves at the last close", async () => {
    const table = new ConnectionTable({ recentMax: 2 });
    const seen: string[] = [];
    table.addObserver({
      onConnectionOpen: (r) => {
        r.ext.labels = `pod=${r.pod.name},dir=${r.direction}`; // resolved once per connection
        seen.push(`open ${r.id}`);
      },
      onConnectionEstablished: (r) => seen.push(`est ${r.id}`),
      onBytes: (r, up, n) => seen.push(`bytes ${r.id} ${up ? "up" : "down"} ${n} ${r.ext.labels}`),
      onConnectionClose: (r, how: CloseHow) => seen.push(`close ${r.id} ${how}`),
    });
    expect(table.wantsBytes).toBe(true);
    const r1 = table.open({ pod, direction: "outbound", source: ep("10.0.0.2", 1), originalDst: ep("10.0.0.3", 2), upstream: ep("10.0.0.3", 2) });
    const idle = table.whenIdle();
    table.established(r1);
    expect(r1.state).toBe("open");
    table.bytes(r1, true, 10);
    table.close(r1, "reset", "client ECONNRESET");
    table.close(r1, "done"); // second close ignored
    await idle;
    expect(seen).toEqual([`open ${r1.id}`, `est ${r1.id}`, `bytes ${r1.id} up 10 pod=web,dir=outbound`, `close ${r1.id} reset`]);
    expect(r1).toMatchObject({ state: "closed", closeHow: "reset", error: "client ECONNRESET" });
    for (let i = 0; i < 3; i++) table.close(table.open({ pod, direction: "inbound", source: ep("a", i), originalDst: ep("b", 1), upstream: ep("b", 1) }), "done");
    expect(table.recent()).toHaveLength(2); // bounded ring
    expect(table.size).toBe(0);
  });

  test("a throwing observer does not break the others", () => {
    const errors: unknown[] = [];
    const table = new ConnectionTable({ onObserverError: (e) => errors.push(e) });
    let closed = 0;
    table.addObserver({ onConnectionClose: () => { throw new Error("boom"); } });
    table.addObserver({ onConnectionClose: () => void closed++ });
    table.close(table.open({ pod, direction: "inbound", source: ep("a", 1), originalDst: ep("b", 1), upstream: ep("b", 1) }), "done");
    expect(closed).toBe(1);
    expect(errors).toHaveLength(1);
  });
});

describe("ProxyView over the manager", () => {
  test("pods map to workloads (Up/Pending), live records are the connections, quit is forwarded", async () => {
    const { createProxyView } = await import("../../src/proxy/proxy-view.ts");
    const table = new ConnectionTable();
    const rec = table.open({ pod, direction: "outbound", source: ep("10.0.0.2", 1), originalDst: ep("10.0.0.3", 80), upstream: ep("10.0.0.3", 80) });
    const manager = {
      readiness: () => ({ ready: true, reason: "ready" }),
      table,
      pods: () => [
        { ...pod, state: "running", netns: "4:1", listeners: [{ kind: "outbound", address: "0.0.0.0", port: 15001 }], ips: ["10.0.0.2"], connections: 1 },
        { uid: "u2", name: "db", namespace: "shop", serviceAccount: "sa", state: "pending", netns: "4:2", listeners: [], ips: [], connections: 0, error: "EADDRINUSE", attempts: 3 },
      ],
    } as unknown as ProxyWorkloadManager;
    const quits: string[] = [];
    const view = createProxyView({ manager, config: { proxy: {} }, version: { version: "0.1.0" }, quit: (r) => quits.push(r) });
    const w = [...view.workloads()];
    expect(w.map((x) => [x.uid, x.state, x.error])).toEqual([["u1", "Up", undefined], ["u2", "Pending", "EADDRINUSE"]]);
    expect(w[0]!.listeners[0]).toEqual({ kind: "outbound", address: "0.0.0.0", port: 15001 });
    expect([...view.connections()].map((c) => c.id)).toEqual([rec.id]);
    view.quit("test");
    expect(quits).toEqual(["test"]);
    expect(view.readiness().ready).toBe(true);
  });
});
