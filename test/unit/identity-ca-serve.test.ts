// `nshub ca serve` as a real process: the compiled binary (dist/nshub) on loopback, a random
// port, its credentials made by `nshub ca init` / `issue-node`. Called by nshub's CA client and
// by a gRPC client that is not nshub (Debian's python3-grpcio, request bytes encoded by hand,
// CSR made by openssl). Each case checks the answer, the CA's log line and its metrics.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createCaClient } from "../../src/identity/ca-client.ts";
import { CertificateError, type CertificateSource } from "../../src/identity/source.ts";
import { fetchWorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { caRequest, readCaResponse } from "../fixtures/ca-raw.ts";
import { certText, extension, opensslCsr, verifyChain } from "../helpers/openssl.ts";

const BINARY = resolve(import.meta.dir, "../../dist/nshub");
const PY_CLIENT = resolve(import.meta.dir, "../fixtures/grpc-ca-call.py");
const tmp = mkdtempSync(join(tmpdir(), "nshub-caserve-"));
const dir = join(tmp, "ca");
const ID = "spiffe://cluster.local/ns/shop/sa/web";

interface LogLine {
  msg: string;
  [k: string]: unknown;
}

let proc: ReturnType<typeof Bun.spawn> | undefined;
const logs: LogLine[] = [];
let port = 0;
let metricsPort = 0;
let root = "";
const tokens: Record<string, string> = {};

async function nshub(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn([BINARY, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

async function until<T>(what: string, fn: () => T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; CA log:\n${logs.map((l) => JSON.stringify(l)).join("\n")}`);
    await Bun.sleep(20);
  }
}

/** The sample `name{labels}` from the CA's /metrics. */
async function metric(name: string, label = ""): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}${label} `));
  if (!line) throw new Error(`no ${name}${label} in /metrics:\n${text}`);
  return Number(line.split(" ")[1]);
}

const refusedMetric = (reason: string) => metric("nshub_ca_requests_refused_total", `{reason="${reason}"}`);

function client(o: { token?: string; cert?: string }): CertificateSource {
  const certDir = o.cert ? join(tmp, o.cert) : undefined;
  return createCaClient({
    address: `localhost:${port}`,
    caRoots: root,
    token: o.token,
    clientCert: certDir ? { certPem: readFileSync(join(certDir, "node-cert.pem"), "utf8"), keyPem: readFileSync(join(certDir, "node-key.pem"), "utf8") } : undefined,
  });
}

async function refusal(p: Promise<unknown>): Promise<CertificateError> {
  const e = await p.then(
    () => undefined,
    (x) => x,
  );
  expect(e).toBeInstanceOf(CertificateError);
  return e as CertificateError;
}

function python(token: string, request: number[]): { ok: boolean; response?: string; code?: string; details?: string } {
  const p = Bun.spawnSync(["/usr/bin/python3", PY_CLIENT, `localhost:${port}`, join(dir, "root-cert.pem"), token, Buffer.from(request).toString("hex")], { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`python grpc client failed: ${p.stderr.toString()}`);
  return JSON.parse(p.stdout.toString());
}

beforeAll(async () => {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run scripts/build first`);
  expect((await nshub(["ca", "init", "--dir", dir])).code).toBe(0);
  for (const [node, lifetime] of [["node-a", "1h"], ["node-b", "2s"], ["node-r", "1h"]] as const) {
    const r = await nshub(["ca", "issue-node", "--dir", dir, "--node", node, "--lifetime", lifetime]);
    expect(r.code).toBe(0);
    tokens[node] = r.stdout.trim();
  }
  expect((await nshub(["ca", "issue-node", "--dir", dir, "--node", "node-c", "--no-token", "--cert-dir", join(tmp, "node-c")])).code).toBe(0);
  root = readFileSync(join(dir, "root-cert.pem"), "utf8");
  proc = Bun.spawn([BINARY, "ca", "serve", "--dir", dir, "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", "--max-lifetime", "2h"], {
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, NSHUB_LOG_FORMAT: "json", NSHUB_LOG_LEVEL: "info" },
  });
  void (async () => {
    let rest = "";
    for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) {
      rest += new TextDecoder().decode(chunk);
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const l of lines) if (l.startsWith("{")) logs.push(JSON.parse(l));
    }
  })();
  const ready = await until("the CA to listen", () => logs.find((l) => l.msg === "serving IstioCertificateService"));
  port = Number(String(ready.address).split(":").pop());
  metricsPort = Number(ready.metricsPort);
  expect(port).toBeGreaterThan(0);
});

afterAll(async () => {
  if (proc && proc.exitCode === null) proc.kill("SIGKILL");
  rmSync(tmp, { recursive: true, force: true });
});

describe("nshub ca serve (dist/nshub, loopback)", () => {
  test("a node token gets a certificate for the identity asked for; the chain verifies with openssl; one log line; counted", async () => {
    const before = await metric("nshub_ca_certificates_issued_total");
    const c = client({ token: tokens["node-a"] });
    try {
      const cert = await fetchWorkloadCertificate(c, ID, 3600);
      expect(cert.chain).toHaveLength(2);
      expect(cert.chain[1]).toBe(root);
      expect(verifyChain(root, cert.leaf, [], ["-purpose", "sslclient"]).stdout).toContain(": OK");
      expect(extension(certText(cert.leaf), "X509v3 Subject Alternative Name")?.value).toBe(`URI:${ID}`);
      const line = await until("the issuance log line", () => logs.find((l) => l.msg === "certificate issued" && l.serial === cert.serial));
      expect(line).toMatchObject({ level: "info", scope: "ca", node: "node-a", via: "token", identity: ID, notAfter: cert.notAfter.toISOString(), peer: "127.0.0.1" });
      expect(JSON.stringify(logs)).not.toContain(tokens["node-a"]!); // credentials never logged
      expect(await metric("nshub_ca_certificates_issued_total")).toBe(before + 1);
    } finally {
      c.close();
    }
  });

  test("a CSR whose SAN is another identity: INVALID_ARGUMENT naming both, logged, counted as san_mismatch", async () => {
    const before = await refusedMetric("san_mismatch");
    const { csr } = opensslCsr(tmp, "mismatch", "critical,URI:spiffe://cluster.local/ns/shop/sa/admin");
    const c = client({ token: tokens["node-a"] });
    try {
      const e = await refusal(c.createCertificate({ csr, identity: ID, validitySeconds: 600 }));
      expect(e.code).toBe("invalid_argument");
      expect(e.message).toContain(`the CSR's URI SAN spiffe://cluster.local/ns/shop/sa/admin is not the identity asked for, ${ID}`);
      await until("the refusal log line", () => logs.find((l) => l.msg === "certificate refused" && l.reason === "san_mismatch" && l.node === "node-a"));
      expect(await refusedMetric("san_mismatch")).toBe(before + 1);
    } finally {
      c.close();
    }
  });

  test("an unknown token and an expired token: UNAUTHENTICATED, saying which", async () => {
    const before = await refusedMetric("unauthenticated");
    const bad = client({ token: "nshub-ca.not-a-token" });
    const expired = client({ token: tokens["node-b"] });
    try {
      const e1 = await refusal(fetchWorkloadCertificate(bad, ID, 600));
      expect(e1.code).toBe("unauthenticated");
      expect(e1.message).toContain("request authenticate failure: unknown or revoked token");
      await Bun.sleep(2100); // node-b's token was issued for 2 s
      const e2 = await refusal(fetchWorkloadCertificate(expired, ID, 600));
      expect(e2.code).toBe("unauthenticated");
      expect(e2.message).toMatch(/the token of node node-b expired at \d{4}-/);
      expect(await refusedMetric("unauthenticated")).toBe(before + 2);
    } finally {
      bad.close();
      expired.close();
    }
  }, 15_000);

  test("a lifetime above --max-lifetime: INVALID_ARGUMENT with both numbers", async () => {
    const before = await refusedMetric("lifetime_too_long");
    const c = client({ token: tokens["node-a"] });
    try {
      const e = await refusal(fetchWorkloadCertificate(c, ID, 3 * 3600));
      expect(e.code).toBe("invalid_argument");
      expect(e.message).toContain("requested lifetime 10800 s (3h) is above this CA's maximum of 7200 s (2h)");
      expect(await refusedMetric("lifetime_too_long")).toBe(before + 1);
    } finally {
      c.close();
    }
  });

  test("a node client certificate (mTLS, no token) is a credential too", async () => {
    const c = client({ cert: "node-c" });
    try {
      const cert = await fetchWorkloadCertificate(c, "spiffe://cluster.local/ns/db/sa/postgres", 600);
      await until("the issuance log line", () => logs.find((l) => l.msg === "certificate issued" && l.serial === cert.serial && l.node === "node-c" && l.via === "cert"));
    } finally {
      c.close();
    }
  });

  test("revoke-node while serving: the node's token is refused from the next call on", async () => {
    const c = client({ token: tokens["node-r"] });
    try {
      await fetchWorkloadCertificate(c, ID, 600);
      const r = await nshub(["ca", "revoke-node", "--dir", dir, "--node", "node-r"]);
      expect(r.stdout).toContain("revoked 1 credential(s) of node node-r");
      const e = await refusal(fetchWorkloadCertificate(c, ID, 600));
      expect(e.code).toBe("unauthenticated");
    } finally {
      c.close();
    }
  });
});

