// Taking over a unix socket path before listening on it. A socket file left behind by a process
// that died is removed; a socket that someone still listens on is not. Unlinking a live socket
// does not stop its server: it keeps serving the clients it has while every new client reaches
// the newcomer. With two agents on a node (a DaemonSet rollout with surge) that split them: the
// proxy stayed with the old agent and every new pod's enrollment failed. See docs/zds.md,
// "Transport".
import { lstatSync, unlinkSync } from "node:fs";
import { SysError } from "./errors.ts";
import { closeFd } from "./fds.ts";
import { connectUnix } from "./unix.ts";

/** The path is served by a live listener: the caller must not remove it or listen on it. */
export class SocketInUseError extends Error {
  readonly path: string;
  constructor(what: string, path: string, how: string) {
    super(
      `another agent is serving the ${what} socket ${path} (${how}); refusing to start: ` +
        `stop that agent first, or give this one another socket path`,
    );
    this.name = "SocketInUseError";
    this.path = path;
  }
}

/**
 * What is at `path`: nothing, a socket nobody listens on (connect gives ECONNREFUSED), or a live
 * listener (the connect went through, or was refused only because its backlog is full, or it
 * listens with another socket type). `type` is the socket type the caller will listen with.
 * A live listener sees one connection that closes at once.
 */
export function probeSocketPath(path: string, type: number): { state: "absent" | "stale" } | { state: "live"; how: string } {
  let fd: number;
  try {
    fd = connectUnix(path, type);
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    switch (e.code) {
      case "ENOENT":
        return { state: "absent" };
      case "ECONNREFUSED":
        return { state: "stale" };
      case "EAGAIN":
        return { state: "live", how: "it is listening; its backlog is full" };
      case "EPROTOTYPE":
        return { state: "live", how: "a listener of another socket type is on it" };
    }
    throw e;
  }
  closeFd(fd);
  return { state: "live", how: "it accepted a connection" };
}

/**
 * Throws SocketInUseError when a live listener serves `path`; else says what is there. For a
 * check before doing anything else (the agent's start-up), without removing anything.
 */
export function assertSocketNotServed(path: string, type: number, what: string): "absent" | "stale" {
  const probe = probeSocketPath(path, type);
  if (probe.state === "live") throw new SocketInUseError(what, path, probe.how);
  return probe.state;
}

/**
 * Makes `path` free to listen on: nothing there is fine; a stale socket is removed (returns
 * true); a live one throws SocketInUseError; anything that is not a socket throws too.
 * `what` names the socket in the error ("ZDS", "API").
 */
export function claimSocketPath(path: string, type: number, what: string): boolean {
  let existing: ReturnType<typeof lstatSync>;
  try {
    existing = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
  if (!existing.isSocket()) throw new Error(`refusing to remove ${path}: it exists and is not a socket`);
  if (assertSocketNotServed(path, type, what) === "absent") return false;
  unlinkSync(path);
  return true;
}
