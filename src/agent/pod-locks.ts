// One request per pod at a time: the agent runs every transition of a pod (agent.ts) through its
// pod UID's lock, so a CNI ADD, a DEL, an operator's enroll, a retry and the dead-netns sweep
// never interleave on the same pod. Requests for different pods run side by side.

export class PodLocks {
  /** uid → the settled tail of the requests queued for it. */
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Whether a request for `uid` is running or queued. */
  has(uid: string): boolean {
    return this.tails.has(uid);
  }

  /** Runs `fn` once every earlier request for `uid` has finished (whatever their outcome). */
  async run<T>(uid: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(uid) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(uid, settled);
    try {
      return await run;
    } finally {
      if (this.tails.get(uid) === settled) this.tails.delete(uid);
    }
  }
}
