// The HBONE client: one mutual-TLS HTTP/2 connection to `<pod IP>:15008` as the source pod,
// and CONNECT streams over it. The server must present one of the identities the caller expects
// (https://github.com/istio/ztunnel/blob/master/src/tls/workload.rs IdentityVerifier); SNI is
// not sent (ztunnel disables it). A non-200 answer is an HboneError the caller turns into a
// reset of the captured connection; nothing ever falls back to plaintext.
import http2 from "node:http2";
import tls from "node:tls";
import type { Duplex } from "node:stream";
import { checkServerIdentity, PeerIdentityError } from "./peer.ts";
import { fdStream } from "./fd-stream.ts";
import { CONNECTION_WINDOW, formatAuthority, h2Settings, HBONE_PORT, HEADER_BAGGAGE, HEADER_FORWARDED, HEADER_TRACEPARENT, TLS13_CIPHERS, type HboneHeaders, type Target } from "./wire.ts";

/** The source workload's certificate. */
export interface ClientCertificate {
  keyPem: string;
  presented: string;
  roots: string;
}

export interface DialOptions {
  /** The destination pod's IP (HBONE goes to its port 15008). */
  address: string;
  port?: number;
  certificate: ClientCertificate;
  /** SPIFFE IDs the server may present (the registry's identities of the destination). */
  expectedIdentities: readonly string[];
  /**
   * A connected TCP socket the caller made (libnshub: in the source pod's netns, SO_MARK set
   * before connect): an fd, or a Duplex. Absent: connect from this thread's netns.
   */
  socket?: number | Duplex;
  /** Handshake deadline (default 10 s). */
  timeoutMs?: number;
}

/** Why a dial or a CONNECT failed; `kind` is stable for metrics and logs. */
export class HboneError extends Error {
  constructor(
    readonly kind: "connect" | "tls" | "identity" | "status" | "stream" | "timeout",
    message: string,
    /** The HTTP status the server answered, for kind "status". */
    readonly status?: number,
  ) {
    super(message);
    this.name = "HboneError";
  }
}

export interface HboneConnection {
  readonly session: http2.ClientHttp2Session;
  /** The identity the server presented (one of the expected ones). */
  readonly peerIdentity: string;
  /** The server's stream limit (its SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly remoteMaxStreams: number;
}

const tlsOptions = (o: DialOptions) => ({
  key: o.certificate.keyPem,
  cert: o.certificate.presented,
  ca: o.certificate.roots,
  minVersion: "TLSv1.3" as const,
  maxVersion: "TLSv1.3" as const,
  ciphersuites: TLS13_CIPHERS,
  ALPNProtocols: ["h2"],
  rejectUnauthorized: true,
  // Replaces the DNS/IP name check, which cannot match a URI SAN.
  checkServerIdentity: (_host: string, cert: tls.PeerCertificate) => {
    try {
      checkServerIdentity(cert, o.expectedIdentities);
      return undefined;
    } catch (e) {
      return e as Error;
    }
  },
});

/** Dials and completes TLS + the HTTP/2 preface; rejects with HboneError. */
export function dialHbone(o: DialOptions): Promise<HboneConnection> {
  const port = o.port ?? HBONE_PORT;
  const authority = formatAuthority({ ip: o.address, port });
  const opts = tlsOptions(o);
  let identityError: Error | undefined;
  const checkId = opts.checkServerIdentity;
  opts.checkServerIdentity = (h, c) => (identityError = checkId(h, c));
  let secured = false;
  const createConnection = () => {
    const t =
      o.socket === undefined
        ? tls.connect({ ...opts, host: o.address, port, servername: "" } as tls.ConnectionOptions)
        : tls.connect({ ...opts, socket: typeof o.socket === "number" ? fdStream(o.socket) : o.socket, servername: "" } as tls.ConnectionOptions);
    t.once("secureConnect", () => (secured = true));
    return t;
  };
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://${authority}`, { settings: h2Settings(), createConnection } as http2.SecureClientSessionOptions);
    const timer = setTimeout(() => fail(new HboneError("timeout", `HBONE handshake with ${authority} took longer than ${o.timeoutMs ?? 10_000} ms`)), o.timeoutMs ?? 10_000);
    const fail = (e: Error) => {
      clearTimeout(timer);
      session.destroy();
      reject(e instanceof HboneError ? e : classify(e, identityError, authority));
    };
    session.once("error", fail);
    session.once("close", () =>
      fail(
        secured
          ? // Bun does not surface the alert the server sent; this is the only place it can come from.
            new HboneError("tls", `HBONE to ${authority}: the server closed the connection after the TLS handshake without HTTP/2 SETTINGS: it refused our client certificate (untrusted, expired or not a SPIFFE identity of its trust domain)`)
          : new HboneError("connect", `HBONE connection to ${authority} closed during the TLS handshake`),
      ),
    );
    // Resolve on the server's SETTINGS, not on "connect": in TLS 1.3 the client finishes its
    // handshake before the server has checked the client certificate, so a refusal (an alert)
    // only arrives after; the SETTINGS frame proves the server accepted us.
    session.once("remoteSettings", () => {
      session.setLocalWindowSize(CONNECTION_WINDOW);
      clearTimeout(timer);
      session.off("error", fail);
      session.removeAllListeners("close");
      session.on("error", () => {});
      const sock = session.socket as tls.TLSSocket;
      if (sock.alpnProtocol !== "h2") return fail(new HboneError("tls", `${authority} did not negotiate ALPN h2`));
      let peerIdentity: string;
      try {
        peerIdentity = checkServerIdentity(sock.getPeerCertificate(), o.expectedIdentities);
      } catch (e) {
        return fail(new HboneError("identity", (e as Error).message));
      }
      const remoteMaxStreams = session.remoteSettings.maxConcurrentStreams ?? Infinity;
      resolve({ session, peerIdentity, remoteMaxStreams });
    });
  });
}

