// Raw sockaddr_in / sockaddr_in6 encoding, for the Zig calls that take or return addresses.
import { isIPv4, isIPv6 } from "node:net";

export interface SocketAddress {
  ip: string;
  port: number;
  family: 4 | 6;
}

const AF_INET = 2;
const AF_INET6 = 10;

export function encodeSockaddr(ip: string, port: number): Uint8Array {
  if (isIPv4(ip)) {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    ip.split(".").forEach((p, i) => (b[4 + i] = Number(p)));
    return b;
  }
  if (isIPv6(ip)) {
    const b = new Uint8Array(28);
    const v = new DataView(b.buffer);
    v.setUint16(0, AF_INET6, true);
    v.setUint16(2, port, false);
    b.set(ipv6Bytes(ip), 8);
    return b;
  }
  throw new Error(`not an IP address: ${JSON.stringify(ip)}`);
}

export function decodeSockaddr(b: Uint8Array): SocketAddress {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const family = v.getUint16(0, true);
  const port = v.getUint16(2, false);
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
