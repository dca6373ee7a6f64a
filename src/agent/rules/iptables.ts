// Pure helpers around the iptables-save / iptables-restore text formats: parsing what a
// namespace has, and planning one `iptables-restore --noflush` transaction that moves a set of
// "our" chains (and the jumps to them) from what is there to what should be there.
//
// Nothing here runs a tool; pod.ts and host.ts feed it `iptables-save` output and send its
// result to `iptables-restore`. Keeping the planning pure lets unit tests pin the exact text.

/** One rule in a chain: `-A <chain> <spec>`. */
export interface RuleLine {
  chain: string;
  /** Everything after `-A <chain> `, e.g. `-j NSHUB_PRERT`. */
  spec: string;
}

/** One table of an `iptables-save` listing: every chain (built-in and user) with its rule specs. */
export interface SavedTable {
  /** Chain name → rule specs in order. Built-in chains are present even when empty. */
  chains: Map<string, string[]>;
}

/** Table name → its chains, as `iptables-save` printed them. */
export type SavedTables = Map<string, SavedTable>;

/** Parses `iptables-save` output (counters, comments and policies are ignored). */
export function parseIptablesSave(text: string): SavedTables {
  const tables: SavedTables = new Map();
  let cur: SavedTable | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("*")) {
      const name = line.slice(1).trim();
      cur = tables.get(name) ?? { chains: new Map() };
      tables.set(name, cur);
    } else if (line === "COMMIT") {
      cur = undefined;
    } else if (cur && line.startsWith(":")) {
      const name = line.slice(1).split(" ")[0] ?? "";
      if (name && !cur.chains.has(name)) cur.chains.set(name, []);
    } else if (cur && line.startsWith("-A ")) {
      const rest = line.slice(3);
      const sp = rest.indexOf(" ");
      const chain = sp < 0 ? rest : rest.slice(0, sp);
      const spec = sp < 0 ? "" : rest.slice(sp + 1);
      const list = cur.chains.get(chain) ?? [];
      list.push(spec);
      cur.chains.set(chain, list);
    }
  }
  return tables;
}

/** Splits a rule spec into words the way iptables-restore does (double quotes, backslash escapes). */
export function tokenizeSpec(spec: string): string[] {
  const out: string[] = [];
  let word = "";
  let inWord = false;
  let quoted = false;
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i]!;
    if (quoted) {
      if (c === "\\" && i + 1 < spec.length) word += spec[++i];
      else if (c === '"') quoted = false;
      else word += c;
    } else if (c === '"') {
      quoted = true;
      inWord = true;
    } else if (c === " " || c === "\t") {
      if (inWord) out.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) out.push(word);
  return out;
}

/** The `-j`/`-g` target of a rule spec, if any. */
export function ruleTarget(spec: string): string | undefined {
  const t = tokenizeSpec(spec);
  for (let i = t.length - 2; i >= 0; i--) {
    if (t[i] === "-j" || t[i] === "-g" || t[i] === "--jump" || t[i] === "--goto") return t[i + 1];
  }
  return undefined;
}

/** Rules in chains other than `ours` that jump to one of `ours` (in listing order). */
export function jumpsTo(table: SavedTable | undefined, ours: readonly string[]): RuleLine[] {
  const found: RuleLine[] = [];
  if (!table) return found;
  for (const [chain, specs] of table.chains) {
    if (ours.includes(chain)) continue;
    for (const spec of specs) {
      const target = ruleTarget(spec);
      if (target !== undefined && ours.includes(target)) found.push({ chain, spec });
    }
  }
  return found;
}

/** What one table should hold of ours. */
export interface TableSpec {
  table: string;
  /** Our chains, in declaration order. */
  chains: string[];
  /** Rules in other (built-in) chains that jump to ours, in order (Istio appends them). */
  jumps: RuleLine[];
  /** The rules of our chains, in the order they are appended. */
  rules: RuleLine[];
}

/**
 * The restore lines (without `*table`/`COMMIT`) that turn what `current` holds of `ours` into
 * `desired` — or, when `desired` is undefined, remove every one of `ours` and every jump to them.
 *
 *   * our desired chains are declared (`:C - [0:0]`: created, or flushed when they exist) and
 *     refilled, so re-applying never duplicates a rule in them;
 *   * a desired jump that is already there (same chain, same spec) is kept where it is; a missing
 *     one is appended; duplicates and any other rule jumping to one of ours are deleted;
 *   * our chains that are not desired are flushed and deleted, after the jumps to them are gone.
 *
 * An empty result means there is nothing to change (only possible when removing).
 */
