// Identity checks on both ends of an HBONE connection fail closed, each with a precise error:
// the wrong server identity, an untrusted root (either side), an expired certificate (either
// side), a client without a certificate. No CONNECT is ever answered, no byte reaches the app.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { checkClientIdentity, checkServerIdentity, dialHbone, HboneError, openStream, PeerIdentityError } from "../../src/hbone/index.ts";
import { ID_A, ID_B, ID_C, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { startHarness, type Harness } from "../helpers/hbone-harness.ts";

let pki: Pki;
beforeAll(async () => {
  pki = await makePki();
});
afterAll(() => pki?.cleanup());

const REFUSED_CLIENT =
  "the server closed the connection after the TLS handshake without HTTP/2 SETTINGS: it refused our client certificate (untrusted, expired or not a SPIFFE identity of its trust domain)";

describe("HBONE identity checks fail closed", () => {
  let good: Harness;
  let appBytes = 0;
  beforeAll(async () => {
    good = await startHarness(pki.b, { app: (s) => s.on("data", (d) => (appBytes += d.length)) });
  });
  afterAll(() => good?.close());

  const dialBad = async (serverCert: Pki["b"], expected: string[] = [ID_B]) => {
    const h = await startHarness(serverCert);
    try {
      return await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: expected }).then(
        (c) => {
          c.session.destroy();
          return new Error("dial succeeded");
        },
        (e: HboneError) => e,
      );
    } finally {
      expect(h.requests.length).toBe(0);
      await h.close();
    }
  };

  test("a server presenting the wrong identity (same root) → identity error, no CONNECT sent", async () => {
    const e = (await dialBad(pki.c)) as HboneError;
    expect(e).toBeInstanceOf(HboneError);
    expect(e.kind).toBe("identity");
    expect(e.message).toMatch(new RegExp(`^HBONE to 127\\.0\\.0\\.1:\\d+: server identity ${ID_C} is not the expected ${ID_B}$`));
  });

  test("a server whose chain ends in an untrusted root → TLS error", async () => {
    const e = (await dialBad(pki.bOther)) as HboneError;
    expect(e.kind).toBe("tls");
    expect(e.message).toMatch(/TLS: SELF_SIGNED_CERT_IN_CHAIN: self signed certificate in certificate chain$/);
  });

  test("a server with an expired certificate → TLS error", async () => {
    const e = (await dialBad(pki.bExpired)) as HboneError;
    expect(e.kind).toBe("tls");
    expect(e.message).toMatch(/TLS: CERT_HAS_EXPIRED: certificate has expired$/);
  });

  const dialGood = (certificate: { keyPem: string; presented: string; roots: string }) =>
    dialHbone({ address: "127.0.0.1", port: good.port, certificate, expectedIdentities: [ID_B] }).then(
      () => new Error("dial succeeded"),
      (e: HboneError) => e,
    );

  test("a client certificate from an untrusted root → refused by the server", async () => {
    const before = good.refusals.length;
    const e = (await dialGood({ ...pki.aOther, roots: pki.a.roots })) as HboneError;
    expect(e.kind).toBe("tls");
    expect(e.message).toEndWith(REFUSED_CLIENT);
    expect(good.refusals.slice(before)).toEqual([{ reason: "tls: unable to verify the first certificate" }]);
  });

  test("an expired client certificate → refused by the server", async () => {
    const before = good.refusals.length;
    const e = (await dialGood(pki.aExpired)) as HboneError;
    expect(e.message).toEndWith(REFUSED_CLIENT);
    expect(good.refusals.slice(before)).toEqual([{ reason: "tls: certificate has expired" }]);
  });

  test("a client without a certificate → TLS alert certificate required", async () => {
    const before = good.refusals.length;
    const e = (await dialGood({ keyPem: "", presented: "", roots: pki.a.roots })) as HboneError;
    expect(e.kind).toBe("tls");
    expect(e.message).toContain("TLSV1_ALERT_CERTIFICATE_REQUIRED");
    expect(good.refusals.slice(before)[0]?.reason).toContain("PEER_DID_NOT_RETURN_A_CERTIFICATE");
  });

  test("a client of another trust domain, or with two URI SANs (chain valid) → closed after the handshake", async () => {
    const before = good.refusals.length;
    expect(((await dialGood(pki.aForeignDomain)) as HboneError).message).toEndWith(REFUSED_CLIENT);
    expect(((await dialGood(pki.aTwoSans)) as HboneError).message).toEndWith(REFUSED_CLIENT);
    expect(good.refusals.slice(before)).toEqual([
      { reason: "identity: client identity spiffe://other.domain/ns/ns-a/sa/sa-a is in trust domain other.domain, not cluster.local" },
      { reason: `identity: the peer certificate has 2 URI SANs (${ID_A}, ${ID_C}); exactly one is required` },
    ]);
  });

  test("the good pair works, so the refusals above are the checks and nothing else", async () => {
    const conn = await dialHbone({ address: "127.0.0.1", port: good.port, certificate: pki.a, expectedIdentities: [ID_C, ID_B] });
    expect(conn.peerIdentity).toBe(ID_B);
    const s = await openStream(conn, { ip: "127.0.0.1", port: good.appPort });
    s.end("four");
    while (appBytes < 4) await Bun.sleep(5);
    expect(appBytes).toBe(4);
    expect(good.requests.map((r) => r.peerIdentity)).toEqual([ID_A]);
    conn.session.close();
  });
});

