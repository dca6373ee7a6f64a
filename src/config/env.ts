// Environment variables: every key of the config file is NSHUB_<PATH> in upper snake case
// (proxy.adminAddress → NSHUB_PROXY_ADMIN_ADDRESS, agent.enrollment.namespaces.include →
// NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE). Values are read by the key's type, lists are
// comma-separated, and a value that cannot be read, or an NSHUB_* variable that is neither a key
// nor one nshub reads for something else, is an error naming the variable: a typo must not leave
// a daemon running on a default.
import { fileMode } from "./modes.ts";
import { configSchema } from "./schema.ts";
import { schemaLeaves, unwrap, type Leaf } from "./shape.ts";
import { closestName } from "../util/did-you-mean.ts";

/** NSHUB_* variables that are not config keys, and who reads them. */
export const NOT_CONFIG_VARIABLES: Readonly<Record<string, string>> = {
  NSHUB_CONFIG: "the config file's path (src/config/load.ts)",
  NSHUB_LOG_FORMAT: "json or text logs (src/log/logger.ts)",
  NSHUB_IPTABLES_BACKEND: "nft or legacy (src/agent/rules/exec.ts)",
  NSHUB_SKIP_BUILD: "scripts/test",
  NSHUB_BENCH_REBUILD: "scripts/bench",
  NSHUB_TEST_PROXY_BIN: "test/fixtures/proxy-harness.ts",
};
/** Prefixes kept for the test and bench harnesses' own knobs: never config keys. */
const HARNESS_PREFIXES = ["NSHUB_TEST_", "NSHUB_BENCH_"];

type Kind = "number" | "boolean" | "string" | "mode";
export interface EnvVariable {
  name: string;
  path: string[];
  kind: Kind;
  /** Comma-separated list of `kind` items. */
  list: boolean;
}

export interface EnvReading {
  /** The values, as a partial config tree. */
  values: Record<string, unknown>;
  /** Dotted key path → the variable that set it, as `NAME=value`. */
  sources: Map<string, string>;
  /** Variables that could not be read: `NAME=value` (or NAME) and what is wrong. */
  errors: { variable: string; message: string }[];
}

const snake = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();

function kindOf(s: Leaf["schema"]): Kind {
  if (s === fileMode) return "mode";
  const t = s.def.type;
  return t === "number" ? "number" : t === "boolean" ? "boolean" : "string";
}

/** Every config key's variable, from the schema. */
export const ENV_VARIABLES: readonly EnvVariable[] = schemaLeaves(configSchema).map(({ path, schema }) => {
  const name = `NSHUB_${path.map(snake).join("_")}`;
  if (schema.def.type !== "array") return { name, path, kind: kindOf(schema), list: false };
  const element = unwrap((schema.def as unknown as { element: Leaf["schema"] }).element);
  return { name, path, kind: kindOf(element), list: true };
});
const BY_NAME = new Map(ENV_VARIABLES.map((v) => [v.name, v]));

const WHOLE = "expected a whole number (decimal, or hex as 0x…)";

/** One value of `kind`, or the reason it is not one. */
function readValue(kind: Kind, text: string): { value: unknown } | { error: string } {
  switch (kind) {
    case "number":
      if (/^-?\d+$/.test(text)) return { value: Number(text) };
      if (/^0x[0-9a-f]+$/i.test(text)) return { value: parseInt(text, 16) };
      return { error: WHOLE };
    case "boolean": {
      const t = text.toLowerCase();
      if (t === "true" || t === "1") return { value: true };
      if (t === "false" || t === "0") return { value: false };
      return { error: "expected true or false (or 1 or 0)" };
    }
    default:
      // Strings, enums and modes: the schema reads them (a mode's text is octal).
      return { value: text };
  }
}

/** Shown in messages: long values are cut. */
export const shown = (name: string, value: string) => `${name}=${value.length > 80 ? `${value.slice(0, 77)}...` : value}`;

/** Reads the NSHUB_* variables of `env`: the config keys' values, their sources, and errors. */
export function readEnv(env: Record<string, string | undefined>): EnvReading {
  const out: EnvReading = { values: {}, sources: new Map(), errors: [] };
  for (const [name, raw] of Object.entries(env)) {
    if (raw === undefined || !name.startsWith("NSHUB_")) continue;
    const v = BY_NAME.get(name);
    if (!v) {
      if (name in NOT_CONFIG_VARIABLES || HARNESS_PREFIXES.some((p) => name.startsWith(p))) continue;
      const near = suggest(name);
      out.errors.push({
        variable: name,
        message: `not an nshub variable${near ? `; did you mean ${near}?` : " (config keys are NSHUB_<SECTION>_<KEY>: see the README's Configuration section)"}`,
      });
      continue;
    }
    let value: unknown;
    if (v.list) {
      const items = raw.trim() === "" ? [] : raw.split(",").map((s) => s.trim());
      const read = items.map((item) => readValue(v.kind, item));
      const bad = read.findIndex((r) => "error" in r);
      if (bad >= 0) {
        out.errors.push({ variable: shown(name, raw), message: `item ${bad + 1} ${JSON.stringify(items[bad])}: ${(read[bad] as { error: string }).error}` });
        continue;
      }
      value = read.map((r) => (r as { value: unknown }).value);
    } else {
      const r = readValue(v.kind, raw);
      if ("error" in r) {
        out.errors.push({ variable: shown(name, raw), message: r.error });
        continue;
      }
      value = r.value;
    }
    let node = out.values;
    for (const k of v.path.slice(0, -1)) node = (node[k] ??= {}) as Record<string, unknown>;
    node[v.path[v.path.length - 1]!] = value;
    out.sources.set(v.path.join("."), shown(name, raw));
  }
  return out;
}

/** The known variable `name` was probably meant to be, if one is close. */
function suggest(name: string): string | undefined {
  const known = [...BY_NAME.keys(), ...Object.keys(NOT_CONFIG_VARIABLES)];
  const squash = (s: string) => s.replace(/_/g, "");
  const same = known.find((k) => squash(k) === squash(name));
  if (same) return same;
  return closestName(name, known);
}
