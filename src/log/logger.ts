// Leveled logging for the daemons: JSON lines when stderr is not a terminal (for log
// collectors), readable lines on a terminal. The level can change at run time (admin API).
export type Level = "trace" | "debug" | "info" | "warn" | "error";
export type Fields = Record<string, unknown>;

const ORDER: Record<Level, number> = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 };
export const LEVELS = Object.keys(ORDER) as Level[];

let threshold: Level = (process.env.NSHUB_LOG_LEVEL as Level) in ORDER ? (process.env.NSHUB_LOG_LEVEL as Level) : "info";
// Decided on the first line, not at load: touching process.stderr costs ~14 ms of start-up in
// the compiled binary, which the CNI plugin (run per pod start) would pay before logging at all.
let json: boolean | undefined = process.env.NSHUB_LOG_FORMAT ? process.env.NSHUB_LOG_FORMAT === "json" : undefined;
/** Writes what the stderr sink holds now (set by bufferedStderr). */
let flushPending: () => void = () => undefined;
let sink: (line: string) => void = bufferedStderr();

/**
 * Writes every buffered line now. A Worker thread must call it before it is terminated: the
 * process's exit handler, which writes them otherwise, does not run for a terminated Worker.
 */
export function flushLogs(): void {
  flushPending();
}

/**
 * How long a log line may wait for others to share its write(2). Per line, the access log's
 * writes were a fifth of a data-plane thread's busy time under a connection storm; once per
 * event-loop turn they were still about one write (and one wake-up of whoever reads the log)
 * per connection. 20 ms cut the proxy's CPU per new connection by ~2–5% (paired wrk runs,
 * 2026-11-25) and is still immediate for anyone reading the log.
 */
const FLUSH_DELAY_MS = 20;

/**
 * stderr, written in batches: lines are flushed FLUSH_DELAY_MS after the first one, at 64 KiB,
 * and on exit, so none is lost on a clean exit and order is kept within a thread.
 */
function bufferedStderr(): (line: string) => void {
  let pending: string[] = [];
  let size = 0;
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (pending.length === 0) return;
    const text = pending.join("");
    pending = [];
    size = 0;
    process.stderr.write(text);
  };
  process.once("exit", flush);
  flushPending = flush;
  return (line) => {
    pending.push(line + "\n");
    size += line.length + 1;
    if (size >= 64 * 1024) flush();
    else if (!scheduled) {
      scheduled = true;
      // unref: a pending flush must not hold the process open (the exit handler writes it).
      setTimeout(flush, FLUSH_DELAY_MS).unref();
    }
  };
}

export function setLogLevel(level: string): void {
  if (!(level in ORDER)) throw new Error(`unknown log level "${level}" (one of ${LEVELS.join(", ")})`);
  threshold = level as Level;
}

export function getLogLevel(): Level {
  return threshold;
}

/** Redirects output (tests; the CNI plugin, whose stdout belongs to the runtime). */
export function setLogSink(fn: (line: string) => void, format?: "json" | "text"): void {
  sink = fn;
  if (format) json = format === "json";
}

export interface Logger {
  enabled(level: Level): boolean;
  trace(msg: string, fields?: Fields): void;
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

export function createLogger(scope: string, base: Fields = {}): Logger {
  const hasBase = Object.keys(base).length > 0;
  const emit = (level: Level, msg: string, fields?: Fields) => {
    if (ORDER[level] < ORDER[threshold]) return;
    // The access log calls this once per connection: no copy when there is nothing to merge,
    // and a copy only when an Error has to become its message.
    let all: Fields = hasBase ? { ...base, ...fields } : (fields ?? {});
    for (const k in all) {
      const v = all[k];
      if (v instanceof Error) {
        if (all === fields) all = { ...fields };
        all[k] = v.message;
      }
    }
    const time = new Date().toISOString();
    json ??= !process.stderr.isTTY;
    if (json) {
      if ("time" in all || "level" in all || "scope" in all || "msg" in all) {
        // a field overrides one of the line's own keys, in place
        sink(JSON.stringify({ time, level, scope, msg, ...all }));
      } else {
        // {"time":…,"level":…,"scope":…,"msg":…, then the fields} without copying them into a new object
        const head = `{"time":"${time}","level":"${level}","scope":${JSON.stringify(scope)},"msg":${JSON.stringify(msg)}`;
        const rest = JSON.stringify(all);
        sink(rest.length > 2 ? `${head},${rest.slice(1)}` : `${head}}`);
      }
    } else {
      const kv = Object.entries(all).map(([k, v]) => `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`);
      sink(`${time} ${level.toUpperCase().padEnd(5)} ${scope}: ${msg}${kv.length ? "  " + kv.join(" ") : ""}`);
    }
  };
  return {
    enabled: (level) => ORDER[level] >= ORDER[threshold],
    trace: (m, f) => emit("trace", m, f),
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (f) => createLogger(scope, { ...base, ...f }),
  };
}
