// The contract between the registry and whatever tells it about workloads. A source is started
// with a sink and reports through it: a full snapshot (a file read, a Kubernetes list, the ZDS
// snapshot), then upserts and removes (pods coming and going, a watch's events), and errors
// (a bad file: the source keeps what it reported before). A Kubernetes list+watch maps onto it
// directly: list → snapshot, ADDED/MODIFIED → upsert, DELETED → remove, re-list → snapshot.
import type { Workload } from "./workload.ts";

/**
 * Which source wins when two describe the same uid or claim the same IP: the higher number.
 * The proxy's own view of the pods it serves (ZDS) is first-hand and current; the Kubernetes
 * API is authoritative for the cluster; a hand-written file is the least likely to be current.
 */
export const PRECEDENCE = {
  zds: 300,
  kubernetes: 200,
  file: 100,
} as const;

export interface SourceSink {
  /** The trust domain of identities derived for workloads that name none. */
  readonly trustDomain: string;
  /** Everything this source knows now; what it reported before and is not named is gone. */
  snapshot(workloads: readonly Workload[]): void;
  /** One workload added or changed (by uid). */
  upsert(workload: Workload): void;
  /** One workload gone; unknown uids are ignored. */
  remove(uid: string): void;
  /** The source could not read its input; what it reported before stays. `null` clears it. */
  error(err: Error | null): void;
}

export interface WorkloadSource {
  /** Shown in listings and errors: "zds", "file:/etc/nshub/workloads.yaml", "kubernetes". */
  readonly name: string;
  /** See PRECEDENCE. Equal precedence: the source added first wins. */
  readonly precedence: number;
  /** Begins reporting into `sink`; resolves once the first snapshot (or error) is in. */
  start(sink: SourceSink): Promise<void> | void;
  /** Stops watching; the registry drops this source's workloads. */
  stop(): Promise<void> | void;
}
