// The benchmark's HAProxy peers (scripts/bench-lib/haproxy-tls.ts, haproxy.ts, haproxy-proc.ts):
// the TLS chain's two configs, the splice variants of the plaintext config, the certificates made
// with openssl from an `nshub ca` directory (checked by openssl itself), and the `show info`
// samples the bench reads. Nothing here starts HAProxy (its configs name pod namespaces, which
// `haproxy -c` opens; the bench checks them with `haproxy -c` before it starts it).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { renderHaproxyConfig } from "../../scripts/bench-lib/haproxy.ts";
import { haproxyMaxconn } from "../../scripts/bench-lib/haproxy-proc.ts";
import { leafExtensions, makeHaproxyCerts, parseShowInfo, pipesInfo, renderTlsClientConfig, renderTlsServerConfig, tlsInfo, TLS_PORT } from "../../scripts/bench-lib/haproxy-tls.ts";
import { initCaDir } from "../../src/identity/ca-dir.ts";

const files = { clientPem: "/run/c.pem", serverPem: "/run/s.pem", caFile: "/ca/root-cert.pem" };

describe("the TLS chain's configs", () => {
  const client = renderTlsClientConfig({ pod: { netns: "nbn-aaaaaa-p1", label: "tlsa" }, files, maxconn: 4000, statsSocket: "/run/h1.sock" });
  const server = renderTlsServerConfig({ pod: { netns: "nbn-bbbbbb-p1", label: "tlsb" }, files, maxconn: 4000, statsSocket: "/run/h2.sock" });

  test("client side: A's outbound inside A → TLS with a client certificate to the original destination's IP on 15008, the destination in a PROXY v2 header", () => {
    expect(TLS_PORT).toBe(15008);
    expect(client).toContain("frontend tlsa_out\n  bind 0.0.0.0:15001 namespace nbn-aaaaaa-p1\n  default_backend tlsa_out\n");
    expect(client).toContain(
      "backend tlsa_out\n  server tls 0.0.0.0:15008 namespace nbn-aaaaaa-p1 ssl crt /run/c.pem ca-file /ca/root-cert.pem verify required send-proxy-v2\n",
    );
    // session reuse (resumption) is HAProxy's default for ssl servers: nothing turns it off
    expect(client).not.toContain("no-ssl-reuse");
    expect(client).not.toContain("no-tls-tickets");
  });

  test("server side: B's 15008 in TLS, client certificate required and verified, the PROXY header accepted, the app reached inside B", () => {
    expect(server).toContain("frontend tlsb_tls\n  bind 0.0.0.0:15008 namespace nbn-bbbbbb-p1 ssl crt /run/s.pem ca-file /ca/root-cert.pem verify required accept-proxy\n");
    expect(server).toContain("backend tlsb_tls\n  server app 0.0.0.0:0 namespace nbn-bbbbbb-p1\n");
  });

  test("both: TLS 1.3 only (as HBONE), TCP mode, HAProxy's default thread count unless asked, the stats socket", () => {
    for (const cfg of [client, server]) {
      expect(cfg).toContain("  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n");
      expect(cfg).toContain("defaults\n  mode tcp\n");
      expect(cfg).toContain("  maxconn 4000\n");
      expect(cfg).not.toContain("nbthread");
      expect(cfg).not.toContain("splice");
    }
    expect(client).toContain("  stats socket /run/h1.sock mode 600 level admin\n");
    expect(renderTlsServerConfig({ pod: { netns: "x", label: "y" }, files, nbthread: 2 })).toContain("  nbthread 2\n");
  });
});

