// `nshub ca serve`: Istio's certificate API (istio.v1.auth.IstioCertificateService, the one
// istiod serves on :15012) over gRPC + TLS, so an nshub proxy or a real ztunnel can take its
// workload certificates from it. Served with @connectrpc/connect-node on node:http2 (Bun.serve
// sends no HTTP/2 trailers, which gRPC needs), gRPC protocol only.
//
// Per call: authenticate the caller, take the identity from the request metadata
// `ImpersonatedIdentity` (what ztunnel sends in shared mode: https://github.com/istio/ztunnel/
// blob/master/src/identity/caclient.rs), check the caller may have it, sign through
// ./ca-signer.ts, log the issuance, count it. Callers, in this order: a node client certificate
// (./node-credentials.ts); a bearer token `nshub-ca.…` (a node token, never sent to the API
// server); with --kubernetes, any other bearer token is a service-account token reviewed by the
// API server (./ca-kube.ts). Without Kubernetes any node may ask for any identity of the trust
// domain; with it every caller, node credentials included, only for pods on its node.
// Refusals answer with istiod's codes where istiod has one (./ca-signer.ts REFUSAL_CODE).
import { Code, ConnectError, createContextKey, createContextValues, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http2 from "node:http2";
import { hostname } from "node:os";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { IstioCertificateService, type IstioCertificateRequest } from "../gen/istio/v1/auth/ca_pb.ts";
import { KubeClient, type ClusterConfig } from "../k8s/index.ts";
import type { Logger } from "../log/logger.ts";
import { loadCaDir } from "./ca-dir.ts";
import { KubeNodeAuthority, type KubeAuthorityOptions } from "./ca-kube.ts";
import { CaRefusal, CaSigner, type RefusalReason, REFUSAL_CODE } from "./ca-signer.ts";
import { NodeAuthenticator, TOKEN_PREFIX } from "./node-credentials.ts";
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
  /** Authenticate service-account tokens and bind identities to nodes through this API server. */
  kubernetes?: { cluster: ClusterConfig } & Omit<KubeAuthorityOptions, "client" | "log">;
  log: Logger;
}

export interface CaServer {
  port: number;
  metricsPort?: number;
  trustDomain: string;
  registry: Registry;
  /** With `kubernetes`: the pods watch and the TokenReview check. */
  kube?: KubeNodeAuthority;
  close(): Promise<void>;
}

/** Who called, once authenticated. */
interface Caller {
  node: string;
  via: "token" | "cert" | "kubernetes";
  serviceAccount?: string;
  pod?: string;
  nodeFrom?: "token" | "pod";
}

