// The main thread's side of authorization and the workload registry (issues 19, 18 and 20):
//   * the policies, from up to two sources merged into one set:
//     - `proxy.policies` (a file or folder, watched): the first load must succeed or the proxy
//       refuses to start (fail closed); a bad reload is logged and the last good set stays;
//     - with `proxy.kubernetes.enabled`, the cluster's AuthorizationPolicy/PeerAuthentication
//       objects (src/policy/kube-source.ts): the proxy waits for both complete lists before it
//       serves any pod (never a set from half the objects); an invalid object keeps its last
//       valid version. Merged, not one replacing the other: nothing configured is silently
//       ignored (a DENY in either place denies), and the file stays a node-local way to add a
//       policy while the API server is down.
//     Each merged set is applied to the main thread's InboundAuthorizer and posted, as parsed
//     documents, to every data-plane Worker, which builds its own PolicySet (a PolicySet holds
//     closures and caches that cannot cross threads);
//   * the registry: the pods this proxy serves (ZDS), with `proxy.kubernetes.enabled` every pod
//     of the cluster (annotated → HBONE; their labels), and `proxy.workloadsFile`. The labels of
//     the served pods go to every thread (selector policies match them); a served pod whose
//     labels no source gives has every selector policy of its namespace applied (fail safe),
//     and `GET /policies` warns about it.
import type { ProxyConfig } from "../config/schema.ts";
import { KubeClient, KubeConfigError, loadClusterConfig } from "../k8s/index.ts";
import type { Logger } from "../log/logger.ts";
import { createLogger } from "../log/logger.ts";
import { PolicyFileSource } from "../policy/file-source.ts";
import { PolicyKubeSource } from "../policy/kube-source.ts";
import { formatLoadError, type PolicyDocuments } from "../policy/load.ts";
import { FileWorkloadSource } from "../registry/file-source.ts";
import { KubeWorkloadSource } from "../registry/kube-source.ts";
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
  /** Problems now: the file's last refused reload (its previous set stays), invalid Kubernetes objects. */
  lastError?: string[];
  /** What the set in force cannot do here (selector policies without labels, names in both sources). */
  warnings: string[];
  /** With `proxy.kubernetes.enabled`: the API server and the objects taken from it. */
  kubernetes?: { server: string; synced: boolean; authorizationPolicies: number; peerAuthentications: number; invalid: number };
}

const NO_DOCS: PolicyDocuments = { authorizationPolicies: [], peerAuthentications: [] };

export class ProxyAuthz {
  readonly authorizer: InboundAuthorizer;
  readonly registry: WorkloadRegistry;
  readonly zds: ZdsWorkloadSource;
  readonly status: PolicyStatus;
  /** The Kubernetes API client (`proxy.kubernetes.enabled`). */
  kube: KubeClient | undefined;
  #fileSource: PolicyFileSource | undefined;
  #kubePolicies: PolicyKubeSource | undefined;
  #kubePods: KubeWorkloadSource | undefined;
  #fileDocs: PolicyDocuments | undefined;
  #kubeDocs: PolicyDocuments | undefined;
  #fileError: string[] | undefined;
  #kubeErrors: string[] = [];
  /** Sets are applied only once every source has its first one (start() ends). */
  #started = false;
  #docs: PolicyDocuments | undefined;
  #labels: LabelsByUid = {};
  #warningsKey = "";
  /** The selector policies of the set in force (computed once per set). */
  #selectors: { set: unknown; names: string[] } | undefined;
  /** Policies named the same in the file and the API, as a warning. */
  #duplicates: string | undefined;
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

