// The L4 authorization engine, one row per case: a policy set (YAML), a connection, the expected
// decision and the policy/rule that made it. The cases follow Istio's AuthorizationPolicy and
// PeerAuthentication documentation and ztunnel's rbac tests (src/rbac.rs, src/state.rs), and
// istiod's ambient conversion (pilot/pkg/serviceregistry/ambient/authorization.go), in our words.
import { describe, expect, test } from "bun:test";
import { stringify } from "yaml";
import { PolicySet } from "../../src/policy/engine.ts";
import { parsePolicyText } from "../../src/policy/load.ts";
import type { Connection, DecisionCode } from "../../src/policy/types.ts";

// ---- building blocks ----------------------------------------------------------------------

const doc = (kind: string, ns: string, name: string, spec: unknown, metadata: Record<string, unknown> = {}) =>
  stringify({ apiVersion: "security.istio.io/v1", kind, metadata: { name, namespace: ns, ...metadata }, ...(spec === undefined ? {} : { spec }) });
const ap = (ns: string, name: string, spec: unknown, metadata?: Record<string, unknown>) => doc("AuthorizationPolicy", ns, name, spec, metadata);
const pa = (ns: string, name: string, spec: unknown, metadata?: Record<string, unknown>) => doc("PeerAuthentication", ns, name, spec, metadata);
const allowAll = (ns: string, name = "allow-all") => ap(ns, name, { rules: [{}] });

function policySet(docs: string[], rootNamespace?: string): PolicySet {
  const r = parsePolicyText(docs.join("---\n"), "test.yaml");
  expect(r.errors).toEqual([]);
  return new PolicySet(r, { rootNamespace });
}

const HTTPBIN = { namespace: "foo", name: "httpbin-1", labels: { app: "httpbin", version: "v1" } };
const id = (ns: string, sa: string, td = "cluster.local") => `spiffe://${td}/ns/${ns}/sa/${sa}`;
/** An mTLS (HBONE) connection into foo/httpbin-1:8080 from 10.0.1.5 with identity `principal`. */
const mtls = (principal: string, over: Partial<Connection> = {}): Connection => ({
  sourcePrincipal: principal,
  sourceIp: "10.0.1.5",
  destination: HTTPBIN,
  destinationIp: "10.0.0.10",
  destinationPort: 8080,
  mtls: true,
  ...over,
});
/** A plaintext connection (15006) into foo/httpbin-1:8080. */
const plain = (sourceIp = "10.0.1.5", over: Partial<Connection> = {}): Connection => ({ sourceIp, destination: HTTPBIN, destinationIp: "10.0.0.10", destinationPort: 8080, mtls: false, ...over });

interface Row {
  name: string;
  policies: string[];
  conn: Connection;
  allowed: boolean;
  code: DecisionCode;
  /** "namespace/name" of the deciding policy, when one decided. */
  by?: string;
  rule?: number;
  root?: string;
}

function run(rows: Row[]): void {
  for (const r of rows) {
    test(r.name, () => {
      const d = policySet(r.policies, r.root).decide(r.conn);
      expect({ allowed: d.allowed, code: d.code, by: d.policy ? `${d.policy.namespace}/${d.policy.name}` : undefined, rule: d.rule }).toEqual({
        allowed: r.allowed,
        code: r.code,
        by: r.by,
        rule: r.rule,
      });
      expect(d.action).toBe(r.allowed ? "ALLOW" : "DENY");
    });
  }
}

const SLEEP = id("bar", "sleep");

// ---- the rows -----------------------------------------------------------------------------

