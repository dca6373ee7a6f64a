// Small statistics helpers for the benchmark (pure; unit-tested in test/unit/bench-stats.test.ts).

/** Median of the numbers (mean of the two middle ones for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/**
 * Percentile `p` (0..100) by the nearest-rank method: the smallest sample such that at least p%
 * of the samples are ≤ it. p99 of 50 samples is the largest one (what "p99 of 50" honestly means).
 */
export function percentile(xs: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be in 0..100, got ${p}`);
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  if (p === 0) return v[0]!;
  const rank = Math.ceil((p / 100) * v.length);
  return v[Math.min(v.length, Math.max(1, rank)) - 1]!;
}

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(xs: readonly number[]): Summary {
  const v = xs.filter((x) => Number.isFinite(x));
  const mean = v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
  return {
    n: v.length,
    min: v.length ? Math.min(...v) : NaN,
    p50: percentile(v, 50),
    p90: percentile(v, 90),
    p99: percentile(v, 99),
    max: v.length ? Math.max(...v) : NaN,
    mean,
  };
}

/** a / b, NaN when either is not a finite number or b is 0. */
export function ratio(a: number, b: number): number {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN;
}

/** The list rotated left by `k` (interleaving order of the paths changes per repetition). */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  if (xs.length === 0) return [];
  const s = ((k % xs.length) + xs.length) % xs.length;
  return [...xs.slice(s), ...xs.slice(0, s)];
}
