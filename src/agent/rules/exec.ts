// Running iptables/ip/ipset for the rules modules: argv arrays only (Bun.spawn, never a shell),
// input on stdin, optionally inside another network namespace. Every failure becomes a
// RulesError naming the step, the namespace and the tool's stderr.
//
// A tool runs in another namespace by being spawned from inside it: Bun.spawn forks the child
// synchronously on the calling thread, and a child inherits the netns of the thread that
// created it, so the JS thread enters the netns (withNetns), spawns, and is back home before
// anything else runs. This replaced `nsenter --net=<path> -- <tool>`, which cost one extra exec
// (~1 ms) per tool. Its output is read afterwards, from home: pipes belong to no namespace.
import { readFileSync } from "node:fs";
import { writeStdin } from "../../util/stdin.ts";
import { Netns, NotNetnsError, SysError, withNetns } from "../../sys/index.ts";

/** Why a rules operation failed. */
export type RulesErrorReason =
  /** The options or an argument (mark, port, address, uid, a path that is no netns) were invalid; nothing was run. */
  | "invalid-input"
  /** The namespace path does not exist (the pod is gone). */
  | "netns-missing"
  /** A tool exited non-zero, timed out or could not be started. */
  | "tool-failed";

export class RulesError extends Error {
  override name = "RulesError";
  constructor(
    /** What was being done: "iptables-restore", "ip rule add", "ipset add", … */
    readonly step: string,
    /** The netns path the step ran in; undefined = the agent's own namespace. */
    readonly netns: string | undefined,
    readonly reason: RulesErrorReason,
    readonly detail: string,
    /** The tool's stderr (trimmed), when a tool ran. */
    readonly stderr = "",
    readonly exitCode: number | undefined = undefined,
  ) {
    const where = netns ? ` in netns ${netns}` : "";
    const code = exitCode === undefined ? "" : ` (exit ${exitCode})`;
    const err = stderr ? `: ${stderr}` : "";
    super(`${step}${where} failed${code}: ${detail}${err}`);
  }
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Run inside this (open) network namespace; wins over `netnsPath`, which then only labels errors. */
  netns?: Netns;
  /** Run inside the network namespace at this path (opened for this one call); default: our own. */
  netnsPath?: string;
  /** Written to the tool's stdin (closed empty otherwise). */
  stdin?: string;
  timeoutMs?: number;
}

export const DEFAULT_TOOL_TIMEOUT_MS = 30_000;

// The agent may be started with a minimal PATH; the tools live in sbin. LC_ALL=C keeps their
// messages (which we match, e.g. "File exists") stable.
const TOOL_ENV: Record<string, string> = {
  PATH: [process.env.PATH ?? "", "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"].filter(Boolean).join(":"),
  LC_ALL: "C",
};

/**
 * Opens the network namespace at `netnsPath` (the caller closes it). Throws a RulesError:
 * "netns-missing" when the path does not exist, "invalid-input" when it is no netns.
 * Holding the fd keeps the namespace alive for the whole operation, whatever happens to the path.
 */
export function openNetns(netnsPath: string, step = "open netns"): Netns {
  if (typeof netnsPath !== "string" || !netnsPath.startsWith("/") || netnsPath.includes("\0")) {
    throw new RulesError(step, String(netnsPath), "invalid-input", "netns path must be an absolute path");
  }
  try {
    return Netns.open(netnsPath);
  } catch (e) {
    if (e instanceof NotNetnsError) throw new RulesError(step, netnsPath, "invalid-input", e.message);
    if (e instanceof SysError && e.code === "ENOENT") throw new RulesError(step, netnsPath, "netns-missing", "no such file");
    throw new RulesError(step, netnsPath, "tool-failed", `open: ${(e as Error).message}`);
  }
}

let warmedUp = false;

/**
 * Once per process, a first spawn from the home namespace. Threads inherit their creator's netns,
 * so a helper thread Bun might start lazily on its first spawn (e.g. a waiter thread where pidfd
 * is unavailable; Bun 1.4.5 starts none here, see the rules-pod test) is created here and not
 * inside a pod, where it would stay for good.
 */
function warmUpSpawn(): void {
  if (warmedUp) return;
  warmedUp = true;
  try {
    Bun.spawn(["true"], { stdin: "ignore", stdout: "ignore", stderr: "ignore", env: TOOL_ENV });
  } catch {
    // No `true` on PATH: the spawn machinery was still initialised.
  }
}

/**
 * Runs a tool to completion. Never throws for a non-zero exit (see `runStep`); throws a
 * RulesError only when `netnsPath` cannot be opened.
 */
