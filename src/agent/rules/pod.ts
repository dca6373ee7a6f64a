// Applying, removing and inspecting the in-pod rules inside a pod's network namespace.
//
// The namespace is opened once per call (so `netnsPath` may be any path to a netns file:
// /var/run/netns/<name>, /proc/<pid>/ns/net, or /proc/<agent pid>/fd/<fd> for a namespace fd the
// agent holds) and every tool is spawned from inside it (exec.ts); the open fd keeps the
// namespace alive until the call ends.
//
// apply = two independent chains run side by side (netfilter and rtnetlink do not interact):
//   iptables: iptables-save per family, then, only where something is missing or wrong, ONE
//             `iptables-restore --noflush` transaction per family (our chains declared, i.e.
//             created or flushed, and refilled; missing jumps appended, duplicate jumps dropped;
//             our chains in tables no longer used removed), the families one after the other;
//   ip:       per family one `ip -batch` listing the ip rules and the table's routes, then one
//             more adding the fwmark rule and the local route if absent (iproute.ts).
// For IPv4 only that is 2 execs for a pod already programmed and 4 for a new one (it was 6 and
// 12, nsenter included).
// A pod that already matches is only read. If a step fails, what this call changed is put back
// (the iptables tables to their state before the call, the rule and route deleted if this call
// added them) and a RulesError naming the step, the netns and the tool's stderr is thrown.
import { createLogger } from "../../log/logger.ts";
import { homeNetns } from "../../sys/index.ts";
import { INPOD_CHAINS, INPOD_TABLES, type IpFamily } from "./constants.ts";
import { openNetns, readFileIn, resolveTools, runStep, withLock, RulesError, type IptablesBackend, type IptablesTools, type ToolResult } from "./exec.ts";
import { buildInpodRuleSet, ipRouteArgs, ipRuleArgs, resolveInpodOptions, type InpodRuleOptions, type InpodRuleSet, type ResolvedInpodOptions } from "./inpod.ts";
import { familyFlag, ipRouteCmd, ipRuleCmd, readIpState, runIpBatch, type IpCmd, type IpState, type IpTarget } from "./iproute.ts";
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

interface Ctx extends IpTarget {
  o: ResolvedInpodOptions;
  tools: IptablesTools;
}

const ipt = (f: IpFamily) => (f === "ipv6" ? "ip6tables" : "iptables");

/**
 * Validates, opens the namespace and runs `fn` under the namespace's lock (one operation at a
 * time per namespace, whatever path names it); the namespace fd is closed afterwards. `writes`:
 * `fn` changes the namespace (then our own namespace is refused).
 */
async function withPod<T>(netnsPath: string, opts: PodRulesOptions, writes: boolean, fn: (ctx: Ctx, families: IpFamily[]) => Promise<T>): Promise<T> {
  const o = resolveInpodOptions(opts);
  if (opts.ipv6 !== undefined && typeof opts.ipv6 !== "boolean") throw new RulesError("validate options", undefined, "invalid-input", "ipv6 must be a boolean");
  const ns = openNetns(netnsPath);
  try {
    // The pod rules redirect every TCP connection: in the node's (our own) namespace they would
    // cut the node off. A path that still names it (e.g. /proc/<pid>/ns/net of a process that
    // has not entered its pod yet) is refused.
    if (writes && ns.key === homeNetns().key) {
      throw new RulesError("open netns", netnsPath, "invalid-input", "this is the agent's own network namespace, not a pod's: refusing to change it");
    }
    const tools = await resolveTools(opts.backend);
    const families: IpFamily[] = opts.ipv6 ? ["ipv4", "ipv6"] : ["ipv4"];
    const ctx: Ctx = { ns, netnsPath, o, tools, timeoutMs: opts.timeoutMs };
    return await withLock(ns.key, () => fn(ctx, families));
  } finally {
    ns.close();
  }
}

