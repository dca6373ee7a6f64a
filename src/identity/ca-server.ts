// `nshub ca serve`: Istio's certificate API (istio.v1.auth.IstioCertificateService, the one
// istiod serves on :15012) over gRPC + TLS, so an nshub proxy or a real ztunnel can take its
// workload certificates from it. Served with @connectrpc/connect-node on node:http2 (Bun.serve
// sends no HTTP/2 trailers, which gRPC needs), gRPC protocol only.
//
// Per call: authenticate the node (a client certificate from the node CA, or `authorization:
// Bearer <token>`; both from `nshub ca issue-node`), take the identity from the request metadata
// `ImpersonatedIdentity` (what ztunnel sends in shared mode: https://github.com/istio/ztunnel/
// blob/master/src/identity/caclient.rs), sign through ./ca-signer.ts, log the issuance, count it.
// Refusals answer with istiod's codes: Unauthenticated ("request authenticate failure"),
// InvalidArgument for CSR and lifetime errors, PermissionDenied for identities the node may not
// have. Any node may ask for any identity of the trust domain (see ./node-credentials.ts).
import { Code, ConnectError, createContextKey, createContextValues, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http2 from "node:http2";
import { hostname } from "node:os";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { IstioCertificateService, type IstioCertificateRequest } from "../gen/istio/v1/auth/ca_pb.ts";
import type { Logger } from "../log/logger.ts";
import { loadCaDir } from "./ca-dir.ts";
import { CaRefusal, CaSigner, type RefusalReason, REFUSAL_CODE } from "./ca-signer.ts";
import { NodeAuthenticator, type AuthResult } from "./node-credentials.ts";
import { certFacts, generateP256, privateKeyPem, signLeaf } from "./x509.ts";

/** The request metadata key ztunnel sets to the SPIFFE ID it asks for on a pod's behalf. */
export const IMPERSONATED_IDENTITY = "ImpersonatedIdentity";

export interface CaServerOptions {
  dir: string;
  /** host:port; port 0 picks a free one (the answer says which). */
  address: string;
  /** host:port for GET /metrics; undefined: none. */
  metricsAddress?: string;
  /** DNS names and IPs in the serving certificate (what nodes dial). */
  serverNames?: string[];
  defaultLifetimeSeconds?: number;
  maxLifetimeSeconds?: number;
  log: Logger;
}

export interface CaServer {
  port: number;
  metricsPort?: number;
  trustDomain: string;
  registry: Registry;
  close(): Promise<void>;
}

const CODES: Record<string, Code> = { unauthenticated: Code.Unauthenticated, invalid_argument: Code.InvalidArgument, permission_denied: Code.PermissionDenied };
const REASONS = Object.keys(REFUSAL_CODE) as RefusalReason[];
const peerKey = createContextKey<{ authorized: boolean; serial?: string; cn?: string; error?: string; address?: string }>({ authorized: false });

export async function startCaServer(o: CaServerOptions): Promise<CaServer> {
  const ca = await loadCaDir(o.dir);
  const signer = new CaSigner({
    trustDomain: ca.trustDomain,
    issuer: ca.issuer,
    intermediates: ca.intermediates,
    rootBundle: ca.rootBundle,
    defaultLifetimeSeconds: o.defaultLifetimeSeconds,
    maxLifetimeSeconds: o.maxLifetimeSeconds,
  });
  const nodes = new NodeAuthenticator(o.dir);
  const { host, port } = splitHostPort(o.address, "--address");
  const names = o.serverNames?.length ? o.serverNames : defaultServerNames(host);
  const tls = await servingCertificate(ca, names);

  const registry = new Registry();
  const issued = new Counter({ name: "nshub_ca_certificates_issued_total", help: "Workload certificates signed", registers: [registry] });
  const refused = new Counter({ name: "nshub_ca_requests_refused_total", help: "CreateCertificate calls refused, by reason", labelNames: ["reason"] as const, registers: [registry] });
  for (const r of REASONS) refused.inc({ reason: r }, 0);
  const signSeconds = new Histogram({ name: "nshub_ca_sign_duration_seconds", help: "Time to check and sign one CSR", buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25], registers: [registry] });
  const rootExpiry = new Gauge({ name: "nshub_ca_root_expiry_timestamp_seconds", help: "When the root certificate expires (unix seconds)", registers: [registry] });
  rootExpiry.set(certFacts(ca.rootBundle).notAfter.getTime() / 1000);

  const authenticate = (ctx: HandlerContext): AuthResult => {
    const peer = ctx.values.get(peerKey);
    if (peer.authorized && peer.serial && peer.cn) return nodes.cert(peer.serial, peer.cn);
    const auth = ctx.requestHeader.get("authorization");
    if (auth) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
      return m ? nodes.token(m[1]!) : { ok: false, why: "the authorization header is not \"Bearer <token>\"" };
    }
    if (peer.error) return { ok: false, why: `the client certificate was not issued by this CA's node CA (${peer.error})` };
    return { ok: false, why: "no credentials: send \"authorization: Bearer <token>\" or a node client certificate (nshub ca issue-node)" };
  };

  const createCertificate = async (req: IstioCertificateRequest, ctx: HandlerContext) => {
    const address = ctx.values.get(peerKey).address;
    const who = authenticate(ctx);
    const requested = req.metadata?.[IMPERSONATED_IDENTITY];
    const identity = typeof requested === "string" ? requested : "";
    if (!who.ok) {
      refused.inc({ reason: "unauthenticated" });
      o.log.warn("certificate refused", { reason: "unauthenticated", identity, peer: address, error: who.why });
      throw new ConnectError(`request authenticate failure: ${who.why}`, Code.Unauthenticated);
    }
    const started = performance.now();
    try {
      const out = await signer.sign({ csr: req.csr, identity, validitySeconds: Number(req.validityDuration) });
      signSeconds.observe((performance.now() - started) / 1000);
      issued.inc();
      o.log.info("certificate issued", { node: who.node, via: who.via, identity, serial: out.serial, notAfter: out.notAfter.toISOString(), peer: address });
      return { certChain: out.chain };
    } catch (e) {
      if (!(e instanceof CaRefusal)) throw e;
      refused.inc({ reason: e.reason });
      o.log.warn("certificate refused", { node: who.node, reason: e.reason, identity, peer: address, error: e.message });
      throw new ConnectError(`CSR signing error (${e.message})`, CODES[e.code] ?? Code.InvalidArgument);
    }
  };

  const handler = connectNodeAdapter({
    grpc: true,
    grpcWeb: false,
    connect: false,
    routes: (router) => router.service(IstioCertificateService, { createCertificate }),
    contextValues: (req) => {
      const socket = ((req as http2.Http2ServerRequest).stream?.session?.socket ?? req.socket) as TLSSocket;
      const cert = socket.getPeerCertificate?.();
      const hasCert = cert !== undefined && cert !== null && Object.keys(cert).length > 0;
      const values = createContextValues();
      values.set(peerKey, {
        authorized: socket.authorized === true && hasCert,
        serial: hasCert ? cert.serialNumber : undefined,
        cn: hasCert ? String(cert.subject?.CN ?? "") : undefined,
        error: hasCert && !socket.authorized ? String(socket.authorizationError ?? "not verified") : undefined,
        address: socket.remoteAddress,
      });
      return values;
    },
  });

  // Bearer-token callers bring no certificate, so the handshake asks for one without requiring it;
  // a certificate that does not verify against the node CA counts for nothing.
  const server = http2.createSecureServer(
    { key: tls.keyPem, cert: tls.chainPem, ca: ca.nodeCaCertPem, requestCert: true, rejectUnauthorized: false, allowHTTP1: false, minVersion: "TLSv1.2" },
    handler,
  );
  // Clients (ztunnel, the proxy) keep their HTTP/2 sessions open; close() must end them.
  const sessions = new Set<http2.ServerHttp2Session>();
  let closing = false;
  server.on("session", (s: http2.ServerHttp2Session) => {
    if (closing) return void s.destroy(); // a handshake that finished while closing
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const boundPort = (server.address() as { port: number }).port;

  let metrics: ReturnType<typeof Bun.serve> | undefined;
  if (o.metricsAddress !== undefined) {
    const m = splitHostPort(o.metricsAddress, "--metrics-address");
    metrics = Bun.serve({
      hostname: m.host,
      port: m.port,
      fetch: async (r) =>
        new URL(r.url).pathname === "/metrics" ? new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } }) : new Response("not found\n", { status: 404 }),
    });
  }
  o.log.info("serving IstioCertificateService", { address: `${host.includes(":") ? `[${host}]` : host}:${boundPort}`, trustDomain: ca.trustDomain, serverNames: names, metricsPort: metrics?.port, maxLifetimeSeconds: signer.maxLifetimeSeconds });

  return {
    port: boundPort,
    metricsPort: metrics?.port,
    trustDomain: ca.trustDomain,
    registry,
    close: async () => {
      closing = true;
      await metrics?.stop(true);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close(); // GOAWAY: calls in flight get a second to finish
      await Promise.race([closed, Bun.sleep(1000)]);
      for (const s of sessions) s.destroy(); // idle sessions a client keeps open
      await Promise.race([closed, Bun.sleep(1000)]);
    },
  };
}

