// `nshub proxy`: the node proxy daemon. Startup order (as src/agent/main.ts):
//   1. flags and config (flags > env > YAML > defaults): any error → exit 2
//   2. checks: capabilities (setns, SO_MARK, IP_TRANSPARENT) → exit 1 when one is missing
//   3. build: the certificate source and manager (`proxy.ca`, ./certificates.ts; none by default),
//      metrics registry, workload manager with the metrics/access-log observer on its
//      connection table, the data-plane workers (`proxy.workers` > 1), the ProxyView (./proxy-view.ts)
//   4. serve: admin (read-only on loopback TCP, everything on the root-only admin socket), metrics
//      and readiness servers (src/admin/servers.ts serveAdmin), then the ZDS client, which feeds
//      pods to the workload manager
//   5. signals and drain: SIGTERM, SIGINT or POST /quitquitquit stop reading ZDS, close every pod's
//      listeners (a second proxy sharing the ports takes new connections), let open connections
//      finish until the drain deadline, reset the rest, stop the servers, exit 0 (1 when a
//      data-plane or splice relay thread died). A second signal resets everything at once.
import { parseArgs } from "node:util";
import type { Hono } from "hono";
import pkg from "../../package.json" with { type: "json" };
import { AggregatorRegistry } from "prom-client";
import { ConfigError, configWarnings, loadConfig } from "../config/load.ts";
import { createLogger, getLogLevel, setLogLevel } from "../log/logger.ts";
import { homeNetns, stopFdPoller } from "../sys/index.ts";
import { ZdsClient } from "../zds/client.ts";
import { createRegistry } from "../admin/registry.ts";
import { serveAdmin, type AdminServers, type AppExtension } from "../admin/servers.ts";
import { CertificateManager } from "../identity/cert-manager.ts";
import { proxyAdminRoutes } from "./admin-routes.ts";
import { CapabilityError, checkCapabilities } from "./capabilities.ts";
import { AuthzSetupError, ProxyAuthz } from "./authz-setup.ts";
import { certAdminRoutes } from "./cert-admin.ts";
import { authzDump, policyAdminRoutes } from "./policy-admin.ts";
import { createCertMetrics } from "./cert-metrics.ts";
import { CaSetupError, CertifyingWorkloadManager, openCertificateSource } from "./certificates.ts";
import { createConnectionObserver } from "./connection-observer.ts";
import { peerLookup } from "./hbone-context.ts";
import { createHboneMetrics } from "./hbone-metrics.ts";
import { ProxyHbone } from "./hbone-setup.ts";
import { ProxyWorkloadManager } from "./manager.ts";
import { createProxyMetrics } from "./metrics.ts";
import { createProxyView } from "./proxy-view.ts";
import { setSpliceFailureHandler, stopSpliceEngine } from "./splice-engine.ts";
import { WorkerPool, WorkerPoolWorkloadManager } from "./workers.ts";

const HELP = `usage: nshub proxy [options]

The node proxy: receives pods from the node agent over ZDS, opens each pod's listeners inside
the pod's network namespace (outbound 15001, inbound 15006, HBONE 15008 with proxy.ca) and
relays the pod's traffic: to mesh workloads in mutual-TLS HBONE tunnels, else in plaintext.

options:
  --config <file>               YAML config (default /etc/nshub/config.yaml if present)
  --zds-socket <path>           the agent's ZDS socket (default /var/run/nshub/zds.sock)
  --admin-address <host:port>   admin API, read-only: GET /, /config_dump, /logging, /pods,
                                /connections, /certs, /policies, /policy/check, /workloads
                                (default 127.0.0.1:15000; keep it on loopback)
  --admin-socket <path>         admin API with the writes too (POST /logging, /quitquitquit,
                                /debug/gc), root only (default /var/run/nshub/proxy-admin.sock)
  --metrics-address <h:p>       Prometheus /metrics and /stats/prometheus (default 0.0.0.0:15020)
  --readiness-address <h:p>     GET /healthz/ready (default 0.0.0.0:15021)
  --outbound-port <port>        in-pod outbound capture port (default 15001)
  --inbound-port <port>         in-pod inbound capture port (default 15006)
  --connect-timeout-ms <ms>     upstream connect timeout (default 10000)
  --drain-deadline-ms <ms>      how long open connections may finish on shutdown (default 30000)
  --pending-retry-ms <ms>       retry interval for pods whose listeners failed (default 5000)
  --max-queued-bytes <n>        per-direction relay queue before the reader pauses (default 262144)
  --workers <n>                 data-plane threads, each with every pod's listeners (default 2)
  --relay <mode>                splice (kernel copy, default) or userspace (Bun sockets)
  --log-level <level>           trace, debug, info, warn, error
  -h, --help                    this text

Authorization: proxy.policies (NSHUB_PROXY_POLICIES) names Istio AuthorizationPolicy and
PeerAuthentication YAML (a file or a folder), enforced on every inbound connection (plaintext
and HBONE) and reloaded on change; a bad file at start stops the proxy. proxy.workloadsFile adds
a ztunnel local-config file to the workload registry (GET /workloads). proxy.kubernetes.enabled
(NSHUB_PROXY_KUBERNETES_ENABLED) adds the cluster's pods (annotated ones are mesh workloads) and
Istio's policy objects from the Kubernetes API.

Workload certificates (one per identity, for the pods' SPIFFE IDs) are off by default; turn them
on with proxy.ca in the config file or NSHUB_PROXY_CA_* (source istio or local: see the README).

Environment: NSHUB_PROXY_<KEY> (e.g. NSHUB_PROXY_DRAIN_DEADLINE_MS), NSHUB_LOG_LEVEL, NSHUB_CONFIG.`;

