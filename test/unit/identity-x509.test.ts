// Certificates as openssl sees them: the CSR nshub makes, the CA `nshub ca init` creates, the
// workload certificates it signs (URI SAN only, key usages, validity, EC P-256, AKI/SKI), and the
// chains `openssl verify` accepts — for nshub's own root and for a root + intermediate made by
// openssl and taken with --root-cert/--cert-chain.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CA_FILES, initCaDir } from "../../src/identity/ca-dir.ts";
import { openLocalCaDir } from "../../src/identity/local-ca.ts";
import { fetchWorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { createCsr, generateP256 } from "../../src/identity/x509.ts";
import { certText, csrText, extension, openssl, rawNames, verifyChain } from "../helpers/openssl.ts";

const tmp = mkdtempSync(join(tmpdir(), "nshub-x509-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const ID = "spiffe://cluster.local/ns/shop/sa/checkout";
const DAY = 86400_000;

function dateOf(text: string, field: "Not Before" | "Not After"): Date {
  const m = new RegExp(`${field}\\s*:\\s*(.+)`).exec(text);
  if (!m) throw new Error(`no ${field} in\n${text}`);
  return new Date(m[1]!.trim());
}

describe("CSR", () => {
  test("empty subject, one critical SAN holding only the URI, P-256, self-signature valid (openssl req -verify)", async () => {
    const csr = await createCsr(ID, await generateP256());
    const text = csrText(csr);
    expect(text).toContain("Certificate request self-signature verify OK");
    expect(text).toMatch(/Subject:\s*\n/);
    expect(text).toContain("ASN1 OID: prime256v1");
    expect(text).toContain("Signature Algorithm: ecdsa-with-SHA256");
    const san = extension(text, "X509v3 Subject Alternative Name");
    expect(san).toEqual({ critical: true, value: `URI:${ID}` });
  });
});

describe("nshub ca init (new root)", async () => {
  const dir = join(tmp, "ca");
  const before = Date.now();
  await initCaDir({ dir, trustDomain: "cluster.local" });
  const root = readFileSync(join(dir, CA_FILES.root), "utf8");

  test("keys are 0600, the directory 0700, certificates 0644; a second init refuses", async () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of [CA_FILES.key, CA_FILES.nodeCaKey, CA_FILES.nodes]) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
    for (const f of [CA_FILES.cert, CA_FILES.root, CA_FILES.chain, CA_FILES.nodeCaCert]) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o644);
    expect(readFileSync(join(dir, CA_FILES.key), "utf8")).toStartWith("-----BEGIN PRIVATE KEY-----");
    await expect(initCaDir({ dir, trustDomain: "cluster.local" })).rejects.toThrow(/already holds a CA \(ca-key.pem\); refusing to overwrite it/);
  });

  test("the root: self-signed CA, keyCertSign + cRLSign, ECDSA P-256, 10 years, verifies against itself", () => {
    const text = certText(root);
    expect(text).toContain("Subject: O = cluster.local, CN = nshub root CA");
    expect(text).toContain("Issuer: O = cluster.local, CN = nshub root CA");
    expect(extension(text, "X509v3 Basic Constraints")).toEqual({ critical: true, value: "CA:TRUE" });
    expect(extension(text, "X509v3 Key Usage")).toEqual({ critical: true, value: "Certificate Sign, CRL Sign" });
    expect(extension(text, "X509v3 Subject Key Identifier")?.value).toMatch(/^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);
    expect(text).toContain("NIST CURVE: P-256");
    const years = (dateOf(text, "Not After").getTime() - dateOf(text, "Not Before").getTime()) / (365.25 * DAY);
    expect(years).toBeCloseTo(10, 1);
    expect(dateOf(text, "Not Before").getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(verifyChain(root, root).code).toBe(0);
    // Istio's cacerts layout: with a new root, all three are the root
    expect(readFileSync(join(dir, CA_FILES.cert), "utf8")).toBe(root);
    expect(readFileSync(join(dir, CA_FILES.chain), "utf8")).toBe(root);
  });

  test("node client certificates have their own issuer, which does not verify against the root", () => {
    const nodeCa = readFileSync(join(dir, CA_FILES.nodeCaCert), "utf8");
    expect(certText(nodeCa)).toContain("CN = nshub node CA");
    const r = verifyChain(root, nodeCa);
    expect(r.code).not.toBe(0);
  });

  test("a workload certificate from the local signer: what istiod issues, and openssl verify accepts the chain", async () => {
    const source = await openLocalCaDir(dir);
    const t0 = Date.now();
    const cert = await fetchWorkloadCertificate(source, ID, 3600);
    expect(cert.chain).toHaveLength(2);
    expect(cert.chain[1]).toBe(root);
    const text = certText(cert.leaf);
    expect(text).toMatch(/Subject:\s*\n/);
    expect(text).toContain("Issuer: O = cluster.local, CN = nshub root CA");
    expect(text).toContain("ASN1 OID: prime256v1");
    expect(text).toContain("Signature Algorithm: ecdsa-with-SHA256");
    expect(extension(text, "X509v3 Subject Alternative Name")).toEqual({ critical: true, value: `URI:${ID}` });
    expect(extension(text, "X509v3 Basic Constraints")).toEqual({ critical: true, value: "CA:FALSE" });
    expect(extension(text, "X509v3 Key Usage")).toEqual({ critical: true, value: "Digital Signature, Key Encipherment" });
    expect(extension(text, "X509v3 Extended Key Usage")).toEqual({ critical: false, value: "TLS Web Server Authentication, TLS Web Client Authentication" });
    const aki = extension(text, "X509v3 Authority Key Identifier")!.value.replace(/^keyid:/, "");
    expect(aki).toBe(extension(certText(root), "X509v3 Subject Key Identifier")!.value);
    expect(extension(text, "X509v3 Subject Key Identifier")).toBeDefined();
    // NotBefore back-dated 2 minutes (istiod's clock-skew grace), NotAfter = now + 1 h
    const nb = dateOf(text, "Not Before").getTime();
    const na = dateOf(text, "Not After").getTime();
    expect(nb).toBeGreaterThanOrEqual(t0 - 121_000 - 1000);
    expect(nb).toBeLessThanOrEqual(t0 - 119_000);
    expect(na - t0).toBeGreaterThan(3600_000 - 2000);
    expect(na - t0).toBeLessThan(3600_000 + 2000);
    expect(cert.notAfter.getTime()).toBe(na);
    // the chain, for both TLS roles
    for (const purpose of ["sslserver", "sslclient"]) expect(verifyChain(root, cert.leaf, [], ["-purpose", purpose]).stdout).toContain(": OK");
    // the key the caller keeps is the leaf's key
    const pub = openssl(["pkey", "-pubout"], cert.keyPem).stdout;
    expect(openssl(["x509", "-noout", "-pubkey"], cert.leaf).stdout).toBe(pub);
  });

  test("openssl verify is a real judge: the same leaf fails against another CA's root", async () => {
    const other = join(tmp, "other");
    await initCaDir({ dir: other, trustDomain: "cluster.local" });
    const cert = await fetchWorkloadCertificate(await openLocalCaDir(dir), ID, 600);
    const r = verifyChain(readFileSync(join(other, CA_FILES.root), "utf8"), cert.leaf);
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/unable to get local issuer certificate/);
  });
});

