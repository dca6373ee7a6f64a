// The in-pod rule set (REDIRECT mode), generated as data and as `iptables-restore` text. Pure.
//
// This is Istio ambient's rule set (cni/pkg/iptables/iptables.go AppendInpodRules, golden files
// default.golden / default_ipv6.golden), rule for rule and in the same order, with nshub's chain
// names NSHUB_PRERT / NSHUB_OUTPUT:
//
//   mangle  PREROUTING → NSHUB_PRERT:  proxy-marked (0x539) packets get connmark 0x111
//           OUTPUT → NSHUB_OUTPUT:     packets of 0x111 connections get their mark restored, so
//                                      the fwmark rule routes them to the proxy via table 100
//   nat     NSHUB_PRERT:   probes from 169.254.7.127 pass; other inbound TCP (not to 127.0.0.1,
//                          not HBONE 15008, not from the proxy) → REDIRECT 15006
//           NSHUB_OUTPUT:  probe replies pass; [DNS → 15053]; 0x111 traffic passes; traffic to
//                          the pod's own IPs over lo passes; other outbound TCP not from the
//                          proxy → REDIRECT 15001
//   raw     only with DNS capture: proxy↔upstream DNS into conntrack zone 1
import { isIPv4, isIPv6 } from "node:net";
import {
  CHAIN_OUTPUT,
  CHAIN_PRERT,
  DEFAULT_CONNMARK,
  DEFAULT_DNS_PORT,
  DEFAULT_HBONE_PORT,
  DEFAULT_INBOUND_PORT,
  DEFAULT_MARK_MASK,
  DEFAULT_OUTBOUND_PORT,
  DEFAULT_PROBE_ADDRESS_V4,
  DEFAULT_PROBE_ADDRESS_V6,
  DEFAULT_ROUTE_TABLE,
  DEFAULT_RULE_PRIORITY,
  DEFAULT_SOCKET_MARK,
  INPOD_CHAINS,
  RESTORE_MASK,
  type IpFamily,
} from "./constants.ts";
import { RulesError } from "./exec.ts";
import { planTable, renderRestore, type RuleLine, type TableSpec } from "./iptables.ts";

/** Options of the in-pod rules; every field has Istio's default. */
export interface InpodRuleOptions {
  /** Socket mark of the proxy's sockets (default 0x539). Must fit in `markMask`. */
  mark?: number;
  /** Connmark / fwmark of proxy-owned connections (default 0x111). Must fit in `markMask`. */
  connmark?: number;
  /** Mask for both marks (default 0xfff). */
  markMask?: number;
  outboundPort?: number;
  inboundPort?: number;
  /** Not redirected (default 15008). */
  hbonePort?: number;
  dnsPort?: number;
  /** Source of SNATed node probes, IPv4 rules (default 169.254.7.127). */
  probeAddress?: string;
  /** Same for the IPv6 rules (default fd16:9254:7127:1337:ffff:ffff:ffff:ffff). */
  probeAddressV6?: string;
  /** Redirect the pod's DNS (UDP and TCP 53) to `dnsPort`, plus the raw-table zone rules. Default off. */
  dnsCapture?: boolean;
  /** ip rule / route table for the proxy's transparent sockets (default 100). */
  routeTable?: number;
  /** Priority of the fwmark ip rule (default 32764). */
  rulePriority?: number;
}

/** InpodRuleOptions with every default filled in and validated. */
export type ResolvedInpodOptions = Required<InpodRuleOptions>;

