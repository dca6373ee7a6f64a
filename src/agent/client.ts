// Client of the agent's event API (proto/nshub/agent/v1/agent.proto) over its unix socket: the
// generated Connect client, binary protobuf, HTTP/1.1, Bun's fetch with `unix`. Used by
// `nshub enroll` / `unenroll` (src/cli/enroll.ts) and the tests. The CNI plugin has a smaller
// client of its own for a faster start (src/cni/agent-json.ts), which classifies failures as
// agentFailure() does here.
//
// The socket is a filesystem path, which connect(2) reaches from any network namespace; so it
// does not matter that Bun's fetch does its I/O on a thread of its own, which does not follow a
// setns(2) of the calling thread.
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AgentService } from "../gen/nshub/agent/v1/agent_pb.ts";

export type AgentClient = Client<typeof AgentService>;

export interface AgentClientOptions {
  /** Path of the agent's API socket. */
  socketPath: string;
  /** Default deadline of every call (nshub enroll: 10 s unless --timeout). */
  timeoutMs?: number;
}

export function createAgentClient(opts: AgentClientOptions): AgentClient {
  const socketPath = opts.socketPath;
  // One connection per call (no keep-alive pool): the callers make a call or two and exit, and
  // the agent should not hold idle connections of long-gone clients.
  const unixFetch = ((input: string | URL | Request, init?: RequestInit) => fetch(input, { ...init, unix: socketPath, keepalive: false } as RequestInit)) as typeof fetch;
  const transport = createConnectTransport({
    // The host part is not used for routing (the socket is); it only shows up in logs.
    baseUrl: "http://nshub-agent",
    fetch: unixFetch,
    useBinaryFormat: true,
    defaultTimeoutMs: opts.timeoutMs,
  });
  return createClient(AgentService, transport);
}

/** How a failed call to the agent should be treated by a caller. */
export type AgentFailureKind =
  /** The socket is missing or refuses connections: the agent is not running (yet). */
  | "unreachable"
  /** No answer within the deadline. */
  | "timeout"
  /** The agent answered with an error. */
  | "error";

export interface AgentFailure {
  kind: AgentFailureKind;
  /** The Connect code of the agent's answer (kind "error"), otherwise Unavailable/DeadlineExceeded. */
  code: Code;
  message: string;
}

/** Classifies an error thrown by an AgentClient call. */
export function agentFailure(e: unknown, socketPath: string): AgentFailure {
  const ce = ConnectError.from(e);
  if (ce.code === Code.DeadlineExceeded) return { kind: "timeout", code: ce.code, message: `the agent did not answer in time (${ce.rawMessage})` };
  if (!isAgentAnswer(ce)) {
    const text = [ce.rawMessage, causeText(ce.cause), causeText(e)].join(" ");
    const why = UNREACHABLE.find(([re]) => re.test(text));
    if (why) return { kind: "unreachable", code: Code.Unavailable, message: `cannot reach the nshub agent at ${socketPath}: ${why[1]}` };
  }
  return { kind: "error", code: ce.code, message: ce.rawMessage };
}

const UNREACHABLE: Array<[RegExp, string]> = [
  [/ENOENT|No such file/i, "the socket does not exist (ENOENT): is the agent running?"],
  [/ECONNREFUSED|ConnectionRefused/i, "connection refused (ECONNREFUSED): no agent is listening"],
  [/EACCES|EPERM|permission denied/i, "permission denied (EACCES): the API socket is root-only by default"],
  [/ENOTSOCK/i, "the path is not a socket (ENOTSOCK)"],
  [/ECONNRESET|socket connection was closed|FailedToOpenSocket|Unable to connect/i, "the connection failed or was closed before an answer"],
];

/** True when the error came back from the agent (an HTTP response), not from the transport. */
function isAgentAnswer(ce: ConnectError): boolean {
  return ce.metadata.has("content-type");
}

function causeText(c: unknown): string {
  if (c === undefined || c === null) return "";
  if (c instanceof Error) {
    const code = (c as { code?: unknown }).code;
    return `${code ? `${String(code)} ` : ""}${c.message} ${causeText((c as { cause?: unknown }).cause)}`;
  }
  return String(c);
}
