// The admin, metrics and readiness servers, laid out as ztunnel's (its admin server
// https://github.com/istio/ztunnel/blob/master/src/admin.rs, metrics server
// https://github.com/istio/ztunnel/blob/master/src/metrics/server.rs and readiness server
// https://github.com/istio/ztunnel/blob/master/src/readiness/server.rs):
//   admin      127.0.0.1:15000  reads only: GET /, GET /config_dump, GET /logging
//   admin socket /var/run/nshub/proxy-admin.sock (mode 0600)  the same, plus the writes:
//                                POST /logging?level=…, POST /quitquitquit
//   metrics    0.0.0.0:15020    GET /metrics, GET /stats/prometheus
//   readiness  0.0.0.0:15021    GET /healthz/ready
// A daemon adds its own routes through AppExtension (the proxy: GET /pods, GET /connections,
// POST /debug/gc on the admin server; see src/proxy/admin-routes.ts); they are listed by GET / too.
// Writes are only on the unix socket: loopback TCP cannot tell one local user from another,
// and any of them could otherwise stop the proxy (cutting every enrolled pod's traffic). The
// TCP admin refuses every request that is not a read (isReadRequest) with 403 naming the
// socket, so a route added later cannot open a write there by mistake. The TCP admin is on
// loopback by default, so pods cannot reach it (they have their own loopback; tested in
// test/netns/admin-loopback.test.ts and, with the real proxy and enrolled pods,
// test/netns/admin-traffic.test.ts).
import { Hono } from "hono";
import type { Registry } from "prom-client";
import { LEVELS } from "../log/logger.ts";
import type { Logger } from "../log/logger.ts";
import { formatHostPort, isLoopback, parseHostPort } from "./address.ts";
import { serveUnixApp } from "./admin-socket.ts";
import { buildConfigDump } from "./config-dump.ts";
import type { ProxyView } from "./views.ts";

export interface IndexEntry {
  method: string;
  path: string;
  description: string;
}

export const ADMIN_ENDPOINTS: readonly IndexEntry[] = [
  { method: "GET", path: "/", description: "this list" },
  { method: "GET", path: "/config_dump", description: "workloads (pods), their state, listeners and live connections; effective config; version" },
  { method: "GET", path: "/logging", description: "the current log level" },
  { method: "POST", path: "/logging?level=<level>", description: `set the log level (${LEVELS.join(", ")}); ?reset restores the level the proxy started with` },
  { method: "POST", path: "/quitquitquit", description: "start a graceful shutdown (drain, then exit)" },
];

function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body, null, 2) + "\n", { status, headers: { "content-type": "application/json; charset=utf-8" } });
}

function methodNotAllowed(allow: string): Response {
  return new Response(`method not allowed; use ${allow}\n`, { status: 405, headers: { allow } });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]!);
}

function indexHtml(title: string, entries: readonly IndexEntry[]): string {
  const rows = entries
    .map((e) => {
      const path = escapeHtml(e.path);
      const link = e.method === "GET" ? `<a href="${path}">${path}</a>` : path;
      return `<tr><td>${e.method}</td><td>${link}</td><td>${escapeHtml(e.description)}</td></tr>`;
    })
    .join("\n");
  return `<!doctype html>\n<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>\n<body><h1>${escapeHtml(title)}</h1>\n<table>\n${rows}\n</table></body></html>\n`;
}

function wantsJson(req: Request): boolean {
  const accept = req.headers.get("accept") ?? "";
  return accept.includes("application/json") && !accept.includes("text/html");
}

/** Why `level` is not acceptable, or undefined when it is. */
export function checkLogLevel(level: string): string | undefined {
  if ((LEVELS as readonly string[]).includes(level)) return undefined;
  if (level.includes("=")) return `per-target log levels ("${level}") are not supported; use one level for the whole proxy: ${LEVELS.join(", ")}`;
  if (level === "") return `missing log level; use one of: ${LEVELS.join(", ")}`;
  return `unknown log level "${level}"; use one of: ${LEVELS.join(", ")}`;
}

/**
 * Whether a request only reads, so the read-only TCP admin may answer it: GET and HEAD, and
 * POST /logging without ?level or ?reset (ztunnel answers that with the level, so ztunnel's
 * clients may read it that way).
 */
export function isReadRequest(req: Request): boolean {
  if (req.method === "GET" || req.method === "HEAD") return true;
  if (req.method !== "POST") return false;
  const u = new URL(req.url);
  return u.pathname === "/logging" && !u.searchParams.has("level") && !u.searchParams.has("reset");
}

