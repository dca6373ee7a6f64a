// The signing policy of nshub's CA, shared by `nshub ca serve` (./ca-server.ts) and the local
// file signer (./local-ca.ts): sign a workload CSR only when its one SAN is the identity asked
// for, in this CA's trust domain, for no longer than the maximum lifetime. Refusals carry the
// gRPC code istiod uses for the same case (CSR and TTL errors are InvalidArgument:
// https://github.com/istio/istio/blob/master/security/pkg/pki/error/error.go), a reason label
// for metrics, and a message that says what to change.
import { createPublicKey } from "node:crypto";
import { parseSpiffeId, SpiffeIdError, type WorkloadIdentity } from "./spiffe.ts";
import { certFacts, readCsr, signLeaf, splitPem, type CsrContents, type Issuer } from "./x509.ts";

/** istiod's defaults: 24 h, at most 90 days (https://github.com/istio/istio/blob/master/security/pkg/cmd/constants.go). */
export const DEFAULT_LIFETIME_SECONDS = 24 * 3600;
export const MAX_LIFETIME_SECONDS = 90 * 24 * 3600;
/** istiod back-dates NotBefore by 2 minutes for clock skew between nodes. */
export const CLOCK_SKEW_SECONDS = 120;

export type RefusalReason =
  | "unauthenticated"
  | "no_identity"
  | "bad_identity"
  | "foreign_trust_domain"
  | "bad_csr"
  | "san_mismatch"
  | "bad_key"
  | "lifetime_too_long"
  | "bad_lifetime"
  // with Kubernetes (./ca-kube.ts): who may ask for what
  | "not_node_agent"
  | "node_unknown"
  | "not_on_node"
  | "kube_unavailable";

/** gRPC status names (Connect's lowercase spelling) per reason. */
export const REFUSAL_CODE: Record<RefusalReason, "unauthenticated" | "invalid_argument" | "permission_denied" | "unavailable"> = {
  unauthenticated: "unauthenticated",
  no_identity: "permission_denied",
  bad_identity: "invalid_argument",
  foreign_trust_domain: "permission_denied",
  bad_csr: "invalid_argument",
  san_mismatch: "invalid_argument",
  bad_key: "invalid_argument",
  lifetime_too_long: "invalid_argument",
  bad_lifetime: "invalid_argument",
  // istiod answers these three UNAUTHENTICATED with an opaque message; the caller did
  // authenticate, so nshub says PERMISSION_DENIED and why (src/identity/README.md)
  not_node_agent: "permission_denied",
  node_unknown: "permission_denied",
  not_on_node: "permission_denied",
  // the API server cannot be asked now (TokenReview failed, pods not listed yet): retry
  kube_unavailable: "unavailable",
};

export class CaRefusal extends Error {
  constructor(
    readonly reason: RefusalReason,
    message: string,
  ) {
    super(message);
    this.name = "CaRefusal";
  }
  get code(): string {
    return REFUSAL_CODE[this.reason];
  }
}

export interface SignerConfig {
  trustDomain: string;
  /** The signing certificate (root or intermediate) and its key. */
  issuer: Issuer;
  /** Certificates between the signing certificate and the root, PEM, nearest first. */
  intermediates: string[];
  /** The root certificate(s), PEM: the last element of every answer, not split (ztunnel reads it as a bundle). */
  rootBundle: string;
  defaultLifetimeSeconds?: number;
  maxLifetimeSeconds?: number;
  now?: () => Date;
}

export interface SignRequest {
  csr: string;
  identity: string;
  validitySeconds: number;
}

