// The proxy's side of the admin contract (src/admin/views.ts): a ProxyView over the workload
// manager and its connection table, for the admin API, the metrics and the CLI.
import type { ProxyView, VersionInfo, WorkloadView } from "../admin/views.ts";
import { getLogLevel, setLogLevel } from "../log/logger.ts";
import type { CertificateManager } from "../identity/cert-manager.ts";
import { certificateViews } from "./cert-admin.ts";
import type { ProxyWorkloadManager } from "./manager.ts";
import type { WorkerPool } from "./workers.ts";

export interface ProxyViewOptions {
  manager: ProxyWorkloadManager;
  /** The effective configuration, as shown by /config_dump. */
  config: unknown;
  version: VersionInfo;
  /** Starts the graceful shutdown (same as SIGTERM). */
  quit: (reason: string) => void;
  /** The data-plane Worker threads, when there are any. */
  workers?: WorkerPool;
  /** Workload certificates (proxy.ca), shown in config_dump's `certificates`. */
  certs?: CertificateManager;
  /** More config_dump sections (registry, policies: ./policy-admin.ts authzDump). */
  dumpSections?: () => Record<string, unknown>;
  /** Sets the process's log level (default: src/log/logger.ts setLogLevel); throws on an unknown level. */
  setLogLevel?: (level: string) => void;
}

export function createProxyView(o: ProxyViewOptions): ProxyView {
  return {
    workloads(): Iterable<WorkloadView> {
      return o.manager.pods().map((p) => ({
        uid: p.uid,
        name: p.name,
        namespace: p.namespace,
        serviceAccount: p.serviceAccount,
        netns: p.netns,
        state: p.state === "running" ? "Up" : "Pending",
        listeners: p.listeners,
        ips: p.ips,
        ...(p.error !== undefined ? { error: p.error } : {}),
      }));
    },
    // The live records satisfy ConnectionView as they are (checked in ./connection-observer.ts).
    connections: () => o.manager.table.live(),
    ...(o.workers ? { workerConnections: async () => (await o.workers!.connections(false)).live } : {}),
    ...(o.certs ? { certificates: () => certificateViews(o.certs!) } : {}),
    ...(o.dumpSections ? { dumpSections: o.dumpSections } : {}),
    config: () => o.config,
    version: () => o.version,
    readiness: () => o.manager.readiness(),
    getLogLevel,
    setLogLevel: o.setLogLevel ?? setLogLevel,
    quit: (reason) => o.quit(reason),
  };
}
