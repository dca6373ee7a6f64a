// Traffic labels: ztunnel's CommonTrafficLabels
// (https://github.com/istio/ztunnel/blob/master/src/proxy/metrics.rs), without the locality
// labels, which ztunnel only emits when the locality is known — we never know it. Same names
// and values as ztunnel's, so Istio's dashboards and queries carry over.

export const TRAFFIC_LABELS = [
  "reporter",
  "source_workload",
  "source_canonical_service",
  "source_canonical_revision",
  "source_workload_namespace",
  "source_principal",
  "source_app",
  "source_version",
  "source_cluster",
  "destination_service",
  "destination_service_namespace",
  "destination_service_name",
  "destination_workload",
  "destination_canonical_service",
  "destination_canonical_revision",
  "destination_workload_namespace",
  "destination_principal",
  "destination_app",
  "destination_version",
  "destination_cluster",
  "request_protocol",
  "response_flags",
  "connection_security_policy",
] as const;

export type TrafficLabelName = (typeof TRAFFIC_LABELS)[number];
export type TrafficLabels = Record<TrafficLabelName, string>;
export type Reporter = "source" | "destination";
/** `-` none; `CONNECT` upstream connect failed; `DENY` refused by an authorization policy. */
export type ResponseFlags = "-" | "CONNECT" | "DENY";

export const UNKNOWN = "unknown";

/** Fills every label the caller left out: `unknown`, protocol `tcp`, flags `-`, policy `unknown`. */
export function trafficLabels(partial: Partial<TrafficLabels> & { reporter: Reporter }): TrafficLabels {
  const out = {} as TrafficLabels;
  for (const name of TRAFFIC_LABELS) {
    const v = partial[name];
    out[name] = v === undefined || v === "" ? UNKNOWN : v;
  }
  if (partial.request_protocol === undefined) out.request_protocol = "tcp";
  if (partial.response_flags === undefined) out.response_flags = "-";
  return out;
}

/** A workload as the traffic labels see it. `workload` defaults to the pod name. */
export interface LabelWorkload {
  name: string;
  namespace: string;
  serviceAccount?: string;
  /** The owner's name (e.g. the Deployment), when known; ztunnel's workload_name. */
  workload?: string;
  /** app.kubernetes.io/name or app label (canonical service), when known. */
  canonicalService?: string;
  canonicalRevision?: string;
}

/**
 * Labels for one connection the proxy relays, the way ztunnel fills them without mTLS: an
 * outbound connection is reported by its source (the enrolled pod), an inbound one by its
 * destination. The enrolled pod's identity is known from ZDS; the peer only when the caller
 * can tell (e.g. another pod on this node). Principals: the local pod's identity is given for
 * the destination side (ztunnel takes it from the workload); source_principal stays `unknown`
 * for plaintext (ztunnel only takes it from an mTLS peer certificate). Over HBONE both
 * principals are the tunnel's identities and connection_security_policy is `mutual_tls`.
 */
export function connectionLabels(opts: {
  direction: "inbound" | "outbound";
  pod: LabelWorkload;
  peer?: LabelWorkload;
  trustDomain?: string;
  cluster?: string;
  /** An HBONE connection's verified identities: both principals, policy mutual_tls (ztunnel's). */
  mtls?: { srcIdentity: string; dstIdentity: string };
}): TrafficLabels {
  const td = opts.trustDomain ?? "cluster.local";
  const side = (prefix: "source" | "destination", w: LabelWorkload | undefined): Partial<TrafficLabels> => {
    if (!w) return {};
    const canonical = w.canonicalService;
    const l: Partial<TrafficLabels> = {
      [`${prefix}_workload`]: w.workload ?? w.name,
      [`${prefix}_workload_namespace`]: w.namespace,
      [`${prefix}_canonical_service`]: canonical,
      [`${prefix}_canonical_revision`]: w.canonicalRevision,
      [`${prefix}_app`]: canonical,
      [`${prefix}_version`]: w.canonicalRevision,
      [`${prefix}_cluster`]: opts.cluster,
    };
    if (prefix === "destination" && w.serviceAccount) l.destination_principal = `spiffe://${td}/ns/${w.namespace}/sa/${w.serviceAccount}`;
    return l;
  };
  const [src, dst] = opts.direction === "outbound" ? [opts.pod, opts.peer] : [opts.peer, opts.pod];
  const reporter: Reporter = opts.direction === "outbound" ? "source" : "destination";
  const mtls: Partial<TrafficLabels> = opts.mtls
    ? { source_principal: opts.mtls.srcIdentity, destination_principal: opts.mtls.dstIdentity, connection_security_policy: "mutual_tls" }
    : {};
  return trafficLabels({ ...side("source", src), ...side("destination", dst), ...mtls, reporter });
}

export function responseFlagsFor(reason: string): ResponseFlags {
  return reason === "connect_failed" ? "CONNECT" : reason === "policy_denied" ? "DENY" : "-";
}