export interface Issued {
  identity: string;
  /** Leaf first, then the signing certificate if it is not the root, intermediates, the root bundle last. */
  chain: string[];
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export class CaSigner {
  readonly trustDomain: string;
  readonly defaultLifetimeSeconds: number;
  readonly maxLifetimeSeconds: number;
  private readonly issuerNotAfter: Date;
  private readonly chainTail: string[];
  private readonly now: () => Date;

  constructor(private readonly cfg: SignerConfig) {
    this.trustDomain = cfg.trustDomain;
    this.defaultLifetimeSeconds = cfg.defaultLifetimeSeconds ?? DEFAULT_LIFETIME_SECONDS;
    this.maxLifetimeSeconds = cfg.maxLifetimeSeconds ?? MAX_LIFETIME_SECONDS;
    if (this.defaultLifetimeSeconds > this.maxLifetimeSeconds) {
      throw new Error(`default lifetime ${formatSeconds(this.defaultLifetimeSeconds)} is above the maximum ${formatSeconds(this.maxLifetimeSeconds)}`);
    }
    const issuer = certFacts(cfg.issuer.certPem);
    this.issuerNotAfter = issuer.notAfter;
    const intermediates = cfg.intermediates.flatMap(splitPem);
    // A signing certificate that is not the root travels with the chain, as istiod's cert-chain.pem.
    this.chainTail = [...(issuer.selfSigned ? [] : splitPem(cfg.issuer.certPem)), ...intermediates, normalizePem(cfg.rootBundle)];
    this.now = cfg.now ?? (() => new Date());
  }

  /**
   * Signs `req` or throws CaRefusal. `authorize` (may the caller have this identity?) runs once
   * the identity is known to be well-formed and in this trust domain, before the CSR is read.
   */
  async sign(req: SignRequest, authorize?: (id: WorkloadIdentity) => void): Promise<Issued> {
    const identity = this.checkIdentity(req.identity);
    authorize?.(parseSpiffeId(identity));
    const lifetime = this.checkLifetime(req.validitySeconds);
    const csr = await this.checkCsr(req.csr, identity);
    const now = this.now();
    const notBefore = new Date(now.getTime() - CLOCK_SKEW_SECONDS * 1000);
    // Like istiod, never past the signing certificate's own end.
    const notAfter = new Date(Math.min(now.getTime() + lifetime * 1000, this.issuerNotAfter.getTime()));
    const leaf = await signLeaf({ issuer: this.cfg.issuer, publicKey: csr.spki, kind: "workload", uris: [identity], notBefore, notAfter });
    const facts = certFacts(leaf);
    return { identity, chain: [leaf, ...this.chainTail], serial: facts.serial, notBefore: facts.notBefore, notAfter: facts.notAfter };
  }

  private checkIdentity(identity: string): string {
    if (identity === "") throw new CaRefusal("no_identity", "no identity asked for: set the request metadata ImpersonatedIdentity to the SPIFFE ID of the workload");
    let td: string;
    try {
      td = parseSpiffeId(identity).trustDomain;
    } catch (e) {
      throw new CaRefusal("bad_identity", e instanceof SpiffeIdError ? e.message : String(e));
    }
    if (td !== this.trustDomain) {
      throw new CaRefusal("foreign_trust_domain", `identity ${identity} is in trust domain "${td}"; this CA signs only "${this.trustDomain}"`);
    }
    return identity;
  }

  private checkLifetime(seconds: number): number {
    if (!Number.isSafeInteger(seconds) || seconds < 0) throw new CaRefusal("bad_lifetime", `validity_duration ${seconds} is not a whole number of seconds ≥ 0`);
    if (seconds === 0) return this.defaultLifetimeSeconds;
    if (seconds > this.maxLifetimeSeconds) {
      throw new CaRefusal(
        "lifetime_too_long",
        `requested lifetime ${seconds} s (${formatSeconds(seconds)}) is above this CA's maximum of ${this.maxLifetimeSeconds} s (${formatSeconds(this.maxLifetimeSeconds)})`,
      );
    }
    return seconds;
  }

  private async checkCsr(pem: string, identity: string): Promise<CsrContents> {
    let csr: CsrContents;
    try {
      if (!pem.includes("-----BEGIN CERTIFICATE REQUEST-----")) throw new Error("no PEM block \"CERTIFICATE REQUEST\"");
      csr = await readCsr(pem);
    } catch (e) {
      throw new CaRefusal("bad_csr", `the CSR is not a PEM PKCS#10 certificate request: ${(e as Error).message}`);
    }
    if (!csr.signatureValid) throw new CaRefusal("bad_csr", "the CSR's signature does not verify with its own public key");
    if (csr.otherSans.length > 0) {
      throw new CaRefusal("san_mismatch", `the CSR may carry only the identity as a URI SAN; it also has ${csr.otherSans.join(", ")}`);
    }
    if (csr.uris.length !== 1) {
      throw new CaRefusal("san_mismatch", `the CSR must have exactly one URI SAN, the identity ${identity}; it has ${csr.uris.length}${csr.uris.length ? `: ${csr.uris.join(", ")}` : ""}`);
    }
    if (csr.uris[0] !== identity) {
      throw new CaRefusal("san_mismatch", `the CSR's URI SAN ${csr.uris[0]} is not the identity asked for, ${identity}`);
    }
    const key = createPublicKey({ key: Buffer.from(csr.spki), format: "der", type: "spki" });
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const rsaBits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    const ok = (key.asymmetricKeyType === "ec" && (curve === "prime256v1" || curve === "secp384r1")) || (key.asymmetricKeyType === "rsa" && rsaBits >= 2048);
    if (!ok) throw new CaRefusal("bad_key", `the CSR's key (${key.asymmetricKeyType ?? "?"} ${curve ?? (rsaBits || "")}) is not ECDSA P-256/P-384 or RSA ≥ 2048 bits`);
    return csr;
  }
}

/** "90d", "36h", "1h30m", "45s" for messages. */
export function formatSeconds(s: number): string {
  const parts: string[] = [];
  let rest = s;
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]] as const) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.join("") || "0s";
}

/** Parses "90d", "24h", "30m", "45s", "1h30m" or plain seconds; throws naming `what`. */
export function parseDuration(text: string, what: string): number {
  const t = text.trim();
  if (/^\d+$/.test(t)) return Number(t);
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(t);
  if (!m || t === "") throw new Error(`${what}: expected a duration like 24h, 90d, 30m, 45s or seconds, got ${JSON.stringify(text)}`);
  const [, d, h, mi, s] = m.map((x) => Number(x ?? 0));
  return d! * 86400 + h! * 3600 + mi! * 60 + s!;
}

function normalizePem(text: string): string {
  return text.endsWith("\n") ? text : text + "\n";
}
