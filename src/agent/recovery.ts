// Finding pods' network namespaces when no CNI ADD has just said where they are:
//   recoverPods  after a restart, the state file's pods: each by its recorded path while that
//                still names the recorded netns, else by a /proc scan for that netns; a pod whose
//                netns is gone, changed, or no longer holds the pod's IPs is dropped
//   locateNetns  a running pod for a late `nshub enroll` (its netns given, or searched for)
// and openPodNetns, the one way the agent opens a pod's netns: never a host one (host-netns.ts).
// The /proc scans themselves are in discovery.ts; what this needs of the agent is NetnsContext.
import { identityKey, Netns, NotNetnsError, SysError, type NetnsIdentity } from "../sys/index.ts";
import type { Logger } from "../log/logger.ts";
import type { Dataplane } from "./dataplane.ts";
import { scanByIdentity, scanByPodUid, statIdentity } from "./discovery.ts";
import { AgentError, errText } from "./errors.ts";
import type { HostNetns } from "./host-netns.ts";
import { entryFromRecord, type PodEntry } from "./pod-entry.ts";
import type { PodRecord } from "./state.ts";
import { clip } from "./validate.ts";

/** What finding pods' netns needs of the agent. */
export interface NetnsContext {
  readonly procRoot: string;
  readonly log: Logger;
  /** A candidate netns must hold one of the pod's IPs. */
  readonly dataplane: Pick<Dataplane, "addresses">;
  /** The host's namespaces (host-netns.ts): never a pod's. */
  readonly host: HostNetns;
}

/** A pod's netns as found: its path, its identity when known, and the pod's IPs. */
export interface LocatedNetns {
  path: string;
  identity: NetnsIdentity | undefined;
  ips: string[];
}

/**
 * Puts the state file's pods that are still there into `pods`; the enrolled and pending ones
 * hold their netns again. Returns how many were dropped (each is logged).
 */
export async function recoverPods(records: readonly PodRecord[], pods: Map<string, PodEntry>, ctx: NetnsContext): Promise<number> {
  const { log, host } = ctx;
  const byPath = new Map<string, string>();
  const wanted = new Set<string>();
  for (const r of records) {
    if (!r.netns) continue;
    const key = identityKey(r.netns);
    if (host.has(key)) continue;
    const id = r.netnsPath ? statIdentity(r.netnsPath) : undefined;
    if (id && identityKey(id) === key) byPath.set(r.uid, r.netnsPath);
    else wanted.add(key);
  }
  const scanned = scanByIdentity(ctx.procRoot, wanted, host);
  let gone = 0;
  for (const r of records) {
    const what = `pod ${r.namespace}/${r.name} (${r.uid})`;
    if (!r.netns || host.has(identityKey(r.netns))) {
      log.info(`rebuild: dropping ${what}: no usable netns identity recorded`);
      gone++;
      continue;
    }
    const path = byPath.get(r.uid) ?? scanned.get(identityKey(r.netns))?.path;
    if (!path) {
      log.info(`rebuild: ${what} is gone: its netns ${identityKey(r.netns)} is neither at ${r.netnsPath || "(no path)"} nor held by any process`);
      gone++;
      continue;
    }
    const entry = entryFromRecord(r);
    if (r.state !== "not-enrolled") {
      const ns = tryOpen(path);
      if (!ns || ns.key !== identityKey(r.netns)) {
        ns?.close();
        log.info(`rebuild: ${what} is gone: its netns changed under ${path}`);
        gone++;
        continue;
      }
      if (!(await holdsPodIp(ns, r.ips, what, ctx))) {
        ns.close();
        gone++;
        continue;
      }
      entry.netns = ns;
    }
    log.info(`rebuild: found ${what}`, { state: r.state, netns: path === r.netnsPath ? path : `${path} (by /proc scan)` });
    pods.set(r.uid, entry);
  }
  return gone;
}

/**
 * Finds the netns of a running pod for late enrollment: the given path; else the pod's
 * CNI_NETNS path while it still names the same netns; else a process in a netns with the
 * recorded identity; else a process whose cgroup names the pod's UID. The netns must hold one
 * of the pod's IPs (when they are known; otherwise its addresses become the pod's IPs).
 */