/** The rules of one address family: the tables in the order they are applied. */
export interface InpodRuleSet {
  family: IpFamily;
  tables: TableSpec[];
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** Fills defaults and validates; throws RulesError("validate options", …, "invalid-input"). */
export function resolveInpodOptions(opts: InpodRuleOptions = {}): ResolvedInpodOptions {
  const r: ResolvedInpodOptions = {
    mark: opts.mark ?? DEFAULT_SOCKET_MARK,
    connmark: opts.connmark ?? DEFAULT_CONNMARK,
    markMask: opts.markMask ?? DEFAULT_MARK_MASK,
    outboundPort: opts.outboundPort ?? DEFAULT_OUTBOUND_PORT,
    inboundPort: opts.inboundPort ?? DEFAULT_INBOUND_PORT,
    hbonePort: opts.hbonePort ?? DEFAULT_HBONE_PORT,
    dnsPort: opts.dnsPort ?? DEFAULT_DNS_PORT,
    probeAddress: opts.probeAddress ?? DEFAULT_PROBE_ADDRESS_V4,
    probeAddressV6: opts.probeAddressV6 ?? DEFAULT_PROBE_ADDRESS_V6,
    dnsCapture: opts.dnsCapture ?? false,
    routeTable: opts.routeTable ?? DEFAULT_ROUTE_TABLE,
    rulePriority: opts.rulePriority ?? DEFAULT_RULE_PRIORITY,
  };
  const fail = (msg: string): never => {
    throw new RulesError("validate options", undefined, "invalid-input", msg);
  };
  const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v);
  if (!isInt(r.markMask) || r.markMask < 1 || r.markMask > 0xffffffff) fail(`markMask must be an integer in 0x1..0xffffffff, got ${String(r.markMask)}`);
  for (const k of ["mark", "connmark"] as const) {
    const v = r[k];
    if (!isInt(v) || v < 1 || v > 0xffffffff) fail(`${k} must be an integer in 0x1..0xffffffff, got ${String(v)}`);
    if ((v & ~r.markMask) >>> 0 !== 0) fail(`${k} ${hex(v)} has bits outside markMask ${hex(r.markMask)}`);
  }
  if (r.mark === r.connmark) fail(`mark and connmark must differ (both ${hex(r.mark)})`);
  const ports = ["outboundPort", "inboundPort", "hbonePort", "dnsPort"] as const;
  for (const k of ports) {
    const v = r[k];
    if (!isInt(v) || v < 1 || v > 65535) fail(`${k} must be an integer in 1..65535, got ${String(v)}`);
  }
  for (let i = 0; i < ports.length; i++) {
    for (let j = i + 1; j < ports.length; j++) {
      if (r[ports[i]!] === r[ports[j]!]) fail(`${ports[i]} and ${ports[j]} must differ (both ${r[ports[i]!]})`);
    }
  }
  if (typeof r.probeAddress !== "string" || !isIPv4(r.probeAddress)) fail(`probeAddress must be an IPv4 address, got ${JSON.stringify(r.probeAddress)}`);
  if (typeof r.probeAddressV6 !== "string" || !isIPv6(r.probeAddressV6)) fail(`probeAddressV6 must be an IPv6 address, got ${JSON.stringify(r.probeAddressV6)}`);
  if (typeof r.dnsCapture !== "boolean") fail(`dnsCapture must be a boolean, got ${JSON.stringify(r.dnsCapture)}`);
  // 0 is unspec; 253-255 are the kernel's default/main/local tables.
  if (!isInt(r.routeTable) || r.routeTable < 1 || r.routeTable > 0xffffffff || [253, 254, 255].includes(r.routeTable)) {
    fail(`routeTable must be an integer in 1..2^32-1 other than 253, 254, 255, got ${String(r.routeTable)}`);
  }
  if (!isInt(r.rulePriority) || r.rulePriority < 1 || r.rulePriority > 32765) fail(`rulePriority must be an integer in 1..32765, got ${String(r.rulePriority)}`);
  return r;
}

