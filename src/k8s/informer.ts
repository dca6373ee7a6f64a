// A watch cache of one kind of object (client-go calls it an informer): a LIST, then a WATCH
// from the list's resourceVersion with bookmarks, applied to an in-memory copy that consumers
// read (`list`, `get`) and follow (`onEvent`). Its rules, each for a reason:
// - Nothing is emitted and `synced` stays false until the first complete LIST is in: an agent
//   that acted on half a list would unenroll the pods of the other half.
// - A re-LIST (after 410 Gone) replaces the cache at once and emits only the difference, so a
//   consumer sees no phantom DELETED for objects that are still there and misses no ADDED.
// - When the API server cannot be reached the cache stays as it was and `synced` stays true: the
//   node keeps working with what it last knew. One warning per outage (again only if the cause
//   changes), then quiet retries with backoff, and one line when it is back.
import { createLogger, type Logger } from "../log/logger.ts";
import { Backoff, sleep, type BackoffOptions } from "./backoff.ts";
import { describeError, KubeApiError, type KubeClient, type WatchEvent } from "./client.ts";
import { objectKey, resourcePath, type KubeObject, type ResourceType } from "./objects.ts";

export type EventType = "ADDED" | "MODIFIED" | "DELETED";
export type InformerHandler<T> = (type: EventType, obj: T) => void;

export interface InformerOptions {
  client: Pick<KubeClient, "server" | "list" | "watch">;
  resource: ResourceType;
  /** Only this namespace; default: all. */
  namespace?: string;
  labelSelector?: string;
  /** e.g. `spec.nodeName=<node>` for the pods of one node. */
  fieldSelector?: string;
  backoff?: BackoffOptions;
  /** How long the server keeps a watch open before the informer renews it; default 5–10 min. */
  watchTimeoutSeconds?: number;
  log?: Logger;
}

export interface InformerStats {
  lists: number;
  watches: number;
  bookmarks: number;
  failures: number;
  /** Re-lists because the server no longer had the version asked for (410 Gone). */
  gone: number;
}

/** An established watch stream that failed midway (reset, cut), as opposed to one never opened. */
class WatchBroken extends Error {
  constructor(override readonly cause: unknown) {
    super("watch broke");
  }
}

/** A watch that ends this soon with nothing delivered waits a backoff step before the next. */
const SHORT_WATCH_MS = 1000;

export class Informer<T extends KubeObject = KubeObject> {
  readonly stats: InformerStats = { lists: 0, watches: 0, bookmarks: 0, failures: 0, gone: 0 };
  readonly #opts: InformerOptions;
  readonly #log: Logger;
  readonly #what: string;
  readonly #backoff: Backoff;
  #cache = new Map<string, T>();
  readonly #handlers = new Set<InformerHandler<T>>();
  #synced = false;
  #rv = "";
  readonly #ready: Promise<void>;
  #resolveReady!: () => void;
  readonly #stop = new AbortController();
  #loop: Promise<void> | undefined;
  #outage: { since: number; cause: string } | undefined;

  constructor(opts: InformerOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? createLogger("k8s");
    const filters = [opts.namespace && `namespace ${opts.namespace}`, opts.labelSelector, opts.fieldSelector].filter(Boolean);
    this.#what = `${opts.resource.plural}${filters.length ? ` (${filters.join(", ")})` : ""}`;
    this.#backoff = new Backoff(opts.backoff);
    this.#ready = new Promise((r) => (this.#resolveReady = r));
  }

  /** True once the first complete LIST is in; stays true through outages. */
  get synced(): boolean {
    return this.#synced;
  }

  /** Resolves when `synced` becomes true (after the first list's ADDED events were delivered). */
  get ready(): Promise<void> {
    return this.#ready;
  }

  /** The version the cache is at (the last list, event or bookmark). */
  get resourceVersion(): string {
    return this.#rv;
  }

  get size(): number {
    return this.#cache.size;
  }

  /**
   * Follows changes: ADDED (new to the cache), MODIFIED, DELETED, in the order the server made
   * them; the first list arrives as ADDED events. Returns the unsubscribe function.
   */
  onEvent(handler: InformerHandler<T>): () => void {
    this.#handlers.add(handler);
    return () => this.#handlers.delete(handler);
  }

