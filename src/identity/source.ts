// Where workload certificates come from. The proxy's certificate manager holds one
// CertificateSource and does not care which: Istio's CA API (istiod, or `nshub ca serve`) through
// ./ca-client.ts, or a CA key on this node through ./local-ca.ts. Both take the CSR the manager
// made (the private key stays with the manager) and return the chain, leaf first, root last, as
// istiod answers (https://github.com/istio/istio/blob/master/security/pkg/server/ca/server.go).

export interface CertificateRequest {
  /** PEM PKCS#10 CSR whose only URI SAN is `identity`. */
  csr: string;
  /** The SPIFFE ID asked for: `spiffe://<td>/ns/<ns>/sa/<sa>`. */
  identity: string;
  /** Requested lifetime in seconds (0: the source's default). */
  validitySeconds: number;
  signal?: AbortSignal;
}

export interface CertificateSource {
  /** For logs and `nshub certs`: "istio-ca https://istiod…:15012", "local-ca /etc/…". */
  readonly description: string;
  /** The chain for the CSR: PEM strings, the leaf first, the root (bundle) last. */
  createCertificate(req: CertificateRequest): Promise<string[]>;
  /** Releases connections (the gRPC session). */
  close(): void;
}

/**
 * Why a source refused or failed. `code` is the gRPC status name (istiod's codes:
 * "unauthenticated", "invalid_argument", "permission_denied", "unavailable", "internal"…), so
 * a manager can tell a refusal that a retry will not fix from an outage.
 */
export class CertificateError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly source: string,
  ) {
    super(message);
    this.name = "CertificateError";
  }

  /** A retry with the same request can succeed (the CA was down or busy). */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

const RETRYABLE = new Set(["unavailable", "deadline_exceeded", "resource_exhausted", "aborted", "internal", "unknown", "canceled"]);
