// The host-side probe rule, in the node's network namespace (where the agent runs):
//
//   ipset nshub-inpod-probes-v4   hash:ip with comments, one entry per enrolled pod IP, the
//                                 comment being the pod UID
//   nat POSTROUTING (position 1)  -j NSHUB_POSTRT
//   nat NSHUB_POSTRT              -m owner --socket-exists -p tcp
//                                 -m set --match-set nshub-inpod-probes-v4 dst
//                                 -j SNAT --to-source 169.254.7.127
//
// Traffic from a local socket on the node (kubelet's probes) to an enrolled pod is SNATed to the
// link-local probe address, which the in-pod rules let through uncaptured; traffic kube-proxy
// forwards from elsewhere has no local socket and stays captured. This is Istio ambient's host
// rule (cni/pkg/iptables AppendHostRules, hostprobe.golden) with nshub's chain and set names.
//
// Tools run as argv arrays; with `netnsPath` every one is spawned inside that namespace (exec.ts;
// the tests use this to keep the machine's own namespace untouched; the agent passes none).
import { isIPv4, isIPv6 } from "node:net";
import { createLogger } from "../../log/logger.ts";
import { CHAIN_POSTRT, DEFAULT_PROBE_ADDRESS_V4, DEFAULT_PROBE_ADDRESS_V6, PROBE_IPSET_V4, PROBE_IPSET_V6, type IpFamily } from "./constants.ts";
import { resolveTools, runStep, runTool, toolError, withLock, RulesError, type IptablesBackend, type IptablesTools, type RunOptions } from "./exec.ts";
import { canonicalRuleSpec, jumpsTo, parseIptablesSave, renderRestore, type SavedTable } from "./iptables.ts";

const log = createLogger("agent/rules/host");

export interface HostProbeOptions {
  /** Run every tool in this network namespace (spawned from inside it); default: our own. */
  netnsPath?: string;
  backend?: IptablesBackend;
  /** SNAT source for IPv4 (default 169.254.7.127). */
  probeAddress?: string;
  /** SNAT source for IPv6 (default fd16:9254:7127:1337:ffff:ffff:ffff:ffff). */
  probeAddressV6?: string;
  /** Also the IPv6 set and ip6tables rule. Default false: IPv6 pod IPs are then ignored. */
  ipv6?: boolean;
  /** ipset names (default nshub-inpod-probes-v4 / -v6); at most 27 characters. */
  setName?: string;
  setNameV6?: string;
  timeoutMs?: number;
}

export interface ProbePod {
  ip: string;
  /** Pod UID: the entry's comment. */
  uid: string;
}

export interface HostProbeState {
  setPresent: boolean;
  chainPresent: boolean;
  /** NSHUB_POSTRT holds exactly the SNAT rule. */
  ruleMatches: boolean;
  /** The only jump to NSHUB_POSTRT is POSTROUTING's first rule. */
  jumpFirst: boolean;
  complete: boolean;
  /** Anything of ours present (set, chain or jump) — for "nothing left behind". */
  anyPresent: boolean;
  problems: string[];
}

interface FamilyConf {
  family: IpFamily;
  set: string;
  tmpSet: string;
  ipsetFamily: "inet" | "inet6";
  probe: string;
}

