// Workload IP addresses: accepted as Rust's `IpAddr::from_str` accepts them (ztunnel reads
// `workloadIps` with it: https://github.com/istio/ztunnel/blob/master/src/state/workload.rs), and
// kept in one canonical text form, so that "10.0.0.1" and "fd00::1" index and compare the same
// whichever source or socket spelled them.
import { isIPv6 } from "node:net";

const V4 = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;

/** Why `text` is not an IP address ztunnel would read, or undefined when it is one. */
export function ipProblem(text: string): string | undefined {
  if (text === "") return "empty, not an IP address";
  const v4 = V4.exec(text);
  if (v4) return v4.slice(1).every((o) => Number(o) <= 255) ? undefined : `${JSON.stringify(text)} is not an IP address (an IPv4 octet is above 255)`;
  if (/^\d+(\.\d+){3}$/.test(text)) return `${JSON.stringify(text)} is not an IP address (IPv4 octets are written without leading zeros)`;
  if (text.startsWith("[")) return `${JSON.stringify(text)} is not an IP address (write an IPv6 address without brackets)`;
  if (text.includes("%")) return `${JSON.stringify(text)} is not an IP address (no IPv6 zone ids: a workload address is global)`;
  if (text.includes("/")) return `${JSON.stringify(text)} is not an IP address (a prefix length is not allowed)`;
  if (!isIPv6(text)) return `${JSON.stringify(text)} is not an IP address`;
  return undefined;
}

export function isIpAddress(text: string): boolean {
  return ipProblem(text) === undefined;
}

/** 4 for IPv4, 6 for IPv6 (after canonicalIp). */
export function ipFamily(ip: string): 4 | 6 {
  return ip.includes(":") ? 6 : 4;
}

/**
 * The canonical text of a valid address: IPv4 as is, IPv6 as RFC 5952 writes it (lowercase, the
 * longest run of zero groups compressed) — what Rust's Display prints, IPv4-mapped addresses as
 * `::ffff:a.b.c.d` included. Throws on an invalid address (check with ipProblem first).
 */
export function canonicalIp(text: string): string {
  const problem = ipProblem(text);
  if (problem) throw new Error(problem);
  if (!text.includes(":")) return text;
  const g = ipv6Groups(text);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return `::ffff:${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
  let best = -1;
  let bestLen = 1; // RFC 5952 §4.2.2: a single zero group is not compressed
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(":");
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/**
 * The address a lookup should use: canonical, and an IPv4-mapped IPv6 address (what a
 * dual-stack socket reports for an IPv4 peer) as the IPv4 address it stands for. Undefined
 * when `text` is no address.
 */
export function lookupKey(text: string): string | undefined {
  if (!isIpAddress(text)) return undefined;
  const c = canonicalIp(text);
  return c.startsWith("::ffff:") && c.includes(".") ? c.slice(7) : c;
}

/** The eight 16-bit groups of a valid IPv6 address (an embedded IPv4 tail included). */
function ipv6Groups(text: string): number[] {
  let s = text.toLowerCase();
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, rest] = s.split("::") as [string, string | undefined];
  const part = (p: string | undefined) => (p ? p.split(":").map((x) => parseInt(x, 16)) : []);
  const left = part(head);
  if (rest === undefined) return left;
  const right = part(rest);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}
