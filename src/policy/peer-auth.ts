// PeerAuthentication: does a workload's port take plaintext? Resolved as istiod resolves it for
// ambient (https://github.com/istio/istio/blob/master/pilot/pkg/serviceregistry/ambient/authorization.go
// `convertedSelectorPeerAuthentications`, and `fetchPeerAuthentications` in workloads.go):
//   mesh (root namespace, no selector) → namespace (no selector) → workload (selector, not in the
//   root namespace) → port (`portLevelMtls` of the workload policy); UNSET inherits; at each level
//   the oldest policy wins. STRICT refuses a connection without a peer identity; PERMISSIVE and
//   DISABLE accept it (ambient does not support DISABLE: HBONE stays mTLS, plaintext is accepted).
// ztunnel enforces STRICT as a DENY (`istio_converted_static_strict`: notPrincipals presence), so
// the engine checks it with the DENY policies.
import type { PeerAuthenticationObject } from "./schema.ts";
import type { MtlsDecision, MtlsMode, Origin, PolicyRef, PolicyWorkload } from "./types.ts";

export interface CompiledPeerAuth {
  ref: PolicyRef;
  origin: Origin;
  level: "mesh" | "namespace" | "workload";
  mode: MtlsMode;
  selector?: Readonly<Record<string, string>>;
  ports: ReadonlyMap<number, MtlsMode>;
  /** Sort key for "the oldest wins": creationTimestamp, then load order. */
  age: [number, number];
  warnings: string[];
}

export interface IgnoredPeerAuth {
  ref: PolicyRef;
  origin: Origin;
  reason: string;
}

export function compilePeerAuthentication(obj: PeerAuthenticationObject, origin: Origin, seq: number, rootNamespace: string): { pa: CompiledPeerAuth; ignored?: undefined } | { pa?: undefined; ignored: IgnoredPeerAuth } {
  const { name, namespace } = obj.metadata;
  const ref: PolicyRef = { kind: "PeerAuthentication", namespace, name };
  const spec = obj.spec ?? {};
  const labels = spec.selector?.matchLabels ?? {};
  const hasSelector = Object.keys(labels).length > 0;
  if (hasSelector && namespace === rootNamespace) {
    return { ignored: { ref, origin, reason: `a workload selector in the root namespace (${rootNamespace}) is ignored by istiod in ambient mode` } };
  }
  const ts = obj.metadata.creationTimestamp ? Date.parse(obj.metadata.creationTimestamp) : NaN;
  const warnings: string[] = [];
  if (spec.mtls?.mode === "DISABLE" || Object.values(spec.portLevelMtls ?? {}).some((m) => m.mode === "DISABLE")) {
    warnings.push("DISABLE is not supported in ambient mode: it acts as PERMISSIVE (plaintext accepted, HBONE still mTLS)");
  }
  return {
    pa: {
      ref,
      origin,
      level: hasSelector ? "workload" : namespace === rootNamespace ? "mesh" : "namespace",
      mode: spec.mtls?.mode ?? "UNSET",
      selector: hasSelector ? labels : undefined,
      ports: new Map(Object.entries(spec.portLevelMtls ?? {}).map(([p, m]) => [Number(p), m.mode ?? "UNSET"])),
      // Policies without a timestamp (most files) count as newer than any with one.
      age: [Number.isNaN(ts) ? Number.MAX_SAFE_INTEGER : ts, seq],
      warnings,
    },
  };
}

export function selects(selector: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>> | undefined): boolean {
  for (const k in selector) if (labels?.[k] !== selector[k]) return false;
  return true;
}

const older = (a: CompiledPeerAuth, b: CompiledPeerAuth) => a.age[0] - b.age[0] || a.age[1] - b.age[1];

/** The PeerAuthentications that apply to one workload, per level (undefined: none at that level). */
export interface EffectivePeerAuth {
  mesh?: CompiledPeerAuth;
  namespace?: CompiledPeerAuth;
  workload?: CompiledPeerAuth;
}

export class PeerAuthIndex {
  private readonly mesh?: CompiledPeerAuth;
  private readonly byNamespace = new Map<string, CompiledPeerAuth>();
  private readonly selectorsByNamespace = new Map<string, CompiledPeerAuth[]>();
  /** Whether any PeerAuthentication exists: istiod sends the STRICT policy only then. */
  readonly empty: boolean;

  constructor(all: readonly CompiledPeerAuth[]) {
    const sorted = [...all].sort(older);
    this.empty = sorted.length === 0;
    for (const pa of sorted) {
      if (pa.level === "mesh") this.mesh ??= pa;
      else if (pa.level === "namespace") {
        if (!this.byNamespace.has(pa.ref.namespace)) this.byNamespace.set(pa.ref.namespace, pa);
      } else {
        const list = this.selectorsByNamespace.get(pa.ref.namespace) ?? [];
        list.push(pa);
        this.selectorsByNamespace.set(pa.ref.namespace, list);
      }
    }
  }

  effective(w: PolicyWorkload): EffectivePeerAuth {
    return {
      mesh: this.mesh,
      // a workload in the root namespace has the mesh policy as its namespace policy
      namespace: this.byNamespace.get(w.namespace),
      // Labels unknown: only a STRICT selector policy is assumed to apply (fail safe: it can
      // only refuse plaintext, never let plaintext through where STRICT was meant).
      workload: this.selectorsByNamespace.get(w.namespace)?.find((pa) => (w.labels === undefined ? pa.mode === "STRICT" : selects(pa.selector!, w.labels))),
    };
  }

  /** The effective mode on `port`: the most specific level that is not UNSET. */
  static resolve(e: EffectivePeerAuth, port: number): MtlsDecision {
    const levels: [MtlsMode | undefined, CompiledPeerAuth | undefined, MtlsDecision["level"]][] = [
      [e.workload?.ports.get(port), e.workload, "port"],
      [e.workload?.mode, e.workload, "workload"],
      [e.namespace?.mode, e.namespace, "namespace"],
      [e.mesh?.mode, e.mesh, "mesh"],
    ];
    for (const [mode, pa, level] of levels) {
      if (mode === undefined || mode === "UNSET") continue;
      return { required: mode === "STRICT", mode, policy: pa!.ref, level };
    }
    return { required: false, mode: "PERMISSIVE" };
  }

  /** The mesh or namespace policy that wins over `pa` (an older one at the same level), if any. */
  shadowedBy(pa: CompiledPeerAuth): CompiledPeerAuth | undefined {
    const winner = pa.level === "mesh" ? this.mesh : pa.level === "namespace" ? this.byNamespace.get(pa.ref.namespace) : pa;
    return winner === pa ? undefined : winner;
  }
}
