// Istio's CA API on the wire. The generated istio.v1.auth messages against bytes built by hand
// from Istio's field numbers (test/fixtures/ca-raw.ts), and nshub's CA client against a bare
// node:http2 server that is not Connect: the gRPC path, headers, framing and body the client
// sends are what ztunnel sends; the answer and an error status are read back.
import { afterAll, describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import http2 from "node:http2";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  IstioCertificateRequestSchema,
  IstioCertificateResponseSchema,
  IstioCertificateService,
} from "../../src/gen/istio/v1/auth/ca_pb.ts";
import { createCaClient } from "../../src/identity/ca-client.ts";
import { CertificateError } from "../../src/identity/source.ts";
import { caRequest, caResponse, grpcFrame, grpcUnframe, readCaResponse } from "../fixtures/ca-raw.ts";
import { openssl } from "../helpers/openssl.ts";

const ID = "spiffe://cluster.local/ns/default/sa/web";
const CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";

describe("istio.v1.auth messages: generated code = hand-encoded bytes", () => {
  test("IstioCertificateRequest{csr, validity_duration 86400, metadata{ImpersonatedIdentity}}", () => {
    const msg = create(IstioCertificateRequestSchema, { csr: CSR, validityDuration: 86400n, metadata: { ImpersonatedIdentity: ID } });
    const bytes = Array.from(toBinary(IstioCertificateRequestSchema, msg));
    expect(bytes).toEqual(caRequest(CSR, 86400, ID));
    // field 3 is the varint 86400 = 0x80 0xa3 0x05 right after the tag 0x18
    const at = bytes.indexOf(0x18, CSR.length);
    expect(bytes.slice(at, at + 4)).toEqual([0x18, 0x80, 0xa3, 0x05]);
  });

  test("defaults are not on the wire: no lifetime, no metadata → only the csr", () => {
    expect(Array.from(toBinary(IstioCertificateRequestSchema, create(IstioCertificateRequestSchema, { csr: CSR })))).toEqual(caRequest(CSR, 0));
  });

  test("hand-encoded bytes decode to the same fields (what the server reads)", () => {
    const m = fromBinary(IstioCertificateRequestSchema, new Uint8Array(caRequest(CSR, 3600, ID)));
    expect(m.csr).toBe(CSR);
    expect(m.validityDuration).toBe(3600n);
    expect(m.metadata).toEqual({ ImpersonatedIdentity: ID });
  });

  test("IstioCertificateResponse: repeated cert_chain = 1, both ways", () => {
    const chain = ["leaf\n", "root\n"];
    expect(fromBinary(IstioCertificateResponseSchema, new Uint8Array(caResponse(chain))).certChain).toEqual(chain);
    expect(readCaResponse(toBinary(IstioCertificateResponseSchema, create(IstioCertificateResponseSchema, { certChain: chain })))).toEqual(chain);
  });

  test("service and method names give Istio's gRPC path", () => {
    expect(IstioCertificateService.typeName).toBe("istio.v1.auth.IstioCertificateService");
    expect(IstioCertificateService.method.createCertificate.name).toBe("CreateCertificate");
    const fields = IstioCertificateRequestSchema.fields.map((f) => [f.name, f.number]);
    expect(fields).toEqual([["csr", 1], ["validity_duration", 3], ["metadata", 4]]);
  });
});

