// Wire compatibility of nshub's ZDS messages with Istio's `istio.workload.zds` schema.
//
// Expected bytes are built here by hand from field numbers and wire types, with a tiny
// encoder that knows nothing about the generated code, and compared byte for byte with
// what src/zds/messages.ts produces. Hand-built bytes are also fed to the decoders.

import { describe, expect, test } from "bun:test";
import {
  ZDS_MAX_MESSAGE,
  Version,
  ackError,
  ackResponse,
  addRequest,
  decodeHello,
  decodeRequest,
  decodeResponse,
  delRequest,
  encodeHello,
  encodeRequest,
  encodeResponse,
  failureToProcessMessage,
  failureToReadMessage,
  failureToStartProxy,
  helloV1,
  keepRequest,
  requestUid,
  snapshotSentRequest,
} from "../../src/zds/messages.ts";
import { lenField, strField, tag, varint, varintField } from "../fixtures/zds-raw.ts";

// ---------------------------------------------------------------------------------------
// Minimal independent protobuf encoder (test/fixtures/zds-raw.ts: knows nothing of the
// generated code or src/zds/messages.ts)
// ---------------------------------------------------------------------------------------

const vfield = varintField;
const lfield = lenField;
const sfield = strField;

function bytes(...parts: number[][]): Uint8Array {
  return new Uint8Array(parts.flat());
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(hex(actual)).toBe(hex(expected));
}

// Field numbers, straight from the Istio schema (not from generated code).
const REQ_ADD = 1;
const REQ_DEL = 2;
const REQ_SNAPSHOT_SENT = 3;
const REQ_KEEP = 5;
const ADD_UID = 1;
const ADD_INFO = 2;
const INFO_NAME = 1;
const INFO_NAMESPACE = 2;
const INFO_SA = 3;
const INFO_TRUST_DOMAIN_RESERVED = 4;
const KEEP_UID = 1;
const DEL_UID = 2;
const RESP_ACK = 1;
const ACK_ERROR = 1;
const HELLO_VERSION = 1;

const UID = "0f6f8ab6-39b5-4e0e-9c53-6a1c2d8b2f41";
const INFO = { name: "httpbin-7f9c7d6d9b-x2x4l", namespace: "demo", serviceAccount: "httpbin" };

function handInfo(info = INFO): number[] {
  return [
    ...sfield(INFO_NAME, info.name),
    ...sfield(INFO_NAMESPACE, info.namespace),
    ...sfield(INFO_SA, info.serviceAccount),
  ];
}

function handAdd(uid: string, info?: typeof INFO): Uint8Array {
  const add = [...sfield(ADD_UID, uid), ...(info ? lfield(ADD_INFO, handInfo(info)) : [])];
  return bytes(lfield(REQ_ADD, add));
}

// Sanity check of the test encoder itself against known literal bytes.
test("hand encoder produces textbook bytes", () => {
  expect(hex(bytes(vfield(1, 1)))).toBe("0801");
  expect(hex(bytes(vfield(1, 300)))).toBe("08ac02");
  expect(hex(bytes(sfield(2, "hi")))).toBe("12026869");
  expect(hex(bytes(lfield(3, [])))).toBe("1a00");
  expect(hex(bytes(tag(5, 2)))).toBe("2a"); // wire type 2: length-delimited
  expect(hex(bytes(varint(200)))).toBe("c801");
});

// ---------------------------------------------------------------------------------------
// Byte-for-byte encoding, and decoding of the same hand-built bytes
// ---------------------------------------------------------------------------------------

describe("ZdsHello", () => {
  test("V1 is 08 01 both ways", () => {
    expect(hex(encodeHello())).toBe("0801");
    expect(hex(encodeHello(helloV1()))).toBe("0801");
    expectBytes(encodeHello(), bytes(vfield(HELLO_VERSION, 1)));
    const r = decodeHello(new Uint8Array([0x08, 0x01]));
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.msg.version).toBe(Version.V1);
  });

  test("empty hello decodes as NOT_USED (version is not enforced, as in Istio)", () => {
    const r = decodeHello(new Uint8Array(0));
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.msg.version).toBe(Version.NOT_USED);
  });
});

