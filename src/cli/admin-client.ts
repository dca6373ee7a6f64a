// Shared pieces of the operator commands (status, pods, connections, logs-level): where the
// daemons listen, an HTTP client (over TCP, or the proxy's admin socket for writes) that turns
// "nothing listens there" or "not allowed" into one clear sentence, and aligned tables.
import { formatHostPort } from "../admin/address.ts";

export const DEFAULT_PROXY_ADMIN = "http://127.0.0.1:15000";
/** The default of proxy.adminSocket (src/config/schema.ts): the proxy's writes are only there. */
export const DEFAULT_PROXY_ADMIN_SOCKET = "/var/run/nshub/proxy-admin.sock";
export const DEFAULT_PROXY_READINESS = "http://127.0.0.1:15021";
export const DEFAULT_AGENT_ADMIN = "http://127.0.0.1:15010";
export const DEFAULT_TIMEOUT_MS = 3000;

/** Where output goes; tests pass their own. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Whether stdout is a terminal (watch mode clears the screen only then). */
  isTTY?: boolean;
}

export const stdio: Io = {
  out: (t) => void process.stdout.write(t.endsWith("\n") ? t : t + "\n"),
  err: (t) => void process.stderr.write(t.endsWith("\n") ? t : t + "\n"),
  isTTY: process.stdout.isTTY === true,
};

export type DaemonKind = "proxy" | "agent";

export interface Daemon {
  kind: DaemonKind;
  /** Base URL, e.g. http://127.0.0.1:15000/ (with `socket`: only the path counts). */
  url: URL;
  /** A unix socket to send the requests through instead (the proxy's admin socket). */
  socket?: string;
}

/** Accepts "http://host:port", "host:port", "[::1]:15000" or ":15000" (= 127.0.0.1). */
export function parseDaemonUrl(s: string, flag: string): URL {
  let text = s.trim();
  if (text.startsWith(":")) text = `127.0.0.1${text}`;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) text = `http://${text}`;
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new UsageError(`${flag}: not a URL or host:port: ${JSON.stringify(s)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`${flag}: only http:// and https:// are supported, got ${u.protocol}`);
  return u;
}

/** The same host as `base`, another port (e.g. the proxy's readiness port next to its admin). */
export function withPort(base: URL, port: number): URL {
  const u = new URL(base.href);
  u.port = String(port);
  u.pathname = "/";
  return u;
}

/** host:port of a URL, as the operator would type it. */
export function hostPortOf(u: URL): string {
  const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
  const port = u.port ? Number(u.port) : u.protocol === "https:" ? 443 : 80;
  return formatHostPort({ hostname: host, port });
}

/** A bad flag value: exit 2, message only. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * A daemon could not be asked. `message` is the one sentence the operator sees:
 *   the nshub proxy is not running (nothing listens on 127.0.0.1:15000); start it with: nshub proxy
 */
