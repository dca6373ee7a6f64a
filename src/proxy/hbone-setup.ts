// The main thread's side of HBONE (with proxy.ca): it feeds every data-plane thread's
// HboneContext (hbone-context.ts) — its own directly, the Workers' by message — with
//   * the workload certificates: each certificate the manager issues or renews (key and chain
//     PEMs; in memory only, never on disk or in an admin answer), forgotten when the identity's
//     last pod leaves or the certificate expires;
//   * the mesh destinations: the registry's HBONE workloads (this node's pods from ZDS, other
//     nodes' from proxy.workloadsFile) by IP, with the identities they may present. An IP
//     several workloads claim goes to the one the registry ranks first.
import type { ProxyConfig } from "../config/schema.ts";
import type { CertificateManager } from "../identity/cert-manager.ts";
import type { Logger } from "../log/logger.ts";
import type { WorkloadRegistry } from "../registry/registry.ts";
import { HboneContext, type CertificatePems, type MeshEntry } from "./hbone-context.ts";
import type { WorkerPool } from "./workers.ts";

export class ProxyHbone {
  readonly ctx: HboneContext;
  readonly #certs = new Map<string, CertificatePems>();
  #mesh: MeshEntry[] = [];
  #meshKey = "";
  #pool: WorkerPool | undefined;

  constructor(
    cfg: ProxyConfig,
    certs: CertificateManager,
    private readonly registry: WorkloadRegistry,
    private readonly log: Logger,
  ) {
    this.ctx = new HboneContext(cfg.ca.trustDomain, { connectTimeoutMs: cfg.connectTimeoutMs });
    certs.onEvent((e) => {
      if (e.type === "issued") {
        const c = e.cert;
        this.#setCertificate(e.identity, { identity: e.identity, keyPem: c.keyPem, presented: c.presented, roots: c.roots, notAfter: c.notAfter.getTime() });
      } else if (e.type === "dropped" || e.type === "expired") {
        this.#setCertificate(e.identity, undefined);
      }
    });
    registry.onChange(() => this.#meshChanged());
    this.#meshChanged();
  }

  /** From now on every change also goes to the Workers; they get the current state first. */
  attachWorkers(pool: WorkerPool): void {
    this.#pool = pool;
    for (const [identity, pems] of this.#certs) pool.setCertificate(identity, pems);
    pool.setMesh(this.#mesh);
  }

  /** The mesh as the threads have it (config_dump, tests). */
  get mesh(): readonly MeshEntry[] {
    return this.#mesh;
  }

  close(): void {
    this.ctx.close();
  }

  #setCertificate(identity: string, pems: CertificatePems | undefined): void {
    if (pems) this.#certs.set(identity, pems);
    else this.#certs.delete(identity);
    this.ctx.setCertificate(identity, pems);
    this.#pool?.setCertificate(identity, pems);
  }

  #meshChanged(): void {
    const mesh: MeshEntry[] = [];
    for (const w of this.registry.list()) {
      if (w.protocol !== "HBONE") continue;
      const ips = w.workloadIps.filter((ip) => this.registry.findByIp(ip)?.uid === w.uid);
      if (ips.length === 0) continue;
      mesh.push({ uid: w.uid, name: w.name, namespace: w.namespace, serviceAccount: w.serviceAccount, identities: [w.identity], ips });
    }
    const key = JSON.stringify(mesh);
    if (key === this.#meshKey) return;
    this.#meshKey = key;
    this.#mesh = mesh;
    this.ctx.setMesh(mesh);
    this.#pool?.setMesh(mesh);
    this.log.debug("mesh destinations", { workloads: mesh.length, ips: this.ctx.meshSize });
  }
}
