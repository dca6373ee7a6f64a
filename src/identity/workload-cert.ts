// One workload certificate, end to end, the way ztunnel fetches one
// (https://github.com/istio/ztunnel/blob/master/src/identity/caclient.rs): a fresh ECDSA P-256
// key, a CSR for the identity, the source's answer checked before it is used — a chain of at
// least leaf + root, the leaf's first URI SAN equal to the identity asked for, the leaf's key
// ours. The private key never leaves this process (it is returned as PEM for the TLS stack).
import { CertificateError, type CertificateSource } from "./source.ts";
import { parseSpiffeId } from "./spiffe.ts";
import { certFacts, createCsr, generateP256, keyMatchesCert, privateKeyPem } from "./x509.ts";

export interface WorkloadCertificate {
  identity: string;
  /** PKCS#8 PEM; memory only. */
  keyPem: string;
  /** As the source answered: leaf, intermediates, root bundle. */
  chain: string[];
  leaf: string;
  /** What a TLS server or client presents: leaf + intermediates (no root). */
  presented: string;
  /** The trust anchors for peers: the last element. */
  roots: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

/** Asks `source` for a certificate for `identity` (a workload SPIFFE ID). */
export async function fetchWorkloadCertificate(source: CertificateSource, identity: string, validitySeconds: number, signal?: AbortSignal): Promise<WorkloadCertificate> {
  parseSpiffeId(identity);
  const keys = await generateP256();
  const csr = await createCsr(identity, keys);
  const chain = await source.createCertificate({ csr, identity, validitySeconds, signal });
  const bad = (why: string) => new CertificateError("internal", `${source.description}: ${why}`, source.description);
  // ztunnel needs a root at the end to verify peers ("no root certificate present").
  if (chain.length < 2) throw bad(`the CA answered ${chain.length} certificate(s); expected the leaf and at least the root`);
  const leaf = chain[0]!;
  const facts = certFacts(leaf);
  if (facts.uris[0] !== identity) throw bad(`the certificate's URI SAN is ${facts.uris[0] ?? "missing"}, not the identity asked for ${identity}`);
  const keyPem = await privateKeyPem(keys.privateKey);
  if (!keyMatchesCert(keyPem, leaf)) throw bad("the certificate is not for the key in our CSR");
  return {
    identity,
    keyPem,
    chain,
    leaf,
    presented: chain.slice(0, -1).join(""),
    roots: chain[chain.length - 1]!,
    serial: facts.serial,
    notBefore: facts.notBefore,
    notAfter: facts.notAfter,
  };
}

/** When to renew: halfway through the lifetime, as ztunnel's refresh_at. Add jitter in the caller. */
export function refreshAt(cert: Pick<WorkloadCertificate, "notBefore" | "notAfter">): Date {
  return new Date(cert.notBefore.getTime() + (cert.notAfter.getTime() - cert.notBefore.getTime()) / 2);
}
