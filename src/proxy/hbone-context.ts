// What one data-plane thread needs for HBONE (src/hbone): the workload certificates of the
// identities it serves (the main thread's certificate manager issues them; each thread gets a
// copy of the PEMs, in memory only), the mesh destinations (the workload registry's HBONE
// workloads, by IP, with the identities they may present) and its own connection pool. The main
// thread feeds every thread's context through hbone-setup.ts; a Worker's arrives in messages.
import { HbonePool, type ClientCertificate } from "../hbone/index.ts";
import { DEFAULT_SERVICE_ACCOUNT, formatSpiffeId } from "../identity/spiffe.ts";
import type { PodRef } from "./records.ts";

/** One identity's certificate as the TLS stacks take it (no chain facts, no state). */
export interface CertificatePems extends ClientCertificate {
  identity: string;
  /** ms since the epoch. */
  notAfter: number;
}

/** A destination in the mesh: where HBONE goes instead of plaintext, and who must answer. */
export interface MeshEntry {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  /** SPIFFE IDs the destination may present. */
  identities: readonly string[];
  ips: readonly string[];
}

export class HboneContext {
  readonly pool: HbonePool;
  readonly #certs = new Map<string, CertificatePems>();
  readonly #watchers = new Map<string, Set<(c: CertificatePems) => void>>();
  #mesh = new Map<string, MeshEntry>();
  readonly #identities = new WeakMap<PodRef, string>();
  /** Set by the thread's metrics (hbone-metrics.ts): a tunnel refused or failed, and why. */
  onFailure: ((direction: "inbound" | "outbound", reason: string) => void) | undefined;

  constructor(
    readonly trustDomain: string,
    opts: { connectTimeoutMs: number },
  ) {
    this.pool = new HbonePool({ timeoutMs: opts.connectTimeoutMs });
  }

  /** A new or renewed certificate (undefined: the identity's last pod left, or it expired). */
  setCertificate(identity: string, pems: CertificatePems | undefined): void {
    if (!pems) {
      this.#certs.delete(identity);
      return;
    }
    this.#certs.set(identity, pems);
    for (const fn of this.#watchers.get(identity) ?? []) fn(pems);
  }

  /** The certificate held for `identity`, if one is valid now. */
  certificate(identity: string, now = Date.now()): CertificatePems | undefined {
    const c = this.#certs.get(identity);
    return c && c.notAfter > now ? c : undefined;
  }

  /**
   * Calls `fn` with `identity`'s certificate now (when held) and at every renewal, until the
   * returned function is called.
   */
  watchCertificate(identity: string, fn: (c: CertificatePems) => void): () => void {
    let set = this.#watchers.get(identity);
    if (!set) this.#watchers.set(identity, (set = new Set()));
    set.add(fn);
    const held = this.#certs.get(identity);
    if (held) fn(held);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.#watchers.get(identity) === set) this.#watchers.delete(identity);
    };
  }

  /** Resolves with `identity`'s certificate once one is held; rejects after `timeoutMs`. */
  waitCertificate(identity: string, timeoutMs: number): Promise<CertificatePems> {
    const held = this.certificate(identity);
    if (held) return Promise.resolve(held);
    return new Promise((resolve, reject) => {
      let stop = () => {};
      const timer = setTimeout(() => {
        stop();
        reject(new Error(`no certificate for ${identity} within ${timeoutMs} ms (see GET /certs)`));
      }, timeoutMs);
      stop = this.watchCertificate(identity, (c) => {
        if (c.notAfter <= Date.now()) return;
        clearTimeout(timer);
        queueMicrotask(() => stop());
        resolve(c);
      });
    });
  }

  /**
   * The pod's SPIFFE ID, as its certificate names it (certificates.ts podIdentity): the
   * service account "default" when ZDS gave none. Throws for a pod without a namespace.
   */
  identityOf(pod: PodRef): string {
    let id = this.#identities.get(pod);
    if (id === undefined) {
      id = formatSpiffeId({ trustDomain: this.trustDomain, namespace: pod.namespace, serviceAccount: pod.serviceAccount || DEFAULT_SERVICE_ACCOUNT });
      this.#identities.set(pod, id);
    }
    return id;
  }

  countFailure(direction: "inbound" | "outbound", reason: string): void {
    this.onFailure?.(direction, reason);
  }

  setMesh(entries: readonly MeshEntry[]): void {
    const m = new Map<string, MeshEntry>();
    for (const e of entries) for (const ip of e.ips) m.set(ip, e);
    this.#mesh = m;
  }

  /** The mesh workload at `ip` (IPv4-mapped IPv6 folded), or undefined: plaintext then. */
  meshDestination(ip: string): MeshEntry | undefined {
    return this.#mesh.get(ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip);
  }

  get meshSize(): number {
    return this.#mesh.size;
  }

  close(): void {
    this.pool.close();
  }
}

/**
 * Who is behind a peer address, for the traffic labels: a pod this thread serves, else a mesh
 * workload the registry knows (another node's pod).
 */
export function peerLookup(
  manager: { peerWorkload(ip: string): { name: string; namespace: string; serviceAccount: string } | undefined },
  ctx: HboneContext | undefined,
): (ip: string) => { name: string; namespace: string; serviceAccount: string } | undefined {
  return (ip) => {
    const local = manager.peerWorkload(ip);
    if (local || !ctx) return local;
    const m = ctx.meshDestination(ip);
    return m ? { name: m.name, namespace: m.namespace, serviceAccount: m.serviceAccount } : undefined;
  };
}
