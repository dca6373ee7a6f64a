// Workload certificates in a real proxy: `nshub proxy` processes inside a virtual node, pods
// handed over by ZDS (test/fixtures/proxy-harness.ts), and the compiled `nshub ca serve`
// (dist/nshub) running in the same node netns on its loopback, credentials from `nshub ca init` /
// `issue-node`. What the proxy serves is judged by openssl (verify against the CA's root, the URI
// SAN from `x509 -text`), the CA's own issuance log, /certs, config_dump, /metrics and
// `nshub certs`. Timing: the rotation test samples for a fixed window and asserts what it saw,
// never how fast.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { ConfigDump } from "../../src/admin/config-dump.ts";
import type { CertsResponse } from "../../src/identity/cert-manager.ts";
import { certText, extension, openssl, verifyChain } from "../helpers/openssl.ts";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod, SimProcess } from "../helpers/netsim.ts";
import { createProxyEnv, eventually, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const BINARY = resolve(import.meta.dir, "../../dist/nshub");
const WEB = "spiffe://cluster.local/ns/shop/sa/web";
const DB = "spiffe://cluster.local/ns/shop/sa/db";

netnsDescribe("proxy: workload certificates", () => {
  let env: ProxyEnv;
  let web0: Pod, web1: Pod, db0: Pod;
  let caDir = "";
  let tokenFile = "";
  const cas: SimProcess[] = [];

  /** `nshub ca serve` in the node netns on 127.0.0.1:`port`; resolves once it listens. */
  async function startCa(port: number): Promise<SimProcess> {
    const p = env.sim.node.spawn([BINARY, "ca", "serve", "--dir", caDir, "--address", `127.0.0.1:${port}`, "--metrics-address", "127.0.0.1:0"], {
      env: { ...process.env, NSHUB_LOG_FORMAT: "json" },
    });
    cas.push(p);
    await eventually(() => p.stderr().includes("serving IstioCertificateService") || !p.running, 15_000, "the CA to listen");
    if (!p.running) throw new Error(`ca serve exited: ${p.stderr()}`);
    return p;
  }

  /** Serials the CA logged as issued for `identity`. */
  const issued = (ca: SimProcess, identity: string) =>
    ca
      .stderr()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((l) => l.identity === identity && l.serial)
      .map((l) => String(l.serial));

  function istioEnv(port: number, extra: Record<string, string> = {}): Record<string, string> {
    return {
      NSHUB_PROXY_CA_SOURCE: "istio",
      NSHUB_PROXY_CA_ADDRESS: `127.0.0.1:${port}`,
      NSHUB_PROXY_CA_ROOT_CERT: join(caDir, "root-cert.pem"),
      NSHUB_PROXY_CA_TOKEN_FILE: tokenFile,
      ...extra,
    };
  }

  const certs = async (p: ProxyProcess) => JSON.parse((await p.http("GET", p.admin, "/certs")).body) as CertsResponse;
  const entry = async (p: ProxyProcess, id: string) => (await certs(p)).certificates.find((c) => c.identity === id);
  const dump = async (p: ProxyProcess) => JSON.parse((await p.http("GET", p.admin, "/config_dump")).body) as ConfigDump;
  const metrics = async (p: ProxyProcess) => (await p.http("GET", p.metricsAddr, "/metrics")).body;

  beforeAll(async () => {
    if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run scripts/build first`);
    env = await createProxyEnv();
    web0 = await env.sim.addPod({ name: "web-0", namespace: "shop" });
    web1 = await env.sim.addPod({ name: "web-1", namespace: "shop" });
    db0 = await env.sim.addPod({ name: "db-0", namespace: "shop" });
    caDir = join(env.tmp, "ca");
    const run = (args: string[]) => {
      const r = Bun.spawnSync([BINARY, ...args], { stdout: "pipe", stderr: "pipe" });
      if (r.exitCode !== 0) throw new Error(`nshub ${args.join(" ")}: ${r.stderr.toString()}`);
      return r.stdout.toString();
    };
    run(["ca", "init", "--dir", caDir]);
    tokenFile = join(env.tmp, "ca-token");
    writeFileSync(tokenFile, run(["ca", "issue-node", "--dir", caDir, "--node", "node-1"]).trim() + "\n", { mode: 0o600 });
  }, T);

  afterAll(async () => {
    for (const c of cas) await c.stop(3000).catch(() => undefined);
    await env?.destroy();
  }, T);

  test(
    "one certificate per identity for pods added over ZDS: a second pod reuses it, the last pod leaving drops it; openssl verifies it; /certs, config_dump, metrics and nshub certs show it",
    async () => {
      const ca = await startCa(15012);
      const p = env.startProxy({ env: istioEnv(15012) });
      try {
        await p.waitReady();
        await env.enroll(web0, { serviceAccount: "web" });
        await eventually(async () => (await entry(p, WEB))?.state === "valid", 20_000, "web's certificate");
        const first = (await entry(p, WEB))!;
        expect(first.pods.map((x) => x.name)).toEqual(["web-0"]);

        await env.enroll(web1, { serviceAccount: "web" });
        await env.enroll(db0, { serviceAccount: "db" });
        await eventually(async () => (await entry(p, DB))?.state === "valid", 20_000, "db's certificate");
        const web = (await entry(p, WEB))!;
        expect(web.serial).toBe(first.serial!);
        expect(web.pods.map((x) => x.name).sort()).toEqual(["web-0", "web-1"]);
        expect(issued(ca, WEB)).toEqual([first.serial!]);
        expect((await certs(p)).certificates.map((c) => c.identity)).toEqual([DB, WEB]);

        // config_dump: ztunnel's shape; the PEMs are what openssl judges
        const d = await dump(p);
        const c = d.certificates!.find((x) => x.identity === WEB)!;
        expect(c.state).toBe("Available");
        expect(c.certChain).toHaveLength(1);
        expect(c.rootCerts).toHaveLength(1);
        expect(c.certChain[0]!.serialNumber).toBe(BigInt(`0x${web.serial}`).toString(10));
        expect(c.certChain[0]!.expirationTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
        const leaf = Buffer.from(c.certChain[0]!.pem, "base64").toString();
        const v = verifyChain(`${Buffer.from(c.rootCerts[0]!.pem, "base64")}`, leaf);
        expect(v.stdout + v.stderr).toContain("OK");
        expect(v.code).toBe(0);
        // ...and against the CA directory's own root file, not only what the proxy says the root is
        expect(openssl(["verify", "-CAfile", join(caDir, "root-cert.pem")], leaf).code).toBe(0);
        const text = certText(leaf);
        expect(extension(text, "X509v3 Subject Alternative Name")).toEqual({ critical: true, value: `URI:${WEB}` });
        expect(text).toContain("ASN1 OID: prime256v1");
        expect(JSON.stringify(d)).not.toContain("PRIVATE KEY");
        expect((await p.http("GET", p.admin, "/certs")).body).not.toContain("PRIVATE KEY");

        const m = await metrics(p);
        expect(m).toContain(`nshub_workload_certificate_expiry_timestamp_seconds{identity="${WEB}"} ${Math.floor(Date.parse(web.notAfter!) / 1000)}`);
        expect(m).toContain(`nshub_workload_certificate_failures_total{identity="${DB}"} 0`);
        expect(m).toContain(`nshub_workload_certificates{state="valid"} 2`);
        // Prometheus' own linter on the whole scrape, certificate families included
        const lint = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: Buffer.from(m), stdout: "pipe", stderr: "pipe" });
        expect(lint.stdout.toString() + lint.stderr.toString()).toBe("");
        expect(lint.exitCode).toBe(0);

        const cli = await env.sim.node.exec([BINARY, "certs", "--admin", p.admin]);
        expect(cli.code).toBe(0);
        for (const s of [WEB, DB, "shop/web-0,shop/web-1", web.serial!, "valid", "renew in ", "source: istio-ca https://127.0.0.1:15012"]) expect(cli.stdout).toContain(s);
        const json = JSON.parse((await env.sim.node.exec([BINARY, "certs", "--json", "--admin", p.admin])).stdout) as CertsResponse;
        expect(json.certificates.map((x) => [x.identity, x.state, x.serial])).toEqual([
          [DB, "valid", (await entry(p, DB))!.serial],
          [WEB, "valid", web.serial],
        ]);

        await env.unenroll(web0);
        expect((await entry(p, WEB))!.serial).toBe(web.serial!);
        await env.unenroll(web1);
        expect(await entry(p, WEB)).toBeUndefined();
        expect(await metrics(p)).not.toContain(`nshub_workload_certificate_expiry_timestamp_seconds{identity="${WEB}"}`);
        await env.unenroll(db0);
        expect((await certs(p)).certificates).toEqual([]);
        expect((await dump(p)).certificates).toEqual([]);
        // the keys stayed in memory: not in the proxy's logs either
        expect(p.proc.stderr()).toContain("certificate issued");
        expect(p.proc.stderr()).not.toContain("PRIVATE KEY");
      } finally {
        await p.stop();
        await ca.stop(3000);
      }
    },
    T,
  );

  test(
    "rotation with a 20 s lifetime: renewed around 10 s with a new serial, a valid certificate at every sample",
    async () => {
      const ca = await startCa(15013);
      const p = env.startProxy({ env: istioEnv(15013, { NSHUB_PROXY_CA_LIFETIME_SECONDS: "20" }) });
      try {
        await p.waitReady();
        await env.enroll(web0, { serviceAccount: "web" });
        await eventually(async () => (await entry(p, WEB))?.state === "valid", 20_000, "web's certificate");
        const first = (await entry(p, WEB))!;
        const samples: { at: number; state: string; serial?: string; notAfter?: string }[] = [];
        const end = Date.now() + 16_000;
        while (Date.now() < end) {
          const e = (await entry(p, WEB))!;
          samples.push({ at: Date.now(), state: e.state, serial: e.serial, notAfter: e.notAfter });
          await Bun.sleep(200);
        }
        // no gap: a certificate held and not expired at every sample
        for (const s of samples) {
          expect(["valid", "renewing"]).toContain(s.state);
          expect(Date.parse(s.notAfter!)).toBeGreaterThan(s.at);
        }
        const serials = [...new Set(samples.map((s) => s.serial))];
        expect(serials.length).toBeGreaterThanOrEqual(2);
        expect(serials[0]).toBe(first.serial);
        const changed = samples.find((s) => s.serial !== first.serial)!;
        const issuedFirst = Date.parse(first.notAfter!) - 20_000;
        // half of 20 s, less at most 10 % jitter; the sample is up to ~0.5 s late
        expect(changed.at - issuedFirst).toBeGreaterThan(8_000);
        expect(changed.at - issuedFirst).toBeLessThan(13_000);
        expect(issued(ca, WEB).slice(0, 2)).toEqual(serials.slice(0, 2) as string[]);
        expect((await entry(p, WEB))!.renewals).toBeGreaterThanOrEqual(1);
        expect(await metrics(p)).toMatch(new RegExp(`nshub_workload_certificate_renewals_total\\{identity="${WEB}"\\} [1-9]`));
        await env.unenroll(web0);
      } finally {
        await p.stop();
        await ca.stop(3000);
      }
    },
    T,
  );

  test(
    "the CA down at start, then up: failed with the error and retried with backoff, then valid",
    async () => {
      const p = env.startProxy({ env: istioEnv(15014) });
      let ca: SimProcess | undefined;
      try {
        await p.waitReady();
        await env.enroll(db0, { serviceAccount: "db" });
        await eventually(async () => ((await entry(p, DB))?.failures ?? 0) >= 2, 20_000, "two failed requests");
        const down = (await entry(p, DB))!;
        expect(down.state).toBe("failed");
        expect(down.lastError).toContain("unavailable");
        expect(down.renewAt).toBeDefined();
        const cli = await env.sim.node.exec([BINARY, "certs", "--admin", p.admin]);
        expect(cli.stdout).toContain(`${DB}: failed: `);
        expect((await dump(p)).certificates![0]!.state).toStartWith("Unavailable: ");
        ca = await startCa(15014);
        await eventually(async () => (await entry(p, DB))?.state === "valid", 60_000, "recovery once the CA is up");
        const up = (await entry(p, DB))!;
        expect(up.lastError).toBeUndefined();
        expect(issued(ca, DB)).toEqual([up.serial!]);
        await env.unenroll(db0);
      } finally {
        await p.stop();
        await ca?.stop(3000);
      }
    },
    T,
  );

  test(
    "source local (an nshub ca init directory): certificates without a network; a CA key others can read is refused at start",
    async () => {
      const p = env.startProxy({ env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: caDir } });
      try {
        await p.waitReady();
        await env.enroll(web0, { serviceAccount: "web" });
        await eventually(async () => (await entry(p, WEB))?.state === "valid", 20_000, "web's certificate");
        expect((await certs(p)).source).toBe(`local-ca ${caDir}`);
        const leaf = Buffer.from((await dump(p)).certificates![0]!.certChain[0]!.pem, "base64").toString();
        expect(openssl(["verify", "-CAfile", join(caDir, "root-cert.pem")], leaf).code).toBe(0);
        await env.unenroll(web0);
      } finally {
        await p.stop();
      }
      // the same key, readable by others
      const loose = join(env.tmp, "loose");
      mkdirSync(loose);
      for (const f of ["ca-cert.pem", "ca-key.pem"]) copyFileSync(join(caDir, f), join(loose, f));
      chmodSync(join(loose, "ca-key.pem"), 0o644);
      const bad = env.startProxy({ env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_CERT_FILE: join(loose, "ca-cert.pem"), NSHUB_PROXY_CA_KEY_FILE: join(loose, "ca-key.pem") } });
      expect(await bad.proc.exited).toBe(1);
      expect(bad.proc.stderr()).toContain(`nshub proxy: proxy.ca.keyFile: CA key ${join(loose, "ca-key.pem")} has mode 0644: only root may read a private key; run: chmod 0600`);
    },
    T,
  );

  test("a proxy.ca without what its source needs is a config error naming the key (exit 2)", async () => {
    const p = env.startProxy({ env: { NSHUB_PROXY_CA_SOURCE: "istio", NSHUB_PROXY_CA_TOKEN_FILE: tokenFile } });
    expect(await p.proc.exited).toBe(2);
    expect(p.proc.stderr()).toContain("NSHUB_PROXY_CA_SOURCE=istio: proxy.ca.source is istio: set proxy.ca.address");
    expect(p.proc.stderr()).toContain("set proxy.ca.rootCert");
  }, T);
});
