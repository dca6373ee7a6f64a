// The model rendered in ztunnel's two shapes: its config_dump `workloads` section (how ztunnel
// serializes `Workload`: https://github.com/istio/ztunnel/blob/master/src/state/workload.rs —
// camelCase, declaration order, fields marked skip_serializing_if left out when default; the
// array sorted by uid as ProxyState's Serialize in src/state.rs does), and an entry of its local
// config file (`LocalWorkload`), so a listed workload can be written back as ztunnel reads it.
//
// Values are the model's, which fills in what ztunnel fills in for workloads from istiod
// (`TryFrom<XdsWorkload>`): serviceAccount "default", the trust domain, clusterId "Kubernetes";
// and `services` lists the "namespace/hostname" keys, as for an istiod workload. The proxy adds
// its own per-pod fields (state, listeners, connections) to the entries of the pods it serves.
import type { Workload } from "./workload.ts";
import type { LocalWorkloadEntry } from "./workload-schema.ts";

/** One workload as ztunnel's config_dump shows it (keys in ztunnel's order). */
export type DumpedWorkload = Record<string, unknown>;

/** ztunnel's default for a workload's cluster (CLUSTER_ID's default, and istiod's). */
export const DEFAULT_CLUSTER_ID = "Kubernetes";

export function configDumpWorkloads(workloads: Iterable<Workload>): DumpedWorkload[] {
  return [...workloads].sort((a, b) => (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0)).map(dumpWorkload);
}

export function dumpWorkload(w: Workload): DumpedWorkload {
  const d = w.details;
  const out: DumpedWorkload = {};
  const put = (key: string, value: unknown, always = false) => {
    if (always || !isDefault(value)) out[key] = value;
  };
  put("workloadIps", [...w.workloadIps], true);
  put("waypoint", d.waypoint);
  put("networkGateway", d.networkGateway);
  put("protocol", w.protocol, true);
  put("networkMode", w.networkMode, true);
  put("uid", w.uid);
  put("name", w.name, true);
  put("namespace", w.namespace, true);
  put("trustDomain", w.trustDomain);
  put("serviceAccount", w.serviceAccount);
  put("network", d.network);
  put("workloadName", d.workloadName);
  put("workloadType", d.workloadType);
  put("canonicalName", d.canonicalName);
  put("canonicalRevision", d.canonicalRevision);
  put("hostname", d.hostname);
  put("node", w.node);
  put("nativeTunnel", d.nativeTunnel);
  // ApplicationTunnel's `port` is an Option without skip_serializing_if: null when unset.
  put("applicationTunnel", d.applicationTunnel && { protocol: d.applicationTunnel.protocol, port: d.applicationTunnel.port ?? null });
  put("authorizationPolicies", d.authorizationPolicies);
  put("status", d.status ?? "Healthy", true);
  put("clusterId", d.clusterId || DEFAULT_CLUSTER_ID, true);
  put("locality", d.locality);
  put("services", Object.keys(d.services ?? {}).sort());
  put("capacity", d.capacity ?? 1, true);
  return out;
}

/** The workload as an entry of a local-config file, as ztunnel reads it back. */
export function localConfigEntry(w: Workload): LocalWorkloadEntry {
  const d = w.details;
  // The trust domain is written out: the identity the listing showed is the one the file gives.
  const entry: Record<string, unknown> = { uid: w.uid, name: w.name, namespace: w.namespace, serviceAccount: w.serviceAccount, trustDomain: w.trustDomain, workloadIps: [...w.workloadIps], protocol: w.protocol, node: w.node };
  if (w.networkMode !== "Standard") entry.networkMode = w.networkMode;
  for (const [k, v] of Object.entries(d)) if (k !== "services" && v !== undefined) entry[k] = v;
  entry.services = d.services ?? {};
  return entry as LocalWorkloadEntry;
}

/** serde's `is_default`: "", false, empty list, None, and a Locality of three empty strings. */
function isDefault(v: unknown): boolean {
  if (v === undefined || v === null || v === "" || v === false) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === "object") return Object.values(v as object).every((x) => x === "");
  return false;
}
