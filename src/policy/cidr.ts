// IP addresses and CIDR blocks for `ipBlocks`, `notIpBlocks`, `source.ip` and `destination.ip`,
// parsed as Go's netip does for istiod (no IPv4 leading zeros, no zones) and matched as ztunnel's
// `IpNet::contains` (host bits set in a block are masked off: "10.0.0.1/8" is 10.0.0.0/8).
// Addresses are 32-bit words (1 for IPv4, 4 for IPv6) so a match is a few integer compares.

export interface Ip {
  v6: boolean;
  words: number[];
}

export interface Cidr extends Ip {
  bits: number;
  /** words & mask, precomputed */
  masks: number[];
  text: string;
}

const V4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function v4Words(text: string): number[] | string {
  const m = V4.exec(text);
  if (!m) return `bad IP address (${text})`;
  let w = 0;
  for (let i = 1; i <= 4; i++) {
    const o = m[i]!;
    if (o.length > 1 && o.startsWith("0")) return `bad IP address (${text}): IPv4 field has octet with leading zero`;
    const n = Number(o);
    if (n > 255) return `bad IP address (${text}): IPv4 field has value >255`;
    w = w * 256 + n;
  }
  return [w];
}

function v6Words(text: string): number[] | string {
  const bad = `bad IP address (${text})`;
  if (text.includes("%")) return `${bad}: zones are not allowed`;
  let s = text;
  const groups: number[] = [];
  const tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  let tailWords: number[] = [];
  if (tail) {
    const w = v4Words(tail[1]!);
    if (typeof w === "string") return bad;
    tailWords = [w[0]! >>> 16, w[0]! & 0xffff];
    s = s.slice(0, tail.index);
    if (!s.endsWith(":")) return bad;
    if (!s.endsWith("::")) s = s.slice(0, -1);
  }
  const halves = s.split("::");
  if (halves.length > 2) return bad;
  const parse = (h: string): number[] | undefined => {
    if (h === "") return [];
    const out: number[] = [];
    for (const g of h.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const left = parse(halves[0]!);
  const right = halves.length === 2 ? parse(halves[1]!) : [];
  if (!left || !right) return bad;
  const given = left.length + right.length + tailWords.length;
  if (halves.length === 2 ? given > 7 : given !== 8) return bad;
  groups.push(...left);
  if (halves.length === 2) for (let i = given; i < 8; i++) groups.push(0);
  groups.push(...right, ...tailWords);
  return [0, 1, 2, 3].map((i) => ((groups[2 * i]! << 16) | groups[2 * i + 1]!) >>> 0);
}

/** An address, or why `text` is none (the message names it, as istiod's validation does). */
export function parseIpText(text: string): Ip | string {
  if (text.includes(":")) {
    const w = v6Words(text);
    return typeof w === "string" ? w : { v6: true, words: w };
  }
  const w = v4Words(text);
  return typeof w === "string" ? w : { v6: false, words: w };
}

/**
 * A connection's address: IPv4-mapped IPv6 (what a dual-stack socket reports for an IPv4 peer)
 * becomes the IPv4 address, as ztunnel canonicalizes socket addresses. Undefined when invalid.
 */
export function connectionIp(text: string | undefined): Ip | undefined {
  if (text === undefined) return undefined;
  let ip = ipCache.get(text);
  if (ip === undefined) {
    const p = parseIpText(text);
    ip = typeof p === "string" ? null : p.v6 && p.words[0] === 0 && p.words[1] === 0 && p.words[2] === 0xffff ? { v6: false, words: [p.words[3]!] } : p;
    if (ipCache.size >= 10_000) ipCache.clear();
    ipCache.set(text, ip);
  }
  return ip ?? undefined;
}

// Per connection, the same few addresses come back (a pod's peers): parse each once.
const ipCache = new Map<string, Ip | null>();

/** A block "a/n", or a bare address as /32 or /128 (istiod's stringToIP); or why it is none. */
export function parseCidr(text: string): Cidr | string {
  const slash = text.indexOf("/");
  const addr = slash < 0 ? text : text.slice(0, slash);
  const ip = parseIpText(addr);
  if (typeof ip === "string") return slash < 0 ? ip : `bad CIDR range (${text}): ${ip}`;
  const max = ip.v6 ? 128 : 32;
  let bits = max;
  if (slash >= 0) {
    const b = text.slice(slash + 1);
    if (!/^(0|[1-9]\d*)$/.test(b) || Number(b) > max) return `bad CIDR range (${text}): bad prefix length ${JSON.stringify(b)}`;
    bits = Number(b);
  }
  const masks = ip.words.map((_, i) => {
    const n = Math.max(0, Math.min(32, bits - 32 * i));
    return n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  });
  return { v6: ip.v6, words: ip.words.map((w, i) => (w & masks[i]!) >>> 0), masks, bits, text };
}

export function cidrContains(c: Cidr, ip: Ip | undefined): boolean {
  if (ip === undefined || ip.v6 !== c.v6) return false;
  for (let i = 0; i < c.words.length; i++) {
    if (((ip.words[i]! & c.masks[i]!) >>> 0) !== c.words[i]) return false;
  }
  return true;
}
