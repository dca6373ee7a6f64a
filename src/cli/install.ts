// What `nshub install` / `nshub uninstall` do (their command line: install-command.ts): put
// the binary into the CNI bin dir as `nshub-cni` and chain it, last, into the conflist the
// container runtime uses; undo both. Everything is
// checked before anything is written, every write is atomic, and running either twice is a
// no-op. See deploy/README.md for how the DaemonSet and the systemd units use these.
//
// Decisions:
// - The file chained into is the runtime's choice: the byte-wise first `*.conf`, `*.conflist`
//   or `*.json` in the conf dir (libcni's rule), unless `--conflist` names one.
// - A single-plugin `.conf`/`.json` is converted to `<base>.conflist` (runtimes read `.conf` as
//   one plugin) and the original removed, as Istio's installer does; uninstall puts it back.
// - No config at all: refuse (exit 1). nshub-cni is a chained plugin that needs the primary
//   plugin's result; a conflist of its own would give pods no network, and would win the
//   runtime's choice over the primary's file written later. `--wait <seconds>` waits for the
//   primary CNI to write its config first (as Istio's installer waits).
// - The backup `<file>.nshub-backup` is the file as it was before nshub was added: it is taken
//   only from a file without an nshub entry (so it never holds one), and kept across re-installs.
// - Uninstall restores the backup byte-for-byte when the file, minus the nshub entry, still
//   equals it (as JSON); otherwise it removes only the nshub entry and says so.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, readlinkSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { cniSchema } from "../config/schema.ts";
import {
  BACKUP_SUFFIX,
  ConflistError,
  PLUGIN_TYPE,
  chainedName,
  hasNshub,
  isConfigFileName,
  originalNamesFor,
  parseConfig,
  primaryConfigName,
  render,
  sameJson,
  toConflist,
  withNshub,
  withoutNshub,
  type Conflist,
} from "./install-conflist.ts";
import { classifyPlugin, copyFileAtomic, lstatOrUndefined, sameContent, symlinkAtomic, writeFileAtomic } from "./install-files.ts";

export { BINARY_MARKER } from "./install-files.ts";

export const DEFAULT_CNI_BIN_DIR = "/opt/cni/bin";
export const DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d";
export const DEFAULT_AGENT_SOCKET = cniSchema.parse(undefined).agentSocket;

export interface InstallOptions {
  cniBinDir?: string;
  cniConfDir?: string;
  /** A file name in the conf dir, or a path (anything with a slash). */
  conflist?: string;
  agentSocket?: string;
  /** The nshub binary to install; required when not running as the compiled binary. */
  binary?: string;
  link?: boolean;
  /** Seconds to wait for a CNI config to appear in the conf dir (install only). */
  waitSeconds?: number;
  /** Progress while waiting (the command prints it). */
  progress?: (line: string) => void;
}

export class InstallError extends Error {
  /** False once install has begun writing: the message then lists what was already done. */
  readonly nothingChanged: boolean;
  constructor(message: string, nothingChanged = true) {
    super(message);
    this.name = "InstallError";
    this.nothingChanged = nothingChanged;
  }
}

export interface Report {
  /** One line per thing done or found, for the operator. */
  lines: string[];
  changed: boolean;
  /** Files uninstall could not handle (it carries on with the others); exit status 1. */
  errors: string[];
}

const FILE_MODE_BINARY = 0o755;

function dirs(o: InstallOptions) {
  return { binDir: resolve(o.cniBinDir ?? DEFAULT_CNI_BIN_DIR), confDir: resolve(o.cniConfDir ?? DEFAULT_CNI_CONF_DIR) };
}

function conflistPath(confDir: string, conflist: string): string {
  return conflist.includes("/") ? resolve(conflist) : join(confDir, conflist);
}

/** The binary to install: --binary, else this executable when it is the compiled nshub. */
function sourceBinary(o: InstallOptions): string {
  if (o.binary !== undefined) return resolve(o.binary);
  if (Bun.isStandaloneExecutable) return process.execPath;
  throw new InstallError(`not running as the compiled nshub (this is ${process.execPath}); pass --binary <path to dist/nshub>`);
}

