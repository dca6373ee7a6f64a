// Connects the proxy's connection records (./records.ts) to the metrics (./metrics.ts) and the
// access log: one ConnectionObserver to add to the proxy's ConnectionTable.
//
// It implements no onBytes: the relay then skips the per-chunk observer call entirely, and the
// byte counters are brought up to date from the records' own totals (rec.bytesSent /
// rec.bytesReceived) when Prometheus scrapes and when the connection closes.
import type { ConnectionView } from "../admin/views.ts";
import { accessLogger, logAccess } from "../log/access.ts";
import type { Logger } from "../log/logger.ts";
import type { ConnectionHandle, ConnectionMetrics } from "./metrics.ts";
import type { CloseHow, ConnectionObserver, ConnectionRecord, Endpoint } from "./records.ts";
import { fmt } from "./records.ts";
import { connectionLabels, type LabelWorkload, type TrafficLabels } from "./traffic-labels.ts";

/** Compile-time proof that the proxy's live records can be handed to the admin as they are. */
export function connectionViews(live: Iterable<ConnectionRecord>): Iterable<ConnectionView> {
  return live;
}

export interface ConnectionObserverOptions {
  metrics: ConnectionMetrics;
  /** The access logger; false disables access logs. Default: the `access` logger. */
  accessLog?: Logger | false;
  /** Who is behind an address, when the proxy can tell (e.g. another pod on this node). */
  peerLookup?: (ip: string) => LabelWorkload | undefined;
  trustDomain?: string;
  cluster?: string;
}

const KEY = "metrics";

/** Everything about a workload that goes into a label set (see connectionLabels). */
function workloadKey(w: LabelWorkload | undefined): string {
  return w ? `${w.workload ?? ""}\u0000${w.name}\u0000${w.namespace}\u0000${w.serviceAccount ?? ""}\u0000${w.canonicalService ?? ""}\u0000${w.canonicalRevision ?? ""}` : "";
}

export function createConnectionObserver(opts: ConnectionObserverOptions): ConnectionObserver {
  const log = opts.accessLog === false ? undefined : (opts.accessLog ?? accessLogger());
  // Label sets per pod (the same PodRef object for all its records), direction and peer: most
  // connections of a pod repeat one of a few, and building one is 23 labels plus a lookup key.
  const labelCache = new WeakMap<object, Map<string, TrafficLabels>>();
  const labelsFor = (rec: ConnectionRecord, peer: LabelWorkload | undefined): TrafficLabels => {
    let byPeer = labelCache.get(rec.pod);
    if (!byPeer) labelCache.set(rec.pod, (byPeer = new Map()));
    const key = `${rec.direction}\u0000${workloadKey(peer)}\u0000${rec.mtls ? `${rec.mtls.srcIdentity}\u0000${rec.mtls.dstIdentity}` : ""}`;
    let labels = byPeer.get(key);
    if (!labels) {
      labels = opts.metrics.intern(connectionLabels({ direction: rec.direction, pod: rec.pod, peer, trustDomain: opts.trustDomain, cluster: opts.cluster, mtls: rec.mtls }));
      byPeer.set(key, labels);
    }
    return labels;
  };
  return {
    onConnectionOpen(rec: ConnectionRecord) {
      const peerAddr: Endpoint = rec.direction === "outbound" ? rec.originalDst : rec.source;
      const labels = labelsFor(rec, opts.peerLookup?.(peerAddr.ip));
      // Istio's sent = response (destination → source) = the record's bytesReceived.
      rec.ext[KEY] = opts.metrics.open(labels, { direction: rec.direction, pull: (h) => h.setTotals(rec.bytesReceived, rec.bytesSent) });
      if (log?.enabled("debug")) {
        log.debug("connection opened", { "src.addr": fmt(rec.source), "dst.addr": fmt(rec.originalDst), direction: rec.direction, pod: `${rec.pod.namespace}/${rec.pod.name}` });
      }
    },
    onConnectionClose(rec: ConnectionRecord, how: CloseHow) {
      const h = rec.ext[KEY] as ConnectionHandle | undefined;
      h?.close(how);
      if (!log) return;
      const labels = h?.labels;
      const outbound = rec.direction === "outbound";
      logAccess(
        {
          direction: rec.direction,
          src: {
            addr: fmt(rec.source),
            workload: outbound ? rec.pod.name : known(labels?.source_workload),
            namespace: outbound ? rec.pod.namespace : known(labels?.source_workload_namespace),
            identity: rec.mtls?.srcIdentity,
          },
          // Over HBONE, ztunnel's dst.addr is the tunnel's TCP endpoint (<pod IP>:15008) and
          // dst.hbone_addr the target inside it (the :authority).
          dst: {
            addr: rec.mtls ? rec.mtls.tunnelAddr : fmt(rec.upstream),
            originalAddr: rec.mtls ? undefined : fmt(rec.originalDst),
            workload: outbound ? known(labels?.destination_workload) : rec.pod.name,
            namespace: outbound ? known(labels?.destination_workload_namespace) : rec.pod.namespace,
            identity: rec.mtls?.dstIdentity,
            hboneAddr: rec.mtls ? fmt(rec.upstream) : undefined,
          },
          // From the enrolled pod's side: outbound it is the client, inbound the server.
          bytesSent: outbound ? rec.bytesSent : rec.bytesReceived,
          bytesRecv: outbound ? rec.bytesReceived : rec.bytesSent,
          durationMs: (rec.closedAt ?? Date.now()) - rec.startedAt,
          reason: how,
          error: rec.error,
          policy: rec.denial?.policy,
          policyRule: rec.denial?.rule,
        },
        log,
      );
    },
  };
}

function known(v: string | undefined): string | undefined {
  return v === undefined || v === "unknown" ? undefined : v;
}
