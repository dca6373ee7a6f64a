// `nshub policy check` and `nshub policies`: the L4 authorization engine offline, on a policy
// file or folder. The command lines only; the semantics live in src/policy.
import { parseArgs } from "node:util";
import { parseSpiffeId } from "../identity/spiffe.ts";
import { parseIpText } from "../policy/cidr.ts";
import { DEFAULT_ROOT_NAMESPACE, PolicySet } from "../policy/engine.ts";
import { formatLoadError, loadPolicyPath } from "../policy/load.ts";
import { checkConnection, describePolicies, type CheckAnswer, type PolicyRow } from "../policy/describe.ts";
import { refKey, type Connection, type PolicyRef } from "../policy/types.ts";
import { parseDaemonUrl, requestJson, runCommand, stdio, type Daemon } from "./admin-client.ts";

const proxyAt = (url: string, flag = "--admin"): Daemon => ({ kind: "proxy", url: parseDaemonUrl(url, flag) });

const ADMIN_NOTE = `With --admin <url> (the proxy's read-only admin, e.g. 127.0.0.1:15000) instead of --policies,
the running proxy answers with the set it enforces (GET /policy/check, GET /policies); a
destination it knows (its registry) gets its labels and IP from there.`;

const HELP = `usage: nshub policy check (--policies <file|dir> | --admin <url>) --to <namespace>/<name> --port <n> [--from <identity|ip>]... [options]

Decides one connection as the proxy's inbound path will: Istio's AuthorizationPolicy and
PeerAuthentication (security.istio.io/v1, v1beta1) at L4, with ztunnel's semantics. Prints the
decision and the policy and rule that made it; sends no traffic.

  --policies <file|dir>    policy YAML (required): a file, or every *.yaml/*.yml/*.json in a folder
  --from <identity|ip>     the client: its SPIFFE identity (spiffe://<td>/ns/<ns>/sa/<sa>: the
                           connection is then mTLS) and/or its IP address; repeat to give both
  --plaintext              the connection is plaintext, without identity (the default without one)
  --to <namespace>/<name>  the destination workload (required)
  --labels k=v,...         the destination's labels (selector policies match them)
  --to-ip <ip>             the destination address (for destination.ip conditions)
  --port <n>               the destination's (workload) port (required)
  --root-namespace <ns>    Istio's root namespace, whose policies are mesh-wide (default ${DEFAULT_ROOT_NAMESPACE})
  --json                   the decision as JSON
  -h, --help               this text

Exit status: 0 allowed, 1 denied, 2 usage error, 3 the policies could not be loaded.

${ADMIN_NOTE}`;

const TOP_HELP = `usage: nshub policy <command> [options]

commands:
  check    decide one connection offline and say which policy and rule decided it

See also: nshub policies (what is in force and where it applies).

  nshub policy <command> --help   that command's options`;

const LIST_HELP = `usage: nshub policies (--policies <file|dir> | --admin <url>) [--root-namespace <ns>] [--json]

Lists the AuthorizationPolicies and PeerAuthentications in a policy file or folder: action or
mTLS mode, where each applies, how many rules are enforced at L4, whether it is enforced,
dry-run or ignored (AUDIT, CUSTOM, targetRef), and the warnings istiod would give for it.

  --policies <file|dir>    policy YAML (required)
  --root-namespace <ns>    Istio's root namespace (default ${DEFAULT_ROOT_NAMESPACE})
  --json                   JSON instead of a table
  -h, --help               this text

Exit status: 0, 2 usage error, 3 the policies could not be loaded.

${ADMIN_NOTE}`;

function usageError(message: string): Error {
  return Object.assign(new TypeError(message), { code: "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" });
}

