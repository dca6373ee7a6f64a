// The proxy's minimal HTTP surface: readiness (readinessAddress, GET /healthz/ready) and the
// admin server (adminAddress: POST /quitquitquit, plus small JSON views of pods and
// connections). The full admin API and the metrics server (issue 6) extend these apps through
// `extendAdmin` / `extendReadiness` instead of replacing this module.
import { Hono } from "hono";
import type { ProxyWorkloadManager } from "./manager.ts";
import { recordJson } from "./records.ts";

export interface ProxyHttpDeps {
  manager: ProxyWorkloadManager;
  /** Starts the graceful shutdown (same as SIGTERM). */
  onQuit: (reason: string) => void;
}

export function readinessApp(deps: Pick<ProxyHttpDeps, "manager">): Hono {
  const app = new Hono();
  app.get("/healthz/ready", (c) => {
    const r = deps.manager.readiness();
    return c.text(r.ready ? "ready\n" : `not ready: ${r.reason}\n`, r.ready ? 200 : 503);
  });
  return app;
}

export function adminApp(deps: ProxyHttpDeps): Hono {
  const app = new Hono();
  app.post("/quitquitquit", (c) => {
    deps.onQuit("POST /quitquitquit");
    return c.text("OK\n");
  });
  app.get("/healthz/ready", (c) => {
    const r = deps.manager.readiness();
    return c.text(r.ready ? "ready\n" : `not ready: ${r.reason}\n`, r.ready ? 200 : 503);
  });
  app.get("/pods", (c) => c.json({ pods: deps.manager.pods() }));
  // A full collection, then memory figures: leak checks compare RSS without garbage in it.
  app.post("/debug/gc", (c) => {
    const before = process.memoryUsage();
    Bun.gc(true);
    const after = process.memoryUsage();
    return c.json({ rssBefore: before.rss, rss: after.rss, heapUsed: after.heapUsed, heapTotal: after.heapTotal });
  });
  app.get("/connections", (c) => {
    const t = deps.manager.table;
    const recent = c.req.query("recent") !== undefined;
    return c.json({
      live: [...t.live()].map(recordJson),
      ...(recent ? { recent: t.recent().map(recordJson) } : {}),
    });
  });
  return app;
}

export interface ProxyHttpOptions extends ProxyHttpDeps {
  adminAddress: string;
  readinessAddress: string;
  /** Hooks for the full admin API / metrics: add routes before the servers start. */
  extendAdmin?: (app: Hono) => void;
  extendReadiness?: (app: Hono) => void;
}

export interface ProxyHttpServers {
  readonly adminUrl: string;
  readonly readinessUrl: string;
  /** Stops both servers; in-flight requests (e.g. the /quitquitquit answer) get up to `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/** Splits "host:port" / "[v6]:port". */
export function splitHostPort(addr: string): { hostname: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(addr) ?? /^([^:]+):(\d+)$/.exec(addr);
  if (!m) throw new Error(`not a host:port address: ${JSON.stringify(addr)}`);
  return { hostname: m[1]!, port: Number(m[2]) };
}

function serve(what: string, addr: string, app: Hono): ReturnType<typeof Bun.serve> {
  const { hostname, port } = splitHostPort(addr);
  try {
    return Bun.serve({ hostname, port, fetch: app.fetch, idleTimeout: 30 });
  } catch (e) {
    throw new Error(`cannot serve the ${what} on ${addr}: ${(e as Error).message}`);
  }
}

export function startProxyHttp(opts: ProxyHttpOptions): ProxyHttpServers {
  const admin = adminApp(opts);
  opts.extendAdmin?.(admin);
  const ready = readinessApp(opts);
  opts.extendReadiness?.(ready);
  const a = serve("admin API", opts.adminAddress, admin);
  let r: ReturnType<typeof Bun.serve>;
  try {
    r = serve("readiness endpoint", opts.readinessAddress, ready);
  } catch (e) {
    a.stop(true);
    throw e;
  }
  return {
    adminUrl: a.url.href,
    readinessUrl: r.url.href,
    async stop(graceMs = 1000) {
      const graceful = Promise.all([a.stop(false), r.stop(false)]);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([graceful, new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
      a.stop(true);
      r.stop(true);
    },
  };
}
