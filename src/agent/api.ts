// The agent's event API: AgentService (proto/nshub/agent/v1/agent.proto) as a Connect service,
// served by Hono on Bun.serve over a unix socket (root-only by default: mode 0600).
//
// Anything that is not a well-formed call gets a Connect error (JSON body {code, message} with
// the matching HTTP status), never a crash: unknown paths (unimplemented), other methods than
// POST, a content type other than application/proto or application/json, an undecodable body
// (invalid_argument). Bun answers bytes that are not HTTP at all with 400 and closes. The agent's
// own refusals (AgentError) get the code of their kind (CODES). No input is echoed whole in an
// error (validate.ts clip).
//
// A JSON body with a field the message does not have is undecodable too (protobuf's JSON
// mapping refuses unknown fields by default; Connect would ignore them): a misspelt key must not
// quietly become an empty field. A binary body's unknown fields are ignored, as protobuf does,
// so that a newer client's additions do not break an older agent; a typo cannot make one.
import { chmodSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { create, fromBinary, fromJsonString, type DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, createConnectRouter, type ConnectRouter } from "@connectrpc/connect";
import { createFetchHandler } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, codeToString } from "@connectrpc/connect/protocol-connect";
import { Hono } from "hono";
import type { Server } from "bun";
import {
  AgentService,
  EnrollResponseSchema,
  ListPodsResponseSchema,
  PodAddResponseSchema,
  PodDeleteResponseSchema,
  PodSchema,
  PodState,
  UnenrollResponseSchema,
  type Pod,
} from "../gen/nshub/agent/v1/agent_pb.ts";
import type { Logger } from "../log/logger.ts";
import { claimSocketPath, SOCK_STREAM } from "../sys/index.ts";
import type { Agent } from "./agent.ts";
import { AgentError, errText, type AgentErrorKind } from "./errors.ts";
import type { PodView } from "./pod-entry.ts";
import type { PodStateName } from "./state.ts";
import { clip, quote } from "./validate.ts";

const SERVICE_PREFIX = `/${AgentService.typeName}/`;

export function stateToProto(s: PodStateName): PodState {
  switch (s) {
    case "enrolled":
      return PodState.ENROLLED;
    case "pending":
      return PodState.PENDING;
    case "not-enrolled":
      return PodState.NOT_ENROLLED;
  }
}

export function podToProto(p: PodView): Pod {
  return create(PodSchema, { ...p, state: stateToProto(p.state), netnsDev: BigInt(p.netnsDev), netnsInode: BigInt(p.netnsInode) });
}

/** The Connect code clients get for each kind of AgentError. */
const CODES: Record<AgentErrorKind, Code> = {
  invalid: Code.InvalidArgument,
  precondition: Code.FailedPrecondition,
  "not-found": Code.NotFound,
  unavailable: Code.Unavailable,
  aborted: Code.Aborted,
  internal: Code.Internal,
};

/** What a client is told of an error the agent threw: an AgentError's code and message; anything else is unknown. */
export function toConnectError(e: unknown): ConnectError {
  return e instanceof AgentError ? new ConnectError(e.message, CODES[e.kind]) : ConnectError.from(e);
}

/** Registers AgentService on a Connect router, counting requests by result. */
export function agentRoutes(agent: Agent, log: Logger) {
  const counted = async <T>(method: string, fn: () => Promise<T>, result: (r: T) => string): Promise<T> => {
    try {
      const r = await fn();
      agent.count(method, result(r));
      return r;
    } catch (e) {
      const ce = toConnectError(e);
      agent.count(method, `error_${codeToString(ce.code)}`);
      if (ce.code === Code.Internal || ce.code === Code.Unknown) log.error(`${method} failed`, { error: errText(e) });
      else log.info(`${method} refused`, { code: codeToString(ce.code), error: errText(e) });
      throw ce;
    }
  };
  return (router: ConnectRouter) =>
    router.service(AgentService, {
      podAdd: (req) =>
        counted(
          "PodAdd",
          async () => {
            const r = await agent.podAdd(req);
            return create(PodAddResponseSchema, { state: stateToProto(r.state), reason: r.reason, pod: podToProto(r.pod) });
          },
          (r) => stateName(r.state),
        ),
      podDelete: (req) =>
        counted(
          "PodDelete",
          async () => create(PodDeleteResponseSchema, await agent.podDelete(req)),
          (r) => (r.deleted ? "deleted" : "unknown"),
        ),
      enroll: (req) =>
        counted(
          "Enroll",
          async () => {
            const r = await agent.enroll(req);
            return create(EnrollResponseSchema, { state: stateToProto(r.state), reason: r.reason, pod: podToProto(r.pod) });
          },
          (r) => stateName(r.state),
        ),
      unenroll: (req) =>
        counted(
          "Unenroll",
          async () => {
            const r = await agent.unenroll(req);
            return create(UnenrollResponseSchema, { state: stateToProto(r.state), reason: r.reason, pod: podToProto(r.pod) });
          },
          (r) => stateName(r.state),
        ),
      listPods: (req) =>
        counted(
          "ListPods",
          async () => create(ListPodsResponseSchema, { pods: agent.listPods(req.namespace).map(podToProto) }),
          () => "ok",
        ),
    });
}

