// Plain file-descriptor helpers shared by the rest of src/sys and by leak checks.
import { readdirSync } from "node:fs";
import { lib } from "./lib.ts";
import { check } from "./errors.ts";

export function closeFd(fd: number): void {
  if (fd >= 0) lib.nh_close(fd);
}

export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;

export function shutdownFd(fd: number, how: number): void {
  check(lib.nh_shutdown(fd, how), "shutdown");
}

/**
 * Whether a TCP socket's peer has sent FIN and every byte before it has been read: the next
 * read would return end of input. Never blocks, reads nothing, and leaves a pending error
 * (a reset) for the socket's reader; false then, and on any error.
 */
export function peerFinished(fd: number): boolean {
  return lib.nh_peer_finished(fd) === 1;
}

/** Number of open fds of this process (the leak check used by tests and metrics). */
export function openFdCount(): number {
  // readdir itself holds one fd open while listing; subtract it.
  return readdirSync("/proc/self/fd").length - 1;
}

/** A non-blocking eventfd: how one thread wakes another that sits in poll or epoll_wait. */
export function eventFd(): number {
  return check(lib.nh_eventfd(), "eventfd");
}

export function signalEventFd(fd: number): void {
  lib.nh_eventfd_signal(fd);
}

export function drainEventFd(fd: number): void {
  lib.nh_eventfd_drain(fd);
}
