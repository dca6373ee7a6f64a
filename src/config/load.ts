// Loads the configuration: flags > environment > YAML file > defaults. Errors name the file,
// the key path and what was wrong, so a bad config never starts a half-configured daemon.
import { existsSync } from "node:fs";
import { parseDocument } from "yaml";
import { z } from "zod";
import { readEnv } from "./env.ts";
import { ConfigError } from "./errors.ts";
import { readConfigText } from "./file.ts";
import { fileMode, modeWarnings, readModesAsWritten } from "./modes.ts";
import { configSchema, type Config } from "./schema.ts";
import { schemaLeaves } from "./shape.ts";
import { portWarnings, type CrossIssue } from "./validate.ts";

export { ConfigError };
export const DEFAULT_CONFIG_FILE = "/etc/nshub/config.yaml";

/** Key paths of every file mode in the schema (agent.zdsSocketMode, agent.apiSocketMode). */
export const MODE_KEYS: readonly string[][] = schemaLeaves(configSchema)
  .filter((l) => l.schema === fileMode)
  .map((l) => l.path);

/**
 * What a daemon should log at startup about its section of a valid but risky config: modes that
 * grant group/other anything (agent), ports the agent's rules do not redirect to (proxy).
 */
export function configWarnings(cfg: Config, section: "agent" | "proxy"): string[] {
  const all = [...modeWarnings(cfg, MODE_KEYS), ...portWarnings(cfg)];
  return all.filter((w) => w.startsWith(`${section}.`));
}

export interface LoadOptions {
  /** Path of the YAML file; the default file may be absent, an explicit one must exist. */
  file?: string;
  env?: Record<string, string | undefined>;
  /** Values from command-line flags, as a partial config tree. */
  overrides?: Record<string, unknown>;
}

/**
 * The config keys set by NSHUB_* variables, as a partial config tree (variables that cannot be
 * read are left out: loadConfig reports them). See ./env.ts.
 */
export function envOverrides(env: Record<string, string | undefined>): Record<string, unknown> {
  return readEnv(env).values;
}

export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.NSHUB_CONFIG ?? DEFAULT_CONFIG_FILE;
  const explicit = opts.file !== undefined || env.NSHUB_CONFIG !== undefined;
  let fromFile: unknown = {};
  const hasFile = existsSync(file);
  if (hasFile) {
    const text = readConfigText(file);
    const doc = parseDocument(text);
    const bad = doc.errors[0];
    if (bad) throw new ConfigError(`config ${file}: not valid YAML: ${bad.message.split("\n")[0]}`);
    readModesAsWritten(doc, MODE_KEYS);
    try {
      fromFile = doc.toJS() ?? {};
    } catch (e) {
      throw new ConfigError(`config ${file}: not valid YAML: ${(e as Error).message.split("\n")[0]}`);
    }
    if (typeof fromFile !== "object" || Array.isArray(fromFile)) throw new ConfigError(`config ${file}: the top level must be a mapping`);
  } else if (explicit) {
    throw new ConfigError(`config ${file}: no such file`);
  }
  const fromEnv = readEnv(env);
  const flags = opts.overrides ?? {};
  const merged = deepMerge(deepMerge(fromFile as Record<string, unknown>, fromEnv.values), flags);
  const parsed = configSchema.safeParse(merged);
  if (parsed.success && fromEnv.errors.length === 0) return parsed.data;
  // Each error is blamed on where its value came from: a flag, a variable, the file.
  const sources: Sources = { file: hasFile ? `config ${file}` : "defaults", inFile: leafPaths(fromFile as Record<string, unknown>), env: fromEnv.sources, flags: leafPaths(flags) };
  const lines: [string, string][] = fromEnv.errors.map((e) => [e.variable, e.message]);
  for (const issue of parsed.error?.issues ?? []) lines.push(describeIssue(issue, sources));
  throw new ConfigError(joinBySource(lines));
}

interface Sources {
  /** "config <file>", or "defaults" without a file. */
  file: string;
  /** Dotted key paths the file sets. */
  inFile: Set<string>;
  /** Dotted key path → "NAME=value". */
  env: Map<string, string>;
  /** Dotted key paths set by flags. */
  flags: Set<string>;
}

/** Where the value at `path` (or the nearest key above it) came from, and the key path itself. */
function sourceOf(path: readonly PropertyKey[], s: Sources): { source: string; key: string } {
  for (let n = path.length; n > 0; n--) {
    const key = path.slice(0, n).join(".");
    if (s.flags.has(key)) return { source: "command line", key };
    const v = s.env.get(key);
    if (v) return { source: v, key };
  }
  return { source: s.file, key: path.join(".") };
}

/** [source, message]: the message names the key unless the source (a variable) already does. */
function describeIssue(issue: z.core.$ZodIssue, s: Sources): [string, string] {
  const cross = issue.code === "custom" ? (issue.params as Partial<CrossIssue> | undefined) : undefined;
  if (cross?.keys && cross.text) {
    // Between keys: blamed on the first key that is not a default; the others' sources are
    // named where they differ from it.
    const from = cross.keys.map((k) => (s.inFile.has(k.join(".")) || s.env.has(k.join(".")) || s.flags.has(k.join(".")) ? sourceOf(k, s).source : "default"));
    const source = from.find((f) => f !== "default") ?? s.file;
    return [source, cross.text(cross.keys.map((k, i) => (from[i] === source ? k.join(".") : `${k.join(".")} (${from[i]})`)))];
  }
  if (issue.code === "unrecognized_keys") {
    const { source } = sourceOf([...issue.path, issue.keys[0]!], s);
    const where = issue.path.length ? `${issue.path.join(".")}: ` : "";
    return [source, `${where}unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}`];
  }
  const { source, key } = sourceOf(issue.path, s);
  if (source !== s.env.get(key)) return [source, `${issue.path.join(".") || "(top level)"}: ${issue.message}`];
  // Set by a variable, which names the key already; for a list, which item.
  const rest = issue.path.slice(key.split(".").length);
  return [source, rest.length && typeof rest[0] === "number" ? `item ${rest[0] + 1}: ${issue.message}` : issue.message];
}

/** "source: a; b; other source: c", in the order the sources first appear. */
function joinBySource(lines: readonly [string, string][]): string {
  const groups = new Map<string, string[]>();
  for (const [source, msg] of lines) groups.set(source, [...(groups.get(source) ?? []), msg]);
  return [...groups].map(([source, msgs]) => `${source}: ${msgs.join("; ")}`).join("; ");
}

function leafPaths(tree: Record<string, unknown>, prefix = ""): Set<string> {
  const out = new Set<string>();
  for (const [k, v] of Object.entries(tree)) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (isPlain(v)) for (const q of leafPaths(v, p)) out.add(q);
    else out.add(p);
  }
  return out;
}

export function formatIssues(err: z.ZodError): string {
  return err.issues
    .map((i) => {
      const path = i.path.join(".") || "(top level)";
      if (i.code === "unrecognized_keys") return `${path === "(top level)" ? "" : path + ": "}unknown key${i.keys.length > 1 ? "s" : ""} ${i.keys.map((k) => JSON.stringify(k)).join(", ")}`;
      return `${path}: ${i.message}`;
    })
    .join("; ");
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] = isPlain(prev) && isPlain(v) ? deepMerge(prev, v) : v;
  }
  return out;
}

function isPlain(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