describe("nshub ca init --root-cert/--root-key/--cert-chain (a CA made by openssl)", () => {
  const d = join(tmp, "ossl");
  const sh = (args: string[]) => {
    const r = openssl(args);
    if (r.code !== 0) throw new Error(r.stderr);
  };
  const setup = async () => {
    rmSync(d, { recursive: true, force: true });
    mkdirSync(d, { recursive: true });
    sh(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", `${d}/root.key`, "-out", `${d}/root.pem`, "-days", "30", "-subj", "/O=Example Corp/CN=Example Root"]);
    sh(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${d}/int.key`, "-out", `${d}/int.csr`, "-subj", "/O=Example Corp/CN=Example Intermediate"]);
    writeFileSync(`${d}/int.ext`, "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n");
    sh(["x509", "-req", "-in", `${d}/int.csr`, "-CA", `${d}/root.pem`, "-CAkey", `${d}/root.key`, "-CAcreateserial", "-out", `${d}/int.pem`, "-days", "20", "-extfile", `${d}/int.ext`]);
  };
  const read = (f: string) => readFileSync(join(d, f), "utf8");

  test("an RSA intermediate under a P-384 root: chain leaf → intermediate → root, issuer bytes = intermediate's subject bytes", async () => {
    await setup();
    const dir = join(tmp, "ca-int");
    await initCaDir({ dir, trustDomain: "example.org", rootCertPem: read("int.pem"), rootKeyPem: read("int.key"), certChainPem: read("root.pem") });
    expect(readFileSync(join(dir, CA_FILES.root), "utf8")).toBe(read("root.pem"));
    const cert = await fetchWorkloadCertificate(await openLocalCaDir(dir), "spiffe://example.org/ns/a/sa/b", 600);
    expect(cert.chain).toHaveLength(3);
    expect(cert.chain[1]).toBe(read("int.pem"));
    expect(cert.chain[2]).toBe(read("root.pem"));
    expect(certText(cert.leaf)).toContain("Signature Algorithm: sha256WithRSAEncryption");
    expect(verifyChain(read("root.pem"), cert.leaf, [cert.chain[1]!]).stdout).toContain(": OK");
    // without the intermediate the leaf does not verify: the chain is needed and is right
    expect(verifyChain(read("root.pem"), cert.leaf).code).not.toBe(0);
    // strict verifiers (rustls/webpki, ztunnel's) compare names byte for byte
    expect(rawNames(cert.leaf).issuer.equals(rawNames(read("int.pem")).subject)).toBe(true);
    // the intermediate expires in 20 days: a leaf never outlives it (istiod clamps the same way)
    const long = await fetchWorkloadCertificate(await openLocalCaDir(dir, { maxLifetimeSeconds: 90 * 86400 }), "spiffe://example.org/ns/a/sa/b", 60 * 86400);
    expect(long.notAfter.getTime()).toBe(new Date(certText(read("int.pem")).match(/Not After : (.+)/)![1]!).getTime());
  });

  test("refuses: an intermediate without its chain, a key of another certificate, a non-CA certificate", async () => {
    await expect(initCaDir({ dir: join(tmp, "x1"), trustDomain: "example.org", rootCertPem: read("int.pem"), rootKeyPem: read("int.key") })).rejects.toThrow(
      /--root-cert is an intermediate \(not self-signed\): give its issuers up to the root with --cert-chain/,
    );
    await expect(initCaDir({ dir: join(tmp, "x2"), trustDomain: "example.org", rootCertPem: read("root.pem"), rootKeyPem: read("int.key") })).rejects.toThrow(
      /--root-key does not belong to --root-cert/,
    );
    const leaf = await fetchWorkloadCertificate(await openLocalCaDir(join(tmp, "ca")), ID, 600);
    await expect(initCaDir({ dir: join(tmp, "x3"), trustDomain: "cluster.local", rootCertPem: leaf.leaf, rootKeyPem: leaf.keyPem })).rejects.toThrow(/is not a CA certificate/);
    await expect(initCaDir({ dir: join(tmp, "x4"), trustDomain: "Example.org" })).rejects.toThrow(/must be lowercase/);
  });
});