const FLAGS = {
  config: { type: "string" },
  "zds-socket": { type: "string" },
  "admin-address": { type: "string" },
  "admin-socket": { type: "string" },
  "metrics-address": { type: "string" },
  "readiness-address": { type: "string" },
  "outbound-port": { type: "string" },
  "inbound-port": { type: "string" },
  "connect-timeout-ms": { type: "string" },
  "drain-deadline-ms": { type: "string" },
  "pending-retry-ms": { type: "string" },
  "max-queued-bytes": { type: "string" },
  workers: { type: "string" },
  relay: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Flag name → proxy config key, and whether the value is a number. */
const FLAG_KEYS: Record<string, [string, boolean]> = {
  "zds-socket": ["zdsSocket", false],
  "admin-address": ["adminAddress", false],
  "admin-socket": ["adminSocket", false],
  "metrics-address": ["metricsAddress", false],
  "readiness-address": ["readinessAddress", false],
  "outbound-port": ["outboundPort", true],
  "inbound-port": ["inboundPort", true],
  "connect-timeout-ms": ["connectTimeoutMs", true],
  "drain-deadline-ms": ["drainDeadlineMs", true],
  "pending-retry-ms": ["pendingRetryMs", true],
  "max-queued-bytes": ["maxQueuedBytes", true],
  workers: ["workers", true],
  relay: ["relay", false],
};

export interface ProxyMainHooks {
  /** Extra routes on the admin, metrics and readiness apps (tests, experiments). */
  http?: {
    extendAdmin?: (app: Hono) => void;
    extendMetrics?: (app: Hono) => void;
    extendReadiness?: (app: Hono) => void;
  };
  /** Called once the servers listen, with their URLs (useful with port 0). */
  onServing?: (servers: Pick<AdminServers, "adminUrl" | "adminSocket" | "metricsUrl" | "readinessUrl">) => void;
}

const hook = (f: ((app: Hono) => void) | undefined): AppExtension[] => (f ? [{ routes: f }] : []);

export async function main(args: string[], hooks: ProxyMainHooks = {}): Promise<number> {
  // 1. flags and config
  const { values } = parseArgs({ args, options: FLAGS, strict: true, allowPositionals: false });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const proxyOverrides: Record<string, unknown> = {};
  for (const [flag, [key, numeric]] of Object.entries(FLAG_KEYS)) {
    const v = (values as Record<string, string | undefined>)[flag];
    if (v === undefined) continue;
    if (numeric && !/^\d+$/.test(v)) {
      console.error(`nshub proxy: --${flag} expects a number, got ${JSON.stringify(v)}`);
      return 2;
    }
    proxyOverrides[key] = numeric ? Number(v) : v;
  }
  const overrides: Record<string, unknown> = { proxy: proxyOverrides };
  if (values["log-level"] !== undefined) overrides.logLevel = values["log-level"];

  let cfg;
  try {
    cfg = loadConfig({ file: values.config, overrides });
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`nshub proxy: ${e.message}`);
      return 2;
    }
    throw e;
  }
  setLogLevel(cfg.logLevel);
  const log = createLogger("proxy");
  for (const w of configWarnings(cfg, "proxy")) log.warn(w);
  const pc = cfg.proxy;

  // 2. checks. The home netns must be recorded before any setns (src/sys contract).
  homeNetns();
  try {
    log.info("capability check passed", { detail: checkCapabilities(pc.mark) });
  } catch (e) {
    if (e instanceof CapabilityError) {
      log.error(e.message, { capability: e.capability });
      console.error(`nshub proxy: ${e.message}`);
      return 1;
    }
    throw e;
  }

  // 3. build. Certificates first: a proxy.ca it cannot use stops it before anything listens.
  let certs: CertificateManager | undefined;
  try {
    const source = await openCertificateSource(pc.ca);
    if (source) {
      certs = new CertificateManager({ source, lifetimeSeconds: pc.ca.lifetimeSeconds, log: createLogger("proxy/certs") });
      log.info("workload certificates on", { source: source.description, trustDomain: pc.ca.trustDomain, lifetimeSeconds: pc.ca.lifetimeSeconds });
    }
  } catch (e) {
    if (!(e instanceof CaSetupError)) throw e;
    log.error(e.message);
    console.error(`nshub proxy: ${e.message}`);
    return 1;
  }
  // Policies (proxy.policies) and the workload registry: a bad policy file stops the proxy here.
  let authz: ProxyAuthz;
  try {
    authz = await ProxyAuthz.start(pc, createLogger("proxy/authz"));
  } catch (e) {
    if (!(e instanceof AuthzSetupError)) throw e;
    certs?.close();
    log.error(e.message);
    console.error(`nshub proxy: ${e.message}`);
    return 1;
  }
  // Metrics: registry (istio_build, process metrics), traffic counters and workload-manager
  // metrics. Label sets are resolved once per connection by the observer (see ./metrics.ts).
  const metricsRegistry = createRegistry({ component: "nshub-proxy" });
  const metrics = createProxyMetrics(metricsRegistry.registry);
  if (certs) createCertMetrics(metricsRegistry.registry, certs);
  // HBONE (mTLS between pods) whenever there are certificates: 15008 in every pod, and outbound
  // connections to mesh workloads in tunnels (hbone-setup.ts).
  const hbone = certs ? new ProxyHbone(pc, certs, authz.registry, createLogger("proxy/hbone")) : undefined;
  if (hbone) createHboneMetrics(metricsRegistry.registry, hbone.ctx);
  const manager = new ProxyWorkloadManager({
    cfg: pc,
    log: createLogger("proxy/pods"),
    thread: { index: 0, count: pc.workers },
    events: {
      podStarted: (p) => (metrics.workloads.started(), authz.podStarted(p)),
      podStopped: (p) => (metrics.workloads.stopped(), authz.podStopped(p)),
    },
    authorizer: authz.authorizer,
    hbone: hbone?.ctx,
  });
  metrics.workloads.bindCounts(() => manager.counts());
  manager.table.addObserver(createConnectionObserver({ metrics: metrics.connections, trustDomain: pc.ca.trustDomain, peerLookup: peerLookup(manager, hbone?.ctx) }));

  // Data-plane workers (see workers.ts); the main thread is thread 0.
  let pool: WorkerPool | undefined;
  if (pc.workers > 1) {
    try {
      pool = await WorkerPool.start(pc.workers - 1, pc, cfg.logLevel, log);
    } catch (e) {
      metricsRegistry.stop();
      certs?.close();
      await authz.close();
      log.error("cannot start the data-plane threads", { error: (e as Error).message });
      console.error(`nshub proxy: cannot start the data-plane threads: ${(e as Error).message}`);
      return 1;
    }
  }
  const workers = pool;
  // Before any pod reaches the Workers (messages arrive in order): no listener without policies.
  if (workers) authz.attachWorkers(workers);
  if (workers) hbone?.attachWorkers(workers);
  // The Workers' traffic counters are summed into the main thread's at every scrape.
  const metricsText = workers
    ? async () => {
        const all = [await metricsRegistry.registry.getMetricsAsJSON(), ...(await workers.metricsJson())];
        return AggregatorRegistry.aggregate(all as object[]).metrics();
      }
    : undefined;

  let wasReady = false;
  manager.onReadinessChange((r) => {
    if (r.ready !== wasReady) {
      wasReady = r.ready;
      if (r.ready) log.info("proxy ready", { pods: manager.pods().length });
      else log.info("proxy not ready", { reason: r.reason });
    }
  });

  let requestQuit: (reason: string) => void = () => undefined;
  const quit = new Promise<string>((resolve) => (requestQuit = resolve));
  // A dead data-plane thread leaves its listeners open with nobody accepting (the kernel keeps
  // giving them a share of new connections): drain and exit non-zero so the supervisor restarts
  // the proxy, and the new one takes over through the SO_REUSEPORT hand-over.
  let threadFailure: string | undefined;
  workers?.onFailure((thread, error) => {
    threadFailure ??= `data-plane thread ${thread} failed: ${error}`;
    requestQuit(threadFailure);
  });
  setSpliceFailureHandler((error) => {
    threadFailure ??= `splice relay thread failed: ${error}`;
    requestQuit(threadFailure);
  });
  const view = createProxyView({
    manager,
    workers,
    certs,
    config: { logLevel: cfg.logLevel, proxy: pc },
    dumpSections: () => authzDump(authz),
    version: { version: pkg.version, bun: Bun.version, component: "nshub-proxy" },
    quit: (reason) => requestQuit(reason),
    setLogLevel: (level) => {
      const previous = getLogLevel();
      setLogLevel(level);
      workers?.setLogLevel(level);
      if (level !== previous) log.info("log level changed", { from: previous, to: level });
    },
  });

  // 4. serve: the admin, metrics and readiness servers, then ZDS.
  let servers: AdminServers;
  try {
    servers = serveAdmin({ adminAddress: pc.adminAddress, adminSocket: pc.adminSocket, metricsAddress: pc.metricsAddress, readinessAddress: pc.readinessAddress }, view, {
      registry: metricsRegistry.registry,
      metricsText,
      log,
      extend: {
        admin: [proxyAdminRoutes(manager, workers), certAdminRoutes(certs, pc.ca), policyAdminRoutes(authz, workers), ...hook(hooks.http?.extendAdmin)],
        metrics: hook(hooks.http?.extendMetrics),
        readiness: hook(hooks.http?.extendReadiness),
      },
    });
  } catch (e) {
    metricsRegistry.stop();
    certs?.close();
    await authz.close();
    await workers?.stop();
    log.error((e as Error).message);
    console.error(`nshub proxy: ${(e as Error).message}`);
    return 1;
  }
  hooks.onServing?.(servers);

  const zlog = createLogger("proxy/zds");
  const pods = workers ? new WorkerPoolWorkloadManager(manager, workers, createLogger("proxy/pods")) : manager;
  // With certificates on, ZDS adds and deletes also tell the certificate manager who is here.
  const zdsManager = certs ? new CertifyingWorkloadManager(pods, certs, pc.ca.trustDomain, createLogger("proxy/certs")) : pods;
  const zds = new ZdsClient({ path: pc.zdsSocket, manager: zdsManager, log: (level, msg, fields) => zlog[level](msg, fields) });
  zds.start();
  log.info("proxy started", { threads: pc.workers, zdsSocket: pc.zdsSocket, admin: servers.adminUrl, adminSocket: servers.adminSocket, metrics: servers.metricsUrl, readiness: servers.readinessUrl, pid: process.pid });

  // 5. signals and drain
  let signals = 0;
  const onSignal = (sig: string) => {
    signals++;
    if (signals === 1) {
      requestQuit(sig);
      return;
    }
    // A second signal: do not wait for the drain.
    log.warn("second signal: resetting every connection now", { signal: sig });
    manager.closeAll();
    workers?.closeAll();
  };
  const onTerm = () => onSignal("SIGTERM");
  const onInt = () => onSignal("SIGINT");
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);

  const reason = await quit;
  signals = Math.max(signals, 1);
  log.info("shutting down: draining", { reason, deadlineMs: pc.drainDeadlineMs, connections: manager.table.size });
  await zds.stop();
  const [own, others] = await Promise.all([manager.drain(pc.drainDeadlineMs), workers?.drain(pc.drainDeadlineMs)]);
  const result = { finished: own.finished + (others?.finished ?? 0), reset: own.reset + (others?.reset ?? 0) };
  log.info("drained; exiting", result);
  hbone?.close();
  certs?.close();
  await authz.close();
  await servers.close();
  await workers?.stop();
  await stopSpliceEngine();
  metricsRegistry.stop();
  process.off("SIGTERM", onTerm);
  process.off("SIGINT", onInt);
  stopFdPoller();
  if (threadFailure) {
    log.error("exiting with an error: a data-plane thread failed", { error: threadFailure });
    return 1;
  }
  return 0;
}