describe("defaults and empty rules", () => {
  run([
    { name: "no policy at all: allowed", policies: [], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "an ALLOW policy without rules matches nothing: allow-nothing denies", policies: [ap("foo", "allow-nothing", {})], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "an ALLOW policy without spec at all is allow-nothing too", policies: [ap("foo", "allow-nothing", undefined)], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "an ALLOW policy with rules: [] is allow-nothing", policies: [ap("foo", "allow-nothing", { rules: [] })], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "rules: [{}] matches everything: allow-all", policies: [allowAll("foo")], conn: plain(), allowed: true, code: "allowed", by: "foo/allow-all", rule: 0 },
    { name: "DENY with rules: [{}] denies everything", policies: [ap("foo", "deny-all", { action: "DENY", rules: [{}] })], conn: mtls(SLEEP), allowed: false, code: "explicitly-denied", by: "foo/deny-all", rule: 0 },
    { name: "an ALLOW policy of another namespace does not apply", policies: [ap("bar", "allow-nothing", {})], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a DENY policy that matches nothing leaves the default allow", policies: [ap("foo", "deny-baz", { action: "DENY", rules: [{ from: [{ source: { namespaces: ["baz"] } }] }] })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
  ]);
});

describe("deny before allow", () => {
  const policies = [allowAll("foo"), ap("foo", "deny-bar", { action: "DENY", rules: [{ from: [{ source: { namespaces: ["bar"] } }] }] })];
  run([
    { name: "DENY from namespace bar wins over an ALLOW of everything", policies, conn: mtls(SLEEP), allowed: false, code: "explicitly-denied", by: "foo/deny-bar", rule: 0 },
    { name: "the same set allows namespace baz", policies, conn: mtls(id("baz", "sleep")), allowed: true, code: "allowed", by: "foo/allow-all", rule: 0 },
    {
      name: "a mesh-wide DENY wins over a namespace ALLOW",
      policies: [allowAll("foo"), ap("istio-system", "deny-sleep", { action: "DENY", rules: [{ from: [{ source: { principals: ["*/sa/sleep"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: false,
      code: "explicitly-denied",
      by: "istio-system/deny-sleep",
      rule: 0,
    },
  ]);
});

describe("from.source principals", () => {
  const allowP = (values: string[], field = "principals") => [ap("foo", "by-principal", { rules: [{ from: [{ source: { [field]: values } }] }] })];
  run([
    { name: "exact principal, written without spiffe://: matches", policies: allowP(["cluster.local/ns/bar/sa/sleep"]), conn: mtls(SLEEP), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "exact principal: another service account is not allowed", policies: allowP(["cluster.local/ns/bar/sa/sleep"]), conn: mtls(id("bar", "curl")), allowed: false, code: "not-allowed" },
    { name: "exact principal: another trust domain is not allowed", policies: allowP(["cluster.local/ns/bar/sa/sleep"]), conn: mtls(id("bar", "sleep", "other.td")), allowed: false, code: "not-allowed" },
    { name: "suffix match */sa/sleep: any trust domain and namespace", policies: allowP(["*/sa/sleep"]), conn: mtls(id("baz", "sleep", "other.td")), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "prefix match cluster.local/ns/bar/*", policies: allowP(["cluster.local/ns/bar/*"]), conn: mtls(id("bar", "curl")), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "prefix match does not cover namespace bar2's prefix-lookalike with a slash", policies: allowP(["cluster.local/ns/bar/*"]), conn: mtls(id("bar2", "curl")), allowed: false, code: "not-allowed" },
    { name: "'*' (presence) matches any mTLS peer", policies: allowP(["*"]), conn: mtls(id("any", "one")), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "'*' (presence) does not match plaintext", policies: allowP(["*"]), conn: plain(), allowed: false, code: "not-allowed" },
    { name: "a principal written with spiffe:// never matches (ztunnel compares without the scheme)", policies: allowP([SLEEP]), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "notPrincipals: a listed peer is not allowed", policies: allowP(["cluster.local/ns/bar/sa/sleep"], "notPrincipals"), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "notPrincipals: another peer is allowed", policies: allowP(["cluster.local/ns/bar/sa/sleep"], "notPrincipals"), conn: mtls(id("bar", "curl")), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "notPrincipals: plaintext has no principal, so it is 'not' any of them", policies: allowP(["*"], "notPrincipals"), conn: plain(), allowed: true, code: "allowed", by: "foo/by-principal", rule: 0 },
    { name: "an identity without mTLS is ignored (plaintext proves nothing)", policies: allowP(["*"]), conn: plain("10.0.1.5", { sourcePrincipal: SLEEP }), allowed: false, code: "not-allowed" },
  ]);
});

describe("from.source namespaces and serviceAccounts", () => {
  const allow = (source: object) => [ap("foo", "by-source", { rules: [{ from: [{ source }] }] })];
  run([
    { name: "namespaces: the peer identity's namespace matches", policies: allow({ namespaces: ["bar"] }), conn: mtls(SLEEP), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "namespaces: another namespace does not", policies: allow({ namespaces: ["bar"] }), conn: mtls(id("baz", "sleep")), allowed: false, code: "not-allowed" },
    { name: "namespaces: plaintext has no namespace", policies: allow({ namespaces: ["bar"] }), conn: plain(), allowed: false, code: "not-allowed" },
    { name: "namespaces: prefix ba*", policies: allow({ namespaces: ["ba*"] }), conn: mtls(id("baz", "x")), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "notNamespaces: the listed namespace is not allowed", policies: allow({ notNamespaces: ["bar"] }), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "notNamespaces: plaintext is in none of them", policies: allow({ notNamespaces: ["bar"] }), conn: plain(), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "serviceAccounts ns/sa matches (trust domain ignored)", policies: allow({ serviceAccounts: ["bar/sleep"] }), conn: mtls(id("bar", "sleep", "other.td")), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "serviceAccounts without a namespace means the policy's namespace", policies: allow({ serviceAccounts: ["sleep"] }), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "serviceAccounts 'sleep' matches foo/sleep", policies: allow({ serviceAccounts: ["sleep"] }), conn: mtls(id("foo", "sleep")), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "notServiceAccounts: plaintext holds", policies: allow({ notServiceAccounts: ["bar/sleep"] }), conn: plain(), allowed: true, code: "allowed", by: "foo/by-source", rule: 0 },
    { name: "notServiceAccounts: the listed one is refused", policies: allow({ notServiceAccounts: ["bar/sleep"] }), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
  ]);
});

describe("from.source ipBlocks (IPv4 and IPv6)", () => {
  const allow = (source: object) => [ap("foo", "by-ip", { rules: [{ from: [{ source }] }] })];
  run([
    { name: "ipBlocks 10.0.1.0/24 contains 10.0.1.5", policies: allow({ ipBlocks: ["10.0.1.0/24"] }), conn: plain("10.0.1.5"), allowed: true, code: "allowed", by: "foo/by-ip", rule: 0 },
    { name: "ipBlocks 10.0.1.0/24 does not contain 10.0.2.5", policies: allow({ ipBlocks: ["10.0.1.0/24"] }), conn: plain("10.0.2.5"), allowed: false, code: "not-allowed" },
    { name: "a bare address is a /32", policies: allow({ ipBlocks: ["10.0.1.5"] }), conn: plain("10.0.1.6"), allowed: false, code: "not-allowed" },
    { name: "host bits in a block are masked (10.0.1.7/24)", policies: allow({ ipBlocks: ["10.0.1.7/24"] }), conn: plain("10.0.1.200"), allowed: true, code: "allowed", by: "foo/by-ip", rule: 0 },
    { name: "IPv6 block fd00:10::/32 contains fd00:10:0:1::5", policies: allow({ ipBlocks: ["fd00:10::/32"] }), conn: plain("fd00:10:0:1::5"), allowed: true, code: "allowed", by: "foo/by-ip", rule: 0 },
    { name: "IPv6 block fd00:10::/32 does not contain fd00:11::5", policies: allow({ ipBlocks: ["fd00:10::/32"] }), conn: plain("fd00:11::5"), allowed: false, code: "not-allowed" },
    { name: "an IPv4 source never matches an IPv6 block", policies: allow({ ipBlocks: ["::/0"] }), conn: plain("10.0.1.5"), allowed: false, code: "not-allowed" },
    { name: "an IPv4-mapped source is its IPv4 address", policies: allow({ ipBlocks: ["10.0.1.0/24"] }), conn: plain("::ffff:10.0.1.5"), allowed: true, code: "allowed", by: "foo/by-ip", rule: 0 },
    { name: "notIpBlocks: inside is refused", policies: allow({ notIpBlocks: ["10.0.0.0/8"] }), conn: plain("10.0.1.5"), allowed: false, code: "not-allowed" },
    { name: "notIpBlocks: outside is allowed", policies: allow({ notIpBlocks: ["10.0.0.0/8"] }), conn: plain("192.168.1.5"), allowed: true, code: "allowed", by: "foo/by-ip", rule: 0 },
    { name: "ipBlocks AND namespaces in one source: both must hold", policies: allow({ ipBlocks: ["10.0.1.0/24"], namespaces: ["bar"] }), conn: mtls(SLEEP, { sourceIp: "10.9.9.9" }), allowed: false, code: "not-allowed" },
  ]);
});

describe("to.operation ports", () => {
  const allow = (operation: object) => [ap("foo", "by-port", { rules: [{ to: [{ operation }] }] })];
  run([
    { name: "ports 8080 matches port 8080", policies: allow({ ports: ["8080"] }), conn: plain(), allowed: true, code: "allowed", by: "foo/by-port", rule: 0 },
    { name: "ports 8080 does not match 9090", policies: allow({ ports: ["8080"] }), conn: plain("10.0.1.5", { destinationPort: 9090 }), allowed: false, code: "not-allowed" },
    { name: "notPorts 8080 refuses 8080", policies: allow({ notPorts: ["8080"] }), conn: plain(), allowed: false, code: "not-allowed" },
    { name: "notPorts 8080 allows 9090", policies: allow({ notPorts: ["8080"] }), conn: plain("10.0.1.5", { destinationPort: 9090 }), allowed: true, code: "allowed", by: "foo/by-port", rule: 0 },
  ]);
});

describe("when conditions", () => {
  const allow = (when: object[]) => [ap("foo", "by-when", { rules: [{ when }] })];
  run([
    { name: "source.ip values", policies: allow([{ key: "source.ip", values: ["10.0.1.0/24"] }]), conn: plain("10.0.1.5"), allowed: true, code: "allowed", by: "foo/by-when", rule: 0 },
    { name: "source.ip notValues", policies: allow([{ key: "source.ip", notValues: ["10.0.1.0/24"] }]), conn: plain("10.0.1.5"), allowed: false, code: "not-allowed" },
    { name: "source.namespace values", policies: allow([{ key: "source.namespace", values: ["bar"] }]), conn: mtls(SLEEP), allowed: true, code: "allowed", by: "foo/by-when", rule: 0 },
    { name: "source.principal values (suffix)", policies: allow([{ key: "source.principal", values: ["*/sa/sleep"] }]), conn: mtls(SLEEP), allowed: true, code: "allowed", by: "foo/by-when", rule: 0 },
    { name: "source.principal notValues", policies: allow([{ key: "source.principal", notValues: ["*/sa/sleep"] }]), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "destination.ip values", policies: allow([{ key: "destination.ip", values: ["10.0.0.10"] }]), conn: plain(), allowed: true, code: "allowed", by: "foo/by-when", rule: 0 },
    { name: "destination.ip notValues", policies: allow([{ key: "destination.ip", notValues: ["10.0.0.0/24"] }]), conn: plain(), allowed: false, code: "not-allowed" },
    { name: "destination.port values", policies: allow([{ key: "destination.port", values: ["9090"] }]), conn: plain(), allowed: false, code: "not-allowed" },
    { name: "two when conditions: both must hold", policies: allow([{ key: "source.namespace", values: ["bar"] }, { key: "destination.port", values: ["8080"] }]), conn: mtls(SLEEP, { destinationPort: 9090 }), allowed: false, code: "not-allowed" },
    { name: "an HTTP-only key (request.headers) drops the ALLOW rule", policies: allow([{ key: "request.headers[x-user]", values: ["admin"] }]), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "connection.sni is not L4 in ambient: the ALLOW rule is dropped", policies: allow([{ key: "connection.sni", values: ["*"] }]), conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    {
      name: "an HTTP-only when key in a DENY leaves a clause that never holds: no effect",
      policies: [ap("foo", "deny-hdr", { action: "DENY", rules: [{ from: [{ source: { namespaces: ["bar"] } }], when: [{ key: "request.auth.claims[iss]", values: ["x"] }] }] })],
      conn: mtls(SLEEP),
      allowed: true,
      code: "no-allow-policies",
    },
  ]);
});

describe("L7 (HTTP) fields at L4, as istiod converts them", () => {
  run([
    {
      name: "ALLOW: a rule with methods is dropped; the L4 rule after it still decides (rule 1)",
      policies: [ap("foo", "mixed", { rules: [{ to: [{ operation: { methods: ["GET"] } }] }, { from: [{ source: { namespaces: ["bar"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: true,
      code: "allowed",
      by: "foo/mixed",
      rule: 1,
    },
    {
      name: "ALLOW: methods AND ports in one rule: the whole rule is dropped, not just methods",
      policies: [ap("foo", "get-8080", { rules: [{ to: [{ operation: { methods: ["GET"], ports: ["8080"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: false,
      code: "not-allowed",
    },
    { name: "ALLOW with only requestPrincipals: every rule dropped, the policy denies all", policies: [ap("foo", "jwt", { rules: [{ from: [{ source: { requestPrincipals: ["*"] } }] }] })], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    {
      name: "DENY: methods AND ports: enforced without methods, so all of port 8080 is denied (more restrictive)",
      policies: [ap("foo", "deny-get-8080", { action: "DENY", rules: [{ to: [{ operation: { methods: ["GET"], ports: ["8080"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: false,
      code: "explicitly-denied",
      by: "foo/deny-get-8080",
      rule: 0,
    },
    {
      name: "DENY: methods AND ports: another port is untouched",
      policies: [ap("foo", "deny-get-8080", { action: "DENY", rules: [{ to: [{ operation: { methods: ["GET"], ports: ["8080"] } }] }] })],
      conn: mtls(SLEEP, { destinationPort: 9090 }),
      allowed: true,
      code: "no-allow-policies",
    },
    { name: "DENY with only methods: nothing enforceable at L4, no effect (istiod: 'will have no effect')", policies: [ap("foo", "deny-get", { action: "DENY", rules: [{ to: [{ operation: { methods: ["GET"] } }] }] })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    {
      name: "DENY from namespace bar to methods POST: the emptied `to` clause never holds, no effect",
      policies: [ap("foo", "deny-post", { action: "DENY", rules: [{ from: [{ source: { namespaces: ["bar"] } }], to: [{ operation: { methods: ["POST"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: true,
      code: "no-allow-policies",
    },
    {
      name: "DENY: an L7-only source next to an L4 one: the L4 one still denies",
      policies: [ap("foo", "deny-mixed", { action: "DENY", rules: [{ from: [{ source: { requestPrincipals: ["*"] } }, { source: { namespaces: ["bar"] } }] }] })],
      conn: mtls(SLEEP),
      allowed: false,
      code: "explicitly-denied",
      by: "foo/deny-mixed",
      rule: 0,
    },
    {
      name: "DENY: remoteIpBlocks is HTTP-only (X-Forwarded-For): its source is empty and never matches",
      policies: [ap("foo", "deny-remote", { action: "DENY", rules: [{ from: [{ source: { remoteIpBlocks: ["10.0.0.0/8"] } }] }] })],
      conn: plain("10.0.1.5"),
      allowed: true,
      code: "no-allow-policies",
    },
  ]);
});

describe("scope: mesh (root namespace), namespace, workload selector", () => {
  const sel = (ns: string, name: string, labels: Record<string, string>, spec: object = {}) => ap(ns, name, { selector: { matchLabels: labels }, ...spec });
  run([
    { name: "a policy in the root namespace without selector applies mesh-wide", policies: [ap("istio-system", "allow-nothing", {})], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "the root namespace is configurable: mesh-root's policy is mesh-wide", root: "mesh-root", policies: [ap("mesh-root", "allow-nothing", {})], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "with another root namespace, istio-system's policy is only for istio-system", root: "mesh-root", policies: [ap("istio-system", "allow-nothing", {})], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a namespace policy of foo applies to foo's workloads", policies: [ap("foo", "allow-nothing", {})], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "a namespace policy of foo does not apply in bar", policies: [ap("foo", "allow-nothing", {})], conn: mtls(SLEEP, { destination: { namespace: "bar", name: "x", labels: {} } }), allowed: true, code: "no-allow-policies" },
    { name: "a selector that matches the workload's labels applies", policies: [sel("foo", "httpbin-only", { app: "httpbin" })], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "a selector needs every label: version v2 does not select v1", policies: [sel("foo", "v2-only", { app: "httpbin", version: "v2" })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a selector policy in another namespace does not apply", policies: [sel("bar", "httpbin-bar", { app: "httpbin" })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a selector policy in the root namespace applies in every namespace", policies: [sel("istio-system", "all-httpbins", { app: "httpbin" })], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "a selector without labels applies to no workload (istiod attaches it nowhere)", policies: [ap("foo", "empty-selector", { selector: {} })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    {
      name: "ALLOW policies at every level: the namespace one is checked first",
      policies: [allowAll("istio-system", "mesh-allow"), allowAll("foo", "ns-allow"), sel("foo", "wl-allow", { app: "httpbin" }, { rules: [{}] })],
      conn: mtls(SLEEP),
      allowed: true,
      code: "allowed",
      by: "foo/ns-allow",
      rule: 0,
    },
  ]);
});

describe("AUDIT, CUSTOM, targetRef and dry-run are not enforced at L4", () => {
  run([
    { name: "AUDIT is ignored (ztunnel does not support it)", policies: [ap("foo", "audit", { action: "AUDIT", rules: [{}] }), ap("foo", "allow-nothing", {})], conn: mtls(SLEEP), allowed: false, code: "not-allowed" },
    { name: "AUDIT alone leaves the default allow", policies: [ap("foo", "audit", { action: "AUDIT", rules: [{}] })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "CUSTOM is ignored", policies: [ap("foo", "ext-authz", { action: "CUSTOM", provider: { name: "opa" }, rules: [{}] })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a targetRefs policy is for a waypoint, ignored here", policies: [ap("foo", "waypoint", { targetRefs: [{ kind: "Service", group: "", name: "httpbin" }], rules: [{ to: [{ operation: { methods: ["GET"] } }] }] })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a dry-run DENY does not deny", policies: [ap("foo", "deny-dry", { action: "DENY", rules: [{}] }, { annotations: { "istio.io/dry-run": "true" } })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a dry-run ALLOW does not count as an ALLOW policy", policies: [ap("foo", "allow-dry", {}, { annotations: { "istio.io/dry-run": "true" } })], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "a dry-run annotation that is no boolean is enforced, as istiod does", policies: [ap("foo", "deny-dry", { action: "DENY", rules: [{}] }, { annotations: { "istio.io/dry-run": "yes" } })], conn: mtls(SLEEP), allowed: false, code: "explicitly-denied", by: "foo/deny-dry", rule: 0 },
  ]);

  test("a dry-run match is reported with the decision", () => {
    const d = policySet([ap("foo", "deny-dry", { action: "DENY", rules: [{}] }, { annotations: { "istio.io/dry-run": "true" } })]).decide(mtls(SLEEP));
    expect(d.dryRun).toEqual([{ policy: { kind: "AuthorizationPolicy", namespace: "foo", name: "deny-dry" }, action: "DENY", rule: 0 }]);
  });

  test("ignored policies are listed with istiod's reason", () => {
    const s = policySet([ap("foo", "audit", { action: "AUDIT", rules: [{}] }), ap("foo", "ext", { action: "CUSTOM", provider: { name: "opa" }, rules: [{}] })]);
    expect(s.policies).toHaveLength(0);
    expect(s.ignored.map((x) => x.reason)).toEqual(["ztunnel does not support the AUDIT action: not enforced at L4", "ztunnel does not support the CUSTOM action: not enforced at L4"]);
  });
});

describe("rules, clauses and matches combine as ztunnel's rbac nesting", () => {
  const nested = [ap("foo", "nested", { rules: [{ from: [{ source: { namespaces: ["a"] } }, { source: { namespaces: ["b"] } }], to: [{ operation: { ports: ["80"] } }] }] })];
  const multi = [ap("foo", "multi", { rules: [{ from: [{ source: { namespaces: ["a"] } }] }, { from: [{ source: { namespaces: ["b"] } }] }] })];
  run([
    { name: "nesting: either source namespace, on port 80 (a)", policies: nested, conn: mtls(id("a", "x"), { destinationPort: 80 }), allowed: true, code: "allowed", by: "foo/nested", rule: 0 },
    { name: "nesting: either source namespace, on port 80 (b)", policies: nested, conn: mtls(id("b", "x"), { destinationPort: 80 }), allowed: true, code: "allowed", by: "foo/nested", rule: 0 },
    { name: "nesting: the wrong namespace", policies: nested, conn: mtls(id("bad", "x"), { destinationPort: 80 }), allowed: false, code: "not-allowed" },
    { name: "nesting: the wrong port", policies: nested, conn: mtls(id("b", "x"), { destinationPort: 12345 }), allowed: false, code: "not-allowed" },
    { name: "multi-rule: the second rule decides and is named", policies: multi, conn: mtls(id("b", "x")), allowed: true, code: "allowed", by: "foo/multi", rule: 1 },
    { name: "multi-rule: neither rule", policies: multi, conn: mtls(id("c", "x")), allowed: false, code: "not-allowed" },
  ]);
});

describe("PeerAuthentication (mTLS mode) with precedence workload > namespace > mesh", () => {
  const mode = (m: string) => ({ mtls: { mode: m } });
  const wl = (ns: string, name: string, spec: object) => pa(ns, name, { selector: { matchLabels: { app: "httpbin" } }, ...spec });
  const MESH_STRICT = pa("istio-system", "default", mode("STRICT"));
  run([
    { name: "no PeerAuthentication: PERMISSIVE, plaintext passes", policies: [], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "mesh STRICT: plaintext refused", policies: [MESH_STRICT], conn: plain(), allowed: false, code: "mtls-required", by: "istio-system/default" },
    { name: "mesh STRICT: mTLS passes", policies: [MESH_STRICT], conn: mtls(SLEEP), allowed: true, code: "no-allow-policies" },
    { name: "mesh STRICT, namespace PERMISSIVE: plaintext passes", policies: [MESH_STRICT, pa("foo", "ns", mode("PERMISSIVE"))], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "mesh STRICT, namespace UNSET inherits STRICT", policies: [MESH_STRICT, pa("foo", "ns", mode("UNSET"))], conn: plain(), allowed: false, code: "mtls-required", by: "istio-system/default" },
    { name: "namespace STRICT, workload PERMISSIVE: plaintext passes", policies: [pa("foo", "ns", mode("STRICT")), wl("foo", "wl", mode("PERMISSIVE"))], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "mesh PERMISSIVE, workload STRICT: plaintext refused by the workload policy", policies: [pa("istio-system", "default", mode("PERMISSIVE")), wl("foo", "wl", mode("STRICT"))], conn: plain(), allowed: false, code: "mtls-required", by: "foo/wl" },
    { name: "workload STRICT with port 8080 PERMISSIVE: 8080 takes plaintext", policies: [wl("foo", "wl", { ...mode("STRICT"), portLevelMtls: { 8080: { mode: "PERMISSIVE" } } })], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "workload STRICT with port 8080 PERMISSIVE: 9090 refuses it", policies: [wl("foo", "wl", { ...mode("STRICT"), portLevelMtls: { 8080: { mode: "PERMISSIVE" } } })], conn: plain("10.0.1.5", { destinationPort: 9090 }), allowed: false, code: "mtls-required", by: "foo/wl" },
    { name: "workload PERMISSIVE with port 8080 STRICT: 8080 refuses plaintext", policies: [wl("foo", "wl", { ...mode("PERMISSIVE"), portLevelMtls: { 8080: { mode: "STRICT" } } })], conn: plain(), allowed: false, code: "mtls-required", by: "foo/wl" },
    { name: "workload UNSET, port 8080 PERMISSIVE, mesh STRICT: 8080 takes plaintext", policies: [MESH_STRICT, wl("foo", "wl", { portLevelMtls: { 8080: { mode: "PERMISSIVE" } } })], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "DISABLE acts as PERMISSIVE in ambient", policies: [MESH_STRICT, pa("foo", "ns", mode("DISABLE"))], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "a workload policy for other labels does not apply", policies: [pa("foo", "other", { selector: { matchLabels: { app: "other" } }, ...mode("STRICT") })], conn: plain(), allowed: true, code: "no-allow-policies" },
    { name: "a selector PeerAuthentication in the root namespace is ignored", policies: [pa("istio-system", "root-sel", { selector: { matchLabels: { app: "httpbin" } }, ...mode("STRICT") })], conn: plain(), allowed: true, code: "no-allow-policies" },
    {
      name: "two namespace policies: the oldest (creationTimestamp) wins",
      policies: [pa("foo", "newer", mode("PERMISSIVE"), { creationTimestamp: "2026-02-01T00:00:00Z" }), pa("foo", "older", mode("STRICT"), { creationTimestamp: "2026-01-01T00:00:00Z" })],
      conn: plain(),
      allowed: false,
      code: "mtls-required",
      by: "foo/older",
    },
    { name: "two namespace policies without timestamps: the first loaded wins", policies: [pa("foo", "first", mode("STRICT")), pa("foo", "second", mode("PERMISSIVE"))], conn: plain(), allowed: false, code: "mtls-required", by: "foo/first" },
    {
      name: "STRICT and a matching DENY: the DENY is reported (checked first, as ztunnel orders them)",
      policies: [MESH_STRICT, ap("foo", "deny-all", { action: "DENY", rules: [{}] })],
      conn: plain(),
      allowed: false,
      code: "explicitly-denied",
      by: "foo/deny-all",
      rule: 0,
    },
    { name: "STRICT refuses plaintext even when an ALLOW policy would allow it", policies: [MESH_STRICT, allowAll("foo")], conn: plain(), allowed: false, code: "mtls-required", by: "istio-system/default" },
  ]);

  test("mtlsRequired / mtls(): mode, level and policy per port", () => {
    const s = policySet([MESH_STRICT, wl("foo", "wl", { portLevelMtls: { 8080: { mode: "PERMISSIVE" } } })]);
    expect(s.mtls(HTTPBIN, 8080)).toEqual({ required: false, mode: "PERMISSIVE", level: "port", policy: { kind: "PeerAuthentication", namespace: "foo", name: "wl" } });
    expect(s.mtls(HTTPBIN, 9090)).toEqual({ required: true, mode: "STRICT", level: "mesh", policy: { kind: "PeerAuthentication", namespace: "istio-system", name: "default" } });
    expect(s.mtlsRequired({ namespace: "bar", name: "x" }, 8080)).toBe(true);
    expect(policySet([]).mtls(HTTPBIN, 8080)).toEqual({ required: false, mode: "PERMISSIVE" });
  });
});

describe("warnings say what istiod's status would say", () => {
  const warnings = (docs: string[]) => policySet(docs).policies.flatMap((p) => p.warnings);
  test("ALLOW with HTTP fields", () => {
    expect(warnings([ap("foo", "a", { rules: [{ to: [{ operation: { methods: ["GET"], paths: ["/x"] } }] }] })])).toEqual([
      "ztunnel does not support HTTP attributes (found: methods, paths). In ambient mode you must use a waypoint proxy to enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested.",
    ]);
  });
  test("DENY with only HTTP fields has no effect; mixed is more restrictive", () => {
    expect(warnings([ap("foo", "d", { action: "DENY", rules: [{ to: [{ operation: { methods: ["GET"] } }] }] })])[0]).toEndWith("this DENY policy has no enforceable rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy.");
    expect(warnings([ap("foo", "d", { action: "DENY", rules: [{ to: [{ operation: { methods: ["GET"], ports: ["80"] } }] }] })])[0]).toEndWith("DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested.");
  });
  test("a principal with spiffe:// and an empty selector are flagged", () => {
    const w = warnings([ap("foo", "p", { selector: {}, rules: [{ from: [{ source: { principals: [SLEEP] } }] }] })]);
    expect(w.join("\n")).toContain('principal "spiffe://cluster.local/ns/bar/sa/sleep" never matches');
    expect(w.join("\n")).toContain("workload selector specified without labels");
  });
});

test("1,000 policies in other namespaces do not change a decision in foo", () => {
  const others = Array.from({ length: 1000 }, (_, i) => ap(`ns-${i}`, "allow-nothing", {}));
  const s = policySet([...others, ap("foo", "allow-bar", { rules: [{ from: [{ source: { namespaces: ["bar"] } }] }] })]);
  expect(s.applicable(HTTPBIN).allow.map((p) => p.ref.name)).toEqual(["allow-bar"]);
  expect(s.decide(mtls(SLEEP)).code).toBe("allowed");
  expect(s.decide(mtls(id("baz", "x"))).code).toBe("not-allowed");
});

describe("a workload whose labels are unknown (no source gave them): selector policies fail safe", () => {
  const UNLABELLED = { namespace: "foo", name: "httpbin-1" };
  const sel = { selector: { matchLabels: { app: "httpbin" } } };
  test("a selector DENY applies", () => {
    const s = policySet([ap("foo", "deny-sel", { ...sel, action: "DENY", rules: [{ from: [{ source: { ipBlocks: ["10.0.1.0/24"] } }] }] })]);
    expect(s.decide(plain("10.0.1.5", { destination: UNLABELLED })).allowed).toBe(false);
    expect(s.decide(plain("10.0.2.5", { destination: UNLABELLED })).allowed).toBe(true);
    // known labels the selector does not match: it does not apply
    expect(s.decide(plain("10.0.1.5", { destination: { ...UNLABELLED, labels: { app: "other" } } })).allowed).toBe(true);
  });
  test("a selector ALLOW applies: it restricts instead of being skipped", () => {
    const s = policySet([ap("foo", "allow-sel", { ...sel, rules: [{ from: [{ source: { ipBlocks: ["10.0.1.0/24"] } }] }] })]);
    expect(s.decide(plain("10.0.2.5", { destination: UNLABELLED })).allowed).toBe(false);
    expect(s.decide(plain("10.0.1.5", { destination: UNLABELLED })).allowed).toBe(true);
  });
  test("a selector STRICT PeerAuthentication applies, a selector PERMISSIVE one does not override a STRICT namespace", () => {
    expect(policySet([pa("foo", "wl", { ...sel, mtls: { mode: "STRICT" } })]).mtlsRequired(UNLABELLED, 8080)).toBe(true);
    expect(policySet([pa("foo", "ns", { mtls: { mode: "STRICT" } }), pa("foo", "wl", { ...sel, mtls: { mode: "PERMISSIVE" } })]).mtlsRequired(UNLABELLED, 8080)).toBe(true);
  });
});
