// Policies from the Kubernetes API: informers on AuthorizationPolicy and PeerAuthentication
// (security.istio.io/v1, all namespaces), turned into the same PolicyDocuments the file source
// gives, through the same validation (load.ts `parsePolicyText`, on the object as JSON), and
// delivered through the same callbacks.
//   * Nothing before both informers have their first complete list: a set built from half the
//     objects could lack a DENY. Then every change rebuilds the set (changes that arrive together,
//     as a re-list's do, make one rebuild); a set equal to the last one (e.g. only `status`
//     changed, which istiod writes) is not delivered again.
//   * An invalid object (no admission webhook stopped it) is reported with kind, namespace/name
//     and field, once per version. Its last valid version stays in force; an object that was
//     never valid is left out. This is the file source's rule — a bad edit never drops what was
//     enforced — applied per object: in a cluster, one team's broken object must not freeze
//     every other namespace's policies the way one bad file freezes its folder.
//   * During an API outage the informers keep their caches and report nothing: the last set
//     stays in force.
import { AUTHORIZATION_POLICIES, Informer, PEER_AUTHENTICATIONS, type InformerOptions, type IstioObject, type KubeClient } from "../k8s/index.ts";
import { createLogger, type Logger } from "../log/logger.ts";
import { formatLoadError, parsePolicyText, type LoadError, type PolicyDocuments } from "./load.ts";

type Docs = PolicyDocuments["authorizationPolicies"][number] | PolicyDocuments["peerAuthentications"][number];

export interface PolicyKubeSourceOptions {
  client: Pick<KubeClient, "server" | "list" | "watch">;
  /** A set that differs from the last one (`files` is always empty: the objects' origins say `kubernetes:`). */
  onUpdate: (docs: PolicyDocuments & { files: string[] }) => void;
  /** The invalid objects now (each held at its last valid version or left out); [] once there are none. */
  onError?: (errors: LoadError[]) => void;
  backoff?: InformerOptions["backoff"];
  log?: Logger;
}

interface Checked {
  resourceVersion: string;
  doc?: Docs;
  errors: LoadError[];
}

/** Fields the API server or istiod change without changing what a policy says. */
function stable(o: IstioObject): unknown {
  const { resourceVersion: _rv, managedFields: _mf, generation: _g, ...metadata } = o.metadata as IstioObject["metadata"] & { managedFields?: unknown };
  return { kind: o.kind, metadata, spec: o.spec };
}

export class PolicyKubeSource {
  readonly informers: readonly Informer<IstioObject>[];
  readonly #opts: PolicyKubeSourceOptions;
  readonly #log: Logger;
  /** "Kind ns/name" → the validation of the version last seen. */
  readonly #checked = new Map<string, Checked>();
  /** "Kind ns/name" → its last valid version, kept in force while a newer one is invalid. */
  readonly #lastGood = new Map<string, Docs>();
  #fingerprint: string | undefined;
  #errorsKey = "[]";
  #scheduled = false;
  #closed = false;
  #stopped: (() => void) | undefined;
  /** True once the first set (both lists complete) was delivered. */
  loaded = false;
  /** Sets built so far (tests wait on it). */
  rebuilds = 0;
  /** The last set's counts, for status pages. */
  counts = { authorizationPolicies: 0, peerAuthentications: 0, invalid: 0 };

