// `nshub logs-level [level]`: read (GET /logging) or set (POST /logging?level=…) the proxy's
// log level. The proxy validates the level; a bad one is a usage error (exit 2).
import { LEVELS } from "../log/logger.ts";
import {
  DEFAULT_PROXY_ADMIN,
  DaemonUnavailable,
  type Daemon,
  type Io,
  UsageError,
  parseDaemonUrl,
  parseTimeout,
  requestJson,
  stdio,
} from "./admin-client.ts";
import { runOperatorCommand } from "./operator-command.ts";

const HELP = `usage: nshub logs-level [<level> | --reset] [--json] [--admin <url>] [--timeout <s>]

Without a level: prints the node proxy's current log level. With one: sets it.
Levels: ${LEVELS.join(", ")}.

  --reset         back to the level the proxy started with
  --admin <url>   proxy admin (default ${DEFAULT_PROXY_ADMIN})
  --timeout <s>   per request (default 3)
  --json          machine-readable output`;

interface LevelAnswer {
  level: string;
  previous?: string;
}

export async function main(args: string[], io: Io = stdio): Promise<number> {
  const cmd = { name: "logs-level", help: HELP, options: { reset: { type: "boolean" } }, positionals: true } as const;
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
    const query = values.reset ? "reset" : `level=${encodeURIComponent(level!)}`;
    let a: LevelAnswer;
    try {
      a = await requestJson<LevelAnswer>(proxy, `/logging?${query}`, { method: "POST", timeoutMs });
    } catch (e) {
      // 400: the proxy refused the level; its message says which levels exist.
      if (e instanceof DaemonUnavailable && e.status === 400) throw new UsageError(e.message.replace(/^.*?HTTP 400: /, ""));
      throw e;
    }
    io.out(values.json ? JSON.stringify(a) : a.previous && a.previous !== a.level ? `log level: ${a.previous} → ${a.level}` : `log level: ${a.level}`);
    return 0;
  });
}
