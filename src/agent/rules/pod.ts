// Applying, removing and inspecting the in-pod rules inside a pod's network namespace.
//
// Every tool runs as `nsenter --net=<netnsPath> -- <tool> …` (argv, never a shell), so
// `netnsPath` may be any path to a netns file: /var/run/netns/<name>, /proc/<pid>/ns/net, or
// /proc/<agent pid>/fd/<fd> for a namespace fd the agent holds.
//
// apply = per family: iptables-save → nothing more when it already matches exactly, else ONE
// `iptables-restore --noflush` transaction (our chains declared, i.e. created or flushed, and
// refilled; missing jumps appended, duplicate jumps dropped; our chains in tables no longer used
// removed) → `ip rule add` unless present →
// `ip route replace` unless present. If a step fails, what this call changed is put back (the
// iptables tables to their state before the call, the rule and route deleted if this call added
// them) and a RulesError naming the step, the netns and the tool's stderr is thrown.
import { createLogger } from "../../log/logger.ts";
import { INPOD_CHAINS, INPOD_TABLES, type IpFamily } from "./constants.ts";
import { netnsKey, resolveTools, runStep, runTool, toolError, withLock, RulesError, type IptablesBackend, type IptablesTools, type ToolResult } from "./exec.ts";
import { buildInpodRuleSet, ipRouteArgs, ipRuleArgs, resolveInpodOptions, type InpodRuleOptions, type InpodRuleSet, type ResolvedInpodOptions } from "./inpod.ts";
import { canonicalRuleSpec, jumpsTo, parseIptablesSave, planTable, renderRestore, snapshotTable, type SavedTables, type TableSpec } from "./iptables.ts";

const log = createLogger("agent/rules");

export interface PodRulesOptions extends InpodRuleOptions {
  /** Also program IPv6 (ip6tables rules, `ip -6` rule and route). Default false. */
  ipv6?: boolean;
  /** iptables backend; default: detected once per process (see detectIptablesBackend). */
  backend?: IptablesBackend;
  /** Per tool invocation; default 30 s. */
  timeoutMs?: number;
}

interface Ctx {
  netnsPath: string;
  o: ResolvedInpodOptions;
  tools: IptablesTools;
  timeoutMs: number | undefined;
}

const familyFlag = (f: IpFamily) => (f === "ipv6" ? ["-6"] : ["-4"]);
const ipt = (f: IpFamily) => (f === "ipv6" ? "ip6tables" : "iptables");

async function setup(netnsPath: string, opts: PodRulesOptions): Promise<{ key: string; ctx: Ctx; families: IpFamily[] }> {
  const o = resolveInpodOptions(opts);
  if (opts.ipv6 !== undefined && typeof opts.ipv6 !== "boolean") throw new RulesError("validate options", undefined, "invalid-input", "ipv6 must be a boolean");
  const key = netnsKey(netnsPath);
  const tools = await resolveTools(opts.backend);
  const families: IpFamily[] = opts.ipv6 ? ["ipv4", "ipv6"] : ["ipv4"];
  return { key, ctx: { netnsPath, o, tools, timeoutMs: opts.timeoutMs }, families };
}

function run(ctx: Ctx, step: string, argv: string[], stdin?: string): Promise<ToolResult> {
  return runStep(step, argv, { netnsPath: ctx.netnsPath, stdin, timeoutMs: ctx.timeoutMs });
}

async function save(ctx: Ctx, f: IpFamily): Promise<SavedTables> {
  const r = await run(ctx, `${ipt(f)}-save`, [ctx.tools.save[f]]);
  return parseIptablesSave(r.stdout);
}

async function restore(ctx: Ctx, f: IpFamily, text: string): Promise<void> {
  await run(ctx, `${ipt(f)}-restore`, [ctx.tools.restore[f], "--noflush", ...ctx.tools.restoreArgs], text);
}

/** Restore text that makes every in-pod table match `target` (table → spec; undefined = none of ours). */
function planAll(now: SavedTables, target: (table: string) => TableSpec | undefined): string {
  return renderRestore(INPOD_TABLES.map((t) => ({ table: t, lines: planTable(now.get(t), target(t), INPOD_CHAINS) })));
}

// ---------------------------------------------------------------------------------------------
// ip rule / ip route

interface RuleEntry {
  priority?: number;
  fwmark?: string;
  fwmask?: string;
  table?: string;
}

