// "Did you mean …?" for a mistyped name (config keys, environment variables, file fields):
// the known name within two edits. Further away is a different name, not a typo.

/** Levenshtein distance between a and b. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** The known name closest to `name` within two edits (the first of equals), or undefined. */
export function closestName(name: string, known: Iterable<string>, opts: { ignoreCase?: boolean } = {}): string | undefined {
  const norm = (s: string) => (opts.ignoreCase ? s.toLowerCase() : s);
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = editDistance(norm(name), norm(k));
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best;
}
