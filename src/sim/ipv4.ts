// IPv4 subnet arithmetic for the pods' network (pure; exported for unit tests).

import { randomBytes } from "node:crypto";
import { NetsimError } from "./errors.ts";

/** A random 10.a.b.0/24. */
export function randomSubnet(): string {
  const [a, b] = randomBytes(2);
  return `10.${a}.${b}.0/24`;
}

/** Network address, prefix length and first host (the gateway) of an IPv4 CIDR (prefix 8..30). */
export function subnetInfo(cidr: string): { network: string; prefix: number; gateway: string } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const prefix = m ? Number(m[5]) : NaN;
  if (!m || octets.some((o) => o > 255) || !(prefix >= 8 && prefix <= 30)) {
    throw new NetsimError(`subnet must be an IPv4 CIDR with prefix 8..30: ${JSON.stringify(cidr)}`);
  }
  const addr = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  const network = addr - (addr % size);
  return { network: intToIPv4(network), prefix, gateway: intToIPv4(network + 1) };
}

/** Whether an IPv4 address lies in a CIDR. */
export function ipv4InSubnet(ip: string, cidr: string): boolean {
  const { network, prefix } = subnetInfo(cidr);
  const size = 2 ** (32 - prefix);
  const a = ipv4ToInt(ip);
  const n = ipv4ToInt(network);
  return a >= n && a < n + size;
}

/** Whether two IPv4 CIDRs share any address (one contains the other's network address). */
export function subnetsOverlap(a: string, b: string): boolean {
  return ipv4InSubnet(subnetInfo(a).network, b) || ipv4InSubnet(subnetInfo(b).network, a);
}

/** An IPv4 address as a number (throws on anything else). */
export function ipv4ToInt(ip: string): number {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new NetsimError(`not an IPv4 address: ${ip}`);
  return parts.reduce((acc, o) => acc * 256 + o, 0);
}

/** A number (0..2^32-1) as a dotted IPv4 address. */
export function intToIPv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}
