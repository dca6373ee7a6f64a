// Workload-certificate metrics, registered only when the proxy has a certificate source
// (proxy.ca.source is not none: the output is then unchanged from a proxy without them).
// ztunnel has no such metrics; the names follow nshub_ca_root_expiry_timestamp_seconds (the CA's).
//
//   nshub_workload_certificate_expiry_timestamp_seconds {identity}  notAfter of the held certificate
//   nshub_workload_certificate_renewals_total           {identity}  certificates that replaced an earlier one
//   nshub_workload_certificate_failures_total           {identity}  requests that failed (each retry counts)
//   nshub_workload_certificates                         {state}     identities by state
//
// The identity is a label: one series per service account with pods on this node, as ztunnel
// keeps one certificate per identity. A dropped identity's gauge series goes with it.
import { Counter, Gauge, type Registry } from "prom-client";
import type { CertificateManager, CertState } from "../identity/cert-manager.ts";

const STATES: readonly CertState[] = ["initializing", "valid", "renewing", "expired", "failed"];

export function createCertMetrics(registry: Registry, certs: CertificateManager): void {
  const registers = [registry];
  new Gauge({
    name: "nshub_workload_certificate_expiry_timestamp_seconds",
    help: "When the workload certificate held for an identity expires (notAfter), seconds since the epoch",
    labelNames: ["identity"],
    registers,
    collect() {
      this.reset();
      for (const s of certs.status()) if (s.notAfter) this.set({ identity: s.identity }, Math.floor(Date.parse(s.notAfter) / 1000));
    },
  });
  const renewals = new Counter({ name: "nshub_workload_certificate_renewals_total", help: "Workload certificates obtained that replaced an earlier one, per identity", labelNames: ["identity"], registers });
  const failures = new Counter({ name: "nshub_workload_certificate_failures_total", help: "Workload certificate requests that failed, per identity (each retry counts)", labelNames: ["identity"], registers });
  new Gauge({
    name: "nshub_workload_certificates",
    help: "Workload identities on this node by the state of their certificate",
    labelNames: ["state"],
    registers,
    collect() {
      const n = new Map<string, number>(STATES.map((s) => [s, 0]));
      for (const s of certs.status()) n.set(s.state, (n.get(s.state) ?? 0) + 1);
      for (const [state, v] of n) this.set({ state }, v);
    },
  });
  certs.onEvent((e) => {
    if (e.type !== "issued" && e.type !== "failed") return;
    // Both series appear (at 0) with the identity's first event, so rates work from the start.
    renewals.inc({ identity: e.identity }, e.type === "issued" && e.renewal ? 1 : 0);
    failures.inc({ identity: e.identity }, e.type === "failed" ? 1 : 0);
  });
}
