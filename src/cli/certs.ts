// `nshub certs`: the proxy's workload certificates, one row per identity — SPIFFE ID, pods using
// it, state, serial, validity, time to renewal, issuer chain — from the proxy admin's GET /certs
// (public data only: the keys never leave the proxy). Errors of failing identities are listed
// under the table.
import type { CertsEntry, CertsResponse } from "../identity/cert-manager.ts";

export type { CertsEntry, CertsResponse };
import { DEFAULT_PROXY_ADMIN, DaemonUnavailable, type Io, formatAge, hostPortOf, parseDaemonUrl, parseTimeout, renderTable, requestJson, stdio } from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub certs [--json] [--admin <url>] [--timeout <s>]

Lists the node proxy's workload certificates, one per identity
(spiffe://<trust domain>/ns/<namespace>/sa/<service account>): the pods using it, its state
(initializing, valid, renewing, expired, failed — with the last error), serial number,
not-before and not-after, time to the next renewal, and the issuer chain.

  --admin <url>   proxy admin (default ${DEFAULT_PROXY_ADMIN})
  --timeout <s>   per request (default 3)
  --json          machine-readable output (GET /certs as the proxy answers it)`;

/** 2026-12-03T13:50:00Z (seconds, UTC). */
const time = (iso: string | undefined) => (iso ? iso.replace(/\.\d+Z$/, "Z") : "-");

function pods(e: CertsEntry): string {
  return e.pods.map((p) => (p.namespace && p.name ? `${p.namespace}/${p.name}` : p.uid)).join(",") || "-";
}

/** "in 11h59m" until the renewal (or the retry after a failure), "now" when due. */
function renewal(e: CertsEntry, now: number): string {
  if (!e.renewAt) return e.state === "initializing" || e.state === "renewing" ? "in progress" : "-";
  const s = (Date.parse(e.renewAt) - now) / 1000;
  const what = e.lastError ? "retry" : "renew";
  return s <= 0 ? `${what} now` : `${what} in ${formatAge(s)}`;
}

/** The issuers' subjects from the leaf's issuer up to the root: "O=nshub,CN=root". */
function issuers(e: CertsEntry): string {
  return e.chain.slice(1).map((c) => c.subject || "(empty subject)").join(" > ") || "-";
}

export function renderCerts(r: CertsResponse, now = Date.now()): string {
  if (r.source === "none") {
    return "no workload certificates: the proxy has no certificate source (proxy.ca.source is none); set proxy.ca.source to istio or local (see the README, Workload identity)";
  }
  const head = `source: ${r.source}   trust domain: ${r.trustDomain}   lifetime: ${formatAge(r.lifetimeSeconds)}`;
  if (r.certificates.length === 0) return `${head}\n\nno certificates: no pod with an identity is on this proxy`;
  const table = renderTable(
    [{ header: "SPIFFE ID" }, { header: "PODS" }, { header: "STATE" }, { header: "SERIAL" }, { header: "NOT BEFORE" }, { header: "NOT AFTER" }, { header: "RENEWAL" }, { header: "ISSUERS" }],
    r.certificates.map((e) => [e.identity, pods(e), e.state, e.serial ?? "-", time(e.notBefore), time(e.notAfter), renewal(e, now), issuers(e)]),
  );
  const notes = r.certificates.filter((e) => e.lastError).map((e) => `${e.identity}: ${e.state}: ${e.lastError} (${e.failures} failed request${e.failures === 1 ? "" : "s"})`);
  return [head, "", table, ...(notes.length ? ["", ...notes] : [])].join("\n");
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "certs", help: HELP, options: {} } as const;
  return runOperatorCommand(cmd, args, io, async (values) => {
    const timeoutMs = parseTimeout(values.timeout);
    const proxy = { kind: "proxy" as const, url: parseDaemonUrl(values.admin ?? DEFAULT_PROXY_ADMIN, "--admin") };
    const r = await requestJson<CertsResponse>(proxy, "/certs", { timeoutMs });
    if (!Array.isArray(r?.certificates)) {
      const at = hostPortOf(proxy.url);
      throw new DaemonUnavailable("proxy", at, "bad-answer", `${at} answered /certs without a certificates list; is it an nshub proxy admin address?`);
    }
    io.out(values.json ? JSON.stringify(r, null, 2) : renderCerts(r));
    return 0;
  });
}
