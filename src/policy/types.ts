// What the engine is asked and what it answers. A connection is described the way ztunnel's
// RBAC sees it (https://github.com/istio/ztunnel/blob/master/src/rbac.rs `Connection`): the
// peer's verified identity, the source address, the destination workload, address and port.

/**
 * The destination as the policy engine needs it. The registry's Workload has these fields, so a
 * registry workload can be passed as is.
 */
export interface PolicyWorkload {
  readonly namespace: string;
  readonly name: string;
  readonly labels?: Readonly<Record<string, string>>;
}

export interface Connection {
  /**
   * The peer's identity from its verified certificate (`spiffe://<td>/ns/<ns>/sa/<sa>`);
   * undefined for plaintext. Ignored when `mtls` is false: only mTLS proves an identity.
   */
  sourcePrincipal?: string;
  /** The client's address (TCP peer of the connection, or of the HBONE tunnel). */
  sourceIp?: string;
  destination: PolicyWorkload;
  /** The destination pod address the connection was for. */
  destinationIp?: string;
  /** The workload (target) port: what `ports` and `destination.port` compare with. */
  destinationPort: number;
  /** Whether the connection came over mTLS (HBONE) rather than plaintext to 15006. */
  mtls: boolean;
}

export type PolicyKind = "AuthorizationPolicy" | "PeerAuthentication";

export interface PolicyRef {
  kind: PolicyKind;
  namespace: string;
  name: string;
}

/** Why a connection was decided as it was; stable strings for metrics, logs and tests. */
export type DecisionCode =
  /** a DENY AuthorizationPolicy matched */
  | "explicitly-denied"
  /** the effective PeerAuthentication mode is STRICT and the connection had no identity */
  | "mtls-required"
  /** an ALLOW AuthorizationPolicy matched */
  | "allowed"
  /** no ALLOW policy applies to the destination: allowed by default */
  | "no-allow-policies"
  /** ALLOW policies apply, none matched */
  | "not-allowed";

export interface Decision {
  allowed: boolean;
  /** The action that decided: the deciding policy's, or the default's (ALLOW with no ALLOW policies, DENY otherwise). */
  action: "ALLOW" | "DENY";
  code: DecisionCode;
  /** The deciding policy, when one decided. */
  policy?: PolicyRef;
  /** Index of the deciding rule in the policy's `spec.rules`. */
  rule?: number;
  /** One sentence, in ztunnel's words where ztunnel has them (its access log `error=`). */
  reason: string;
  /** Dry-run policies (`istio.io/dry-run: "true"`) that matched: reported, never enforced. */
  dryRun?: { policy: PolicyRef; action: "ALLOW" | "DENY"; rule: number }[];
}

export type MtlsMode = "UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT";

export interface MtlsDecision {
  /** True when plaintext must be refused (effective mode STRICT). */
  required: boolean;
  /** The effective mode; PERMISSIVE when no PeerAuthentication applies. */
  mode: Exclude<MtlsMode, "UNSET">;
  /** The PeerAuthentication that set it, and at which level. */
  policy?: PolicyRef;
  level?: "port" | "workload" | "namespace" | "mesh";
}

/** Where a document came from, for every message about it. */
export interface Origin {
  file: string;
  /** 1-based position of the YAML document in its file. */
  document: number;
  /** 1-based line where the object starts. */
  line: number;
  /** For an item of a `kind: List` document: its index in `items`. */
  item?: number;
}

export function formatOrigin(o: Origin): string {
  return `${o.file}:${o.line} (document ${o.document}${o.item === undefined ? "" : `, items[${o.item}]`})`;
}

export function refKey(r: { namespace: string; name: string }): string {
  return `${r.namespace}/${r.name}`;
}
