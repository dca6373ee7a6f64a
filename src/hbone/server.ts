// The HBONE server of one pod (its 15008 listener): TLS 1.3, ALPN h2, a client certificate
// required and checked (chain → roots by the TLS stack; a single SPIFFE URI SAN of the trust
// domain here), the pod's own certificate presented, HTTP/2 CONNECT streams only. Statuses and
// their order follow https://github.com/istio/ztunnel/blob/master/src/proxy/inbound.rs
// (serve_connect): bad method/authority/target 400, policy 401, upstream 503, 200 only once the
// upstream is connected.
import http2 from "node:http2";
import net from "node:net";
import type { TLSSocket } from "node:tls";
import { checkClientIdentity, PeerIdentityError } from "./peer.ts";
import { joinTunnel, type TcpSide, type TunnelResult } from "./tunnel.ts";
import {
  CONNECTION_WINDOW,
  h2Settings,
  HEADER_BAGGAGE,
  HEADER_FORWARDED,
  HEADER_TRACEPARENT,
  parseAuthority,
  parseForwardedFor,
  SERVER_MAX_CONCURRENT_STREAMS,
  STATUS,
  TLS13_CIPHERS,
  type Target,
} from "./wire.ts";

/** What the server presents and trusts: one workload certificate. */
export interface ServerCertificate {
  /** PKCS#8 PEM. */
  keyPem: string;
  /** Leaf + intermediates. */
  presented: string;
  /** Trust anchors for client chains. */
  roots: string;
}

/** One CONNECT as the server saw it. */
export interface InboundRequest {
  target: Target;
  /** The client's SPIFFE identity (checked). */
  peerIdentity: string;
  /** TCP peer of the HBONE connection (the source pod's IP, or its node's). */
  peerAddress: { ip: string; port: number };
  /** The client address ztunnel puts in `forwarded: for="ip:port"`, when present. */
  forwardedFor?: { ip: string; port?: number };
  headers: { forwarded?: string; baggage?: string; traceparent?: string };
}

export type Authorization = "allow" | { status: 401 | 403; reason?: string };

export interface HboneServerOptions {
  certificate: ServerCertificate;
  /** The trust domain a client identity must belong to. */
  trustDomain: string;
  /** Whether `target` is this pod (an IP it owns); else 400. */
  isLocalTarget(target: Target, localAddress: string): boolean;
  /** The policy hook; absent = allow. Deny → 401 (ztunnel's) or 403. */
  authorize?(req: InboundRequest): Authorization | Promise<Authorization>;
  /** The connect to the app; a rejection answers 503. Resolve only once connected. */
  connectUpstream(req: InboundRequest): Promise<TcpSide>;
  /** Per tunnel, when it ends (for records/metrics). Not called when `relay` is given. */
  onTunnelEnd?(req: InboundRequest, result: TunnelResult): void;
  /**
   * Takes over an accepted tunnel (200 sent): the caller joins `stream` and `upstream` itself
   * (the proxy's HboneRelay, which keeps the connection's record). Absent: joinTunnel here.
   */
  relay?(req: InboundRequest, stream: http2.ServerHttp2Stream, upstream: TcpSide): void;
  /** The client went away between a successful upstream connect and the 200 (upstream closed). */
  abandoned?(req: InboundRequest): void;
  /** SETTINGS_MAX_CONCURRENT_STREAMS (default 200, ztunnel's). */
  maxConcurrentStreams?: number;
  /** A refused connection or stream, with the status or the TLS/identity reason. */
  onRefused?(what: { status?: number; reason: string; peerIdentity?: string; target?: string }): void;
}

export interface HboneServer {
  /** The node:http2 server (for listen({ fd }) or tests). */
  readonly h2: http2.Http2SecureServer;
  /** Serves a listening socket someone else created (e.g. inside a pod's netns). */
  listenFd(fd: number): Promise<void>;
  /** Listens on host:port in the calling thread's netns; resolves with the bound port. */
  listen(host: string, port: number): Promise<number>;
  /** Serves one accepted connection (a net.Socket from any listener). */
  handleConnection(sock: net.Socket): void;
  /** New connections present this certificate (renewal); open ones keep theirs. */
  setCertificate(c: ServerCertificate): void;
  /**
   * Stops accepting and asks every session to finish (GOAWAY): open streams go on, new ones go
   * elsewhere. The listening socket is closed.
   */
  stopListening(): void;
  /** Live HTTP/2 sessions and streams (pool and leak checks). */
  stats(): { sessions: number; streams: number };
  close(): Promise<void>;
}

function tlsOptions(c: ServerCertificate) {
  return {
    key: c.keyPem,
    cert: c.presented,
    ca: c.roots,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3" as const,
    maxVersion: "TLSv1.3" as const,
    ciphersuites: TLS13_CIPHERS,
    ALPNProtocols: ["h2"],
  };
}

