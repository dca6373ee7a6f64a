// `nshub workloads`: the workload model — who is in the mesh, at which IPs, with which
// identity — read offline from a file in ztunnel's local-config format, or the running proxy's
// registry (`--admin`: the pods it serves merged with its proxy.workloadsFile, GET /workloads).
import { DEFAULT_TRUST_DOMAIN, trustDomainProblem } from "../identity/spiffe.ts";
import { LocalConfigError, readLocalConfig } from "../registry/local-config.ts";
import { WorkloadRegistry, type IpConflict } from "../registry/registry.ts";
import { PRECEDENCE } from "../registry/source.ts";
import type { Workload } from "../registry/workload.ts";
import { type Io, parseDaemonUrl, renderTable, requestJson, stdio, UsageError } from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub workloads (--file <local-config.yaml> | --admin <url>) [-n <namespace>] [--trust-domain <td>] [--json]

Lists the workload model: namespace/name, uid, IPs, node, protocol (HBONE = in the mesh) and
the SPIFFE identity each workload has. It reads a file in ztunnel's local configuration format
(what ztunnel's LOCAL_XDS_PATH reads: a top-level "workloads:" list with uid, name, namespace,
serviceAccount, workloadIps, protocol, node, …, and services/policies lists that nshub does not
use yet) and says which entry and field is wrong in a bad file (exit 1).

  --file <path>         the local-config file
  -n, --namespace <ns>  only workloads of this namespace
  --trust-domain <td>   for workloads without trustDomain (default ${DEFAULT_TRUST_DOMAIN})
  --json                machine-readable output (the model, one object per workload)

  --admin <url>         the running proxy's registry instead (its read-only admin, e.g.
                        127.0.0.1:15000): the pods it serves (ZDS) merged with proxy.workloadsFile`;

export function renderWorkloads(ws: readonly Workload[], conflicts: readonly IpConflict[] = [], notes: readonly string[] = []): string {
  if (ws.length === 0) return ["no workloads", ...notes].join("\n");
  const table = renderTable(
    [{ header: "NAMESPACE/NAME" }, { header: "UID" }, { header: "IPS" }, { header: "NODE" }, { header: "PROTOCOL" }, { header: "IDENTITY" }],
    ws.map((w) => [`${w.namespace}/${w.name || "-"}`, w.uid, w.workloadIps.length ? w.workloadIps.join(",") : "-", w.node || "-", w.networkMode === "HostNetwork" ? `${w.protocol} (host network)` : w.protocol, w.identity]),
  );
  const lines = conflicts.map((c) => `${c.ip} is claimed by ${c.others.length + 1} workloads: ${c.winner.uid} is used, not ${c.others.map((o) => o.uid).join(", ")}`);
  const all = [...lines, ...notes];
  return all.length ? `${table}\n\n${all.join("\n")}` : table;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "workloads", help: HELP, options: { file: { type: "string" }, namespace: { type: "string", short: "n" }, "trust-domain": { type: "string" } } } as const;
  return runOperatorCommand(cmd, args, io, async (values) => {
    const ns = values.namespace;
    const inNs = (w: { namespace: string }) => ns === undefined || w.namespace === ns;
    if (values.admin !== undefined) {
      if (values.file !== undefined) throw new UsageError("--admin and --file: give one of them");
      const r = await requestJson<{ workloads: Workload[]; conflicts: IpConflict[] }>({ kind: "proxy", url: parseDaemonUrl(values.admin, "--admin") }, "/workloads");
      const ws = r.workloads.filter(inNs);
      if (values.json) io.out(JSON.stringify(ws, null, 2));
      else io.out(renderWorkloads(ws, r.conflicts.filter((c) => inNs(c.winner) || c.others.some(inNs))));
      return 0;
    }
    if (values.file === undefined) throw new UsageError("--file <local-config.yaml> or --admin <url> is required");
    const trustDomain = values["trust-domain"] ?? DEFAULT_TRUST_DOMAIN;
    const tdProblem = trustDomainProblem(trustDomain);
    if (tdProblem) throw new UsageError(`--trust-domain ${JSON.stringify(trustDomain)}: ${tdProblem}`);
    let cfg;
    try {
      cfg = readLocalConfig(values.file, trustDomain);
    } catch (e) {
      if (!(e instanceof LocalConfigError)) throw e;
      io.err(e.message);
      return 1;
    }
    // Through the registry, so conflicts between entries are decided as the proxy will decide them.
    const registry = new WorkloadRegistry({ trustDomain });
    await registry.addSource({ name: `file:${values.file}`, precedence: PRECEDENCE.file, start: (sink) => sink.snapshot(cfg.workloads), stop: () => undefined });
    await registry.start();
    const ws = registry
      .list()
      .filter((w) => ns === undefined || w.namespace === ns)
      .sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name) || a.uid.localeCompare(b.uid));
    const conflicts = registry.conflicts().filter((c) => ns === undefined || c.winner.namespace === ns || c.others.some((o) => o.namespace === ns));
    await registry.stop();
    if (values.json) {
      io.out(JSON.stringify(ws, null, 2));
      return 0;
    }
    const ignored = [cfg.services ? `${cfg.services} service(s)` : "", cfg.policies ? `${cfg.policies} polic${cfg.policies === 1 ? "y" : "ies"}` : ""].filter(Boolean);
    const notes = ignored.length ? [`also in the file, not used by nshub yet: ${ignored.join(", ")}`] : [];
    io.out(renderWorkloads(ws, conflicts, notes));
    return 0;
  });
}
