// The local-file certificate source: this node signs workload certificates itself with a CA key
// on disk (one node, the demo, no network). Same policy and refusals as `nshub ca serve`
// (./ca-signer.ts), same interface as the CA client (./source.ts), so the proxy's certificate
// manager cannot tell them apart. The key file must be root-only (0600, owner root): checked
// once at start, and a file others can read is refused, not warned about.
import { readFileSync } from "node:fs";
import { CaRefusal, CaSigner } from "./ca-signer.ts";
import { loadCaDir } from "./ca-dir.ts";
import { readPrivateFile } from "./key-file.ts";
import { CertificateError, type CertificateRequest, type CertificateSource } from "./source.ts";
import { certFacts, importSigningKey, keyMatchesCert } from "./x509.ts";

export interface LocalCaFiles {
  trustDomain: string;
  /** The signing certificate (a root, or an intermediate). */
  certFile: string;
  /** Its private key: root-only, mode 0600 or stricter. */
  keyFile: string;
  /** The root certificate(s); default: certFile (a self-signed root). */
  rootFile?: string;
  /** Certificates between certFile and the root, nearest first. */
  intermediatesFile?: string;
  defaultLifetimeSeconds?: number;
  maxLifetimeSeconds?: number;
}

/** A local signer knows the one trust domain it signs for (the proxy checks its config against it). */
export interface LocalCertificateSource extends CertificateSource {
  readonly trustDomain: string;
}

class LocalCa implements LocalCertificateSource {
  constructor(
    readonly description: string,
    private readonly signer: CaSigner,
    readonly trustDomain: string,
  ) {}

  async createCertificate(req: CertificateRequest): Promise<string[]> {
    try {
      return (await this.signer.sign({ csr: req.csr, identity: req.identity, validitySeconds: req.validitySeconds })).chain;
    } catch (e) {
      if (e instanceof CaRefusal) throw new CertificateError(e.code, `${this.description}: ${e.code}: ${e.message}`, this.description);
      throw new CertificateError("internal", `${this.description}: ${(e as Error).message}`, this.description);
    }
  }

  close(): void {}
}

/** A local signer from explicit files. Throws when the key file is not root-only or does not match. */
export async function openLocalCa(f: LocalCaFiles): Promise<LocalCertificateSource> {
  const keyPem = readPrivateFile(f.keyFile, "CA key");
  const certPem = readFileSync(f.certFile, "utf8");
  if (!keyMatchesCert(keyPem, certPem)) throw new Error(`CA key ${f.keyFile} does not belong to ${f.certFile}`);
  if (!certFacts(certPem).mayIssue) throw new Error(`${f.certFile} is not a CA certificate that may sign others`);
  const signer = new CaSigner({
    trustDomain: f.trustDomain,
    issuer: { certPem, key: await importSigningKey(keyPem) },
    intermediates: f.intermediatesFile ? [readFileSync(f.intermediatesFile, "utf8")] : [],
    rootBundle: f.rootFile ? readFileSync(f.rootFile, "utf8") : certPem,
    defaultLifetimeSeconds: f.defaultLifetimeSeconds,
    maxLifetimeSeconds: f.maxLifetimeSeconds,
  });
  return new LocalCa(`local-ca ${f.certFile}`, signer, f.trustDomain);
}

/** A local signer from an `nshub ca init` directory (its trust domain, files and mode checks). */
export async function openLocalCaDir(dir: string, lifetimes: { defaultLifetimeSeconds?: number; maxLifetimeSeconds?: number } = {}): Promise<LocalCertificateSource> {
  const ca = await loadCaDir(dir);
  const signer = new CaSigner({ trustDomain: ca.trustDomain, issuer: ca.issuer, intermediates: ca.intermediates, rootBundle: ca.rootBundle, ...lifetimes });
  return new LocalCa(`local-ca ${dir}`, signer, ca.trustDomain);
}