const SET_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,26}$/;
/** Kubernetes UIDs are UUIDs; be a little more permissive, but never let quotes or spaces in. */
const UID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The SNAT rule spec in NSHUB_POSTRT (Istio's spelling). Pure. */
export function hostProbeRuleSpec(set: string, probeAddress: string): string {
  return `-m owner --socket-exists -p tcp -m set --match-set ${set} dst -j SNAT --to-source ${probeAddress}`;
}

/** The nat-table lines that set up the host rule when none of it exists yet (for docs and tests). Pure. */
export function renderHostProbeRules(set = PROBE_IPSET_V4, probeAddress = DEFAULT_PROBE_ADDRESS_V4): string {
  return renderRestore([{ table: "nat", lines: planHostNat(undefined, set, probeAddress) }]);
}

/**
 * Restore lines for the nat table: NSHUB_POSTRT declared (created or flushed) and refilled with
 * the SNAT rule; the jump kept when it is already POSTROUTING's only first-position jump, else
 * every jump to NSHUB_POSTRT deleted and one inserted at position 1. Pure.
 */
export function planHostNat(nat: SavedTable | undefined, set: string, probeAddress: string): string[] {
  const jumps = jumpsTo(nat, [CHAIN_POSTRT]);
  const first = nat?.chains.get("POSTROUTING")?.[0];
  const jumpOk = jumps.length === 1 && first === `-j ${CHAIN_POSTRT}` && jumps[0]!.chain === "POSTROUTING";
  const lines = [`:${CHAIN_POSTRT} - [0:0]`];
  if (!jumpOk) {
    for (const j of jumps) lines.push(`-D ${j.chain} ${j.spec}`);
    lines.push(`-I POSTROUTING 1 -j ${CHAIN_POSTRT}`);
  }
  lines.push(`-A ${CHAIN_POSTRT} ${hostProbeRuleSpec(set, probeAddress)}`);
  return lines;
}

/** Restore lines removing every jump to NSHUB_POSTRT and the chain; empty when none exist. Pure. */
export function planHostNatRemoval(nat: SavedTable | undefined): string[] {
  const lines = jumpsTo(nat, [CHAIN_POSTRT]).map((j) => `-D ${j.chain} ${j.spec}`);
  if (nat?.chains.has(CHAIN_POSTRT)) lines.push(`-F ${CHAIN_POSTRT}`, `-X ${CHAIN_POSTRT}`);
  return lines;
}

/** The canonical text form of an IP (as ipset prints it), or undefined when not an IP literal. */
export function normalizeIp(ip: string): { family: IpFamily; text: string } | undefined {
  if (typeof ip !== "string") return undefined;
  if (isIPv4(ip)) return { family: "ipv4", text: ip };
  if (isIPv6(ip) && !ip.includes("%")) {
    // URL parsing compresses and lower-cases an IPv6 literal the way inet_ntop does.
    const host = new URL(`http://[${ip}]/`).hostname;
    return { family: "ipv6", text: host.slice(1, -1) };
  }
  return undefined;
}

/** Parses `ipset save <set>` output into entries (ip → uid comment). Pure. */
export function parseIpsetSave(text: string, set: string): ProbePod[] {
  const out: ProbePod[] = [];
  const prefix = `add ${set} `;
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const m = /^(\S+)(?: .*?\bcomment "((?:[^"\\]|\\.)*)")?/.exec(line.slice(prefix.length));
    if (m) out.push({ ip: m[1]!, uid: m[2] ?? "" });
  }
  return out;
}

/** An `ipset restore` line adding `ip` to `set`, labelled with the pod's UID. */
const addLine = (set: string, ip: string, uid: string) => `add ${set} ${ip} comment "${uid}"`;