  list(): T[] {
    return [...this.#cache.values()];
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.#cache.get(objectKey(namespace, name));
  }

  start(): this {
    this.#loop ??= this.#run();
    return this;
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    let goneInARow = 0;
    while (!signal.aborted) {
      try {
        if (this.#rv === "") await this.#relist(signal);
        const r = await this.#watch(signal);
        if (r.events > 0) goneInARow = 0;
        // A clean end is the server's timeout: watch again from where we are. One that ended at
        // once with nothing in it would otherwise spin.
        if (r.events === 0 && r.ms < SHORT_WATCH_MS) await sleep(this.#backoff.next(), signal);
      } catch (e) {
        if (signal.aborted) break;
        if (e instanceof KubeApiError && e.gone) {
          this.stats.gone++;
          this.#log.info(`${this.#what}: version ${this.#rv} is no longer kept by the API server (410 Gone); re-listing`, { server: this.#opts.client.server });
          this.#rv = "";
          if (++goneInARow > 1) await sleep(this.#backoff.next(), signal);
          continue;
        }
        if (e instanceof WatchBroken) {
          // an established stream cut (API server restarting, a load balancer): not an outage
          // unless watching again fails, which #failed then reports
          this.#log.debug(`the watch of ${this.#what} broke: ${describeError(e.cause)}; watching again`, { server: this.#opts.client.server });
        } else this.#failed(e);
        await sleep(this.#backoff.next(), signal);
      }
    }
  }

  #query(): Record<string, string | undefined> {
    return { labelSelector: this.#opts.labelSelector, fieldSelector: this.#opts.fieldSelector };
  }

  #path(): string {
    return resourcePath(this.#opts.resource, this.#opts.namespace);
  }

  /** LIST and replace the cache as a whole, emitting what changed. */
  async #relist(signal: AbortSignal): Promise<void> {
    const r = await this.#opts.client.list<T>(this.#path(), this.#query(), signal);
    this.stats.lists++;
    this.#recovered(`re-listing ${this.#what}`);
    const next = new Map<string, T>();
    for (const o of r.items) next.set(objectKey(o.metadata.namespace, o.metadata.name), this.#typed(o));
    const changes: [EventType, T][] = [];
    for (const [k, o] of this.#cache) if (!next.has(k)) changes.push(["DELETED", o]);
    for (const [k, o] of next) {
      const before = this.#cache.get(k);
      if (!before) changes.push(["ADDED", o]);
      else if (before.metadata.resourceVersion !== o.metadata.resourceVersion) changes.push(["MODIFIED", o]);
    }
    this.#cache = next;
    this.#rv = r.resourceVersion;
    const first = !this.#synced;
    this.#synced = true;
    if (first) this.#log.info(`listed ${next.size} ${this.#what}`, { server: this.#opts.client.server, resourceVersion: r.resourceVersion });
    else this.#log.info(`re-listed ${this.#what}: ${changes.length} changed while unwatched`, { server: this.#opts.client.server, resourceVersion: r.resourceVersion, objects: next.size });
    for (const [type, o] of changes) this.#emit(type, o);
    if (first) this.#resolveReady();
  }

  /** One WATCH from the current version until the server ends it. */
  async #watch(signal: AbortSignal): Promise<{ events: number; ms: number }> {
    const timeout = this.#opts.watchTimeoutSeconds ?? Math.round(300 + Math.random() * 300);
    // A watch on a connection that died silently would wait forever: give up a while after the
    // server should have ended it.
    const guard = AbortSignal.any([signal, AbortSignal.timeout((timeout + 30) * 1000)]);
    const started = Date.now();
    const events = await this.#opts.client.watch<T>(this.#path(), { ...this.#query(), resourceVersion: this.#rv, allowWatchBookmarks: true, timeoutSeconds: timeout }, guard);
    this.stats.watches++;
    this.#recovered(`watching ${this.#what} from version ${this.#rv}`);
    let n = 0;
    try {
      for await (const e of events) {
        this.#apply(e);
        n++;
      }
    } catch (e) {
      if (e instanceof KubeApiError || signal.aborted) throw e;
      throw new WatchBroken(e);
    }
    return { events: n, ms: Date.now() - started };
  }

  #apply(e: WatchEvent<T>): void {
    const o = e.object;
    if (o.metadata?.resourceVersion) this.#rv = o.metadata.resourceVersion;
    if (e.type === "BOOKMARK") {
      this.stats.bookmarks++;
      return;
    }
    const key = objectKey(o.metadata.namespace, o.metadata.name);
    const known = this.#cache.has(key);
    if (e.type === "DELETED") {
      if (!known) return; // never seen: nothing for a consumer to undo
      this.#cache.delete(key);
      this.#emit("DELETED", this.#typed(o));
      return;
    }
    const obj = this.#typed(o);
    this.#cache.set(key, obj);
    this.#emit(known ? "MODIFIED" : "ADDED", obj);
  }

  /** List items come without kind and apiVersion; consumers get them on every object. */
  #typed(o: T): T {
    const r = this.#opts.resource;
    if (o.kind && o.apiVersion) return o;
    return { ...o, kind: r.kind, apiVersion: r.group === "" ? r.version : `${r.group}/${r.version}` };
  }

  #emit(type: EventType, obj: T): void {
    for (const h of this.#handlers) {
      try {
        h(type, obj);
      } catch (e) {
        this.#log.error(`a handler of ${this.#what} events failed`, { type, object: objectKey(obj.metadata.namespace, obj.metadata.name), error: e as Error });
      }
    }
  }

  #failed(e: unknown): void {
    this.stats.failures++;
    const cause = describeError(e);
    const server = this.#opts.client.server;
    const kept = this.#synced ? `keeping the last known ${this.#cache.size} ${this.#opts.resource.plural}` : `no ${this.#opts.resource.plural} known yet (nothing is acted on before the first complete list)`;
    const headline = e instanceof KubeApiError ? `API server ${server} refused ${this.#what}: ${cause}` : `API server ${server} unreachable: ${cause}`;
    const fields = { server, resource: this.#opts.resource.plural, error: cause, kept: this.#cache.size, synced: this.#synced };
    if (this.#outage === undefined || this.#outage.cause !== cause) {
      this.#outage ??= { since: Date.now(), cause };
      this.#outage.cause = cause;
      this.#log.warn(`${headline}; ${kept}`, fields);
    } else this.#log.debug(`${headline}; retrying`, fields);
  }

  /** The API server answered: end the outage (one line) and start backoff afresh. */
  #recovered(action: string): void {
    this.#backoff.reset();
    if (this.#outage === undefined) return;
    const s = ((Date.now() - this.#outage.since) / 1000).toFixed(1);
    this.#outage = undefined;
    this.#log.info(`API server ${this.#opts.client.server} reachable again after ${s} s; ${action}`, { server: this.#opts.client.server, resource: this.#opts.resource.plural });
  }
}
