// X.509 building blocks on @peculiar/x509 (WebCrypto): keys, CSRs, certificates. The only file
// that imports the library, so the rest of src/identity speaks PEM strings and CryptoKeys.
// Parsing what others made uses the library's parser too (SANs, extensions), while tests check
// the results with `openssl x509 -text` and `openssl verify`, never with the library alone.
//
// Certificates follow what istiod issues to workloads (https://github.com/istio/istio/blob/master/
// security/pkg/pki/util/generate_cert.go): empty subject, the SPIFFE ID as the only URI SAN
// (critical, since the subject is empty: RFC 5280 §4.2.1.6), key usage digitalSignature +
// keyEncipherment, extended key usage serverAuth + clientAuth, not a CA; plus AKI/SKI.

// tsyringe (used inside @peculiar/x509) throws at load without the Reflect metadata API.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";

x509.cryptoProvider.set(globalThis.crypto);

export const P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

/** A WebCrypto signature algorithm: ECDSA or RSASSA-PKCS1-v1_5 with its hash. */
export interface SignatureAlgorithm {
  name: string;
  hash?: string;
}

/** A signing key with the WebCrypto algorithm its certificates are signed with. */
export interface SigningKey {
  key: CryptoKey;
  /** What X509CertificateGenerator signs with (ECDSA+SHA-256/384, or RSA PKCS#1 v1.5+SHA-256). */
  algorithm: SignatureAlgorithm;
}

/** A fresh ECDSA P-256 key pair. Extractable: a TLS stack needs the private key as PEM, in memory. */
export async function generateP256(): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey(P256, true, ["sign", "verify"]);
}

/** PKCS#8 PEM of a private key (kept in memory by callers; only the CA's own key goes to disk). */
export async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return toPem(new Uint8Array(der), "PRIVATE KEY");
}

/** Imports a PEM private key (PKCS#8, SEC1 "EC PRIVATE KEY" or PKCS#1 RSA) for signing. */
export async function importSigningKey(pem: string): Promise<SigningKey> {
  const k = createPrivateKey(pem);
  const der = k.export({ type: "pkcs8", format: "der" });
  if (k.asymmetricKeyType === "ec") {
    const curve = k.asymmetricKeyDetails?.namedCurve;
    const namedCurve = curve === "prime256v1" ? "P-256" : curve === "secp384r1" ? "P-384" : undefined;
    if (!namedCurve) throw new Error(`unsupported EC curve ${curve ?? "?"}: use P-256 or P-384`);
    const key = await crypto.subtle.importKey("pkcs8", der, { name: "ECDSA", namedCurve }, false, ["sign"]);
    return { key, algorithm: { name: "ECDSA", hash: namedCurve === "P-256" ? "SHA-256" : "SHA-384" } };
  }
  if (k.asymmetricKeyType === "rsa") {
    const alg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    return { key: await crypto.subtle.importKey("pkcs8", der, alg, false, ["sign"]), algorithm: alg };
  }
  throw new Error(`unsupported key type ${k.asymmetricKeyType ?? "?"}: use ECDSA (P-256/P-384) or RSA`);
}

/** True when the private key in `keyPem` belongs to the certificate. */
export function keyMatchesCert(keyPem: string, certPem: string): boolean {
  const fromKey = createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" });
  const fromCert = Buffer.from(new x509.X509Certificate(certPem).publicKey.rawData);
  return fromKey.equals(fromCert);
}

/** A PKCS#10 CSR as ztunnel makes it: empty subject, one critical SAN with the one URI. */
export async function createCsr(spiffeId: string, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: spiffeId }], true)],
  });
  return csr.toString("pem") + "\n";
}

export interface CsrContents {
  /** URI SANs, in order. */
  uris: string[];
  /** Every other SAN, as "type:value" (DNS, IP, email…): a workload CSR should have none. */
  otherSans: string[];
  subject: string;
  /** The CSR's SubjectPublicKeyInfo, DER. */
  spki: Uint8Array;
  /** The CSR's self-signature checks out with its own public key. */
  signatureValid: boolean;
}

/** Parses a PEM CSR. Throws with the library's message on bytes that are not one. */
export async function readCsr(pem: string): Promise<CsrContents> {
  const csr = new x509.Pkcs10CertificateRequest(pem);
  const uris: string[] = [];
  const otherSans: string[] = [];
  for (const ext of csr.extensions) {
    if (!(ext instanceof x509.SubjectAlternativeNameExtension)) continue;
    for (const n of ext.names.items) (n.type === "url" ? uris : otherSans).push(n.type === "url" ? n.value : `${n.type}:${n.value}`);
  }
  return {
    uris,
    otherSans,
    subject: csr.subject,
    spki: new Uint8Array(csr.publicKey.rawData),
    signatureValid: await csr.verify(),
  };
}

