// The CNI plugin's own client of the agent's event API (proto/nshub/agent/v1/agent.proto):
// Connect protocol, unary calls in their JSON form (POST /nshub.agent.v1.AgentService/<Method>,
// `content-type: application/json`, `connect-protocol-version: 1`, `connect-timeout-ms`), over
// the agent's unix socket with Bun's fetch.
//
// Why not the generated Connect client (src/agent/client.ts): the runtime starts one nshub-cni
// process per pod sandbox, so the plugin's start-up is on every pod's critical path (issue 8:
// enrollment p99 ≤ 50 ms). In the compiled binary, loading @connectrpc/connect (+ connect-web)
// and the generated descriptors (src/gen/…/agent_pb.ts, decoded when loaded) costs about 15 ms
// each, for three small unary calls. The wire is the same Connect protocol the agent serves
// (src/agent/api.ts accepts JSON as well as binary), and failures are classified exactly as
// agentFailure() does for the generated client. `nshub enroll` / `unenroll` keep the generated
// client; test/unit/cni-agent-json.test.ts checks this one against the real API server.
//
// Nothing here may import Connect, protobuf or zod (statically or not): the point is not to load
// them.

export interface AgentJsonOptions {
  /** Path of the agent's API socket. */
  socketPath: string;
  /** Deadline of each call (sent as connect-timeout-ms too). */
  timeoutMs: number;
}

/** Connect error codes as they are on the wire ("unavailable", "deadline_exceeded", …). */
export type ConnectCode =
  | "canceled"
  | "unknown"
  | "invalid_argument"
  | "deadline_exceeded"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "resource_exhausted"
  | "failed_precondition"
  | "aborted"
  | "out_of_range"
  | "unimplemented"
  | "internal"
  | "unavailable"
  | "data_loss"
  | "unauthenticated";

const CODES: ReadonlySet<string> = new Set<ConnectCode>([
  "canceled",
  "unknown",
  "invalid_argument",
  "deadline_exceeded",
  "not_found",
  "already_exists",
  "permission_denied",
  "resource_exhausted",
  "failed_precondition",
  "aborted",
  "out_of_range",
  "unimplemented",
  "internal",
  "unavailable",
  "data_loss",
  "unauthenticated",
]);

/** How a failed call should be treated (the same classes as agentFailure in src/agent/client.ts). */
export type AgentFailureKind =
  /** The socket is missing or refuses connections: the agent is not running (yet). */
  | "unreachable"
  /** No answer within the deadline. */
  | "timeout"
  /** The agent answered with an error (or with something that is not a valid answer). */
  | "error";

export interface AgentFailure {
  kind: AgentFailureKind;
  /** The Connect code of the agent's answer (kind "error"), otherwise unavailable/deadline_exceeded. */
  code: ConnectCode;
  message: string;
}

/** What every call of this client throws. */
export class AgentCallError extends Error {
  override name = "AgentCallError";
  constructor(readonly failure: AgentFailure) {
    super(failure.message);
  }
}

// ---------------------------------------------------------------------------------------------
// messages (proto3 JSON names; only what the plugin sends and reads)

/** PodState by its proto enum value (agent.proto). */
export const PodState = { UNSPECIFIED: 0, ENROLLED: 1, PENDING: 2, NOT_ENROLLED: 3 } as const;
const POD_STATE_NAMES: Readonly<Record<string, number>> = {
  POD_STATE_UNSPECIFIED: 0,
  POD_STATE_ENROLLED: 1,
  POD_STATE_PENDING: 2,
  POD_STATE_NOT_ENROLLED: 3,
};

export interface PodAddRequest {
  uid: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  netnsPath: string;
  ips: string[];
  containerId: string;
  interfaceName: string;
}
export interface PodAddResponse {
  /** The enum's number (an unknown name is a decode error; an unknown number is kept). */
  state: number;
  reason: string;
}
export interface PodDeleteRequest {
  uid: string;
  namespace: string;
  name: string;
  containerId: string;
  netnsPath: string;
}
export interface PodDeleteResponse {
  deleted: boolean;
  reason: string;
}
export interface ListPodsRequest {
  namespace?: string;
}
export interface PodSummary {
  uid: string;
  namespace: string;
  name: string;
  state: number;
  reason: string;
}
export interface ListPodsResponse {
  pods: PodSummary[];
}

