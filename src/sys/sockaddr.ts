// Raw sockaddr_in / sockaddr_in6 encoding, for the Zig calls that take or return addresses.
import { isIPv6 } from "node:net";

export interface SocketAddress {
  ip: string;
  port: number;
  family: 4 | 6;
}

const AF_INET = 2;
const AF_INET6 = 10;

export function encodeSockaddr(ip: string, port: number): Uint8Array {
  // IPv4 first, without regex or DataView: this runs for every upstream connect.
  const v4 = parseIPv4(ip);
  if (v4 >= 0) {
    const b = new Uint8Array(16);
    b[0] = AF_INET; // sa_family, little-endian u16
    b[2] = port >>> 8; // sin_port, network order
    b[3] = port & 0xff;
    b[4] = v4 >>> 24;
    b[5] = (v4 >>> 16) & 0xff;
    b[6] = (v4 >>> 8) & 0xff;
    b[7] = v4 & 0xff;
    return b;
  }
  if (isIPv6(ip)) {
    const b = new Uint8Array(28);
    b[0] = AF_INET6;
    b[2] = port >>> 8;
    b[3] = port & 0xff;
    b.set(ipv6Bytes(ip), 8);
    return b;
  }
  throw new Error(`not an IP address: ${JSON.stringify(ip)}`);
}

/** A dotted-quad IPv4 address as an unsigned 32-bit number, or -1 (the same strings node's isIPv4 accepts). */
export function parseIPv4(ip: string): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // no leading zeros ("01"), like isIPv4
      if (digits > 0 && part === 0) return -1;
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + part;
}

export function decodeSockaddr(b: Uint8Array): SocketAddress {
  const family = b[0]! | (b[1]! << 8);
  const port = (b[2]! << 8) | b[3]!;
  if (family === AF_INET) return { ip: `${b[4]}.${b[5]}.${b[6]}.${b[7]}`, port, family: 4 };
  if (family === AF_INET6) {
    const bytes = b.subarray(8, 24);
    // A v4-mapped address (::ffff:a.b.c.d) is reported as plain IPv4, as ztunnel does.
    if (bytes.subarray(0, 10).every((x) => x === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
      return { ip: `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`, port, family: 4 };
    }
    return { ip: formatIPv6(bytes), port, family: 6 };
  }
  throw new Error(`unsupported address family ${family}`);
}

function ipv6Bytes(ip: string): Uint8Array {
  let s = ip;
  const out = new Uint8Array(16);
  // Embedded IPv4 tail (::ffff:1.2.3.4).
  const v4 = s.match(/(\d+\.\d+\.\d+\.\d+)$/);
  let tail: number[] = [];
  if (v4?.[1]) {
    tail = v4[1].split(".").map(Number);
    s = s.slice(0, -v4[1].length) + "0:0";
  }
  const [head = "", rest] = s.split("::");
  const h = head ? head.split(":") : [];
  const r = rest !== undefined && rest !== "" ? rest.split(":") : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - r.length).fill("0"), ...r];
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[i * 2] = n >> 8;
    out[i * 2 + 1] = n & 0xff;
  });
  if (tail.length === 4) out.set(tail, 12);
  return out;
}

function formatIPv6(b: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] ?? 0) << 8) | (b[i + 1] ?? 0));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}
