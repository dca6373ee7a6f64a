// Which connected proxies serve which pod, and what that makes of the pod's state.
//
// Several proxies can be connected over ZDS at once: during a proxy rollout the old and the new
// one overlap, and any process allowed to open the socket can connect. The wire stays Istio's
// (AddWorkload to the newest connection, DelWorkload to every one); the agent's pod state
// follows the proxies that actually serve the pod (docs/zds.md, "Several proxies"):
//   - a connection serves a pod from the moment it acks it: an Add (or Keep) in its snapshot,
//     or a live AddWorkload;
//   - an enrolled or pending pod is enrolled while at least one connected proxy serves it;
//   - a nack from one connection does not un-serve a pod that another connection serves: it is
//     logged (the ZDS server counts nacks per connection) and the pod stays enrolled;
//   - a connection that closes serves nothing any more; a pod it alone served becomes pending,
//     and the agent retries it (to the newest connection, like every AddWorkload).
// Without this, any client that connected and nacked its snapshot turned working pods pending.
//
// Acks are kept per PodEntry: a pod added again (new sandbox) is a new entry, and a pod handed
// over anew (re-enrolled) starts from none (reset), so an ack never outlives what it acked.
import type { Logger } from "../log/logger.ts";
import { setState, type PodEntry } from "./pod-entry.ts";

export class ServingProxies {
  /** Connections past their hello and not closed. */
  readonly #live = new Set<number>();
  readonly #servedBy = new WeakMap<PodEntry, Set<number>>();

  constructor(private readonly log: Logger) {}

  connected(conn: number): void {
    this.#live.add(conn);
  }

  /**
   * Connection `conn` closed: its acks go. The enrolled pods it alone served become pending;
   * returns them (the caller persists and retries them).
   */
  disconnected(conn: number, pods: Iterable<PodEntry>): PodEntry[] {
    this.#live.delete(conn);
    const orphaned: PodEntry[] = [];
    for (const e of pods) {
      const by = this.#servedBy.get(e);
      if (!by?.delete(conn) || by.size > 0 || e.state !== "enrolled") continue;
      setState(e, "pending", `the proxy that served it disconnected (connection ${conn}); waiting for a proxy to take it`);
      this.log.warn(`pod ${e.namespace}/${e.name} pending: the only proxy that served it disconnected`, { uid: e.uid, conn });
      orphaned.push(e);
    }
    return orphaned;
  }

  /** The connections serving `e`, in id order. */
  servers(e: PodEntry): number[] {
    return [...(this.#servedBy.get(e) ?? [])].sort((a, b) => a - b);
  }

  /** A new hand-over of `e` starts (its netns is sent anew): earlier acks no longer count. */
  reset(e: PodEntry): void {
    this.#servedBy.delete(e);
  }

  /**
   * `conn` acked `e`. False when that connection has closed meanwhile (its ack counts for
   * nothing). `conn` undefined: a port that does not name connections; the ack counts as is.
   */
  acked(e: PodEntry, conn: number | undefined): boolean {
    if (conn === undefined) return true;
    if (!this.#live.has(conn)) return false;
    let by = this.#servedBy.get(e);
    if (!by) this.#servedBy.set(e, (by = new Set()));
    by.add(conn);
    return true;
  }

  /** `conn` refused `e` (or failed to answer): it does not serve it. Returns who still does. */
  nacked(e: PodEntry, conn: number | undefined): number[] {
    if (conn !== undefined) this.#servedBy.get(e)?.delete(conn);
    return this.servers(e);
  }

  /**
   * Connection `conn` answered `e` in its snapshot (`error` undefined: acked). Returns whether
   * the pod's state changed.
   */
  snapshotAnswer(e: PodEntry, conn: number, error: string | undefined): boolean {
    if (e.state === "not-enrolled") return false;
    const what = `pod ${e.namespace}/${e.name}`;
    if (error === undefined) {
      if (!this.acked(e, conn) || e.state !== "pending") return false;
      setState(e, "enrolled", "acked by a proxy in its snapshot");
      this.log.info(`${what} enrolled: a proxy acked it in its snapshot`, { uid: e.uid, conn });
      return true;
    }
    const others = this.nacked(e, conn);
    if (others.length > 0) {
      this.log.warn(`${what}: proxy connection ${conn} did not take it in its snapshot; it stays enrolled, served by connection ${others.join(", ")}`, { uid: e.uid, conn, servedBy: others, error });
      return false;
    }
    setState(e, "pending", `a proxy did not take the pod in its snapshot: ${error}`);
    this.log.warn(`${what} pending: ${error}`, { uid: e.uid, conn });
    return true;
  }
}