function referenceBinary(o: InstallOptions): string | undefined {
  if (o.binary !== undefined) return resolve(o.binary);
  return Bun.isStandaloneExecutable ? process.execPath : undefined;
}

function readText(path: string): string {
  return readBytes(path).toString("utf8");
}

function readBytes(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new InstallError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new InstallError(`cannot list ${dir}: ${(e as Error).message}`);
  }
}

async function findConfig(confDir: string, o: InstallOptions): Promise<string> {
  if (o.conflist !== undefined) {
    const p = conflistPath(confDir, o.conflist);
    if (!existsSync(p)) throw new InstallError(`--conflist ${p}: no such file`);
    return p;
  }
  const deadline = Date.now() + (o.waitSeconds ?? 0) * 1000;
  let said = false;
  for (;;) {
    const name = primaryConfigName(listDir(confDir));
    if (name) return join(confDir, name);
    if (Date.now() >= deadline) {
      throw new InstallError(
        `no CNI network config (*.conf, *.conflist, *.json) in ${confDir}: nshub-cni chains after the node's ` +
          `primary CNI plugin, so install that first (or pass --wait <seconds>, or --conflist <file>)`,
      );
    }
    if (!said) o.progress?.(`waiting up to ${o.waitSeconds}s for the primary CNI plugin to write its config into ${confDir} …`);
    said = true;
    await Bun.sleep(Math.min(250, Math.max(10, deadline - Date.now())));
  }
}

interface InstallPlan {
  binary: string;
  plugin: string;
  link: boolean;
  /** The config file as the runtime has it now, and its text. */
  file: string;
  raw: Buffer;
  text: string;
  /** Where the chained list goes (differs from `file` when a .conf is converted). */
  target: string;
  backup: string;
  had: boolean;
  same: boolean;
  nextText: string;
  plugins: number;
  agentSocket: string;
  notes: string[];
}

/** Step 1: everything is read and checked before anything is written. */
async function planInstall(o: InstallOptions): Promise<InstallPlan> {
  const { binDir, confDir } = dirs(o);
  const agentSocket = o.agentSocket ?? DEFAULT_AGENT_SOCKET;
  const notes: string[] = [];
  const binary = sourceBinary(o);
  if (!lstatOrUndefined(binary) || !statSync(binary).isFile()) throw new InstallError(`binary ${binary}: no such file`);
  if (o.conflist === undefined && !existsSync(confDir) && !(o.waitSeconds ?? 0)) throw new InstallError(`CNI conf dir ${confDir} does not exist`);
  const file = await findConfig(confDir, o);
  const dir = resolve(file, "..");
  const name = basename(file);
  // The raw bytes are what the backup keeps (and what uninstall gives back).
  const raw = readBytes(file);
  const text = raw.toString("utf8");
  const parsed = toConflist(parseConfig(text, file), file);
  const target = join(dir, chainedName(name));
  const backup = file + BACKUP_SUFFIX;
  if (o.conflist !== undefined) {
    const primary = primaryConfigName(listDir(dir));
    if (primary !== undefined && join(dir, primary) !== file) notes.push(`note: the runtime reads ${join(dir, primary)} first, not ${file}`);
  }
  if (target !== file && existsSync(target)) {
    // Only our own half-finished conversion (nshub entry in it, backup present) is overwritten.
    const there = tryList(target);
    if (!(there && hasNshub(there) && existsSync(backup))) {
      throw new InstallError(`${file} is a single-plugin config and would become ${target}, which already exists; remove one of them or pass --conflist`);
    }
  }
  const had = hasNshub(parsed);
  const next = withNshub(parsed, agentSocket);
  if (had) {
    const found = originalNamesFor(name).some((n) => existsSync(join(dir, n + BACKUP_SUFFIX)));
    if (!found) notes.push(`warning: ${file} already holds nshub-cni but has no ${BACKUP_SUFFIX} file; uninstall will remove only the nshub entry`);
  }
  return {
    binary,
    plugin: join(binDir, PLUGIN_TYPE),
    link: o.link ?? false,
    file,
    raw,
    text,
    target,
    backup,
    had,
    same: had && target === file && sameJson(next, parsed),
    nextText: render(next, text),
    plugins: next.plugins.length,
    agentSocket,
    notes,
  };
}

