// nshub's CA directory: what `nshub ca init` writes and `nshub ca serve` / the local signer
// read. The certificate files use the names of Istio's plugged-in CA secret `cacerts`
// (https://istio.io/latest/docs/tasks/security/cert-management/plugin-ca-cert/), so the same
// files can be handed to istiod, and a `cacerts` set can be taken with --root-cert/--root-key.
//
//   ca.json            trust domain, creation time                          0644
//   ca-cert.pem        the signing certificate (the root, or an intermediate) 0644
//   ca-key.pem         its private key                                      0600, root
//   cert-chain.pem     ca-cert.pem, then its issuers up to the root         0644
//   root-cert.pem      the root: what every node and peer trusts            0644
//   node-ca-cert.pem   issuer of node client certificates (mTLS to the CA)  0644
//   node-ca-key.pem    its key                                              0600, root
//   nodes.json         node credentials: token hashes, client cert serials  0600, root
//
// Node client certificates get their own issuer on purpose: they never chain to root-cert.pem,
// so a node's credential for the CA can never pass as a workload identity in a TLS handshake.
import { X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../util/atomic-file.ts";
import { readPrivateFile } from "./key-file.ts";
import { checkTrustDomain } from "./spiffe.ts";
import { certFacts, createSelfSignedCa, generateP256, importSigningKey, keyMatchesCert, privateKeyPem, splitPem, type Issuer } from "./x509.ts";

export const CA_FILES = {
  config: "ca.json",
  cert: "ca-cert.pem",
  key: "ca-key.pem",
  chain: "cert-chain.pem",
  root: "root-cert.pem",
  nodeCaCert: "node-ca-cert.pem",
  nodeCaKey: "node-ca-key.pem",
  nodes: "nodes.json",
} as const;

export const ROOT_LIFETIME_YEARS = 10;

export interface CaInitOptions {
  dir: string;
  trustDomain: string;
  /** An existing CA (root or intermediate) to sign with, instead of a new root. */
  rootCertPem?: string;
  rootKeyPem?: string;
  /** For an intermediate: its issuers up to the root, PEM (Istio's cert-chain.pem may include the certificate itself). */
  certChainPem?: string;
  now?: Date;
}

export interface CaInitResult {
  files: string[];
  rootSubject: string;
  rootNotAfter: Date;
  signingSubject: string;
  generated: boolean;
}

/** Creates a CA directory. Refuses to overwrite an existing CA. */
export async function initCaDir(o: CaInitOptions): Promise<CaInitResult> {
  const td = checkTrustDomain(o.trustDomain);
  const now = o.now ?? new Date();
  if (existsSync(join(o.dir, CA_FILES.key))) throw new Error(`${o.dir} already holds a CA (${CA_FILES.key}); refusing to overwrite it`);
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  chmodSync(o.dir, 0o700);

  let certPem: string;
  let keyPem: string;
  let above: string[] = [];
  let generated = false;
  if (o.rootCertPem !== undefined || o.rootKeyPem !== undefined) {
    if (o.rootCertPem === undefined || o.rootKeyPem === undefined) throw new Error("give both --root-cert and --root-key");
    ({ certPem, keyPem, above } = checkGivenCa(o.rootCertPem, o.rootKeyPem, o.certChainPem));
  } else {
    const keys = await generateP256();
    const notAfter = new Date(now);
    notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_LIFETIME_YEARS);
    certPem = await createSelfSignedCa({ keys, subject: `O=${td}, CN=nshub root CA`, notBefore: now, notAfter });
    keyPem = await privateKeyPem(keys.privateKey);
    generated = true;
  }
  const root = above.length > 0 ? above[above.length - 1]! : certPem;

  const nodeKeys = await generateP256();
  const nodeNotAfter = new Date(now);
  nodeNotAfter.setUTCFullYear(nodeNotAfter.getUTCFullYear() + ROOT_LIFETIME_YEARS);
  const nodeCaCert = await createSelfSignedCa({ keys: nodeKeys, subject: `O=${td}, CN=nshub node CA`, notBefore: now, notAfter: nodeNotAfter });

  const write = (name: string, data: string, mode: number) => writeFileAtomic(join(o.dir, name), data, mode);
  write(CA_FILES.key, keyPem, 0o600);
  write(CA_FILES.nodeCaKey, await privateKeyPem(nodeKeys.privateKey), 0o600);
  write(CA_FILES.cert, certPem, 0o644);
  write(CA_FILES.chain, [certPem, ...above].join(""), 0o644);
  write(CA_FILES.root, root, 0o644);
  write(CA_FILES.nodeCaCert, nodeCaCert, 0o644);
  if (!existsSync(join(o.dir, CA_FILES.nodes))) write(CA_FILES.nodes, JSON.stringify({ version: 1, nodes: {} }, null, 2) + "\n", 0o600);
  write(CA_FILES.config, JSON.stringify({ version: 1, trustDomain: td, created: now.toISOString() }, null, 2) + "\n", 0o644);
  const rootFacts = certFacts(root);
  return {
    files: Object.values(CA_FILES).map((f) => join(o.dir, f)),
    rootSubject: rootFacts.subject,
    rootNotAfter: rootFacts.notAfter,
    signingSubject: certFacts(certPem).subject,
    generated,
  };
}

