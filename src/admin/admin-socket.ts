// The proxy's admin socket: the whole admin API, the writes included (log level, quit, GC), on a
// unix socket that only root can connect to. Loopback TCP cannot tell one local user from
// another, so every write there would be open to every local user; a unix socket's mode can.
// Created like the agent's API socket (src/agent/api.ts serveApi): the parent directory, a
// stale socket removed, a live one never taken over (src/sys/socket-path.ts claimSocketPath).
import { chmodSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { Hono } from "hono";
import { claimSocketPath, SOCK_STREAM, SocketInUseError } from "../sys/index.ts";

/** Owner (the proxy: root) read and write, nobody else: connect(2) needs write permission. */
export const ADMIN_SOCKET_MODE = 0o600;

type BunServer = ReturnType<typeof Bun.serve>;

/**
 * Serves `app` on the unix socket `path` with mode 0600. Throws a sentence naming `what` and the
 * path when the directory cannot be made, something that is not a socket is there, or another
 * process still listens on it (that one is left alone).
 */
export function serveUnixApp(what: string, path: string, app: Hono): BunServer {
  const fail = (why: string) => new Error(`cannot serve the ${what} on ${path}: ${why}`);
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    claimSocketPath(path, SOCK_STREAM, what);
  } catch (e) {
    if (e instanceof SocketInUseError) throw fail("another process (another nshub proxy?) is listening on it; stop it first, or give this proxy another proxy.adminSocket");
    throw fail((e as Error).message);
  }
  // The umask makes bind(2) create the socket 0600 already: no other user can connect in the
  // moment before the chmod (which only makes the mode exact whatever the umask did).
  const umask = process.umask(0o177);
  let server: BunServer;
  try {
    server = Bun.serve({ unix: path, fetch: app.fetch });
  } catch (e) {
    throw fail((e as Error).message);
  } finally {
    process.umask(umask);
  }
  try {
    chmodSync(path, ADMIN_SOCKET_MODE);
  } catch (e) {
    server.stop(true);
    throw fail(`chmod ${ADMIN_SOCKET_MODE.toString(8)}: ${(e as Error).message}`);
  }
  return server;
}
