// The pure half of `nshub install`: which CNI config file the container runtime uses, how a
// single-plugin `.conf` becomes a conflist, and adding or removing the nshub-cni entry. No file
// system access here except reading a directory listing passed in by the caller.

/** The plugin `type` the runtime looks up in the CNI bin dir; also our file name there. */
export const PLUGIN_TYPE = "nshub-cni";
/** Suffix of the backup of a config file as it was before nshub was added to it. */
export const BACKUP_SUFFIX = ".nshub-backup";
/** Extensions libcni (containerd, CRI-O) loads from the conf dir, as its `ConfFiles` does. */
export const CONFIG_EXTENSIONS = [".conf", ".conflist", ".json"] as const;

export class ConflistError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConflistError";
  }
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface Conflist extends JsonObject {
  plugins: JsonObject[];
}

export function isConfigFileName(name: string): boolean {
  return !name.startsWith(".") && CONFIG_EXTENSIONS.some((ext) => name.endsWith(ext) && name.length > ext.length);
}

/**
 * The runtime's choice among the names in the conf dir: libcni sorts the `.conf`, `.conflist`
 * and `.json` files by name and the runtime takes the first. (Hidden files are skipped here:
 * our own temp files start with a dot, and no real CNI config does.)
 */
export function primaryConfigName(names: readonly string[]): string | undefined {
  return names.filter(isConfigFileName).sort(compareBytes)[0];
}

/** Go's sort.Strings order (byte-wise), which libcni uses; not locale order. */
export function compareBytes(a: string, b: string): number {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return Buffer.compare(x, y);
}

/**
 * Where the chained list lives for a given original file: a `.conflist` stays where it is; a
 * single-plugin `.conf`/`.json` (which runtimes always read as one plugin) becomes
 * `<base>.conflist`, as Istio's installer does. `<base>.conf` < `<base>.conflist` in byte order,
 * so the converted file takes the original's place in the runtime's choice once it is removed.
 */
export function chainedName(original: string): string {
  if (original.endsWith(".conflist")) return original;
  for (const ext of [".conf", ".json"]) if (original.endsWith(ext)) return original.slice(0, -ext.length) + ".conflist";
  return original;
}

/** The original names whose chained file is `chained` (for finding a backup). */
export function originalNamesFor(chained: string): string[] {
  if (!chained.endsWith(".conflist")) return [chained];
  const base = chained.slice(0, -".conflist".length);
  return [chained, base + ".conf", base + ".json"];
}

/** Parses a CNI config file's text; `what` names the file in errors. */
export function parseConfig(text: string, what: string): JsonObject {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConflistError(`${what}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new ConflistError(`${what}: the top level must be a JSON object`);
  return v as JsonObject;
}

/**
 * The config as a conflist. A conflist is checked (a `plugins` array of objects, each with a
 * string `type`); a single plugin is wrapped the way libcni's ConfListFromConf does:
 * `{cniVersion, name, plugins: [the plugin unchanged]}`.
 */
export function toConflist(cfg: JsonObject, what: string): Conflist {
  if ("plugins" in cfg) {
    const plugins = cfg.plugins;
    if (!Array.isArray(plugins)) throw new ConflistError(`${what}: "plugins" must be an array`);
    plugins.forEach((p, i) => {
      if (typeof p !== "object" || p === null || Array.isArray(p)) throw new ConflistError(`${what}: plugins[${i}] must be an object`);
      if (typeof p.type !== "string" || p.type === "") throw new ConflistError(`${what}: plugins[${i}] has no "type"`);
    });
    if (plugins.length === 0) throw new ConflistError(`${what}: "plugins" is empty (no primary CNI plugin to chain after)`);
    return cfg as Conflist;
  }
  if (typeof cfg.type === "string" && cfg.type !== "") {
    const list: JsonObject = {};
    if (cfg.cniVersion !== undefined) list.cniVersion = cfg.cniVersion;
    if (cfg.name !== undefined) list.name = cfg.name;
    list.plugins = [cfg];
    return list as Conflist;
  }
  throw new ConflistError(`${what}: neither a conflist (no "plugins" array) nor a plugin config (no "type")`);
}

export function isNshubEntry(p: Json): boolean {
  return typeof p === "object" && p !== null && !Array.isArray(p) && p.type === PLUGIN_TYPE;
}

export function hasNshub(list: Conflist): boolean {
  return list.plugins.some(isNshubEntry);
}

/**
 * The list with exactly one nshub entry, last, carrying `agentSocket`. Keys an operator added
 * to an existing entry (e.g. `timeoutMs`) are kept; duplicates are folded into the first one.
 */
export function withNshub(list: Conflist, agentSocket: string): Conflist {
  const existing = list.plugins.filter(isNshubEntry);
  const others = list.plugins.filter((p) => !isNshubEntry(p));
  // Spreading keeps an existing entry's key order; a fresh one reads `type` first.
  const entry: JsonObject = { ...(existing[0] ?? {}), type: PLUGIN_TYPE, agentSocket };
  return { ...list, plugins: [...others, entry] };
}

export function withoutNshub(list: Conflist): Conflist {
  return { ...list, plugins: list.plugins.filter((p) => !isNshubEntry(p)) };
}

/** Semantic JSON equality: object key order does not matter, array order does. */
export function sameJson(a: Json, b: Json): boolean {
  return canonical(a) === canonical(b);
}

function canonical(v: Json): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v[k] as Json)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/** Serializes in the style of `like` (its indentation and trailing newline), 2 spaces by default. */
export function render(v: Json, like?: string): string {
  let indent: string | number = 2;
  let newline = true;
  if (like !== undefined) {
    const m = /^[{[]\s*?\r?\n([ \t]+)\S/.exec(like);
    if (m) indent = m[1]!;
    else if (/^[{[][^\n]*[}\]]\s*$/.test(like.trim())) indent = 0;
    newline = like.endsWith("\n");
  }
  return JSON.stringify(v, null, indent) + (newline ? "\n" : "");
}
