// What `nshub policies` and `nshub policy check` print, as data: shared by the offline CLI
// (src/cli/policy.ts) and the proxy's admin (GET /policies, GET /policy/check), so both show a
// set and a decision the same way.
import type { PolicySet } from "./engine.ts";
import { formatOrigin, type Connection, type Decision, type MtlsDecision } from "./types.ts";

export interface PolicyRow {
  kind: string;
  namespace: string;
  name: string;
  action: string;
  appliesTo: string;
  rules: string;
  status: string;
  origin: string;
  warnings: string[];
}

/** Every AuthorizationPolicy, PeerAuthentication and ignored object of the set, one row each. */
export function describePolicies(set: PolicySet): PolicyRow[] {
  return [
    ...set.policies.map((p) => ({
      ...p.ref,
      action: p.action,
      appliesTo: set.appliesTo(p),
      rules: p.rules.length === p.specRules ? `${p.specRules}` : `${p.rules.length} of ${p.specRules}`,
      status: p.dryRun ? "dry-run" : "enforced",
      origin: formatOrigin(p.origin),
      warnings: [...p.warnings],
    })),
    ...set.peerAuthentications.map((pa) => {
      const ports = [...pa.ports].map(([port, m]) => `${port}:${m}`).join(",");
      const shadow = set.shadowedBy(pa);
      return {
        ...pa.ref,
        action: `mTLS ${pa.mode}${ports ? ` (${ports})` : ""}`,
        appliesTo: set.appliesTo(pa),
        rules: "-",
        status: shadow ? `shadowed by ${shadow.namespace}/${shadow.name} (older)` : "enforced",
        origin: formatOrigin(pa.origin),
        warnings: [...pa.warnings],
      };
    }),
    ...set.ignored.map((x) => ({ ...x.ref, action: "action" in x ? String(x.action) : "-", appliesTo: "-", rules: "-", status: `ignored: ${x.reason}`, origin: formatOrigin(x.origin), warnings: [] as string[] })),
  ];
}

export interface Considered {
  kind: string;
  namespace: string;
  name: string;
  action: string;
  dryRun: boolean;
  matchedRule: number | null;
  origin: string;
  warnings: string[];
}

export interface CheckAnswer {
  decision: Decision;
  connection: Connection;
  mtls: MtlsDecision;
  considered: Considered[];
}

/** One connection decided, with every applicable policy and the rule of it that matched. */
export function checkConnection(set: PolicySet, conn: Connection): CheckAnswer {
  const decision = set.decide(conn);
  const mtls = set.mtls(conn.destination, conn.destinationPort);
  const considered = set.explain(conn).map(({ policy: p, rule }) => ({ ...p.ref, action: p.action, dryRun: p.dryRun, matchedRule: rule >= 0 ? rule : null, origin: formatOrigin(p.origin), warnings: [...p.warnings] }));
  return { decision, connection: conn, mtls, considered };
}