/** Loads or prints why not (exit 3). */
function load(path: string | undefined, rootNamespace: string | undefined, cmd: string): PolicySet | number {
  if (!path) throw usageError("--policies <file|dir> is required");
  const r = loadPolicyPath(path);
  if (r.errors.length > 0) {
    for (const e of r.errors) console.error(`${cmd}: ${formatLoadError(e)}`);
    console.error(`${cmd}: ${r.errors.length} error(s): no policies loaded`);
    return 3;
  }
  return new PolicySet(r, { rootNamespace });
}

/** `nshub policy <command>` */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(TOP_HELP);
    return name === undefined ? 2 : 0;
  }
  if (name !== "check") {
    console.error(`nshub policy: unknown command "${name}"\n\n${TOP_HELP}`);
    return 2;
  }
  return check(rest);
}

function parseLabels(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of (text ?? "").split(",").filter((s) => s.trim() !== "")) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw usageError(`--labels: ${JSON.stringify(item)} is not key=value`);
    out[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return out;
}

async function check(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      policies: { type: "string" },
      admin: { type: "string" },
      from: { type: "string", multiple: true },
      plaintext: { type: "boolean" },
      to: { type: "string" },
      labels: { type: "string" },
      "to-ip": { type: "string" },
      port: { type: "string" },
      "root-namespace": { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return (console.log(HELP), 0);
  let principal: string | undefined;
  let sourceIp: string | undefined;
  for (const f of values.from ?? []) {
    if (f.startsWith("spiffe://")) {
      if (principal !== undefined) throw usageError("--from: one identity only");
      try {
        parseSpiffeId(f);
      } catch (e) {
        throw usageError(`--from: ${(e as Error).message}`);
      }
      principal = f;
    } else {
      if (sourceIp !== undefined) throw usageError("--from: one IP address only");
      const ip = parseIpText(f);
      if (typeof ip === "string") throw usageError(`--from: ${JSON.stringify(f)} is neither a SPIFFE identity (spiffe://…) nor an IP address`);
      sourceIp = f;
    }
  }
  if (values.plaintext && principal !== undefined) throw usageError("--plaintext: a plaintext connection has no identity; drop the spiffe:// --from");
  const to = /^([a-z0-9-]+)\/([^/]+)$/.exec(values.to ?? "");
  if (!to) throw usageError("--to <namespace>/<name> is required");
  if (!values.port || !/^\d+$/.test(values.port) || Number(values.port) > 65535) throw usageError("--port <n> (0-65535) is required");
  if (values["to-ip"] !== undefined && typeof parseIpText(values["to-ip"]) === "string") throw usageError(`--to-ip: ${JSON.stringify(values["to-ip"])} is not an IP address`);
  if (values.admin !== undefined) {
    if (values.policies !== undefined) throw usageError("--admin and --policies: give one of them");
    const q = new URLSearchParams();
    for (const f of values.from ?? []) q.append("from", f);
    q.set("to", values.to!);
    q.set("port", values.port);
    if (values.plaintext) q.set("plaintext", "");
    if (values.labels !== undefined) q.set("labels", values.labels);
    if (values["to-ip"] !== undefined) q.set("toIp", values["to-ip"]);
    let code = 0;
    const rc = await runCommand(stdio, "policy check", async () => {
      const ans = await requestJson<CheckAnswer>(proxyAt(values.admin!), `/policy/check?${q}`);
      code = printCheck(ans, values.json ?? false);
      return 0;
    });
    return rc !== 0 ? rc : code;
  }
  const set = load(values.policies, values["root-namespace"], "nshub policy check");
  if (typeof set === "number") return set;
  const conn: Connection = {
    sourcePrincipal: principal,
    sourceIp,
    destination: { namespace: to[1]!, name: to[2]!, labels: parseLabels(values.labels) },
    destinationIp: values["to-ip"],
    destinationPort: Number(values.port),
    mtls: principal !== undefined,
  };
  return printCheck(checkConnection(set, conn), values.json ?? false);
}

/** Prints a decision (offline or the proxy's); the exit status: 0 allowed, 1 denied. */
function printCheck(ans: CheckAnswer, json: boolean): number {
  const { decision, connection: conn, mtls, considered } = ans;
  if (json) {
    console.log(JSON.stringify(ans, null, 2));
    return decision.allowed ? 0 : 1;
  }
  const from = [conn.sourcePrincipal, conn.sourceIp].filter(Boolean).join(" from ") || "an unknown plaintext client";
  console.log(`${decision.allowed ? "ALLOW" : "DENY"}  ${from} → ${refKey(conn.destination)}:${conn.destinationPort} (${conn.mtls ? "mTLS" : "plaintext"})`);
  const by = (r: PolicyRef | undefined) => (r ? `${r.kind} ${refKey(r)}` : "the default");
  console.log(`  decided by  ${by(decision.policy)}${decision.rule !== undefined ? ` rules[${decision.rule}]` : ""}`);
  console.log(`  reason      ${decision.reason}`);
  console.log(`  mTLS mode   ${mtls.mode}${mtls.policy ? ` (${mtls.level} level, PeerAuthentication ${refKey(mtls.policy)})` : " (no PeerAuthentication applies)"}`);
  if (considered.length === 0) console.log("  policies    none apply to this workload");
  considered.forEach((c, i) => {
    const what = c.matchedRule === null ? "no rule matches" : `rules[${c.matchedRule}] matches`;
    console.log(`  ${i === 0 ? "policies   " : "           "} ${c.action.padEnd(5)} ${`${c.namespace}/${c.name}`.padEnd(32)} ${what}${c.dryRun ? " (dry-run: not enforced)" : ""}  ${c.origin}`);
  });
  for (const d of decision.dryRun ?? []) console.log(`  dry-run     ${d.action} ${refKey(d.policy)} rules[${d.rule}] would match`);
  for (const c of considered) for (const w of c.warnings) console.log(`  warning     ${c.namespace}/${c.name}: ${w}`);
  return decision.allowed ? 0 : 1;
}

/** `nshub policies` */
export async function policiesMain(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { policies: { type: "string" }, admin: { type: "string" }, "root-namespace": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } } });
  if (values.help) return (console.log(LIST_HELP), 0);
  if (values.admin !== undefined) {
    if (values.policies !== undefined) throw usageError("--admin and --policies: give one of them");
    return runCommand(stdio, "policies", async () => {
      const r = await requestJson<{ rootNamespace: string; path: string; policies: PolicyRow[]; lastError?: string[] }>(proxyAt(values.admin!), "/policies");
      if (values.json) console.log(JSON.stringify(r, null, 2));
      else {
        printRows(r.policies, r.path ? `the proxy's ${r.path}` : "the proxy (proxy.policies is not set)");
        for (const e of r.lastError ?? []) console.log(`last reload refused (the set above stays in force): ${e}`);
      }
      return 0;
    });
  }
  const set = load(values.policies, values["root-namespace"], "nshub policies");
  if (typeof set === "number") return set;
  const rows = describePolicies(set);
  if (values.json) {
    console.log(JSON.stringify({ rootNamespace: set.rootNamespace, policies: rows }, null, 2));
    return 0;
  }
  printRows(rows, values.policies!);
  return 0;
}

function printRows(rows: PolicyRow[], where: string): void {
  if (rows.length === 0) {
    console.log(`no AuthorizationPolicy or PeerAuthentication in ${where}: every connection is allowed`);
    return;
  }
  const table = [["KIND", "NAMESPACE/NAME", "ACTION", "APPLIES TO", "RULES", "STATUS", "FILE"], ...rows.map((r) => [r.kind, `${r.namespace}/${r.name}`, r.action, r.appliesTo, r.rules, r.status, r.origin])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) console.log(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  "));
  for (const r of rows) for (const w of r.warnings) console.log(`warning: ${r.kind} ${r.namespace}/${r.name}: ${w}`);
}

