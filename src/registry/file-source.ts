// Workloads from a file in ztunnel's local-config format (./local-config.ts), re-read when it
// changes. ztunnel reads its LOCAL_XDS_PATH once at start; nshub follows edits:
//   * it watches the file's directory, not the file: editors and `kubectl` ConfigMap mounts
//     replace the file (rename, or a `..data` symlink swap), which a watch on the old inode
//     never reports; any event there re-reads the file after a short debounce;
//   * a slow stat poll backs the watch up (filesystems where inotify says nothing, e.g. NFS);
//   * a re-read with the same text changes nothing; a bad file, or a missing one, is reported
//     (file, entry, field, line) and the previous workloads stay in use until a good file comes.
// To empty the model on purpose, write `workloads: []`.
import { statSync, watch, type FSWatcher } from "node:fs";
import { dirname, resolve } from "node:path";
import { createLogger, type Logger } from "../log/logger.ts";
import { LocalConfigError, parseLocalConfig, readLocalConfigText, type LocalConfig } from "./local-config.ts";
import { PRECEDENCE, type SourceSink, type WorkloadSource } from "./source.ts";

export interface FileSourceOptions {
  /** Quiet time after the last change event before re-reading (editors write in several steps). */
  debounceMs?: number;
  /** Stat poll interval, the watch's backup; 0 turns it off. */
  pollMs?: number;
  log?: Logger;
}

export class FileWorkloadSource implements WorkloadSource {
  readonly name: string;
  readonly precedence = PRECEDENCE.file;
  readonly file: string;
  readonly #debounceMs: number;
  readonly #pollMs: number;
  readonly #log: Logger;
  #sink: SourceSink | undefined;
  #watcher: FSWatcher | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #poll: ReturnType<typeof setInterval> | undefined;
  /** The text of the last good read: an event that changed nothing (touch, chmod) costs no parse. */
  #lastText: string | undefined;
  #lastStat = "";
  #lastError: LocalConfigError | undefined;
  #loads = 0;

  constructor(file: string, opts: FileSourceOptions = {}) {
    this.file = resolve(file);
    this.name = `file:${this.file}`;
    this.#debounceMs = opts.debounceMs ?? 100;
    this.#pollMs = opts.pollMs ?? 5000;
    this.#log = opts.log ?? createLogger("registry");
  }

  /** Reads the file once (a bad file is reported, not thrown), then follows it. */
  start(sink: SourceSink): void {
    this.#sink = sink;
    this.reload();
    try {
      this.#watcher = watch(dirname(this.file), { persistent: false }, () => this.#schedule());
      this.#watcher.on("error", (e) => this.#log.warn("workloads file watch failed; polling only", { file: this.file, error: e }));
    } catch (e) {
      // No directory yet: the poll notices when the file appears.
      this.#log.warn("cannot watch the workloads file's directory; polling only", { file: this.file, error: e as Error });
    }
    if (this.#pollMs > 0) {
      this.#poll = setInterval(() => {
        if (this.#statKey() !== this.#lastStat) this.#schedule();
      }, this.#pollMs);
      this.#poll.unref();
    }
  }

  stop(): void {
    this.#sink = undefined;
    this.#watcher?.close();
    this.#watcher = undefined;
    clearTimeout(this.#timer);
    clearInterval(this.#poll);
  }

  /** The last read's problem, undefined when the last read was good. */
  get lastError(): LocalConfigError | undefined {
    return this.#lastError;
  }

  /** How many times the file was read into the model (good reads only). */
  get loads(): number {
    return this.#loads;
  }

  /** Re-reads the file now; returns what was read, or undefined (unchanged or bad). */
  reload(): LocalConfig | undefined {
    const sink = this.#sink;
    if (!sink) return undefined;
    this.#lastStat = this.#statKey();
    try {
      const text = readLocalConfigText(this.file);
      if (text === this.#lastText) return undefined;
      this.#lastText = text;
      const cfg = parseLocalConfig(text, { file: this.file, trustDomain: sink.trustDomain, source: this.name });
      this.#lastError = undefined;
      this.#loads++;
      sink.snapshot(cfg.workloads);
      sink.error(null);
      this.#log.info("workloads file read", { file: this.file, workloads: cfg.workloads.length, ignoredServices: cfg.services, ignoredPolicies: cfg.policies });
      return cfg;
    } catch (e) {
      if (!(e instanceof LocalConfigError)) throw e;
      // A bad read is not remembered as text: fixing the file back to the last good text reloads.
      this.#lastText = undefined;
      this.#lastError = e;
      sink.error(e);
      return undefined;
    }
  }

  #schedule(): void {
    if (!this.#sink) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      try {
        this.reload();
      } catch (e) {
        // A bug here must not take the proxy down with it; the previous workloads stay.
        this.#log.error("workloads file reload failed", { file: this.file, error: e as Error });
      }
    }, this.#debounceMs);
    this.#timer.unref?.();
  }

  /** Identity of the file's current version: inode, size, mtime ("" when it cannot be read). */
  #statKey(): string {
    try {
      const st = statSync(this.file);
      return `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      return "";
    }
  }
}
