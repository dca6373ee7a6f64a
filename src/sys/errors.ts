import { ERRNO_NAMES, ERRNO_TEXT } from "./errno.ts";

/**
 * A failed system call. The message names the syscall, the errno name and, where one was
 * involved, the network namespace — the three things an operator needs to act on it.
 */
export class SysError extends Error {
  readonly syscall: string;
  readonly errno: number;
  readonly code: string;
  readonly netns: string | undefined;

  constructor(syscall: string, errno: number, netns?: string, detail?: string) {
    const code = ERRNO_NAMES[errno] ?? `E${errno}`;
    const text = ERRNO_TEXT[errno] ?? "unknown error";
    const where = netns ? ` in netns ${netns}` : "";
    const extra = detail ? ` (${detail})` : "";
    super(`${syscall}${where} failed: ${code} (${text})${extra}`);
    this.name = "SysError";
    this.syscall = syscall;
    this.errno = errno;
    this.code = code;
    this.netns = netns;
  }
}

/** Returns `r` when it is a success (>= 0); throws a SysError for a -errno result. */
export function check(r: number, syscall: string, netns?: string, detail?: string): number {
  if (r < 0) throw new SysError(syscall, -r, netns, detail);
  return r;
}

export const EINTR = 4;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const ENFILE = 23;
export const EMFILE = 24;
export const ENOBUFS = 105;
export const EINPROGRESS = 115;
export const ECONNREFUSED = 111;
export const ETIMEDOUT = 110;
