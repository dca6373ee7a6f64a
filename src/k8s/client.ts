// A small Kubernetes API client on Bun's fetch: JSON requests, LIST, WATCH as a stream of events,
// and the two writes nshub makes (pod annotations, TokenReview). Written here rather than taken
// from @kubernetes/client-node, whose TLS settings do not reach Bun's fetch (src/k8s/README.md,
// "Why not @kubernetes/client-node"). The CA, client certificate and server name go in fetch's
// `tls` option, per request, so they apply to this API server only and to nothing else nshub
// connects to.
import { readFileSync } from "node:fs";
import type { ClusterConfig } from "./config.ts";
import { resourcePath, PODS, type KubeObject, type Pod } from "./objects.ts";

/** A non-2xx answer, or an ERROR event in a watch; `status`/`reason` from the API's Status. */
export class KubeApiError extends Error {
  override name = "KubeApiError";
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
  /** 410 Gone: the asked-for resourceVersion is older than the server keeps. */
  get gone(): boolean {
    return this.status === 410;
  }
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";

export interface WatchEvent<T extends KubeObject = KubeObject> {
  type: WatchEventType;
  object: T;
}

export interface ListResult<T extends KubeObject = KubeObject> {
  items: T[];
  resourceVersion: string;
}

export interface TokenReviewResult {
  authenticated: boolean;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  audiences?: string[];
  error?: string;
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
  /** Whole-request limit for ordinary requests (default 30 s); watches pass 0 and their own signal. */
  timeoutMs?: number;
}

/** How long a token read from a file is used before it is read again (client-go: a minute). */
const TOKEN_REREAD_MS = 60_000;

export class KubeClient {
  readonly #cfg: ClusterConfig;
  #token: { value: string; readAt: number } | undefined;

  constructor(cfg: ClusterConfig) {
    this.#cfg = cfg;
  }

  /** The API server's URL, for logs. */
  get server(): string {
    return this.#cfg.server;
  }

  get config(): ClusterConfig {
    return this.#cfg;
  }

  #bearer(): string | undefined {
    if (this.#cfg.tokenFile) {
      if (!this.#token || Date.now() - this.#token.readAt > TOKEN_REREAD_MS) {
        try {
          this.#token = { value: readFileSync(this.#cfg.tokenFile, "utf8").trim(), readAt: Date.now() };
        } catch (e) {
          // a token being rotated: keep the last one if there is one
          if (!this.#token) throw e;
        }
      }
      return this.#token.value;
    }
    return this.#cfg.token;
  }

  /** Sends a request; a non-2xx answer throws KubeApiError. Network failures throw fetch's error. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.#cfg.server + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: "application/json", "user-agent": "nshub" };
    const token = this.#bearer();
    if (token) headers.authorization = `Bearer ${token}`;
    if (opts.body !== undefined) headers["content-type"] = opts.contentType ?? "application/json";
    const timeout = opts.timeoutMs ?? 30_000;
    const signals = [opts.signal, timeout > 0 ? AbortSignal.timeout(timeout) : undefined].filter((s): s is AbortSignal => s !== undefined);
    const res = await fetch(url, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: signals.length ? AbortSignal.any(signals) : undefined,
      tls: {
        ...(this.#cfg.ca ? { ca: this.#cfg.ca } : {}),
        ...(this.#cfg.clientCert ? { cert: this.#cfg.clientCert, key: this.#cfg.clientKey } : {}),
        ...(this.#cfg.tlsServerName ? { serverName: this.#cfg.tlsServerName } : {}),
        rejectUnauthorized: !this.#cfg.insecureSkipTlsVerify,
      },
    });
    if (res.ok) return res;
    throw await apiError(res);
  }

  async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(method, path, opts);
    return (await res.json()) as T;
  }

  /** One complete LIST (kube-apiserver answers all items unless asked for pages). */
  async list<T extends KubeObject>(path: string, query: RequestOptions["query"] = {}, signal?: AbortSignal): Promise<ListResult<T>> {
    const body = await this.json<{ items?: T[]; metadata?: { resourceVersion?: string; continue?: string } }>("GET", path, { query, signal });
    if (body.metadata?.continue) throw new Error(`the API server answered ${path} in pages without being asked`);
    return { items: body.items ?? [], resourceVersion: body.metadata?.resourceVersion ?? "" };
  }

  /**
   * Opens a WATCH; resolves once the server has answered (the watch is established) with its
   * events, which end when the server ends the stream (its timeoutSeconds) or `signal` aborts.
   * An ERROR event throws KubeApiError (410: `gone`) from the iteration, as a non-2xx answer
   * does from this call.
   */
  async watch<T extends KubeObject>(path: string, query: RequestOptions["query"], signal: AbortSignal): Promise<AsyncIterable<WatchEvent<T>>> {
    const res = await this.request("GET", path, { query: { ...query, watch: true }, signal, timeoutMs: 0 });
    return watchEvents<T>(res);
  }

  /**
   * Sets (string) or removes (null) annotations of a pod with a JSON merge patch: other
   * annotations stay, and no resourceVersion is needed.
   */
  async patchPodAnnotations(namespace: string, name: string, annotations: Record<string, string | null>): Promise<Pod> {
    return this.json<Pod>("PATCH", resourcePath(PODS, namespace, name), { body: { metadata: { annotations } }, contentType: "application/merge-patch+json" });
  }

  /** Asks the API server whose token this is (authentication.k8s.io/v1 TokenReview). */
  async createTokenReview(token: string, audiences?: string[]): Promise<TokenReviewResult> {
    const body = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, ...(audiences ? { audiences } : {}) } };
    const r = await this.json<{ status?: TokenReviewResult }>("POST", "/apis/authentication.k8s.io/v1/tokenreviews", { body });
    return { ...r.status, authenticated: r.status?.authenticated === true };
  }
}

/** The JSON lines of a watch response as events (blank lines skipped). */
async function* watchEvents<T extends KubeObject>(res: Response): AsyncGenerator<WatchEvent<T>> {
  if (!res.body) return;
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of res.body) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line === "") continue;
      const e = JSON.parse(line) as { type: string; object: Record<string, unknown> };
      if (e.type === "ERROR") {
        const s = e.object as { code?: number; reason?: string; message?: string };
        throw new KubeApiError(s.code ?? 500, s.reason ?? "", s.message ?? "watch error");
      }
      yield e as unknown as WatchEvent<T>;
    }
  }
}

async function apiError(res: Response): Promise<KubeApiError> {
  const text = await res.text().catch(() => "");
  try {
    const s = JSON.parse(text) as { kind?: string; reason?: string; message?: string };
    if (s.kind === "Status") return new KubeApiError(res.status, s.reason ?? "", s.message ?? res.statusText);
  } catch {
    // not a Status: a proxy or load balancer answered
  }
  return new KubeApiError(res.status, res.statusText, text.slice(0, 200) || res.statusText);
}

/** A short cause for logs: "ECONNREFUSED", "403 Forbidden: pods is forbidden: …". */
export function describeError(e: unknown): string {
  if (e instanceof KubeApiError) return `${e.status}${e.reason ? ` ${e.reason}` : ""}: ${e.message}`;
  const err = e as { code?: string; message?: string; name?: string };
  if (err?.name === "TimeoutError") return "timed out";
  if (err?.code) return err.message?.startsWith(err.code) || !err.message ? err.code : `${err.code} (${err.message})`;
  return err?.message ?? String(e);
}