describe("a gRPC client that is not nshub (python3-grpcio), hand-encoded request, openssl CSR", () => {
  test("gets a chain that openssl verify accepts, for the identity in ImpersonatedIdentity", () => {
    const { csr } = opensslCsr(tmp, "py", `critical,URI:${ID}`);
    const r = python(tokens["node-a"]!, caRequest(csr, 600, ID));
    expect(r).toMatchObject({ ok: true });
    const chain = readCaResponse(Buffer.from(r.response!, "hex"));
    expect(chain).toHaveLength(2);
    expect(chain[1]).toBe(root);
    expect(verifyChain(root, chain[0]!).stdout).toContain(": OK");
    const text = certText(chain[0]!);
    expect(extension(text, "X509v3 Subject Alternative Name")?.value).toBe(`URI:${ID}`);
    expect(new Date(text.match(/Not After : (.+)/)![1]!).getTime() - Date.now()).toBeLessThan(601_000);
  }, 20_000);

  test("refusals carry istiod's status codes: UNAUTHENTICATED without a token, PERMISSION_DENIED without an identity", () => {
    const { csr } = opensslCsr(tmp, "py2", `critical,URI:${ID}`);
    const noToken = python("-", caRequest(csr, 600, ID));
    expect(noToken).toMatchObject({ ok: false, code: "UNAUTHENTICATED" });
    expect(noToken.details).toContain("no credentials");
    const noIdentity = python(tokens["node-a"]!, caRequest(csr, 600));
    expect(noIdentity).toMatchObject({ ok: false, code: "PERMISSION_DENIED" });
    expect(noIdentity.details).toContain("ImpersonatedIdentity");
    const otherDomain = python(tokens["node-a"]!, caRequest(opensslCsr(tmp, "py3", "URI:spiffe://evil.org/ns/a/sa/b").csr, 600, "spiffe://evil.org/ns/a/sa/b"));
    expect(otherDomain).toMatchObject({ ok: false, code: "PERMISSION_DENIED" });
    expect(otherDomain.details).toContain('this CA signs only "cluster.local"');
  }, 20_000);
});

describe("stopping", () => {
  test("SIGTERM: exit 0 within 4 s, even while a client keeps its HTTP/2 session open (as ztunnel does)", async () => {
    const held = http2.connect(`https://localhost:${port}`, { ca: root });
    try {
      await new Promise<void>((r) => held.once("connect", () => r()));
      const t0 = Date.now();
      proc!.kill("SIGTERM");
      const code = await Promise.race([proc!.exited, Bun.sleep(6000).then(() => "still running")]);
      expect(code).toBe(0);
      expect(Date.now() - t0).toBeLessThan(4000);
    } finally {
      held.destroy();
    }
  }, 10_000);
});
