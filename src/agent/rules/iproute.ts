// The fwmark ip rule and the table's local route inside a pod: read with ONE `ip -batch -`
// (rule show + route show) and changed with ONE more (only the commands needed), instead of
// one exec for each of show, add, show and replace.
//
// `ip -batch` without `-force` stops at the first command that fails and names it on stderr
// ("Command failed -:N"), so the commands before it are known to have succeeded: that is what
// the callers undo, and what they re-run from after an "already so" answer (File exists, …).
import type { Netns } from "../../sys/index.ts";
import type { IpFamily } from "./constants.ts";
import { runTool, toolError, RulesError } from "./exec.ts";
import { ipRouteArgs, ipRuleArgs, type ResolvedInpodOptions } from "./inpod.ts";

export const familyFlag = (f: IpFamily): "-4" | "-6" => (f === "ipv6" ? "-6" : "-4");

/** Where and how the `ip` commands run. */
export interface IpTarget {
  ns: Netns;
  /** Names the namespace in errors. */
  netnsPath: string;
  timeoutMs: number | undefined;
}

/** What one family holds of ours. */
export interface IpState {
  /** Copies of the fwmark rule (more than 1 only when added by hand or by a kernel without duplicate checks). */
  rules: number;
  /** The table holds `local default dev lo`. */
  route: boolean;
}

interface RuleEntry {
  priority?: number;
  fwmark?: string;
  fwmask?: string;
  table?: string | number;
}

interface RouteEntry {
  type?: string;
  dst?: string;
  dev?: string;
}

/** Reads the rule list and the route table in one exec. */
export async function readIpState(t: IpTarget, o: ResolvedInpodOptions, f: IpFamily): Promise<IpState> {
  const argv = ["ip", familyFlag(f), "-j", "-batch", "-"];
  const r = await runTool(argv, { netns: t.ns, stdin: `rule show\nroute show table ${o.routeTable}\n`, timeoutMs: t.timeoutMs });
  const values = splitJsonValues(r.stdout);
  const step = `ip ${familyFlag(f)} rule/route show`;
  let rules: RuleEntry[];
  let routes: RouteEntry[];
  try {
    if (r.code === 0 && values.length === 2) {
      rules = JSON.parse(values[0]!) as RuleEntry[];
      routes = JSON.parse(values[1]!) as RouteEntry[];
    } else if (r.code !== 0 && failedBatchLine(r.stderr) === 2 && /FIB table does not exist/i.test(r.stderr) && values.length >= 1) {
      // A table that does not exist yet holds nothing (only with strict dumps; batch mode has
      // none today and prints [] instead).
      rules = JSON.parse(values[0]!) as RuleEntry[];
      routes = [];
    } else {
      throw toolError(step, argv, r, t.netnsPath);
    }
  } catch (e) {
    if (e instanceof RulesError) throw e;
    throw new RulesError(step, t.netnsPath, "tool-failed", `${argv.join(" ")}: unreadable output (${(e as Error).message})`, r.stderr.trim(), r.code);
  }
  if (!Array.isArray(rules) || !Array.isArray(routes)) {
    throw new RulesError(step, t.netnsPath, "tool-failed", `${argv.join(" ")}: expected two JSON lists, got ${JSON.stringify(r.stdout.slice(0, 200))}`, r.stderr.trim(), r.code);
  }
  return {
    rules: rules.filter(
      (e) =>
        e.priority === o.rulePriority &&
        e.fwmark !== undefined &&
        Number(e.fwmark) === o.connmark &&
        Number(e.fwmask ?? "0xffffffff") === o.markMask &&
        String(e.table) === String(o.routeTable),
    ).length,
    route: routes.some((x) => x.type === "local" && (x.dst === "default" || x.dst === "0.0.0.0/0" || x.dst === "::/0") && x.dev === "lo"),
  };
}

