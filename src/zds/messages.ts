// ZDS message layer: build, encode and decode the protobuf messages exchanged between a
// node agent (istio-cni or nshub) and a node proxy (ztunnel or nshub). No I/O happens
// here: the socket code hands us the packet bytes, how many SCM_RIGHTS fds came with
// the packet, and whether the kernel flagged it truncated (MSG_TRUNC / MSG_CTRUNC).
//
// Decoders never throw. They return `{ ok: true, msg }` or `{ ok: false, error }`, with
// error texts that follow Istio's receive rules, so a caller can put the text into a
// nack (`failureToReadMessage(error)`) or a log line as is. When a decode fails the
// caller still owns every fd that arrived with the packet and must close them.
//
// See docs/zds.md for the protocol itself.

import { create, fromBinary, ScalarType, toBinary } from "@bufbuild/protobuf";
import type { DescField, DescMessage, MessageShape } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import {
  AckSchema,
  AddWorkloadSchema,
  DelWorkloadSchema,
  KeepWorkloadSchema,
  SnapshotSentSchema,
  Version,
  WorkloadInfoSchema,
  WorkloadRequestSchema,
  WorkloadResponseSchema,
  ZdsHelloSchema,
} from "../gen/zds_pb.ts";
import type { Ack, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello } from "../gen/zds_pb.ts";

export { Version };
export type { Ack, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello };

/**
 * Size of the receive buffer both Istio peers use for one ZDS packet. A packet longer
 * than this is cut by the kernel (MSG_TRUNC) and rejected by the receiver, so nothing
 * we send may exceed it, and anything longer we receive is treated as truncated.
 */
export const ZDS_MAX_MESSAGE = 1024;

/** Error texts produced by the decoders (the "invalid protobuf" one has a detail suffix). */
export const ZDS_ERR_TRUNCATED = "received truncated message";
export const ZDS_ERR_NO_CONTROL_MESSAGE = "no control message";
export const ZDS_ERR_UNEXPECTED_CONTROL_MESSAGE = "unexpected control message";
export const ZDS_ERR_NO_PAYLOAD = "no payload";
export const ZDS_ERR_INVALID_PROTOBUF_PREFIX = "invalid protobuf: ";

/** `expected 1 FD, got N`: more than one fd arrived with a single packet. */
export function tooManyFdsError(fdCount: number): string {
  return `expected 1 FD, got ${fdCount}`;
}

// ---------------------------------------------------------------------------------------
// Result and message types
// ---------------------------------------------------------------------------------------

export type DecodeResult<T> = { ok: true; msg: T } | { ok: false; error: string };

type RequestPayload = WorkloadRequest["payload"];
type SetRequestPayload = Exclude<RequestPayload, { case: undefined }>;

/** Which request it is: "add" | "del" | "snapshotSent" | "keep". */
export type ZdsRequestKind = SetRequestPayload["case"];

/** A WorkloadRequest whose oneof is known to be set (what `decodeRequest` returns). */
export type ZdsRequest = WorkloadRequest & { payload: SetRequestPayload };

/** A WorkloadResponse whose oneof holds an Ack (what `decodeResponse` returns). */
export type ZdsResponse = WorkloadResponse & { payload: { case: "ack"; value: Ack } };

/** Plain pod identity accepted by `addRequest`. */
export interface WorkloadIdentity {
  name: string;
  namespace: string;
  serviceAccount: string;
}

// ---------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------

/**
 * AddWorkload for pod `uid`. Leave `info` out only to imitate an Istio 1.21 agent; current
 * ztunnel refuses an Add without workload_info ("failure to process message").
 * The netns fd travels next to the encoded bytes, not in them.
 */
export function addRequest(uid: string, info?: WorkloadIdentity): ZdsRequest {
  const add = create(AddWorkloadSchema, { uid });
  if (info !== undefined) {
    add.workloadInfo = create(WorkloadInfoSchema, {
      name: info.name,
      namespace: info.namespace,
      serviceAccount: info.serviceAccount,
    });
  }
  return create(WorkloadRequestSchema, { payload: { case: "add", value: add } }) as ZdsRequest;
}

/** DelWorkload for pod `uid` (carried in field 2 of DelWorkload). */
export function delRequest(uid: string): ZdsRequest {
  return create(WorkloadRequestSchema, {
    payload: { case: "del", value: create(DelWorkloadSchema, { uid }) },
  }) as ZdsRequest;
}

/** KeepWorkload for pod `uid`; only meaningful before SnapshotSent. */
export function keepRequest(uid: string): ZdsRequest {
  return create(WorkloadRequestSchema, {
    payload: { case: "keep", value: create(KeepWorkloadSchema, { uid }) },
  }) as ZdsRequest;
}

