// SPIFFE IDs: the spec's rules (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md)
// and Istio's workload form, each refusal with the reason it names.
import { describe, expect, test } from "bun:test";
import {
  checkTrustDomain,
  formatSpiffeId,
  isWorkloadSpiffeId,
  MAX_SPIFFE_ID_BYTES,
  parseSpiffeId,
  parseSpiffeUri,
  SpiffeIdError,
} from "../../src/identity/spiffe.ts";

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SpiffeIdError);
    return (e as Error).message;
  }
  throw new Error("expected a SpiffeIdError, got none");
}

describe("parseSpiffeId (workload form)", () => {
  test("takes the three parts apart; formatSpiffeId puts them back byte for byte", () => {
    const text = "spiffe://cluster.local/ns/default/sa/web-frontend";
    const id = parseSpiffeId(text);
    expect(id).toEqual({ trustDomain: "cluster.local", namespace: "default", serviceAccount: "web-frontend" });
    expect(formatSpiffeId(id)).toBe(text);
    // Path segments may be mixed case, dots and underscores (SPIFFE-ID §2.2).
    expect(parseSpiffeId("spiffe://td_1.example-2/ns/Team.A/sa/svc_X")).toEqual({ trustDomain: "td_1.example-2", namespace: "Team.A", serviceAccount: "svc_X" });
    expect(isWorkloadSpiffeId(text)).toBe(true);
    expect(isWorkloadSpiffeId("spiffe://cluster.local/ns/a")).toBe(false);
  });

  const cases: [string, string, RegExp][] = [
    ["wrong scheme", "https://cluster.local/ns/a/sa/b", /the scheme is "https", not "spiffe"/],
    ["no scheme", "cluster.local/ns/a/sa/b", /no scheme/],
    ["uppercase scheme", "SPIFFE://cluster.local/ns/a/sa/b", /scheme must be written "spiffe" in lowercase/],
    ["single slash", "spiffe:/cluster.local/ns/a/sa/b", /expected "spiffe:\/\/"/],
    ["empty", "", /empty/],
    ["empty trust domain", "spiffe:///ns/a/sa/b", /the trust domain is empty/],
    ["uppercase trust domain", "spiffe://Cluster.Local/ns/a/sa/b", /must be lowercase.*"cluster\.local"/],
    ["port", "spiffe://cluster.local:8080/ns/a/sa/b", /may not carry a port/],
    ["user info", "spiffe://me@cluster.local/ns/a/sa/b", /user info/],
    ["bad trust domain character", "spiffe://clus+ter/ns/a/sa/b", /the trust domain contains '\+'/],
    ["percent-encoding", "spiffe://cluster.local/ns/a%20b/sa/b", /percent-encoded/],
    ["query", "spiffe://cluster.local/ns/a/sa/b?x=1", /query/],
    ["fragment", "spiffe://cluster.local/ns/a/sa/b#f", /fragment/],
    ["empty namespace", "spiffe://cluster.local/ns//sa/b", /path segment 2 is empty/],
    ["empty service account", "spiffe://cluster.local/ns/a/sa/", /may not end with '\/'/],
    ["dot segment", "spiffe://cluster.local/ns/../sa/b", /relative path segments/],
    ["space", "spiffe://cluster.local/ns/a b/sa/b", /contains a space/],
    ["non-ASCII", "spiffe://cluster.local/ns/ü/sa/b", /non-ASCII character "ü"/],
    ["control character", "spiffe://cluster.local/ns/a\u0001/sa/b", /control character \(U\+0001\)/],
    ["extra segments", "spiffe://cluster.local/ns/a/sa/b/extra", /1 extra path segment\(s\) after the service account \(\/extra\)/],
    ["no path", "spiffe://cluster.local", /no path/],
    ["not ns", "spiffe://cluster.local/namespace/a/sa/b", /starts with "namespace", not "ns"/],
    ["not sa", "spiffe://cluster.local/ns/a/serviceaccount/b", /third path segment is "serviceaccount", not "sa"/],
    ["too short", "spiffe://cluster.local/ns/a/sa", /3 segments, not 4/],
  ];
  for (const [name, input, why] of cases) {
    test(`refuses: ${name}`, () => {
      const msg = refusal(() => parseSpiffeId(input));
      expect(msg).toStartWith(`invalid SPIFFE ID ${JSON.stringify(input)}: `);
      expect(msg).toMatch(why);
    });
  }

  test("refuses IDs over 2048 bytes and trust domains over 255, and accepts exactly 2048", () => {
    const prefix = "spiffe://cluster.local/ns/a/sa/";
    const exact = prefix + "x".repeat(MAX_SPIFFE_ID_BYTES - prefix.length);
    expect(exact.length).toBe(2048);
    expect(parseSpiffeId(exact).serviceAccount.length).toBe(MAX_SPIFFE_ID_BYTES - prefix.length);
    expect(refusal(() => parseSpiffeId(exact + "x"))).toMatch(/2049 bytes long, more than the 2048/);
    // a long input is clipped in the message, not printed whole
    expect(refusal(() => parseSpiffeId(exact + "x")).length).toBeLessThan(300);
    const td = "a".repeat(256);
    expect(refusal(() => parseSpiffeId(`spiffe://${td}/ns/a/sa/b`))).toMatch(/256 bytes long, more than 255/);
    expect(parseSpiffeUri(`spiffe://${"a".repeat(255)}/x`).trustDomain.length).toBe(255);
  });
});

describe("parseSpiffeUri (any SPIFFE ID)", () => {
  test("accepts other paths and a bare trust domain", () => {
    expect(parseSpiffeUri("spiffe://example.org")).toEqual({ trustDomain: "example.org", path: "" });
    expect(parseSpiffeUri("spiffe://example.org/payments/mysql")).toEqual({ trustDomain: "example.org", path: "/payments/mysql" });
    expect(refusal(() => parseSpiffeUri("spiffe://example.org/"))).toMatch(/may not end with '\/'/);
  });
});

describe("formatSpiffeId", () => {
  test("refuses parts the spec refuses, naming the part", () => {
    expect(refusal(() => formatSpiffeId({ trustDomain: "cluster.local", namespace: "", serviceAccount: "b" }))).toMatch(/the namespace is empty/);
    expect(refusal(() => formatSpiffeId({ trustDomain: "cluster.local", namespace: "a/b", serviceAccount: "c" }))).toMatch(/the namespace "a\/b" contains '\/'/);
    expect(refusal(() => formatSpiffeId({ trustDomain: "cluster.local", namespace: "a", serviceAccount: ".." }))).toMatch(/the service account is "\.\."/);
    expect(refusal(() => formatSpiffeId({ trustDomain: "Cluster.local", namespace: "a", serviceAccount: "b" }))).toMatch(/must be lowercase/);
    expect(refusal(() => checkTrustDomain("[::1]"))).toMatch(/an IPv6 address is not a valid trust domain/);
    expect(checkTrustDomain("10.0.0.1")).toBe("10.0.0.1"); // dotted quads are allowed (§2.1)
  });
});