export function planTable(current: SavedTable | undefined, desired: TableSpec | undefined, ours: readonly string[]): string[] {
  const existing = jumpsTo(current, ours);
  const present = ours.filter((c) => current?.chains.has(c));
  const wanted = desired?.chains ?? [];
  const declare = wanted.map((c) => `:${c} - [0:0]`);
  const add: string[] = [];
  const remaining = [...existing];
  for (const j of desired?.jumps ?? []) {
    const i = remaining.findIndex((r) => r.chain === j.chain && r.spec === j.spec);
    if (i >= 0) remaining.splice(i, 1);
    else add.push(`-A ${j.chain} ${j.spec}`);
  }
  const del = remaining.map((r) => `-D ${r.chain} ${r.spec}`);
  const rules = (desired?.rules ?? []).map((r) => `-A ${r.chain} ${r.spec}`);
  const drop = present.filter((c) => !wanted.includes(c)).flatMap((c) => [`-F ${c}`, `-X ${c}`]);
  return [...declare, ...del, ...add, ...rules, ...drop];
}

/** `*table` … `COMMIT` blocks for every table with lines, in the given order. */
export function renderRestore(blocks: ReadonlyArray<{ table: string; lines: readonly string[] }>): string {
  let out = "";
  for (const b of blocks) {
    if (b.lines.length === 0) continue;
    out += `*${b.table}\n${b.lines.join("\n")}\nCOMMIT\n`;
  }
  return out;
}

/**
 * What `current` holds of `ours`, as a TableSpec (undefined when nothing): used to put a table
 * back the way it was when a later step of an apply fails.
 */
export function snapshotTable(table: string, current: SavedTable | undefined, ours: readonly string[]): TableSpec | undefined {
  const chains = ours.filter((c) => current?.chains.has(c));
  const jumps = jumpsTo(current, ours);
  if (chains.length === 0 && jumps.length === 0) return undefined;
  const rules = chains.flatMap((c) => (current?.chains.get(c) ?? []).map((spec) => ({ chain: c, spec })));
  return { table, chains, jumps, rules };
}

// ---------------------------------------------------------------------------------------------
// canonical form: how iptables-save prints a rule we wrote

/**
 * Rewrites a rule spec into the form `iptables-save` prints it in, so that desired and actual
 * rules compare as strings: `-s/-d/-i/-o/-p` first (in that order, each with its `!`), a bare
 * address gets its `/32` (`/128`), an option that needs the protocol's implicit match
 * (`--dport`, `--sport`) gets `-m tcp`/`-m udp` before it, and REDIRECT's `--to-port` is
 * spelled `--to-ports`. Covers the options nshub's own rules use.
 */
export function canonicalRuleSpec(spec: string): string {
  const t = tokenizeSpec(spec);
  const base: Record<string, string> = {};
  const matches: string[][] = [];
  let target: string[] = [];
  let current: string[] | undefined;
  let proto: string | undefined;
  let neg = false;
  for (let i = 0; i < t.length; i++) {
    const w = t[i]!;
    if (w === "!") {
      neg = true;
      continue;
    }
    const bang = neg ? ["!"] : [];
    neg = false;
    if (["-s", "-d", "-i", "-o", "-p"].includes(w)) {
      let v = t[++i] ?? "";
      if ((w === "-s" || w === "-d") && !v.includes("/")) v += v.includes(":") ? "/128" : "/32";
      if (w === "-p") proto = v;
      base[w] = [...bang, w, v].join(" ");
      current = undefined;
    } else if (w === "-m") {
      current = [w, t[++i] ?? ""];
      matches.push(current);
      if (bang.length) current.unshift(...bang);
    } else if (w === "-j" || w === "-g") {
      target = [w, ...t.slice(i + 1)].map((x) => (x === "--to-port" ? "--to-ports" : x));
      break;
    } else {
      if (!current) {
        // An option with no -m before it: the protocol's implicit match (iptables loads it).
        current = ["-m", proto ?? "tcp"];
        matches.push(current);
      }
      current.push(...bang, w);
      // Option values (a word after an option that is not itself an option or a `!`).
      while (i + 1 < t.length && !t[i + 1]!.startsWith("-") && t[i + 1] !== "!") current.push(t[++i]!);
    }
  }
  const words = [base["-s"], base["-d"], base["-i"], base["-o"], base["-p"], ...matches.map((m) => m.join(" ")), target.join(" ")];
  return words.filter((w): w is string => !!w).join(" ");
}
