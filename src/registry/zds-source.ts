// The pods this node's proxy serves, as the proxy sees them: it learns uid, name, namespace and
// service account from ZDS (`AddWorkload`'s WorkloadInfo) and the IPs from inside the pod's
// netns, and hands them here. An in-memory source: the proxy calls upsert when a pod's
// listeners are up, remove when it stops, and replaceAll after a ZDS snapshot (SnapshotSent),
// so pods not named in the snapshot go. Calls before the registry starts are kept and become
// the first snapshot. These pods are in the mesh: protocol HBONE unless told otherwise.
import { createLogger, type Logger } from "../log/logger.ts";
import { PRECEDENCE, type SourceSink, type WorkloadSource } from "./source.ts";
import { makeWorkload, WorkloadInputError, type Protocol, type Workload } from "./workload.ts";

export interface ZdsPod {
  uid: string;
  name: string;
  namespace: string;
  /** Empty means Kubernetes' "default", as ztunnel assumes. */
  serviceAccount: string;
  ips: readonly string[];
  /** Defaults to the source's node. */
  node?: string;
  protocol?: Protocol;
  labels?: Record<string, string>;
}

export interface ZdsSourceOptions {
  /** This node's name, recorded as each pod's `node`. */
  node?: string;
  log?: Logger;
}

export class ZdsWorkloadSource implements WorkloadSource {
  readonly name = "zds";
  readonly precedence = PRECEDENCE.zds;
  readonly #node: string;
  readonly #log: Logger;
  /** What the proxy told us, kept as given: the trust domain is only known once started. */
  readonly #pods = new Map<string, ZdsPod>();
  #sink: SourceSink | undefined;

  constructor(opts: ZdsSourceOptions = {}) {
    this.#node = opts.node ?? "";
    this.#log = opts.log ?? createLogger("registry");
  }

  start(sink: SourceSink): void {
    this.#sink = sink;
    sink.snapshot(this.#models([...this.#pods.values()]));
  }

  stop(): void {
    this.#sink = undefined;
  }

  /**
   * Adds or updates a pod. False (and a warning logged) when it cannot be modelled, e.g. no
   * namespace yet (a KeepWorkload without info): the proxy serves it, the registry skips it.
   */
  upsert(pod: ZdsPod): boolean {
    const w = this.#model(pod);
    if (w === null) return false;
    this.#pods.set(pod.uid, pod);
    this.#sink?.upsert(w);
    return true;
  }

  remove(uid: string): void {
    if (this.#pods.delete(uid)) this.#sink?.remove(uid);
  }

  /** Everything the proxy serves now (after a ZDS snapshot); pods not named are removed. */
  replaceAll(pods: readonly ZdsPod[]): void {
    this.#pods.clear();
    for (const p of pods) if (this.#model(p) !== null) this.#pods.set(p.uid, p);
    this.#sink?.snapshot(this.#models([...this.#pods.values()]));
  }

  /** The pods held, as given (tests, admin). */
  pods(): ZdsPod[] {
    return [...this.#pods.values()];
  }

  #models(pods: ZdsPod[]): Workload[] {
    return pods.map((p) => this.#model(p)).filter((w): w is Workload => w !== null);
  }

  /** The model, or null (logged) when the pod cannot be modelled. */
  #model(pod: ZdsPod): Workload | null {
    try {
      return makeWorkload(
        {
          uid: pod.uid,
          name: pod.name,
          namespace: pod.namespace,
          serviceAccount: pod.serviceAccount,
          workloadIps: pod.ips,
          node: pod.node ?? this.#node,
          protocol: pod.protocol ?? "HBONE",
          ...(pod.labels ? { labels: pod.labels } : {}),
        },
        // Before start the trust domain is unknown: check the pod's parts with a stand-in.
        { trustDomain: this.#sink?.trustDomain ?? "cluster.local", source: this.name },
      );
    } catch (e) {
      if (!(e instanceof WorkloadInputError)) throw e;
      this.#log.warn("pod left out of the workload registry", { uid: pod.uid, pod: `${pod.namespace}/${pod.name}`, field: e.field, error: e.reason });
      return null;
    }
  }
}
