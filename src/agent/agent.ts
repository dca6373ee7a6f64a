// The agent's core: the pod cache and every transition of a pod (add, delete, enroll, unenroll,
// proxy acks), the startup rebuild, and what the ZDS server sends a newly connected proxy.
// Transport-free: the event API (api.ts) and the admin server (admin.ts) call into it; the kernel
// side is behind the Dataplane interface and the proxy side behind ZdsPort.
//
// Fail closed: a pod's rules go in before the proxy is told about it. When no proxy acks, the
// pod stays `pending` with its rules in place (its traffic goes nowhere rather than around the
// proxy) and is handed over as soon as a proxy connects (snapshot) or acks a retry.
import { Code, ConnectError } from "@connectrpc/connect";
import { isIP } from "node:net";
import { identityKey, Netns, NotNetnsError, SysError, type NetnsIdentity } from "../sys/index.ts";
import type { SnapshotEntry, WorkloadIdentity } from "../zds/types.ts";
import type { Logger } from "../log/logger.ts";
import type { Dataplane } from "./dataplane.ts";
import { forbiddenNetns, scanByIdentity, scanByPodUid, statIdentity } from "./discovery.ts";
import type { EnrollmentPolicy } from "./policy.ts";
import { readStateFile, writeStateFile, type PodRecord, type PodStateName } from "./state.ts";

/** The proxy side as the agent uses it (implemented by ZdsServer). */
export interface ZdsPort {
  addWorkload(uid: string, info: WorkloadIdentity, netns: Netns): Promise<void>;
  delWorkload(uid: string): Promise<void>;
  connectionCount(): number;
}

export interface AgentOptions {
  policy: EnrollmentPolicy;
  dataplane: Dataplane;
  stateFile: string;
  procRoot: string;
  log: Logger;
  /** How often pending pods are offered again while a proxy is connected (default 5000). */
  pendingRetryMs?: number;
}

/** One pod in the cache. */
export interface PodEntry {
  uid: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  ips: string[];
  netnsPath: string;
  containerId: string;
  identity: NetnsIdentity | undefined;
  /** Held while the pod is enrolled or pending (the proxy gets a dup of it). */
  netns: Netns | undefined;
  state: PodStateName;
  reason: string;
  override: "enroll" | "unenroll" | undefined;
  updatedAt: string;
}

/** A pod as replies and /pods show it (no fd). */
export interface PodView {
  uid: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  netnsPath: string;
  ips: string[];
  containerId: string;
  state: PodStateName;
  reason: string;
  netnsDev: number;
  netnsInode: number;
  netnsHeld: boolean;
  override: string;
  updatedAt: string;
}

export interface Reply {
  state: PodStateName;
  reason: string;
  pod: PodView;
}

export interface PodAddInput {
  uid: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  netnsPath: string;
  ips: string[];
  containerId: string;
}

export interface PodDeleteInput {
  uid: string;
  namespace: string;
  name: string;
  containerId: string;
}

export interface EnrollInput {
  namespace: string;
  name: string;
  uid: string;
  netnsPath: string;
  serviceAccount: string;
}

export interface UnenrollInput {
  namespace: string;
  name: string;
  uid: string;
}

const UID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const invalid = (msg: string) => new ConnectError(msg, Code.InvalidArgument);
const precondition = (msg: string) => new ConnectError(msg, Code.FailedPrecondition);

