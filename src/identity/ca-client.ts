// A client of Istio's certificate API (istiod on :15012, or `nshub ca serve`), sending what
// ztunnel sends (https://github.com/istio/ztunnel/blob/master/src/identity/caclient.rs and
// src/identity/auth.rs): gRPC over HTTP/2 + TLS, `authorization: Bearer <token>` with the token
// file read again on every call (projected tokens rotate), `clusterid` next to it, and the
// SPIFFE ID asked for in the request metadata `ImpersonatedIdentity` (shared, per-node mode).
// A node client certificate (nshub's CA only) may replace or accompany the token.
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { readFileSync } from "node:fs";
import { IstioCertificateService } from "../gen/istio/v1/auth/ca_pb.ts";
import { CertificateError, type CertificateRequest, type CertificateSource } from "./source.ts";

export interface CaClientOptions {
  /** "https://istiod.istio-system.svc:15012", or host:port (https:// is added, as ztunnel does). */
  address: string;
  /** PEM roots that verify the CA's serving certificate (ztunnel's CA_ROOT_CA). */
  caRoots: string;
  /** A file holding the bearer token, read on every call. */
  tokenFile?: string;
  /** A literal token (tests, or a token passed by value). */
  token?: string;
  /** A node client certificate and its key (PEM), for mTLS to nshub's CA. */
  clientCert?: { certPem: string; keyPem: string };
  /** Sent as `clusterid` with the token; istiod picks the cluster that reviews the token by it. ztunnel's default: "Kubernetes". */
  clusterId?: string;
  /** The name the CA's certificate must carry, when it is not the address's host (ztunnel's ALT_CA_HOSTNAME). */
  serverName?: string;
  /** Per call (default 10 s). */
  timeoutMs?: number;
}

/** Normalizes the address like ztunnel's validate_uri: no scheme means https. */
export function caBaseUrl(address: string): string {
  const a = address.trim();
  if (/^https:\/\//i.test(a)) return a.replace(/\/+$/, "");
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(a)) throw new Error(`CA address ${JSON.stringify(address)}: only https:// is supported (the CA API needs TLS)`);
  return `https://${a}`.replace(/\/+$/, "");
}

/** gRPC code name as istiod and Connect spell it: "invalid_argument". */
export function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

class CaClient implements CertificateSource {
  readonly description: string;
  private readonly client: Client<typeof IstioCertificateService>;
  private readonly session: Http2SessionManager;

  constructor(private readonly o: CaClientOptions) {
    if (!o.tokenFile && o.token === undefined && !o.clientCert) throw new Error("CA client: give a token file, a token, or a client certificate");
    const baseUrl = caBaseUrl(o.address);
    this.description = `istio-ca ${baseUrl}`;
    // ztunnel: HTTP/2 PING every 30 s, 10 s to answer. Our own session manager, so close() can end it.
    this.session = new Http2SessionManager(
      baseUrl,
      { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 },
      {
        ca: o.caRoots,
        ...(o.serverName ? { servername: o.serverName } : {}),
        ...(o.clientCert ? { cert: o.clientCert.certPem, key: o.clientCert.keyPem } : {}),
      },
    );
    const transport = createGrpcTransport({ baseUrl, sessionManager: this.session });
    this.client = createClient(IstioCertificateService, transport);
  }

  private headers(): Record<string, string> {
    let token = this.o.token;
    if (this.o.tokenFile) {
      try {
        token = readFileSync(this.o.tokenFile, "utf8").trim();
      } catch (e) {
        throw new CertificateError("unauthenticated", `cannot read the CA token file ${this.o.tokenFile}: ${(e as Error).message}`, this.description);
      }
      if (token === "") throw new CertificateError("unauthenticated", `the CA token file ${this.o.tokenFile} is empty`, this.description);
    }
    if (token === undefined) return {};
    return { authorization: `Bearer ${token}`, clusterid: this.o.clusterId ?? "Kubernetes" };
  }

  async createCertificate(req: CertificateRequest): Promise<string[]> {
    const headers = this.headers();
    try {
      const res = await this.client.createCertificate(
        { csr: req.csr, validityDuration: BigInt(req.validitySeconds), metadata: { ImpersonatedIdentity: req.identity } },
        { headers, timeoutMs: this.o.timeoutMs ?? 10_000, signal: req.signal },
      );
      if (res.certChain.length === 0) throw new CertificateError("internal", "the CA answered with an empty certificate chain", this.description);
      return res.certChain;
    } catch (e) {
      if (e instanceof CertificateError) throw e;
      const ce = ConnectError.from(e);
      throw new CertificateError(codeName(ce.code), `${this.description}: ${codeName(ce.code)}: ${ce.rawMessage}`, this.description);
    }
  }

  close(): void {
    this.session.abort();
  }
}

/** A CertificateSource talking to an Istio-compatible CA. */
export function createCaClient(o: CaClientOptions): CertificateSource {
  return new CaClient(o);
}

/** One call: the chain for `csr`, leaf first. */
export async function createCertificate(o: CaClientOptions & CertificateRequest): Promise<string[]> {
  const c = new CaClient(o);
  try {
    return await c.createCertificate(o);
  } finally {
    c.close();
  }
}