test("setCertificate: new connections present the new certificate, an open one keeps working", async () => {
  const h = await startHarness(pki.b);
  try {
    const before = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_B] });
    h.server.setCertificate(pki.c);
    const after = await dialHbone({ address: "127.0.0.1", port: h.port, certificate: pki.a, expectedIdentities: [ID_C] });
    expect(after.peerIdentity).toBe(ID_C);
    const s = await openStream(before, { ip: "127.0.0.1", port: h.appPort });
    let got = "";
    s.on("data", (d) => (got += d));
    const ended = new Promise((r) => s.on("end", r));
    s.end("still here");
    await ended;
    expect(got).toBe("still here");
    before.session.close();
    after.session.close();
  } finally {
    await h.close();
  }
});

describe("SPIFFE SAN rules", () => {
  test("server side: one SPIFFE URI SAN in the trust domain", () => {
    expect(checkClientIdentity({ subjectaltname: `URI:${ID_A}` }, "cluster.local")).toBe(ID_A);
    const err = (san: string | undefined, td = "cluster.local") => {
      try {
        checkClientIdentity(san === undefined ? undefined : { subjectaltname: san }, td);
      } catch (e) {
        return [(e as PeerIdentityError).reason, (e as Error).message];
      }
      return "accepted";
    };
    expect(err(undefined)).toEqual(["no_certificate", "the peer presented no certificate with a subjectAltName"]);
    expect(err("DNS:a.example")).toEqual(["no_spiffe_san", "the peer certificate has no URI SAN"]);
    expect(err(`URI:${ID_A}, URI:${ID_B}`)[0]).toBe("several_sans");
    expect(err("URI:https://example.com/x")[0]).toBe("no_spiffe_san");
    expect(err(`URI:${ID_A}`, "other.domain")).toEqual(["wrong_trust_domain", `client identity ${ID_A} is in trust domain cluster.local, not other.domain`]);
  });

  test("client side: one of the expected identities", () => {
    expect(checkServerIdentity({ subjectaltname: `URI:${ID_B}` }, [ID_A, ID_B])).toBe(ID_B);
    expect(() => checkServerIdentity({ subjectaltname: `URI:${ID_C}` }, [ID_B])).toThrow(`server identity ${ID_C} is not the expected ${ID_B}`);
  });
});
