// `nshub certs` against a REAL HTTP server on loopback serving a STAND-IN proxy's GET /certs
// (fixed answers: the shape src/proxy/cert-admin.ts serves; the real proxy behind it is in
// test/netns/proxy-certs.test.ts): the table, the errors under it, the source-none sentence,
// --json, and a proxy that is not running.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { main as certs, renderCerts, type CertsResponse } from "../../src/cli/certs.ts";
import { capture } from "../helpers/cli-io.ts";

const NOW = Date.parse("2026-12-03T12:00:00Z");
const ROOT = { subject: "O=cluster.local, CN=nshub root CA", issuer: "O=cluster.local, CN=nshub root CA", serial: "01", notBefore: "2026-01-01T00:00:00.000Z", notAfter: "2036-01-01T00:00:00.000Z", root: true };
const answer: CertsResponse = {
  source: "istio-ca https://127.0.0.1:15012",
  trustDomain: "cluster.local",
  lifetimeSeconds: 86400,
  certificates: [
    {
      identity: "spiffe://cluster.local/ns/shop/sa/db",
      state: "failed",
      pods: [{ uid: "u3", name: "db-0", namespace: "shop" }],
      renewAt: "2026-12-03T12:00:04.000Z",
      chain: [],
      lastError: "istio-ca https://127.0.0.1:15012: unavailable: connect ECONNREFUSED 127.0.0.1:15012",
      renewals: 0,
      failures: 3,
    },
    {
      identity: "spiffe://cluster.local/ns/shop/sa/web",
      state: "valid",
      pods: [
        { uid: "u1", name: "web-0", namespace: "shop" },
        { uid: "u2", name: "web-1", namespace: "shop" },
      ],
      serial: "3f2a9c",
      notBefore: "2026-12-03T11:58:00.000Z",
      notAfter: "2026-12-04T12:00:00.000Z",
      renewAt: "2026-12-04T00:00:00.000Z",
      chain: [{ subject: "", issuer: ROOT.subject, serial: "3f2a9c", notBefore: "2026-12-03T11:58:00.000Z", notAfter: "2026-12-04T12:00:00.000Z", root: false }, ROOT],
      renewals: 2,
      failures: 0,
    },
  ],
};

let server: Server<undefined>;
let body: unknown = answer;
beforeAll(() => {
  server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => (new URL(req.url).pathname === "/certs" ? Response.json(body) : new Response("no", { status: 404 })) });
});
afterAll(() => server.stop(true));

describe("nshub certs (stand-in proxy admin)", () => {
  test("one row per identity: SPIFFE ID, pods, state, serial, validity, renewal, issuers; errors under the table", () => {
    const text = renderCerts(answer, NOW);
    const lines = text.split("\n");
    expect(lines[0]).toBe("source: istio-ca https://127.0.0.1:15012   trust domain: cluster.local   lifetime: 1d00h");
    expect(lines[2]).toMatch(/^SPIFFE ID\s+PODS\s+STATE\s+SERIAL\s+NOT BEFORE\s+NOT AFTER\s+RENEWAL\s+ISSUERS$/);
    expect(lines[3]).toMatch(/^spiffe:\/\/cluster\.local\/ns\/shop\/sa\/db\s+shop\/db-0\s+failed\s+-\s+-\s+-\s+retry in 4s\s+-$/);
    expect(lines[4]).toMatch(
      /^spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web\s+shop\/web-0,shop\/web-1\s+valid\s+3f2a9c\s+2026-12-03T11:58:00Z\s+2026-12-04T12:00:00Z\s+renew in 12h00m\s+O=cluster\.local, CN=nshub root CA$/,
    );
    expect(lines.at(-1)).toBe("spiffe://cluster.local/ns/shop/sa/db: failed: istio-ca https://127.0.0.1:15012: unavailable: connect ECONNREFUSED 127.0.0.1:15012 (3 failed requests)");
  });

  test("source none: one sentence saying how to turn certificates on", () => {
    expect(renderCerts({ source: "none", trustDomain: "cluster.local", lifetimeSeconds: 86400, certificates: [] })).toContain("proxy.ca.source is none");
  });

  test("against a running server: the table, --json as served, and a proxy that is not there", async () => {
    const admin = `127.0.0.1:${server.port}`;
    const io = capture();
    expect(await certs(["--admin", admin], io)).toBe(0);
    expect(io.stdout).toContain("spiffe://cluster.local/ns/shop/sa/web");
    const json = capture();
    expect(await certs(["--json", "--admin", admin], json)).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual(answer);
    body = { something: "else" };
    const odd = capture();
    expect(await certs(["--admin", admin], odd)).toBe(1);
    expect(odd.stderr).toContain("answered /certs without a certificates list");
    body = answer;
    const gone = capture();
    expect(await certs(["--admin", "127.0.0.1:1"], gone)).toBe(1);
    expect(gone.stderr).toBe("the nshub proxy is not running (nothing listens on 127.0.0.1:1); start it with: nshub proxy\n");
  });
});
