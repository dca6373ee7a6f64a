// The steps that move one pod between states, and what each does outside the agent: the pod's
// in-pod rules and host probe entries (Dataplane) and the proxy (ZdsPort; which connected proxy
// serves which pod, and its snapshot answers, are serving.ts). Each step leaves the
// entry in the state it reached; the cache, the state file and the per-pod lock are the
// Agent's (agent.ts), which calls these with the pod locked.
import { identityKey, type Netns } from "../sys/index.ts";
import { ZdsRequestError, type SnapshotEntry, type WorkloadIdentity } from "../zds/types.ts";
import type { Logger } from "../log/logger.ts";
import type { Dataplane } from "./dataplane.ts";
import { AgentError, errText } from "./errors.ts";
import type { HostNetns } from "./host-netns.ts";
import { identityOf, setState, type PodEntry } from "./pod-entry.ts";
import { fdPath, openPodNetns, type LocatedNetns } from "./recovery.ts";
import type { ServingProxies } from "./serving.ts";

/** The proxy side as the agent uses it (implemented by ZdsServer). */
export interface ZdsPort {
  /** Resolves with the id of the connection that acked (void: a port that does not name them). */
  addWorkload(uid: string, info: WorkloadIdentity, netns: Netns): Promise<number | void>;
  delWorkload(uid: string): Promise<void>;
  connectionCount(): number;
}

/** What the steps need of the agent. */
export interface EnrollmentContext {
  readonly dataplane: Dataplane;
  /** Undefined until the ZDS server runs; read when used (it may be attached meanwhile). */
  readonly zds: ZdsPort | undefined;
  readonly log: Logger;
  /** The host's namespaces (host-netns.ts): never a pod's. */
  readonly host: HostNetns;
  /** Which connected proxies serve which pod (serving.ts). */
  readonly serving: ServingProxies;
}

/** Who asked for the enrollment: a CNI ADD, an operator (nshub enroll: an override), or the policy at start. */
export type EnrollVia = "cni" | "operator" | "policy";

/**
 * Opens the netns at `loc.path` and puts in the pod's rules and host probe entries; the entry is
 * then `pending`, holding the netns, until handover(). Nothing is left behind when a step fails
 * (the error is thrown and the entry is unchanged).
 */
export async function setUpPod(e: PodEntry, loc: Omit<LocatedNetns, "ips">, via: EnrollVia, ctx: EnrollmentContext): Promise<void> {
  const { dataplane, log } = ctx;
  const what = `pod ${e.namespace}/${e.name}`;
  if (e.ips.length === 0) throw new AgentError("precondition", `${what} has no IP address (the previous plugin's result lists none for the pod): cannot enroll it`);
  const ns = openPodNetns(loc.path, via === "cni" ? "CNI_NETNS" : "netns", ctx.host);
  if (loc.identity && ns.key !== identityKey(loc.identity)) {
    ns.close();
    throw new AgentError("aborted", `the netns at ${loc.path} changed while enrolling ${what}; try again`);
  }
  const nsPath = fdPath(ns);
  // The in-pod rules and the host probe set are independent (a probe SNATed before the pod's
  // rules exist simply reaches the app uncaptured), so both are set up at once; whatever
  // succeeded is undone when the other fails.
  const added: string[] = [];
  const host = (async () => {
    for (const ip of e.ips) {
      await dataplane.addHostPod(ip, e.uid);
      added.push(ip);
    }
  })();
  const [pod, probes] = await Promise.allSettled([dataplane.applyPod(nsPath), host]);
  if (pod.status === "rejected" || probes.status === "rejected") {
    for (const ip of added) await dataplane.removeHostPod(ip, e.uid).catch(() => undefined);
    if (pod.status === "fulfilled") {
      await dataplane.removePod(nsPath).catch((re) => log.error("undoing the in-pod rules failed", { uid: e.uid, error: errText(re) }));
    }
    ns.close();
    if (pod.status === "rejected") {
      throw new AgentError("internal", `${what}: applying the in-pod rules in ${loc.path} failed (nothing was left applied): ${errText(pod.reason)}`);
    }
    throw new AgentError("internal", `${what}: adding its IPs to the host probe set failed (its rules were removed again): ${errText((probes as PromiseRejectedResult).reason)}`);
  }
  e.netns?.close();
  e.netns = ns;
  e.identity = ns.identity;
  if (via === "operator") e.override = "enroll";
  setState(e, "pending", "rules in place; handing the pod to the proxy");
}