async function hasIpRule(ctx: Ctx, f: IpFamily): Promise<boolean> {
  const r = await run(ctx, `ip ${familyFlag(f)[0]} rule show`, ["ip", ...familyFlag(f), "-j", "rule", "show"]);
  const entries = JSON.parse(r.stdout || "[]") as RuleEntry[];
  const o = ctx.o;
  return entries.some(
    (e) =>
      e.priority === o.rulePriority &&
      e.fwmark !== undefined &&
      Number(e.fwmark) === o.connmark &&
      Number(e.fwmask ?? "0xffffffff") === o.markMask &&
      String(e.table) === String(o.routeTable),
  );
}

/** Whether the table holds `local default dev lo`. A table that does not exist yet holds nothing. */
async function hasRoute(ctx: Ctx, f: IpFamily): Promise<boolean> {
  const argv = ["ip", ...familyFlag(f), "-j", "route", "show", "table", String(ctx.o.routeTable)];
  const r = await runTool(argv, { netnsPath: ctx.netnsPath, timeoutMs: ctx.timeoutMs });
  if (r.code !== 0) {
    if (/FIB table does not exist/i.test(r.stderr)) return false;
    throw toolError(`ip ${familyFlag(f)[0]} route show`, argv, r, ctx.netnsPath);
  }
  const routes = JSON.parse(r.stdout || "[]") as Array<{ type?: string; dst?: string; dev?: string }>;
  return routes.some((x) => x.type === "local" && (x.dst === "default" || x.dst === "0.0.0.0/0" || x.dst === "::/0") && x.dev === "lo");
}

/** IPv6 is off on the pod's lo (Istio then skips the IPv6 local route). */
async function ipv6LoDisabled(ctx: Ctx): Promise<boolean> {
  const r = await runTool(["cat", "/proc/sys/net/ipv6/conf/lo/disable_ipv6"], { netnsPath: ctx.netnsPath, timeoutMs: ctx.timeoutMs });
  return r.code !== 0 || r.stdout.trim() === "1";
}

/** "Nothing to delete" answers of `ip rule del` / `ip route del`. */
const ABSENT = /No such file or directory|No such process|FIB table does not exist|Cannot find device/i;

async function deleteIpRule(ctx: Ctx, f: IpFamily): Promise<void> {
  // Delete every copy (a rule added by hand or by an older version may be duplicated).
  for (let i = 0; i < 16; i++) {
    const argv = ["ip", ...familyFlag(f), "rule", "del", ...ipRuleArgs(ctx.o)];
    const r = await runTool(argv, { netnsPath: ctx.netnsPath, timeoutMs: ctx.timeoutMs });
    if (r.code === 0) continue;
    if (ABSENT.test(r.stderr)) return;
    throw toolError(`ip ${familyFlag(f)[0]} rule del`, argv, r, ctx.netnsPath);
  }
}

async function deleteRoute(ctx: Ctx, f: IpFamily): Promise<void> {
  const argv = ["ip", ...familyFlag(f), "route", "del", ...ipRouteArgs(ctx.o, f)];
  const r = await runTool(argv, { netnsPath: ctx.netnsPath, timeoutMs: ctx.timeoutMs });
  if (r.code !== 0 && !ABSENT.test(r.stderr)) throw toolError(`ip ${familyFlag(f)[0]} route del`, argv, r, ctx.netnsPath);
}

// ---------------------------------------------------------------------------------------------
// apply

/**
 * Installs (or re-asserts) the in-pod rules, the fwmark ip rule and the table's local route in
 * the namespace at `netnsPath`. Idempotent: applying again leaves `iptables-save` byte-identical
 * (a pod that already matches is not touched at all; one that drifted is repaired in one
 * transaction, existing jumps kept in place, duplicates removed). All or nothing: on failure, what this call changed is undone and a
 * RulesError is thrown (`step`, `netns`, `stderr`; `reason` "netns-missing" when the path is gone).
 */
