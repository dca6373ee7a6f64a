// The proxy's certificate manager: one workload certificate per identity (SPIFFE ID), shared by
// every pod with that identity, as ztunnel's SecretManager does
// (https://github.com/istio/ztunnel/blob/master/src/identity/manager.rs). A certificate is
// requested when the first pod with an identity arrives and dropped when the last one leaves;
// it is renewed in the background at about half its life (refreshAt, with jitter); a failed
// request is retried with a per-identity exponential backoff (≈1 s ±20 %, ×2, capped at 150 s,
// ztunnel's CERT_REFRESH_FAILURE_RETRY_DELAY_MAX_INTERVAL), and the last valid certificate is
// kept until it expires. At most 8 requests run at once (ztunnel's fetch concurrency).
//
// Keys are generated per request (fetchWorkloadCertificate) and live in memory only. Nothing
// here logs or returns a private key except the "issued" event, which is the seam for the TLS
// stacks of the data-plane threads (HBONE, next): they take the PEMs from it.
import type { Logger } from "../log/logger.ts";
import type { CertificateSource } from "./source.ts";
import { fetchWorkloadCertificate, refreshAt, type WorkloadCertificate } from "./workload-cert.ts";
import { certFacts, splitPem } from "./x509.ts";

/**
 * initializing: first request under way, nothing yet · valid · renewing: a valid certificate is
 * held while a new one is requested or retried (lastError says why when a try failed) ·
 * expired: the held one expired before a new one came · failed: none held, the last try failed.
 */
export type CertState = "initializing" | "valid" | "renewing" | "expired" | "failed";

export interface PodRef {
  uid: string;
  name?: string;
  namespace?: string;
}

export type CertEvent =
  /** A new certificate for `identity` (first, or a renewal replacing an older one). */
  | { type: "issued"; identity: string; cert: WorkloadCertificate; renewal: boolean }
  /** A request failed; retried at `retryAt`. */
  | { type: "failed"; identity: string; error: string; retryAt: Date }
  /** The held certificate expired without a replacement: nothing valid to present. */
  | { type: "expired"; identity: string }
  /** The last pod with this identity left: its certificate is forgotten. */
  | { type: "dropped"; identity: string };

export interface ChainEntry {
  /** Public certificate PEM. */
  pem: string;
  /** One of the trust anchors the CA sent last (else the leaf or an intermediate). */
  root: boolean;
  subject: string;
  issuer: string;
  serial: string;
  notBefore: string;
  notAfter: string;
}

/** What `GET /certs` and config_dump show of one identity: no private key, ever. */
export interface CertStatus {
  identity: string;
  state: CertState;
  pods: PodRef[];
  /** The held certificate's facts (hex serial), when one is held. */
  serial?: string;
  notBefore?: string;
  notAfter?: string;
  /** When the next renewal starts (valid), or the next retry (after a failure). */
  renewAt?: string;
  /** Every certificate of the chain, the leaf first, the roots last. */
  chain: ChainEntry[];
  lastError?: string;
  /** Certificates obtained that replaced an earlier one; requests that failed. */
  renewals: number;
  failures: number;
}

/** `GET /certs` on the proxy admin (src/proxy/cert-admin.ts), read by `nshub certs`: no PEMs at all. */
export interface CertsResponse {
  /** The source's description; "none" when proxy.ca.source is none. */
  source: string;
  trustDomain: string;
  lifetimeSeconds: number;
  certificates: CertsEntry[];
}

export type CertsEntry = Omit<CertStatus, "chain"> & { chain: Array<Omit<ChainEntry, "pem">> };

export interface CertManagerOptions {
  source: CertificateSource;
  /** Requested lifetime, seconds. */
  lifetimeSeconds: number;
  log: Logger;
  /** First retry delay (default 1000 ms), doubling, capped at maxRetryMs (default 150 000). */
  initialRetryMs?: number;
  maxRetryMs?: number;
  /** Requests at once (default 8). */
  concurrency?: number;
  /** Tests: a fixed clock/randomness, or another fetch. */
  now?: () => number;
  random?: () => number;
  fetch?: (source: CertificateSource, identity: string, lifetimeSeconds: number, signal: AbortSignal) => Promise<WorkloadCertificate>;
}

/** Renewals start up to this share of the wait earlier (spreads identities issued together). */
const RENEW_JITTER = 0.1;
/** ±20 % on each retry delay, as ztunnel's backoff. */
const RETRY_JITTER = 0.2;

/**
 * When to renew a certificate received at `receivedAt`: refreshAt (halfway through its life, as
 * ztunnel), but never before halfway through the time it had left on arrival — a CA back-dates
 * NotBefore (istiod and nshub's by 2 min), which would make a short-lived certificate due at
 * once — minus up to 10 % of the wait (`random` in [0, 1)).
 */
export function renewalTime(cert: Pick<WorkloadCertificate, "notBefore" | "notAfter">, receivedAt: number, random: number): number {
  const half = Math.max(refreshAt(cert).getTime(), receivedAt + (cert.notAfter.getTime() - receivedAt) / 2);
  return Math.round(half - random * RENEW_JITTER * Math.max(0, half - receivedAt));
}

