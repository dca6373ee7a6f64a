// The agent's view of the Kubernetes API (kube-enrollment.ts KubeObjects) over src/k8s: one
// watch of this node's pods (field selector spec.nodeName), one of all namespaces, and the
// client for the annotation patch. Nothing is decided before both first lists are in; through
// an API outage the watches keep what they last had (src/k8s/informer.ts).
import { Informer, KubeClient, NAMESPACES, PODS, type ClusterConfig, type Namespace, type Pod } from "../k8s/index.ts";
import type { Logger } from "../log/logger.ts";
import type { KubeObjects, KubePod } from "./kube-enrollment.ts";

export function kubePod(p: Pod): KubePod {
  const ips = (p.status?.podIPs ?? []).map((x) => x.ip);
  if (ips.length === 0 && p.status?.podIP) ips.push(p.status.podIP);
  return {
    uid: p.metadata.uid ?? "",
    namespace: p.metadata.namespace ?? "",
    name: p.metadata.name,
    labels: p.metadata.labels ?? {},
    annotations: p.metadata.annotations ?? {},
    serviceAccount: p.spec?.serviceAccountName ?? "",
    ips,
    nodeName: p.spec?.nodeName ?? "",
    hostNetwork: p.spec?.hostNetwork === true,
  };
}

export class KubeView implements KubeObjects {
  readonly pods$: Informer<Pod>;
  readonly namespaces$: Informer<Namespace>;
  readonly client: KubeClient;
  #waiters = new Map<string, Array<(p: KubePod | undefined) => void>>();

  constructor(cluster: ClusterConfig, readonly nodeName: string, log: Logger) {
    this.client = new KubeClient(cluster);
    this.pods$ = new Informer<Pod>({ client: this.client, resource: PODS, fieldSelector: `spec.nodeName=${nodeName}`, log });
    this.namespaces$ = new Informer<Namespace>({ client: this.client, resource: NAMESPACES, log });
    this.pods$.onEvent((type, p) => {
      if (type === "DELETED") return;
      const key = `${p.metadata.namespace}/${p.metadata.name}`;
      const ws = this.#waiters.get(key);
      if (!ws) return;
      this.#waiters.delete(key);
      for (const w of ws) w(kubePod(p));
    });
  }

  start(): Promise<void> {
    this.pods$.start();
    this.namespaces$.start();
    return Promise.all([this.pods$.ready, this.namespaces$.ready]).then(() => undefined);
  }

  async stop(): Promise<void> {
    await Promise.all([this.pods$.stop(), this.namespaces$.stop()]);
  }

  get synced(): boolean {
    return this.pods$.synced && this.namespaces$.synced;
  }

  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined {
    return this.namespaces$.get(undefined, name)?.metadata.labels ?? (this.namespaces$.get(undefined, name) ? {} : undefined);
  }

  pod(namespace: string, name: string): KubePod | undefined {
    const p = this.pods$.get(namespace, name);
    return p ? kubePod(p) : undefined;
  }

  *pods(): Iterable<KubePod> {
    for (const p of this.pods$.list()) yield kubePod(p);
  }

  waitForPod(namespace: string, name: string, timeoutMs: number): Promise<KubePod | undefined> {
    const now = this.pod(namespace, name);
    if (now) return Promise.resolve(now);
    const key = `${namespace}/${name}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const ws = this.#waiters.get(key)?.filter((w) => w !== done);
        if (ws?.length) this.#waiters.set(key, ws);
        else this.#waiters.delete(key);
        resolve(undefined);
      }, timeoutMs);
      const done = (p: KubePod | undefined) => {
        clearTimeout(timer);
        resolve(p);
      };
      this.#waiters.set(key, [...(this.#waiters.get(key) ?? []), done]);
    });
  }

  onChange(fn: Parameters<KubeObjects["onChange"]>[0]): void {
    this.pods$.onEvent((type, p) => fn({ kind: "pod", pod: kubePod(p), deleted: type === "DELETED" }));
    this.namespaces$.onEvent((_type, n) => fn({ kind: "namespace", name: n.metadata.name }));
  }

  async patchPodAnnotations(namespace: string, name: string, patch: Record<string, string | null>): Promise<void> {
    await this.client.patchPodAnnotations(namespace, name, patch);
  }
}