export async function applyPodRules(netnsPath: string, opts: PodRulesOptions = {}): Promise<void> {
  const { key, ctx, families } = await setup(netnsPath, opts);
  await withLock(key, async () => {
    const undo: Array<{ what: string; fn: () => Promise<void> }> = [];
    try {
      for (const f of families) {
        const before = await save(ctx, f);
        const set = buildInpodRuleSet(ctx.o, f);
        // Already exactly right: leave it alone (no flush, counters kept, no transaction).
        if (compareInpodTables(before, set).problems.length === 0) continue;
        const text = planAll(before, (t) => set.tables.find((x) => x.table === t));
        await restore(ctx, f, text);
        const previous = new Map<string, TableSpec | undefined>(INPOD_TABLES.map((t) => [t, snapshotTable(t, before.get(t), INPOD_CHAINS)]));
        undo.push({
          what: `${ipt(f)} rules`,
          fn: async () => {
            const now = await save(ctx, f);
            const back = planAll(now, (t) => previous.get(t));
            if (back) await restore(ctx, f, back);
          },
        });
      }
      for (const f of families) {
        if (!(await hasIpRule(ctx, f))) {
          const argv = ["ip", ...familyFlag(f), "rule", "add", ...ipRuleArgs(ctx.o)];
          const r = await runTool(argv, { netnsPath, timeoutMs: ctx.timeoutMs });
          if (r.code !== 0 && !/File exists/i.test(r.stderr)) throw toolError(`ip ${familyFlag(f)[0]} rule add`, argv, r, netnsPath);
          if (r.code === 0) undo.push({ what: `ip ${familyFlag(f)[0]} rule`, fn: () => deleteIpRule(ctx, f) });
        }
        if (f === "ipv6" && (await ipv6LoDisabled(ctx))) continue;
        if (!(await hasRoute(ctx, f))) {
          await run(ctx, `ip ${familyFlag(f)[0]} route replace`, ["ip", ...familyFlag(f), "route", "replace", ...ipRouteArgs(ctx.o, f)]);
          undo.push({ what: `ip ${familyFlag(f)[0]} route`, fn: () => deleteRoute(ctx, f) });
        }
      }
    } catch (e) {
      for (const u of undo.reverse()) {
        try {
          await u.fn();
        } catch (ue) {
          // The original error is what the caller needs; the failed undo is logged (and the
          // agent's reconcile or the pod's DEL removes the rest).
          log.error("undo after failed apply failed", { netns: netnsPath, undo: u.what, error: ue as Error });
        }
      }
      throw e;
    }
    log.debug("in-pod rules applied", { netns: netnsPath, families, backend: ctx.tools.backend });
  });
}

// ---------------------------------------------------------------------------------------------
// remove

/**
 * Removes every jump to the nshub chains, the chains themselves (in every table), the fwmark ip
 * rule and the table's local route. Succeeds when there is nothing to remove. With `ipv6`
 * undefined, IPv6 leftovers are removed too when the namespace has IPv6 (best effort);
 * `ipv6: false` leaves IPv6 alone, `ipv6: true` makes IPv6 failures errors. Every step is tried;
 * the first failure is thrown at the end.
 */
export async function removePodRules(netnsPath: string, opts: PodRulesOptions = {}): Promise<void> {
  const { key, ctx } = await setup(netnsPath, opts);
  const families: Array<{ f: IpFamily; strict: boolean }> = [{ f: "ipv4", strict: true }];
  if (opts.ipv6 !== false) families.push({ f: "ipv6", strict: opts.ipv6 === true });
  await withLock(key, async () => {
    const errors: unknown[] = [];
    const step = async (strict: boolean, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        if (strict) errors.push(e);
        else log.debug("optional IPv6 cleanup step failed", { netns: netnsPath, error: e as Error });
      }
    };
    for (const { f, strict } of families) {
      await step(strict, async () => {
        const now = await save(ctx, f);
        const text = planAll(now, () => undefined);
        if (text) await restore(ctx, f, text);
      });
    }
    for (const { f, strict } of families) {
      await step(strict, () => deleteIpRule(ctx, f));
      await step(strict, () => deleteRoute(ctx, f));
    }
    if (errors.length > 0) throw errors[0];
    log.debug("in-pod rules removed", { netns: netnsPath });
  });
}

// ---------------------------------------------------------------------------------------------
// inspect

export interface PodRulesState {
  /** Every nshub chain of the rule set exists in every table it uses. */
  chainsPresent: boolean;
  /** Those chains hold exactly the expected rules, in order. */
  rulesMatch: boolean;
  /** Each jump (PREROUTING/OUTPUT → nshub chain) exists exactly once, and nothing else jumps to ours. */
  jumpsPresent: boolean;
  /** `fwmark 0x111/0xfff lookup 100 pref 32764` exists (per family checked). */
  ipRulePresent: boolean;
  /** `local default dev lo table 100` exists (per family checked). */
  routePresent: boolean;
  /** All of the above: the pod is fully and correctly programmed. */
  complete: boolean;
  /** Anything of nshub's is present at all (a chain, a jump, the rule or the route). */
  anyPresent: boolean;
  /** Human-readable differences from the expected state (empty when complete). */
  problems: string[];
}

