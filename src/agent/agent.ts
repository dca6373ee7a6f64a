// The agent's pod state machine (Agent): the pod cache and every transition of a pod (CNI add
// and delete, an operator's enroll and unenroll, proxy acks, retries of pending pods), one
// request per pod at a time (a lock per pod UID); the startup rebuild; what the ZDS server sends
// a newly connected proxy. Each change is written to the state file.
// No transport: the event API (api.ts) and the admin server (admin.ts) call into it, and api.ts
// turns its AgentErrors (errors.ts) into Connect codes. The steps' effects on the kernel and the
// proxy are enrollment.ts, finding pods' netns is recovery.ts, a pod's shapes are pod-entry.ts,
// the requests' checks are validate.ts, the host's namespaces host-netns.ts, and the sweep for
// pods whose netns died without a DEL reconcile.ts.
//
// Fail closed: a pod's rules go in before the proxy is told about it. When no proxy acks, the
// pod stays `pending` with its rules in place (its traffic goes nowhere rather than around the
// proxy) and is handed over as soon as a proxy connects (snapshot) or acks a retry.
import { identityKey } from "../sys/index.ts";
import type { SnapshotEntry } from "../zds/types.ts";
import type { Logger } from "../log/logger.ts";
import type { Dataplane } from "./dataplane.ts";
import { statIdentity } from "./discovery.ts";
import { disenroll, handover, setUpPod, snapshotEntry, teardown, type EnrollmentContext, type EnrollVia, type ZdsPort } from "./enrollment.ts";
import { AgentError, errText } from "./errors.ts";
import { HostNetns, hostSources, type HostNetnsSources } from "./host-netns.ts";
import {
  newEntry,
  recordOf,
  reply,
  setState,
  viewOf,
  type EnrollInput,
  type PodAddInput,
  type PodDeleteInput,
  type PodEntry,
  type PodView,
  type Reply,
  type UnenrollInput,
} from "./pod-entry.ts";
import type { Decision, PodPolicy } from "./policy.ts";
import { PodLocks } from "./pod-locks.ts";
import { NetnsReconciler } from "./reconcile.ts";
import { fdPath, locateNetns, recoverPods, type LocatedNetns, type NetnsContext } from "./recovery.ts";
import { ServingProxies } from "./serving.ts";
import { readStateFile, writeStateFile, type PodStateName } from "./state.ts";
import { checkEnroll, checkPodAdd, checkPodDelete, checkUnenroll, clip } from "./validate.ts";

export interface AgentOptions {
  policy: PodPolicy;
  /** After a pod's enrollment changed (the Kubernetes annotation follows it; kube-enrollment.ts). */
  onEnrollment?(pod: { uid: string; namespace: string; name: string }, enrolled: boolean): void;
  dataplane: Dataplane;
  stateFile: string;
  procRoot: string;
  log: Logger;
  /** How often pending pods are offered again while a proxy is connected (default 5000). */
  pendingRetryMs?: number;
  /** How often pods are checked for a netns that died without a CNI DEL (reconcile.ts; default 15000). */
  reconcileIntervalMs?: number;
  /** Where the host's namespaces are read from (default: hostSources(procRoot); tests give fakes). */
  hostSources?: HostNetnsSources;
}

const invalid = (msg: string) => new AgentError("invalid", msg);
const precondition = (msg: string) => new AgentError("precondition", msg);

export class Agent {
  readonly pods = new Map<string, PodEntry>();
  private readonly locks = new PodLocks();
  private readonly log: Logger;
  /** Which connected proxies serve which pod: a pod's state follows them (serving.ts). */
  private readonly serving: ServingProxies;
  private zds: ZdsPort | undefined;
  private host: HostNetns | undefined;
  private retryTimer: ReturnType<typeof setInterval> | undefined;
  private reconcileTimer: ReturnType<typeof setInterval> | undefined;
  private retrying = false;
  private stopped = false;
  #ready = false;
  /** Requests by "<method>|<result>" (for /metrics). */
  readonly requests = new Map<string, number>();
  /** Pods removed without a CNI DEL, by reason (for /metrics). */
  readonly reconciled = new Map<string, number>([["netns_gone", 0]]);
  stateWriteErrors = 0;

