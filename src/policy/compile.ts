// An AuthorizationPolicy turned into what ztunnel enforces, by istiod's own conversion
// (https://github.com/istio/istio/blob/master/pilot/pkg/serviceregistry/ambient/authorization.go
// `convertAuthorizationPolicy`, `handleRule`): each rule becomes one clause for all its `to`, one
// for all its `from` and one per `when`; HTTP-only attributes are dropped — the whole rule in an
// ALLOW policy, only the attributes in a DENY policy, where a clause left with nothing but empty
// matches never holds (./match.ts). AUDIT, CUSTOM and targetRef policies are not enforced at L4.
import { compileMatch, firstMatchingRule, type CompiledRule, type EvalInput, type Match, type MatchSpec } from "./match.ts";
import type { AuthorizationPolicyObject, AuthorizationPolicyRule } from "./schema.ts";
import type { Origin, PolicyRef } from "./types.ts";

export interface CompiledPolicy {
  ref: PolicyRef;
  action: "ALLOW" | "DENY";
  /** mesh: root namespace, no selector; namespace: no selector; workload: selector. */
  scope: "mesh" | "namespace" | "workload";
  selector?: Readonly<Record<string, string>>;
  rules: CompiledRule[];
  /** How many rules the object has (some may have been dropped as L7). */
  specRules: number;
  dryRun: boolean;
  warnings: string[];
  origin: Origin;
}

export interface IgnoredPolicy {
  ref: PolicyRef;
  action: string;
  reason: string;
  origin: Origin;
}

/** The index of the first rule of `p` that matches, or -1. */
export function matchingRule(p: CompiledPolicy, c: EvalInput): number {
  return firstMatchingRule(p.rules, c);
}

/** `when` keys ztunnel can check (istiod's l4WhenAttributes); any other key is HTTP-only. */
export const L4_WHEN_KEYS: Record<string, [keyof MatchSpec, keyof MatchSpec]> = {
  "source.ip": ["sourceIps", "notSourceIps"],
  "source.namespace": ["namespaces", "notNamespaces"],
  "source.principal": ["principals", "notPrincipals"],
  "destination.ip": ["destinationIps", "notDestinationIps"],
  "destination.port": ["ports", "notPorts"],
};

const L7_OPERATION = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const;
const L7_SOURCE = ["remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals"] as const;

/** istiod's handleRule: the rule's clauses, and the HTTP-only attributes it found. */
function compileRule(rule: AuthorizationPolicyRule, ns: string): { clauses: Match[][]; l7: string[] } {
  const l7: string[] = [];
  const clauses: Match[][] = [];
  if (rule.to?.length) {
    clauses.push(
      rule.to.map(({ operation: op = {} }) => {
        for (const k of L7_OPERATION) if (op[k]?.length) l7.push(k);
        return compileMatch({ ports: op.ports, notPorts: op.notPorts }, ns);
      }),
    );
  }
  if (rule.from?.length) {
    clauses.push(
      rule.from.map(({ source: s = {} }) => {
        for (const k of L7_SOURCE) if (s[k]?.length) l7.push(k);
        return compileMatch(
          {
            sourceIps: s.ipBlocks,
            notSourceIps: s.notIpBlocks,
            namespaces: s.namespaces,
            notNamespaces: s.notNamespaces,
            serviceAccounts: s.serviceAccounts,
            notServiceAccounts: s.notServiceAccounts,
            principals: s.principals,
            notPrincipals: s.notPrincipals,
          },
          ns,
        );
      }),
    );
  }
  for (const w of rule.when ?? []) {
    const fields = L4_WHEN_KEYS[w.key];
    if (!fields) l7.push(w.key);
    // An HTTP-only key leaves an empty match: a clause that never holds.
    clauses.push([fields ? compileMatch({ [fields[0]]: w.values, [fields[1]]: w.notValues }, ns) : null]);
  }
  return { clauses, l7 };
}

const HTTP_FMT = (found: string, tail: string) => `ztunnel does not support HTTP attributes (found: ${found}). In ambient mode you must use a waypoint proxy to enforce HTTP rules. ${tail}`;
const DENY_NO_EFFECT = "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy.";
const DENY_MIXED = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested.";
const ALLOW_L7 = "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested.";

/** Go's strconv.ParseBool, which istiod applies to the `istio.io/dry-run` annotation. */
function parseGoBool(v: string): boolean | undefined {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(v)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(v)) return false;
  return undefined;
}

export type CompileResult = { policy: CompiledPolicy; ignored?: undefined } | { policy?: undefined; ignored: IgnoredPolicy };

export function compileAuthorizationPolicy(obj: AuthorizationPolicyObject, origin: Origin, rootNamespace: string): CompileResult {
  const { name, namespace } = obj.metadata;
  const ref: PolicyRef = { kind: "AuthorizationPolicy", namespace, name };
  const spec = obj.spec ?? {};
  const action = spec.action ?? "ALLOW";
  if (spec.targetRef || spec.targetRefs?.length) {
    return { ignored: { ref, action, origin, reason: "has a targetRef: it is for a waypoint, not enforced at L4 (as istiod does not send it to ztunnel)" } };
  }
  if (action !== "ALLOW" && action !== "DENY") {
    return { ignored: { ref, action, origin, reason: `ztunnel does not support the ${action} action: not enforced at L4` } };
  }
  const warnings: string[] = [];
  const dryRunText = obj.metadata.annotations?.["istio.io/dry-run"];
  let dryRun = false;
  if (dryRunText) {
    const b = parseGoBool(dryRunText);
    if (b === undefined) warnings.push(`annotation istio.io/dry-run=${JSON.stringify(dryRunText)} is not a boolean: the policy is enforced (as istiod does)`);
    dryRun = b ?? false;
  }
  const selector = spec.selector ? (spec.selector.matchLabels ?? {}) : undefined;
  if (selector && Object.keys(selector).length === 0) warnings.push("workload selector specified without labels: istiod attaches it to no workload, so it applies nowhere");
  const scope = selector ? "workload" : namespace === rootNamespace ? "mesh" : "namespace";
  const rules: CompiledRule[] = [];
  const l7 = new Set<string>();
  (spec.rules ?? []).forEach((r, i) => {
    const c = compileRule(r, namespace);
    c.l7.forEach((k) => l7.add(k));
    // "L7 policies never match for ALLOW": the whole rule goes. For DENY the rule stays without them.
    if (action === "ALLOW" && c.l7.length > 0) return;
    rules.push({ index: i, clauses: c.clauses });
    for (const f of r.from ?? []) {
      for (const p of [...(f.source?.principals ?? []), ...(f.source?.notPrincipals ?? [])]) {
        if (p.startsWith("spiffe://")) warnings.push(`rules[${i}]: principal ${JSON.stringify(p)} never matches: Istio principals are written without "spiffe://" (e.g. cluster.local/ns/default/sa/app)`);
      }
      if (f.source?.trustDomains?.length || f.source?.notTrustDomains?.length) warnings.push(`rules[${i}]: trustDomains/notTrustDomains are not part of istiod's L4 conversion and are ignored`);
    }
  });
  if (l7.size > 0) {
    const effective = rules.some((r) => r.clauses.every((cl) => cl.length === 0 || cl.some((m) => m !== null)));
    const tail = action === "ALLOW" ? ALLOW_L7 : effective ? DENY_MIXED : DENY_NO_EFFECT;
    warnings.unshift(HTTP_FMT([...l7].sort().join(", "), tail));
  }
  return { policy: { ref, action, scope, selector, rules, specRules: spec.rules?.length ?? 0, dryRun, warnings, origin } };
}