/** Steps 2-4; `done` gets a line per change or check, `state.changed` turns true at the first write. */
function applyInstall(p: InstallPlan, done: string[], state: { changed: boolean }): void {
  // 2. The binary, before the config names it.
  mkdirSync(resolve(p.plugin, ".."), { recursive: true, mode: 0o755 });
  const cur = lstatOrUndefined(p.plugin);
  if (p.link) {
    if (cur?.isSymbolicLink() && readlinkSync(p.plugin) === p.binary) done.push(`${p.plugin}: already a symlink to ${p.binary}`);
    else {
      symlinkAtomic(p.binary, p.plugin);
      done.push(`${p.plugin}: symlinked to ${p.binary}`);
      state.changed = true;
    }
  } else if (cur?.isFile() && (cur.mode & 0o777) === FILE_MODE_BINARY && sameContent(p.plugin, p.binary)) {
    done.push(`${p.plugin}: already a copy of ${p.binary}`);
  } else {
    copyFileAtomic(p.binary, p.plugin, FILE_MODE_BINARY);
    done.push(`${p.plugin}: copied from ${p.binary} (mode 0755)`);
    state.changed = true;
  }

  // 3. The backup: the file as it was without nshub (never a file that holds nshub).
  const mode = statSync(p.file).mode & 0o7777;
  if (!p.had) {
    const prev = existsSync(p.backup) ? readFileSync(p.backup) : undefined;
    if (prev?.equals(p.raw)) done.push(`${p.backup}: backup already there`);
    else {
      writeFileAtomic(p.backup, p.raw, mode);
      done.push(`${p.backup}: ${prev ? "backup refreshed (the file was replaced since the last install)" : "backup of the original written"}`);
      state.changed = true;
    }
  }

  // 4. The chained config.
  const where = `plugin ${p.plugins} of ${p.plugins}, agentSocket ${p.agentSocket}`;
  if (p.same) {
    done.push(`${p.file}: already chains ${PLUGIN_TYPE} last (${where})`);
  } else {
    writeFileAtomic(p.target, p.nextText, mode);
    const how = p.had ? `updated the ${PLUGIN_TYPE} entry` : `added ${PLUGIN_TYPE}`;
    const conv = p.target !== p.file ? `, converted from ${basename(p.file)}` : "";
    done.push(`${p.target}: ${how} as ${where}${conv}`);
    if (p.target !== p.file) {
      rmSync(p.file, { force: true });
      done.push(`${p.file}: removed (replaced by ${basename(p.target)}; uninstall puts it back)`);
    }
    state.changed = true;
  }
}

/** Puts the binary in place and chains nshub-cni into the runtime's conflist. */
export async function install(o: InstallOptions = {}): Promise<Report> {
  const plan = await planInstall(o);
  const done: string[] = [];
  const state = { changed: false };
  try {
    applyInstall(plan, done, state);
  } catch (e) {
    const before = done.length ? `\ndone before the failure:\n  ${done.join("\n  ")}` : "";
    throw new InstallError(`${(e as Error).message}${before}`, !state.changed);
  }
  const { changed } = state;
  const lines = [...plan.notes, ...done];
  if (!changed) lines.push("nothing to do: nshub is already installed");
  return { lines, changed, errors: [] };
}

interface Touched {
  original: string;
  target: string;
  backup?: string;
}

