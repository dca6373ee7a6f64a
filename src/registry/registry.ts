// The workload registry: one model merged from several sources, asked by the data path "is this
// destination a mesh workload, and which identities may it have?".
//
// Precedence (see PRECEDENCE in ./source.ts: ZDS 300 > Kubernetes 200 > file 100; equal: the
// source added first):
//   * by uid — the workload is the one the highest source reports; the others are kept, and
//     take over when it goes (a pod leaving this node falls back to the file's entry);
//   * by IP  — among the workloads (one per uid) claiming an IP, the one from the highest source
//     wins, then ztunnel's own tie-break (a Pod over other kinds, HBONE over TCP), then the
//     smallest uid, so the answer never depends on arrival order. A pod this node serves thus
//     beats a stale file entry that still names its IP under another uid.
// HostNetwork workloads are listed but never found by IP (they share the node's addresses), as
// in ztunnel. Networks are not told apart yet: nshub assumes one network.
import { checkTrustDomain } from "../identity/spiffe.ts";
import { createLogger, type Logger } from "../log/logger.ts";
import { lookupKey } from "./ip.ts";
import type { SourceSink, WorkloadSource } from "./source.ts";
import { indexedByIp, sameWorkload, ztunnelRank, type Workload } from "./workload.ts";

export interface RegistryOptions {
  /** Trust domain of identities for workloads that name none; a bad one throws SpiffeIdError. */
  trustDomain: string;
  log?: Logger;
}

/** The answer to "is this destination in the mesh": the workload and the identities to accept. */
export interface MeshDestination {
  workload: Workload;
  /** SPIFFE IDs the peer at that IP may present (its workload's identity). */
  identities: readonly string[];
}

export interface SourceStatus {
  name: string;
  precedence: number;
  workloads: number;
  /** Why the source's last read failed (its previous workloads are still used). */
  error?: string;
  /** ms since the epoch of the last snapshot, upsert or remove. */
  updatedAt?: number;
}

/** An IP claimed by more than one workload, and who got it. */
export interface IpConflict {
  ip: string;
  winner: Workload;
  others: Workload[];
}

interface Entry {
  source: WorkloadSource;
  order: number;
  byUid: Map<string, Workload>;
  error: Error | null;
  updatedAt?: number;
  active: boolean;
}

export class WorkloadRegistry {
  readonly trustDomain: string;
  readonly #log: Logger;
  readonly #entries: Entry[] = [];
  /** uid → the winning workload and its source. */
  readonly #merged = new Map<string, { w: Workload; e: Entry }>();
  /** IP (lookup key) → uids of merged workloads claiming it. */
  readonly #byIp = new Map<string, Set<string>>();
  readonly #listeners = new Set<() => void>();
  #order = 0;
  #started = false;
  #generation = 0;

  constructor(opts: RegistryOptions) {
    this.trustDomain = checkTrustDomain(opts.trustDomain);
    this.#log = opts.log ?? createLogger("registry");
  }

