// The proxy's certificate manager (src/identity/cert-manager.ts) against a stand-in
// CertificateSource: nshub's real signer (CaSigner) in memory, which can be switched "down" and
// counts the requests it sees. Checks one certificate per identity (refcounted by pods), the
// drop with the last pod, the renewal schedule and its maths, retry with backoff while keeping
// the last valid certificate, expiry, and the request concurrency limit.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initCaDir, loadCaDir } from "../../src/identity/ca-dir.ts";
import { CaSigner } from "../../src/identity/ca-signer.ts";
import { CertificateManager, renewalTime, retryDelay, type CertEvent } from "../../src/identity/cert-manager.ts";
import { CertificateError, type CertificateRequest, type CertificateSource } from "../../src/identity/source.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";

const tmp = mkdtempSync(join(tmpdir(), "nshub-certmgr-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
await initCaDir({ dir: join(tmp, "ca"), trustDomain: "cluster.local" });
const ca = await loadCaDir(join(tmp, "ca"));
setLogSink(() => undefined);

const A = "spiffe://cluster.local/ns/shop/sa/web";
const B = "spiffe://cluster.local/ns/shop/sa/db";

/** Stand-in CertificateSource: signs with CaSigner, unless `down`; records every request. */
class StandInSource implements CertificateSource {
  readonly description = "stand-in";
  readonly signer = new CaSigner({ trustDomain: "cluster.local", issuer: ca.issuer, intermediates: ca.intermediates, rootBundle: ca.rootBundle });
  down = false;
  requests: string[] = [];
  inFlight = 0;
  maxInFlight = 0;
  delayMs = 0;

  async createCertificate(req: CertificateRequest): Promise<string[]> {
    this.requests.push(req.identity);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs) await Bun.sleep(this.delayMs);
      if (this.down) throw new CertificateError("unavailable", "stand-in CA is down", this.description);
      return (await this.signer.sign({ csr: req.csr, identity: req.identity, validitySeconds: req.validitySeconds })).chain;
    } finally {
      this.inFlight--;
    }
  }

  close(): void {}
}

function manager(source: StandInSource, o: Partial<ConstructorParameters<typeof CertificateManager>[0]> = {}) {
  const m = new CertificateManager({ source, lifetimeSeconds: 3600, log: createLogger("test"), initialRetryMs: 50, maxRetryMs: 400, ...o });
  const events: CertEvent[] = [];
  m.onEvent((e) => events.push(e));
  return { m, events };
}