/** Restores the conflist (or removes just the nshub entry) and removes our nshub-cni. */
export async function uninstall(o: InstallOptions = {}): Promise<Report> {
  const { binDir, confDir } = dirs(o);
  const lines: string[] = [];
  let changed = false;
  const failures: string[] = [];

  // Which files nshub touched: each backup names its original; files holding an nshub entry
  // without a backup are handled too (the entry alone is removed).
  const records: Touched[] = [];
  const only = o.conflist !== undefined ? conflistPath(confDir, o.conflist) : undefined;
  const scanDir = only ? resolve(only, "..") : confDir;
  const names = listDir(scanDir);
  for (const n of names) {
    if (!n.endsWith(BACKUP_SUFFIX)) continue;
    const original = n.slice(0, -BACKUP_SUFFIX.length);
    if (!isConfigFileName(original)) continue;
    const rec = { original: join(scanDir, original), target: join(scanDir, chainedName(original)), backup: join(scanDir, n) };
    if (only && only !== rec.original && only !== rec.target) continue;
    records.push(rec);
  }
  const covered = new Set(records.map((r) => r.target));
  for (const n of names.filter(isConfigFileName)) {
    const p = join(scanDir, n);
    if (covered.has(p) || (only && only !== p)) continue;
    const list = tryList(p);
    if (list && hasNshub(list)) records.push({ original: p, target: p });
  }

  for (const r of records) {
    try {
      if (restore(r, lines)) changed = true;
    } catch (e) {
      failures.push(e instanceof InstallError || e instanceof ConflistError ? e.message : `${r.target}: ${(e as Error).message}`);
    }
  }

  // The plugin binary goes last, and only when no config still names it.
  const plugin = join(binDir, PLUGIN_TYPE);
  const kind = classifyPlugin(plugin, referenceBinary(o));
  if (kind.kind === "ours") {
    const still = listDir(confDir)
      .filter(isConfigFileName)
      .map((n) => join(confDir, n))
      .filter((p) => {
        const l = tryList(p);
        return l !== undefined && hasNshub(l);
      });
    if (still.length > 0) lines.push(`${plugin}: kept, still named by ${still.join(", ")}`);
    else {
      rmSync(plugin, { force: true });
      lines.push(`${plugin}: removed (${kind.how})`);
      changed = true;
    }
  } else if (kind.kind === "foreign") {
    lines.push(`${plugin}: left alone: ${kind.why}`);
  }

  if (!changed && failures.length === 0 && lines.length === 0) lines.push(`nothing to do: nshub is not installed (no nshub entry in ${scanDir}, no ${plugin})`);
  else if (!changed && failures.length === 0) lines.push("nothing to do");
  return { lines, changed, errors: failures };
}

function tryList(p: string): Conflist | undefined {
  try {
    return toConflist(parseConfig(readFileSync(p, "utf8"), p), p);
  } catch {
    return undefined;
  }
}

/** Undoes one file; returns whether anything changed. */
function restore(r: Touched, lines: string[]): boolean {
  const { original, target, backup } = r;
  const exists = existsSync(target);
  const text = exists ? readText(target) : undefined;
  const current = text !== undefined ? toConflist(parseConfig(text, target), target) : undefined;
  const mode = exists ? statSync(target).mode & 0o7777 : 0o644;

  if (backup === undefined) {
    if (!current || !hasNshub(current)) return false;
    writeFileAtomic(target, render(withoutNshub(current), text), mode);
    lines.push(`${target}: removed the nshub-cni entry (no ${BACKUP_SUFFIX} to restore)`);
    return true;
  }

  const saved = readFileSync(backup);
  let savedList: Conflist | undefined;
  try {
    savedList = toConflist(parseConfig(saved.toString("utf8"), backup), backup);
  } catch {
    savedList = undefined;
  }
  if (!current) {
    rmSync(backup, { force: true });
    const why = existsSync(original) ? `${original} was never chained (an install stopped half-way)` : `${target} is gone; nothing to restore`;
    lines.push(`${why}: removed the stale ${basename(backup)}`);
    return true;
  }
  if (!hasNshub(current)) {
    rmSync(backup, { force: true });
    lines.push(`${target}: has no nshub-cni entry (replaced since install?); left as is, removed the stale ${basename(backup)}`);
    return true;
  }
  if (savedList && sameJson(withoutNshub(current), savedList)) {
    writeFileAtomic(original, saved, statSync(backup).mode & 0o7777);
    if (target !== original) rmSync(target, { force: true });
    rmSync(backup, { force: true });
    lines.push(`${original}: restored byte-for-byte from ${basename(backup)}${target !== original ? ` (removed ${basename(target)})` : ""}; backup removed`);
    return true;
  }
  writeFileAtomic(target, render(withoutNshub(current), text), mode);
  rmSync(backup, { force: true });
  lines.push(`${target}: changed since install in other ways, so removed only the nshub-cni entry instead of restoring ${basename(backup)}; backup removed`);
  return true;
}
