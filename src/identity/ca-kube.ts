// `nshub ca serve --kubernetes`: who is calling and which identities it may have, the check
// istiod makes for ztunnel (istio/istio security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go,
// security/pkg/k8s/tokenreview/k8sauthn.go, security/pkg/server/ca/node_auth.go):
//
// 1. The bearer token is the node proxy's own service-account token: a TokenReview (audiences
//    --token-audience, istio-ca by default) says whose it is, `system:serviceaccount:<ns>:<sa>`.
// 2. That service account must be a trusted node agent (--node-agent-sa, istiod's
//    CA_TRUSTED_NODE_ACCOUNTS).
// 3. Its node: the TokenReview's user.extra `authentication.kubernetes.io/node-name` (pod-bound
//    tokens, Kubernetes ≥ 1.30), else the pod named by `…/pod-name` (UID and service account
//    checked, as istiod does) looked up in the pods watch, its spec.nodeName.
// 4. The identity spiffe://<td>/ns/<ns>/sa/<sa> is signed only if a pod with that namespace and
//    service account is scheduled on that node (not Succeeded/Failed), per the pods watch.
//
// Nothing is decided before the watch's first complete list (kube_unavailable: UNAVAILABLE);
// through an API outage the last list is kept (src/k8s/informer.ts), but each call still needs a
// TokenReview, so service-account callers get UNAVAILABLE until the API server answers again.
import { describeError, Informer, loadClusterConfig, PODS, type ClusterConfig, type InformerOptions, type KubeClient, type Pod, type TokenReviewResult } from "../k8s/index.ts";
import type { Logger } from "../log/logger.ts";
import { CaRefusal } from "./ca-signer.ts";
import type { WorkloadIdentity } from "./spiffe.ts";

export const NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name";
export const POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name";
export const POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid";
/** The proxy DaemonSet's service account in deploy/kubernetes (istiod's default is <its namespace>/ztunnel). */
export const DEFAULT_NODE_AGENTS = ["nshub-system/nshub-proxy"];
/** What ztunnel's projected token is issued for, and istiod's TOKEN_AUDIENCES default. */
export const DEFAULT_TOKEN_AUDIENCES = ["istio-ca"];
/** A TokenReview that takes longer is answered UNAVAILABLE (callers give up after 10 s). */
const REVIEW_TIMEOUT_MS = 8_000;
/** Pods that no longer run need no certificate; istiod's watch drops Failed ones the same way. */
const POD_FIELD_SELECTOR = "status.phase!=Failed,status.phase!=Succeeded";
const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export interface KubeAuthorityOptions {
  client: Pick<KubeClient, "server" | "list" | "watch" | "createTokenReview">;
  /** "<namespace>/<service account>" of the node agents (the proxies): they may ask for their node's pods' identities. */
  nodeAgents?: string[];
  /** Audiences for the TokenReview (the token must have been issued for one). */
  audiences?: string[];
  log: Logger;
  /** For tests: the pods watch's retry backoff. */
  backoff?: InformerOptions["backoff"];
}

/** A caller authenticated by its service-account token. */
export interface KubeCaller {
  node: string;
  /** "<namespace>/<name>" */
  serviceAccount: string;
  /** "<namespace>/<name>" of the pod the token is bound to, when it says. */
  pod?: string;
  /** Where the node came from: the token's node-name, or its pod's spec.nodeName in the watch. */
  nodeFrom: "token" | "pod";
}

/** The API server for `ca serve --kubernetes` (client-go's order; src/cli may not import src/k8s). */
export function loadKubeCluster(kubeconfig?: string): ClusterConfig {
  return loadClusterConfig({ kubeconfig });
}

/** "ns/sa" → checked; throws naming the flag. */
export function parseServiceAccountRef(ref: string, what = "--node-agent-sa"): string {
  const [ns, sa, ...rest] = ref.split("/");
  if (rest.length > 0 || !ns || !sa || !NAME.test(ns) || !NAME.test(sa)) throw new Error(`${what}: expected <namespace>/<service account>, e.g. nshub-system/nshub-proxy; got ${JSON.stringify(ref)}`);
  return `${ns}/${sa}`;
}

export class KubeNodeAuthority {
  readonly pods: Informer<Pod>;
  readonly nodeAgents: ReadonlySet<string>;
  readonly audiences: string[];
  readonly #client: KubeAuthorityOptions["client"];
  /** "node\0ns\0sa" → keys of the pods that make it so; "ns/name" → its slot. */
  readonly #slots = new Map<string, Set<string>>();
  readonly #slotOf = new Map<string, string>();

