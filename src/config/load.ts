// Loads the configuration: flags > environment > YAML file > defaults. Errors name the file,
// the key path and what was wrong, so a bad config never starts a half-configured daemon.
import { existsSync } from "node:fs";
import { parseDocument } from "yaml";
import { z } from "zod";
import { ConfigError } from "./errors.ts";
import { readConfigText } from "./file.ts";
import { fileMode, modeWarnings, readModesAsWritten } from "./modes.ts";
import { configSchema, type Config } from "./schema.ts";
import { schemaLeaves } from "./shape.ts";

export { ConfigError };
export const DEFAULT_CONFIG_FILE = "/etc/nshub/config.yaml";

/** Key paths of every file mode in the schema (agent.zdsSocketMode, agent.apiSocketMode). */
export const MODE_KEYS: readonly string[][] = schemaLeaves(configSchema)
  .filter((l) => l.schema === fileMode)
  .map((l) => l.path);

/** What the daemon should log at startup about a valid but risky config (group/other modes). */
export function configWarnings(cfg: Config): string[] {
  return modeWarnings(cfg, MODE_KEYS);
}

export interface LoadOptions {
  /** Path of the YAML file; the default file may be absent, an explicit one must exist. */
  file?: string;
  env?: Record<string, string | undefined>;
  /** Values from command-line flags, as a partial config tree. */
  overrides?: Record<string, unknown>;
}

/**
 * Environment variables: NSHUB_<SECTION>_<KEY> in upper snake case (NSHUB_PROXY_ADMIN_ADDRESS,
 * NSHUB_LOG_LEVEL, NSHUB_CONFIG for the file). Only scalar keys are settable this way.
 */
export function envOverrides(env: Record<string, string | undefined>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const shape = configSchema.shape;
  for (const [top, schema] of Object.entries(shape)) {
    const inner = unwrapObject(schema);
    if (!inner) {
      const v = env[`NSHUB_${snake(top)}`];
      if (v !== undefined) out[top] = v;
      continue;
    }
    for (const key of Object.keys(inner.shape)) {
      const v = env[`NSHUB_${snake(top)}_${snake(key)}`];
      if (v === undefined) continue;
      (out[top] ??= {}) as Record<string, unknown>;
      // A mode's text is octal (fileMode reads it): "0600" is not the number 600.
      const isMode = MODE_KEYS.some((p) => p.length === 2 && p[0] === top && p[1] === key);
      (out[top] as Record<string, unknown>)[key] = isMode ? v : coerce(v);
    }
  }
  return out;
}

export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.NSHUB_CONFIG ?? DEFAULT_CONFIG_FILE;
  const explicit = opts.file !== undefined || env.NSHUB_CONFIG !== undefined;
  let fromFile: unknown = {};
  if (existsSync(file)) {
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
  const merged = deepMerge(deepMerge(fromFile as Record<string, unknown>, envOverrides(env)), opts.overrides ?? {});
  const parsed = configSchema.safeParse(merged);
  if (!parsed.success) throw new ConfigError(`config ${existsSync(file) ? file : "(defaults)"}: ${formatIssues(parsed.error)}`);
  return parsed.data;
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

function unwrapObject(s: z.ZodType): z.ZodObject | undefined {
  let cur: unknown = s;
  for (let i = 0; i < 5 && cur; i++) {
    if (cur instanceof z.ZodObject) return cur;
    const def = (cur as { def?: { innerType?: unknown; in?: unknown } }).def;
    cur = def?.innerType ?? def?.in;
  }
  return undefined;
}

function snake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
}

function coerce(v: string): unknown {
  if (v === "true") return true;
  if (v === "false") return false;
  if (/^-?\d+$/.test(v)) return Number(v);
  if (/^0x[0-9a-f]+$/i.test(v)) return parseInt(v, 16);
  return v;
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