export async function runTool(argv: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  const own = opts.netns === undefined && opts.netnsPath !== undefined ? openNetns(opts.netnsPath) : undefined;
  const ns = opts.netns ?? own;
  const spawn = () =>
    Bun.spawn([...argv], {
      // Input through a pipe (see writeStdin).
      stdin: opts.stdin === undefined ? "ignore" : "pipe",
      stdout: "pipe",
      stderr: "pipe",
      env: TOOL_ENV,
      timeout: opts.timeoutMs ?? DEFAULT_TOOL_TIMEOUT_MS,
      killSignal: "SIGKILL",
    });
  let proc;
  try {
    if (ns) warmUpSpawn();
    // Inside `ns` only for the synchronous fork (see the header).
    proc = ns ? withNetns(ns, spawn) : spawn();
  } catch (e) {
    // ENOENT for the tool's binary (not installed).
    return { code: 127, stdout: "", stderr: `cannot run ${argv[0]}: ${(e as Error).message}` };
  } finally {
    // The child is in the namespace now; our fd is no longer needed.
    own?.close();
  }
  if (opts.stdin !== undefined) await writeStdin(proc, opts.stdin);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (proc.signalCode !== null) return { code: 128 + 9, stdout, stderr: `${stderr}killed by ${proc.signalCode} (timeout)` };
  return { code, stdout, stderr };
}

/** Reads a small file with the calling thread inside `ns`: /proc/sys/net shows the reader's netns. */
export function readFileIn(ns: Netns, path: string): string | undefined {
  return withNetns(ns, () => {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return undefined;
    }
  });
}

/** Runs a tool and throws a RulesError naming `step` when it fails. */
export async function runStep(step: string, argv: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  const r = await runTool(argv, opts);
  if (r.code !== 0) throw toolError(step, argv, r, opts.netnsPath);
  return r;
}

export function toolError(step: string, argv: readonly string[], r: ToolResult, netnsPath: string | undefined): RulesError {
  return new RulesError(step, netnsPath, "tool-failed", `${argv.join(" ")}`, r.stderr.trim(), r.code);
}

// ---------------------------------------------------------------------------------------------
// serialization: one operation at a time per namespace (an apply racing a remove in the same pod
// would otherwise read stale iptables-save output)

const locks = new Map<string, Promise<unknown>>();

export async function withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(key) ?? Promise.resolve();
  const run = prev.then(fn, fn);
  const settled = run.then(
    () => undefined,
    () => undefined,
  );
  locks.set(key, settled);
  try {
    return await run;
  } finally {
    if (locks.get(key) === settled) locks.delete(key);
  }
}

// ---------------------------------------------------------------------------------------------
// iptables backend

export type IptablesBackend = "nft" | "legacy";

/** The binaries of one backend. */
export interface IptablesTools {
  backend: IptablesBackend;
  save: { ipv4: string; ipv6: string };
  restore: { ipv4: string; ipv6: string };
  /** Extra `*-restore` arguments besides --noflush (legacy: wait for the xtables lock). */
  restoreArgs: readonly string[];
}

export function iptablesTools(backend: IptablesBackend): IptablesTools {
  return backend === "nft"
    ? {
        backend,
        save: { ipv4: "iptables-nft-save", ipv6: "ip6tables-nft-save" },
        restore: { ipv4: "iptables-nft-restore", ipv6: "ip6tables-nft-restore" },
        restoreArgs: [],
      }
    : {
        backend,
        save: { ipv4: "iptables-legacy-save", ipv6: "ip6tables-legacy-save" },
        restore: { ipv4: "iptables-legacy-restore", ipv6: "ip6tables-legacy-restore" },
        restoreArgs: ["--wait=10"],
      };
}

let detected: Promise<IptablesBackend> | undefined;

/**
 * The iptables backend, detected once per process in the agent's own namespace: `iptables-nft`
 * when it is installed and `iptables-nft-save` works (the nf_tables API is usable), else
 * `iptables-legacy` when its save works. Only reads (a save), never changes a rule.
 * `NSHUB_IPTABLES_BACKEND=nft|legacy` in the environment forces one (like Istio's
 * FORCE_IPTABLES_BINARY); the options of the rules functions override both.
 */
export function detectIptablesBackend(): Promise<IptablesBackend> {
  detected ??= (async () => {
    const forced = process.env.NSHUB_IPTABLES_BACKEND;
    if (forced === "nft" || forced === "legacy") return forced;
    if (forced) throw new RulesError("detect iptables backend", undefined, "invalid-input", `NSHUB_IPTABLES_BACKEND must be "nft" or "legacy", not ${JSON.stringify(forced)}`);
    const nft = await runTool(["iptables-nft-save"]);
    if (nft.code === 0) return "nft";
    const legacy = await runTool(["iptables-legacy-save"]);
    if (legacy.code === 0) return "legacy";
    detected = undefined; // let a later call retry (modules may get loaded)
    throw new RulesError(
      "detect iptables backend",
      undefined,
      "tool-failed",
      "neither iptables-nft-save nor iptables-legacy-save works",
      `nft: ${nft.stderr.trim()}; legacy: ${legacy.stderr.trim()}`,
    );
  })();
  return detected;
}

/** The tools for `backend`, or for the detected backend when it is undefined. */
export async function resolveTools(backend?: IptablesBackend): Promise<IptablesTools> {
  if (backend !== undefined && backend !== "nft" && backend !== "legacy") {
    throw new RulesError("select iptables backend", undefined, "invalid-input", `backend must be "nft" or "legacy", not ${JSON.stringify(backend)}`);
  }
  return iptablesTools(backend ?? (await detectIptablesBackend()));
}