function classify(e: Error, identityError: Error | undefined, authority: string): HboneError {
  if (identityError instanceof PeerIdentityError) return new HboneError("identity", `HBONE to ${authority}: ${identityError.message}`);
  const code = (e as NodeJS.ErrnoException).code ?? "";
  if (/^E(CONNREFUSED|HOSTUNREACH|NETUNREACH|TIMEDOUT|CONNRESET|PIPE)$/.test(code)) return new HboneError("connect", `HBONE to ${authority}: ${code}: ${e.message}`);
  return new HboneError("tls", `HBONE to ${authority}: TLS: ${code ? `${code}: ` : ""}${e.message}`);
}

/**
 * Opens one CONNECT stream to `target` with the headers; resolves with the stream once the
 * server answered 200, rejects with HboneError(kind "status", status) otherwise.
 */
export function openStream(conn: HboneConnection, target: Target, headers: HboneHeaders = {}, timeoutMs = 15_000): Promise<http2.ClientHttp2Stream> {
  const authority = formatAuthority(target);
  const h: http2.OutgoingHttpHeaders = { ":method": "CONNECT", ":authority": authority };
  if (headers.baggage !== undefined) h[HEADER_BAGGAGE] = headers.baggage;
  if (headers.forwarded !== undefined) h[HEADER_FORWARDED] = headers.forwarded;
  if (headers.traceparent !== undefined) h[HEADER_TRACEPARENT] = headers.traceparent;
  return new Promise((resolve, reject) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = conn.session.request(h, { endStream: false });
    } catch (e) {
      return reject(new HboneError("stream", `CONNECT ${authority}: ${(e as Error).message}`));
    }
    // The server answers only once its upstream connect finished (ztunnel: up to its connect
    // timeout); a server that never answers must not hold the captured connection forever.
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new HboneError("timeout", `CONNECT ${authority}: no response within ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (e: Error) => (clearTimeout(timer), reject(new HboneError("stream", `CONNECT ${authority}: ${e.message}`)));
    const onClose = () => (clearTimeout(timer), reject(new HboneError("stream", `CONNECT ${authority}: stream closed before a response (RST_STREAM ${stream.rstCode})`)));
    stream.once("error", onError);
    stream.once("close", onClose);
    stream.once("response", (rh) => {
      clearTimeout(timer);
      stream.off("error", onError);
      stream.off("close", onClose);
      stream.on("error", () => {});
      const status = Number(rh[":status"]);
      if (status === 200) return resolve(stream);
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new HboneError("status", `CONNECT ${authority} answered ${status}`, status));
    });
  });
}