interface PendingAdd {
  fc: FamilyConf;
  text: string;
  uid: string;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class HostProbeRules {
  private readonly netnsPath: string | undefined;
  private readonly families: FamilyConf[];
  private readonly lockKey: string;
  private tools: IptablesTools | undefined;
  /** Adds waiting for the next write (see addPod). */
  private readonly pendingAdds: PendingAdd[] = [];

  constructor(private readonly opts: HostProbeOptions = {}) {
    const bad = (msg: string): never => {
      throw new RulesError("validate options", opts.netnsPath, "invalid-input", msg);
    };
    if (opts.netnsPath !== undefined && (typeof opts.netnsPath !== "string" || !opts.netnsPath.startsWith("/") || opts.netnsPath.includes("\0"))) {
      bad(`netnsPath must be an absolute path, got ${JSON.stringify(opts.netnsPath)}`);
    }
    const v4 = opts.setName ?? PROBE_IPSET_V4;
    const v6 = opts.setNameV6 ?? PROBE_IPSET_V6;
    const p4 = opts.probeAddress ?? DEFAULT_PROBE_ADDRESS_V4;
    const p6 = opts.probeAddressV6 ?? DEFAULT_PROBE_ADDRESS_V6;
    for (const s of [v4, v6]) if (!SET_NAME_RE.test(s)) bad(`ipset name must match ${SET_NAME_RE}, got ${JSON.stringify(s)}`);
    if (v4 === v6) bad("setName and setNameV6 must differ");
    if (!isIPv4(p4)) bad(`probeAddress must be an IPv4 address, got ${JSON.stringify(p4)}`);
    if (!isIPv6(p6)) bad(`probeAddressV6 must be an IPv6 address, got ${JSON.stringify(p6)}`);
    this.netnsPath = opts.netnsPath;
    this.families = [{ family: "ipv4", set: v4, tmpSet: `${v4}-tmp`, ipsetFamily: "inet", probe: p4 }];
    if (opts.ipv6) this.families.push({ family: "ipv6", set: v6, tmpSet: `${v6}-tmp`, ipsetFamily: "inet6", probe: p6 });
    this.lockKey = `host-probe:${opts.netnsPath ?? "self"}`;
  }

  /** Creates the ipset(s), NSHUB_POSTRT with the SNAT rule, and the jump at POSTROUTING position 1. Idempotent. */
  setup(): Promise<void> {
    return this.locked(async () => {
      for (const fc of this.families) {
        await this.run("ipset create", ["ipset", "create", fc.set, "hash:ip", "family", fc.ipsetFamily, "comment", "-exist"]);
        const nat = await this.saveNat(fc.family);
        await this.restoreNat(fc.family, planHostNat(nat, fc.set, fc.probe));
      }
      log.debug("host probe rules set up", { netns: this.netnsPath ?? "self" });
    });
  }

  /**
   * Adds (or re-labels) the pod's IP with its UID. An IPv6 IP is ignored unless `ipv6` is on.
   * Adds that arrive while another set operation runs are written together by one
   * `ipset restore` when it is done, in arrival order: when many pods start at once, each would
   * otherwise wait for one `ipset` process per pod ahead of it, one at a time. An add may so
   * be written before a removal queued after its batch started; removals only delete entries
   * of their own UID, and the agent's per-pod lock orders one pod's add and delete.
   */
  async addPod(ip: string, uid: string): Promise<void> {
    const { fc, text } = this.check(ip, uid, "ipset add");
    if (!fc) return;
    return new Promise<void>((resolve, reject) => {
      this.pendingAdds.push({ fc, text, uid, resolve, reject });
      // The first add of a batch schedules its write; the later ones ride along.
      if (this.pendingAdds.length === 1) void this.locked(() => this.writeAdds());
    });
  }

  private async writeAdds(): Promise<void> {
    const batch = this.pendingAdds.splice(0);
    const single = async (a: PendingAdd) => {
      try {
        await this.run("ipset add", ["ipset", "add", a.fc.set, a.text, "comment", a.uid, "-exist"]);
        a.resolve();
      } catch (e) {
        a.reject(e);
      }
    };
    if (batch.length === 1) return single(batch[0]!);
    const written = await this.ipsetRestore(batch.map((a) => addLine(a.fc.set, a.text, a.uid))).then(
      (r) => r.code === 0,
      () => false,
    );
    if (written) {
      for (const a of batch) a.resolve();
      return;
    }
    // ipset restore stops at the first failing line (or did not run): add them one by one, so
    // that each pod gets its own result and error.
    for (const a of batch) await single(a);
  }

  /** `ipset -exist restore` of these lines (the result; the caller decides what a failure means). */
  private ipsetRestore(lines: readonly string[]): ReturnType<typeof runTool> {
    return runTool(["ipset", "-exist", "restore"], { ...this.runOpts(), stdin: lines.join("\n") + "\n" });
  }

  /**
   * Removes the pod's IP, but only when its entry carries this UID (the IP may already belong to
   * a newer pod). Returns whether an entry was removed. Missing entries and sets are fine.
   */
  async removePod(ip: string, uid: string): Promise<boolean> {
    const { fc, text } = this.check(ip, uid, "ipset del");
    if (!fc) return false;
    return this.locked(async () => {
      const entries = await this.listSet(fc);
      if (!entries.some((e) => e.ip === text && e.uid === uid)) return false;
      await this.run("ipset del", ["ipset", "del", fc.set, text, "-exist"]);
      return true;
    });
  }

  /**
   * Startup: replaces the set's contents with exactly `pods` (filled into a temporary set, then
   * swapped in atomically, so the rule never sees a half-filled set). Creates the set if needed.
   * A later pod with the same IP wins.
   */
  async reset(pods: readonly ProbePod[]): Promise<void> {
    const checked = pods.map((p) => this.check(p.ip, p.uid, "ipset restore"));
    return this.locked(async () => {
      for (const fc of this.families) {
        const byIp = new Map<string, string>();
        checked.forEach((c, i) => {
          if (c.fc === fc) byIp.set(c.text, pods[i]!.uid);
        });
        const lines = [
          `create ${fc.set} hash:ip family ${fc.ipsetFamily} comment`,
          `create ${fc.tmpSet} hash:ip family ${fc.ipsetFamily} comment`,
          `flush ${fc.tmpSet}`,
          ...[...byIp].map(([ip, uid]) => addLine(fc.tmpSet, ip, uid)),
          `swap ${fc.tmpSet} ${fc.set}`,
          `destroy ${fc.tmpSet}`,
        ];
        const r = await this.ipsetRestore(lines);
        if (r.code !== 0) {
          await runTool(["ipset", "destroy", fc.tmpSet], this.runOpts()); // best effort
          throw toolError("ipset restore", ["ipset", "-exist", "restore"], r, this.netnsPath);
        }
      }
    });
  }

  /** Removes the jump, the chain and the set(s). Idempotent. */
  teardown(): Promise<void> {
    return this.locked(async () => {
      for (const fc of this.families) {
        const nat = await this.saveNat(fc.family);
        const lines = planHostNatRemoval(nat);
        if (lines.length > 0) await this.restoreNat(fc.family, lines);
        for (const set of [fc.tmpSet, fc.set]) await this.destroySet(set);
      }
      log.debug("host probe rules removed", { netns: this.netnsPath ?? "self" });
    });
  }

  /** Entries of the set(s). */
  list(): Promise<ProbePod[]> {
    return this.locked(async () => (await Promise.all(this.families.map((fc) => this.listSet(fc)))).flat());
  }

  /** What is installed compared with what should be. Read-only. */
  inspect(): Promise<HostProbeState> {
    return this.locked(async () => {
      const problems: string[] = [];
      let setPresent = true;
      let chainPresent = true;
      let ruleMatches = true;
      let jumpFirst = true;
      let anyPresent = false;
      for (const fc of this.families) {
        const r = await runTool(["ipset", "list", "-n", fc.set], this.runOpts());
        if (r.code === 0) anyPresent = true;
        else {
          setPresent = false;
          problems.push(`ipset ${fc.set} missing`);
        }
        const nat = await this.saveNat(fc.family);
        const chain = nat?.chains.get(CHAIN_POSTRT);
        const jumps = jumpsTo(nat, [CHAIN_POSTRT]);
        if (chain || jumps.length > 0) anyPresent = true;
        if (!chain) {
          chainPresent = false;
          problems.push(`${fc.family} nat chain ${CHAIN_POSTRT} missing`);
        } else if (chain.join("\n") !== canonicalRuleSpec(hostProbeRuleSpec(fc.set, fc.probe))) {
          ruleMatches = false;
          problems.push(`${fc.family} nat chain ${CHAIN_POSTRT} differs: ${JSON.stringify(chain)}`);
        }
        if (!(jumps.length === 1 && nat?.chains.get("POSTROUTING")?.[0] === `-j ${CHAIN_POSTRT}`)) {
          jumpFirst = false;
          problems.push(`${fc.family} nat: ${jumps.length} jumps to ${CHAIN_POSTRT}, first POSTROUTING rule ${JSON.stringify(nat?.chains.get("POSTROUTING")?.[0] ?? null)}`);
        }
      }
      const complete = setPresent && chainPresent && ruleMatches && jumpFirst;
      return { setPresent, chainPresent, ruleMatches, jumpFirst, complete, anyPresent, problems };
    });
  }

  // -------------------------------------------------------------------------------------------

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    return withLock(this.lockKey, fn);
  }