async function until(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

describe("renewal and retry timing (pure)", () => {
  const t0 = Date.parse("2026-12-01T00:00:00Z");
  test("24 h with istiod's 2-minute back-dating: renewed ~12 h after arrival; jitter only brings it earlier, by at most 10 %", () => {
    const cert = { notBefore: new Date(t0 - 120_000), notAfter: new Date(t0 + 86_400_000) };
    expect(renewalTime(cert, t0, 0)).toBe(t0 + 43_200_000);
    expect(renewalTime(cert, t0, 0.999)).toBeGreaterThanOrEqual(t0 + 43_200_000 * 0.9);
  });
  test("a 20 s certificate back-dated by 2 min is not due at once: renewed ~10 s after arrival", () => {
    const cert = { notBefore: new Date(t0 - 120_000), notAfter: new Date(t0 + 20_000) };
    expect(renewalTime(cert, t0, 0)).toBe(t0 + 10_000);
    expect(renewalTime(cert, t0, 0.5)).toBe(t0 + 9_500);
  });
  test("backoff: ~1 s, doubling, capped (ztunnel: 150 s), ±20 %", () => {
    expect([1, 2, 3, 4, 9, 40].map((n) => retryDelay(n, 1000, 150_000, 0.5))).toEqual([1000, 2000, 4000, 8000, 150_000, 150_000]);
    expect(retryDelay(1, 1000, 150_000, 0)).toBe(800);
    expect(retryDelay(1, 1000, 150_000, 1)).toBe(1200);
  });
});

describe("CertificateManager with a stand-in source", () => {
  test("one certificate per identity: a second pod reuses it; the last pod leaving drops it", async () => {
    const src = new StandInSource();
    const { m, events } = manager(src);
    m.podAdded({ uid: "u1", name: "web-0", namespace: "shop" }, A);
    m.podAdded({ uid: "u2", name: "web-1", namespace: "shop" }, A);
    m.podAdded({ uid: "u3", name: "db-0", namespace: "shop" }, B);
    await until("both issued", () => m.status().every((s) => s.state === "valid"));
    expect(src.requests.sort()).toEqual([B, A].sort());
    const a = m.status().find((s) => s.identity === A)!;
    expect(a.pods.map((p) => p.uid)).toEqual(["u1", "u2"]);
    expect(a.serial).toMatch(/^[0-9a-f]+$/);
    expect(a.chain.map((c) => c.root)).toEqual([false, true]);
    expect(m.certificate(A)!.serial).toBe(a.serial!);
    expect(m.certificate(A)!.keyPem).toContain("PRIVATE KEY");
    // status never carries a key
    expect(JSON.stringify(m.status())).not.toContain("PRIVATE KEY");

    m.podRemoved("u1");
    expect(m.status().map((s) => s.identity)).toEqual([B, A]);
    m.podRemoved("u2");
    expect(m.status().map((s) => s.identity)).toEqual([B]);
    expect(events.filter((e) => e.type === "dropped").map((e) => e.identity)).toEqual([A]);
    // back again: a fresh request, a new serial
    m.podAdded({ uid: "u4" }, A);
    await until("re-issued", () => m.status().find((s) => s.identity === A)?.state === "valid");
    expect(src.requests.filter((i) => i === A)).toHaveLength(2);
    expect(m.status().find((s) => s.identity === A)!.serial).not.toBe(a.serial);
    m.close();
  });

  test("a pod whose identity changes moves to the new identity (the old one is dropped when it was the last)", async () => {
    const src = new StandInSource();
    const { m } = manager(src);
    m.podAdded({ uid: "u1" }, A);
    m.podAdded({ uid: "u1" }, B);
    expect(m.status().map((s) => s.identity)).toEqual([B]);
    m.close();
  });

  test("renewed at about half its life with a new serial, and a valid certificate at every sample", async () => {
    const src = new StandInSource();
    const { m, events } = manager(src, { lifetimeSeconds: 2 });
    m.podAdded({ uid: "u1" }, A);
    await until("issued", () => m.certificate(A) !== undefined);
    const first = m.certificate(A)!;
    const issuedAt = Date.now();
    const renewAt = Date.parse(m.status()[0]!.renewAt!);
    // half of what it had left on arrival (X.509 times are whole seconds: 1-2 s), less at most 10 % jitter
    const half = (first.notAfter.getTime() - issuedAt) / 2;
    expect(renewAt - issuedAt).toBeGreaterThan(half * 0.9 - 50);
    expect(renewAt - issuedAt).toBeLessThan(half + 50);
    let gaps = 0;
    while (m.certificate(A)?.serial === first.serial && Date.now() < issuedAt + 5000) {
      if (!m.certificate(A)) gaps++;
      await Bun.sleep(20);
    }
    expect(gaps).toBe(0);
    expect(m.certificate(A)!.serial).not.toBe(first.serial);
    expect(events.filter((e) => e.type === "issued").map((e) => (e as { renewal: boolean }).renewal)).toEqual([false, true]);
    expect(m.status()[0]!.renewals).toBe(1);
    m.close();
  });

  test("CA down at first: failed with the error, retried with backoff, then valid", async () => {
    const src = new StandInSource();
    src.down = true;
    const { m } = manager(src);
    m.podAdded({ uid: "u1" }, A);
    await until("two failures", () => m.status()[0]!.failures >= 2);
    const s = m.status()[0]!;
    expect(s.state).toBe("failed");
    expect(s.lastError).toContain("stand-in CA is down");
    expect(s.renewAt).toBeDefined();
    src.down = false;
    await until("recovered", () => m.status()[0]!.state === "valid");
    expect(m.status()[0]!.lastError).toBeUndefined();
    m.close();
  });

  test("renewal failing: the last valid certificate stays (renewing, with the error) until it expires", async () => {
    const src = new StandInSource();
    const { m, events } = manager(src, { lifetimeSeconds: 1, initialRetryMs: 100 });
    m.podAdded({ uid: "u1" }, A);
    await until("issued", () => m.certificate(A) !== undefined);
    const cert = m.certificate(A)!;
    src.down = true;
    await until("a failed renewal", () => m.status()[0]!.failures >= 1);
    expect(m.status()[0]!.state).toBe("renewing");
    expect(m.certificate(A)!.serial).toBe(cert.serial);
    await until("expiry", () => events.some((e) => e.type === "expired"), 3000);
    expect(m.status()[0]!.state).toBe("expired");
    expect(m.certificate(A)).toBeUndefined();
    src.down = false;
    await until("valid again", () => m.status()[0]!.state === "valid", 3000);
    m.close();
  });

  test("at most `concurrency` requests at once; a dropped identity's result is discarded", async () => {
    const src = new StandInSource();
    src.delayMs = 30;
    const { m, events } = manager(src, { concurrency: 3 });
    for (let i = 0; i < 12; i++) m.podAdded({ uid: `u${i}` }, `spiffe://cluster.local/ns/ns${i}/sa/sa`);
    m.podRemoved("u11");
    await until("all but the dropped one issued", () => m.status().length === 11 && m.status().every((s) => s.state === "valid"));
    expect(src.maxInFlight).toBeLessThanOrEqual(3);
    expect(events.some((e) => e.type === "issued" && e.identity.includes("/ns11/"))).toBe(false);
    m.close();
  });
});