describe("WorkloadRequest", () => {
  test("Add with uid and workload_info", () => {
    const expected = handAdd(UID, INFO);
    expectBytes(encodeRequest(addRequest(UID, INFO)), expected);
    // First bytes: oneof field 1 (0a), then AddWorkload.uid field 1 (0a, 0x24 = 36 chars).
    expect(hex(expected.subarray(0, 1))).toBe("0a");
    expect(hex(expected.subarray(2, 4))).toBe("0a24");

    const r = decodeRequest(expected, 1, false);
    expect(r.ok).toBe(true);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error("expected add");
    expect(r.msg.payload.value.uid).toBe(UID);
    expect(r.msg.payload.value.workloadInfo?.name).toBe(INFO.name);
    expect(r.msg.payload.value.workloadInfo?.namespace).toBe(INFO.namespace);
    expect(r.msg.payload.value.workloadInfo?.serviceAccount).toBe(INFO.serviceAccount);
    expect(requestUid(r.msg)).toBe(UID);
  });

  test("Add without workload_info (Istio 1.21 shape)", () => {
    const expected = handAdd(UID);
    expectBytes(encodeRequest(addRequest(UID)), expected);
    const r = decodeRequest(expected, 1, false);
    expect(r.ok).toBe(true);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error("expected add");
    expect(r.msg.payload.value.uid).toBe(UID);
    expect(r.msg.payload.value.workloadInfo).toBeUndefined();
  });

  test("Add with long and non-ASCII names (multi-byte length varints, UTF-8)", () => {
    const info = { name: "p".repeat(253), namespace: "n".repeat(63), serviceAccount: "sä-ünïcode" };
    const expected = handAdd(UID, info);
    expect(expected.length).toBeLessThanOrEqual(ZDS_MAX_MESSAGE);
    expectBytes(encodeRequest(addRequest(UID, info)), expected);
    const r = decodeRequest(expected, 1, false);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error("expected add");
    expect(r.msg.payload.value.workloadInfo?.serviceAccount).toBe(info.serviceAccount);
    expect(r.msg.payload.value.workloadInfo?.name).toBe(info.name);
  });

  test("Del: uid in field 2 inside oneof field 2", () => {
    const expected = bytes(lfield(REQ_DEL, sfield(DEL_UID, UID)));
    expect(hex(expected.subarray(0, 4))).toBe("12261224");
    expectBytes(encodeRequest(delRequest(UID)), expected);
    const r = decodeRequest(expected, 0, false);
    if (!r.ok || r.msg.payload.case !== "del") throw new Error("expected del");
    expect(r.msg.payload.value.uid).toBe(UID);
    expect(requestUid(r.msg)).toBe(UID);
  });

  test("Del with uid in field 1 is not a Del uid (field 1 is unknown there)", () => {
    const r = decodeRequest(bytes(lfield(REQ_DEL, sfield(1, UID))), 0, false);
    if (!r.ok || r.msg.payload.case !== "del") throw new Error("expected del");
    expect(r.msg.payload.value.uid).toBe("");
  });

  test("Keep: oneof field 5", () => {
    const expected = bytes(lfield(REQ_KEEP, sfield(KEEP_UID, UID)));
    expect(hex(expected.subarray(0, 1))).toBe("2a");
    expectBytes(encodeRequest(keepRequest(UID)), expected);
    const r = decodeRequest(expected, 0, false);
    if (!r.ok || r.msg.payload.case !== "keep") throw new Error("expected keep");
    expect(r.msg.payload.value.uid).toBe(UID);
  });

  test("SnapshotSent: oneof field 3, empty body (1a 00)", () => {
    const expected = bytes(lfield(REQ_SNAPSHOT_SENT, []));
    expect(hex(expected)).toBe("1a00");
    expectBytes(encodeRequest(snapshotSentRequest()), expected);
    const r = decodeRequest(expected, 0, false);
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.msg.payload.case).toBe("snapshotSent");
      expect(requestUid(r.msg)).toBeUndefined();
    }
  });
});

describe("WorkloadResponse", () => {
  test("Ack ok is 0a 00", () => {
    const expected = bytes(lfield(RESP_ACK, []));
    expect(hex(expected)).toBe("0a00");
    expectBytes(encodeResponse(ackResponse()), expected);
    expectBytes(encodeResponse(ackResponse("")), expected);
    const r = decodeResponse(expected);
    expect(r.ok).toBe(true);
    if (r.ok) expect(ackError(r.msg)).toBe("");
  });

  test("Ack with error text", () => {
    const text = failureToStartProxy("bind 127.0.0.1:15001: address in use");
    const expected = bytes(lfield(RESP_ACK, sfield(ACK_ERROR, text)));
    expectBytes(encodeResponse(ackResponse(text)), expected);
    const r = decodeResponse(expected, 0, false);
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.msg.payload.value.error).toBe(text);
      expect(ackError(r.msg)).toBe(text);
    }
  });
});

// ---------------------------------------------------------------------------------------
// Tolerance and rejection
// ---------------------------------------------------------------------------------------