describe("the plaintext config's splice variants", () => {
  const pods = [{ netns: "nbn-abc123-p5", label: "pod0" }];
  test("none by default; splice-auto; forced splicing both ways", () => {
    expect(renderHaproxyConfig({ pods })).not.toContain("splice");
    expect(renderHaproxyConfig({ pods, splice: "auto" })).toContain("  timeout server 120s\n  option splice-auto\n");
    const always = renderHaproxyConfig({ pods, splice: "always" });
    expect(always).toContain("  option splice-request\n  option splice-response\n");
    expect(always).not.toContain("splice-auto");
  });

  test("maxconn fits the fd limit: 2 fds per connection, plus a pipe per 4 connections when splicing", () => {
    expect(haproxyMaxconn(20_000)).toBe(9500);
    expect(haproxyMaxconn(20_000, "auto")).toBe(7600);
    expect(haproxyMaxconn(1_048_576)).toBe(20_000);
    expect(haproxyMaxconn(1024)).toBe(1000);
  });
});

describe("certificates from an nshub CA directory", () => {
  const dir = mkdtempSync(join(tmpdir(), "nshub-bench-tls-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("the leaf extensions: not a CA, both TLS roles, one URI SAN", () => {
    expect(leafExtensions("spiffe://cluster.local/ns/plain/sa/x")).toBe(
      "[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyAgreement\nextendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = URI:spiffe://cluster.local/ns/plain/sa/x\n",
    );
  });

  test("client and server leaves chain to the CA's root (openssl verify), carry their URI SAN, and each PEM holds certificate and key", async () => {
    const ca = join(dir, "ca");
    await initCaDir({ dir: ca, trustDomain: "cluster.local" });
    const f = await makeHaproxyCerts(dir, ca);
    expect(f.caFile).toBe(join(ca, "root-cert.pem"));
    for (const [role, pem] of [
      ["client", f.clientPem],
      ["server", f.serverPem],
    ] as const) {
      const text = readFileSync(pem, "utf8");
      expect(text.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(1); // the CA is a root: no intermediate
      expect(text).toContain("-----BEGIN PRIVATE KEY-----");
      const leaf = join(dir, `${role}-only.crt`);
      writeFileSync(leaf, text.slice(0, text.indexOf("-----END CERTIFICATE-----") + 25) + "\n");
      const verify = Bun.spawnSync(["openssl", "verify", "-CAfile", f.caFile, "-purpose", role === "client" ? "sslclient" : "sslserver", leaf]);
      expect(verify.stdout.toString()).toContain(": OK");
      const ext = Bun.spawnSync(["openssl", "x509", "-in", leaf, "-noout", "-ext", "subjectAltName", "-text"]).stdout.toString();
      expect(ext).toContain(`URI:spiffe://cluster.local/ns/plain/sa/haproxy-${role}`);
      expect(ext).toContain("prime256v1");
    }
    // A CA the leaves are not signed by refuses them.
    const other = join(dir, "other");
    await initCaDir({ dir: other, trustDomain: "cluster.local" });
    const leaf = join(dir, "client-only.crt");
    expect(Bun.spawnSync(["openssl", "verify", "-CAfile", join(other, "root-cert.pem"), leaf]).exitCode).not.toBe(0);
  });
});

describe("show info", () => {
  // Trimmed from HAProxy 2.6.12's answer on the chain's server side.
  const sample = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nCurrSslConns: 3\nCumSslConns: 1024\nSslRate: 336\nSslFrontendKeyRate: 2\nSslFrontendSessionReuse_pct: 99\nSslBackendKeyRate: 0\nPipesUsed: 1\nPipesFree: 5\nDescription: \n";

  test("Name: value lines; the TLS counters and the pipes", () => {
    const info = parseShowInfo(sample);
    expect(info.Version).toBe("2.6.12-1+deb12u4");
    expect(info.Description).toBe("");
    expect(tlsInfo(info)).toEqual({ sslRate: 336, frontendKeyRate: 2, backendKeyRate: 0, frontendReusePct: 99, cumSslConns: 1024 });
    expect(pipesInfo(info)).toEqual({ pipesUsed: 1, pipesFree: 5 });
    expect(tlsInfo(parseShowInfo("Name: HAProxy\n"))).toEqual({ sslRate: undefined, frontendKeyRate: undefined, backendKeyRate: undefined, frontendReusePct: undefined, cumSslConns: undefined });
  });
});
