// The main thread's side of authorization and the workload registry (issues 19 and 18):
//   * the policies: a PolicyFileSource on `proxy.policies` (a file or a folder, watched). The first
//     load must succeed or the proxy refuses to start (fail closed: it would otherwise run with
//     nothing enforced); a bad reload is logged with file/document/field and the last good set
//     stays. Each good set is applied to the main thread's InboundAuthorizer and posted, as the
//     parsed documents, to every data-plane Worker, which builds its own PolicySet (a PolicySet
//     holds closures and caches that cannot cross threads; rebuilding 1,000 policies takes a few ms);
//   * the registry: a WorkloadRegistry with the pods this proxy serves (ZDS: uid, name, namespace,
//     service account, IPs) and `proxy.workloadsFile` (ztunnel's local-config format). Every
//     change sends the labels it knows per uid to every thread (selector policies match them;
//     no source has labels yet: ZDS gives none, ztunnel's local-config format has no field).
import type { ProxyConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { createLogger } from "../log/logger.ts";
import { PolicyFileSource } from "../policy/file-source.ts";
import { formatLoadError, type PolicyDocuments } from "../policy/load.ts";
import { FileWorkloadSource } from "../registry/file-source.ts";
import { WorkloadRegistry } from "../registry/registry.ts";
import { ZdsWorkloadSource } from "../registry/zds-source.ts";
import { InboundAuthorizer, type LabelsByUid } from "./authorize.ts";
import { podIps } from "./manager.ts";
import type { PodProxy } from "./pod.ts";
import type { WorkerPool } from "./workers.ts";

export class AuthzSetupError extends Error {}

export interface PolicyStatus {
  /** `proxy.policies`, "" when none. */
  path: string;
  files: string[];
  /** ms since the epoch of the set in force. */
  loadedAt?: number;
  generation: number;
  /** The last reload's refusal (the previous set stays), if the last reload failed. */
  lastError?: string[];
  /** What the set in force cannot do here (selector policies without labels). */
  warnings: string[];
}

export class ProxyAuthz {
  readonly authorizer: InboundAuthorizer;
  readonly registry: WorkloadRegistry;
  readonly zds: ZdsWorkloadSource;
  readonly status: PolicyStatus;
  #source: PolicyFileSource | undefined;
  #docs: PolicyDocuments | undefined;
  #labels: LabelsByUid = {};
  #pool: WorkerPool | undefined;

  private constructor(
    readonly cfg: ProxyConfig,
    readonly log: Logger,
  ) {
    this.authorizer = new InboundAuthorizer(cfg.rootNamespace, createLogger("proxy/authz"));
    this.registry = new WorkloadRegistry({ trustDomain: cfg.ca.trustDomain, log: createLogger("proxy/registry") });
    this.zds = new ZdsWorkloadSource({ log: createLogger("proxy/registry") });
    this.status = { path: cfg.policies, files: [], generation: 0, warnings: [] };
  }

  /** Loads the policies and starts the registry; throws AuthzSetupError when the policies are bad. */
  static async start(cfg: ProxyConfig, log: Logger): Promise<ProxyAuthz> {
    const a = new ProxyAuthz(cfg, log);
    if (cfg.policies !== "") {
      a.#source = new PolicyFileSource({
        path: cfg.policies,
        log: createLogger("proxy/policy"),
        onUpdate: (docs) => a.#apply(docs),
        onError: (errors) => (a.status.lastError = errors.map(formatLoadError)),
      });
      const errors = a.#source.start();
      if (errors.length > 0) {
        a.#source.close();
        throw new AuthzSetupError(`cannot load the policies in ${cfg.policies}: ${errors.map(formatLoadError).join("; ")}`);
      }
    }
    await a.registry.addSource(a.zds);
    if (cfg.workloadsFile !== "") await a.registry.addSource(new FileWorkloadSource(cfg.workloadsFile, { log: createLogger("proxy/registry") }));
    a.registry.onChange(() => a.#labelsChanged());
    await a.registry.start();
    return a;
  }

  /** From now on every change also goes to the Workers; they get the current state first. */
  attachWorkers(pool: WorkerPool): void {
    this.#pool = pool;
    if (this.#docs) pool.setPolicies(this.#docs);
    pool.setLabels(this.#labels);
  }

  podStarted(pod: PodProxy): void {
    const r = pod.ref;
    this.zds.upsert({ uid: r.uid, name: r.name, namespace: r.namespace, serviceAccount: r.serviceAccount, ips: podIps(pod) });
  }

  podStopped(pod: PodProxy): void {
    this.zds.remove(pod.ref.uid);
  }

  /** Re-reads the policy path now (tests; the watch does it on its own). */
  reload(): void {
    this.#source?.reload();
  }

  async close(): Promise<void> {
    this.#source?.close();
    await this.registry.stop();
  }

  #apply(docs: PolicyDocuments & { files: string[] }): void {
    const { files, ...plain } = docs;
    this.#docs = { authorizationPolicies: plain.authorizationPolicies, peerAuthentications: plain.peerAuthentications };
    this.authorizer.setDocuments(this.#docs);
    this.#pool?.setPolicies(this.#docs);
    // No source gives pods' labels yet (ZDS: none; ztunnel's local-config format: no field), so
    // the engine applies selector policies to every pod of their namespace, failing safe (a DENY
    // denies, an ALLOW restricts, a STRICT PeerAuthentication holds): say so.
    const selectors = this.authorizer.policies.policies.filter((p) => p.scope === "workload" && Object.keys(p.selector ?? {}).length > 0).map((p) => `${p.ref.namespace}/${p.ref.name}`);
    const warnings = selectors.length > 0 && Object.keys(this.#labels).length === 0 ? [`pods' labels are unknown (no workload source gives them yet), so these selector policies apply to every pod of their namespace, failing safe: ${selectors.join(", ")}`] : [];
    for (const w of warnings) this.log.warn(w);
    Object.assign(this.status, { files, loadedAt: Date.now(), generation: this.authorizer.generation, lastError: undefined, warnings });
    this.log.info("policies in force", { path: this.cfg.policies, policies: this.authorizer.policies.size, ignored: this.authorizer.policies.ignored.length, generation: this.authorizer.generation });
  }

  #labelsChanged(): void {
    const labels: LabelsByUid = {};
    for (const w of this.registry.list()) {
      const l = this.registry.labelsOf(w.uid);
      if (l) labels[w.uid] = l;
    }
    // Most registry changes (a pod added or gone) change no labels: keep every thread's kept
    // decisions then.
    if (JSON.stringify(labels) === JSON.stringify(this.#labels)) return;
    this.#labels = labels;
    this.authorizer.setLabels(labels);
    this.#pool?.setLabels(labels);
  }
}
