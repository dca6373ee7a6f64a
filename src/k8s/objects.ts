// The Kubernetes objects nshub reads, as far as it reads them, and where the API serves each
// kind (kube-apiserver's REST layout: /api/v1/… for the core group, /apis/<group>/<version>/…).
// Fields nshub does not use are kept in the objects as received, untyped.

export interface ObjectMeta {
  name: string;
  /** Absent for cluster-scoped kinds (Namespace). */
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
}

export interface Pod extends KubeObject {
  spec?: { nodeName?: string; serviceAccountName?: string; hostNetwork?: boolean; [k: string]: unknown };
  status?: { phase?: string; podIP?: string; podIPs?: { ip: string }[]; [k: string]: unknown };
}

export type Namespace = KubeObject;

/** AuthorizationPolicy and PeerAuthentication: their spec is src/policy's to validate. */
export interface IstioObject extends KubeObject {
  spec?: unknown;
}

/** One kind of object and its place in the API. */
export interface ResourceType {
  group: string;
  version: string;
  /** The path segment: "pods", "authorizationpolicies". */
  plural: string;
  kind: string;
  namespaced: boolean;
}

export const PODS: ResourceType = { group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true };
export const NAMESPACES: ResourceType = { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false };
export const AUTHORIZATION_POLICIES: ResourceType = { group: "security.istio.io", version: "v1", plural: "authorizationpolicies", kind: "AuthorizationPolicy", namespaced: true };
export const PEER_AUTHENTICATIONS: ResourceType = { group: "security.istio.io", version: "v1", plural: "peerauthentications", kind: "PeerAuthentication", namespaced: true };

/**
 * The path of a collection (no name) or an object. A namespaced kind without a namespace is the
 * collection across all namespaces (list and watch only).
 */
export function resourcePath(r: ResourceType, namespace?: string, name?: string): string {
  const base = r.group === "" ? `/api/${r.version}` : `/apis/${r.group}/${r.version}`;
  const ns = r.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : "";
  return `${base}${ns}/${r.plural}${name === undefined ? "" : `/${encodeURIComponent(name)}`}`;
}

/** "ns/name" (cluster-scoped: "name"): how caches key objects and logs name them. */
export function objectKey(namespace: string | undefined, name: string): string {
  return namespace ? `${namespace}/${name}` : name;
}