export class Agent {
  readonly pods = new Map<string, PodEntry>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly log: Logger;
  private zds: ZdsPort | undefined;
  private forbidden = new Set<string>();
  private retryTimer: ReturnType<typeof setInterval> | undefined;
  private retrying = false;
  private stopped = false;
  #ready = false;
  /** Requests by "<method>|<result>" (for /metrics). */
  readonly requests = new Map<string, number>();
  stateWriteErrors = 0;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.log;
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
    const records = readStateFile(this.opts.stateFile);
    this.forbidden = forbiddenNetns(this.opts.procRoot);
    const byPath = new Map<string, string>();
    const wanted = new Set<string>();
    for (const r of records) {
      if (!r.netns) continue;
      const key = identityKey(r.netns);
      if (this.forbidden.has(key)) continue;
      const id = r.netnsPath ? statIdentity(r.netnsPath) : undefined;
      if (id && identityKey(id) === key) byPath.set(r.uid, r.netnsPath);
      else wanted.add(key);
    }
    const scanned = scanByIdentity(this.opts.procRoot, wanted);
    let gone = 0;
    for (const r of records) {
      const what = `pod ${r.namespace}/${r.name} (${r.uid})`;
      if (!r.netns || this.forbidden.has(identityKey(r.netns))) {
        this.log.info(`rebuild: dropping ${what}: no usable netns identity recorded`);
        gone++;
        continue;
      }
      const path = byPath.get(r.uid) ?? scanned.get(identityKey(r.netns))?.path;
      if (!path) {
        this.log.info(`rebuild: ${what} is gone: its netns ${identityKey(r.netns)} is neither at ${r.netnsPath || "(no path)"} nor held by any process`);
        gone++;
        continue;
      }
      const entry = entryFromRecord(r);
      if (r.state !== "not-enrolled") {
        const ns = this.tryOpen(path);
        if (!ns || ns.key !== identityKey(r.netns)) {
          ns?.close();
          this.log.info(`rebuild: ${what} is gone: its netns changed under ${path}`);
          gone++;
          continue;
        }
        if (!(await this.holdsPodIp(ns, r.ips, what))) {
          ns.close();
          gone++;
          continue;
        }
        entry.netns = ns;
      }
      this.log.info(`rebuild: found ${what}`, { state: r.state, netns: path === r.netnsPath ? path : `${path} (by /proc scan)` });
      this.pods.set(r.uid, entry);
    }
    // The host probe set holds exactly the enrolled and pending pods' IPs.
    const probes = [...this.pods.values()].filter((p) => p.state !== "not-enrolled").flatMap((p) => p.ips.map((ip) => ({ ip, uid: p.uid })));
    await this.opts.dataplane.resetHost(probes);
    // Re-assert rules (idempotent) and apply the (possibly changed) policy.
    for (const e of [...this.pods.values()]) {
      const desired = this.desired(e);
      if (e.state !== "not-enrolled") {
        if (!desired.enroll) {
          await this.disenroll(e, `the enrollment policy no longer covers it: ${desired.reason}`, false);
          continue;
        }
        try {
          await this.opts.dataplane.applyPod(fdPath(e.netns!));
        } catch (err) {
          this.log.error(`rebuild: re-asserting the rules of pod ${e.namespace}/${e.name} failed`, { uid: e.uid, error: errText(err) });
        }
      } else if (desired.enroll) {
        try {
          await this.enrollEntry(e, await this.locate(e, ""), "policy");
        } catch (err) {
          this.log.error(`rebuild: enrolling pod ${e.namespace}/${e.name} (the policy now covers it) failed`, { uid: e.uid, error: errText(err) });
        }
      }
    }
    this.persist();
    this.#ready = true;
    this.retryTimer = setInterval(() => void this.retryPending(), this.opts.pendingRetryMs ?? 5000);
    this.log.info("pod cache rebuilt", { pods: this.pods.size, gone, enrolled: this.countState("enrolled"), pending: this.countState("pending") });
  }

  /** Stops timers and closes every held netns fd (rules and host set stay: agent restarts keep pods working). */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearInterval(this.retryTimer);
    for (const e of this.pods.values()) {
      e.netns?.close();
      e.netns = undefined;
    }
  }

  // ---- the event API ------------------------------------------------------------------------

  async podAdd(req: PodAddInput): Promise<Reply> {
    this.assertReady();
    if (!req.namespace || !req.name) throw invalid("pod namespace and name are required (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME)");
    if (!req.netnsPath) throw invalid(`pod ${req.namespace}/${req.name}: the netns path is required (CNI_NETNS)`);
    if (!req.netnsPath.startsWith("/")) throw invalid(`pod ${req.namespace}/${req.name}: the netns path ${JSON.stringify(req.netnsPath)} must be absolute`);
    for (const ip of req.ips) if (isIP(ip) === 0) throw invalid(`pod ${req.namespace}/${req.name}: ${JSON.stringify(ip)} is not an IP address`);
    if (!req.uid) {
      const d = this.opts.policy.decide(req.namespace, req.name);
      if (!d.enroll) return { state: "not-enrolled", reason: `${d.reason} (no pod UID given: not cached)`, pod: viewOf(newEntry(req, undefined)) };
      throw precondition(`pod ${req.namespace}/${req.name} has no UID (CNI_ARGS K8S_POD_UID is missing), so it cannot be enrolled (${d.reason})`);
    }
    if (!UID_RE.test(req.uid)) throw invalid(`pod ${req.namespace}/${req.name}: uid ${JSON.stringify(req.uid)} is not a valid pod UID`);
    return this.withPodLock(req.uid, () => this.podAddLocked(req));
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
          await this.handover(old);
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
      await this.teardown(old);
      this.pods.delete(req.uid);
      this.persist();
    }
    const entry = newEntry(req, old?.override);
    const d = this.desired(entry);
    if (!d.enroll) {
      entry.identity = statIdentity(req.netnsPath);
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
    let uid = req.uid;
    if (!uid) {
      if (!req.namespace || !req.name) throw invalid("PodDelete needs the pod uid, or its namespace and name");
      const found = [...this.pods.values()].filter((p) => p.namespace === req.namespace && p.name === req.name && (!req.containerId || !p.containerId || p.containerId === req.containerId));
      if (found.length === 0) return { deleted: false, reason: `pod ${req.namespace}/${req.name} is not known to the agent: nothing to delete` };
      if (found.length > 1) throw precondition(`several pods named ${req.namespace}/${req.name} are known (uids ${found.map((p) => p.uid).join(", ")}): give the uid`);
      uid = found[0]!.uid;
    }
    return this.withPodLock(uid, async () => {
      const e = this.pods.get(uid);
      if (!e) return { deleted: false, reason: `pod ${uid} is not known to the agent: nothing to delete` };
      if (req.containerId && e.containerId && req.containerId !== e.containerId) {
        return { deleted: false, reason: `DEL is for sandbox ${short(req.containerId)}, but pod ${e.namespace}/${e.name} now runs in sandbox ${short(e.containerId)}: nothing changed` };
      }
      const was = e.state;
      await this.teardown(e);
      this.pods.delete(uid);
      this.persist();
      this.log.info(`pod ${e.namespace}/${e.name} deleted`, { uid, was });
      return { deleted: true, reason: `pod ${e.namespace}/${e.name} removed (was ${was})` };
    });
  }

  async enroll(req: EnrollInput): Promise<Reply> {
    this.assertReady();
    if (!req.namespace || !req.name) throw invalid("enroll needs the pod's namespace and name");
    if (req.netnsPath && !req.netnsPath.startsWith("/")) throw invalid(`the netns path ${JSON.stringify(req.netnsPath)} must be absolute`);
    if (req.uid && !UID_RE.test(req.uid)) throw invalid(`uid ${JSON.stringify(req.uid)} is not a valid pod UID`);
    const known = this.find(req.namespace, req.name, req.uid);
    const uid = known?.uid ?? req.uid;
    if (!uid) {
      throw new ConnectError(
        `the agent does not know pod ${req.namespace}/${req.name} (it learns pods from their CNI ADD); to enroll a pod it has never seen, give its uid (--uid) and, unless a process's cgroup names that uid, its netns (--netns)`,
        Code.NotFound,
      );
    }
    return this.withPodLock(uid, async () => {
      let e = this.pods.get(uid);
      if (e && (e.state === "enrolled" || e.state === "pending")) {
        e.override = "enroll";
        if (req.serviceAccount && req.serviceAccount !== e.serviceAccount) this.log.warn("enroll: the pod is already enrolled; the new service account applies after a re-enroll", { uid });
        if (e.state === "pending") await this.handover(e);
        this.persist();
        return reply(e, e.state === "enrolled" ? "already enrolled: no change" : undefined);
      }
      if (!e) {
        e = newEntry({ uid, namespace: req.namespace, name: req.name, serviceAccount: req.serviceAccount, netnsPath: req.netnsPath, ips: [], containerId: "" }, undefined);
      } else if (req.serviceAccount) e.serviceAccount = req.serviceAccount;
      const loc = await this.locate(e, req.netnsPath);
      if (e.ips.length === 0) e.ips = loc.ips;
      if (!e.netnsPath) e.netnsPath = loc.path;
      return this.enrollEntry(e, loc, "operator");
    });
  }

  async unenroll(req: UnenrollInput): Promise<Reply> {
    this.assertReady();
    if (!req.namespace || !req.name) throw invalid("unenroll needs the pod's namespace and name");
    const known = this.find(req.namespace, req.name, req.uid);
    if (!known) throw new ConnectError(`pod ${req.namespace}/${req.name}${req.uid ? ` (uid ${req.uid})` : ""} is not known to the agent`, Code.NotFound);
    return this.withPodLock(known.uid, async () => {
      const e = this.pods.get(known.uid);
      if (!e) throw new ConnectError(`pod ${req.namespace}/${req.name} was deleted meanwhile`, Code.NotFound);
      if (e.state === "not-enrolled") {
        e.override = "unenroll";
        this.persist();
        return reply(e, "already not enrolled: no change");
      }
      await this.disenroll(e, "unenrolled by an operator (nshub unenroll)", true);
      e.override = "unenroll";
      this.persist();
      return reply(e);
    });
  }

  listPods(namespace = ""): PodView[] {
    return [...this.pods.values()].filter((p) => !namespace || p.namespace === namespace).map(viewOf);
  }

  // ---- ZDS server callbacks -----------------------------------------------------------------

  /** What a newly connected proxy gets: every enrolled or pending pod (Keep when no netns is held). */
  snapshot(): SnapshotEntry[] {
    const out: SnapshotEntry[] = [];
    for (const e of this.pods.values()) {
      if (e.state === "not-enrolled") continue;
      const info = identityOf(e);
      if (e.netns && !e.netns.closed) out.push({ uid: e.uid, info, netns: e.netns });
      else out.push({ uid: e.uid, info });
    }
    return out;
  }

  /** One snapshot entry answered: an ack enrolls a pending pod; a failure makes it pending. */
  onSnapshotResult(uid: string, error: string | undefined): void {
    const e = this.pods.get(uid);
    if (!e || e.state === "not-enrolled") return;
    if (error === undefined) {
      if (e.state === "pending") {
        setState(e, "enrolled", "acked by a proxy in its snapshot");
        this.log.info(`pod ${e.namespace}/${e.name} enrolled: a proxy acked it in its snapshot`, { uid });
        this.persist();
      }
    } else {
      setState(e, "pending", `a proxy did not take the pod in its snapshot: ${error}`);
      this.log.warn(`pod ${e.namespace}/${e.name} pending: ${error}`, { uid });
      this.persist();
    }
  }

  // ---- internals ----------------------------------------------------------------------------

  private assertReady(): void {
    if (this.stopped) throw new ConnectError("the agent is shutting down", Code.Unavailable);
    if (!this.#ready) throw new ConnectError("the agent is still rebuilding its pod cache", Code.Unavailable);
  }

  private desired(e: PodEntry): { enroll: boolean; reason: string } {
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
   * Finds the netns of a running pod for late enrollment: the given path; else the pod's
   * CNI_NETNS path while it still names the same netns; else a process in a netns with the
   * recorded identity; else a process whose cgroup names the pod's UID. The netns must hold one
   * of the pod's IPs (when they are known; otherwise its addresses become the pod's IPs).
   */
  private async locate(e: PodEntry, givenPath: string): Promise<{ path: string; identity: NetnsIdentity | undefined; ips: string[] }> {
    const what = `pod ${e.namespace}/${e.name}`;
    const candidates: Array<{ path: string; identity: NetnsIdentity | undefined; how: string }> = [];
    if (givenPath) candidates.push({ path: givenPath, identity: undefined, how: "the given path" });
    else {
      if (e.identity) {
        const key = identityKey(e.identity);
        const at = e.netnsPath ? statIdentity(e.netnsPath) : undefined;
        if (at && identityKey(at) === key) candidates.push({ path: e.netnsPath, identity: e.identity, how: "its CNI_NETNS path" });
        else {
          const hit = scanByIdentity(this.opts.procRoot, new Set([key])).get(key);
          if (hit) candidates.push({ path: hit.path, identity: e.identity, how: `process ${hit.pid}` });
        }
      }
      if (candidates.length === 0) {
        for (const c of scanByPodUid(this.opts.procRoot, new Set([e.uid])).get(e.uid) ?? []) {
          candidates.push({ path: c.path, identity: c.identity, how: `process ${c.pid} (cgroup names the pod uid)` });
        }
      }
    }
    if (candidates.length === 0) {
      const where = e.identity ? `its netns ${identityKey(e.identity)} is not at ${e.netnsPath || "a known path"} and no process is in it` : "no process's cgroup names its uid";
      throw new ConnectError(`cannot find the netns of ${what}: ${where}; give it with --netns`, Code.NotFound);
    }
    const problems: string[] = [];
    for (const c of candidates) {
      const ns = this.openNetns(c.path, `the netns of ${what} (${c.how})`);
      try {
        let addrs: string[];
        try {
          addrs = await this.opts.dataplane.addresses(fdPath(ns));
        } catch (err) {
          problems.push(`${c.path}: ${errText(err)}`);
          continue;
        }
        if (e.ips.length > 0) {
          if (!addrs.some((a) => e.ips.includes(a))) {
            problems.push(`${c.path} (${c.how}) holds ${addrs.join(", ") || "no address"}, none of the pod's IPs ${e.ips.join(", ")}`);
            continue;
          }
          return { path: c.path, identity: ns.identity, ips: e.ips };
        }
        if (addrs.length === 0) {
          problems.push(`${c.path} (${c.how}) has no IP address`);
          continue;
        }
        return { path: c.path, identity: ns.identity, ips: addrs };
      } finally {
        ns.close();
      }
    }
    throw precondition(`${what}: no suitable netns: ${problems.join("; ")}`);
  }

  /**
   * Enrolls `e` in the netns at `loc.path`: open it, rules, host probe entry, then the proxy.
   * `via`: a CNI ADD, an operator (nshub enroll: recorded as an override), or the policy at start.
   * Nothing is left behind when a step before the proxy fails (the error is thrown). When the
   * proxy does not ack, the pod is `pending` (not an error).
   */
  private async enrollEntry(e: PodEntry, loc: { path: string; identity: NetnsIdentity | undefined }, via: "cni" | "operator" | "policy"): Promise<Reply> {
    const what = `pod ${e.namespace}/${e.name}`;
    if (e.ips.length === 0) throw precondition(`${what} has no IP address (the previous plugin's result lists none for the pod): cannot enroll it`);
    const ns = this.openNetns(loc.path, via === "cni" ? "CNI_NETNS" : "netns");
    if (loc.identity && ns.key !== identityKey(loc.identity)) {
      ns.close();
      throw new ConnectError(`the netns at ${loc.path} changed while enrolling ${what}; try again`, Code.Aborted);
    }
    const nsPath = fdPath(ns);
    // The in-pod rules and the host probe set are independent (a probe SNATed before the pod's
    // rules exist simply reaches the app uncaptured), so both are set up at once; whatever
    // succeeded is undone when the other fails.
    const added: string[] = [];
    const host = (async () => {
      for (const ip of e.ips) {
        await this.opts.dataplane.addHostPod(ip, e.uid);
        added.push(ip);
      }
    })();
    const [pod, probes] = await Promise.allSettled([this.opts.dataplane.applyPod(nsPath), host]);
    if (pod.status === "rejected" || probes.status === "rejected") {
      for (const ip of added) await this.opts.dataplane.removeHostPod(ip, e.uid).catch(() => undefined);
      if (pod.status === "fulfilled") {
        await this.opts.dataplane.removePod(nsPath).catch((re) => this.log.error("undoing the in-pod rules failed", { uid: e.uid, error: errText(re) }));
      }
      ns.close();
      if (pod.status === "rejected") {
        throw new ConnectError(`${what}: applying the in-pod rules in ${loc.path} failed (nothing was left applied): ${errText(pod.reason)}`, Code.Internal);
      }
      throw new ConnectError(`${what}: adding its IPs to the host probe set failed (its rules were removed again): ${errText((probes as PromiseRejectedResult).reason)}`, Code.Internal);
    }
    e.netns?.close();
    e.netns = ns;
    e.identity = ns.identity;
    if (via === "operator") e.override = "enroll";
    setState(e, "pending", "rules in place; handing the pod to the proxy");
    this.pods.set(e.uid, e);
    this.persist();
    await this.handover(e);
    this.persist();
    return reply(e);
  }

  /** Sends the pod to the newest proxy; enrolled on ack, pending otherwise. */
  private async handover(e: PodEntry): Promise<void> {
    const what = `pod ${e.namespace}/${e.name}`;
    if (!this.zds) {
      setState(e, "pending", "no proxy connected (the ZDS server is not running)");
      return;
    }
    if (!e.netns || e.netns.closed) {
      setState(e, "pending", "the agent holds no netns for the pod");
      return;
    }
    try {
      await this.zds.addWorkload(e.uid, identityOf(e), e.netns);
      setState(e, "enrolled", "rules in place; a proxy acked the pod");
      this.log.info(`${what} enrolled`, { uid: e.uid, ips: e.ips });
    } catch (err) {
      setState(e, "pending", `no proxy acked the pod: ${errText(err)}`);
      this.log.warn(`${what} pending: ${errText(err)}`, { uid: e.uid });
    }
  }

  /** Enrolled/pending → not enrolled: rules, host probe entry, proxy (when `tellProxy`). */
  private async disenroll(e: PodEntry, reason: string, tellProxy: boolean): Promise<void> {
    const what = `pod ${e.namespace}/${e.name}`;
    if (e.netns) {
      try {
        await this.opts.dataplane.removePod(fdPath(e.netns));
      } catch (err) {
        throw new ConnectError(`${what}: removing its in-pod rules failed; it stays ${e.state}: ${errText(err)}`, Code.Internal);
      }
    }
    for (const ip of e.ips) await this.opts.dataplane.removeHostPod(ip, e.uid).catch((err) => this.log.error("removing a host probe entry failed", { uid: e.uid, ip, error: errText(err) }));
    if (tellProxy && this.zds) {
      await this.zds.delWorkload(e.uid).catch((err) => this.log.warn(`${what}: telling the proxy failed`, { uid: e.uid, error: errText(err) }));
    }
    e.netns?.close();
    e.netns = undefined;
    setState(e, "not-enrolled", reason);
    this.log.info(`${what} unenrolled: ${reason}`, { uid: e.uid });
  }

  /** The pod is going away: undo everything, best effort (each failure is logged). */
  private async teardown(e: PodEntry): Promise<void> {
    if (e.state !== "not-enrolled") {
      for (const ip of e.ips) await this.opts.dataplane.removeHostPod(ip, e.uid).catch((err) => this.log.error("removing a host probe entry failed", { uid: e.uid, ip, error: errText(err) }));
      if (e.netns) await this.opts.dataplane.removePod(fdPath(e.netns)).catch((err) => this.log.warn("removing the in-pod rules of a deleted pod failed", { uid: e.uid, error: errText(err) }));
      if (this.zds) await this.zds.delWorkload(e.uid).catch((err) => this.log.warn("telling the proxy about a deleted pod failed", { uid: e.uid, error: errText(err) }));
    }
    e.netns?.close();
    e.netns = undefined;
  }

  private async retryPending(): Promise<void> {
    if (this.retrying || this.stopped || !this.zds || this.zds.connectionCount() === 0) return;
    this.retrying = true;
    try {
      for (const e of [...this.pods.values()]) {
        if (e.state !== "pending" || this.locks.has(e.uid)) continue;
        await this.withPodLock(e.uid, async () => {
          if (this.pods.get(e.uid) !== e || e.state !== "pending") return;
          await this.handover(e);
          this.persist();
        });
      }
    } finally {
      this.retrying = false;
    }
  }

  private openNetns(path: string, what: string): Netns {
    let ns: Netns;
    try {
      ns = Netns.open(path);
    } catch (err) {
      if (err instanceof NotNetnsError) throw precondition(`${what}: ${err.message}`);
      if (err instanceof SysError) {
        if (err.code === "ENOENT") throw precondition(`${what} ${path} does not exist`);
        throw precondition(`${what} ${path} cannot be opened: ${err.code}`);
      }
      throw err;
    }
    if (this.forbidden.has(ns.key)) {
      ns.close();
      throw precondition(`${what} ${path} is the node's own network namespace: refusing to touch it`);
    }
    return ns;
  }

  private tryOpen(path: string): Netns | undefined {
    try {
      return Netns.open(path);
    } catch {
      return undefined;
    }
  }

  private async holdsPodIp(ns: Netns, ips: string[], what: string): Promise<boolean> {
    if (ips.length === 0) return true;
    try {
      const addrs = await this.opts.dataplane.addresses(fdPath(ns));
      if (addrs.some((a) => ips.includes(a))) return true;
      this.log.info(`rebuild: ${what} is gone: netns ${ns.key} holds ${addrs.join(", ") || "no address"}, none of ${ips.join(", ")}`);
    } catch (err) {
      this.log.warn(`rebuild: cannot list the addresses of ${what}'s netns`, { error: errText(err) });
    }
    return false;
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

  private async withPodLock<T>(uid: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(uid) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(uid, settled);
    try {
      return await run;
    } finally {
      if (this.locks.get(uid) === settled) this.locks.delete(uid);
    }
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/** A path to a netns fd the agent holds (/proc/<pid>/fd/N), usable as a netns path by the rules. */
export function fdPath(ns: Netns): string {
  return `/proc/${process.pid}/fd/${ns.fd}`;
}

function newEntry(req: PodAddInput, override: PodEntry["override"]): PodEntry {
  return {
    uid: req.uid,
    namespace: req.namespace,
    name: req.name,
    serviceAccount: req.serviceAccount,
    ips: [...req.ips],
    netnsPath: req.netnsPath,
    containerId: req.containerId,
    identity: undefined,
    netns: undefined,
    state: "not-enrolled",
    reason: "",
    override,
    updatedAt: new Date().toISOString(),
  };
}

function entryFromRecord(r: PodRecord): PodEntry {
  return {
    uid: r.uid,
    namespace: r.namespace,
    name: r.name,
    serviceAccount: r.serviceAccount,
    ips: [...r.ips],
    netnsPath: r.netnsPath,
    containerId: r.containerId,
    identity: r.netns,
    netns: undefined,
    state: r.state,
    reason: r.reason,
    override: r.override,
    updatedAt: r.updatedAt,
  };
}

function recordOf(e: PodEntry): PodRecord {
  const r: PodRecord = {
    uid: e.uid,
    namespace: e.namespace,
    name: e.name,
    serviceAccount: e.serviceAccount,
    ips: e.ips,
    netnsPath: e.netnsPath,
    containerId: e.containerId,
    state: e.state,
    reason: e.reason,
    updatedAt: e.updatedAt,
  };
  if (e.identity) r.netns = { dev: e.identity.dev, ino: e.identity.ino };
  if (e.override) r.override = e.override;
  return r;
}

export function viewOf(e: PodEntry): PodView {
  return {
    uid: e.uid,
    namespace: e.namespace,
    name: e.name,
    serviceAccount: e.serviceAccount,
    netnsPath: e.netnsPath,
    ips: [...e.ips],
    containerId: e.containerId,
    state: e.state,
    reason: e.reason,
    netnsDev: e.identity?.dev ?? 0,
    netnsInode: e.identity?.ino ?? 0,
    netnsHeld: e.netns !== undefined && !e.netns.closed,
    override: e.override ?? "",
    updatedAt: e.updatedAt,
  };
}

function reply(e: PodEntry, reason?: string): Reply {
  return { state: e.state, reason: reason ?? e.reason, pod: viewOf(e) };
}

function setState(e: PodEntry, state: PodStateName, reason: string): void {
  if (e.state !== state) e.updatedAt = new Date().toISOString();
  e.state = state;
  e.reason = reason;
}

function identityOf(e: PodEntry): WorkloadIdentity {
  return { name: e.name, namespace: e.namespace, serviceAccount: e.serviceAccount };
}

function short(id: string): string {
  return id.length > 12 ? id.slice(0, 12) : id || "(none)";
}

export function errText(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage;
  return e instanceof Error ? e.message : String(e);
}