  /**
   * Loads the policies and starts the registry; throws AuthzSetupError when the policy file is bad
   * or the Kubernetes credentials cannot be read. With Kubernetes, resolves only once the API's
   * complete lists are in (it waits through an outage, logging it).
   */
  static async start(cfg: ProxyConfig, log: Logger): Promise<ProxyAuthz> {
    const a = new ProxyAuthz(cfg, log);
    if (cfg.kubernetes.enabled) {
      try {
        const cluster = loadClusterConfig({ kubeconfig: cfg.kubernetes.kubeconfig || undefined });
        a.kube = new KubeClient(cluster);
        log.info("watching the Kubernetes API for pods and policies", { server: cluster.server, credentials: cluster.origin });
      } catch (e) {
        if (!(e instanceof KubeConfigError)) throw e;
        throw new AuthzSetupError(`proxy.kubernetes: ${e.message}`);
      }
    }
    if (cfg.policies !== "") {
      const source = new PolicyFileSource({
        path: cfg.policies,
        log: createLogger("proxy/policy"),
        onUpdate: (docs) => {
          a.#fileDocs = docs;
          a.status.files = docs.files;
          a.#fileError = undefined;
          a.#apply();
        },
        onError: (errors) => {
          a.#fileError = errors.map(formatLoadError);
          a.#showErrors();
        },
      });
      const errors = source.start();
      if (errors.length > 0) {
        source.close();
        throw new AuthzSetupError(`cannot load the policies in ${cfg.policies}: ${errors.map(formatLoadError).join("; ")}`);
      }
      a.#fileSource = source;
    }
    let kubeListed: Promise<void> = Promise.resolve();
    if (a.kube) {
      const source = (a.#kubePolicies = new PolicyKubeSource({
        client: a.kube,
        log: createLogger("proxy/policy"),
        onUpdate: (docs) => {
          a.#kubeDocs = docs;
          a.#apply();
        },
        onError: (errors) => {
          a.#kubeErrors = errors.map(formatLoadError);
          a.#showErrors();
        },
      }));
      // Listed while the registry's pods are listed, below.
      kubeListed = source.start();
      a.#kubePods = new KubeWorkloadSource({ client: a.kube, log: createLogger("proxy/registry"), onReport: () => a.#labelsChanged() });
    }
    await a.registry.addSource(a.zds);
    if (a.#kubePods) await a.registry.addSource(a.#kubePods);
    if (cfg.workloadsFile !== "") await a.registry.addSource(new FileWorkloadSource(cfg.workloadsFile, { log: createLogger("proxy/registry") }));
    a.registry.onChange(() => a.#labelsChanged());
    await a.registry.start();
    await kubeListed;
    a.#started = true;
    a.#apply();
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
    this.#fileSource?.reload();
  }

  async close(): Promise<void> {
    this.#fileSource?.close();
    await this.#kubePolicies?.close();
    await this.registry.stop();
  }

  /** Merges the sources' sets and applies the result everywhere. */
  #apply(): void {
    if (!this.#started || (!this.#fileSource && !this.#kubePolicies)) return;
    const file = this.#fileDocs ?? NO_DOCS;
    const kube = this.#kubeDocs ?? NO_DOCS;
    this.#docs = {
      authorizationPolicies: [...file.authorizationPolicies, ...kube.authorizationPolicies],
      peerAuthentications: [...file.peerAuthentications, ...kube.peerAuthentications],
    };
    this.authorizer.setDocuments(this.#docs);
    this.#pool?.setPolicies(this.#docs);
    const names = (d: PolicyDocuments) => [...d.authorizationPolicies, ...d.peerAuthentications].map((x) => `${x.object.kind} ${x.object.metadata.namespace}/${x.object.metadata.name}`);
    const inFile = new Set(names(file));
    const both = names(kube).filter((n) => inFile.has(n));
    this.#duplicates = both.length > 0 ? `defined both in ${this.cfg.policies} and in the Kubernetes API (both are enforced): ${both.join(", ")}` : undefined;
    Object.assign(this.status, { loadedAt: Date.now(), generation: this.authorizer.generation });
    this.#showErrors();
    this.#refreshWarnings();
    this.log.info("policies in force", { path: this.cfg.policies, kubernetes: this.kube?.server, policies: this.authorizer.policies.size, ignored: this.authorizer.policies.ignored.length, generation: this.authorizer.generation });
  }

  #showErrors(): void {
    const errors = [...(this.#fileError ?? []), ...this.#kubeErrors];
    this.status.lastError = errors.length > 0 ? errors : undefined;
    const k = this.#kubePolicies;
    if (k && this.kube) this.status.kubernetes = { server: this.kube.server, synced: k.loaded, ...k.counts };
  }

  #labelsChanged(): void {
    // Only the pods this proxy serves are ever a destination it decides for.
    const labels: LabelsByUid = {};
    for (const p of this.zds.pods()) {
      const l = this.registry.labelsOf(p.uid);
      if (l) labels[p.uid] = l;
    }
    // Most registry changes (a pod elsewhere added or gone) change no labels here: keep every
    // thread's kept decisions then.
    if (JSON.stringify(labels) !== JSON.stringify(this.#labels)) {
      this.#labels = labels;
      this.authorizer.setLabels(labels);
      this.#pool?.setLabels(labels);
    }
    this.#refreshWarnings();
  }

  /** Says what the set cannot do here; logged when it changes. */
  #refreshWarnings(): void {
    const set = this.authorizer.policies;
    if (this.#selectors?.set !== set) this.#selectors = { set, names: set.policies.filter((p) => p.scope === "workload" && Object.keys(p.selector ?? {}).length > 0).map((p) => `${p.ref.namespace}/${p.ref.name}`) };
    const selectors = this.#selectors.names;
    const warnings: string[] = [];
    if (selectors.length > 0 && !this.#kubePods && Object.keys(this.#labels).length === 0) {
      warnings.push(`pods' labels are unknown (no workload source gives them: enable proxy.kubernetes), so these selector policies apply to every pod of their namespace, failing safe: ${selectors.join(", ")}`);
    } else if (selectors.length > 0) {
      const unknown = this.zds.pods().filter((p) => this.#labels[p.uid] === undefined);
      if (unknown.length > 0) {
        const names = unknown.map((p) => `${p.namespace}/${p.name}`).sort();
        warnings.push(`labels unknown for ${names.length} served pod(s) not (yet) in the Kubernetes API's list: the selector policies of their namespace apply to them, failing safe: ${names.slice(0, 20).join(", ")}${names.length > 20 ? ", …" : ""}`);
      }
    }
    if (this.#duplicates) warnings.push(this.#duplicates);
    this.status.warnings = warnings;
    const key = JSON.stringify(warnings);
    if (key === this.#warningsKey) return;
    this.#warningsKey = key;
    for (const w of warnings) this.log.warn(w);
  }
}