/** SnapshotSent: the end of the (re)connect snapshot. */
export function snapshotSentRequest(): ZdsRequest {
  return create(WorkloadRequestSchema, {
    payload: { case: "snapshotSent", value: create(SnapshotSentSchema) },
  }) as ZdsRequest;
}

/** Ack reply. No argument (or "") is a success; any text makes it a nack. */
export function ackResponse(error = ""): ZdsResponse {
  return create(WorkloadResponseSchema, {
    payload: { case: "ack", value: create(AckSchema, { error }) },
  }) as ZdsResponse;
}

/** The hello a proxy sends first on a new connection. */
export function helloV1(): ZdsHello {
  return create(ZdsHelloSchema, { version: Version.V1 });
}

// ---------------------------------------------------------------------------------------
// Nack texts, worded as ztunnel words them
// ---------------------------------------------------------------------------------------

function errText(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The per-pod proxy could not start. ztunnel keeps the connection and retries the pod. */
export function failureToStartProxy(err: unknown): string {
  return `failure to start proxy : ${errText(err)}`;
}

/** Any other processing error. ztunnel sends this, then drops the connection. */
export function failureToProcessMessage(err: unknown): string {
  return `failure to process message : ${errText(err)}`;
}

/** The request could not be read or parsed. ztunnel sends this, then drops the connection. */
export function failureToReadMessage(err: unknown): string {
  return `failure to read message : ${errText(err)}`;
}

// ---------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------

function checkedSize(bytes: Uint8Array, what: string): Uint8Array {
  if (bytes.length > ZDS_MAX_MESSAGE) {
    // Cannot happen with Kubernetes-valid names (all fields together stay well below
    // 1 KiB), so this is a programming error rather than a protocol outcome.
    throw new RangeError(
      `ZDS ${what} is ${bytes.length} bytes, more than the ${ZDS_MAX_MESSAGE}-byte packet limit`,
    );
  }
  return bytes;
}

/** Encode a request for one SEQPACKET packet. Throws RangeError above ZDS_MAX_MESSAGE. */
export function encodeRequest(req: WorkloadRequest): Uint8Array {
  return checkedSize(toBinary(WorkloadRequestSchema, req), "request");
}

/** Encode a response for one SEQPACKET packet. Throws RangeError above ZDS_MAX_MESSAGE. */
export function encodeResponse(resp: WorkloadResponse): Uint8Array {
  return checkedSize(toBinary(WorkloadResponseSchema, resp), "response");
}

/** Encode a hello (defaults to V1). */
export function encodeHello(hello: ZdsHello = helloV1()): Uint8Array {
  return checkedSize(toBinary(ZdsHelloSchema, hello), "hello");
}

// ---------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------

function fail(error: string): { ok: false; error: string } {
  return { ok: false, error };
}

/** Wire type a singular field of this descriptor must arrive with; undefined = unchecked. */
function expectedWireType(field: DescField): WireType | undefined {
  switch (field.fieldKind) {
    case "message":
      return field.delimitedEncoding ? WireType.StartGroup : WireType.LengthDelimited;
    case "enum":
      return WireType.Varint;
    case "scalar":
      switch (field.scalar) {
        case ScalarType.STRING:
        case ScalarType.BYTES:
          return WireType.LengthDelimited;
        case ScalarType.DOUBLE:
        case ScalarType.FIXED64:
        case ScalarType.SFIXED64:
          return WireType.Bit64;
        case ScalarType.FLOAT:
        case ScalarType.FIXED32:
        case ScalarType.SFIXED32:
          return WireType.Bit32;
        default:
          return WireType.Varint;
      }
    default:
      // Lists and maps may legally use more than one wire type; ZDS has none.
      return undefined;
  }
}

/**
 * Walk the packet once and reject a known field that arrives with the wrong wire type.
 * protobuf-es would otherwise reinterpret it silently (e.g. `08 00` would become an empty
 * Add), whereas ztunnel's decoder (prost) rejects it. Unknown fields are skipped.
 * Throws on malformed input; the caller turns that into "invalid protobuf: …".
 */
function checkWireTypes(desc: DescMessage, bytes: Uint8Array, depth = 0): void {
  if (depth > 16) throw new Error("nesting too deep");
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    const field = desc.fields.find((f) => f.number === no);
    const want = field === undefined ? undefined : expectedWireType(field);
    if (field === undefined || want === undefined) {
      reader.skip(wireType, no);
      continue;
    }
    if (wireType !== want) {
      throw new Error(
        `field ${desc.typeName}.${field.name} (${no}) has wire type ${wireType}, expected ${want}`,
      );
    }
    if (field.fieldKind === "message" && wireType === WireType.LengthDelimited) {
      checkWireTypes(field.message, reader.bytes(), depth + 1);
    } else {
      reader.skip(wireType, no);
    }
  }
}