const CODES: Record<string, Code> = { unauthenticated: Code.Unauthenticated, invalid_argument: Code.InvalidArgument, permission_denied: Code.PermissionDenied, unavailable: Code.Unavailable };
const NODE_CHECK = new Set<RefusalReason>(["not_node_agent", "node_unknown", "not_on_node"]);
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

  const kube = o.kubernetes
    ? new KubeNodeAuthority({ ...o.kubernetes, client: new KubeClient(o.kubernetes.cluster), log: o.log.child({ component: "kubernetes" }) }).start()
    : undefined;
  if (kube) {
    new Gauge({ name: "nshub_ca_kubernetes_pods_synced", help: "1 once the CA has listed the pods (nothing is signed before)", registers: [registry], collect() { this.set(kube.synced ? 1 : 0); } });
    new Gauge({ name: "nshub_ca_kubernetes_pods", help: "Running pods in the CA's watch", registers: [registry], collect() { this.set(kube.pods.size); } });
  }

  /** The caller, or a CaRefusal saying why not. */
  const authenticate = async (ctx: HandlerContext): Promise<Caller> => {
    const peer = ctx.values.get(peerKey);
    const fromNodes = (r: ReturnType<NodeAuthenticator["token"]>): Caller => {
      if (!r.ok) throw new CaRefusal("unauthenticated", r.why);
      return { node: r.node, via: r.via };
    };
    if (peer.authorized && peer.serial && peer.cn) return fromNodes(nodes.cert(peer.serial, peer.cn));
    const auth = ctx.requestHeader.get("authorization");
    if (auth) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
      if (!m) throw new CaRefusal("unauthenticated", "the authorization header is not \"Bearer <token>\"");
      const token = m[1]!;
      if (!kube || token.startsWith(TOKEN_PREFIX)) return fromNodes(nodes.token(token));
      return { ...(await kube.authenticate(token)), via: "kubernetes" };
    }
    if (peer.error) throw new CaRefusal("unauthenticated", `the client certificate was not issued by this CA's node CA (${peer.error})`);
    const what = kube ? "a service-account token (audience " + kube.audiences.join(", ") + ")" : "a node token";
    throw new CaRefusal("unauthenticated", `no credentials: send "authorization: Bearer <token>" with ${what}, or a node client certificate (nshub ca issue-node)`);
  };

  const createCertificate = async (req: IstioCertificateRequest, ctx: HandlerContext) => {
    const address = ctx.values.get(peerKey).address;
    const requested = req.metadata?.[IMPERSONATED_IDENTITY];
    const identity = typeof requested === "string" ? requested : "";
    let who: Caller | undefined;
    try {
      who = await authenticate(ctx);
      const caller = who;
      const started = performance.now();
      // with Kubernetes, every caller (node credentials too) only for pods on its node
      const out = await signer.sign({ csr: req.csr, identity, validitySeconds: Number(req.validityDuration) }, kube && ((id) => kube.authorize(caller.node, id)));
      signSeconds.observe((performance.now() - started) / 1000);
      issued.inc();
      o.log.info("certificate issued", { ...callerFields(who), identity, serial: out.serial, notAfter: out.notAfter.toISOString(), peer: address });
      return { certChain: out.chain };
    } catch (e) {
      if (!(e instanceof CaRefusal)) throw e;
      refused.inc({ reason: e.reason });
      o.log.warn("certificate refused", { ...(who ? callerFields(who) : {}), reason: e.reason, identity, peer: address, error: e.message });
      throw new ConnectError(refusalMessage(e), CODES[e.code] ?? Code.InvalidArgument);
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
      fetch: async (r) => {
        const path = new URL(r.url).pathname;
        if (path === "/metrics") return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } });
        // the Deployment's readiness probe: with Kubernetes, not before the first list of pods
        if (path === "/ready") return !kube || kube.synced ? new Response("ready\n") : new Response("waiting for the first complete list of pods\n", { status: 503 });
        return new Response("not found\n", { status: 404 });
      },
    });
  }
  const kubeFields = kube ? { kubernetes: o.kubernetes!.cluster.server, nodeAgents: [...kube.nodeAgents], tokenAudiences: kube.audiences } : {};
  o.log.info("serving IstioCertificateService", { address: `${host.includes(":") ? `[${host}]` : host}:${boundPort}`, trustDomain: ca.trustDomain, serverNames: names, metricsPort: metrics?.port, maxLifetimeSeconds: signer.maxLifetimeSeconds, ...kubeFields });

  return {
    port: boundPort,
    metricsPort: metrics?.port,
    trustDomain: ca.trustDomain,
    registry,
    kube,
    close: async () => {
      closing = true;
      await kube?.stop();
      await metrics?.stop(true);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close(); // GOAWAY: calls in flight get a second to finish
      await Promise.race([closed, Bun.sleep(1000)]);
      for (const s of sessions) s.destroy(); // idle sessions a client keeps open
      await Promise.race([closed, Bun.sleep(1000)]);
    },
  };
}

function callerFields(c: Caller): Record<string, string> {
  const f: Record<string, string> = { node: c.node, via: c.via };
  if (c.serviceAccount) f.serviceAccount = c.serviceAccount;
  if (c.pod) f.pod = c.pod;
  if (c.nodeFrom) f.nodeFrom = c.nodeFrom;
  return f;
}

/** istiod's wording first, so logs and clients read alike, then nshub's reason. */
function refusalMessage(e: CaRefusal): string {
  if (e.reason === "unauthenticated") return `request authenticate failure: ${e.message}`;
  if (NODE_CHECK.has(e.reason)) return `request impersonation authentication failure: ${e.message}`;
  if (e.reason === "kube_unavailable") return `the CA cannot check this request now: ${e.message}`;
  return `CSR signing error (${e.message})`;
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