export function podAdd(opts: AgentJsonOptions, req: PodAddRequest): Promise<PodAddResponse> {
  return call(opts, "PodAdd", req, (v) => {
    const o = message(v, "PodAddResponse");
    return { state: enumField(o, "state", "PodAddResponse"), reason: stringField(o, "reason", "PodAddResponse") };
  });
}

export function podDelete(opts: AgentJsonOptions, req: PodDeleteRequest): Promise<PodDeleteResponse> {
  return call(opts, "PodDelete", req, (v) => {
    const o = message(v, "PodDeleteResponse");
    return { deleted: boolField(o, "deleted", "PodDeleteResponse"), reason: stringField(o, "reason", "PodDeleteResponse") };
  });
}

export function listPods(opts: AgentJsonOptions, req: ListPodsRequest): Promise<ListPodsResponse> {
  return call(opts, "ListPods", req, (v) => {
    const o = message(v, "ListPodsResponse");
    const pods = o.pods ?? null;
    if (pods === null) return { pods: [] };
    if (!Array.isArray(pods)) throw decodeError("ListPodsResponse", "pods", "not an array");
    return {
      pods: pods.map((p) => {
        const po = message(p, "Pod");
        return {
          uid: stringField(po, "uid", "Pod"),
          namespace: stringField(po, "namespace", "Pod"),
          name: stringField(po, "name", "Pod"),
          state: enumField(po, "state", "Pod"),
          reason: stringField(po, "reason", "Pod"),
        };
      }),
    };
  });
}

// ---------------------------------------------------------------------------------------------
// the call

/** The host is not used for routing (the socket is); it only shows up in fetch's errors. */
const BASE_URL = "http://nshub-agent/nshub.agent.v1.AgentService/";

async function call<T>(opts: AgentJsonOptions, method: string, req: object, decode: (v: unknown) => T): Promise<T> {
  const signal = AbortSignal.timeout(opts.timeoutMs);
  let res: Response;
  try {
    res = await fetch(BASE_URL + method, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": String(opts.timeoutMs) },
      body: JSON.stringify(req),
      signal,
      redirect: "error",
      // One connection per call: the plugin makes one call and exits.
      keepalive: false,
      unix: opts.socketPath,
    } as RequestInit);
  } catch (e) {
    if (signal.aborted) throw timedOut();
    throw new AgentCallError(transportFailure(e, opts.socketPath));
  }
  try {
    return decode(await readAnswer(res));
  } catch (e) {
    if (signal.aborted) throw timedOut();
    if (e instanceof AgentCallError) throw e;
    // The body was not JSON (or could not be read): Connect reports the error's text as "unknown".
    throw new AgentCallError(classify("unknown", errorMessage(e)));
  }
}

function timedOut(): AgentCallError {
  // The generated client's deadline error reads "the operation timed out".
  return new AgentCallError(classify("deadline_exceeded", "the operation timed out"));
}

/** Connect's unary response rules (validateResponse + errorFromJson of @connectrpc/connect). */
async function readAnswer(res: Response): Promise<unknown> {
  const ctype = res.headers.get("content-type");
  const m = ctype === null ? null : /^application\/(connect\+)?(?:(json)(?:; ?charset=utf-?8)?|(proto))$/i.exec(ctype);
  if (res.status !== 200) {
    const fallback = classify(codeFromHttpStatus(res.status), `HTTP ${res.status}`);
    // A JSON error body is the Connect error {code, message}; anything else: the HTTP status.
    if (m && !m[3]) throw new AgentCallError(errorFromJson(await res.json(), fallback));
    throw new AgentCallError(fallback);
  }
  if (!m || m[3] || m[1]) throw new AgentCallError(classify(m ? "internal" : "unknown", `unsupported content type ${ctype}`));
  return res.json();
}