/**
 * Sends the pod to the newest proxy; enrolled on ack, pending otherwise. A new hand-over: acks of
 * earlier ones no longer count. A failure leaves the pod enrolled only when another connection
 * acked it meanwhile (a snapshot), as a nack from one proxy does not un-serve it (serving.ts).
 */
export async function handover(e: PodEntry, ctx: EnrollmentContext): Promise<void> {
  const what = `pod ${e.namespace}/${e.name}`;
  ctx.serving.reset(e);
  if (!ctx.zds) {
    setState(e, "pending", "no proxy connected (the ZDS server is not running)");
    return;
  }
  if (!e.netns || e.netns.closed) {
    setState(e, "pending", "the agent holds no netns for the pod");
    return;
  }
  let failure: string;
  try {
    const conn = (await ctx.zds.addWorkload(e.uid, identityOf(e), e.netns)) ?? undefined;
    if (ctx.serving.acked(e, conn)) {
      setState(e, "enrolled", "rules in place; a proxy acked the pod");
      ctx.log.info(`${what} enrolled`, { uid: e.uid, ips: e.ips, conn });
      return;
    }
    failure = `the proxy that acked the pod (connection ${conn}) disconnected`;
  } catch (err) {
    failure = errText(err);
    ctx.serving.nacked(e, err instanceof ZdsRequestError ? err.conn : undefined);
  }
  const others = ctx.serving.servers(e);
  if (others.length > 0) {
    ctx.log.warn(`${what}: ${failure}; it stays enrolled, served by connection ${others.join(", ")}`, { uid: e.uid, servedBy: others });
    return;
  }
  setState(e, "pending", `no proxy acked the pod: ${failure}`);
  ctx.log.warn(`${what} pending: ${failure}`, { uid: e.uid });
}

/** A pod (enrolled or pending) as a newly connected proxy's snapshot has it: Keep when no netns is held. */
export function snapshotEntry(e: PodEntry): SnapshotEntry {
  const info = identityOf(e);
  return e.netns && !e.netns.closed ? { uid: e.uid, info, netns: e.netns } : { uid: e.uid, info };
}

/** Enrolled/pending → not enrolled: rules, host probe entry, proxy (when `tellProxy`). */
export async function disenroll(e: PodEntry, reason: string, tellProxy: boolean, ctx: EnrollmentContext): Promise<void> {
  const { dataplane, log } = ctx;
  const what = `pod ${e.namespace}/${e.name}`;
  if (e.netns) {
    try {
      await dataplane.removePod(fdPath(e.netns));
    } catch (err) {
      throw new AgentError("internal", `${what}: removing its in-pod rules failed; it stays ${e.state}: ${errText(err)}`);
    }
  }
  for (const ip of e.ips) await dataplane.removeHostPod(ip, e.uid).catch((err) => log.error("removing a host probe entry failed", { uid: e.uid, ip, error: errText(err) }));
  if (tellProxy && ctx.zds) {
    await ctx.zds.delWorkload(e.uid).catch((err) => log.warn(`${what}: telling the proxy failed`, { uid: e.uid, error: errText(err) }));
  }
  e.netns?.close();
  e.netns = undefined;
  setState(e, "not-enrolled", reason);
  log.info(`${what} unenrolled: ${reason}`, { uid: e.uid });
}

/**
 * The pod is going away: undo everything, best effort (each failure is logged). `netnsGone`: its
 * netns died (reconcile.ts), and its in-pod rules with it; only the held fd is left of it.
 */
export async function teardown(e: PodEntry, ctx: EnrollmentContext, netnsGone = false): Promise<void> {
  const { dataplane, log } = ctx;
  if (e.state !== "not-enrolled") {
    for (const ip of e.ips) await dataplane.removeHostPod(ip, e.uid).catch((err) => log.error("removing a host probe entry failed", { uid: e.uid, ip, error: errText(err) }));
    if (e.netns && !netnsGone) await dataplane.removePod(fdPath(e.netns)).catch((err) => log.warn("removing the in-pod rules of a deleted pod failed", { uid: e.uid, error: errText(err) }));
    if (ctx.zds) await ctx.zds.delWorkload(e.uid).catch((err) => log.warn("telling the proxy about a deleted pod failed", { uid: e.uid, error: errText(err) }));
  }
  e.netns?.close();
  e.netns = undefined;
}