/** The n-th retry's delay (n ≥ 1): initial × 2^(n-1), capped, ±20 %. */
export function retryDelay(n: number, initialMs: number, maxMs: number, random: number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(n - 1, 30));
  return Math.round(base * (1 - RETRY_JITTER + 2 * RETRY_JITTER * random));
}

interface Entry {
  identity: string;
  pods: Map<string, PodRef>;
  cert?: WorkloadCertificate;
  chain: ChainEntry[];
  lastError?: string;
  /** Consecutive failures. */
  attempts: number;
  renewals: number;
  failures: number;
  /** A request in flight (or queued for a slot). */
  inflight?: AbortController;
  /** When the timer fires: the next renewal or retry. */
  nextAt?: number;
  timer?: ReturnType<typeof setTimeout>;
  expiryTimer?: ReturnType<typeof setTimeout>;
}

export class CertificateManager {
  readonly #o: Required<Omit<CertManagerOptions, "fetch">> & Pick<CertManagerOptions, "fetch">;
  readonly #entries = new Map<string, Entry>();
  readonly #podIdentity = new Map<string, string>();
  readonly #listeners: Array<(e: CertEvent) => void> = [];
  /** Requests waiting for one of the `concurrency` slots. */
  readonly #queue: Array<() => void> = [];
  #running = 0;
  #closed = false;

  constructor(o: CertManagerOptions) {
    this.#o = { initialRetryMs: 1000, maxRetryMs: 150_000, concurrency: 8, now: Date.now, random: Math.random, ...o };
  }

  get source(): CertificateSource {
    return this.#o.source;
  }

  get lifetimeSeconds(): number {
    return this.#o.lifetimeSeconds;
  }

  /** Listeners must not throw (a throw is logged and ignored). */
  onEvent(fn: (e: CertEvent) => void): void {
    this.#listeners.push(fn);
  }

