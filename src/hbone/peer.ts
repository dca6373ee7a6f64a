// Who is at the other end of an HBONE connection: the SPIFFE URI SAN of the peer's leaf, checked
// as ztunnel checks it (https://github.com/istio/ztunnel/blob/master/src/tls/workload.rs):
// the server accepts any identity of its trust domain (TrustDomainVerifier), the client accepts
// only the identities the destination is known to have (IdentityVerifier). The chain itself is
// verified by the TLS stack against the roots; Node's hostname check does not apply to URI SANs,
// so both sides replace it with these.
import type { PeerCertificate } from "node:tls";
import { parseSpiffeUri } from "../identity/spiffe.ts";

/** Why a peer certificate was refused; `reason` is stable for metrics and logs. */
export class PeerIdentityError extends Error {
  constructor(
    readonly reason: "no_certificate" | "no_spiffe_san" | "several_sans" | "wrong_trust_domain" | "unexpected_identity",
    message: string,
  ) {
    super(message);
    this.name = "PeerIdentityError";
  }
}

/** The URI SANs of a certificate as node:tls reports them (`subjectaltname`). */
export function uriSans(cert: Pick<PeerCertificate, "subjectaltname"> | undefined): string[] {
  const san = cert?.subjectaltname;
  if (!san) return [];
  // "URI:spiffe://…, DNS:…"; a comma cannot appear inside a SPIFFE ID.
  return san
    .split(", ")
    .filter((e) => e.startsWith("URI:"))
    .map((e) => e.slice(4));
}

/** The peer's single SPIFFE identity; throws PeerIdentityError otherwise. */
export function peerSpiffeId(cert: Pick<PeerCertificate, "subjectaltname"> | undefined): string {
  if (!cert || !cert.subjectaltname) throw new PeerIdentityError("no_certificate", "the peer presented no certificate with a subjectAltName");
  const uris = uriSans(cert);
  if (uris.length === 0) throw new PeerIdentityError("no_spiffe_san", "the peer certificate has no URI SAN");
  if (uris.length > 1) throw new PeerIdentityError("several_sans", `the peer certificate has ${uris.length} URI SANs (${uris.join(", ")}); exactly one is required`);
  try {
    parseSpiffeUri(uris[0]!);
  } catch (e) {
    throw new PeerIdentityError("no_spiffe_san", `the peer's URI SAN is not a SPIFFE ID: ${(e as Error).message}`);
  }
  return uris[0]!;
}

/** Server side: a client identity of `trustDomain`. Returns the identity. */
export function checkClientIdentity(cert: Pick<PeerCertificate, "subjectaltname"> | undefined, trustDomain: string): string {
  const id = peerSpiffeId(cert);
  const td = parseSpiffeUri(id).trustDomain;
  if (td !== trustDomain) throw new PeerIdentityError("wrong_trust_domain", `client identity ${id} is in trust domain ${td}, not ${trustDomain}`);
  return id;
}

/** Client side: the server must be one of `expected`. Returns the identity. */
export function checkServerIdentity(cert: Pick<PeerCertificate, "subjectaltname"> | undefined, expected: readonly string[]): string {
  const id = peerSpiffeId(cert);
  if (!expected.includes(id)) throw new PeerIdentityError("unexpected_identity", `server identity ${id} is not the expected ${expected.join(" or ")}`);
  return id;
}