describe("CA client on the wire (bare node:http2 server)", () => {
  const dir = mkdtempSync(join(tmpdir(), "nshub-cawire-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const sh = (args: string[]) => {
    const r = openssl(args);
    if (r.code !== 0) throw new Error(r.stderr);
  };
  sh(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${dir}/ca.key`, "-out", `${dir}/ca.pem`, "-days", "1", "-subj", "/CN=wire-ca"]);
  sh(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${dir}/srv.key`, "-out", `${dir}/srv.csr`, "-subj", "/CN=srv"]);
  writeFileSync(`${dir}/srv.ext`, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  sh(["x509", "-req", "-in", `${dir}/srv.csr`, "-CA", `${dir}/ca.pem`, "-CAkey", `${dir}/ca.key`, "-CAcreateserial", "-out", `${dir}/srv.pem`, "-days", "1", "-extfile", `${dir}/srv.ext`]);

  interface Seen {
    headers: http2.IncomingHttpHeaders;
    body: Buffer;
  }

  async function withServer(answer: (s: http2.ServerHttp2Stream) => void, fn: (port: number, seen: Seen[]) => Promise<void>) {
    const seen: Seen[] = [];
    const server = http2.createSecureServer({ key: readFileSync(`${dir}/srv.key`), cert: readFileSync(`${dir}/srv.pem`) });
    server.on("stream", (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        seen.push({ headers, body: Buffer.concat(chunks) });
        answer(stream as http2.ServerHttp2Stream);
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      await fn((server.address() as { port: number }).port, seen);
    } finally {
      server.close();
    }
  }

  const okAnswer = (chain: string[]) => (s: http2.ServerHttp2Stream) => {
    s.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    s.on("wantTrailers", () => s.sendTrailers({ "grpc-status": "0" }));
    s.end(grpcFrame(caResponse(chain)));
  };

  test("POST /istio.v1.auth.IstioCertificateService/CreateCertificate, application/grpc, bearer token re-read per call, clusterid, framed request", async () => {
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, "first-token\n");
    await withServer(okAnswer(["leaf\n", "root\n"]), async (port, seen) => {
      const client = createCaClient({ address: `localhost:${port}`, caRoots: readFileSync(`${dir}/ca.pem`, "utf8"), tokenFile });
      try {
        expect(await client.createCertificate({ csr: CSR, identity: ID, validitySeconds: 86400 })).toEqual(["leaf\n", "root\n"]);
        writeFileSync(tokenFile, "second-token\n"); // projected tokens rotate: read again, like ztunnel
        await client.createCertificate({ csr: CSR, identity: ID, validitySeconds: 600 });
      } finally {
        client.close();
      }
      expect(seen).toHaveLength(2);
      const h = seen[0]!.headers;
      expect(h[":method"]).toBe("POST");
      expect(h[":path"]).toBe("/istio.v1.auth.IstioCertificateService/CreateCertificate");
      expect(h[":scheme"]).toBe("https");
      expect(String(h["content-type"])).toMatch(/^application\/grpc(\+proto)?$/);
      expect(h["te"]).toBe("trailers");
      expect(h["authorization"]).toBe("Bearer first-token");
      expect(h["clusterid"]).toBe("Kubernetes");
      expect(Array.from(grpcUnframe(seen[0]!.body))).toEqual(caRequest(CSR, 86400, ID));
      expect(seen[1]!.headers["authorization"]).toBe("Bearer second-token");
      expect(Array.from(grpcUnframe(seen[1]!.body))).toEqual(caRequest(CSR, 600, ID));
    });
  });

  test("a gRPC error status becomes a CertificateError with istiod's code and message", async () => {
    const deny = (s: http2.ServerHttp2Stream) => s.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "16", "grpc-message": "request authenticate failure" }, { endStream: true });
    await withServer(deny, async (port) => {
      const client = createCaClient({ address: `https://127.0.0.1:${port}`, caRoots: readFileSync(`${dir}/ca.pem`, "utf8"), token: "t" });
      try {
        const e = await client.createCertificate({ csr: CSR, identity: ID, validitySeconds: 60 }).catch((x) => x);
        expect(e).toBeInstanceOf(CertificateError);
        expect(e.code).toBe("unauthenticated");
        expect(e.retryable).toBe(false);
        expect(e.message).toContain("request authenticate failure");
      } finally {
        client.close();
      }
    });
  });

  test("the CA's certificate is verified: another root makes the call fail before any request is sent", async () => {
    await withServer(okAnswer(["leaf\n", "root\n"]), async (port, seen) => {
      const other = join(dir, "other.pem");
      sh(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${dir}/other.key`, "-out", other, "-days", "1", "-subj", "/CN=other"]);
      const client = createCaClient({ address: `localhost:${port}`, caRoots: readFileSync(other, "utf8"), token: "t", timeoutMs: 3000 });
      try {
        const e = await client.createCertificate({ csr: CSR, identity: ID, validitySeconds: 60 }).catch((x) => x);
        expect(e).toBeInstanceOf(CertificateError);
        expect(e.code).toBe("internal"); // Connect's code for a failed handshake; retried with backoff (roots may rotate)
        expect(e.message).toContain("unable to verify the first certificate");
        expect(seen).toHaveLength(0);
      } finally {
        client.close();
      }
    });
  });

  test("a CA that is down: unavailable, retryable (the manager backs off and tries again)", async () => {
    let port = 0;
    await withServer(okAnswer([]), async (p) => {
      port = p;
    }); // closed again: nothing listens on port now
    const client = createCaClient({ address: `127.0.0.1:${port}`, caRoots: readFileSync(`${dir}/ca.pem`, "utf8"), token: "t", timeoutMs: 3000 });
    try {
      const e = await client.createCertificate({ csr: CSR, identity: ID, validitySeconds: 60 }).catch((x) => x);
      expect(e).toBeInstanceOf(CertificateError);
      expect(e.code).toBe("unavailable");
      expect(e.retryable).toBe(true);
    } finally {
      client.close();
    }
  });
});