/** The serving certificate: signed by the CA's signing certificate, valid one year, key in memory only. */
async function servingCertificate(ca: Awaited<ReturnType<typeof loadCaDir>>, names: string[]): Promise<{ keyPem: string; chainPem: string }> {
  const keys = await generateP256();
  const now = Date.now();
  const issuerFacts = certFacts(ca.issuer.certPem);
  const leaf = await signLeaf({
    issuer: ca.issuer,
    publicKey: keys.publicKey,
    kind: "server",
    subject: `O=${ca.trustDomain}, CN=nshub-ca`,
    dnsNames: names.filter((n) => isIP(n) === 0),
    ips: names.filter((n) => isIP(n) !== 0),
    notBefore: new Date(now - 120_000),
    notAfter: new Date(Math.min(now + 365 * 86400_000, issuerFacts.notAfter.getTime())),
  });
  const chain = [leaf, ...(issuerFacts.selfSigned ? [] : [ca.issuer.certPem]), ...ca.intermediates];
  return { keyPem: await privateKeyPem(keys.privateKey), chainPem: chain.join("") };
}

function defaultServerNames(host: string): string[] {
  const names = new Set(["localhost", hostname(), "127.0.0.1", "::1"]);
  if (isIP(host) !== 0 && host !== "0.0.0.0" && host !== "::") names.add(host);
  return [...names];
}

/** "host:port", "[v6]:port" or ":port" (all addresses). */
export function splitHostPort(addr: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${what}: expected host:port (e.g. 0.0.0.0:15012 or [::]:15012), got ${JSON.stringify(addr)}`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port };
}