  /** Pod `pod.uid` now has `identity` (again): its certificate is requested if nobody had it. */
  podAdded(pod: PodRef, identity: string): void {
    if (this.#closed) return;
    const before = this.#podIdentity.get(pod.uid);
    if (before !== undefined && before !== identity) this.podRemoved(pod.uid);
    this.#podIdentity.set(pod.uid, identity);
    let e = this.#entries.get(identity);
    if (!e) {
      e = { identity, pods: new Map(), chain: [], attempts: 0, renewals: 0, failures: 0 };
      this.#entries.set(identity, e);
      e.pods.set(pod.uid, pod);
      this.#o.log.info("certificate requested: first pod with this identity", { identity, pod: podName(pod) });
      this.#request(e);
      return;
    }
    e.pods.set(pod.uid, pod);
  }

  /** Pod `uid` left; the last pod of an identity takes its certificate with it. */
  podRemoved(uid: string): void {
    const identity = this.#podIdentity.get(uid);
    if (identity === undefined) return;
    this.#podIdentity.delete(uid);
    const e = this.#entries.get(identity);
    if (!e) return;
    e.pods.delete(uid);
    if (e.pods.size > 0) return;
    this.#drop(e);
    this.#o.log.info("certificate dropped: the last pod with this identity left", { identity });
    this.#emit({ type: "dropped", identity });
  }

  /** Uids of the pods that hold an identity here. */
  podUids(): string[] {
    return [...this.#podIdentity.keys()];
  }

  /** The held, unexpired certificate of `identity` (for a TLS stack), if any. */
  certificate(identity: string): WorkloadCertificate | undefined {
    const c = this.#entries.get(identity)?.cert;
    return c && c.notAfter.getTime() > this.#o.now() ? c : undefined;
  }

  /** Every identity with its state, sorted by identity (as ztunnel's dump). */
  status(): CertStatus[] {
    const now = this.#o.now();
    return [...this.#entries.values()]
      .sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0))
      .map((e) => {
        const c = e.cert;
        return {
          identity: e.identity,
          state: stateOf(e, now),
          pods: [...e.pods.values()].map((p) => ({ ...p })),
          ...(c
            ? {
                serial: c.serial,
                notBefore: c.notBefore.toISOString(),
                notAfter: c.notAfter.toISOString(),
              }
            : {}),
          ...(e.nextAt !== undefined ? { renewAt: new Date(e.nextAt).toISOString() } : {}),
          chain: e.chain,
          ...(e.lastError !== undefined ? { lastError: e.lastError } : {}),
          renewals: e.renewals,
          failures: e.failures,
        };
      });
  }

  /** Stops every timer and request; forgets everything. */
  close(): void {
    this.#closed = true;
    for (const e of this.#entries.values()) this.#drop(e);
    this.#podIdentity.clear();
    this.#queue.length = 0;
    this.#o.source.close();
  }

  // ---- internals ------------------------------------------------------------------------------

  #request(e: Entry): void {
    clearTimeout(e.timer);
    e.timer = undefined;
    e.nextAt = undefined;
    if (e.inflight) return;
    const ctl = new AbortController();
    e.inflight = ctl;
    void this.#slot(ctl.signal).then(async (got) => {
      if (!got) return;
      try {
        await this.#fetchOnce(e, ctl);
      } finally {
        this.#release();
      }
    });
  }

  async #fetchOnce(e: Entry, ctl: AbortController): Promise<void> {
    const fetch = this.#o.fetch ?? ((s, id, life, signal) => fetchWorkloadCertificate(s, id, life, signal));
    let cert: WorkloadCertificate;
    try {
      cert = await fetch(this.#o.source, e.identity, this.#o.lifetimeSeconds, ctl.signal);
    } catch (err) {
      if (ctl.signal.aborted || this.#entries.get(e.identity) !== e) return;
      e.inflight = undefined;
      this.#failed(e, (err as Error).message);
      return;
    }
    if (ctl.signal.aborted || this.#entries.get(e.identity) !== e) return;
    e.inflight = undefined;
    const renewal = e.cert !== undefined;
    const now = this.#o.now();
    e.cert = cert;
    // The last element may hold several roots (a bundle): one entry each.
    e.chain = [...cert.chain.slice(0, -1).map((p) => chainEntry(p, false)), ...splitPem(cert.roots).map((p) => chainEntry(p, true))];
    e.lastError = undefined;
    e.attempts = 0;
    if (renewal) e.renewals++;
    const at = renewalTime(cert, now, this.#o.random());
    this.#schedule(e, at);
    clearTimeout(e.expiryTimer);
    e.expiryTimer = unref(setTimeout(() => this.#expired(e, cert), Math.max(0, cert.notAfter.getTime() - now)));
    this.#o.log.info(renewal ? "certificate renewed" : "certificate issued", {
      identity: e.identity,
      serial: cert.serial,
      notAfter: cert.notAfter.toISOString(),
      renewAt: new Date(at).toISOString(),
    });
    this.#emit({ type: "issued", identity: e.identity, cert, renewal });
  }

  #failed(e: Entry, error: string): void {
    e.lastError = error;
    e.attempts++;
    e.failures++;
    const now = this.#o.now();
    let at = now + retryDelay(e.attempts, this.#o.initialRetryMs, this.#o.maxRetryMs, this.#o.random());
    // ztunnel: retry at min(backoff, expiry) while a certificate is still valid.
    if (e.cert && e.cert.notAfter.getTime() > now) at = Math.min(at, e.cert.notAfter.getTime());
    this.#schedule(e, at);
    this.#o.log.warn("certificate request failed; will retry", { identity: e.identity, error, attempt: e.attempts, retryAt: new Date(at).toISOString(), state: stateOf(e, now) });
    this.#emit({ type: "failed", identity: e.identity, error, retryAt: new Date(at) });
  }

  #expired(e: Entry, cert: WorkloadCertificate): void {
    if (this.#entries.get(e.identity) !== e || e.cert !== cert) return;
    this.#o.log.warn("certificate expired before a new one came", { identity: e.identity, serial: cert.serial, lastError: e.lastError });
    this.#emit({ type: "expired", identity: e.identity });
  }

  #schedule(e: Entry, at: number): void {
    clearTimeout(e.timer);
    e.nextAt = at;
    e.timer = unref(setTimeout(() => this.#request(e), Math.max(0, at - this.#o.now())));
  }

  #drop(e: Entry): void {
    clearTimeout(e.timer);
    clearTimeout(e.expiryTimer);
    e.inflight?.abort();
    e.inflight = undefined;
    if (this.#entries.get(e.identity) === e) this.#entries.delete(e.identity);
  }

  /** Waits for a request slot; false when the request was aborted meanwhile. */
  #slot(signal: AbortSignal): Promise<boolean> {
    if (this.#running < this.#o.concurrency) {
      this.#running++;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const go = () => {
        if (signal.aborted) return resolve(false);
        this.#running++;
        resolve(true);
      };
      this.#queue.push(go);
    });
  }

  #release(): void {
    this.#running--;
    // Aborted waiters resolve false without taking the slot: wake until one takes it.
    while (this.#running < this.#o.concurrency && this.#queue.length > 0) this.#queue.shift()!();
  }

  #emit(ev: CertEvent): void {
    for (const fn of this.#listeners) {
      try {
        fn(ev);
      } catch (err) {
        this.#o.log.warn("certificate event listener failed", { event: ev.type, error: (err as Error).message });
      }
    }
  }
}

function stateOf(e: Entry, now: number): CertState {
  if (e.cert) {
    if (e.cert.notAfter.getTime() <= now) return "expired";
    return e.inflight || e.lastError !== undefined ? "renewing" : "valid";
  }
  return e.lastError !== undefined ? "failed" : "initializing";
}

function chainEntry(pem: string, root: boolean): ChainEntry {
  const f = certFacts(pem);
  return { pem, root, subject: f.subject, issuer: f.issuer, serial: f.serial, notBefore: f.notBefore.toISOString(), notAfter: f.notAfter.toISOString() };
}

function podName(p: PodRef): string {
  return p.namespace && p.name ? `${p.namespace}/${p.name}` : p.uid;
}

function unref<T>(t: T): T {
  (t as { unref?: () => void }).unref?.();
  return t;
}
