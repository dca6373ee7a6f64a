// Integer socket options and address queries on sockets Bun or libnshub created.
import { lib } from "./lib.ts";
import { check, SysError } from "./errors.ts";
import { decodeSockaddr, type SocketAddress } from "./sockaddr.ts";

export const SOL_SOCKET = 1;
export const SO_KEEPALIVE = 9;
export const SO_REUSEADDR = 2;
export const SO_REUSEPORT = 15;
export const SO_MARK = 36;
export const SO_ERROR = 4;
export const SOL_IP = 0;
export const IP_FREEBIND = 15;
export const IP_TRANSPARENT = 19;
export const SOL_IPV6 = 41;
export const IPV6_TRANSPARENT = 75;
export const IPV6_FREEBIND = 78;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;

const OPT_NAMES: Record<string, string> = {
  "1:9": "SO_KEEPALIVE", "1:2": "SO_REUSEADDR", "1:15": "SO_REUSEPORT", "1:36": "SO_MARK", "1:4": "SO_ERROR",
  "0:15": "IP_FREEBIND", "0:19": "IP_TRANSPARENT", "41:75": "IPV6_TRANSPARENT", "41:78": "IPV6_FREEBIND",
  "6:1": "TCP_NODELAY",
};
const optName = (level: number, opt: number) => OPT_NAMES[`${level}:${opt}`] ?? `${level}/${opt}`;

// Out-buffers for the calls below, reused: each call copies what it needs out before returning
// (these run several times per relayed connection, on one JS thread per module instance).
const intOut = new Int32Array(1);
const addrOut = new Uint8Array(28);

export function setSockOpt(fd: number, level: number, opt: number, value: number): void {
  const r = lib.nh_setsockopt_int(fd, level, opt, value | 0);
  if (r < 0) throw new SysError(`setsockopt(${optName(level, opt)})`, -r);
}

export function getSockOpt(fd: number, level: number, opt: number): number {
  const r = lib.nh_getsockopt_int(fd, level, opt, intOut);
  if (r < 0) throw new SysError(`getsockopt(${optName(level, opt)})`, -r);
  return intOut[0]!;
}

/** SO_MARK as an unsigned 32-bit value. */
export function getMark(fd: number): number {
  return getSockOpt(fd, SOL_SOCKET, SO_MARK) >>> 0;
}

/**
 * The destination a connection had before netfilter redirected it (SO_ORIGINAL_DST, then the
 * IPv6 variant). Throws a SysError (ENOENT) when the connection was not redirected.
 */
export function originalDst(fd: number): SocketAddress {
  const r4 = lib.nh_original_dst(fd, 0, addrOut);
  if (r4 >= 0) return decodeSockaddr(addrOut);
  const r6 = lib.nh_original_dst(fd, 1, addrOut);
  if (r6 >= 0) return decodeSockaddr(addrOut);
  throw new SysError("getsockopt(SO_ORIGINAL_DST)", -r4);
}

export function localAddress(fd: number): SocketAddress {
  check(lib.nh_sockname(fd, 0, addrOut), "getsockname");
  return decodeSockaddr(addrOut);
}

export function peerAddress(fd: number): SocketAddress {
  check(lib.nh_sockname(fd, 1, addrOut), "getpeername");
  return decodeSockaddr(addrOut);
}