export function createHboneServer(o: HboneServerOptions): HboneServer {
  const h2 = http2.createSecureServer({ ...tlsOptions(o.certificate), allowHTTP1: false, settings: h2Settings(o.maxConcurrentStreams ?? SERVER_MAX_CONCURRENT_STREAMS) } as never);
  const sessions = new Set<http2.ServerHttp2Session>();
  let streams = 0;
  const refused = (what: Parameters<NonNullable<HboneServerOptions["onRefused"]>>[0]) => o.onRefused?.(what);

  // Every TCP connection, so close() can end the ones still in their TLS handshake too.
  const sockets = new Set<net.Socket>();
  h2.on("connection", (sock: net.Socket) => {
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
  });
  h2.on("tlsClientError", (e: Error) => refused({ reason: `tls: ${e.message}` }));
  h2.on("secureConnection", (tls: TLSSocket) => {
    // The chain was verified by the TLS stack; the identity is ours to check (ztunnel fails
    // the handshake; here the connection closes right after it, before any stream is read).
    try {
      if (tls.alpnProtocol !== "h2") throw new Error(`ALPN ${String(tls.alpnProtocol)} is not h2`);
      checkClientIdentity(tls.getPeerCertificate(), o.trustDomain);
    } catch (e) {
      refused({ reason: e instanceof PeerIdentityError ? `identity: ${e.message}` : (e as Error).message });
      tls.destroy();
    }
  });
  // After stopListening, a connection still in its handshake gets a session too: GOAWAY at once.
  let stopping = false;
  h2.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    // Once our SETTINGS (stream window) are in force: the connection window to match (wire.ts).
    s.once("localSettings", () => !s.destroyed && s.setLocalWindowSize(CONNECTION_WINDOW));
    if (stopping) setImmediate(() => !s.destroyed && s.close());
    s.on("close", () => sessions.delete(s));
    s.on("error", () => {});
  });
  h2.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    streams++;
    stream.once("close", () => streams--);
    stream.on("error", () => {});
    void serveStream(stream, headers);
  });

  async function serveStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const tls = stream.session?.socket as TLSSocket | undefined;
    let peerIdentity: string;
    try {
      peerIdentity = checkClientIdentity(tls?.getPeerCertificate(), o.trustDomain);
    } catch (e) {
      return answer(stream, STATUS.badRequest, `identity: ${(e as Error).message}`);
    }
    const authority = headers[":authority"];
    if (headers[":method"] !== "CONNECT") return answer(stream, STATUS.badRequest, `method ${headers[":method"]} is not CONNECT`, peerIdentity, authority);
    let target: Target;
    try {
      target = parseAuthority(authority);
    } catch (e) {
      return answer(stream, STATUS.badRequest, (e as Error).message, peerIdentity, authority);
    }
    const localAddress = normalizeIp(tls?.localAddress ?? "");
    if (!o.isLocalTarget(target, localAddress)) {
      return answer(stream, STATUS.badRequest, `target ${authority} is not this workload (connection reached ${localAddress})`, peerIdentity, authority);
    }
    const one = (v: string | string[] | undefined) => (Array.isArray(v) ? v.join(",") : v);
    const forwarded = one(headers[HEADER_FORWARDED]);
    const req: InboundRequest = {
      target,
      peerIdentity,
      peerAddress: { ip: normalizeIp(tls?.remoteAddress ?? ""), port: tls?.remotePort ?? 0 },
      forwardedFor: parseForwardedFor(forwarded),
      headers: { forwarded, baggage: one(headers[HEADER_BAGGAGE]), traceparent: one(headers[HEADER_TRACEPARENT]) },
    };
    const verdict = o.authorize ? await o.authorize(req) : "allow";
    if (verdict !== "allow") return answer(stream, verdict.status, `denied: ${verdict.reason ?? "policy"}`, peerIdentity, authority);
    let upstream: TcpSide;
    try {
      upstream = await o.connectUpstream(req);
    } catch (e) {
      return answer(stream, STATUS.serviceUnavailable, `upstream ${authority}: ${(e as Error).message}`, peerIdentity, authority);
    }
    if (stream.destroyed || stream.closed) {
      upstream.destroy();
      o.abandoned?.(req);
      return;
    }
    stream.respond({ ":status": STATUS.ok });
    if (o.relay) return o.relay(req, stream, upstream);
    const result = await joinTunnel(stream, upstream);
    o.onTunnelEnd?.(req, result);
  }

  function answer(stream: http2.ServerHttp2Stream, status: number, reason: string, peerIdentity?: string, target?: string): void {
    refused({ status, reason, peerIdentity, target });
    if (stream.destroyed || stream.closed) return;
    stream.respond({ ":status": status }, { endStream: true });
  }

  return {
    h2,
    listenFd(fd) {
      return new Promise((resolve, reject) => {
        h2.once("error", reject);
        h2.listen({ fd }, () => {
          h2.off("error", reject);
          resolve();
        });
      });
    },
    listen(host, port) {
      return new Promise((resolve, reject) => {
        h2.once("error", reject);
        h2.listen(port, host, () => {
          h2.off("error", reject);
          resolve((h2.address() as net.AddressInfo).port);
        });
      });
    },
    handleConnection(sock) {
      h2.emit("connection", sock);
    },
    setCertificate(c) {
      h2.setSecureContext(tlsOptions(c));
    },
    stopListening() {
      h2.close();
      for (const s of sessions) if (!s.closed && !s.destroyed) s.close();
      stopping = true;
    },
    stats: () => ({ sessions: sessions.size, streams }),
    close() {
      for (const s of sessions) s.destroy();
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => h2.close(() => resolve()));
    },
  };
}

/** IPv4-mapped IPv6 (a dual-stack listener) → IPv4, so targets compare with the pod's IPs. */
export function normalizeIp(ip: string): string {
  return ip.startsWith("::ffff:") && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}