/** What the read-only admin answers to a write: 403, and where the write is served. */
function writeRefused(req: Request, socket: string): Response {
  const u = new URL(req.url);
  const target = `${u.pathname}${u.search}`;
  return jsonResponse(
    {
      error:
        `${req.method} ${u.pathname} is refused on this address: it serves the admin API read-only. ` +
        `Changes (log level, quit, GC) are served only on the proxy's admin socket ${socket}, which only root can use: ` +
        `nshub logs-level <level>, or curl --unix-socket ${socket} -X ${req.method} 'http://localhost${target}'`,
      adminSocket: socket,
    },
    403,
  );
}

export interface AdminAppOptions {
  /**
   * Read-only: answer reads only (isReadRequest), and every other request 403 naming this socket,
   * where the writes are. Unset: every route (the admin socket, and tests of the handlers).
   */
  writesOnlyOn?: string;
}

/** Routes a daemon adds to one of the apps (e.g. the proxy's /pods), with their index entries. */
export interface AppExtension {
  /** Adds the routes (called before the app's catch-all 404). */
  routes(app: Hono): void;
  /** Shown by GET / on the admin app. */
  endpoints?: readonly IndexEntry[];
}

export function createProxyAdminApp(view: ProxyView, extensions: readonly AppExtension[] = [], opts: AdminAppOptions = {}): Hono {
  const app = new Hono();
  const initialLevel = view.getLogLevel();
  const socket = opts.writesOnlyOn;
  let endpoints = [...ADMIN_ENDPOINTS, ...extensions.flatMap((e) => e.endpoints ?? [])];
  if (socket !== undefined) {
    // Registered before every route: nothing but a read gets past it.
    app.use("*", async (c, next) => (isReadRequest(c.req.raw) ? next() : writeRefused(c.req.raw, socket)));
    endpoints = endpoints.map((e) => (e.method === "GET" ? e : { ...e, description: `${e.description} (only on the admin socket ${socket}, root only)` }));
  }

  app.get("/", (c) => {
    if (wantsJson(c.req.raw)) return jsonResponse({ endpoints });
    return c.html(indexHtml("nshub proxy admin", endpoints));
  });

  app.get("/config_dump", async () => jsonResponse(buildConfigDump(view, view.workerConnections ? await view.workerConnections() : [])));

  app.get("/logging", () => jsonResponse({ level: view.getLogLevel() }));
  app.post("/logging", (c) => {
    const previous = view.getLogLevel();
    const reset = c.req.query("reset") !== undefined;
    const raw = c.req.query("level");
    if (raw === undefined && !reset) return jsonResponse({ level: previous });
    const level = reset ? initialLevel : raw!.trim().toLowerCase();
    const problem = checkLogLevel(level);
    if (problem) return jsonResponse({ error: problem, level: previous }, 400);
    view.setLogLevel(level);
    return jsonResponse({ level: view.getLogLevel(), previous });
  });
  app.all("/logging", () => methodNotAllowed("GET, POST"));

  app.post("/quitquitquit", () => {
    view.quit("POST /quitquitquit");
    return new Response("OK: graceful shutdown started\n");
  });
  app.all("/quitquitquit", () => methodNotAllowed("POST"));

  for (const e of extensions) e.routes(app);
  app.notFound((c) => c.text(`not found: ${c.req.path}; see GET / for the endpoints\n`, 404));
  app.onError((e) => jsonResponse({ error: e instanceof Error ? e.message : String(e) }, 500));
  return app;
}

/** /metrics and /stats/prometheus (ztunnel serves both) in Prometheus' text format. */
export function createMetricsApp(registry: Registry, extensions: readonly AppExtension[] = [], text: () => Promise<string> = () => registry.metrics()): Hono {
  const app = new Hono();
  const serve = async () => new Response(await text(), { headers: { "content-type": registry.contentType } });
  app.get("/metrics", serve);
  app.get("/stats/prometheus", serve);
  app.get("/", (c) => c.text("metrics: GET /metrics or /stats/prometheus\n"));
  for (const e of extensions) e.routes(app);
  app.notFound((c) => c.text(`not found: ${c.req.path}; metrics are at /metrics\n`, 404));
  app.onError((e) => new Response(`collecting metrics failed: ${e instanceof Error ? e.message : String(e)}\n`, { status: 500 }));
  return app;
}

