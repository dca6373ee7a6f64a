// Messages between the main thread and the data-plane Worker threads (src/proxy/workers.ts and
// dataplane-worker.ts). Everything here is structured-clone data; fds travel as plain numbers (they
// are process-wide) and the receiving thread owns them from then on.
import type { ProxyConfig } from "../config/schema.ts";
import type { ConnectionRecord } from "./records.ts";
import type { WorkloadIdentity } from "../zds/types.ts";
import type { PolicyDocuments } from "../policy/load.ts";
import type { LabelsByUid } from "./authorize.ts";
import type { CertificatePems, MeshEntry } from "./hbone-context.ts";

/** A connection record without its observer slots (`ext` holds live metric handles). */
export type PlainRecord = Omit<ConnectionRecord, "ext"> & { ext: Record<string, never> };

export type ToWorker =
  | { t: "init"; cfg: ProxyConfig; logLevel: string; index: number; count: number }
  | { t: "add"; uid: string; info: WorkloadIdentity | undefined; fd: number }
  | { t: "del"; uid: string }
  /** A new ZDS connection began: drop pending retries (the snapshot brings the pods again). */
  | { t: "reset" }
  | { t: "level"; level: string }
  | { t: "closeAll" }
  /** A new policy set (parsed and validated by the main thread; the Worker builds its PolicySet). */
  | { t: "policies"; docs: PolicyDocuments }
  /** Destination labels per workload uid, from the main thread's registry. */
  | { t: "labels"; labels: LabelsByUid }
  /** A workload certificate issued or renewed (PEMs, memory only), or forgotten (undefined). */
  | { t: "cert"; identity: string; pems: CertificatePems | undefined }
  /** The mesh destinations (HBONE workloads by IP), from the main thread's registry. */
  | { t: "mesh"; entries: MeshEntry[] }
  | { t: "ask"; id: number; q: Question };

export type Question =
  | { q: "metrics" }
  | { q: "connections"; recent: boolean }
  /** Live connections per pod uid. */
  | { q: "podConnections" }
  | { q: "drain"; deadlineMs: number }
  /** A full garbage collection of this thread's heap (admin POST /debug/gc). */
  | { q: "gc" }
  /** This thread's policy generation and size (tests: has a reload reached every thread?). */
  | { q: "policyState" }
  /** Stop the thread's helpers (fd poller) so the Worker can be terminated. */
  | { q: "stop" };

export type FromWorker =
  | { t: "ready" }
  | { t: "answer"; id: number; data: unknown }
  | { t: "failed"; id: number; error: string };

export interface ConnectionsAnswer {
  live: PlainRecord[];
  recent?: PlainRecord[];
}

export function plainRecord(r: ConnectionRecord): PlainRecord {
  const { ext: _ext, ...rest } = r;
  return { ...rest, ext: {} };
}
