// Policies from a file or folder, reloaded when it changes. The watch is on the folder (for a
// file: its parent), so editors that replace the file and ConfigMap volumes that swap a `..data`
// symlink are both seen; a periodic re-read covers anything the watch misses. Changes settle for
// `debounceMs` before a reload. A reload with any bad document is refused as a whole — each error
// logged with file, line, document and field — and the last good set stays in force: applying
// the good half of an edit could drop a DENY. Only a changed set is emitted.
import { watch, type FSWatcher } from "node:fs";
import { dirname } from "node:path";
import { statSync } from "node:fs";
import { createLogger, type Logger } from "../log/logger.ts";
import { formatLoadError, loadPolicyPath, type LoadError, type PolicyDocuments } from "./load.ts";

export interface PolicyFileSourceOptions {
  path: string;
  /** A good set that differs from the last one: the caller builds its PolicySet from it. */
  onUpdate: (docs: PolicyDocuments & { files: string[] }) => void;
  /** A reload refused (the last good set stays). */
  onError?: (errors: LoadError[]) => void;
  debounceMs?: number;
  /** Re-read this often even without a watch event; 0: never. */
  resyncMs?: number;
  log?: Logger;
}

export const DEFAULT_DEBOUNCE_MS = 100;
export const DEFAULT_RESYNC_MS = 30_000;

export class PolicyFileSource {
  private readonly log: Logger;
  private watcher?: FSWatcher;
  private timer?: ReturnType<typeof setTimeout>;
  private resync?: ReturnType<typeof setInterval>;
  private lastFingerprint?: string;
  private closed = false;
  /** Whether a good set has been emitted. */
  loaded = false;
  /** Reloads done (good or refused); tests wait on it. */
  reloads = 0;

  constructor(private readonly opts: PolicyFileSourceOptions) {
    this.log = opts.log ?? createLogger("policy");
  }

  /**
   * Loads now and starts watching. Returns the first load's errors ([] when it applied): with
   * errors nothing was emitted, and a daemon should refuse to start rather than run unprotected.
   */
  start(): LoadError[] {
    const errors = this.reload();
    this.arm();
    const every = this.opts.resyncMs ?? DEFAULT_RESYNC_MS;
    if (every > 0) this.resync = setInterval(() => this.reload(), every);
    this.resync?.unref();
    return errors;
  }

  private arm(): void {
    const path = this.opts.path;
    let dir = path;
    try {
      if (!statSync(path).isDirectory()) dir = dirname(path);
    } catch {
      dir = dirname(path); // the file may appear later
    }
    try {
      this.watcher = watch(dir, { persistent: false }, () => this.schedule());
      this.watcher.on("error", (e) => {
        this.log.warn("policy watch failed; the periodic re-read continues", { path: dir, error: e });
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch (e) {
      this.log.warn("cannot watch policies; the periodic re-read continues", { path: dir, error: e as Error });
    }
  }

  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.reload(), this.opts.debounceMs ?? DEFAULT_DEBOUNCE_MS);
  }

  /** Reads and applies now; returns the errors that refused it ([] when applied or unchanged). */
  reload(): LoadError[] {
    if (this.closed) return [];
    if (!this.watcher && this.resync) this.arm();
    const r = loadPolicyPath(this.opts.path);
    this.reloads++;
    for (const note of r.notes) this.log.debug(note);
    // An unchanged text is neither re-applied nor re-reported (the re-read would repeat errors).
    if (r.fingerprint === this.lastFingerprint && r.errors.length === 0) return [];
    const repeat = r.fingerprint === this.lastFingerprint;
    this.lastFingerprint = r.fingerprint;
    if (r.errors.length > 0) {
      if (!repeat) {
        for (const e of r.errors) this.log.error(`policy error: ${formatLoadError(e)}`, { file: e.file, line: e.line, document: e.document, field: e.path });
        this.log.error(this.loaded ? "policy reload refused: the previous policies stay in force" : "policies not loaded", { path: this.opts.path, errors: r.errors.length });
        this.opts.onError?.(r.errors);
      }
      return r.errors;
    }
    this.loaded = true;
    this.log.info("policies loaded", { path: this.opts.path, files: r.files.length, authorizationPolicies: r.authorizationPolicies.length, peerAuthentications: r.peerAuthentications.length });
    this.opts.onUpdate({ authorizationPolicies: r.authorizationPolicies, peerAuthentications: r.peerAuthentications, files: r.files });
    return [];
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.resync);
    this.watcher?.close();
  }
}
