// L4 authorization on the inbound path: one InboundAuthorizer per data-plane thread (the main
// thread's and each Worker's), asked by handlers.ts for every connection accepted on a pod's
// inbound (15006) listener and by hbone-inbound.ts for every CONNECT on its 15008 listener,
// before the upstream connect. It holds that thread's PolicySet
// (src/policy, immutable: a reload swaps in a new one) and the destination labels the registry
// knows, so the decision is a synchronous, allocation-light call on the accept path.
//
// Established connections are not re-checked when the policies change: a new set applies to new
// connections only. (ztunnel re-checks open connections and closes those no longer allowed,
// "connection closed due to policy change"; nshub may do the same later: see src/proxy/README.md.)
import { createLogger, type Logger } from "../log/logger.ts";
import { PolicySet } from "../policy/engine.ts";
import type { PolicyDocuments } from "../policy/load.ts";
import { refKey, type Decision, type PolicyWorkload } from "../policy/types.ts";
import type { ConnectionRecord, ConnectionTable, PodRef } from "./records.ts";

/**
 * Decisions kept per destination pod, at most this many (client IP, destination IP, port) keys
 * each; past it the pod's cache starts over. A plaintext decision depends on nothing else and a
 * set never changes, so a kept decision is exact until the set or the labels change (both start
 * the cache over). Measured: with 1,000 policies in the destination's namespace, evaluating
 * every connection cost 23% of the connection rate; a cache hit is one Map lookup.
 */
const DECISIONS_PER_POD = 4096;

/** Labels per workload uid, from the registry (ZDS gives none; a local-config file may). */
export type LabelsByUid = Record<string, Readonly<Record<string, string>>>;

export class InboundAuthorizer {
  #set: PolicySet;
  #labels: LabelsByUid = {};
  /**
   * The destination object per pod. PolicySet keeps what applies to a workload per object, so a
   * pod must be the same object from one connection to the next (new labels: new objects).
   */
  #dest = new WeakMap<PodRef, PolicyWorkload>();
  #decisions = new WeakMap<PolicyWorkload, Map<string, Decision>>();
  readonly #log: Logger;
  /** Policy sets applied so far in this thread (1 = the first; tests and logs). */
  generation = 0;

  constructor(
    readonly rootNamespace: string,
    log?: Logger,
  ) {
    this.#set = PolicySet.empty({ rootNamespace });
    this.#log = log ?? createLogger("proxy/authz");
  }

  get policies(): PolicySet {
    return this.#set;
  }

  setPolicies(set: PolicySet): void {
    this.#set = set;
    this.#decisions = new WeakMap();
    this.generation++;
  }

  /** Builds this thread's own set from parsed documents (what the main thread posts to Workers). */
  setDocuments(docs: PolicyDocuments): void {
    this.setPolicies(new PolicySet(docs, { rootNamespace: this.rootNamespace }));
    this.#log.debug("policies applied", { generation: this.generation, policies: this.#set.size });
  }

  setLabels(labels: LabelsByUid): void {
    this.#labels = labels;
    this.#dest = new WeakMap();
    this.#decisions = new WeakMap();
  }

  /** The pod as the policy engine sees it: namespace, name, the registry's labels. */
  destination(pod: PodRef): PolicyWorkload {
    let d = this.#dest.get(pod);
    if (!d) {
      const labels = this.#labels[pod.uid];
      d = Object.freeze({ namespace: pod.namespace, name: pod.name, ...(labels ? { labels } : {}) });
      this.#dest.set(pod, d);
    }
    return d;
  }

  /**
   * The decision for an inbound connection: plaintext (15006) proves no identity; over HBONE
   * (15008, `rec.mtls`) the client's verified certificate gives its principal.
   */
  decide(rec: ConnectionRecord): Decision {
    const destination = this.destination(rec.pod);
    let kept = this.#decisions.get(destination);
    if (!kept) this.#decisions.set(destination, (kept = new Map()));
    const principal = rec.mtls?.srcIdentity;
    const key = `${principal ?? ""} ${rec.source.ip} ${rec.originalDst.ip} ${rec.originalDst.port}`;
    let d = kept.get(key);
    if (!d) {
      d = this.#set.decide({ sourcePrincipal: principal, sourceIp: rec.source.ip, destination, destinationIp: rec.originalDst.ip, destinationPort: rec.originalDst.port, mtls: principal !== undefined });
      if (kept.size >= DECISIONS_PER_POD) kept.clear();
      kept.set(key, d);
    }
    return d;
  }

  /**
   * True when the connection may go on. Otherwise its record is closed as policy_denied (the
   * metrics count it with response_flags DENY, the access log names the policy and rule) and
   * the caller resets the client socket: nothing reaches the app.
   */
  admit(rec: ConnectionRecord, table: ConnectionTable): boolean {
    // No policy of either kind in force (the default): every connection is allowed, so the
    // accept path builds no key and looks nothing up.
    if (this.#set.size === 0) return true;
    const d = this.decide(rec);
    if (d.dryRun?.length && this.#log.enabled("debug")) {
      this.#log.debug("dry-run policies matched", { id: rec.id, dryRun: d.dryRun.map((x) => `${x.action} ${refKey(x.policy)} rules[${x.rule}]`).join(", ") });
    }
    if (d.allowed) return true;
    // No ALLOW policy matched: no single policy decided, so name the ALLOW policies that applied.
    const policy = d.policy ? refKey(d.policy) : this.#set.applicable(this.destination(rec.pod)).allow.map((p) => refKey(p.ref)).join(",");
    rec.denial = { code: d.code, ...(policy ? { policy } : {}), ...(d.rule !== undefined ? { rule: d.rule } : {}) };
    table.close(rec, "policy_denied", d.reason);
    return false;
  }
}