describe("decode tolerance", () => {
  test("unknown fields are ignored at every level", () => {
    const add = [
      ...sfield(ADD_UID, UID),
      ...vfield(9, 42), // unknown in AddWorkload
      ...lfield(ADD_INFO, [...handInfo(), ...sfield(7, "future")]), // unknown in WorkloadInfo
    ];
    const req = bytes(vfield(15, 1), lfield(REQ_ADD, add), lfield(4, [1, 2, 3])); // 15 and 4 unknown
    const r = decodeRequest(req, 1, false);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error(`expected add: ${JSON.stringify(r)}`);
    expect(r.msg.payload.value.uid).toBe(UID);
    expect(r.msg.payload.value.workloadInfo?.name).toBe(INFO.name);

    const hello = decodeHello(bytes(vfield(HELLO_VERSION, 1), sfield(2, "x")));
    expect(hello.ok).toBe(true);
    const resp = decodeResponse(bytes(lfield(RESP_ACK, [...sfield(ACK_ERROR, "e"), ...vfield(3, 1)]), vfield(2, 0)));
    expect(resp.ok).toBe(true);
    if (resp.ok) expect(ackError(resp.msg)).toBe("e");
  });

  test("reserved WorkloadInfo field 4 (trust_domain, Istio 1.22 agent) is ignored", () => {
    const info = [...handInfo(), ...sfield(INFO_TRUST_DOMAIN_RESERVED, "cluster.local")];
    const req = bytes(lfield(REQ_ADD, [...sfield(ADD_UID, UID), ...lfield(ADD_INFO, info)]));
    const r = decodeRequest(req, 1, false);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error(`expected add: ${JSON.stringify(r)}`);
    const wi = r.msg.payload.value.workloadInfo;
    expect(wi?.name).toBe(INFO.name);
    expect(wi?.namespace).toBe(INFO.namespace);
    expect(wi?.serviceAccount).toBe(INFO.serviceAccount);
    expect(Object.keys(wi ?? {})).not.toContain("trustDomain");
  });

  test("fields in non-canonical order still decode", () => {
    const info = [...sfield(INFO_SA, "sa"), ...sfield(INFO_NAMESPACE, "ns"), ...sfield(INFO_NAME, "n")];
    const req = bytes(lfield(REQ_ADD, [...lfield(ADD_INFO, info), ...sfield(ADD_UID, UID)]));
    const r = decodeRequest(req, 1, false);
    if (!r.ok || r.msg.payload.case !== "add") throw new Error("expected add");
    expect(r.msg.payload.value.workloadInfo?.name).toBe("n");
    expect(r.msg.payload.value.uid).toBe(UID);
  });
});

