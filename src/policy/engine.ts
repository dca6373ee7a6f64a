// The L4 authorization engine: an immutable, indexed set of compiled policies that decides a
// connection as ztunnel's `assert_rbac` does
// (https://github.com/istio/ztunnel/blob/master/src/state.rs), in the order Istio documents
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/):
//   1. any DENY policy matches → deny (STRICT mTLS is one of these: plaintext has no identity);
//   2. no ALLOW policy applies to the destination → allow;
//   3. any ALLOW policy matches → allow; 4. otherwise deny.
// Policies are indexed by namespace, so a decision only looks at its destination's namespace,
// the root namespace's mesh-wide policies and selector policies: policies of other namespaces
// cost nothing. A new source version builds a new set; a set never changes.
import { compileAuthorizationPolicy, matchingRule, type CompiledPolicy, type IgnoredPolicy } from "./compile.ts";
import { identityOf, type EvalInput } from "./match.ts";
import { connectionIp } from "./cidr.ts";
import type { PolicyDocuments } from "./load.ts";
import { compilePeerAuthentication, PeerAuthIndex, selects, type CompiledPeerAuth, type EffectivePeerAuth, type IgnoredPeerAuth } from "./peer-auth.ts";
import { refKey, type Connection, type Decision, type MtlsDecision, type PolicyRef, type PolicyWorkload } from "./types.ts";

export const DEFAULT_ROOT_NAMESPACE = "istio-system";
/** The name ztunnel's static STRICT policy has; kept in reasons so logs grep alike. */
export const STATIC_STRICT_POLICY = "istio_converted_static_strict";

export interface PolicySetOptions {
  /** Istio's root namespace (meshConfig.rootNamespace): policies there are mesh-wide. */
  rootNamespace?: string;
}

/** What applies to one destination workload, computed once per workload object. */
interface Candidates {
  deny: CompiledPolicy[];
  allow: CompiledPolicy[];
  dryRun: CompiledPolicy[];
  peer: EffectivePeerAuth;
}

const NO_POLICIES: Decision = Object.freeze({ allowed: true, action: "ALLOW", code: "no-allow-policies", reason: "no allow policies" });

const byKey = (a: CompiledPolicy, b: CompiledPolicy) => (refKey(a.ref) < refKey(b.ref) ? -1 : refKey(a.ref) > refKey(b.ref) ? 1 : 0);

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l) l.push(v);
  else m.set(k, [v]);
}

export class PolicySet {
  readonly rootNamespace: string;
  readonly policies: readonly CompiledPolicy[];
  readonly ignored: readonly (IgnoredPolicy | IgnoredPeerAuth)[];
  readonly peerAuthentications: readonly CompiledPeerAuth[];
  private readonly mesh: CompiledPolicy[] = [];
  private readonly byNamespace = new Map<string, CompiledPolicy[]>();
  /** Selector policies by namespace; the root namespace's apply to workloads of every namespace. */
  private readonly selectors = new Map<string, CompiledPolicy[]>();
  private readonly peer: PeerAuthIndex;
  // Workload objects are immutable (a change is a new object), so their candidates can be kept.
  private readonly cache = new WeakMap<PolicyWorkload, Candidates>();

  static empty(options: PolicySetOptions = {}): PolicySet {
    return new PolicySet({ authorizationPolicies: [], peerAuthentications: [] }, options);
  }

  constructor(docs: PolicyDocuments, options: PolicySetOptions = {}) {
    const root = (this.rootNamespace = options.rootNamespace ?? DEFAULT_ROOT_NAMESPACE);
    const policies: CompiledPolicy[] = [];
    const ignored: (IgnoredPolicy | IgnoredPeerAuth)[] = [];
    for (const { object, origin } of docs.authorizationPolicies) {
      const r = compileAuthorizationPolicy(object, origin, root);
      if (r.ignored) ignored.push(r.ignored);
      else policies.push(r.policy);
    }
    policies.sort(byKey);
    for (const p of policies) {
      if (p.scope === "mesh") this.mesh.push(p);
      else if (p.scope === "namespace") push(this.byNamespace, p.ref.namespace, p);
      else push(this.selectors, p.ref.namespace, p);
    }
    const pas: CompiledPeerAuth[] = [];
    docs.peerAuthentications.forEach(({ object, origin }, seq) => {
      const r = compilePeerAuthentication(object, origin, seq, root);
      if (r.ignored) ignored.push(r.ignored);
      else pas.push(r.pa);
    });
    this.policies = policies;
    this.ignored = ignored;
    this.peerAuthentications = pas;
    this.peer = new PeerAuthIndex(pas);
  }

  /** ztunnel's candidate order: the namespace's policies, the mesh-wide ones, then selector policies. */
  private candidates(w: PolicyWorkload): Candidates {
    let c = this.cache.get(w);
    if (c) return c;
    const selected = [...(this.selectors.get(w.namespace) ?? []), ...(w.namespace === this.rootNamespace ? [] : (this.selectors.get(this.rootNamespace) ?? []))]
      // Labels unknown (no source gave them): a selector policy might select this workload, so
      // it is applied, failing safe — a DENY denies, an ALLOW restricts — rather than skipped
      // (which would let a selector DENY or ALLOW silently not protect anything).
      .filter((p) => Object.keys(p.selector!).length > 0 && (w.labels === undefined || selects(p.selector!, w.labels)))
      .sort(byKey);
    const all = [...(this.byNamespace.get(w.namespace) ?? []), ...this.mesh, ...selected];
    c = {
      deny: all.filter((p) => !p.dryRun && p.action === "DENY"),
      allow: all.filter((p) => !p.dryRun && p.action === "ALLOW"),
      dryRun: all.filter((p) => p.dryRun),
      peer: this.peer.effective(w),
    };
    this.cache.set(w, c);
    return c;
  }

