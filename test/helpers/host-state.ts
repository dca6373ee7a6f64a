// What a netns test must leave untouched in the machine's own network namespace (docs/TESTING.md,
// network safety). Tests snapshot it before and compare after; every suite uses this one list.
import { readFile } from "node:fs/promises";
import { run } from "../../src/sim/index.ts";

async function text(argv: string[]): Promise<string> {
  const r = await run(argv);
  return `${r.code}\n${r.stdout}`;
}

/** Drops what changes by itself: "generated on" comments and packet counters. */
function rulesOnly(save: string): string {
  return save
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]/g, "[0:0]"))
    .join("\n");
}

/** Links, addresses, routes (all tables, v4 and v6), ip rules, forwarding, iptables (nft and legacy), ipsets. */
export async function hostNetState(): Promise<Record<string, string>> {
  return {
    links: await text(["ip", "-o", "link", "show"]),
    // Address lifetimes of DHCP leases count down on their own.
    addrs: (await text(["ip", "-o", "addr", "show"])).replace(/valid_lft \S+ preferred_lft \S+/g, ""),
    routes: await text(["ip", "route", "show", "table", "all"]),
    routes6: await text(["ip", "-6", "route", "show", "table", "all"]),
    rules: await text(["ip", "rule", "show"]),
    rules6: await text(["ip", "-6", "rule", "show"]),
    ipForward: await readFile("/proc/sys/net/ipv4/ip_forward", "utf8"),
    iptables: rulesOnly(await text(["iptables-nft-save"])),
    ip6tables: rulesOnly(await text(["ip6tables-nft-save"])),
    iptablesLegacy: rulesOnly(await text(["iptables-legacy-save"])),
    ipsets: await text(["ipset", "list", "-n"]),
  };
}