/** A random positive 128-bit serial number, hex (RFC 5280 §4.1.2.2: at most 20 octets). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01; // positive, and no leading zero octet to strip
  return b.toString("hex");
}

/** The certificate that signs, and its key. */
export interface Issuer {
  certPem: string;
  key: SigningKey;
}

export type LeafKind = "workload" | "node-client" | "server";

export interface LeafParams {
  issuer: Issuer;
  /** SubjectPublicKeyInfo DER (from the CSR), or a public CryptoKey. */
  publicKey: Uint8Array | CryptoKey;
  kind: LeafKind;
  notBefore: Date;
  notAfter: Date;
  serial?: string;
  /** URI SANs (workload: exactly the SPIFFE ID). */
  uris?: string[];
  dnsNames?: string[];
  ips?: string[];
  /** Subject DN; empty for workloads, like istiod's. */
  subject?: string;
}

const USAGE: Record<LeafKind, { usages: number; eku: string[] }> = {
  workload: {
    usages: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
    eku: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
  },
  "node-client": { usages: x509.KeyUsageFlags.digitalSignature, eku: [x509.ExtendedKeyUsage.clientAuth] },
  server: { usages: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, eku: [x509.ExtendedKeyUsage.serverAuth] },
};

/** Signs a leaf certificate (not a CA) under `issuer`. Returns PEM with a trailing newline. */
export async function signLeaf(p: LeafParams): Promise<string> {
  const issuerCert = new x509.X509Certificate(p.issuer.certPem);
  const spki = p.publicKey instanceof Uint8Array ? p.publicKey : new Uint8Array(await crypto.subtle.exportKey("spki", p.publicKey));
  const names: x509.JsonGeneralName[] = [
    ...(p.uris ?? []).map((value) => ({ type: "url" as const, value })),
    ...(p.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
    ...(p.ips ?? []).map((value) => ({ type: "ip" as const, value })),
  ];
  const subject = p.subject ?? "";
  const u = USAGE[p.kind];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(u.usages, true),
    new x509.ExtendedKeyUsageExtension(u.eku, false),
    await x509.SubjectKeyIdentifierExtension.create(spkiKey(spki)),
    await authorityKeyIdFor(issuerCert),
  ];
  // RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, subject === ""));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: p.serial ?? randomSerial(),
    // the issuer's subject, byte for byte: strict verifiers (rustls/webpki) compare raw names
    issuer: new x509.Name(issuerCert.subjectName.toArrayBuffer()),
    subject,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: spki,
    signingKey: p.issuer.key.key,
    signingAlgorithm: p.issuer.key.algorithm,
    extensions,
  });
  return cert.toString("pem") + "\n";
}

export interface CaParams {
  keys: CryptoKeyPair;
  subject: string;
  notBefore: Date;
  notAfter: Date;
}

/** A self-signed CA certificate (root): CA:TRUE, keyCertSign + cRLSign, SKI. */
export async function createSelfSignedCa(p: CaParams): Promise<string> {
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: p.subject,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    keys: p.keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(p.keys.publicKey),
    ],
  });
  return cert.toString("pem") + "\n";
}

export interface CertFacts {
  serial: string;
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  uris: string[];
  isCa: boolean;
  /** A CA whose key usage (if any) allows keyCertSign. */
  mayIssue: boolean;
  selfSigned: boolean;
}

/** What nshub needs to know about a certificate. */
export function certFacts(pem: string): CertFacts {
  const c = new x509.X509Certificate(pem);
  const san = c.getExtension(x509.SubjectAlternativeNameExtension);
  const bc = c.getExtension(x509.BasicConstraintsExtension);
  const ku = c.getExtension(x509.KeyUsagesExtension);
  return {
    serial: c.serialNumber.toLowerCase(),
    subject: c.subject,
    issuer: c.issuer,
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    uris: san ? san.names.items.filter((n) => n.type === "url").map((n) => n.value) : [],
    isCa: bc?.ca === true,
    mayIssue: bc?.ca === true && (ku === null || (ku.usages & x509.KeyUsageFlags.keyCertSign) !== 0),
    selfSigned: c.subject === c.issuer,
  };
}

/** Splits concatenated PEM text into one PEM (with a trailing newline) per certificate. */
export function splitPem(text: string): string[] {
  const out = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return out.map((p) => p + "\n");
}

function toPem(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** AKI = the issuer's own SKI when it has one (a CA made elsewhere may hash its key differently). */
async function authorityKeyIdFor(issuer: x509.X509Certificate): Promise<x509.AuthorityKeyIdentifierExtension> {
  const ski = issuer.getExtension(x509.SubjectKeyIdentifierExtension);
  return ski ? new x509.AuthorityKeyIdentifierExtension(ski.keyId, false) : x509.AuthorityKeyIdentifierExtension.create(issuer.publicKey, false);
}

/** A public CryptoKey for SKI hashing from SPKI DER (the key algorithm does not matter for SKI). */
function spkiKey(spki: Uint8Array): x509.PublicKey {
  return new x509.PublicKey(spki);
}
