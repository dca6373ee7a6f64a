// `nshub logs-level [level]`: read (GET /logging on the read-only TCP admin) or set (POST
// /logging?level=… on the proxy's root-only admin socket: the TCP admin refuses writes, see
// src/admin/servers.ts) the proxy's log level. The proxy validates the level; a bad one is a
// usage error (exit 2).
import { LEVELS } from "../log/logger.ts";
import {
  DEFAULT_PROXY_ADMIN,
  DEFAULT_PROXY_ADMIN_SOCKET,
  DaemonUnavailable,
  type Daemon,
  type Io,
  UsageError,
  hostPortOf,
  parseDaemonUrl,
  parseTimeout,
  requestJson,
  stdio,
} from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub logs-level [<level> | --reset] [--json] [--admin <url>] [--admin-socket <path>] [--timeout <s>]

Without a level: prints the node proxy's current log level. With one: sets it (as root: the
proxy takes changes only on its admin socket, which only root can use).
Levels: ${LEVELS.join(", ")}.

  --reset                back to the level the proxy started with
  --admin <url>          proxy admin, read-only (default ${DEFAULT_PROXY_ADMIN})
  --admin-socket <path>  proxy admin socket, for setting (default ${DEFAULT_PROXY_ADMIN_SOCKET};
                         the proxy's proxy.adminSocket)
  --timeout <s>          per request (default 3)
  --json                 machine-readable output`;

interface LevelAnswer {
  level: string;
  previous?: string;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "logs-level", help: HELP, options: { reset: { type: "boolean" }, "admin-socket": { type: "string" } }, positionals: true } as const;
  return runOperatorCommand(cmd, args, io, async (values, positionals) => {
    if (positionals.length > 1) throw new UsageError(`expected at most one level, got ${positionals.length}: ${positionals.join(" ")}`);
    const level = positionals[0];
    if (level !== undefined && values.reset) throw new UsageError("give a level or --reset, not both");
    const proxy: Daemon = { kind: "proxy", url: parseDaemonUrl(values.admin ?? DEFAULT_PROXY_ADMIN, "--admin") };
    const timeoutMs = parseTimeout(values.timeout);

    if (level === undefined && !values.reset) {
      const a = await requestJson<LevelAnswer>(proxy, "/logging", { timeoutMs });
      io.out(values.json ? JSON.stringify(a) : a.level);
      return 0;
    }
    const socket = values["admin-socket"] ?? DEFAULT_PROXY_ADMIN_SOCKET;
    if (socket === "") throw new UsageError("--admin-socket: expected a path");
    const query = values.reset ? "reset" : `level=${encodeURIComponent(level!)}`;
    let a: LevelAnswer;
    try {
      a = await requestJson<LevelAnswer>({ ...proxy, socket }, `/logging?${query}`, { method: "POST", timeoutMs });
    } catch (e) {
      if (!(e instanceof DaemonUnavailable)) throw e;
      // 400: the proxy refused the level; its message says which levels exist.
      if (e.status === 400) throw new UsageError(e.message.replace(/^.*?HTTP 400: /, ""));
      const again = `nshub logs-level ${values.reset ? "--reset" : level}`;
      if (e.reason === "forbidden") {
        throw new DaemonUnavailable("proxy", socket, "forbidden", `permission denied on the nshub proxy's admin socket ${socket}: only root may change the log level; run as root (sudo ${again}). Reading it needs no root: nshub logs-level`);
      }
      if (e.reason === "not-running" && (await answers(proxy, timeoutMs))) {
        throw new DaemonUnavailable(
          "proxy",
          socket,
          "not-running",
          `the nshub proxy answers on ${hostPortOf(proxy.url)}, but nothing listens on its admin socket ${socket}, where the log level is set; give the socket it was started with (proxy.adminSocket): ${again} --admin-socket <path>`,
        );
      }
      throw e;
    }
    io.out(values.json ? JSON.stringify(a) : a.previous && a.previous !== a.level ? `log level: ${a.previous} → ${a.level}` : `log level: ${a.level}`);
    return 0;
  });
}

/** Whether the read-only admin answers: tells "not running" from "started with another socket". */
async function answers(proxy: Daemon, timeoutMs: number): Promise<boolean> {
  try {
    await requestJson<LevelAnswer>(proxy, "/logging", { timeoutMs });
    return true;
  } catch {
    return false;
  }
}