export async function locateNetns(e: PodEntry, givenPath: string, ctx: NetnsContext): Promise<LocatedNetns> {
  const what = `pod ${e.namespace}/${e.name}`;
  const candidates: Array<{ path: string; identity: NetnsIdentity | undefined; how: string }> = [];
  if (givenPath) candidates.push({ path: givenPath, identity: undefined, how: "the given path" });
  else {
    if (e.identity) {
      const key = identityKey(e.identity);
      const at = e.netnsPath ? statIdentity(e.netnsPath) : undefined;
      if (at && identityKey(at) === key) candidates.push({ path: e.netnsPath, identity: e.identity, how: "its CNI_NETNS path" });
      else {
        const hit = scanByIdentity(ctx.procRoot, new Set([key]), ctx.host).get(key);
        if (hit) candidates.push({ path: hit.path, identity: e.identity, how: `process ${hit.pid}` });
      }
    }
    if (candidates.length === 0) {
      for (const c of scanByPodUid(ctx.procRoot, new Set([e.uid]), ctx.host).get(e.uid) ?? []) {
        candidates.push({ path: c.path, identity: c.identity, how: `process ${c.pid} (cgroup names the pod uid)` });
      }
    }
  }
  if (candidates.length === 0) {
    const where = e.identity ? `its netns ${identityKey(e.identity)} is not at ${e.netnsPath || "a known path"} and no process is in it` : "no process's cgroup names its uid";
    throw new AgentError("not-found", `cannot find the netns of ${what}: ${where}; give it with --netns`);
  }
  const problems: string[] = [];
  for (const c of candidates) {
    const ns = openPodNetns(c.path, `the netns of ${what} (${c.how})`, ctx.host);
    try {
      let addrs: string[];
      try {
        addrs = await ctx.dataplane.addresses(fdPath(ns));
      } catch (err) {
        problems.push(`${clip(c.path)}: ${errText(err)}`);
        continue;
      }
      if (e.ips.length > 0) {
        if (!addrs.some((a) => e.ips.includes(a))) {
          problems.push(`${clip(c.path)} (${c.how}) holds ${addrs.join(", ") || "no address"}, none of the pod's IPs ${e.ips.join(", ")}`);
          continue;
        }
        return { path: c.path, identity: ns.identity, ips: e.ips };
      }
      if (addrs.length === 0) {
        problems.push(`${clip(c.path)} (${c.how}) has no IP address`);
        continue;
      }
      return { path: c.path, identity: ns.identity, ips: addrs };
    } finally {
      ns.close();
    }
  }
  throw new AgentError("precondition", `${what}: no suitable netns: ${problems.join("; ")}`);
}

/**
 * Opens a pod's netns; `what` names it in the error (AgentError "precondition") when it cannot be.
 * A host namespace (host-netns.ts) is refused whatever path names it.
 */
export function openPodNetns(path: string, what: string, host: HostNetns): Netns {
  let ns: Netns;
  const shown = clip(path);
  try {
    ns = Netns.open(path);
  } catch (err) {
    // NotNetnsError's message starts with the path (its label): show it cut like the others.
    if (err instanceof NotNetnsError) throw new AgentError("precondition", `${what}: ${shown}${err.message.slice(path.length)}`);
    if (err instanceof SysError) {
      if (err.code === "ENOENT") throw new AgentError("precondition", `${what} ${shown} does not exist`);
      throw new AgentError("precondition", `${what} ${shown} cannot be opened: ${err.code}`);
    }
    throw err;
  }
  if (host.has(ns.key)) {
    ns.close();
    throw new AgentError("precondition", `${what} ${shown} is the node's own network namespace: refusing to touch it`);
  }
  return ns;
}

/** A path to a netns fd the agent holds (/proc/<pid>/fd/N), usable as a netns path by the rules. */
export function fdPath(ns: Netns): string {
  return `/proc/${process.pid}/fd/${ns.fd}`;
}

function tryOpen(path: string): Netns | undefined {
  try {
    return Netns.open(path);
  } catch {
    return undefined;
  }
}

async function holdsPodIp(ns: Netns, ips: string[], what: string, ctx: NetnsContext): Promise<boolean> {
  if (ips.length === 0) return true;
  try {
    const addrs = await ctx.dataplane.addresses(fdPath(ns));
    if (addrs.some((a) => ips.includes(a))) return true;
    ctx.log.info(`rebuild: ${what} is gone: netns ${ns.key} holds ${addrs.join(", ") || "no address"}, none of ${ips.join(", ")}`);
  } catch (err) {
    ctx.log.warn(`rebuild: cannot list the addresses of ${what}'s netns`, { error: errText(err) });
  }
  return false;
}