/** Checks a given CA: key matches, it may sign certificates, its chain reaches a self-signed root. */
function checkGivenCa(certText: string, keyPem: string, chainText?: string): { certPem: string; keyPem: string; above: string[] } {
  const [certPem, ...extra] = splitPem(certText);
  if (!certPem) throw new Error("--root-cert: no PEM certificate in it");
  if (extra.length > 0) throw new Error("--root-cert: more than one certificate; give the signing certificate alone and its issuers with --cert-chain");
  if (!keyMatchesCert(keyPem, certPem)) throw new Error("--root-key does not belong to --root-cert (their public keys differ)");
  const cert = new X509Certificate(certPem);
  if (!cert.ca) throw new Error(`--root-cert (subject "${certFacts(certPem).subject}") is not a CA certificate (basicConstraints CA:TRUE missing)`);
  if (!certFacts(certPem).mayIssue) throw new Error("--root-cert may not sign certificates (its keyUsage lacks keyCertSign)");
  // Istio's cert-chain.pem starts with ca-cert.pem itself: drop it when present.
  let above = chainText ? splitPem(chainText) : [];
  if (above[0] !== undefined && new X509Certificate(above[0]).fingerprint256 === cert.fingerprint256) above = above.slice(1);
  let child = cert;
  for (const [i, pem] of above.entries()) {
    const parent = new X509Certificate(pem);
    if (!child.checkIssued(parent) || !child.verify(parent.publicKey)) throw new Error(`--cert-chain certificate ${i + 1} did not sign the one before it; order: the signing certificate's issuer first, the root last`);
    child = parent;
  }
  const selfSigned = child.checkIssued(child) && child.verify(child.publicKey);
  if (!selfSigned) {
    throw new Error(above.length === 0 ? "--root-cert is an intermediate (not self-signed): give its issuers up to the root with --cert-chain" : "--cert-chain does not end with a self-signed root");
  }
  if (cert.validToDate.getTime() < Date.now()) throw new Error(`--root-cert expired on ${cert.validToDate.toISOString()}`);
  return { certPem, keyPem, above };
}

/** A loaded CA directory. */
export interface LoadedCa {
  dir: string;
  trustDomain: string;
  issuer: Issuer;
  intermediates: string[];
  rootBundle: string;
  nodeIssuer: Issuer;
  nodeCaCertPem: string;
}

/** Loads a CA directory; both key files must be root-only (0600). */
export async function loadCaDir(dir: string): Promise<LoadedCa> {
  const cfgPath = join(dir, CA_FILES.config);
  if (!existsSync(cfgPath)) throw new Error(`${dir} is not an nshub CA directory (no ${CA_FILES.config}); create one with: nshub ca init --dir ${dir}`);
  const st = statSync(dir);
  if ((st.mode & 0o022) !== 0) throw new Error(`CA directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 0700 ${dir}`);
  const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as { trustDomain?: string };
  const trustDomain = checkTrustDomain(String(cfg.trustDomain ?? ""));
  const certPem = readFileSync(join(dir, CA_FILES.cert), "utf8");
  const keyPem = readPrivateFile(join(dir, CA_FILES.key), "CA key");
  if (!keyMatchesCert(keyPem, certPem)) throw new Error(`${CA_FILES.key} does not belong to ${CA_FILES.cert} in ${dir}`);
  const chain = splitPem(readFileSync(join(dir, CA_FILES.chain), "utf8"));
  const rootBundle = readFileSync(join(dir, CA_FILES.root), "utf8");
  const nodeCaCertPem = readFileSync(join(dir, CA_FILES.nodeCaCert), "utf8");
  const nodeKeyPem = readPrivateFile(join(dir, CA_FILES.nodeCaKey), "node CA key");
  const rootFingerprints = new Set(splitPem(rootBundle).map((p) => new X509Certificate(p).fingerprint256));
  // cert-chain.pem = ca-cert, intermediates, root: keep what lies strictly between.
  const intermediates = chain.slice(1).filter((p) => !rootFingerprints.has(new X509Certificate(p).fingerprint256));
  return {
    dir,
    trustDomain,
    issuer: { certPem, key: await importSigningKey(keyPem) },
    intermediates,
    rootBundle,
    nodeIssuer: { certPem: nodeCaCertPem, key: await importSigningKey(nodeKeyPem) },
    nodeCaCertPem,
  };
}
