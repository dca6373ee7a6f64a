// The syscalls of the kernel-copy relay (src/proxy/splice-worker.ts): TCP listeners the proxy
// owns itself (Bun never sees their sockets), epoll, pipes and splice(2). The per-byte calls
// (splice, epoll wait, accept) return raw results (n or -errno) instead of throwing: they run
// in the relay's hot loop, where EAGAIN is the normal case.
import { ptr } from "bun:ffi";
import { lib } from "./lib.ts";
import { check } from "./errors.ts";
import { encodeSockaddr } from "./sockaddr.ts";

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;

/**
 * A TCP listener in the calling thread's netns (run it inside withNetns) with SO_REUSEPORT,
 * SO_MARK `mark` (0: none) and optionally IP(V6)_TRANSPARENT. Throws SysError naming `netns`.
 */
export function tcpListen(o: { address: string; port: number; backlog: number; mark: number; transparent: boolean; netns?: string }): number {
  const addr = encodeSockaddr(o.address, o.port);
  const r = lib.nh_tcp_listen(addr, addr.byteLength, o.backlog, o.mark >>> 0, o.transparent ? 1 : 0);
  return check(r, "listen", o.netns, `on ${o.address.includes(":") ? `[${o.address}]` : o.address}:${o.port}`);
}

/** accept4 (non-blocking, close-on-exec): the new fd, or -errno (-EAGAIN: none waiting). */
export function acceptRaw(listenFd: number): number {
  return lib.nh_accept(listenFd);
}

/** Closes a TCP socket with an RST (SO_LINGER 0). */
export function closeReset(fd: number): void {
  if (fd >= 0) lib.nh_close_reset(fd);
}

export function epollCreate(): number {
  return check(lib.nh_epoll_create(), "epoll_create1");
}

/** Watches `fd` for `events`; nh_epoll_wait reports `cookie` with each event. */
export function epollAdd(ep: number, fd: number, events: number, cookie: number): void {
  check(lib.nh_epoll_ctl(ep, EPOLL_CTL_ADD, fd, events >>> 0, cookie >>> 0), "epoll_ctl", undefined, `add fd ${fd}`);
}

/** Stops watching `fd` (needed before closing it only when another fd shares its file). */
export function epollDel(ep: number, fd: number): void {
  lib.nh_epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0, 0);
}

/**
 * Waits for events into `out` as [events, cookie] pairs; returns the number of pairs, or
 * -errno (-EINTR when a signal interrupted the wait). `out` must hold 2 × `max` entries.
 */
export function epollWait(ep: number, out: Uint32Array, max: number, timeoutMs: number): number {
  return lib.nh_epoll_wait(ep, ptr(out), Math.min(max, out.length >>> 1), timeoutMs);
}

/** A non-blocking pipe of about `size` bytes: [readFd, writeFd, capacity]. */
export function makePipe(size: number): [number, number, number] {
  const fds = new Int32Array(2);
  const cap = check(lib.nh_pipe(ptr(fds), size), "pipe2");
  return [fds[0]!, fds[1]!, cap];
}

/** splice(2), non-blocking: bytes moved, 0 at end of input, or -errno (-EAGAIN: not now). */
export function spliceRaw(fdIn: number, fdOut: number, len: number): number {
  return lib.nh_splice(fdIn, fdOut, len);
}

