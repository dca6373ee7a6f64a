// The proxy's own routes on the admin servers, next to src/admin's GET /, /config_dump, /logging
// and POST /quitquitquit (see main.ts, which serves them all through src/admin/servers.ts
// serveAdmin): the GETs on both (loopback adminAddress and the adminSocket), POST /debug/gc only
// on the root-only adminSocket (the loopback one refuses every write):
//   GET  /pods                   the manager's pods as JSON (running/pending, listeners, IPs, counts)
//   GET  /connections[?recent]   live connection records (and the recently closed ones, a bounded
//                                ring: how they ended, bytes each way) — used by tests and `nshub demo`
//   POST /debug/gc               a full garbage collection (every data-plane thread), then memory figures (leak checks compare
//                                RSS without garbage in it). Admin socket only: it costs a stop-the-
//                                world pause, so no other local user, pod or scraper may trigger it.
import type { Hono } from "hono";
import type { AppExtension } from "../admin/servers.ts";
import type { ProxyWorkloadManager } from "./manager.ts";
import { recordJson } from "./records.ts";
import type { WorkerPool } from "./workers.ts";

/** `pool`: the data-plane Worker threads, whose connections are listed with the main thread's. */
export function proxyAdminRoutes(manager: Pick<ProxyWorkloadManager, "pods" | "table">, pool?: WorkerPool): AppExtension {
  return {
    endpoints: [
      { method: "GET", path: "/pods", description: "the proxy's pods (running/pending) with listeners, IPs and connection counts" },
      { method: "GET", path: "/connections", description: "live connection records; ?recent adds the recently closed ones and how they ended" },
      { method: "POST", path: "/debug/gc", description: "run a full garbage collection, then report memory (RSS, JS heap)" },
    ],
    routes(app: Hono) {
      app.get("/pods", async (c) => {
        const pods = manager.pods();
        if (pool) {
          const more = await pool.podConnections();
          for (const p of pods) p.connections += more.get(p.uid) ?? 0;
        }
        return c.json({ pods });
      });
      app.get("/connections", async (c) => {
        const t = manager.table;
        const recent = c.req.query("recent") !== undefined;
        const others = pool ? await pool.connections(recent) : { live: [], recent: [] };
        const byStart = (a: { startedAt: number; id: number }, b: { startedAt: number; id: number }) => a.startedAt - b.startedAt || a.id - b.id;
        return c.json({
          live: [...t.live(), ...others.live].sort(byStart).map(recordJson),
          ...(recent ? { recent: [...t.recent(), ...others.recent].sort((a, b) => (a.closedAt ?? 0) - (b.closedAt ?? 0) || a.id - b.id).map(recordJson) } : {}),
        });
      });
      app.post("/debug/gc", async (c) => {
        const before = process.memoryUsage();
        // Every thread's heap: the Worker threads' first, then this one.
        if (pool) await pool.askAll({ q: "gc" });
        Bun.gc(true);
        const after = process.memoryUsage();
        return c.json({ rssBefore: before.rss, rss: after.rss, heapUsed: after.heapUsed, heapTotal: after.heapTotal });
      });
    },
  };
}
