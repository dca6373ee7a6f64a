// Certificates for the HBONE tests, all from src/identity: a local CA in a temp dir (and a
// second, unrelated one), workload certificates, and an expired one signed by the same CA.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initCaDir, loadCaDir } from "../../src/identity/ca-dir.ts";
import { CaSigner } from "../../src/identity/ca-signer.ts";
import { openLocalCaDir } from "../../src/identity/local-ca.ts";
import type { CertificateSource } from "../../src/identity/source.ts";
import { fetchWorkloadCertificate, type WorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { generateP256, privateKeyPem, signLeaf } from "../../src/identity/x509.ts";

export const ID_A = "spiffe://cluster.local/ns/ns-a/sa/sa-a";
export const ID_B = "spiffe://cluster.local/ns/ns-b/sa/sa-b";
export const ID_C = "spiffe://cluster.local/ns/ns-c/sa/sa-c";

export interface Pki {
  dir: string;
  a: WorkloadCertificate;
  b: WorkloadCertificate;
  /** Same CA, identity C (the "wrong" server). */
  c: WorkloadCertificate;
  /** Same CA, identity B, expired an hour ago. */
  bExpired: WorkloadCertificate;
  aExpired: WorkloadCertificate;
  /** Another CA (same trust domain name): identity B and A, untrusted by the others. */
  bOther: WorkloadCertificate;
  aOther: WorkloadCertificate;
  /** Signed by the same CA outside its policy: another trust domain; two URI SANs. */
  aForeignDomain: { keyPem: string; presented: string; roots: string };
  aTwoSans: { keyPem: string; presented: string; roots: string };
  cleanup(): void;
}

async function caAt(dir: string, now?: () => Date): Promise<CertificateSource> {
  if (!now) return openLocalCaDir(dir);
  const ca = await loadCaDir(dir);
  const signer = new CaSigner({ trustDomain: ca.trustDomain, issuer: ca.issuer, intermediates: ca.intermediates, rootBundle: ca.rootBundle, now });
  return { description: "past-ca", createCertificate: async (r) => (await signer.sign(r)).chain, close() {} };
}

export async function makePki(): Promise<Pki> {
  const dir = mkdtempSync(join(tmpdir(), "nshub-hbone-pki-"));
  await initCaDir({ dir: join(dir, "ca"), trustDomain: "cluster.local" });
  await initCaDir({ dir: join(dir, "other"), trustDomain: "cluster.local" });
  const ca = await caAt(join(dir, "ca"));
  const other = await caAt(join(dir, "other"));
  // Signed "two hours ago" for one hour: expired an hour ago, same root.
  const past = await caAt(join(dir, "ca"), () => new Date(Date.now() - 2 * 3600_000));
  const get = (s: CertificateSource, id: string) => fetchWorkloadCertificate(s, id, 3600);
  const [a, b, c, bExpired, aExpired, bOther, aOther] = await Promise.all([
    get(ca, ID_A), get(ca, ID_B), get(ca, ID_C), get(past, ID_B), get(past, ID_A), get(other, ID_B), get(other, ID_A),
  ]);
  // The CA's signer refuses these (right so); the test needs them to prove the server checks too.
  const issuer = (await loadCaDir(join(dir, "ca"))).issuer;
  const rogue = async (uris: string[]) => {
    const keys = await generateP256();
    const leaf = await signLeaf({ issuer, publicKey: keys.publicKey, kind: "workload", uris, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
    return { keyPem: await privateKeyPem(keys.privateKey), presented: leaf, roots: a.roots };
  };
  const aForeignDomain = await rogue(["spiffe://other.domain/ns/ns-a/sa/sa-a"]);
  const aTwoSans = await rogue([ID_A, ID_C]);
  return { dir, a, b, c, bExpired, aExpired, bOther, aOther, aForeignDomain, aTwoSans, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