function run(ctx: Ctx, step: string, argv: string[], stdin?: string): Promise<ToolResult> {
  return runStep(step, argv, { netns: ctx.ns, netnsPath: ctx.netnsPath, stdin, timeoutMs: ctx.timeoutMs });
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

/** IPv6 is off on the pod's lo (Istio then skips the IPv6 local route). Read in the pod's netns. */
function ipv6LoDisabled(ctx: Ctx): boolean {
  const v = readFileIn(ctx.ns, "/proc/sys/net/ipv6/conf/lo/disable_ipv6");
  return v === undefined || v.trim() === "1";
}

/** What one family holds, read concurrently (iptables-save and one `ip -batch`). */
interface FamilyState {
  f: IpFamily;
  tables: SavedTables;
  ip: IpState;
  /** The local route is not wanted (IPv6 with IPv6 off on lo). */
  noRoute: boolean;
}

async function readFamily(ctx: Ctx, f: IpFamily): Promise<FamilyState> {
  const noRoute = f === "ipv6" && ipv6LoDisabled(ctx);
  const [tables, ip] = await settleInOrder([save(ctx, f), readIpState(ctx, ctx.o, f)]);
  return { f, tables, ip, noRoute };
}

/**
 * Awaits every promise (no tool is left running unobserved) and then rejects with the first
 * failure in argument order, so that which error is reported does not depend on timing.
 */
async function settleInOrder<T extends readonly unknown[]>(ps: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
  return rs.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/** Runs `cmds` through one `ip -batch`; registers the undo of what changed; throws its error. */
async function ipChange(ctx: Ctx, f: IpFamily, cmds: IpCmd[], undo: Array<() => Promise<void>>): Promise<void> {
  if (cmds.length === 0) return;
  const r = await runIpBatch(ctx, f, cmds);
  const inverse = cmds.filter((_, i) => r.changed[i]).map((c) => (c.args[0] === "rule" ? ipRuleCmd(ctx.o, f, "del") : ipRouteCmd(ctx.o, f, "del")));
  if (inverse.length > 0) {
    undo.push(async () => {
      const u = await runIpBatch(ctx, f, inverse.reverse());
      if (u.error) throw u.error;
    });
  }
  if (r.error) throw r.error;
}

// ---------------------------------------------------------------------------------------------
// apply

/**
 * Installs (or re-asserts) the in-pod rules, the fwmark ip rule and the table's local route in
 * the namespace at `netnsPath`. Idempotent: applying again leaves `iptables-save` byte-identical
 * (a pod that already matches is only read, not touched; one that drifted is repaired in one
 * transaction, existing jumps kept in place, duplicates removed). All or nothing: on failure,
 * what this call changed is undone and a RulesError is thrown (`step`, `netns`, `stderr`;
 * `reason` "netns-missing" when the path is gone).
 */
export async function applyPodRules(netnsPath: string, opts: PodRulesOptions = {}): Promise<void> {
  await withPod(netnsPath, opts, true, async (ctx, families) => {
    // Undo actions, in the order the changes were made (undone in reverse).
    const undo: Array<() => Promise<void>> = [];
    // iptables (netfilter) and the ip rule and route (rtnetlink) are independent: each is read,
    // then changed where needed, the two side by side.
    const iptables = async () => {
      const saved = await settleInOrder(families.map((f) => save(ctx, f)));
      // One transaction per family, one after the other (an nft commit by the other family
      // meanwhile would make this one retry).
      for (const [i, f] of families.entries()) {
        const before = saved[i]!;
        const set = buildInpodRuleSet(ctx.o, f);
        // Already exactly right: leave it alone (no flush, counters kept, no transaction).
        if (compareInpodTables(before, set).problems.length === 0) continue;
        await restore(ctx, f, planAll(before, (t) => set.tables.find((x) => x.table === t)));
        const previous = new Map<string, TableSpec | undefined>(INPOD_TABLES.map((t) => [t, snapshotTable(t, before.get(t), INPOD_CHAINS)]));
        undo.push(async () => {
          const back = planAll(await save(ctx, f), (t) => previous.get(t));
          if (back) await restore(ctx, f, back);
        });
      }
    };
    const ip = async (f: IpFamily) => {
      const noRoute = f === "ipv6" && ipv6LoDisabled(ctx);
      const now = await readIpState(ctx, ctx.o, f);
      const cmds: IpCmd[] = [];
      if (now.rules === 0) cmds.push(ipRuleCmd(ctx.o, f, "add"));
      if (!now.route && !noRoute) cmds.push(ipRouteCmd(ctx.o, f, "replace"));
      await ipChange(ctx, f, cmds, undo);
    };
    try {
      await settleInOrder([iptables(), ...families.map(ip)]);
    } catch (e) {
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (ue) {
          // The original error is what the caller needs; the failed undo is logged (and the
          // agent's reconcile or the pod's DEL removes the rest).
          log.error("undo after failed apply failed", { netns: netnsPath, error: ue as Error });
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
  const families: Array<{ f: IpFamily; strict: boolean }> = [{ f: "ipv4", strict: true }];
  if (opts.ipv6 !== false) families.push({ f: "ipv6", strict: opts.ipv6 === true });
  await withPod(netnsPath, opts, true, async (ctx) => {
    const errors: unknown[] = [];
    const step = async (strict: boolean, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        if (strict) errors.push(e);
        else log.debug("optional IPv6 cleanup step failed", { netns: netnsPath, error: e as Error });
      }
    };
    const iptables = async () => {
      for (const { f, strict } of families) {
        await step(strict, async () => {
          const text = planAll(await save(ctx, f), () => undefined);
          if (text) await restore(ctx, f, text);
        });
      }
    };
    const ip = families.map(({ f, strict }) =>
      step(strict, async () => {
        const now = await readIpState(ctx, ctx.o, f);
        // Every copy of the rule (one added by hand or by an older version may be duplicated).
        const cmds: IpCmd[] = Array.from({ length: now.rules }, () => ipRuleCmd(ctx.o, f, "del"));
        if (now.route) cmds.push(ipRouteCmd(ctx.o, f, "del"));
        if (cmds.length === 0) return;
        const r = await runIpBatch(ctx, f, cmds);
        if (r.error) throw r.error;
      }),
    );
    await Promise.all([iptables(), ...ip]);
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
  return withPod(netnsPath, opts, false, async (ctx, families) => {
    const problems: string[] = [];
    let chainsPresent = true;
    let rulesMatch = true;
    let jumpsPresent = true;
    let ipRulePresent = true;
    let routePresent = true;
    let anyPresent = false;
    for (const s of await settleInOrder(families.map((f) => readFamily(ctx, f)))) {
      const cmp = compareInpodTables(s.tables, buildInpodRuleSet(ctx.o, s.f));
      chainsPresent &&= cmp.chainsPresent;
      rulesMatch &&= cmp.rulesMatch;
      jumpsPresent &&= cmp.jumpsPresent;
      anyPresent ||= cmp.anyPresent;
      problems.push(...cmp.problems);
      if (s.ip.rules > 0) anyPresent = true;
      else {
        ipRulePresent = false;
        problems.push(`ip ${familyFlag(s.f)} rule ${ipRuleArgs(ctx.o).join(" ")} missing`);
      }
      if (s.ip.route) anyPresent = true;
      else if (!s.noRoute) {
        routePresent = false;
        problems.push(`ip ${familyFlag(s.f)} route ${ipRouteArgs(ctx.o, s.f).join(" ")} missing`);
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