  private runOpts(): RunOptions {
    return { netnsPath: this.netnsPath, timeoutMs: this.opts.timeoutMs };
  }

  private run(step: string, argv: string[], stdin?: string) {
    return runStep(step, argv, { ...this.runOpts(), stdin });
  }

  private async iptTools(): Promise<IptablesTools> {
    this.tools ??= await resolveTools(this.opts.backend);
    return this.tools;
  }

  private async saveNat(f: IpFamily): Promise<SavedTable | undefined> {
    const t = await this.iptTools();
    const r = await this.run(`${f === "ipv6" ? "ip6tables" : "iptables"}-save`, [t.save[f], "-t", "nat"]);
    return parseIptablesSave(r.stdout).get("nat");
  }

  private async restoreNat(f: IpFamily, lines: string[]): Promise<void> {
    const t = await this.iptTools();
    await this.run(`${f === "ipv6" ? "ip6tables" : "iptables"}-restore`, [t.restore[f], "--noflush", ...t.restoreArgs], renderRestore([{ table: "nat", lines }]));
  }

  private async listSet(fc: FamilyConf): Promise<ProbePod[]> {
    const r = await runTool(["ipset", "save", fc.set], this.runOpts());
    if (r.code !== 0) {
      if (/does not exist/i.test(r.stderr)) return [];
      throw toolError("ipset save", ["ipset", "save", fc.set], r, this.netnsPath);
    }
    return parseIpsetSave(r.stdout, fc.set);
  }

  private async destroySet(set: string): Promise<void> {
    // A set stays "in use" for a moment after the last rule referencing it is deleted (the
    // kernel releases the reference asynchronously): retry briefly.
    for (let i = 0; ; i++) {
      const r = await runTool(["ipset", "destroy", set], this.runOpts());
      if (r.code === 0 || /does not exist/i.test(r.stderr)) return;
      if (!/in use/i.test(r.stderr) || i >= 40) throw toolError("ipset destroy", ["ipset", "destroy", set], r, this.netnsPath);
      await Bun.sleep(50);
    }
  }

  private check(ip: string, uid: string, step: string): { fc: FamilyConf | undefined; text: string } {
    const n = normalizeIp(ip);
    if (!n) throw new RulesError(step, this.netnsPath, "invalid-input", `not an IP address: ${JSON.stringify(ip)}`);
    if (typeof uid !== "string" || !UID_RE.test(uid)) throw new RulesError(step, this.netnsPath, "invalid-input", `invalid pod uid ${JSON.stringify(uid)}`);
    const fc = this.families.find((f) => f.family === n.family);
    if (!fc) log.debug("IPv6 pod IP ignored (host probe IPv6 off)", { ip: n.text });
    return { fc, text: n.text };
  }
}
