// Enrollment from the Kubernetes API, as istio-cni decides it
// (cni/pkg/util/enablement_selector.go and podutil.go in https://github.com/istio/istio):
//   * a pod labelled `istio.io/dataplane-mode=ambient` is in the mesh;
//   * so is a pod of a namespace labelled `istio.io/dataplane-mode=ambient`, unless the pod is
//     labelled `istio.io/dataplane-mode=none`;
//   * never a `hostNetwork` pod, nor one with a sidecar (annotation `sidecar.istio.io/status`).
// Label changes enroll and unenroll running pods (no restart; the agent finds their netns as for
// `nshub enroll`), and an enrolled pod carries the annotation `ambient.istio.io/redirection:
// enabled` (removed on unenrollment), as istio-cni writes it. Operator overrides (`nshub enroll`
// / `unenroll`) still win. With Kubernetes configured, the YAML patterns of `agent.enrollment`
// are not used.
import type { Logger } from "../log/logger.ts";
import type { Decision } from "./policy.ts";

export const DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode";
export const REDIRECTION_ANNOTATION = "ambient.istio.io/redirection";
const SIDECAR_STATUS_ANNOTATION = "sidecar.istio.io/status";

/** What the agent needs to know of a pod from the API. */
export interface KubePod {
  uid: string;
  namespace: string;
  name: string;
  labels: Readonly<Record<string, string>>;
  annotations: Readonly<Record<string, string>>;
  serviceAccount: string;
  ips: readonly string[];
  nodeName: string;
  hostNetwork: boolean;
}

/** The agent's view of the API: its node's pods and every namespace (src/k8s watches, adapted). */
export interface KubeObjects {
  /** True once both first lists are complete: nothing is decided before. */
  readonly synced: boolean;
  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined;
  pod(namespace: string, name: string): KubePod | undefined;
  pods(): Iterable<KubePod>;
  /** Resolves with the pod once the watch has it (a CNI ADD can come before the watch event). */
  waitForPod(namespace: string, name: string, timeoutMs: number): Promise<KubePod | undefined>;
  /** A pod or namespace was added or changed (labels, annotations, IPs) or deleted. */
  onChange(fn: (change: { kind: "pod"; pod: KubePod; deleted: boolean } | { kind: "namespace"; name: string }) => void): void;
  /** JSON merge patch of the pod's annotations (`null` removes one). */
  patchPodAnnotations(namespace: string, name: string, patch: Record<string, string | null>): Promise<void>;
}

/** Istio's enrollment rule for one pod, with the reason in words. */
export function ambientDecision(pod: Pick<KubePod, "namespace" | "name" | "labels" | "annotations" | "hostNetwork">, namespaceLabels: Readonly<Record<string, string>> | undefined): Decision {
  const who = `pod ${pod.namespace}/${pod.name}`;
  if (pod.hostNetwork) return { enroll: false, reason: `${who} uses the node's network (hostNetwork)` };
  if (pod.annotations[SIDECAR_STATUS_ANNOTATION] !== undefined) return { enroll: false, reason: `${who} has an Istio sidecar (${SIDECAR_STATUS_ANNOTATION})` };
  const podMode = pod.labels[DATAPLANE_MODE_LABEL];
  if (podMode === "ambient") return { enroll: true, reason: `${who} is labelled ${DATAPLANE_MODE_LABEL}=ambient` };
  if (podMode === "none") return { enroll: false, reason: `${who} is labelled ${DATAPLANE_MODE_LABEL}=none (opted out)` };
  if (namespaceLabels?.[DATAPLANE_MODE_LABEL] === "ambient") return { enroll: true, reason: `namespace ${pod.namespace} is labelled ${DATAPLANE_MODE_LABEL}=ambient` };
  return { enroll: false, reason: `neither ${who} nor namespace ${pod.namespace} is labelled ${DATAPLANE_MODE_LABEL}=ambient` };
}

