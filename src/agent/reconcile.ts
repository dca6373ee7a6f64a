// Pods whose netns died without a CNI DEL (a node crash, a runtime that lost the DEL): found by a
// periodic sweep (agent.reconcileIntervalMs) and removed from the agent and the proxy, so that
// neither keeps the dead netns open (the agent its fd, the proxy its fd and listeners there)
// waiting for a DEL that may never come.
//
// What keeps a netns alive besides open fds (the agent's and the proxy's own): a process in it,
// or a bind mount of it. So a pod's netns is gone when no bind mount of it is left at its netns
// path (CNI_NETNS, e.g. /var/run/netns/cni-…, the same identity there) and no process under
// procRoot is in it. A sandbox just created, its netns only a bind mount with no process yet, is
// alive. A pod is removed only when two sweeps in a row found the same netns gone, so that
// nothing between two steps of a runtime is mistaken for dead.
import { identityKey } from "../sys/index.ts";
import type { Logger } from "../log/logger.ts";
import { scanByIdentity, statIdentity } from "./discovery.ts";
import { errText } from "./errors.ts";
import type { HostNetns } from "./host-netns.ts";
import type { PodEntry } from "./pod-entry.ts";

export interface ReconcileContext {
  readonly procRoot: string;
  readonly host: Pick<HostNetns, "has">;
  readonly log: Logger;
  /** The pods to check. */
  pods(): Iterable<PodEntry>;
  /** Removes a pod found gone twice, if it still has the netns `key` (the agent, under its pod lock). */
  remove(uid: string, key: string): Promise<void>;
}

/** Of `pods`, those whose netns is neither at their netns path nor held by a process: uid → identity key. */
export function podsWithGoneNetns(pods: Iterable<PodEntry>, procRoot: string, host: Pick<HostNetns, "has">): Map<string, string> {
  const unreached = new Map<string, string>();
  for (const e of pods) {
    // The identity of the netns the agent acted on (the fd it holds, or the one it recorded).
    const id = e.netns?.identity ?? e.identity;
    if (!id) continue;
    const key = identityKey(id);
    const at = e.netnsPath ? statIdentity(e.netnsPath) : undefined;
    if (at && identityKey(at) === key) continue;
    unreached.set(e.uid, key);
  }
  if (unreached.size === 0) return unreached;
  const held = scanByIdentity(procRoot, new Set(unreached.values()), host);
  for (const [uid, key] of unreached) if (held.has(key)) unreached.delete(uid);
  return unreached;
}

export class NetnsReconciler {
  /** uid → netns identity key of the pods the last sweep found gone. */
  private suspects = new Map<string, string>();
  private sweeping = false;

  constructor(private readonly ctx: ReconcileContext) {}

  /** One sweep; removes the pods found gone by this sweep and the one before. Never throws. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      const gone = podsWithGoneNetns(this.ctx.pods(), this.ctx.procRoot, this.ctx.host);
      const before = this.suspects;
      this.suspects = gone;
      for (const [uid, key] of gone) {
        if (before.get(uid) !== key) continue;
        this.suspects.delete(uid);
        await this.ctx.remove(uid, key);
      }
    } catch (err) {
      this.ctx.log.error("the sweep for pods whose netns is gone failed", { error: errText(err) });
    } finally {
      this.sweeping = false;
    }
  }
}
