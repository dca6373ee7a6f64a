// AF_UNIX SOCK_SEQPACKET sockets with fd passing (SCM_RIGHTS). These fds are never handed to
// Bun: Bun reads with plain recv and the kernel would silently drop any passed fd.
import { lib, cstr } from "./lib.ts";
import { check, EAGAIN } from "./errors.ts";

export const SOCK_STREAM = 1;
export const SOCK_SEQPACKET = 5;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;

export function listenUnix(path: string, type = SOCK_SEQPACKET, backlog = 64): number {
  return check(lib.nh_unix_listen(cstr(path), type, backlog), "bind/listen", undefined, path);
}

export function connectUnix(path: string, type = SOCK_SEQPACKET): number {
  return check(lib.nh_unix_connect(cstr(path), type), "connect", undefined, path);
}

/** A connected pair (both non-blocking, close-on-exec). */
export function socketPair(type = SOCK_SEQPACKET): [number, number] {
  const out = new Int32Array(2);
  check(lib.nh_socketpair(type, out), "socketpair");
  return [out[0]!, out[1]!];
}

/** Accepts one pending connection, or returns null when none is waiting. */
export function acceptUnix(listenFd: number): number | null {
  const r = lib.nh_accept(listenFd);
  if (r === -EAGAIN) return null;
  return check(r, "accept");
}

/** Sends one packet, optionally carrying one fd. Throws SysError (EPIPE for a dead peer). */
export function sendPacket(fd: number, data: Uint8Array, passFd = -1): void {
  const n = check(lib.nh_sendmsg(fd, data, data.byteLength, passFd), "sendmsg");
  if (n !== data.byteLength) throw new Error(`sendmsg: short write ${n}/${data.byteLength}`);
}

export type Received =
  | { kind: "packet"; data: Uint8Array; fds: number[]; truncated: boolean }
  | { kind: "eof" }
  | { kind: "again" };

/**
 * Receives one packet without blocking. `truncated` is set when the packet was longer than
 * `capacity` or its control data was cut (more fds than we take: the kernel closed the
 * excess). The caller owns every fd in `fds`, also when it rejects the packet.
 */
export function recvPacket(fd: number, capacity = 1024): Received {
  const buf = new Uint8Array(capacity);
  const fdsOut = new Int32Array(4);
  const meta = new Int32Array(2);
  const r = lib.nh_recvmsg(fd, buf, capacity, fdsOut, meta);
  if (r === -EAGAIN) return { kind: "again" };
  check(r, "recvmsg");
  const fds = Array.from(fdsOut.subarray(0, meta[0]!));
  const flags = meta[1]!;
  if (r === 0 && fds.length === 0) return { kind: "eof" };
  const truncated = (flags & (MSG_TRUNC | MSG_CTRUNC)) !== 0 || r > capacity;
  return { kind: "packet", data: buf.subarray(0, Math.min(r, capacity)), fds, truncated };
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export function peerCred(fd: number): PeerCred {
  const out = new Int32Array(3);
  check(lib.nh_peercred(fd, out), "getsockopt(SO_PEERCRED)");
  return { pid: out[0]!, uid: out[1]!, gid: out[2]! };
}
