// The plugin's part of the nshub configuration (the `cni` section), without loading the config
// loader unless it has something to read.
//
// src/config/load.ts (YAML + zod, about 15 ms to load in the compiled binary) is imported — and
// its errors are the plugin's errors, word for word — only when there is something for it to
// read: a config file (NSHUB_CONFIG, or /etc/nshub/config.yaml when it exists) or an NSHUB_*
// environment variable (envOverrides reads NSHUB_<SECTION>_<KEY> and NSHUB_LOG_LEVEL). With
// neither, loadConfig would return the schema's defaults, which are CNI_DEFAULTS below
// (test/unit/cni-config.test.ts asserts that they equal cniSchema.parse({})).
import { existsSync } from "node:fs";
import type { CniConfig } from "../config/schema.ts";

/** = DEFAULT_CONFIG_FILE of src/config/load.ts (not imported from there: that loads zod). */
export const DEFAULT_CONFIG_FILE = "/etc/nshub/config.yaml";

/** = cniSchema.parse({}) of src/config/schema.ts. */
export const CNI_DEFAULTS: Readonly<CniConfig> = Object.freeze({
  agentSocket: "/var/run/nshub/agent.sock",
  timeoutMs: 5_000,
  logFile: "/var/log/nshub/cni.log",
});

/** Variables named NSHUB_* that the config loader never reads (the logger reads this one). */
const NOT_CONFIG = new Set(["NSHUB_LOG_FORMAT"]);

/** True when loadConfig has something to read: a config file or an NSHUB_* override. */
export function needsConfigLoader(env: Record<string, string | undefined>, defaultFile = DEFAULT_CONFIG_FILE): boolean {
  if (env.NSHUB_CONFIG !== undefined) return true;
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && k.startsWith("NSHUB_") && !NOT_CONFIG.has(k)) return true;
  }
  return existsSync(defaultFile);
}

/** Raised for an invalid nshub configuration; the message is loadConfig's. */
export class CniConfigError extends Error {
  override name = "CniConfigError";
}

/**
 * The `cni` section: CNI_DEFAULTS, or what loadConfig makes of the file and environment (its
 * ConfigError becomes CniConfigError with the same message; anything else is rethrown).
 */
export async function loadCniConfig(env: Record<string, string | undefined>): Promise<CniConfig> {
  if (!needsConfigLoader(env)) return { ...CNI_DEFAULTS };
  const { ConfigError, loadConfig } = await import("../config/load.ts");
  try {
    return loadConfig({ env }).cni;
  } catch (e) {
    if (e instanceof ConfigError) throw new CniConfigError(e.message);
    throw e;
  }
}