/** GET /healthz/ready: 200 "ready", or 503 "not ready: <reason>". */
export function createReadinessApp(view: Pick<ProxyView, "readiness">, extensions: readonly AppExtension[] = []): Hono {
  const app = new Hono();
  app.get("/healthz/ready", (c) => {
    const r = view.readiness();
    return c.text(r.ready ? "ready\n" : `not ready: ${r.reason}\n`, r.ready ? 200 : 503);
  });
  for (const e of extensions) e.routes(app);
  app.notFound((c) => c.text("not found; readiness is at /healthz/ready\n", 404));
  return app;
}

export interface AdminAddresses {
  /** Read-only admin (TCP). */
  adminAddress: string;
  /** The whole admin API, writes included (unix socket, mode 0600). */
  adminSocket: string;
  metricsAddress: string;
  readinessAddress: string;
}

export interface AdminServers {
  readonly adminUrl: string;
  /** The admin socket's path. */
  readonly adminSocket: string;
  readonly metricsUrl: string;
  readonly readinessUrl: string;
  /** Stops the four servers at once (open requests are cut). */
  stop(): void;
  /**
   * Stops accepting, lets requests in flight (e.g. the answer to POST /quitquitquit) finish for
   * up to `graceMs`, then cuts the rest.
   */
  close(graceMs?: number): Promise<void>;
}

export interface ServeAdminOptions {
  registry: Registry;
  /** The metrics page (default: the registry's); the proxy merges its Worker threads' in. */
  metricsText?: () => Promise<string>;
  log?: Logger;
  /** Extra routes per server (the proxy adds /pods, /connections, /debug/gc to the admin). */
  extend?: { admin?: readonly AppExtension[]; metrics?: readonly AppExtension[]; readiness?: readonly AppExtension[] };
}

type BunServer = ReturnType<typeof Bun.serve>;

export function serveApp(what: string, address: string, app: Hono, idleTimeout = 30): BunServer {
  const { hostname, port } = parseHostPort(address);
  try {
    return Bun.serve({ hostname, port, fetch: app.fetch, idleTimeout });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why = code === "EADDRINUSE" ? "the address is in use (another nshub proxy running?)" : (e as Error).message;
    throw new Error(`cannot serve the ${what} on ${formatHostPort({ hostname, port })}: ${why}`);
  }
}

/**
 * Starts the read-only admin, the admin socket, the metrics and the readiness servers. Throws
 * (having started nothing) when an address is invalid or taken, or another process listens on
 * the admin socket. Port 0 picks a free port (see the returned URLs).
 */
export function serveAdmin(addrs: AdminAddresses, view: ProxyView, opts: ServeAdminOptions): AdminServers {
  // Validate all three before binding any.
  const admin = parseHostPort(addrs.adminAddress);
  parseHostPort(addrs.metricsAddress);
  parseHostPort(addrs.readinessAddress);
  if (!isLoopback(admin.hostname)) {
    opts.log?.warn("the admin API is not on loopback: anyone who can reach it can read every workload and connection (/config_dump, /pods, /connections)", { adminAddress: addrs.adminAddress });
  }
  const started: BunServer[] = [];
  try {
    started.push(serveApp("admin API", addrs.adminAddress, createProxyAdminApp(view, opts.extend?.admin, { writesOnlyOn: addrs.adminSocket })));
    started.push(serveUnixApp("admin socket", addrs.adminSocket, createProxyAdminApp(view, opts.extend?.admin)));
    started.push(serveApp("metrics endpoint", addrs.metricsAddress, createMetricsApp(opts.registry, opts.extend?.metrics, opts.metricsText)));
    started.push(serveApp("readiness endpoint", addrs.readinessAddress, createReadinessApp(view, opts.extend?.readiness)));
  } catch (e) {
    for (const s of started) s.stop(true);
    throw e;
  }
  const [a, , m, r] = started as [BunServer, BunServer, BunServer, BunServer];
  return {
    adminUrl: a.url.href,
    adminSocket: addrs.adminSocket,
    metricsUrl: m.url.href,
    readinessUrl: r.url.href,
    stop() {
      for (const s of started) s.stop(true);
    },
    async close(graceMs = 1000) {
      const graceful = Promise.all(started.map((s) => s.stop(false)));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([graceful, new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
      for (const s of started) s.stop(true);
    },
  };
}