function errorFromJson(v: unknown, fallback: AgentFailure): AgentFailure {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return fallback;
  const o = v as Record<string, unknown>;
  const code = typeof o.code === "string" && CODES.has(o.code) ? (o.code as ConnectCode) : fallback.code;
  if (o.message !== undefined && o.message !== null && typeof o.message !== "string") return fallback;
  if (o.details !== undefined && Array.isArray(o.details)) {
    const ok = o.details.every((d) => typeof d === "object" && d !== null && !Array.isArray(d) && typeof d.type === "string" && typeof d.value === "string");
    if (!ok) return fallback;
  }
  return classify(code, typeof o.message === "string" ? o.message : "");
}

/** An answered error (or a decode failure) as a failure of its class. */
function classify(code: ConnectCode, message: string): AgentFailure {
  if (code === "deadline_exceeded") return { kind: "timeout", code, message: `the agent did not answer in time (${message})` };
  return { kind: "error", code, message };
}

/** A fetch that failed without any answer: unreachable when the error says so. */
function transportFailure(e: unknown, socketPath: string): AgentFailure {
  const text = [errorMessage(e), causeText(e)].join(" ");
  const why = UNREACHABLE.find(([re]) => re.test(text));
  if (why) return { kind: "unreachable", code: "unavailable", message: `cannot reach the nshub agent at ${socketPath}: ${why[1]}` };
  const name = e instanceof Error ? e.name : "";
  return { kind: "error", code: name === "AbortError" || name === "TimeoutError" ? "canceled" : "unknown", message: errorMessage(e) };
}

const UNREACHABLE: Array<[RegExp, string]> = [
  [/ENOENT|No such file/i, "the socket does not exist (ENOENT): is the agent running?"],
  [/ECONNREFUSED|ConnectionRefused/i, "connection refused (ECONNREFUSED): no agent is listening"],
  [/EACCES|EPERM|permission denied/i, "permission denied (EACCES): the API socket is root-only by default"],
  [/ENOTSOCK/i, "the path is not a socket (ENOTSOCK)"],
  [/ECONNRESET|socket connection was closed|FailedToOpenSocket|Unable to connect/i, "the connection failed or was closed before an answer"],
];

/** Connect's HTTP status → code (for an error answer without a Connect JSON body). */
function codeFromHttpStatus(status: number): ConnectCode {
  switch (status) {
    case 400:
      return "internal";
    case 401:
      return "unauthenticated";
    case 403:
      return "permission_denied";
    case 404:
      return "unimplemented";
    case 429:
    case 502:
    case 503:
    case 504:
      return "unavailable";
    default:
      return "unknown";
  }
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function causeText(c: unknown): string {
  if (c === undefined || c === null) return "";
  if (c instanceof Error) {
    const code = (c as { code?: unknown }).code;
    return `${code ? `${String(code)} ` : ""}${c.message} ${causeText((c as { cause?: unknown }).cause)}`;
  }
  return String(c);
}

// ---------------------------------------------------------------------------------------------
// proto3 JSON decoding of the few fields the plugin reads: absent or null means the default

function decodeError(type: string, field: string, why: string): AgentCallError {
  return new AgentCallError({ kind: "error", code: "unknown", message: `cannot decode message nshub.agent.v1.${type} from JSON: ${field}: ${why}` });
}

function message(v: unknown, type: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw decodeError(type, "(message)", `expected an object, got ${v === null ? "null" : Array.isArray(v) ? "an array" : typeof v}`);
  return v as Record<string, unknown>;
}

function stringField(o: Record<string, unknown>, key: string, type: string): string {
  const v = o[key] ?? null;
  if (v === null) return "";
  if (typeof v !== "string") throw decodeError(type, key, `expected a string, got ${JSON.stringify(v)}`);
  return v;
}

function boolField(o: Record<string, unknown>, key: string, type: string): boolean {
  const v = o[key] ?? null;
  if (v === null) return false;
  if (typeof v !== "boolean") throw decodeError(type, key, `expected a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function enumField(o: Record<string, unknown>, key: string, type: string): number {
  const v = o[key] ?? null;
  if (v === null) return 0;
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "string" && Object.hasOwn(POD_STATE_NAMES, v)) return POD_STATE_NAMES[v]!;
  throw decodeError(type, key, `not a nshub.agent.v1.PodState: ${JSON.stringify(v)}`);
}
