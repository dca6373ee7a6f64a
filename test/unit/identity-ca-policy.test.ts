// The CA's rules, without the network: what it signs and what it refuses (CSRs made by openssl,
// so the checks do not depend on nshub's own CSR code), the root-only key file, node tokens
// stored hashed with expiry and revocation, and the checks a certificate consumer makes on an
// answer.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CA_FILES, initCaDir, loadCaDir } from "../../src/identity/ca-dir.ts";
import { CaRefusal, CaSigner, parseDuration, type RefusalReason } from "../../src/identity/ca-signer.ts";
import { openLocalCa, openLocalCaDir } from "../../src/identity/local-ca.ts";
import { hashToken, issueNodeCredentials, NodeAuthenticator, revokeNode } from "../../src/identity/node-credentials.ts";
import { CertificateError, type CertificateSource } from "../../src/identity/source.ts";
import { fetchWorkloadCertificate, refreshAt } from "../../src/identity/workload-cert.ts";
import { openssl, opensslCsr } from "../helpers/openssl.ts";

const tmp = mkdtempSync(join(tmpdir(), "nshub-capolicy-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const dir = join(tmp, "ca");
await initCaDir({ dir, trustDomain: "cluster.local" });
const ca = await loadCaDir(dir);
const signer = new CaSigner({ trustDomain: ca.trustDomain, issuer: ca.issuer, intermediates: ca.intermediates, rootBundle: ca.rootBundle, maxLifetimeSeconds: 3600, defaultLifetimeSeconds: 600 });
const ID = "spiffe://cluster.local/ns/shop/sa/cart";

async function refused(csr: string, identity: string, validitySeconds = 600): Promise<CaRefusal> {
  try {
    await signer.sign({ csr, identity, validitySeconds });
  } catch (e) {
    expect(e).toBeInstanceOf(CaRefusal);
    return e as CaRefusal;
  }
  throw new Error("expected a refusal; the CA signed");
}

describe("CaSigner: signs only the identity asked for, within the limits", () => {
  test("an openssl CSR with the identity as its one URI SAN is signed; 0 means the default lifetime", async () => {
    const { csr } = opensslCsr(tmp, "ok", `critical,URI:${ID}`);
    const out = await signer.sign({ csr, identity: ID, validitySeconds: 0 });
    expect(out.chain).toHaveLength(2);
    expect(out.serial).toMatch(/^[0-9a-f]{32}$/);
    expect((out.notAfter.getTime() - out.notBefore.getTime()) / 1000).toBe(600 + 120);
    expect(openssl(["x509", "-noout", "-ext", "subjectAltName"], out.chain[0]).stdout).toContain(`URI:${ID}`);
  });

  const cases: [string, () => Promise<CaRefusal>, RefusalReason, RegExp][] = [
    ["SAN differs from the identity", async () => refused(opensslCsr(tmp, "other", "URI:spiffe://cluster.local/ns/shop/sa/admin").csr, ID), "san_mismatch", /the CSR's URI SAN spiffe:\/\/cluster.local\/ns\/shop\/sa\/admin is not the identity asked for, spiffe:\/\/cluster.local\/ns\/shop\/sa\/cart/],
    ["a DNS SAN besides the URI", async () => refused(opensslCsr(tmp, "dns", `URI:${ID},DNS:evil.example`).csr, ID), "san_mismatch", /may carry only the identity as a URI SAN; it also has dns:evil.example/],
    ["two URI SANs", async () => refused(opensslCsr(tmp, "two", `URI:${ID},URI:spiffe://cluster.local/ns/x/sa/y`).csr, ID), "san_mismatch", /exactly one URI SAN.*it has 2/],
    ["no SAN", async () => refused(opensslCsr(tmp, "none", undefined).csr, ID), "san_mismatch", /it has 0/],
    ["another trust domain", async () => refused(opensslCsr(tmp, "td", "URI:spiffe://evil.org/ns/a/sa/b").csr, "spiffe://evil.org/ns/a/sa/b"), "foreign_trust_domain", /trust domain "evil.org"; this CA signs only "cluster.local"/],
    ["no identity", async () => refused(opensslCsr(tmp, "noid", `URI:${ID}`).csr, ""), "no_identity", /ImpersonatedIdentity/],
    ["not a workload identity", async () => refused(opensslCsr(tmp, "badid", "URI:spiffe://cluster.local/x").csr, "spiffe://cluster.local/x"), "bad_identity", /starts with "x", not "ns"/],
    ["a lifetime above the maximum", async () => refused(opensslCsr(tmp, "long", `URI:${ID}`).csr, ID, 3601), "lifetime_too_long", /requested lifetime 3601 s \(1h1s\) is above this CA's maximum of 3600 s \(1h\)/],
    ["a negative lifetime", async () => refused(opensslCsr(tmp, "neg", `URI:${ID}`).csr, ID, -5), "bad_lifetime", /not a whole number of seconds/],
    ["bytes that are not a CSR", async () => refused("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", ID), "bad_csr", /not a PEM PKCS#10 certificate request/],
    ["no PEM at all", async () => refused("hello", ID), "bad_csr", /no PEM block "CERTIFICATE REQUEST"/],
    ["a weak RSA key", async () => refused(opensslCsr(tmp, "rsa1k", `URI:${ID}`, ["-newkey", "rsa:1024"]).csr, ID), "bad_key", /is not ECDSA P-256\/P-384 or RSA ≥ 2048 bits/],
  ];
  for (const [name, run, reason, message] of cases) {
    test(`refuses ${name} (${reason})`, async () => {
      const r = await run();
      expect(r.reason).toBe(reason);
      expect(r.message).toMatch(message);
    });
  }

  test("a CSR whose signature does not verify (SAN bytes changed after signing) is refused", async () => {
    const { csr } = opensslCsr(tmp, "tamper", "URI:spiffe://cluster.local/ns/shop/sa/carT");
    const der = Buffer.from(csr.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
    const at = der.indexOf(Buffer.from("sa/carT"));
    expect(at).toBeGreaterThan(0);
    der[at + 6] = "t".charCodeAt(0); // now the SAN says .../sa/cart, but the signature covers carT
    const forged = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    const r = await refused(forged, ID);
    expect(r.reason).toBe("bad_csr");
    expect(r.message).toContain("signature does not verify");
  });

  test("refusal codes are istiod's: CSR and lifetime errors InvalidArgument, a foreign identity PermissionDenied", async () => {
    expect((await cases[0]![1]()).code).toBe("invalid_argument");
    expect((await cases[7]![1]()).code).toBe("invalid_argument");
    expect((await cases[4]![1]()).code).toBe("permission_denied");
  });
});

describe("local-file signer", () => {
  test("refuses to start with a CA key others can read, with the fix in the message; starts once it is 0600", async () => {
    const key = join(dir, CA_FILES.key);
    chmodSync(key, 0o644);
    try {
      await expect(openLocalCaDir(dir)).rejects.toThrow(new RegExp(`CA key ${key} has mode 0644: only root may read a private key; run: chmod 0600 ${key}`));
      await expect(openLocalCa({ trustDomain: "cluster.local", certFile: join(dir, CA_FILES.cert), keyFile: key })).rejects.toThrow(/has mode 0644/);
      chmodSync(key, 0o640);
      await expect(openLocalCaDir(dir)).rejects.toThrow(/has mode 0640/);
    } finally {
      chmodSync(key, 0o600);
    }
    const src = await openLocalCa({ trustDomain: "cluster.local", certFile: join(dir, CA_FILES.cert), keyFile: key });
    expect((await fetchWorkloadCertificate(src, ID, 60)).chain).toHaveLength(2);
  });

  test("refusals come back as CertificateError with the gRPC code name, not retryable", async () => {
    const src = await openLocalCaDir(dir, { maxLifetimeSeconds: 60, defaultLifetimeSeconds: 60 });
    const e = await fetchWorkloadCertificate(src, ID, 61).catch((x) => x);
    expect(e).toBeInstanceOf(CertificateError);
    expect(e.code).toBe("invalid_argument");
    expect(e.retryable).toBe(false);
    expect(e.message).toContain("above this CA's maximum of 60 s");
  });
});

const real = await openLocalCaDir(dir);
describe("fetchWorkloadCertificate checks the answer like ztunnel", () => {
  const fake = (answer: (csr: string, id: string) => Promise<string[]>): CertificateSource => ({
    description: "fake",
    createCertificate: (r) => answer(r.csr, r.identity),
    close() {},
  });
  test("a chain without a root, a leaf for another identity, a leaf for another key: each refused", async () => {
    await expect(fetchWorkloadCertificate(fake(async (csr, id) => (await real.createCertificate({ csr, identity: id, validitySeconds: 60 })).slice(0, 1)), ID, 60)).rejects.toThrow(
      /answered 1 certificate\(s\); expected the leaf and at least the root/,
    );
    const other = "spiffe://cluster.local/ns/shop/sa/other";
    const { csr: otherCsr } = opensslCsr(tmp, "fake-other", `URI:${other}`);
    await expect(fetchWorkloadCertificate(fake(() => real.createCertificate({ csr: otherCsr, identity: other, validitySeconds: 60 })), ID, 60)).rejects.toThrow(
      /URI SAN is spiffe:\/\/cluster.local\/ns\/shop\/sa\/other, not the identity asked for/,
    );
    const { csr: sameIdOtherKey } = opensslCsr(tmp, "fake-key", `URI:${ID}`);
    await expect(fetchWorkloadCertificate(fake(() => real.createCertificate({ csr: sameIdOtherKey, identity: ID, validitySeconds: 60 })), ID, 60)).rejects.toThrow(/not for the key in our CSR/);
    await expect(fetchWorkloadCertificate(real, "spiffe://cluster.local/ns/a", 60)).rejects.toThrow(/invalid SPIFFE ID/);
  });

  test("refreshAt is halfway through the lifetime", () => {
    expect(refreshAt({ notBefore: new Date(1000), notAfter: new Date(5000) }).getTime()).toBe(3000);
  });
});

describe("node credentials", () => {
  test("a token is returned once, stored only as its SHA-256, checked, expired and revoked", async () => {
    const issued = await issueNodeCredentials(ca, { node: "node-1", token: true, lifetimeSeconds: 3600 });
    const token = issued.token!;
    expect(token).toMatch(/^nshub-ca\.[A-Za-z0-9_-]{43}$/);
    const stored = readFileSync(join(dir, CA_FILES.nodes), "utf8");
    expect(stored).not.toContain(token.slice(9));
    expect(stored).toContain(hashToken(token));
    let now = Date.now();
    const auth = new NodeAuthenticator(dir, () => now);
    expect(auth.token(token)).toEqual({ ok: true, node: "node-1", via: "token" });
    expect(auth.token(token + "x")).toEqual({ ok: false, why: "unknown or revoked token" });
    now += 3601_000;
    expect(auth.token(token)).toMatchObject({ ok: false, why: expect.stringMatching(/^the token of node node-1 expired at /) });
    now = Date.now();
    // a second token adds; --replace revokes the first
    const second = (await issueNodeCredentials(ca, { node: "node-1", token: true, lifetimeSeconds: 3600 })).token!;
    expect(auth.token(token).ok && auth.token(second).ok).toBe(true);
    const third = await issueNodeCredentials(ca, { node: "node-1", token: true, lifetimeSeconds: 3600, replace: true });
    expect(third.revoked).toBe(2);
    expect(auth.token(second).ok).toBe(false);
    expect(auth.token(third.token!).ok).toBe(true);
    expect(revokeNode(dir, "node-1")).toBe(1);
    expect(auth.token(third.token!).ok).toBe(false);
    expect(() => revokeNode(dir, "node-1")).toThrow(/no node "node-1"/);
    await expect(issueNodeCredentials(ca, { node: "Node_1", token: true, lifetimeSeconds: 60 })).rejects.toThrow(/expected a DNS name/);
  });

  test("durations: 90d, 24h, 1h30m, plain seconds; garbage refused", () => {
    expect(parseDuration("90d", "x")).toBe(90 * 86400);
    expect(parseDuration("1h30m", "x")).toBe(5400);
    expect(parseDuration("45", "x")).toBe(45);
    expect(() => parseDuration("1 week", "--lifetime")).toThrow(/--lifetime: expected a duration like 24h/);
  });
});