export class DaemonUnavailable extends Error {
  override name = "DaemonUnavailable";
  constructor(
    readonly daemon: DaemonKind,
    readonly address: string,
    readonly reason: "not-running" | "timeout" | "http" | "bad-answer" | "unreachable" | "forbidden",
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

export function notRunningSentence(kind: DaemonKind, address: string): string {
  return `the nshub ${kind} is not running (nothing listens on ${address}); start it with: nshub ${kind}`;
}

export interface RequestOptions {
  method?: "GET" | "POST";
  timeoutMs?: number;
  /** HTTP statuses that are answers, not failures (e.g. 503 from a readiness endpoint). */
  accept?: readonly number[];
}

export interface Answer {
  status: number;
  text: string;
}

/** One HTTP request to a daemon; every failure becomes a DaemonUnavailable with one sentence. */
export async function request(d: Daemon, path: string, opts: RequestOptions = {}): Promise<Answer> {
  const address = d.socket ?? hostPortOf(d.url);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const url = new URL(path, d.socket ? "http://localhost/" : d.url);
  let res: Response;
  try {
    res = await fetch(url, { method: opts.method ?? "GET", signal: AbortSignal.timeout(timeoutMs), headers: { accept: "application/json" }, ...(d.socket ? { unix: d.socket } : {}) });
  } catch (e) {
    const err = e as { name?: string; code?: string; message?: string };
    // A socket file nobody listens on (the daemon died) is ECONNREFUSED; no file is ENOENT.
    if (err.code === "ECONNREFUSED" || (d.socket && err.code === "ENOENT")) throw new DaemonUnavailable(d.kind, address, "not-running", notRunningSentence(d.kind, address));
    if (d.socket && (err.code === "EACCES" || err.code === "EPERM")) {
      throw new DaemonUnavailable(d.kind, address, "forbidden", `permission denied on the nshub ${d.kind}'s socket ${address}: only root may use it; run as root`);
    }
    if (err.name === "TimeoutError" || err.name === "AbortError") {
      throw new DaemonUnavailable(d.kind, address, "timeout", `the nshub ${d.kind} at ${address} did not answer within ${fmtSeconds(timeoutMs)}; it may be stuck or overloaded (see its logs)`);
    }
    const why = (err.code ?? err.message ?? String(e)).replace(/\.$/, "");
    throw new DaemonUnavailable(d.kind, address, "unreachable", `cannot reach the nshub ${d.kind} at ${address} (${why})`);
  }
  const text = await res.text();
  if (!res.ok && !(opts.accept ?? []).includes(res.status)) {
    const detail = errorText(text);
    throw new DaemonUnavailable(d.kind, address, "http", `the nshub ${d.kind} at ${address} answered ${url.pathname} with HTTP ${res.status}${detail ? `: ${detail}` : ""}`, res.status);
  }
  return { status: res.status, text };
}

/** GET (or POST) and parse JSON. */
export async function requestJson<T>(d: Daemon, path: string, opts: RequestOptions = {}): Promise<T> {
  const { text } = await request(d, path, opts);
  try {
    return JSON.parse(text) as T;
  } catch {
    const address = hostPortOf(d.url);
    throw new DaemonUnavailable(d.kind, address, "bad-answer", `${address} answered ${path} with something that is not JSON; is it an nshub ${d.kind} admin address?`);
  }
}

function errorText(body: string): string {
  const t = body.trim();
  try {
    const j = JSON.parse(t) as { error?: unknown };
    if (typeof j.error === "string") return j.error;
  } catch {
    // not JSON
  }
  return t.length > 200 ? t.slice(0, 200) + "…" : t;
}

function fmtSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

/** Runs a command body; a DaemonUnavailable or UsageError becomes its sentence and an exit code. */
export async function runCommand(io: Io, name: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof DaemonUnavailable) {
      io.err(e.message);
      return 1;
    }
    if (e instanceof UsageError) {
      io.err(`nshub ${name}: ${e.message}`);
      return 2;
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// tables and units

export interface Column {
  header: string;
  align?: "left" | "right";
}

/** Aligned columns, two spaces apart, no trailing blanks. Width counts code points. */
export function renderTable(columns: readonly Column[], rows: readonly (readonly string[])[]): string {
  const len = (s: string) => [...s].length;
  const widths = columns.map((c, i) => Math.max(len(c.header), ...rows.map((r) => len(r[i] ?? ""))));
  const line = (cells: readonly string[]) =>
    columns
      .map((c, i) => {
        const cell = cells[i] ?? "";
        const pad = " ".repeat(widths[i]! - len(cell));
        return c.align === "right" ? pad + cell : cell + pad;
      })
      .join("  ")
      .trimEnd();
  return [line(columns.map((c) => c.header)), ...rows.map(line)].join("\n");
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** 42s, 3m12s, 2h05m, 3d04h */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

/** Listeners as "outbound:15001 inbound:15006"; a non-wildcard address is shown. */
export function formatListeners(ls: readonly { kind: string; address: string; port: number }[]): string {
  if (ls.length === 0) return "-";
  return ls
    .map((l) => {
      const wildcard = l.address === "0.0.0.0" || l.address === "::" || l.address === "";
      return wildcard ? `${l.kind}:${l.port}` : `${l.kind}:${formatHostPort({ hostname: l.address, port: l.port })}`;
    })
    .join(" ");
}

/** --timeout in seconds → ms. */
export function parseTimeout(v: string | undefined): number {
  if (v === undefined) return DEFAULT_TIMEOUT_MS;
  const n = Number(v.replace(/s$/, ""));
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--timeout: expected seconds > 0, got ${JSON.stringify(v)}`);
  return Math.round(n * 1000);
}
