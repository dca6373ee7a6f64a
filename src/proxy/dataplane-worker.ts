// A data-plane Worker thread (see workers.ts): its own workload manager with every pod the main
// thread serves, listeners bound with SO_REUSEPORT next to the main thread's, its own relays,
// connection table, metrics registry and access log. Driven by messages from the main thread.
import { Registry } from "prom-client";
import { homeNetns, Netns, stopFdPoller } from "../sys/index.ts";
import { createLogger, flushLogs, setLogLevel } from "../log/logger.ts";
import { InboundAuthorizer } from "./authorize.ts";
import { createConnectionObserver } from "./connection-observer.ts";
import { ProxyWorkloadManager } from "./manager.ts";
import { createProxyMetrics } from "./metrics.ts";
import { HboneContext, peerLookup } from "./hbone-context.ts";
import { createHboneMetrics } from "./hbone-metrics.ts";
import { setSpliceFailureHandler, stopSpliceEngine } from "./splice-engine.ts";
import { plainRecord, type ConnectionsAnswer, type FromWorker, type Question, type ToWorker } from "./worker-protocol.ts";
import { nameThisThread, THREAD_NAMES } from "../util/thread-name.ts";

declare const self: Worker;

nameThisThread(THREAD_NAMES.dataPlane);
let manager: ProxyWorkloadManager | undefined;
let authorizer: InboundAuthorizer | undefined;
let hbone: HboneContext | undefined;
let registry: Registry | undefined;
let log = createLogger("proxy/thread");

const post = (m: FromWorker) => self.postMessage(m);

// This thread's splice relay thread died: fail this thread too (uncaught, outside any handler),
// so the main thread drains and exits as for any dead data-plane thread.
setSpliceFailureHandler((error) => {
  setTimeout(() => {
    throw new Error(`splice relay thread failed: ${error}`);
  });
});

self.onmessage = (ev: MessageEvent<ToWorker>) => {
  try {
    handle(ev.data);
  } catch (e) {
    log.error("data-plane thread: message failed", { message: ev.data.t, error: (e as Error).message });
  }
};

function handle(m: ToWorker): void {
  if (m.t === "init") return init(m);
  if (!manager) throw new Error(`"${m.t}" before init`);
  switch (m.t) {
    case "add": {
      let netns: Netns;
      try {
        netns = Netns.adopt(m.fd, `pod ${m.uid}`);
      } catch (e) {
        log.error("netns fd from the main thread is unusable", { uid: m.uid, error: (e as Error).message });
        return;
      }
      // A start failure leaves the pod pending in this thread's manager, which retries and logs.
      manager.add(m.uid, m.info, netns).catch(() => undefined);
      return;
    }
    case "del":
      void manager.del(m.uid);
      return;
    case "reset":
      manager.connectionStarted();
      return;
    case "level":
      setLogLevel(m.level);
      return;
    case "closeAll":
      manager.closeAll();
      return;
    case "policies":
      authorizer!.setDocuments(m.docs);
      return;
    case "labels":
      authorizer!.setLabels(m.labels);
      return;
    case "cert":
      hbone?.setCertificate(m.identity, m.pems);
      return;
    case "mesh":
      hbone?.setMesh(m.entries);
      return;
    case "ask":
      answer(m.q).then(
        (data) => post({ t: "answer", id: m.id, data }),
        (e) => post({ t: "failed", id: m.id, error: (e as Error).message }),
      );
      return;
  }
}

function init(m: Extract<ToWorker, { t: "init" }>): void {
  // This thread was created while the main thread was home; record home before any setns.
  homeNetns();
  setLogLevel(m.logLevel);
  log = createLogger("proxy/thread", { thread: m.index });
  authorizer = new InboundAuthorizer(m.cfg.rootNamespace, createLogger("proxy/authz", { thread: m.index }));
  hbone = m.cfg.ca.source !== "none" ? new HboneContext(m.cfg.ca.trustDomain, { connectTimeoutMs: m.cfg.connectTimeoutMs }) : undefined;
  const mgr = new ProxyWorkloadManager({ cfg: m.cfg, log: createLogger("proxy/pods", { thread: m.index }), thread: { index: m.index, count: m.count }, authorizer, hbone });
  manager = mgr;
  // Only the traffic metrics live here; the main thread sums them into its own at each scrape.
  registry = new Registry();
  const metrics = createProxyMetrics(registry);
  if (hbone) createHboneMetrics(registry, hbone);
  mgr.table.addObserver(createConnectionObserver({ metrics: metrics.connections, trustDomain: m.cfg.ca.trustDomain, peerLookup: peerLookup(mgr, hbone) }));
  post({ t: "ready" });
}

async function answer(q: Question): Promise<unknown> {
  const mgr = manager!;
  switch (q.q) {
    case "metrics":
      return registry!.getMetricsAsJSON();
    case "connections": {
      const a: ConnectionsAnswer = { live: [...mgr.table.live()].map(plainRecord) };
      if (q.recent) a.recent = mgr.table.recent().map(plainRecord);
      return a;
    }
    case "podConnections":
      return Object.fromEntries(mgr.pods().map((p) => [p.uid, p.connections]));
    case "drain":
      return mgr.drain(q.deadlineMs);
    case "policyState":
      return { generation: authorizer!.generation, policies: authorizer!.policies.size };
    case "gc":
      Bun.gc(true);
      return true;
    case "stop":
      hbone?.close();
      stopFdPoller();
      await stopSpliceEngine();
      // The main thread terminates this thread next: write the log lines still buffered.
      flushLogs();
      return true;
  }
}
