// proxy.ca: what each certificate source needs, refused before the proxy starts with a message
// naming the keys (and where the value came from), and the environment variables derived from
// the schema (NSHUB_PROXY_CA_*).
import { describe, expect, test } from "bun:test";
import { ConfigError, loadConfig } from "../../src/config/load.ts";

function problem(env: Record<string, string>): string {
  try {
    loadConfig({ file: "/dev/null", env });
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error("expected a config error");
}

describe("proxy.ca", () => {
  test("defaults: no certificates, cluster.local, 24 h", () => {
    expect(loadConfig({ file: "/dev/null", env: {} }).proxy.ca).toEqual({ source: "none", trustDomain: "cluster.local", lifetimeSeconds: 86400 });
  });

  test("istio needs an address, the roots and a credential", () => {
    const msg = problem({ NSHUB_PROXY_CA_SOURCE: "istio" });
    expect(msg).toStartWith("NSHUB_PROXY_CA_SOURCE=istio: proxy.ca.source is istio: set proxy.ca.address");
    expect(msg).toContain("set proxy.ca.rootCert");
    expect(msg).toContain("set proxy.ca.tokenFile (a bearer token file) or proxy.ca.clientCert and proxy.ca.clientKey");
    const ok = { NSHUB_PROXY_CA_SOURCE: "istio", NSHUB_PROXY_CA_ADDRESS: "ca.example:15012", NSHUB_PROXY_CA_ROOT_CERT: "/r.pem", NSHUB_PROXY_CA_TOKEN_FILE: "/t" };
    expect(loadConfig({ file: "/dev/null", env: ok }).proxy.ca).toMatchObject({ source: "istio", address: "ca.example:15012" });
    expect(problem({ ...ok, NSHUB_PROXY_CA_ADDRESS: "http://ca.example:15012" })).toBe(
      'NSHUB_PROXY_CA_ADDRESS=http://ca.example:15012: proxy.ca.address "http://ca.example:15012" is not host:port or https://host:port (the CA API needs TLS)',
    );
    expect(problem({ ...ok, NSHUB_PROXY_CA_CLIENT_CERT: "/c.pem" })).toContain("proxy.ca.clientCert and proxy.ca.clientKey go together");
    expect(problem({ ...ok, NSHUB_PROXY_CA_LOCAL_DIR: "/ca" })).toContain("proxy.ca.localDir only apply to source local");
  });

  test("local needs a CA directory or a certificate and its key, not both", () => {
    expect(problem({ NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_CERT_FILE: "/c.pem" })).toBe(
      "NSHUB_PROXY_CA_SOURCE=local: proxy.ca.source is local: set proxy.ca.localDir (an nshub ca init directory) or both proxy.ca.certFile and proxy.ca.keyFile (the signing certificate and its key); only proxy.ca.certFile is set",
    );
    expect(problem({ NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: "/ca", NSHUB_PROXY_CA_KEY_FILE: "/k" })).toContain("proxy.ca.localDir or proxy.ca.certFile/keyFile, not both");
    expect(problem({ NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: "/ca", NSHUB_PROXY_CA_TOKEN_FILE: "/t" })).toContain("proxy.ca.tokenFile only apply to source istio");
    expect(loadConfig({ file: "/dev/null", env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: "/ca" } }).proxy.ca.localDir).toBe("/ca");
  });

  test("trust domain, lifetime and source values are checked", () => {
    expect(problem({ NSHUB_PROXY_CA_TRUST_DOMAIN: "Cluster.Local" })).toContain("a trust domain is lowercase letters, digits");
    expect(problem({ NSHUB_PROXY_CA_LIFETIME_SECONDS: "5" })).toContain("NSHUB_PROXY_CA_LIFETIME_SECONDS=5");
    expect(problem({ NSHUB_PROXY_CA_SOURCE: "vault" })).toContain("NSHUB_PROXY_CA_SOURCE=vault");
  });
});