/**
 * Compares what the namespace holds with the rule set `opts` describes: for CNI CHECK and for the
 * agent's reconcile of late-enrolled or restarted pods. Read-only.
 */
export async function inspectPodRules(netnsPath: string, opts: PodRulesOptions = {}): Promise<PodRulesState> {
  const { key, ctx, families } = await setup(netnsPath, opts);
  return withLock(key, async () => {
    const problems: string[] = [];
    let chainsPresent = true;
    let rulesMatch = true;
    let jumpsPresent = true;
    let ipRulePresent = true;
    let routePresent = true;
    let anyPresent = false;
    for (const f of families) {
      const cmp = compareInpodTables(await save(ctx, f), buildInpodRuleSet(ctx.o, f));
      chainsPresent &&= cmp.chainsPresent;
      rulesMatch &&= cmp.rulesMatch;
      jumpsPresent &&= cmp.jumpsPresent;
      anyPresent ||= cmp.anyPresent;
      problems.push(...cmp.problems);
      if (await hasIpRule(ctx, f)) anyPresent = true;
      else {
        ipRulePresent = false;
        problems.push(`ip ${familyFlag(f)[0]} rule ${ipRuleArgs(ctx.o).join(" ")} missing`);
      }
      if (await hasRoute(ctx, f)) anyPresent = true;
      else if (!(f === "ipv6" && (await ipv6LoDisabled(ctx)))) {
        routePresent = false;
        problems.push(`ip ${familyFlag(f)[0]} route ${ipRouteArgs(ctx.o, f).join(" ")} missing`);
      }
    }
    const complete = chainsPresent && rulesMatch && jumpsPresent && ipRulePresent && routePresent;
    return { chainsPresent, rulesMatch, jumpsPresent, ipRulePresent, routePresent, complete, anyPresent, problems };
  });
}

/** How the iptables state of one family compares with a rule set. Pure. */
export interface TablesComparison {
  chainsPresent: boolean;
  rulesMatch: boolean;
  jumpsPresent: boolean;
  anyPresent: boolean;
  problems: string[];
}

export function compareInpodTables(now: SavedTables, set: InpodRuleSet): TablesComparison {
  const tool = ipt(set.family);
  const r: TablesComparison = { chainsPresent: true, rulesMatch: true, jumpsPresent: true, anyPresent: false, problems: [] };
  for (const t of INPOD_TABLES) {
    const have = now.get(t);
    const want = set.tables.find((x) => x.table === t);
    const jumps = jumpsTo(have, INPOD_CHAINS);
    const chains = INPOD_CHAINS.filter((c) => have?.chains.has(c));
    if (jumps.length > 0 || chains.length > 0) r.anyPresent = true;
    if (!want) {
      if (jumps.length > 0 || chains.length > 0) {
        r.rulesMatch = false;
        r.problems.push(`${tool} ${t}: unexpected nshub chains or jumps (${[...chains, ...jumps.map((j) => `${j.chain} ${j.spec}`)].join(", ")})`);
      }
      continue;
    }
    for (const c of want.chains) {
      const actual = have?.chains.get(c);
      if (!actual) {
        r.chainsPresent = false;
        r.problems.push(`${tool} ${t}: chain ${c} missing`);
        continue;
      }
      const expected = want.rules.filter((x) => x.chain === c).map((x) => canonicalRuleSpec(x.spec));
      if (expected.join("\n") !== actual.join("\n")) {
        r.rulesMatch = false;
        r.problems.push(`${tool} ${t}: chain ${c} differs (expected ${expected.length} rules, found ${actual.length})`);
      }
    }
    for (const j of want.jumps) {
      const n = jumps.filter((x) => x.chain === j.chain && x.spec === j.spec).length;
      if (n !== 1) {
        r.jumpsPresent = false;
        r.problems.push(`${tool} ${t}: jump "${j.chain} ${j.spec}" present ${n} times`);
      }
    }
    const foreign = jumps.filter((x) => !want.jumps.some((j) => j.chain === x.chain && j.spec === x.spec));
    if (foreign.length > 0) {
      r.jumpsPresent = false;
      r.problems.push(`${tool} ${t}: unexpected jumps ${foreign.map((x) => `"${x.chain} ${x.spec}"`).join(", ")}`);
    }
  }
  return r;
}