  /** Adds a source; started at once when the registry already is. */
  async addSource(source: WorkloadSource): Promise<void> {
    if (this.#entries.some((e) => e.source === source || e.source.name === source.name)) throw new Error(`workload source ${source.name} added twice`);
    const e: Entry = { source, order: this.#order++, byUid: new Map(), error: null, active: true };
    this.#entries.push(e);
    this.#entries.sort((a, b) => b.source.precedence - a.source.precedence || a.order - b.order);
    if (this.#started) await source.start(this.#sink(e));
  }

  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    for (const e of [...this.#entries]) await e.source.start(this.#sink(e));
  }

  /** Stops every source and forgets their workloads. */
  async stop(): Promise<void> {
    this.#started = false;
    for (const e of this.#entries) {
      e.active = false;
      await e.source.stop();
    }
    this.#entries.length = 0;
    this.#merged.clear();
    this.#byIp.clear();
    this.#changed();
  }

  /** Every workload (one per uid), sorted by uid as ztunnel's config_dump lists them. */
  list(): Workload[] {
    return [...this.#merged.values()].map((m) => m.w).sort((a, b) => (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0));
  }

  byUid(uid: string): Workload | undefined {
    return this.#merged.get(uid)?.w;
  }

  /**
   * The labels of `uid` from the highest source that has any: ZDS knows none, so a pod this node
   * serves takes those of its entry in a file (or, later, Kubernetes) with the same uid.
   */
  labelsOf(uid: string): Readonly<Record<string, string>> | undefined {
    for (const e of this.#entries) {
      const l = e.active ? e.byUid.get(uid)?.labels : undefined;
      if (l) return l;
    }
    return undefined;
  }

  /** The workload at `ip` (any spelling, IPv4-mapped IPv6 included), by the precedence above. */
  findByIp(ip: string): Workload | undefined {
    const ranked = this.#claimants(ip);
    return ranked[0];
  }

  /** The destination's workload and identities when it is in the mesh (HBONE), else undefined. */
  meshDestination(ip: string): MeshDestination | undefined {
    const w = this.findByIp(ip);
    if (!w || w.protocol !== "HBONE") return undefined;
    return { workload: w, identities: [w.identity] };
  }

  /** IPs claimed by several workloads (operators should see a stale entry shadowed). */
  conflicts(): IpConflict[] {
    const out: IpConflict[] = [];
    for (const [ip, uids] of this.#byIp) {
      if (uids.size < 2) continue;
      const [winner, ...others] = this.#claimants(ip);
      out.push({ ip, winner: winner!, others });
    }
    return out.sort((a, b) => (a.ip < b.ip ? -1 : 1));
  }

  sources(): SourceStatus[] {
    return this.#entries.map((e) => ({
      name: e.source.name,
      precedence: e.source.precedence,
      workloads: e.byUid.size,
      ...(e.error ? { error: e.error.message } : {}),
      ...(e.updatedAt !== undefined ? { updatedAt: e.updatedAt } : {}),
    }));
  }

  /** Counts model changes; a reader can tell whether anything moved since it last looked. */
  get generation(): number {
    return this.#generation;
  }

  /** Called after every change to the model; returns the function that unsubscribes. */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #claimants(ip: string): Workload[] {
    const key = lookupKey(ip);
    const uids = key === undefined ? undefined : this.#byIp.get(key);
    if (!uids) return [];
    const ms = [...uids].map((u) => this.#merged.get(u)!);
    ms.sort((a, b) => b.e.source.precedence - a.e.source.precedence || a.e.order - b.e.order || ztunnelRank(b.w) - ztunnelRank(a.w) || (a.w.uid < b.w.uid ? -1 : 1));
    return ms.map((m) => m.w);
  }

  #sink(e: Entry): SourceSink {
    const touch = (uids: Iterable<string>) => {
      e.updatedAt = Date.now();
      let moved = false;
      for (const uid of uids) moved = this.#remerge(uid) || moved;
      if (moved) this.#changed();
    };
    return {
      trustDomain: this.trustDomain,
      snapshot: (ws) => {
        if (!e.active) return;
        const before = [...e.byUid.keys()];
        e.byUid = new Map(ws.map((w) => [w.uid, w]));
        touch(new Set([...before, ...e.byUid.keys()]));
      },
      upsert: (w) => {
        if (!e.active) return;
        e.byUid.set(w.uid, w);
        touch([w.uid]);
      },
      remove: (uid) => {
        if (!e.active || !e.byUid.delete(uid)) return;
        touch([uid]);
      },
      error: (err) => {
        if (!e.active) return;
        if (err && err.message !== e.error?.message) this.#log.warn("workload source failed; keeping its previous workloads", { source: e.source.name, workloads: e.byUid.size, error: err.message });
        e.error = err;
      },
    };
  }

  /** Re-decides one uid's winner and re-indexes its IPs; true when the model changed. */
  #remerge(uid: string): boolean {
    const old = this.#merged.get(uid);
    let next: { w: Workload; e: Entry } | undefined;
    for (const e of this.#entries) {
      const w = e.active ? e.byUid.get(uid) : undefined;
      if (w) {
        next = { w, e };
        break;
      }
    }
    if (old && next && old.e === next.e && (old.w === next.w || sameWorkload(old.w, next.w))) {
      this.#merged.set(uid, next);
      return false;
    }
    if (old && indexedByIp(old.w)) {
      for (const ip of old.w.workloadIps) {
        const set = this.#byIp.get(lookupKey(ip)!);
        set?.delete(uid);
        if (set?.size === 0) this.#byIp.delete(lookupKey(ip)!);
      }
    }
    if (!next) {
      this.#merged.delete(uid);
      return old !== undefined;
    }
    this.#merged.set(uid, next);
    if (indexedByIp(next.w)) {
      for (const ip of next.w.workloadIps) {
        const key = lookupKey(ip)!;
        let set = this.#byIp.get(key);
        if (!set) this.#byIp.set(key, (set = new Set()));
        set.add(uid);
      }
    }
    return true;
  }

  #changed(): void {
    this.#generation++;
    for (const fn of this.#listeners) {
      try {
        fn();
      } catch (err) {
        this.#log.error("workload registry listener failed", { error: err as Error });
      }
    }
  }
}