  /** What recovery.ts and enrollment.ts need of the agent (zds and host change: getters). */
  private readonly ctx: NetnsContext & EnrollmentContext;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.log;
    this.serving = new ServingProxies(opts.log);
    const agent = this;
    this.ctx = {
      procRoot: opts.procRoot,
      log: opts.log,
      dataplane: opts.dataplane,
      serving: this.serving,
      get zds() {
        return agent.zds;
      },
      get host() {
        // Requests wait for the rebuild (assertReady), which identifies the host's namespaces first.
        if (!agent.host) throw new AgentError("unavailable", "the agent has not identified the host's network namespaces yet");
        return agent.host;
      },
    };
  }

  get ready(): boolean {
    return this.#ready;
  }

  attachZds(zds: ZdsPort): void {
    this.zds = zds;
  }

  count(method: string, result: string): void {
    const k = `${method}|${result}`;
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
  }

  // ---- startup ------------------------------------------------------------------------------

  /**
   * Rebuilds the cache from the state file and a /proc scan, resets the host probe set,
   * re-asserts enrolled pods' rules and applies the policy. Throws StateFileError for an unusable
   * state file. Marks the agent ready at the end.
   */
  async rebuild(): Promise<void> {
    // Before anything touches a netns: throws HostNetnsError when the node's cannot be identified.
    const host = HostNetns.establish(this.opts.hostSources ?? hostSources(this.opts.procRoot));
    this.host = host;
    host.report(this.log);
    const records = readStateFile(this.opts.stateFile);
    const gone = await recoverPods(records, this.pods, this.ctx);
    // The host probe set holds exactly the enrolled and pending pods' IPs.
    const probes = [...this.pods.values()].filter((p) => p.state !== "not-enrolled").flatMap((p) => p.ips.map((ip) => ({ ip, uid: p.uid })));
    await this.opts.dataplane.resetHost(probes);
    // Re-assert rules (idempotent) and apply the (possibly changed) policy.
    for (const e of [...this.pods.values()]) {
      const desired = this.desired(e);
      if (e.state !== "not-enrolled") {
        if (!desired.enroll && !desired.unknown) {
          await disenroll(e, `the enrollment policy no longer covers it: ${desired.reason}`, false, this.ctx);
          continue;
        }
        try {
          await this.opts.dataplane.applyPod(fdPath(e.netns!));
        } catch (err) {
          this.log.error(`rebuild: re-asserting the rules of pod ${e.namespace}/${e.name} failed`, { uid: e.uid, error: errText(err) });
        }
      } else if (desired.enroll) {
        try {
          await this.enrollEntry(e, await locateNetns(e, "", this.ctx), "policy");
        } catch (err) {
          this.log.error(`rebuild: enrolling pod ${e.namespace}/${e.name} (the policy now covers it) failed`, { uid: e.uid, error: errText(err) });
        }
      }
    }
    this.persist();
    this.#ready = true;
    this.retryTimer = setInterval(() => void this.retryPending(), this.opts.pendingRetryMs ?? 5000);
    const reconciler = new NetnsReconciler({ procRoot: this.opts.procRoot, host, log: this.log, pods: () => this.pods.values(), remove: (uid, key) => this.removeGone(uid, key) });
    this.reconcileTimer = setInterval(() => void reconciler.sweep(), this.opts.reconcileIntervalMs ?? 15_000);
    this.log.info("pod cache rebuilt", { pods: this.pods.size, gone, enrolled: this.countState("enrolled"), pending: this.countState("pending") });
  }

  /** Stops timers and closes every held netns fd (rules and host set stay: agent restarts keep pods working). */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearInterval(this.retryTimer);
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    for (const e of this.pods.values()) {
      e.netns?.close();
      e.netns = undefined;
    }
  }

  // ---- the event API ------------------------------------------------------------------------

  async podAdd(req: PodAddInput): Promise<Reply> {
    this.assertReady();
    checkPodAdd(req);
    await this.opts.policy.ready?.(req.namespace, req.name);
    if (!req.serviceAccount) {
      const sa = this.opts.policy.podInfo?.(req.namespace, req.name)?.serviceAccount;
      if (sa) req = { ...req, serviceAccount: sa };
    }
    if (!req.uid) {
      const d = this.opts.policy.decide(req.namespace, req.name);
      if (!d.enroll) return { state: "not-enrolled", reason: `${d.reason} (no pod UID given: not cached)`, pod: viewOf(newEntry(req, undefined)) };
      throw precondition(`pod ${req.namespace}/${req.name} has no UID (CNI_ARGS K8S_POD_UID is missing), so it cannot be enrolled (${d.reason})`);
    }
    const r = await this.locks.run(req.uid, () => this.podAddLocked(req));
    this.notify(req.uid);
    return r;
  }

  /**
   * Applies the policy again to a pod the agent knows (its labels changed): enrolls or
   * disenrolls it as the policy now says; operator overrides still win. False when unknown.
   */
  async reapply(uid: string): Promise<boolean> {
    this.assertReady();
    if (!this.pods.has(uid)) return false;
    await this.locks.run(uid, async () => {
      const e = this.pods.get(uid);
      if (!e) return;
      const d = this.desired(e);
      if (d.unknown) return;
      if (e.state !== "not-enrolled" && !d.enroll) {
        await disenroll(e, `the enrollment policy no longer covers it: ${d.reason}`, true, this.ctx);
        this.persist();
      } else if (e.state === "not-enrolled" && d.enroll) {
        await this.enrollEntry(e, await locateNetns(e, "", this.ctx), "policy");
      }
    });
    this.notify(uid);
    return true;
  }

  /** Enrolls a running pod the agent never saw a CNI ADD for (it ran before the agent). */
  async adopt(pod: { uid: string; namespace: string; name: string; serviceAccount: string; ips: readonly string[] }): Promise<void> {
    this.assertReady();
    await this.locks.run(pod.uid, async () => {
      if (this.pods.has(pod.uid)) return;
      const e = newEntry({ uid: pod.uid, namespace: pod.namespace, name: pod.name, serviceAccount: pod.serviceAccount, netnsPath: "", ips: [...pod.ips], containerId: "" }, undefined);
      const loc = await locateNetns(e, "", this.ctx);
      if (e.ips.length === 0) e.ips = loc.ips;
      e.netnsPath = loc.path;
      await this.enrollEntry(e, loc, "policy");
    });
    this.notify(pod.uid);
  }

  stateOf(uid: string): PodEntry["state"] | undefined {
    return this.pods.get(uid)?.state;
  }

  private notify(uid: string): void {
    const e = this.pods.get(uid);
    if (e && this.opts.onEnrollment) this.opts.onEnrollment({ uid, namespace: e.namespace, name: e.name }, e.state === "enrolled");
  }

  private async podAddLocked(req: PodAddInput): Promise<Reply> {
    const old = this.pods.get(req.uid);
    if (old) {
      const sameSandbox = !req.containerId || !old.containerId || req.containerId === old.containerId;
      const id = statIdentity(req.netnsPath);
      const sameNetns =
        id !== undefined && old.identity !== undefined ? identityKey(id) === identityKey(old.identity) : id === undefined && old.identity === undefined && req.netnsPath === old.netnsPath;
      if (sameSandbox && sameNetns && old.namespace === req.namespace && old.name === req.name) {
        if (old.state === "enrolled") return reply(old, "already enrolled: no change");
        if (old.state === "pending") {
          await handover(old, this.ctx);
          this.persist();
          return reply(old);
        }
        const d = this.desired(old);
        if (!d.enroll) return reply(old, `not enrolled: ${d.reason} (no change)`);
        old.ips = req.ips;
        return this.enrollEntry(old, { path: req.netnsPath, identity: undefined }, "cni");
      }
      this.log.info(`pod ${req.namespace}/${req.name} added again with a new sandbox or netns: replacing the old one`, {
        uid: req.uid,
        oldContainer: short(old.containerId),
        newContainer: short(req.containerId),
      });
      await teardown(old, this.ctx);
      this.pods.delete(req.uid);
      this.persist();
    }
    const entry = newEntry(req, old?.override);
    const d = this.desired(entry);
    if (!d.enroll) {
      const id = statIdentity(req.netnsPath);
      if (id && this.ctx.host.has(identityKey(id))) {
        // Kubelet runs no CNI for hostNetwork pods: this path names the node by mistake. Not
        // cached, so no entry (nor the state file) points at the node's netns.
        const reason = `${d.reason}; CNI_NETNS ${clip(req.netnsPath)} is the node's own network namespace: not cached`;
        this.log.warn(`pod ${entry.namespace}/${entry.name} not enrolled: ${reason}`, { uid: entry.uid });
        return { state: "not-enrolled", reason, pod: viewOf(entry) };
      }
      entry.identity = id;
      setState(entry, "not-enrolled", d.reason);
      this.pods.set(entry.uid, entry);
      this.persist();
      this.log.info(`pod ${entry.namespace}/${entry.name} not enrolled: ${d.reason}`, { uid: entry.uid });
      return reply(entry);
    }
    return this.enrollEntry(entry, { path: req.netnsPath, identity: undefined }, "cni");
  }

  async podDelete(req: PodDeleteInput): Promise<{ deleted: boolean; reason: string }> {
    this.assertReady();
    checkPodDelete(req);
    let uid = req.uid;
    if (!uid) {
      const found = [...this.pods.values()].filter((p) => p.namespace === req.namespace && p.name === req.name && (!req.containerId || !p.containerId || p.containerId === req.containerId));
      if (found.length === 0) return { deleted: false, reason: `pod ${req.namespace}/${req.name} is not known to the agent: nothing to delete` };
      if (found.length > 1) throw precondition(`several pods named ${req.namespace}/${req.name} are known (uids ${found.map((p) => p.uid).join(", ")}): give the uid`);
      uid = found[0]!.uid;
    }
    return this.locks.run(uid, async () => {
      const e = this.pods.get(uid);
      if (!e) return { deleted: false, reason: `pod ${uid} is not known to the agent: nothing to delete` };
      if (req.containerId && e.containerId && req.containerId !== e.containerId) {
        return { deleted: false, reason: `DEL is for sandbox ${short(req.containerId)}, but pod ${e.namespace}/${e.name} now runs in sandbox ${short(e.containerId)}: nothing changed` };
      }
      const was = e.state;
      await teardown(e, this.ctx);
      this.pods.delete(uid);
      this.persist();
      this.log.info(`pod ${e.namespace}/${e.name} deleted`, { uid, was });
      return { deleted: true, reason: `pod ${e.namespace}/${e.name} removed (was ${was})` };
    });
  }

  async enroll(req: EnrollInput): Promise<Reply> {
    this.assertReady();
    checkEnroll(req);
    const known = this.find(req.namespace, req.name, req.uid);
    const uid = known?.uid ?? req.uid;
    if (!uid) {
      throw new AgentError(
        "not-found",
        `the agent does not know pod ${req.namespace}/${req.name} (it learns pods from their CNI ADD); to enroll a pod it has never seen, give its uid (--uid) and, unless a process's cgroup names that uid, its netns (--netns)`,
      );
    }
    const r = await this.locks.run(uid, async () => {
      let e = this.pods.get(uid);
      if (e && (e.state === "enrolled" || e.state === "pending")) {
        e.override = "enroll";
        if (req.serviceAccount && req.serviceAccount !== e.serviceAccount) this.log.warn("enroll: the pod is already enrolled; the new service account applies after a re-enroll", { uid });
        if (e.state === "pending") await handover(e, this.ctx);
        this.persist();
        return reply(e, e.state === "enrolled" ? "already enrolled: no change" : undefined);
      }
      if (!e) {
        e = newEntry({ uid, namespace: req.namespace, name: req.name, serviceAccount: req.serviceAccount, netnsPath: req.netnsPath, ips: [], containerId: "" }, undefined);
      } else if (req.serviceAccount) e.serviceAccount = req.serviceAccount;
      const loc = await locateNetns(e, req.netnsPath, this.ctx);
      if (e.ips.length === 0) e.ips = loc.ips;
      if (!e.netnsPath) e.netnsPath = loc.path;
      return this.enrollEntry(e, loc, "operator");
    });
    this.notify(uid);
    return r;
  }

  async unenroll(req: UnenrollInput): Promise<Reply> {
    this.assertReady();
    checkUnenroll(req);
    const known = this.find(req.namespace, req.name, req.uid);
    if (!known) throw new AgentError("not-found", `pod ${req.namespace}/${req.name}${req.uid ? ` (uid ${req.uid})` : ""} is not known to the agent`);
    const r = await this.locks.run(known.uid, async () => {
      const e = this.pods.get(known.uid);
      if (!e) throw new AgentError("not-found", `pod ${req.namespace}/${req.name} was deleted meanwhile`);
      if (e.state === "not-enrolled") {
        e.override = "unenroll";
        this.persist();
        return reply(e, "already not enrolled: no change");
      }
      await disenroll(e, "unenrolled by an operator (nshub unenroll)", true, this.ctx);
      e.override = "unenroll";
      this.persist();
      return reply(e);
    });
    this.notify(known.uid);
    return r;
  }

  listPods(namespace = ""): PodView[] {
    return [...this.pods.values()].filter((p) => !namespace || p.namespace === namespace).map(viewOf);
  }

  // ---- ZDS server callbacks -----------------------------------------------------------------

  /** What a newly connected proxy gets: every enrolled or pending pod (Keep when no netns is held). */
  snapshot(): SnapshotEntry[] {
    return [...this.pods.values()].filter((e) => e.state !== "not-enrolled").map(snapshotEntry);
  }

  /** Connection `conn` answered a snapshot entry: an ack serves the pod, a nack un-serves it there only (serving.ts). */
  onSnapshotResult(uid: string, error: string | undefined, conn: number): void {
    const e = this.pods.get(uid);
    if (e && this.serving.snapshotAnswer(e, conn, error)) this.persist();
  }

  /** A proxy connected (`up`) or its connection closed: pods it alone served are pending, retried at once. */
  onProxyConnection(conn: number, up: boolean): void {
    if (up) return this.serving.connected(conn);
    if (this.serving.disconnected(conn, this.pods.values()).length === 0) return;
    this.persist();
    void this.retryPending();
  }

  // ---- internals ----------------------------------------------------------------------------

  private assertReady(): void {
    if (this.stopped) throw new AgentError("unavailable", "the agent is shutting down");
    if (!this.#ready) throw new AgentError("unavailable", "the agent is still rebuilding its pod cache");
  }

  private desired(e: PodEntry): Decision {
    if (e.override === "enroll") return { enroll: true, reason: "enrolled by an operator (nshub enroll)" };
    if (e.override === "unenroll") return { enroll: false, reason: "unenrolled by an operator (nshub unenroll)" };
    return this.opts.policy.decide(e.namespace, e.name);
  }

  private find(namespace: string, name: string, uid: string): PodEntry | undefined {
    if (uid) {
      const e = this.pods.get(uid);
      if (e && (e.namespace !== namespace || e.name !== name)) throw invalid(`uid ${uid} belongs to pod ${e.namespace}/${e.name}, not ${namespace}/${name}`);
      return e;
    }
    const found = [...this.pods.values()].filter((p) => p.namespace === namespace && p.name === name);
    if (found.length > 1) throw precondition(`several pods named ${namespace}/${name} are known (uids ${found.map((p) => p.uid).join(", ")}): give --uid`);
    return found[0];
  }

  /**
   * Enrolls `e` in the netns at `loc.path` (rules, host probe entries), caches it, then hands it
   * to the proxy. Nothing is left behind when a step before the proxy fails (the error is
   * thrown). When the proxy does not ack, the pod is `pending` (not an error).
   */
  private async enrollEntry(e: PodEntry, loc: Omit<LocatedNetns, "ips">, via: EnrollVia): Promise<Reply> {
    await setUpPod(e, loc, via, this.ctx);
    this.pods.set(e.uid, e);
    this.persist();
    await handover(e, this.ctx);
    this.persist();
    return reply(e);
  }

  /** A pod whose netns `key` died without a CNI DEL (reconcile.ts): out of the proxy, the probe set and the cache. */
  private removeGone(uid: string, key: string): Promise<void> {
    return this.locks.run(uid, async () => {
      const e = this.pods.get(uid);
      if (this.stopped || !e?.identity || identityKey(e.identity) !== key) return; // deleted or re-added meanwhile
      await teardown(e, this.ctx, true);
      this.pods.delete(uid);
      this.persist();
      this.reconciled.set("netns_gone", (this.reconciled.get("netns_gone") ?? 0) + 1);
      this.log.warn(`pod ${e.namespace}/${e.name} removed without a CNI DEL: its netns ${key} is gone (nothing at ${e.netnsPath || "its path"}, no process in it)`, { uid, was: e.state });
    });
  }

  private async retryPending(): Promise<void> {
    if (this.retrying || this.stopped || !this.zds || this.zds.connectionCount() === 0) return;
    this.retrying = true;
    try {
      for (const e of [...this.pods.values()]) {
        if (e.state !== "pending" || this.locks.has(e.uid)) continue;
        await this.locks.run(e.uid, async () => {
          if (this.pods.get(e.uid) !== e || e.state !== "pending") return;
          await handover(e, this.ctx);
          this.persist();
        });
      }
    } finally {
      this.retrying = false;
    }
  }

  private countState(s: PodStateName): number {
    let n = 0;
    for (const e of this.pods.values()) if (e.state === s) n++;
    return n;
  }

  private persist(): void {
    try {
      writeStateFile(this.opts.stateFile, [...this.pods.values()].map(recordOf));
    } catch (err) {
      this.stateWriteErrors++;
      this.log.error("writing the state file failed; a restarted agent would not know the latest pods", { file: this.opts.stateFile, error: errText(err) });
    }
  }
}

function short(id: string): string {
  return id.length > 12 ? id.slice(0, 12) : id || "(none)";
}
