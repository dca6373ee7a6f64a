// The workload model: what nshub knows about one workload (a pod, or anything with an IP that
// ztunnel's local config can describe) and the SPIFFE identity it has. Field names follow
// ztunnel's `Workload` (https://github.com/istio/ztunnel/blob/master/src/state/workload.rs) so a
// workload reads the same in `nshub workloads --json`, in config_dump and in a local-config file.
import { formatSpiffeId, SpiffeIdError } from "../identity/spiffe.ts";
import { canonicalIp, ipProblem } from "./ip.ts";

/** ztunnel's InboundProtocol: HBONE for workloads in the mesh, TCP (its default) otherwise. */
export type Protocol = "HBONE" | "TCP";
export const PROTOCOLS: readonly Protocol[] = ["TCP", "HBONE"];
/** HostNetwork workloads share the node's IPs: ztunnel leaves them out of its IP index, so do we. */
export type NetworkMode = "Standard" | "HostNetwork";
export const NETWORK_MODES: readonly NetworkMode[] = ["Standard", "HostNetwork"];

/** ztunnel's defaults for a workload from istiod (`TryFrom<XdsWorkload>` in workload.rs). */
export const DEFAULT_SERVICE_ACCOUNT = "default";

/**
 * What ztunnel's Workload carries beyond nshub's core fields, kept as given so config_dump can
 * show it; nshub does not act on these yet (no waypoints, gateways, locality routing).
 */
export interface WorkloadDetails {
  network?: string;
  workloadName?: string;
  workloadType?: string;
  canonicalName?: string;
  canonicalRevision?: string;
  hostname?: string;
  clusterId?: string;
  status?: "Healthy" | "Unhealthy";
  capacity?: number;
  nativeTunnel?: boolean;
  authorizationPolicies?: string[];
  locality?: { region: string; zone: string; subzone: string };
  waypoint?: { destination: string; hboneMtlsPort: number };
  networkGateway?: { destination: string; hboneMtlsPort: number };
  applicationTunnel?: { protocol: "NONE" | "PROXY"; port?: number | null };
  /** Services the workload backs, as "namespace/hostname" → {service port: target port}. */
  services?: Record<string, Record<string, number>>;
}

export interface Workload {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly trustDomain: string;
  /** Canonical text (see ./ip.ts), IPv4 and IPv6. */
  readonly workloadIps: readonly string[];
  readonly node: string;
  readonly protocol: Protocol;
  readonly networkMode: NetworkMode;
  readonly labels?: Readonly<Record<string, string>>;
  /** spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>, derived, never given. */
  readonly identity: string;
  /** Which source said so ("zds", "file:/etc/nshub/workloads.yaml", …). */
  readonly source: string;
  readonly details: Readonly<WorkloadDetails>;
}

/** What a source knows; makeWorkload fills the defaults and derives the identity. */
export interface WorkloadInput {
  uid: string;
  name?: string;
  namespace: string;
  serviceAccount?: string;
  /** Overrides the registry's trust domain for this workload (ztunnel's `trustDomain`). */
  trustDomain?: string;
  workloadIps: readonly string[];
  node?: string;
  protocol?: Protocol;
  networkMode?: NetworkMode;
  labels?: Record<string, string>;
  details?: WorkloadDetails;
}

/** A workload a source cannot use; `field` is the input field at fault (ztunnel's name). */
export class WorkloadInputError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "WorkloadInputError";
  }
}

/** Builds the frozen model of one workload; throws WorkloadInputError naming the field. */
export function makeWorkload(input: WorkloadInput, ctx: { trustDomain: string; source: string }): Workload {
  if (!input.uid) throw new WorkloadInputError("uid", "missing or empty: the uid is the key that sources are merged by");
  if (!input.namespace) throw new WorkloadInputError("namespace", "missing or empty: the identity needs it");
  const serviceAccount = input.serviceAccount || DEFAULT_SERVICE_ACCOUNT;
  const trustDomain = input.trustDomain || ctx.trustDomain;
  const ips: string[] = [];
  input.workloadIps.forEach((ip, i) => {
    const problem = ipProblem(ip);
    if (problem) throw new WorkloadInputError(`workloadIps[${i}]`, problem);
    const c = canonicalIp(ip);
    if (!ips.includes(c)) ips.push(c);
  });
  let identity: string;
  try {
    identity = formatSpiffeId({ trustDomain, namespace: input.namespace, serviceAccount });
  } catch (e) {
    if (!(e instanceof SpiffeIdError)) throw e;
    // Name the field the bad part came from; the SPIFFE error says what is wrong with it.
    const field = e.reason.startsWith("the trust domain") ? "trustDomain" : e.reason.startsWith("the namespace") ? "namespace" : "serviceAccount";
    throw new WorkloadInputError(field, `no valid SPIFFE identity from it: ${e.reason}`);
  }
  const w: Workload = {
    uid: input.uid,
    name: input.name ?? "",
    namespace: input.namespace,
    serviceAccount,
    trustDomain,
    workloadIps: Object.freeze(ips),
    node: input.node ?? "",
    protocol: input.protocol ?? "TCP",
    networkMode: input.networkMode ?? "Standard",
    ...(input.labels ? { labels: Object.freeze({ ...input.labels }) } : {}),
    identity,
    source: ctx.source,
    details: Object.freeze({ ...(input.details ?? {}) }),
  };
  return Object.freeze(w);
}

/** Whether a lookup by IP may return this workload (ztunnel skips HostNetwork workloads). */
export function indexedByIp(w: Workload): boolean {
  return w.networkMode !== "HostNetwork";
}

/**
 * ztunnel's tie-break between workloads claiming one IP (`WorkloadByAddr::get`): a Pod (its
 * uid has "//Pod/"; not usually spoofable) over anything else, then HBONE over TCP.
 */
export function ztunnelRank(w: Workload): number {
  return (w.uid.includes("//Pod/") ? 2 : 0) + (w.protocol === "HBONE" ? 1 : 0);
}

/** Two models say the same thing (a reload that changed nothing for this workload). */
export function sameWorkload(a: Workload, b: Workload): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