/** What KubeEnrollment asks of the agent (agent.ts implements it). */
export interface EnrollmentTarget {
  /** Re-applies the policy to a pod the agent knows (enrolls or disenrolls); false if unknown. */
  reapply(uid: string): Promise<boolean>;
  /** Enrolls a running pod the agent has never seen (no CNI ADD: it ran before the agent). */
  adopt(pod: { uid: string; namespace: string; name: string; serviceAccount: string; ips: readonly string[] }): Promise<void>;
  /** The pod's state in the agent, if it knows it. */
  stateOf(uid: string): "enrolled" | "pending" | "not-enrolled" | undefined;
}

/** The policy the agent asks (same shape as EnrollmentPolicy), and the watcher of label changes. */
export class KubeEnrollment {
  readonly empty = false;
  #target: EnrollmentTarget | undefined;

  constructor(
    private readonly api: KubeObjects,
    private readonly log: Logger,
    private readonly opts: { waitForPodMs?: number } = {},
  ) {}

  decide(namespace: string, name: string): Decision {
    if (!this.api.synced) return { enroll: false, unknown: true, reason: "the Kubernetes API has not been listed yet" };
    const pod = this.api.pod(namespace, name);
    if (!pod) return { enroll: false, unknown: true, reason: `pod ${namespace}/${name} is not (yet) in the Kubernetes API as watched for this node` };
    return ambientDecision(pod, this.api.namespaceLabels(namespace));
  }

  /** The pod's service account from the API (a CNI ADD from containerd's CRI does not carry it). */
  podInfo(namespace: string, name: string): { serviceAccount?: string } | undefined {
    const pod = this.api.pod(namespace, name);
    return pod ? { serviceAccount: pod.serviceAccount || undefined } : undefined;
  }

  /** Before a CNI ADD is decided: the watch may not have delivered the new pod yet. */
  async ready(namespace: string, name: string): Promise<void> {
    if (this.api.pod(namespace, name)) return;
    await this.api.waitForPod(namespace, name, this.opts.waitForPodMs ?? 5000);
  }

  /** From now on label changes enroll and unenroll running pods through `target`. */
  start(target: EnrollmentTarget): void {
    this.#target = target;
    this.api.onChange((c) => {
      if (c.kind === "namespace") {
        for (const p of this.api.pods()) if (p.namespace === c.name) void this.#apply(p);
      } else if (!c.deleted) void this.#apply(c.pod);
    });
  }

  /** Every pod of this node, once (after the first list, and after an agent restart). */
  async applyAll(): Promise<void> {
    await Promise.all([...this.api.pods()].map((p) => this.#apply(p)));
  }

  /** After the agent enrolled or disenrolled a pod: the annotation follows. */
  async annotate(namespace: string, name: string, enrolled: boolean): Promise<void> {
    const pod = this.api.pod(namespace, name);
    if (!pod) return;
    const has = pod.annotations[REDIRECTION_ANNOTATION];
    if (enrolled ? has === "enabled" : has === undefined) return;
    try {
      await this.api.patchPodAnnotations(namespace, name, { [REDIRECTION_ANNOTATION]: enrolled ? "enabled" : null });
    } catch (e) {
      this.log.warn(`cannot ${enrolled ? "set" : "remove"} ${REDIRECTION_ANNOTATION} on pod ${namespace}/${name}`, { error: (e as Error).message });
    }
  }

  async #apply(pod: KubePod): Promise<void> {
    const target = this.#target;
    if (!target || !this.api.synced) return;
    const d = ambientDecision(pod, this.api.namespaceLabels(pod.namespace));
    try {
      const known = await target.reapply(pod.uid);
      if (!known && d.enroll && pod.ips.length > 0) {
        this.log.info(`enrolling running pod ${pod.namespace}/${pod.name}: ${d.reason}`, { uid: pod.uid });
        await target.adopt(pod);
      }
    } catch (e) {
      this.log.warn(`applying the enrollment of pod ${pod.namespace}/${pod.name} failed; retried at the next change or resync`, { uid: pod.uid, error: (e as Error).message });
    }
    const state = target.stateOf(pod.uid);
    if (state !== undefined) await this.annotate(pod.namespace, pod.name, state === "enrolled");
  }
}