function parse<Desc extends DescMessage>(
  schema: Desc,
  bytes: Uint8Array,
): DecodeResult<MessageShape<Desc>> {
  try {
    checkWireTypes(schema, bytes);
    // Unknown fields (e.g. trust_domain = 4 from an Istio 1.22 agent) are kept aside in
    // $unknown and otherwise ignored; invalid UTF-8 in a string field is an error.
    return { ok: true, msg: fromBinary(schema, bytes) };
  } catch (e) {
    return fail(ZDS_ERR_INVALID_PROTOBUF_PREFIX + errText(e));
  }
}

/** Truncation and size checks shared by every decoder. */
function truncationError(bytes: Uint8Array, truncated: boolean): string | undefined {
  if (truncated || bytes.length > ZDS_MAX_MESSAGE) return ZDS_ERR_TRUNCATED;
  return undefined;
}

/**
 * Decode and validate one WorkloadRequest packet, as the proxy side receives it.
 *
 * @param bytes     the packet payload
 * @param fdCount   number of SCM_RIGHTS fds that arrived with it
 * @param truncated true if recvmsg reported MSG_TRUNC or MSG_CTRUNC
 *
 * Checks, in order: truncation (also any packet over ZDS_MAX_MESSAGE), more than one fd,
 * protobuf validity, an empty oneof, then the fd rule: an Add needs exactly one fd and
 * nothing else may carry one. Note that an empty WorkloadRequest encodes to zero bytes,
 * which on the socket looks like EOF; the transport must decide that before calling here.
 */
export function decodeRequest(
  bytes: Uint8Array,
  fdCount: number,
  truncated: boolean,
): DecodeResult<ZdsRequest> {
  const trunc = truncationError(bytes, truncated);
  if (trunc !== undefined) return fail(trunc);
  if (fdCount > 1) return fail(tooManyFdsError(fdCount));
  const parsed = parse(WorkloadRequestSchema, bytes);
  if (!parsed.ok) return parsed;
  const msg = parsed.msg;
  if (msg.payload.case === undefined) return fail(ZDS_ERR_NO_PAYLOAD);
  if (msg.payload.case === "add") {
    if (fdCount < 1) return fail(ZDS_ERR_NO_CONTROL_MESSAGE);
  } else if (fdCount > 0) {
    return fail(ZDS_ERR_UNEXPECTED_CONTROL_MESSAGE);
  }
  return { ok: true, msg: msg as ZdsRequest };
}

/**
 * Decode one WorkloadResponse packet, as the agent side receives it. On success
 * `msg.payload.value.error` is "" for an ack and the nack text otherwise.
 * Responses never carry fds. An empty oneof is rejected with "no payload" (Istio's agent
 * would read it as a success; a real ztunnel never sends one).
 */
export function decodeResponse(
  bytes: Uint8Array,
  fdCount = 0,
  truncated = false,
): DecodeResult<ZdsResponse> {
  const trunc = truncationError(bytes, truncated);
  if (trunc !== undefined) return fail(trunc);
  if (fdCount > 1) return fail(tooManyFdsError(fdCount));
  const parsed = parse(WorkloadResponseSchema, bytes);
  if (!parsed.ok) return parsed;
  if (parsed.msg.payload.case !== "ack") return fail(ZDS_ERR_NO_PAYLOAD);
  if (fdCount > 0) return fail(ZDS_ERR_UNEXPECTED_CONTROL_MESSAGE);
  return { ok: true, msg: parsed.msg as ZdsResponse };
}

/**
 * Decode the proxy's hello, as the agent side receives it. Like Istio's agent, the
 * version is not enforced here (the caller may log it); hellos never carry fds.
 */
export function decodeHello(
  bytes: Uint8Array,
  fdCount = 0,
  truncated = false,
): DecodeResult<ZdsHello> {
  const trunc = truncationError(bytes, truncated);
  if (trunc !== undefined) return fail(trunc);
  if (fdCount > 1) return fail(tooManyFdsError(fdCount));
  const parsed = parse(ZdsHelloSchema, bytes);
  if (!parsed.ok) return parsed;
  if (fdCount > 0) return fail(ZDS_ERR_UNEXPECTED_CONTROL_MESSAGE);
  return parsed;
}

// ---------------------------------------------------------------------------------------
// Small accessors
// ---------------------------------------------------------------------------------------

/** The pod UID a request is about, or undefined for SnapshotSent. */
export function requestUid(req: ZdsRequest): string | undefined {
  switch (req.payload.case) {
    case "add":
    case "del":
    case "keep":
      return req.payload.value.uid;
    case "snapshotSent":
      return undefined;
  }
}

/** The Ack's error text: "" means success. */
export function ackError(resp: ZdsResponse): string {
  return resp.payload.value.error;
}
