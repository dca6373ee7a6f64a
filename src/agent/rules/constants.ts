// The numbers and names of the redirection rules. The marks, table, rule priority, ports and
// probe addresses are Istio ambient's (cni/pkg/config/config.go), so that an operator reading
// `iptables-save` or `ip rule` inside a pod sees what Istio's docs describe; only the chain and
// ipset names are nshub's own.

/** SO_MARK the proxy sets on every socket it opens in a pod (Istio `InpodMark`, 1337). */
export const DEFAULT_SOCKET_MARK = 0x539;
/** Connmark (and fwmark for the local route) of connections the proxy owns (`InpodTProxyMark`). */
export const DEFAULT_CONNMARK = 0x111;
/** Mask for both marks (`InpodMask`). */
export const DEFAULT_MARK_MASK = 0xfff;
/** `CONNMARK --restore-mark` masks (`InpodRestoreMask`). */
export const RESTORE_MASK = 0xffffffff;

/** Route table for the proxy's transparent sockets (`RouteTableInbound`). */
export const DEFAULT_ROUTE_TABLE = 100;
/** Priority of `fwmark 0x111/0xfff lookup 100`. */
export const DEFAULT_RULE_PRIORITY = 32764;

export const DEFAULT_OUTBOUND_PORT = 15001;
export const DEFAULT_INBOUND_PORT = 15006;
/** HBONE: never redirected, it reaches the proxy's in-pod listener directly. */
export const DEFAULT_HBONE_PORT = 15008;
export const DEFAULT_DNS_PORT = 15053;

/** Source address node-local probes are SNATed to; the in-pod rules let it through uncaptured. */
export const DEFAULT_PROBE_ADDRESS_V4 = "169.254.7.127";
export const DEFAULT_PROBE_ADDRESS_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";

/** In-pod chains (Istio: ISTIO_PRERT / ISTIO_OUTPUT), created in every table the rules use. */
export const CHAIN_PRERT = "NSHUB_PRERT";
export const CHAIN_OUTPUT = "NSHUB_OUTPUT";
/** Every chain name the in-pod rules may create (what removal and inspection look for). */
export const INPOD_CHAINS: readonly string[] = [CHAIN_PRERT, CHAIN_OUTPUT];
/** Tables the in-pod rules may use (raw only with DNS capture). */
export const INPOD_TABLES = ["mangle", "nat", "raw"] as const;
export type InpodTable = (typeof INPOD_TABLES)[number];

/** Host (node) side: nat chain jumped to from POSTROUTING position 1 (Istio: ISTIO_POSTRT). */
export const CHAIN_POSTRT = "NSHUB_POSTRT";
/** ipsets of enrolled pod IPs whose node-local traffic is SNATed (Istio: istio-inpod-probes-v4/-v6). */
export const PROBE_IPSET_V4 = "nshub-inpod-probes-v4";
export const PROBE_IPSET_V6 = "nshub-inpod-probes-v6";

export type IpFamily = "ipv4" | "ipv6";