describe("invalid protobuf", () => {
  const garbage: Array<[string, Uint8Array]> = [
    ["random high bytes", new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
    ["length runs past the end", bytes([0x0a, 0x10], sfield(1, "abc"))],
    ["field number 0", new Uint8Array([0x00, 0x01])],
    ["wire type 7", new Uint8Array([0x0f, 0x01])],
    ["known field with wrong wire type (08 00)", new Uint8Array([0x08, 0x00])],
    ["nested wrong wire type", bytes(lfield(REQ_ADD, vfield(ADD_UID, 5)))],
    ["invalid UTF-8 in uid", bytes(lfield(REQ_DEL, lfield(DEL_UID, [0xc3, 0x28])))],
    ["ASCII text", new TextEncoder().encode("hello ztunnel, this is not protobuf")],
  ];

  for (const [name, b] of garbage) {
    test(`request: ${name}`, () => {
      let r: ReturnType<typeof decodeRequest> | undefined;
      expect(() => {
        r = decodeRequest(b, 0, false);
      }).not.toThrow();
      expect(r?.ok).toBe(false);
      if (r && !r.ok) expect(r.error).toStartWith("invalid protobuf: ");
    });
  }

  test("response and hello garbage also give invalid protobuf, never a throw", () => {
    const junk = new Uint8Array([0x0a, 0x05, 0x0a, 0x09, 0x41]);
    const resp = decodeResponse(junk);
    expect(resp.ok).toBe(false);
    if (!resp.ok) expect(resp.error).toStartWith("invalid protobuf: ");
    const hello = decodeHello(new Uint8Array([0x0a, 0x01, 0x00])); // version as LEN
    expect(hello.ok).toBe(false);
    if (!hello.ok) expect(hello.error).toStartWith("invalid protobuf: ");
  });
});

describe("receive validation rules", () => {
  const add = handAdd(UID, INFO);
  const del = bytes(lfield(REQ_DEL, sfield(DEL_UID, UID)));
  const keep = bytes(lfield(REQ_KEEP, sfield(KEEP_UID, UID)));
  const snap = bytes(lfield(REQ_SNAPSHOT_SENT, []));

  test("truncated flag → received truncated message", () => {
    expect(decodeRequest(add, 1, true)).toEqual({ ok: false, error: "received truncated message" });
    expect(decodeResponse(bytes(lfield(RESP_ACK, [])), 0, true)).toEqual({
      ok: false,
      error: "received truncated message",
    });
    expect(decodeHello(bytes(vfield(1, 1)), 0, true)).toEqual({ ok: false, error: "received truncated message" });
  });

  test("64 KiB payload flagged truncated → received truncated message", () => {
    const big = new Uint8Array(64 * 1024);
    big.set(bytes(lfield(REQ_SNAPSHOT_SENT, [])));
    expect(decodeRequest(big, 0, true)).toEqual({ ok: false, error: "received truncated message" });
  });

  test("a packet over ZDS_MAX_MESSAGE counts as truncated even if unflagged", () => {
    expect(ZDS_MAX_MESSAGE).toBe(1024);
    const tooBig = handAdd(UID, { ...INFO, name: "x".repeat(1100) });
    expect(tooBig.length).toBeGreaterThan(ZDS_MAX_MESSAGE);
    expect(decodeRequest(tooBig, 1, false)).toEqual({ ok: false, error: "received truncated message" });
  });

  test("truncation is reported before fd problems", () => {
    expect(decodeRequest(add, 3, true)).toEqual({ ok: false, error: "received truncated message" });
  });

  test("more than one fd → expected 1 FD, got N", () => {
    expect(decodeRequest(add, 2, false)).toEqual({ ok: false, error: "expected 1 FD, got 2" });
    expect(decodeRequest(del, 5, false)).toEqual({ ok: false, error: "expected 1 FD, got 5" });
  });

  test("Add without fd → no control message", () => {
    expect(decodeRequest(add, 0, false)).toEqual({ ok: false, error: "no control message" });
    expect(decodeRequest(handAdd(UID), 0, false)).toEqual({ ok: false, error: "no control message" });
  });

  test("non-Add with fd → unexpected control message", () => {
    for (const b of [del, keep, snap]) {
      expect(decodeRequest(b, 1, false)).toEqual({ ok: false, error: "unexpected control message" });
    }
    expect(decodeResponse(bytes(lfield(RESP_ACK, [])), 1)).toEqual({ ok: false, error: "unexpected control message" });
    expect(decodeHello(bytes(vfield(1, 1)), 1)).toEqual({ ok: false, error: "unexpected control message" });
  });

  test("non-Add without fd and Add with one fd are accepted", () => {
    for (const b of [del, keep, snap]) expect(decodeRequest(b, 0, false).ok).toBe(true);
    expect(decodeRequest(add, 1, false).ok).toBe(true);
  });

  test("empty oneof → no payload", () => {
    expect(decodeRequest(new Uint8Array(0), 0, false)).toEqual({ ok: false, error: "no payload" });
    // Only unknown fields: still no payload.
    expect(decodeRequest(bytes(lfield(4, sfield(1, UID))), 0, false)).toEqual({ ok: false, error: "no payload" });
    expect(decodeResponse(new Uint8Array(0))).toEqual({ ok: false, error: "no payload" });
  });

  test("undecodable bytes are reported before payload/fd rules", () => {
    const r = decodeRequest(new Uint8Array([0x0a, 0x7f]), 1, false);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toStartWith("invalid protobuf: ");
  });
});

describe("nack texts and encoder limits", () => {
  test("nack builders use Istio's wording", () => {
    expect(failureToStartProxy("boom")).toBe("failure to start proxy : boom");
    expect(failureToProcessMessage(new Error("pod keep received after snapshot"))).toBe(
      "failure to process message : pod keep received after snapshot",
    );
    expect(failureToReadMessage("no control message")).toBe("failure to read message : no control message");
  });

  test("Kubernetes maximum-length names fit in one packet", () => {
    const info = { name: "a".repeat(253), namespace: "b".repeat(63), serviceAccount: "c".repeat(253) };
    expect(encodeRequest(addRequest(UID, info)).length).toBeLessThanOrEqual(ZDS_MAX_MESSAGE);
  });

  test("encoding more than ZDS_MAX_MESSAGE bytes throws RangeError", () => {
    expect(() => encodeRequest(addRequest("u".repeat(2000)))).toThrow(RangeError);
    expect(() => encodeResponse(ackResponse("e".repeat(2000)))).toThrow(RangeError);
  });
});
