// Runs CNI plugins the way libcni (containerd, CRI-O) does: CNI_* environment, the network config
// on stdin, each plugin's result handed to the next as `prevResult`. The plugin processes run in
// the node namespace, because `bridge` creates the bridge and the host-side veth in the namespace
// it runs in: that namespace plays the host.

import { constants as fsConstants } from "node:fs";
import { access } from "node:fs/promises";
import { join } from "node:path";
import { NetsimError, TeardownSteps } from "./errors.ts";
import { run, type ExecResult } from "./process.ts";

/** Debian's containernetworking-plugins. */
export const STD_CNI_DIR = "/usr/lib/cni";
/** CNI spec version the harness speaks (the plugins support it, Debian 12 ships v1.1.1). */
export const CNI_VERSION = "1.0.0";

export type CniCommand = "ADD" | "DEL" | "CHECK";

/** A CNI plugin failed: carries the plugin, the CNI command, and the plugin's JSON error. */
export class CniError extends Error {
  override name = "CniError";
  constructor(
    /** The plugin's `type`, i.e. the binary the harness invoked. */
    readonly plugin: string,
    readonly command: CniCommand,
    /** CNI error code from the plugin's stdout JSON; undefined if it printed no valid error. */
    readonly code: number | undefined,
    readonly msg: string,
    readonly details: string | undefined,
    readonly exitCode: number,
    readonly stderr: string,
  ) {
    const codeText = code === undefined ? "no CNI error code" : `code ${code}`;
    const detailText = details ? ` (${details})` : "";
    const stderrText = stderr.trim() ? `; stderr: ${stderr.trim()}` : "";
    super(`CNI ${command} failed in plugin "${plugin}" (${codeText}, exit ${exitCode}): ${msg}${detailText}${stderrText}`);
  }
}

/** A CNI result (spec 1.0.0); only the fields the harness reads are typed. */
export interface CniResult {
  cniVersion?: string;
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string }>;
  ips?: Array<{ address: string; gateway?: string; interface?: number }>;
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: unknown;
  [key: string]: unknown;
}

/** A plugin chained after `bridge`, like `nshub-cni` in production. */
export interface ChainPlugin {
  /** The plugin `type`: the binary name looked up in CNI_PATH. */
  type: string;
  /** Binary to use for `type`; the harness links it into its own CNI_PATH dir under that name. */
  binary?: string;
  /** Extra fields of this plugin's entry in the conflist (`name`, `cniVersion`, `prevResult` are set by the harness). */
  config?: Record<string, unknown>;
}

/** The conflist the harness writes and executes. */
export interface NetConfList {
  cniVersion: string;
  name: string;
  plugins: Array<Record<string, unknown> & { type: string }>;
}

/** What the runtime says about the sandbox on every invocation (CNI_CONTAINERID, CNI_NETNS, …). */
export interface CniRuntimeArgs {
  containerId: string;
  netnsPath: string;
  ifname: string;
  cniArgs: string;
}

/**
 * Executes CNI plugins the way libcni (containerd, CRI-O) does, with the plugin processes placed
 * in the node namespace.
 */
export class CniRunner {
  constructor(
    private readonly nodeNetns: string,
    /** CNI_PATH, searched in order for a plugin's `type`. */
    readonly cniPath: readonly string[],
    private readonly extraEnv: Readonly<Record<string, string>>,
    private readonly timeoutMs: number,
  ) {}

  /** ADD: plugins in order; each gets the previous plugin's result as `prevResult`. Returns the last result. */
  async add(list: NetConfList, rt: CniRuntimeArgs): Promise<CniResult> {
    let prev: CniResult | undefined;
    for (const plugin of list.plugins) {
      const out = await this.invoke("ADD", pluginConfig(list, plugin, prev), rt);
      prev = parseResult(plugin.type, out);
    }
    if (!prev) throw new NetsimError(`conflist ${list.name} has no plugins`);
    return prev;
  }

  /** CHECK: plugins in order, each with the cached ADD result as `prevResult` (spec, libcni). */
  async check(list: NetConfList, rt: CniRuntimeArgs, cached: CniResult): Promise<void> {
    for (const plugin of list.plugins) await this.invoke("CHECK", pluginConfig(list, plugin, cached), rt);
  }

