// InboundAuthorizer (src/proxy/authorize.ts): the per-thread decision on inbound plaintext, its
// kept decisions (exact until the set or the labels change) and what a denial does to the record.
import { expect, test } from "bun:test";
import { InboundAuthorizer } from "../../src/proxy/authorize.ts";
import { parsePolicyText } from "../../src/policy/load.ts";
import { ConnectionTable, type PodRef } from "../../src/proxy/records.ts";

const allow = (ip: string, selector = "") => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-one, namespace: shop}
spec:
${selector}  rules:
  - from:
    - source: {ipBlocks: ["${ip}"]}
`;
const docs = (yaml: string) => {
  const r = parsePolicyText(yaml, "t.yaml");
  expect(r.errors).toEqual([]);
  return r;
};
const pod: PodRef = { uid: "u1", name: "cart", namespace: "shop", serviceAccount: "default" };

function connect(a: InboundAuthorizer, table: ConnectionTable, from: string) {
  const rec = table.open({ pod, direction: "inbound", source: { ip: from, port: 40000 }, originalDst: { ip: "10.0.0.9", port: 8080 }, upstream: { ip: "10.0.0.9", port: 8080 } });
  return { rec, admitted: a.admit(rec, table) };
}

test("no policies: everything admitted; a set applies to the next connection; a denial closes the record policy_denied", () => {
  const a = new InboundAuthorizer("istio-system");
  const t = new ConnectionTable();
  expect(connect(a, t, "10.0.0.1").admitted).toBe(true);
  a.setDocuments(docs(allow("10.0.0.1")));
  expect(a.generation).toBe(1);
  expect(connect(a, t, "10.0.0.1").admitted).toBe(true);
  const denied = connect(a, t, "10.0.0.2");
  expect(denied.admitted).toBe(false);
  expect([denied.rec.state, denied.rec.closeHow, denied.rec.error]).toEqual(["closed", "policy_denied", "allow policies exist, but none allowed"]);
  expect(denied.rec.denial).toEqual({ code: "not-allowed", policy: "shop/allow-one" });
  // The kept decision for 10.0.0.2 does not outlive the set.
  a.setDocuments(docs(allow("10.0.0.2")));
  expect(connect(a, t, "10.0.0.2").admitted).toBe(true);
  expect(connect(a, t, "10.0.0.1").admitted).toBe(false);
});

test("labels from the registry select policies; new labels are seen by the next connection", () => {
  const a = new InboundAuthorizer("istio-system");
  const t = new ConnectionTable();
  a.setDocuments(docs(allow("10.0.0.1", "  selector: {matchLabels: {app: cart}}\n")));
  // Labels unknown: the selector policy is applied, failing safe (only 10.0.0.1 is let in).
  expect(connect(a, t, "10.0.0.2").admitted).toBe(false);
  expect(connect(a, t, "10.0.0.1").admitted).toBe(true);
  // Known labels that the selector does not match: no ALLOW policy applies, allowed.
  a.setLabels({ u1: { app: "web" } });
  expect(connect(a, t, "10.0.0.2").admitted).toBe(true);
  a.setLabels({ u1: { app: "cart" } });
  expect(connect(a, t, "10.0.0.2").admitted).toBe(false);
  expect(connect(a, t, "10.0.0.1").admitted).toBe(true);
});