function stateName(s: PodState): string {
  return s === PodState.ENROLLED ? "enrolled" : s === PodState.PENDING ? "pending" : s === PodState.NOT_ENROLLED ? "not_enrolled" : "unspecified";
}

/** A Connect error response (what a Connect client decodes into a ConnectError). */
export function connectErrorResponse(code: Code, message: string): Response {
  return new Response(JSON.stringify({ code: codeToString(code), message }), {
    status: codeToHttpStatus(code),
    headers: { "content-type": "application/json" },
  });
}

/** The Hono app serving AgentService (exported for tests). */
export function createApiApp(agent: Agent, log: Logger): Hono {
  const router = createConnectRouter({ jsonOptions: { ignoreUnknownFields: false } });
  agentRoutes(agent, log)(router);
  const handlers = new Map(router.handlers.map((h) => [h.requestPath, createFetchHandler(h)]));
  const methods = router.handlers.map((h) => h.requestPath.slice(SERVICE_PREFIX.length));
  const inputs = new Map<string, DescMessage>(AgentService.methods.map((m) => [`${SERVICE_PREFIX}${m.name}`, m.input]));
  const app = new Hono();
  app.all("*", async (c) => {
    const path = new URL(c.req.url).pathname;
    const handler = handlers.get(path);
    if (!handler) {
      const msg = path.startsWith(SERVICE_PREFIX)
        ? `unknown method ${clip(path.slice(SERVICE_PREFIX.length))} of ${AgentService.typeName} (methods: ${methods.join(", ")})`
        : `no such endpoint ${clip(path)}: this socket serves the Connect service ${AgentService.typeName} (POST ${SERVICE_PREFIX}<method>)`;
      return connectErrorResponse(Code.Unimplemented, msg);
    }
    if (c.req.method !== "POST") {
      return connectErrorResponse(Code.Unimplemented, `${clip(c.req.method)} ${clip(path)}: AgentService methods are called with POST`);
    }
    const ctype = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
    if (ctype !== "application/proto" && ctype !== "application/json") {
      return connectErrorResponse(Code.InvalidArgument, `content type ${quote(ctype || "(none)")} is not supported: send application/proto or application/json (Connect unary)`);
    }
    // Decoded here first: Connect reports an undecodable binary body as "internal" (it is the
    // caller's mistake), and its JSON errors quote the offending key or value whole.
    let req = c.req.raw;
    const body = new Uint8Array(await req.arrayBuffer());
    const input = inputs.get(path)!;
    try {
      if (ctype === "application/proto") fromBinary(input, body);
      else fromJsonString(input, new TextDecoder("utf-8", { fatal: true }).decode(body), { ignoreUnknownFields: false });
    } catch (e) {
      // protobuf-es's JSON errors name the message or field already; its binary ones do not.
      const msg = errText(e).startsWith("cannot decode ") ? errText(e) : `cannot decode message ${input.typeName} from ${ctype === "application/proto" ? "binary" : "JSON"}: ${errText(e)}`;
      return connectErrorResponse(Code.InvalidArgument, clip(msg, 300));
    }
    req = new Request(req.url, { method: "POST", headers: req.headers, body });
    let res: Response;
    try {
      res = await handler(req);
    } catch (e) {
      log.error("API handler failed", { path, error: errText(e) });
      return connectErrorResponse(Code.Internal, `internal error: ${errText(e)}`);
    }
    if (!res.ok && !(res.headers.get("content-type") ?? "").includes("json")) {
      // Connect answers some protocol errors with a bare status; give the caller words.
      return connectErrorResponse(res.status === 415 ? Code.InvalidArgument : res.status === 405 ? Code.Unimplemented : Code.InvalidArgument, `request rejected (HTTP ${res.status})`);
    }
    return res;
  });
  return app;
}

export interface ApiServerOptions {
  socketPath: string;
  socketMode: number;
}

/**
 * Serves the API on the unix socket: creates the parent directory, removes a stale socket (but
 * nothing that is not a socket, nor a socket another agent still serves), listens, and sets the
 * socket's mode.
 */
export function serveApi(app: Hono, opts: ApiServerOptions, log: Logger): Server<undefined> {
  const path = opts.socketPath;
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  // Throws while another agent still listens here (see claimSocketPath).
  if (claimSocketPath(path, SOCK_STREAM, "API")) log.info("removed stale API socket", { path });
  const server = Bun.serve({
    unix: path,
    fetch: (req, srv) => {
      // A PodAdd may wait for rules and the proxy's ack: allow more than Bun's default 10 s of
      // silence (the client has its own deadline), but do close connections left idle.
      srv.timeout(req, 120);
      return app.fetch(req, srv);
    },
    error(e) {
      log.error("API server error", { error: errText(e) });
      return connectErrorResponse(Code.Internal, `internal error: ${errText(e)}`);
    },
  });
  chmodSync(path, opts.socketMode);
  log.info("event API listening", { socket: path, mode: opts.socketMode.toString(8) });
  return server;
}