  /**
   * DEL: plugins in reverse order, each with the cached ADD result as `prevResult` when there is
   * one (libcni does the same; after a failed ADD there is none). Unlike libcni, which stops at the
   * first failing plugin, this goes on and throws the first error at the end: teardown should
   * release everything it can.
   */
  async del(list: NetConfList, rt: CniRuntimeArgs, cached: CniResult | undefined): Promise<void> {
    const steps = new TeardownSteps();
    for (const plugin of [...list.plugins].reverse()) await steps.run(() => this.invoke("DEL", pluginConfig(list, plugin, cached), rt));
    steps.done();
  }

  private async invoke(command: CniCommand, conf: Record<string, unknown> & { type: string }, rt: CniRuntimeArgs): Promise<string> {
    const binary = await findPlugin(conf.type, this.cniPath);
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
      ...this.extraEnv,
      CNI_COMMAND: command,
      CNI_CONTAINERID: rt.containerId,
      CNI_NETNS: rt.netnsPath,
      CNI_IFNAME: rt.ifname,
      CNI_ARGS: rt.cniArgs,
      CNI_PATH: this.cniPath.join(":"),
    };
    // The plugin runs in the node namespace: that is the "host" side for `bridge` (bridge, veth).
    const r = await run(["ip", "netns", "exec", this.nodeNetns, binary], {
      stdin: JSON.stringify(conf),
      env,
      timeoutMs: this.timeoutMs,
    });
    if (r.code !== 0) throw cniErrorFrom(conf.type, command, r);
    return r.stdout;
  }
}

/** One plugin's network config as libcni builds it from a conflist entry. */
function pluginConfig(list: NetConfList, plugin: Record<string, unknown> & { type: string }, prevResult: CniResult | undefined): Record<string, unknown> & { type: string } {
  const conf: Record<string, unknown> & { type: string } = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  return conf;
}

function parseResult(plugin: string, stdout: string): CniResult {
  try {
    const r = JSON.parse(stdout) as unknown;
    if (r && typeof r === "object" && !Array.isArray(r)) return r as CniResult;
  } catch {
    // fall through
  }
  throw new NetsimError(`CNI ADD: plugin "${plugin}" exited 0 but printed no JSON result: ${JSON.stringify(stdout.slice(0, 500))}`);
}

function cniErrorFrom(plugin: string, command: CniCommand, r: ExecResult): CniError {
  // CNI spec: on failure the plugin prints {"code": N, "msg": "...", "details": "..."} on stdout.
  try {
    const e = JSON.parse(r.stdout) as { code?: unknown; msg?: unknown; details?: unknown };
    if (typeof e.code === "number") {
      return new CniError(plugin, command, e.code, String(e.msg ?? ""), e.details === undefined ? undefined : String(e.details), r.code, r.stderr);
    }
  } catch {
    // not JSON: report raw output
  }
  return new CniError(plugin, command, undefined, r.stdout.trim() || "(no output)", undefined, r.code, r.stderr);
}

/** First executable named `type` in the CNI_PATH dirs, as libcni's FindInPath does. */
async function findPlugin(type: string, dirs: readonly string[]): Promise<string> {
  assertPluginType(type);
  for (const dir of dirs) {
    const p = join(dir, type);
    try {
      await access(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  throw new NetsimError(`CNI plugin "${type}" not found in CNI_PATH ${dirs.join(":")}`);
}

/** A plugin type is a file name in CNI_PATH: no path separators, nothing a path could escape with. */
export function assertPluginType(type: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(type)) throw new NetsimError(`invalid CNI plugin type ${JSON.stringify(type)}`);
}

/** The first IPv4 address of an ADD result (the pod's IP). */
export function firstIPv4(result: CniResult): string {
  const ip = result.ips?.map((i) => i.address.split("/")[0] ?? "").find((a) => a.includes("."));
  if (!ip) throw new NetsimError(`CNI ADD result has no IPv4 address: ${JSON.stringify(result)}`);
  return ip;
}