/** One command of a batch. */
export interface IpCmd {
  /** Names the step in errors: "ip -4 rule add", … */
  step: string;
  /** After `ip -4|-6`, e.g. ["rule", "add", "fwmark", …]. */
  args: string[];
  /** A failure whose stderr matches means "already so": nothing changed, not an error. */
  already?: RegExp;
}

export interface IpBatchResult {
  /** Per command: it ran and succeeded (so it changed the namespace). */
  changed: boolean[];
  /** The first failure that was not "already so"; the commands after it did not run. */
  error?: RulesError;
}

/** Runs `cmds` in order through `ip -batch -` (one exec, more only after "already so" answers). */
export async function runIpBatch(t: IpTarget, f: IpFamily, cmds: readonly IpCmd[]): Promise<IpBatchResult> {
  const changed = cmds.map(() => false);
  for (const c of cmds) {
    // A batch line is split on blanks by ip itself; ours are numbers, hex marks, prefixes and "lo".
    if (c.args.some((a) => a === "" || /[\s"'\\#]/.test(a))) {
      return { changed, error: new RulesError(c.step, t.netnsPath, "invalid-input", `argument not allowed in an ip batch line: ${JSON.stringify(c.args)}`) };
    }
  }
  const argv = ["ip", familyFlag(f), "-batch", "-"];
  let from = 0;
  while (from < cmds.length) {
    const rest = cmds.slice(from);
    const r = await runTool(argv, { netns: t.ns, stdin: rest.map((c) => c.args.join(" ")).join("\n") + "\n", timeoutMs: t.timeoutMs });
    if (r.code === 0) {
      rest.forEach((_, i) => (changed[from + i] = true));
      break;
    }
    const line = failedBatchLine(r.stderr);
    if (line === undefined || line > rest.length) {
      // Cannot tell which one failed: count them all as changed, so that an undo deletes them
      // (each was absent before, so deleting it is what undoing means either way).
      rest.forEach((_, i) => (changed[from + i] = true));
      return { changed, error: toolError(rest[0]!.step, argv, r, t.netnsPath) };
    }
    for (let i = 0; i < line - 1; i++) changed[from + i] = true;
    const failed = rest[line - 1]!;
    if (!failed.already?.test(r.stderr)) return { changed, error: toolError(failed.step, ["ip", familyFlag(f), ...failed.args], r, t.netnsPath) };
    from += line;
  }
  return { changed };
}

/** The fwmark rule and the local route, as batch commands. */
export function ipRuleCmd(o: ResolvedInpodOptions, f: IpFamily, verb: "add" | "del"): IpCmd {
  return { step: `ip ${familyFlag(f)} rule ${verb}`, args: ["rule", verb, ...ipRuleArgs(o)], already: verb === "add" ? /File exists/i : ABSENT };
}

export function ipRouteCmd(o: ResolvedInpodOptions, f: IpFamily, verb: "replace" | "del"): IpCmd {
  return { step: `ip ${familyFlag(f)} route ${verb}`, args: ["route", verb, ...ipRouteArgs(o, f)], already: verb === "del" ? ABSENT : undefined };
}

/** "Nothing to delete" answers of `ip rule del` / `ip route del`. */
const ABSENT = /No such file or directory|No such process|FIB table does not exist|Cannot find device/i;

/** The 1-based line `ip -batch -` stopped at ("Command failed -:N"), if it says. Pure. */
export function failedBatchLine(stderr: string): number | undefined {
  const m = /Command failed -:(\d+)/.exec(stderr);
  return m ? Number(m[1]) : undefined;
}

/**
 * Splits concatenated JSON values (`ip -j -batch` prints one per command) into their texts;
 * an unfinished value at the end (a command that failed mid-output) is dropped. Pure.
 */
export function splitJsonValues(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "[" || c === "{") {
      if (depth === 0) start = i;
      depth++;
    } else if ((c === "]" || c === "}") && depth > 0) {
      depth--;
      if (depth === 0) out.push(text.slice(start, i + 1));
    }
  }
  return out;
}
