// Exponential backoff with jitter for retrying the API server: 0.5 s doubling to 30 s by
// default, each delay drawn from [0.75, 1.25] of its step so that many nodes' agents and proxies
// do not all come back at the same instant after an API server restart.

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  #step: number;

  constructor(opts: BackoffOptions = {}) {
    this.initialMs = opts.initialMs ?? 500;
    this.maxMs = opts.maxMs ?? 30_000;
    this.#step = this.initialMs;
  }

  /** The delay before the next try; each call doubles the step up to the maximum. */
  next(): number {
    const delay = Math.min(this.maxMs, Math.round(this.#step * (0.75 + Math.random() * 0.5)));
    this.#step = Math.min(this.maxMs, this.#step * 2);
    return delay;
  }

  reset(): void {
    this.#step = this.initialMs;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}