/** The in-pod rule set of one family, as data (tables mangle, nat, and raw with DNS capture). */
export function buildInpodRuleSet(opts: InpodRuleOptions = {}, family: IpFamily = "ipv4"): InpodRuleSet {
  const o = resolveInpodOptions(opts);
  const lo = family === "ipv4" ? "127.0.0.1/32" : "::1/128";
  const probe = family === "ipv4" ? o.probeAddress : o.probeAddressV6;
  const mark = `${hex(o.mark)}/${hex(o.markMask)}`;
  const connmark = `${hex(o.connmark)}/${hex(o.markMask)}`;
  const P = CHAIN_PRERT;
  const O = CHAIN_OUTPUT;
  const rule = (chain: string, spec: string): RuleLine => ({ chain, spec });

  const mangle: TableSpec = {
    table: "mangle",
    chains: [P, O],
    jumps: [rule("PREROUTING", `-j ${P}`), rule("OUTPUT", `-j ${O}`)],
    rules: [
      rule(P, `-m mark --mark ${mark} -j CONNMARK --set-xmark ${connmark}`),
      rule(O, `-m connmark --mark ${connmark} -j CONNMARK --restore-mark --nfmask ${hex(RESTORE_MASK)} --ctmask ${hex(RESTORE_MASK)}`),
    ],
  };

  const natRules: RuleLine[] = [
    // kubelet probes arrive SNATed to the probe address by the host rule: not captured.
    rule(P, `-s ${probe} -p tcp -m tcp -j ACCEPT`),
    rule(O, `-d ${probe} -p tcp -m tcp -j ACCEPT`),
    // inbound plaintext to the proxy (HBONE goes straight to the proxy's in-pod listener).
    rule(P, `! -d ${lo} -p tcp ! --dport ${o.hbonePort} -m mark ! --mark ${mark} -j REDIRECT --to-ports ${o.inboundPort}`),
  ];
  if (o.dnsCapture) {
    natRules.push(
      rule(O, `! -o lo -p udp -m mark ! --mark ${mark} -m udp --dport 53 -j REDIRECT --to-port ${o.dnsPort}`),
      rule(O, `! -d ${lo} -p tcp --dport 53 -m mark ! --mark ${mark} -j REDIRECT --to-ports ${o.dnsPort}`),
    );
  }
  natRules.push(
    rule(O, `-p tcp -m mark --mark ${connmark} -j ACCEPT`),
    // the pod talking to its own IP goes over lo: not looped through the proxy.
    rule(O, `! -d ${lo} -o lo -j ACCEPT`),
    rule(O, `! -d ${lo} -p tcp -m mark ! --mark ${mark} -j REDIRECT --to-ports ${o.outboundPort}`),
  );
  const nat: TableSpec = {
    table: "nat",
    chains: [P, O],
    jumps: [rule("OUTPUT", `-j ${O}`), rule("PREROUTING", `-j ${P}`)],
    rules: natRules,
  };

  const tables = [mangle, nat];
  if (o.dnsCapture) {
    tables.push({
      table: "raw",
      chains: [O, P],
      jumps: [rule("PREROUTING", `-j ${P}`), rule("OUTPUT", `-j ${O}`)],
      rules: [
        rule(O, `-p udp -m mark --mark ${mark} -m udp --dport 53 -j CT --zone 1`),
        rule(P, `-p udp -m mark ! --mark ${mark} -m udp --sport 53 -j CT --zone 1`),
      ],
    });
  }
  return { family, tables };
}

/**
 * The rule set as `iptables-restore --noflush` input for a pod that has none of it yet (for
 * `ip6tables-restore` with `family: "ipv6"`). Chains are declared with `:NAME - [0:0]` (create,
 * or flush when present) instead of Istio's `-N`, which is what makes re-applying safe.
 */
export function renderInpodRules(opts: InpodRuleOptions & { family?: IpFamily } = {}): string {
  const set = buildInpodRuleSet(opts, opts.family ?? "ipv4");
  return renderRestore(set.tables.map((t) => ({ table: t.table, lines: planTable(undefined, t, INPOD_CHAINS) })));
}

/** `ip rule` arguments (after `ip [-6] rule add|del`) of the fwmark rule. */
export function ipRuleArgs(o: ResolvedInpodOptions): string[] {
  return ["fwmark", `${hex(o.connmark)}/${hex(o.markMask)}`, "lookup", String(o.routeTable), "pref", String(o.rulePriority)];
}

/** `ip route` arguments (after `ip [-6] route replace|del`) of the local route in the table. */
export function ipRouteArgs(o: ResolvedInpodOptions, family: IpFamily): string[] {
  return ["local", family === "ipv4" ? "0.0.0.0/0" : "::/0", "dev", "lo", "table", String(o.routeTable)];
}