  /** The policies that apply to a workload, in the order they are checked. */
  applicable(w: PolicyWorkload): { deny: readonly CompiledPolicy[]; allow: readonly CompiledPolicy[]; dryRun: readonly CompiledPolicy[] } {
    return this.candidates(w);
  }

  /** PeerAuthentication's answer for a workload's port (`mtlsRequired`). */
  mtls(w: PolicyWorkload, port: number): MtlsDecision {
    return PeerAuthIndex.resolve(this.candidates(w).peer, port);
  }

  mtlsRequired(w: PolicyWorkload, port: number): boolean {
    return this.mtls(w, port).required;
  }

  decide(conn: Connection): Decision {
    if (this.policies.length === 0 && this.peer.empty) return NO_POLICIES;
    const c = this.candidates(conn.destination);
    const hasIdentity = conn.mtls && conn.sourcePrincipal !== undefined;
    const strict = !hasIdentity && !this.peer.empty ? PeerAuthIndex.resolve(c.peer, conn.destinationPort) : undefined;
    // The common case with no policy for this destination: nothing to prepare.
    if (c.deny.length === 0 && c.allow.length === 0 && c.dryRun.length === 0 && !strict?.required) {
      return NO_POLICIES;
    }
    const id = identityOf(hasIdentity ? conn.sourcePrincipal : undefined);
    const input: EvalInput = {
      principal: id.principal,
      namespace: id.namespace,
      serviceAccount: id.serviceAccount,
      srcIp: connectionIp(conn.sourceIp),
      dstIp: connectionIp(conn.destinationIp),
      port: conn.destinationPort,
    };
    const dryRun = c.dryRun.length > 0 ? this.dryRunMatches(c.dryRun, input) : undefined;
    const decided = (d: Decision): Decision => (dryRun?.length ? { ...d, dryRun } : d);
    for (const p of c.deny) {
      const rule = matchingRule(p, input);
      if (rule >= 0) return decided({ allowed: false, action: "DENY", code: "explicitly-denied", policy: p.ref, rule, reason: `explicitly denied by: ${refKey(p.ref)}` });
    }
    if (strict?.required) {
      const why = `PeerAuthentication ${refKey(strict.policy!)}: STRICT at ${strict.level} level, and the connection is plaintext`;
      return decided({ allowed: false, action: "DENY", code: "mtls-required", policy: strict.policy, reason: `explicitly denied by: ${this.rootNamespace}/${STATIC_STRICT_POLICY} (${why})` });
    }
    if (c.allow.length === 0) return decided({ allowed: true, action: "ALLOW", code: "no-allow-policies", reason: "no allow policies" });
    for (const p of c.allow) {
      const rule = matchingRule(p, input);
      if (rule >= 0) return decided({ allowed: true, action: "ALLOW", code: "allowed", policy: p.ref, rule, reason: `allowed by: ${refKey(p.ref)} rules[${rule}]` });
    }
    return decided({ allowed: false, action: "DENY", code: "not-allowed", reason: "allow policies exist, but none allowed" });
  }

  private dryRunMatches(list: CompiledPolicy[], input: EvalInput): Decision["dryRun"] {
    const out: NonNullable<Decision["dryRun"]> = [];
    for (const p of list) {
      const rule = matchingRule(p, input);
      if (rule >= 0) out.push({ policy: p.ref, action: p.action, rule });
    }
    return out;
  }

  /** Every applicable policy and the rule of it that matches (-1: none), for `nshub policy check`. */
  explain(conn: Connection): { policy: CompiledPolicy; rule: number }[] {
    const c = this.candidates(conn.destination);
    const hasIdentity = conn.mtls && conn.sourcePrincipal !== undefined;
    const input: EvalInput = {
      ...identityOf(hasIdentity ? conn.sourcePrincipal : undefined),
      srcIp: connectionIp(conn.sourceIp),
      dstIp: connectionIp(conn.destinationIp),
      port: conn.destinationPort,
    };
    return [...c.deny, ...c.allow, ...c.dryRun].map((policy) => ({ policy, rule: matchingRule(policy, input) }));
  }

  /** The number of enforced-or-dry-run AuthorizationPolicies and PeerAuthentications. */
  get size(): number {
    return this.policies.length + this.peerAuthentications.length;
  }

  /** Where a policy applies, in words. */
  appliesTo(p: { ref: PolicyRef; scope?: string; level?: string; selector?: Readonly<Record<string, string>> }): string {
    const scope = p.scope ?? p.level;
    if (scope === "mesh") return "every workload (mesh-wide)";
    if (scope === "namespace") return `every workload in namespace ${p.ref.namespace}`;
    const labels = Object.entries(p.selector ?? {}).map(([k, v]) => `${k}=${v}`);
    if (labels.length === 0) return "no workload (selector without labels)";
    const where = p.ref.namespace === this.rootNamespace && p.ref.kind === "AuthorizationPolicy" ? "any namespace" : `namespace ${p.ref.namespace}`;
    return `workloads in ${where} with ${labels.join(",")}`;
  }

  /** The PeerAuthentication that wins over `pa` at its level, if another does. */
  shadowedBy(pa: CompiledPeerAuth): PolicyRef | undefined {
    return this.peer.shadowedBy(pa)?.ref;
  }
}
