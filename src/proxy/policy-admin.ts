// The running proxy's authorization and registry, read-only on the admin servers (GET, so on
// both the loopback address and the admin socket):
//   GET /policies      the set in force (what `nshub policies` prints), where it came from, its
//                      generation in every data-plane thread, and the last refused reload
//   GET /policy/check?from=<ip|spiffe://…>&to=<ns>/<name>&port=N[&plaintext][&labels=k=v,…][&toIp=]
//                      one connection decided with the main thread's set, sending nothing; the
//                      destination's labels and IP come from the registry when it knows the workload
//   GET /workloads     the workload registry: workloads, IP conflicts, sources
import type { Hono } from "hono";
import type { AppExtension } from "../admin/servers.ts";
import { parseSpiffeId } from "../identity/spiffe.ts";
import { parseIpText } from "../policy/cidr.ts";
import { checkConnection, describePolicies } from "../policy/describe.ts";
import type { Connection } from "../policy/types.ts";
import { configDumpWorkloads } from "../registry/config-dump.ts";
import type { ProxyAuthz } from "./authz-setup.ts";
import type { WorkerPool } from "./workers.ts";

class BadQuery extends Error {}

/** config_dump's `registry` (ztunnel's workload shape, all sources merged) and `policies`. */
export function authzDump(authz: ProxyAuthz): Record<string, unknown> {
  const set = authz.authorizer.policies;
  return {
    registry: { workloads: configDumpWorkloads(authz.registry.list()), sources: authz.registry.sources(), conflicts: authz.registry.conflicts().map((c) => ({ ip: c.ip, winner: c.winner.uid, others: c.others.map((o) => o.uid) })) },
    policies: { ...authz.status, rootNamespace: set.rootNamespace, policies: describePolicies(set) },
  };
}

/** The query of /policy/check as a Connection, or BadQuery. */
function checkQuery(authz: ProxyAuthz, q: (k: string) => string | undefined, all: (k: string) => string[]): Connection {
  let principal: string | undefined;
  let sourceIp: string | undefined;
  for (const f of all("from")) {
    if (f.startsWith("spiffe://")) {
      try {
        parseSpiffeId(f);
      } catch (e) {
        throw new BadQuery(`from: ${(e as Error).message}`);
      }
      principal = f;
    } else if (typeof parseIpText(f) === "string") throw new BadQuery(`from: ${JSON.stringify(f)} is neither a SPIFFE identity nor an IP address`);
    else sourceIp = f;
  }
  const plaintext = q("plaintext") !== undefined;
  if (plaintext && principal) throw new BadQuery("plaintext: a plaintext connection has no identity");
  const to = /^([a-z0-9-]+)\/([^/]+)$/.exec(q("to") ?? "");
  if (!to) throw new BadQuery("to=<namespace>/<name> is required");
  const port = q("port") ?? "";
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw new BadQuery("port=<0-65535> is required");
  const known = authz.registry.list().find((w) => w.namespace === to[1] && w.name === to[2]);
  let labels = known ? authz.registry.labelsOf(known.uid) : undefined;
  const given = q("labels");
  if (given !== undefined) {
    const l: Record<string, string> = {};
    for (const kv of given.split(",").filter(Boolean)) {
      const eq = kv.indexOf("=");
      if (eq <= 0) throw new BadQuery(`labels: ${JSON.stringify(kv)} is not key=value`);
      l[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    labels = l;
  }
  const toIp = q("toIp") ?? known?.workloadIps[0];
  return { sourcePrincipal: principal, sourceIp, destination: { namespace: to[1]!, name: to[2]!, ...(labels ? { labels } : {}) }, destinationIp: toIp, destinationPort: Number(port), mtls: principal !== undefined };
}

export function policyAdminRoutes(authz: ProxyAuthz, pool?: WorkerPool): AppExtension {
  return {
    endpoints: [
      { method: "GET", path: "/policies", description: "the authorization policies in force, where each applies, and each thread's policy generation" },
      { method: "GET", path: "/policy/check", description: "decide one connection with the running set: ?from=<ip|identity>&to=<ns>/<name>&port=N[&plaintext]" },
      { method: "GET", path: "/workloads", description: "the workload registry: the pods served (ZDS) merged with the Kubernetes API's pods (proxy.kubernetes) and proxy.workloadsFile" },
    ],
    routes(app: Hono) {
      app.get("/policies", async (c) => {
        const set = authz.authorizer.policies;
        const main = { thread: 0, generation: authz.authorizer.generation, policies: set.size };
        const others = pool ? await pool.askAll<{ generation: number; policies: number }>({ q: "policyState" }) : [];
        return c.json({
          ...authz.status,
          loadedAt: authz.status.loadedAt ? new Date(authz.status.loadedAt).toISOString() : null,
          rootNamespace: set.rootNamespace,
          threads: [main, ...others.map((o, i) => ({ thread: i + 1, ...o }))],
          policies: describePolicies(set),
        });
      });
      app.get("/policy/check", (c) => {
        let conn: Connection;
        try {
          conn = checkQuery(authz, (k) => c.req.query(k), (k) => c.req.queries(k) ?? []);
        } catch (e) {
          if (e instanceof BadQuery) return c.json({ error: e.message }, 400);
          throw e;
        }
        return c.json(checkConnection(authz.authorizer.policies, conn));
      });
      app.get("/workloads", (c) => c.json({ workloads: authz.registry.list(), conflicts: authz.registry.conflicts(), sources: authz.registry.sources() }));
    },
  };
}