  constructor(opts: PolicyKubeSourceOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? createLogger("policy");
    this.informers = [AUTHORIZATION_POLICIES, PEER_AUTHENTICATIONS].map(
      (resource) => new Informer<IstioObject>({ client: opts.client, resource, log: this.#log, ...(opts.backoff ? { backoff: opts.backoff } : {}) }),
    );
  }

  get server(): string {
    return this.#opts.client.server;
  }

  /** Starts watching; resolves once the first set (from both complete lists) was delivered, or on close. */
  async start(): Promise<void> {
    for (const inf of this.informers) {
      inf.onEvent(() => this.#schedule());
      inf.start();
    }
    this.#log.info("waiting for the first complete lists of AuthorizationPolicy and PeerAuthentication objects", { server: this.server });
    const closed = new Promise<void>((r) => (this.#stopped = r));
    await Promise.race([Promise.all(this.informers.map((i) => i.ready)), closed]);
    if (this.#closed) return;
    this.loaded = true;
    this.rebuild();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#stopped?.();
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  /** Builds the set from the informers' caches now and delivers it if it changed. */
  rebuild(): void {
    if (this.#closed || !this.loaded) return;
    this.rebuilds++;
    const aps: PolicyDocuments["authorizationPolicies"] = [];
    const pas: PolicyDocuments["peerAuthentications"] = [];
    const errors: LoadError[] = [];
    const present = new Set<string>();
    for (const inf of this.informers) {
      // In a stable order: PeerAuthentications of equal age are ranked by load order.
      const objs = inf.list().sort((a, b) => (`${a.metadata.namespace}/${a.metadata.name}` < `${b.metadata.namespace}/${b.metadata.name}` ? -1 : 1));
      for (const o of objs) {
        const key = `${o.kind} ${o.metadata.namespace}/${o.metadata.name}`;
        present.add(key);
        const c = this.#check(key, o);
        if (c.doc) this.#lastGood.set(key, c.doc);
        else errors.push(...c.errors);
        const doc = c.doc ?? this.#lastGood.get(key);
        if (!doc) continue;
        if (doc.object.kind === "AuthorizationPolicy") aps.push(doc as PolicyDocuments["authorizationPolicies"][number]);
        else pas.push(doc as PolicyDocuments["peerAuthentications"][number]);
      }
    }
    for (const k of [...this.#checked.keys()]) if (!present.has(k)) this.#checked.delete(k);
    for (const k of [...this.#lastGood.keys()]) if (!present.has(k)) this.#lastGood.delete(k);
    this.counts = { authorizationPolicies: aps.length, peerAuthentications: pas.length, invalid: new Set(errors.map((e) => e.object)).size };
    const fingerprint = JSON.stringify([...aps, ...pas].map((d) => stable(d.object as IstioObject)));
    if (fingerprint !== this.#fingerprint) {
      this.#fingerprint = fingerprint;
      this.#log.info("policies from the Kubernetes API", { server: this.server, authorizationPolicies: aps.length, peerAuthentications: pas.length, invalid: this.counts.invalid });
      this.#opts.onUpdate({ authorizationPolicies: aps, peerAuthentications: pas, files: [] });
    }
    const errorsKey = JSON.stringify(errors);
    if (errorsKey !== this.#errorsKey) {
      this.#errorsKey = errorsKey;
      this.#opts.onError?.(errors);
    }
  }

  /** Changes that arrive together (a re-list's diff) make one rebuild. */
  #schedule(): void {
    if (!this.loaded || this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      try {
        this.rebuild();
      } catch (e) {
        // A bug here must not take the proxy down; the set in force stays.
        this.#log.error("policy rebuild failed; the policies in force stay", { error: e as Error });
      }
    });
  }

  /** Validates one object's current version (once per version), as the file loader does. */
  #check(key: string, o: IstioObject): Checked {
    const rv = o.metadata.resourceVersion ?? "";
    const known = this.#checked.get(key);
    if (known && known.resourceVersion === rv) return known;
    const { managedFields: _mf, ...metadata } = o.metadata as IstioObject["metadata"] & { managedFields?: unknown };
    const file = `kubernetes:${o.metadata.namespace}/${o.metadata.name}@${rv}`;
    // JSON is YAML: one line, one document, so every origin is `<file>:1 (document 1)`.
    const r = parsePolicyText(JSON.stringify({ ...o, metadata }), file);
    const doc = r.authorizationPolicies[0] ?? r.peerAuthentications[0];
    const c: Checked = { resourceVersion: rv, errors: r.errors, ...(doc && r.errors.length === 0 ? { doc } : {}) };
    this.#checked.set(key, c);
    if (r.errors.length > 0) {
      const held = this.#lastGood.get(key);
      for (const e of r.errors) this.#log.error(`policy error: ${formatLoadError(e)}`, { object: key, resourceVersion: rv, field: e.path });
      this.#log.error(held ? `${key} is invalid: its last valid version stays in force (${held.origin.file})` : `${key} is invalid and was never valid: left out`, { object: key, resourceVersion: rv, errors: r.errors.length });
    }
    return c;
  }
}
