// The cluster's pods as a workload source, from a pods informer over all namespaces (src/k8s).
// What istiod would tell ztunnel about a pod, as far as nshub uses it:
//   * a pod annotated `ambient.istio.io/redirection: enabled` (set by whoever enrolled it: nshub's
//     agent, istio-cni) is in the mesh: protocol HBONE; any other pod is TCP (ztunnel knows the
//     pods outside the mesh too, as plain destinations);
//   * uid (metadata.uid: ZDS reports the same uid, so a pod this node serves merges with its API
//     object and takes its labels), service account (default "default"), status.podIPs, node,
//     labels (always set, `{}` for none: known-empty labels let selector policies match exactly);
//   * hostNetwork pods are HostNetwork (never found by IP); pods that ended (Succeeded, Failed) or
//     were deleted are removed. Pods without an IP yet are kept: the proxy learns a pod from ZDS
//     at CNI ADD, before the kubelet writes its IP to the API, and its labels are needed then.
// Nothing is reported before the informer's first complete list (a partial list would remove the
// other half); then one snapshot, then upserts and removes as the watch goes. During an API
// outage the informer keeps its cache and reports nothing, so the last model stays.
import { Informer, PODS, type InformerOptions, type KubeClient, type Pod } from "../k8s/index.ts";
import { createLogger, type Logger } from "../log/logger.ts";
import { PRECEDENCE, type SourceSink, type WorkloadSource } from "./source.ts";
import { makeWorkload, WorkloadInputError, type Workload, type WorkloadInput } from "./workload.ts";

export const REDIRECTION_ANNOTATION = "ambient.istio.io/redirection";

export interface KubeSourceOptions {
  /** The API client; a pods informer over all namespaces is made from it. */
  client?: Pick<KubeClient, "server" | "list" | "watch">;
  /** Or an informer of pods to share (all namespaces; started here if not yet). */
  informer?: Informer<Pod>;
  backoff?: InformerOptions["backoff"];
  /**
   * Called after each report (snapshot, upsert, remove). The registry's onChange does not fire
   * when only a shadowed version changes (a served pod's labels: ZDS wins its uid), so a
   * consumer of `labelsOf` listens here too.
   */
  onReport?: () => void;
  log?: Logger;
}

/** What the registry is told of one pod; null for a pod that is not a workload (ended). */
export function podWorkloadInput(pod: Pod): WorkloadInput | null {
  const phase = pod.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return null;
  const ips = pod.status?.podIPs?.map((p) => p.ip) ?? (pod.status?.podIP ? [pod.status.podIP] : []);
  return {
    uid: pod.metadata.uid ?? "",
    name: pod.metadata.name,
    namespace: pod.metadata.namespace ?? "",
    serviceAccount: pod.spec?.serviceAccountName || "default",
    workloadIps: ips,
    node: pod.spec?.nodeName ?? "",
    protocol: pod.metadata.annotations?.[REDIRECTION_ANNOTATION] === "enabled" ? "HBONE" : "TCP",
    networkMode: pod.spec?.hostNetwork ? "HostNetwork" : "Standard",
    labels: { ...(pod.metadata.labels ?? {}) },
    details: { workloadType: "pod" },
  };
}

export class KubeWorkloadSource implements WorkloadSource {
  readonly name = "kubernetes";
  readonly precedence = PRECEDENCE.kubernetes;
  readonly informer: Informer<Pod>;
  readonly #log: Logger;
  readonly #owned: boolean;
  readonly #server: string;
  readonly #onReport: (() => void) | undefined;
  #sink: SourceSink | undefined;
  /** Set once the first complete list went out as a snapshot: events before it are in it. */
  #delivered = false;
  /** ns/name → the uid reported for it: a pod recreated under its name (seen as MODIFIED after a re-list) drops the old uid. */
  readonly #uidOf = new Map<string, string>();
  /** ns/name → the resourceVersion last warned about: a bad pod is logged once per version. */
  readonly #warned = new Map<string, string>();
  #unsubscribe: (() => void) | undefined;
  #stopped: (() => void) | undefined;

  constructor(opts: KubeSourceOptions) {
    this.#log = opts.log ?? createLogger("registry");
    if (opts.informer) this.informer = opts.informer;
    else if (opts.client) this.informer = new Informer<Pod>({ client: opts.client, resource: PODS, log: this.#log, ...(opts.backoff ? { backoff: opts.backoff } : {}) });
    else throw new Error("KubeWorkloadSource needs a client or an informer");
    this.#owned = opts.informer === undefined;
    this.#server = opts.client?.server ?? "";
    this.#onReport = opts.onReport;
  }

  /** True once the first complete list was reported. */
  get synced(): boolean {
    return this.#delivered;
  }

  /** Resolves after the first complete list went to the registry as one snapshot (or on stop). */
  async start(sink: SourceSink): Promise<void> {
    this.#sink = sink;
    this.#unsubscribe = this.informer.onEvent((type, pod) => {
      if (this.#delivered) this.#event(type, pod);
    });
    this.informer.start();
    if (!this.informer.synced) this.#log.info("waiting for the first complete list of pods from the Kubernetes API", { server: this.#server });
    const stopped = new Promise<void>((r) => (this.#stopped = r));
    await Promise.race([this.informer.ready, stopped]);
    if (this.#sink !== sink) return;
    const ws: Workload[] = [];
    for (const pod of this.informer.list()) {
      const w = this.#model(pod);
      if (w) ws.push(w);
    }
    this.#delivered = true;
    sink.snapshot(ws);
    this.#onReport?.();
    this.#log.info("pods from the Kubernetes API in the workload registry", { workloads: ws.length, hbone: ws.filter((w) => w.protocol === "HBONE").length });
  }

  async stop(): Promise<void> {
    this.#sink = undefined;
    this.#unsubscribe?.();
    this.#stopped?.();
    if (this.#owned) await this.informer.stop();
  }

  #event(type: "ADDED" | "MODIFIED" | "DELETED", pod: Pod): void {
    const sink = this.#sink;
    if (!sink) return;
    const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
    const before = this.#uidOf.get(key);
    if (type === "DELETED") this.#warned.delete(key);
    const w = type === "DELETED" ? null : this.#model(pod);
    if (before !== undefined && before !== w?.uid) sink.remove(before);
    if (w) sink.upsert(w);
    else this.#uidOf.delete(key);
    this.#onReport?.();
  }

  /** The workload of a pod, or null (ended, or not modellable: logged once per version). */
  #model(pod: Pod): Workload | null {
    const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
    const input = podWorkloadInput(pod);
    if (!input) return null;
    try {
      const w = makeWorkload(input, { trustDomain: this.#sink?.trustDomain ?? "cluster.local", source: this.name });
      this.#uidOf.set(key, w.uid);
      return w;
    } catch (e) {
      if (!(e instanceof WorkloadInputError)) throw e;
      const rv = pod.metadata.resourceVersion ?? "";
      if (this.#warned.get(key) !== rv) {
        this.#warned.set(key, rv);
        this.#log.warn("pod left out of the workload registry", { pod: key, uid: input.uid, field: e.field, error: e.reason });
      }
      return null;
    }
  }
}
