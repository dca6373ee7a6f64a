// Matching one connection against compiled rules, as ztunnel's
// https://github.com/istio/ztunnel/blob/master/src/rbac.rs `Authorization::matches` does:
//   rules (OR) → clauses (AND) → matches (OR) → fields (AND; any positive value, no negative one).
// An empty match is skipped, never matched; a clause with no matches holds; a rule with no
// clauses (`rules: [{}]`) matches everything; a policy with no rules matches nothing.
import { parseSpiffeId } from "../identity/spiffe.ts";
import { cidrContains, parseCidr, type Cidr, type Ip } from "./cidr.ts";

/** istiod's StringMatch from a policy string: `*` presence, `*x` suffix, `x*` prefix, else exact. */
export type StringMatch = { kind: "exact" | "prefix" | "suffix" | "presence"; value: string };

export function stringToMatch(v: string): StringMatch {
  if (v === "*") return { kind: "presence", value: "" };
  if (v.startsWith("*")) return { kind: "suffix", value: v.slice(1) };
  if (v.endsWith("*")) return { kind: "prefix", value: v.slice(0, -1) };
  return { kind: "exact", value: v };
}

export function stringMatches(m: StringMatch, s: string): boolean {
  switch (m.kind) {
    case "exact":
      return s === m.value;
    case "prefix":
      return s.startsWith(m.value);
    case "suffix":
      return s.endsWith(m.value);
    case "presence":
      return s !== "";
  }
}

/** The connection, prepared once per decision. */
export interface EvalInput {
  /** The peer identity without `spiffe://` (ztunnel compares principals so); undefined: none. */
  principal: string | undefined;
  /** Namespace and service account of the identity; "" when there is none. */
  namespace: string;
  serviceAccount: string;
  srcIp: Ip | undefined;
  dstIp: Ip | undefined;
  port: number;
}

type Identity = Pick<EvalInput, "principal" | "namespace" | "serviceAccount">;
const NO_IDENTITY: Identity = { principal: undefined, namespace: "", serviceAccount: "" };
const identityCache = new Map<string, Identity>();

/** The EvalInput's identity part from a principal (a bounded cache: parsing is per connection). */
export function identityOf(principal: string | undefined): Identity {
  if (principal === undefined) return NO_IDENTITY;
  let id = identityCache.get(principal);
  if (!id) {
    let ns = "";
    let sa = "";
    try {
      ({ namespace: ns, serviceAccount: sa } = parseSpiffeId(principal));
    } catch {
      // not a workload identity: no namespace or service account to match
    }
    const stripped = principal.startsWith("spiffe://") ? principal.slice("spiffe://".length) : undefined;
    id = { principal: stripped, namespace: ns, serviceAccount: sa };
    if (identityCache.size >= 10_000) identityCache.clear();
    identityCache.set(principal, id);
  }
  return id;
}

/**
 * One match: every field that is set must hold (ztunnel's matches_internal: any positive value,
 * no negative value). Plain data and one function over it, so the engine's hot loop stays
 * monomorphic; `null` is an empty match, which ztunnel skips.
 */
interface MatchData {
  principals: StringMatch[];
  notPrincipals: StringMatch[];
  namespaces: StringMatch[];
  notNamespaces: StringMatch[];
  serviceAccounts: [string, string][];
  notServiceAccounts: [string, string][];
  sourceIps: Cidr[];
  notSourceIps: Cidr[];
  destinationIps: Cidr[];
  notDestinationIps: Cidr[];
  ports: number[];
  notPorts: number[];
}
export type Match = MatchData | null;

/** One rule: its clauses, and its index in `spec.rules`. */
export interface CompiledRule {
  index: number;
  clauses: Match[][];
}

function anyString(list: StringMatch[], s: string | undefined): boolean {
  if (s === undefined) return false; // no identity: no principal matches
  for (let i = 0; i < list.length; i++) if (stringMatches(list[i]!, s)) return true;
  return false;
}

function anyAccount(list: [string, string][], c: EvalInput): boolean {
  if (c.principal === undefined) return false;
  for (let i = 0; i < list.length; i++) if (list[i]![0] === c.namespace && list[i]![1] === c.serviceAccount) return true;
  return false;
}

