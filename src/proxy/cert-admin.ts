// What operators see of the workload certificates: `GET /certs` on the proxy admin (a read, so on
// the loopback TCP admin and the admin socket alike; what `nshub certs` prints) and the
// `certificates` section of /config_dump in ztunnel's terms. Both carry public data only —
// certificates, serials, times, pods, errors — never a private key.
import type { Hono } from "hono";
import type { AppExtension } from "../admin/servers.ts";
import type { CertificateView, CertView } from "../admin/views.ts";
import type { CertificateManager, CertsResponse, CertStatus } from "../identity/cert-manager.ts";

export function certsResponse(certs: CertificateManager | undefined, ca: { source: string; trustDomain: string; lifetimeSeconds: number }): CertsResponse {
  if (!certs) return { source: "none", trustDomain: ca.trustDomain, lifetimeSeconds: ca.lifetimeSeconds, certificates: [] };
  return {
    source: certs.source.description,
    trustDomain: ca.trustDomain,
    lifetimeSeconds: certs.lifetimeSeconds,
    certificates: certs.status().map((s) => ({ ...s, chain: s.chain.map(({ pem: _pem, ...rest }) => rest) })),
  };
}

export function certAdminRoutes(certs: CertificateManager | undefined, ca: { source: string; trustDomain: string; lifetimeSeconds: number }): AppExtension {
  return {
    endpoints: [{ method: "GET", path: "/certs", description: "workload certificates by identity: pods, serial, validity, renewal, issuer chain, state (no private keys)" }],
    routes(app: Hono) {
      app.get("/certs", (c) => c.json(certsResponse(certs, ca)));
    },
  };
}

/** config_dump's certificates: ztunnel's states (Available while a valid certificate is held). */
export function certificateViews(certs: CertificateManager): CertificateView[] {
  return certs.status().map((s) => {
    const available = s.state === "valid" || s.state === "renewing";
    const why = s.state === "expired" ? `the certificate expired${s.lastError ? ` (last error: ${s.lastError})` : ""}` : (s.lastError ?? "");
    const view = (e: CertStatus["chain"][number]): CertView => ({ pem: e.pem, serial: e.serial, notBefore: e.notBefore, notAfter: e.notAfter });
    return {
      identity: s.identity,
      state: available ? "Available" : s.state === "initializing" ? "Initializing" : `Unavailable: ${why}`,
      certChain: available ? s.chain.filter((e) => !e.root).map(view) : [],
      rootCerts: available ? s.chain.filter((e) => e.root).map(view) : [],
    };
  });
}