  constructor(o: KubeAuthorityOptions) {
    this.#client = o.client;
    this.nodeAgents = new Set((o.nodeAgents?.length ? o.nodeAgents : DEFAULT_NODE_AGENTS).map((r) => parseServiceAccountRef(r)));
    this.audiences = o.audiences?.length ? o.audiences : DEFAULT_TOKEN_AUDIENCES;
    this.pods = new Informer<Pod>({ client: o.client, resource: PODS, fieldSelector: POD_FIELD_SELECTOR, log: o.log, backoff: o.backoff });
    this.pods.onEvent((type, p) => this.#index(type === "DELETED" ? undefined : p, `${p.metadata.namespace}/${p.metadata.name}`));
  }

  start(): this {
    this.pods.start();
    return this;
  }

  stop(): Promise<void> {
    return this.pods.stop();
  }

  /** The first complete list of pods is in (stays true through API outages). */
  get synced(): boolean {
    return this.pods.synced;
  }

  /** The node agent whose token this is, and its node; throws CaRefusal. */
  async authenticate(token: string): Promise<KubeCaller> {
    let review: TokenReviewResult;
    try {
      review = await withTimeout(this.#client.createTokenReview(token, this.audiences), REVIEW_TIMEOUT_MS);
    } catch (e) {
      throw new CaRefusal("kube_unavailable", `cannot review the token: API server ${this.#client.server}: ${describeError(e)}`);
    }
    if (!review.authenticated) throw new CaRefusal("unauthenticated", `the API server does not accept the token for audience ${this.audiences.join(", ")}: ${review.error || "not authenticated"}`);
    const user = review.user ?? {};
    const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(user.username ?? "");
    if (!m || !(user.groups ?? []).includes("system:serviceaccounts")) throw new CaRefusal("unauthenticated", `the token is not a service account's (user ${JSON.stringify(user.username ?? "")})`);
    const [, ns, sa] = m as unknown as [string, string, string];
    const serviceAccount = `${ns}/${sa}`;
    if (!this.nodeAgents.has(serviceAccount)) {
      throw new CaRefusal("not_node_agent", `service account ${serviceAccount} is not a node agent of this CA (trusted: ${[...this.nodeAgents].join(", ")}; --node-agent-sa)`);
    }
    const extra = (k: string) => user.extra?.[k]?.[0] || undefined;
    const podName = extra(POD_NAME_EXTRA);
    const pod = podName ? `${ns}/${podName}` : undefined;
    const node = extra(NODE_NAME_EXTRA);
    if (node) return { node, serviceAccount, pod, nodeFrom: "token" };
    if (!podName) {
      throw new CaRefusal("node_unknown", `the token of ${serviceAccount} is not bound to a pod (the TokenReview has no ${NODE_NAME_EXTRA} or ${POD_NAME_EXTRA}): give the proxy a projected service-account token`);
    }
    this.#requireSynced();
    const p = this.pods.get(ns, podName);
    if (!p) throw new CaRefusal("node_unknown", `the caller's pod ${pod} is not among the running pods the CA watches (just created, or gone)`);
    const uid = extra(POD_UID_EXTRA);
    if (uid && p.metadata.uid !== uid) throw new CaRefusal("node_unknown", `the caller's pod ${pod} has uid ${p.metadata.uid ?? "?"}, the token was issued to uid ${uid} (the pod was re-created)`);
    if ((p.spec?.serviceAccountName ?? "") !== sa) throw new CaRefusal("node_unknown", `the caller's pod ${pod} runs as ${ns}/${p.spec?.serviceAccountName ?? "?"}, not ${serviceAccount}`);
    if (!p.spec?.nodeName) throw new CaRefusal("node_unknown", `the caller's pod ${pod} is not scheduled on a node`);
    return { node: p.spec.nodeName, serviceAccount, pod, nodeFrom: "pod" };
  }

  /** Throws CaRefusal unless a pod with the identity's namespace and service account is scheduled on `node`. */
  authorize(node: string, id: WorkloadIdentity): void {
    this.#requireSynced();
    if ((this.#slots.get(slot(node, id.namespace, id.serviceAccount))?.size ?? 0) > 0) return;
    throw new CaRefusal("not_on_node", `no running pod with service account ${id.namespace}/${id.serviceAccount} is scheduled on node ${node}`);
  }

  #requireSynced(): void {
    if (!this.pods.synced) throw new CaRefusal("kube_unavailable", `the CA has not listed the pods yet (API server ${this.#client.server}); nothing is signed before the first complete list`);
  }

  #index(p: Pod | undefined, key: string): void {
    const before = this.#slotOf.get(key);
    const phase = p?.status?.phase;
    const after = p?.spec?.nodeName && p.spec.serviceAccountName && phase !== "Succeeded" && phase !== "Failed" ? slot(p.spec.nodeName, p.metadata.namespace ?? "", p.spec.serviceAccountName) : undefined;
    if (before === after) return;
    if (before !== undefined) {
      const set = this.#slots.get(before)!;
      set.delete(key);
      if (set.size === 0) this.#slots.delete(before);
      this.#slotOf.delete(key);
    }
    if (after !== undefined) {
      let set = this.#slots.get(after);
      if (!set) this.#slots.set(after, (set = new Set()));
      set.add(key);
      this.#slotOf.set(key, after);
    }
  }
}

function slot(node: string, ns: string, sa: string): string {
  return `${node}\0${ns}\0${sa}`;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${ms / 1000} s`), { name: "TimeoutError" })), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