function anyCidr(list: Cidr[], ip: Ip | undefined): boolean {
  for (let i = 0; i < list.length; i++) if (cidrContains(list[i]!, ip)) return true;
  return false;
}

function matchHolds(m: MatchData, c: EvalInput): boolean {
  if (m.ports.length > 0 && !m.ports.includes(c.port)) return false;
  if (m.notPorts.length > 0 && m.notPorts.includes(c.port)) return false;
  if (m.principals.length > 0 && !anyString(m.principals, c.principal)) return false;
  if (m.notPrincipals.length > 0 && anyString(m.notPrincipals, c.principal)) return false;
  if (m.namespaces.length > 0 && !anyString(m.namespaces, c.namespace)) return false;
  if (m.notNamespaces.length > 0 && anyString(m.notNamespaces, c.namespace)) return false;
  if (m.serviceAccounts.length > 0 && !anyAccount(m.serviceAccounts, c)) return false;
  if (m.notServiceAccounts.length > 0 && anyAccount(m.notServiceAccounts, c)) return false;
  if (m.sourceIps.length > 0 && !anyCidr(m.sourceIps, c.srcIp)) return false;
  if (m.notSourceIps.length > 0 && anyCidr(m.notSourceIps, c.srcIp)) return false;
  if (m.destinationIps.length > 0 && !anyCidr(m.destinationIps, c.dstIp)) return false;
  if (m.notDestinationIps.length > 0 && anyCidr(m.notDestinationIps, c.dstIp)) return false;
  return true;
}

/** The index (in `spec.rules`) of the first rule that matches, or -1. */
export function firstMatchingRule(rules: readonly CompiledRule[], c: EvalInput): number {
  for (let r = 0; r < rules.length; r++) {
    const clauses = rules[r]!.clauses;
    let ok = true;
    for (let k = 0; k < clauses.length && ok; k++) {
      const clause = clauses[k]!;
      // a clause with no matches holds; otherwise one non-empty match must
      let clauseOk = clause.length === 0;
      for (let i = 0; i < clause.length && !clauseOk; i++) {
        const m = clause[i]!;
        if (m !== null && matchHolds(m, c)) clauseOk = true;
      }
      ok = clauseOk;
    }
    if (ok) return rules[r]!.index;
  }
  return -1;
}

export interface MatchSpec {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  serviceAccounts?: string[];
  notServiceAccounts?: string[];
  sourceIps?: string[];
  notSourceIps?: string[];
  destinationIps?: string[];
  notDestinationIps?: string[];
  ports?: string[];
  notPorts?: string[];
}

// Invalid entries are dropped as istiod drops them; validation has refused them already.
const cidrs = (v: string[] = []) => v.map(parseCidr).filter((x): x is Cidr => typeof x !== "string");
const ports = (v: string[] = []) => v.filter((p) => /^\d+$/.test(p) && Number(p) <= 65535).map(Number);
const sas = (v: string[] = [], ns: string) => v.map((s) => (s.includes("/") ? s.split("/") : [ns, s]) as [string, string]);
const strs = (v: string[] = []) => v.map(stringToMatch);

export function compileMatch(m: MatchSpec, policyNamespace: string): Match {
  const d: MatchData = {
    principals: strs(m.principals),
    notPrincipals: strs(m.notPrincipals),
    namespaces: strs(m.namespaces),
    notNamespaces: strs(m.notNamespaces),
    serviceAccounts: sas(m.serviceAccounts, policyNamespace),
    notServiceAccounts: sas(m.notServiceAccounts, policyNamespace),
    sourceIps: cidrs(m.sourceIps),
    notSourceIps: cidrs(m.notSourceIps),
    destinationIps: cidrs(m.destinationIps),
    notDestinationIps: cidrs(m.notDestinationIps),
    ports: ports(m.ports),
    notPorts: ports(m.notPorts),
  };
  return Object.values(d).every((v: unknown[]) => v.length === 0) ? null : d;
}

