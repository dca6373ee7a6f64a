// The CNI plugin's JSON client of the agent (src/cni/agent-json.ts): the requests it sends, the
// answers of the real API server (src/agent/api.ts) decoded, every failure classified as the
// generated Connect client's agentFailure() does (answered errors, garbage, timeout, unreachable),
// the CNI codes runCni makes of them, and that the plugin's static imports load none of Connect,
// the generated protobuf code, zod or yaml.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { AgentCallError, listPods, podAdd, podDelete, PodState, type AgentFailure, type AgentJsonOptions } from "../../src/cni/agent-json.ts";
import { runCni } from "../../src/cni/main.ts";
import { PodState as GeneratedPodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { setLogLevel } from "../../src/log/logger.ts";
import { startStubAgent } from "../fixtures/agent-api-stub.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-cni-json-"));
const emptyConfig = join(dir, "config.yaml");
writeFileSync(emptyConfig, "{}\n");
const servers: Array<{ stop(force?: boolean): unknown }> = [];
const agentSocket = join(dir, "agent.sock");


/** A unix-socket HTTP server with this handler; returns its socket path. */
function serve(name: string, fetch: (req: Request) => Response | Promise<Response>): string {
  const path = join(dir, `${name}.sock`);
  servers.push(Bun.serve({ unix: path, fetch }));
  return path;
}
const json = (status: number, body: unknown, contentType = "application/json") =>
  new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: { "content-type": contentType } });

beforeAll(async () => {
  const stub = await startStubAgent(dir, agentSocket, "cni-json-test");
  servers.push({ stop: () => stub.stop() });
});

afterAll(async () => {
  for (const s of servers) await s.stop(true);
  setLogLevel("info");
  rmSync(dir, { recursive: true, force: true });
});

async function failureOf(p: Promise<unknown>): Promise<AgentFailure> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(AgentCallError);
    return (e as AgentCallError).failure;
  }
  throw new Error("expected the call to fail");
}

const opts = (socketPath: string, timeoutMs = 2_000): AgentJsonOptions => ({ socketPath, timeoutMs });
const addReq = (uid: string, namespace = "default", name = "web") => ({
  uid,
  namespace,
  name,
  serviceAccount: "sa",
  netnsPath: "/var/run/netns/does-not-exist",
  ips: ["10.7.0.9"],
  containerId: "abc123",
  interfaceName: "eth0",
});

describe("against the real API server", () => {
  test("PodState numbers are the generated enum's", () => {
    expect(PodState).toEqual({
      UNSPECIFIED: GeneratedPodState.UNSPECIFIED,
      ENROLLED: GeneratedPodState.ENROLLED,
      PENDING: GeneratedPodState.PENDING,
      NOT_ENROLLED: GeneratedPodState.NOT_ENROLLED,
    });
  });

  test("PodAdd, ListPods, PodDelete round trip", async () => {
    const uid = "0b0c8f5e-0000-4000-8000-00000000aa01";
    const added = await podAdd(opts(agentSocket), addReq(uid));
    expect(added.state).toBe(PodState.NOT_ENROLLED);
    expect(typeof added.reason).toBe("string");
    expect(added.reason).not.toBe("");
    const listed = await listPods(opts(agentSocket), { namespace: "default" });
    expect(listed.pods).toContainEqual({ uid, namespace: "default", name: "web", state: PodState.NOT_ENROLLED, reason: added.reason });
    expect((await listPods(opts(agentSocket), { namespace: "nothing-here" })).pods).toEqual([]);
    const del = await podDelete(opts(agentSocket), { uid, namespace: "default", name: "web", containerId: "abc123", netnsPath: "" });
    expect(del.deleted).toBe(true);
    // deleted: false is left out of the JSON answer: it decodes to false.
    const again = await podDelete(opts(agentSocket), { uid, namespace: "default", name: "web", containerId: "abc123", netnsPath: "" });
    expect(again.deleted).toBe(false);
  });

  test("the agent's refusals come back with their Connect code and message", async () => {
    const bad = await failureOf(podAdd(opts(agentSocket), addReq("0b0c8f5e-0000-4000-8000-00000000aa02", "mesh")));
    expect(bad).toEqual({ kind: "error", code: "failed_precondition", message: "CNI_NETNS /var/run/netns/does-not-exist does not exist" });
    const noUid = await failureOf(podAdd(opts(agentSocket), addReq("", "mesh")));
    expect(noUid.kind).toBe("error");
    expect(noUid.code).toBe("failed_precondition");
    expect(noUid.message).toContain("has no UID");
  });
});

describe("the request on the wire", () => {
  test("Connect unary JSON: path, headers, proto3 JSON names", async () => {
    const seen: Array<{ method: string; path: string; headers: Record<string, string>; body: unknown }> = [];
    const sock = serve("record", async (req) => {
      seen.push({ method: req.method, path: new URL(req.url).pathname, headers: Object.fromEntries(req.headers), body: await req.json() });
      return json(200, { state: "POD_STATE_ENROLLED", reason: "ok" });
    });
    expect(await podAdd(opts(sock, 1234), addReq("u1"))).toEqual({ state: PodState.ENROLLED, reason: "ok" });
    expect(seen).toHaveLength(1);
    expect(seen[0]!.method).toBe("POST");
    expect(seen[0]!.path).toBe("/nshub.agent.v1.AgentService/PodAdd");
    expect(seen[0]!.headers).toMatchObject({ "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": "1234" });
    expect(seen[0]!.body).toEqual(addReq("u1"));
  });
});

describe("answers that are errors or not answers", () => {
  const cases: Array<[string, () => Response, AgentFailure]> = [
    ["Connect error unavailable", () => json(503, { code: "unavailable", message: "the agent is still rebuilding its pod cache" }), { kind: "error", code: "unavailable", message: "the agent is still rebuilding its pod cache" }],
    ["Connect error internal", () => json(500, { code: "internal", message: "boom" }), { kind: "error", code: "internal", message: "boom" }],
    ["Connect error without message", () => json(503, { code: "unavailable" }), { kind: "error", code: "unavailable", message: "" }],
    ["deadline_exceeded from the agent is a timeout", () => json(504, { code: "deadline_exceeded", message: "too slow" }), { kind: "timeout", code: "deadline_exceeded", message: "the agent did not answer in time (too slow)" }],
    ["unknown code string: the HTTP status decides", () => json(429, { code: "bogus", message: "m" }), { kind: "error", code: "unavailable", message: "m" }],
    ["message not a string: the HTTP status", () => json(503, { code: "unavailable", message: 5 }), { kind: "error", code: "unavailable", message: "HTTP 503" }],
    ["error JSON that is an array: the HTTP status", () => json(400, [1]), { kind: "error", code: "internal", message: "HTTP 400" }],
    ["plain-text 503", () => new Response("down", { status: 503, headers: { "content-type": "text/plain" } }), { kind: "error", code: "unavailable", message: "HTTP 503" }],
    ["plain-text 404", () => new Response("nope", { status: 404 }), { kind: "error", code: "unimplemented", message: "HTTP 404" }],
    ["500 without a body", () => new Response(null, { status: 500 }), { kind: "error", code: "unknown", message: "HTTP 500" }],
    ["200 with a text body", () => new Response("hello", { status: 200, headers: { "content-type": "text/plain" } }), { kind: "error", code: "unknown", message: "unsupported content type text/plain" }],
    ["200 with a binary protobuf body", () => new Response(new Uint8Array([8, 1]), { status: 200, headers: { "content-type": "application/proto" } }), { kind: "error", code: "internal", message: "unsupported content type application/proto" }],
    ["200 JSON with a mistyped field", () => json(200, { state: "POD_STATE_ENROLLED", reason: 5 }), { kind: "error", code: "unknown", message: "cannot decode message nshub.agent.v1.PodAddResponse from JSON: reason: expected a string, got 5" }],
    ["200 JSON with an unknown enum name", () => json(200, { state: "POD_STATE_SLEEPING" }), { kind: "error", code: "unknown", message: 'cannot decode message nshub.agent.v1.PodAddResponse from JSON: state: not a nshub.agent.v1.PodState: "POD_STATE_SLEEPING"' }],
    ["200 JSON that is not an object", () => json(200, "null"), { kind: "error", code: "unknown", message: "cannot decode message nshub.agent.v1.PodAddResponse from JSON: (message): expected an object, got null" }],
  ];
  for (const [name, answer, want] of cases) {
    test(name, async () => {
      expect(await failureOf(podAdd(opts(serve(`c-${name.replace(/\W+/g, "-")}`, answer)), addReq("u1")))).toEqual(want);
    });
  }

  test("a garbage (non-JSON) body", async () => {
    for (const status of [200, 400]) {
      const f = await failureOf(podAdd(opts(serve(`garbage-${status}`, () => json(status, "{not json"))), addReq("u1")));
      expect(f.kind).toBe("error");
      expect(f.code).toBe("unknown");
      expect(f.message).toStartWith("JSON Parse error");
    }
  });

  test("bytes that are not HTTP at all", async () => {
    const path = join(dir, "not-http.sock");
    servers.push(Bun.listen({ unix: path, socket: { data: (s) => void (s.write("NOT HTTP AT ALL\r\n\r\n"), s.end()) } }));
    const f = await failureOf(listPods(opts(path), {}));
    expect(f.kind).toBe("error");
    expect(f.code).toBe("unknown");
    expect(f.message).toContain("Malformed_HTTP_Response");
  });

  test("an unknown enum number and absent fields are kept as proto3 JSON says", async () => {
    expect(await podAdd(opts(serve("enum-7", () => json(200, { state: 7 }))), addReq("u1"))).toEqual({ state: 7, reason: "" });
    expect(await podAdd(opts(serve("empty", () => json(200, {}))), addReq("u1"))).toEqual({ state: PodState.UNSPECIFIED, reason: "" });
    expect(await listPods(opts(serve("nopods", () => json(200, {}))), {})).toEqual({ pods: [] });
  });
});

describe("timeout and unreachable agent", () => {
  test("no answer within the deadline (headers or body): timeout", async () => {
    const hung = serve("hung", () => new Promise<Response>(() => undefined));
    const started = performance.now();
    expect(await failureOf(podAdd(opts(hung, 200), addReq("u1")))).toEqual({ kind: "timeout", code: "deadline_exceeded", message: "the agent did not answer in time (the operation timed out)" });
    const ms = performance.now() - started;
    expect(ms).toBeGreaterThanOrEqual(190);
    expect(ms).toBeLessThan(2_000);
    // Headers sent, body never finished.
    const stalled = serve("stalled", () => new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode("{")) }), { headers: { "content-type": "application/json" } }));
    expect((await failureOf(podAdd(opts(stalled, 200), addReq("u1")))).kind).toBe("timeout");
  });

  test("no socket: unreachable (ENOENT)", async () => {
    const path = join(dir, "nothing.sock");
    expect(await failureOf(listPods(opts(path), {}))).toEqual({ kind: "unreachable", code: "unavailable", message: `cannot reach the nshub agent at ${path}: the socket does not exist (ENOENT): is the agent running?` });
  });

  test("a socket nobody listens on: unreachable (ECONNREFUSED)", async () => {
    const path = join(dir, "stale.sock");
    const made = Bun.spawnSync(["python3", "-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", path]);
    if (made.exitCode !== 0) throw new Error(`cannot make a stale socket: ${made.stderr.toString()}`);
    expect(await failureOf(listPods(opts(path), {}))).toEqual({ kind: "unreachable", code: "unavailable", message: `cannot reach the nshub agent at ${path}: connection refused (ECONNREFUSED): no agent is listening` });
  });
});

describe("runCni turns the failures into CNI codes as before", () => {
  const PREV = '{"cniVersion":"1.0.0","ips":[{"address":"10.7.0.9/24"}]}';
  async function cni(command: string, agentSock: string, extra: Record<string, unknown> = {}) {
    let stdout = "";
    const cniVersion = command === "STATUS" ? "1.1.0" : "1.0.0";
    const conf = JSON.stringify({ cniVersion, name: "n", type: "nshub-cni", agentSocket: agentSock, logFile: "stderr", timeoutMs: 300, prevResult: JSON.parse(PREV), ...extra });
    const code = await runCni({
      env: { NSHUB_CONFIG: emptyConfig, CNI_COMMAND: command, CNI_CONTAINERID: "abc", CNI_NETNS: "/proc/self/ns/net", CNI_IFNAME: "eth0", CNI_PATH: "/x", CNI_ARGS: "K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web;K8S_POD_UID=u1" },
      stdin: async () => conf,
      stdout: async (t) => void (stdout += t),
      stderr: () => undefined,
    });
    return { code, stdout, json: stdout ? (JSON.parse(stdout) as { cniVersion?: string; code: number; msg: string; details?: string }) : undefined };
  }
  const answering = (name: string, code: string, status: number) => serve(`cni-${name}`, () => json(status, { code, message: `msg for ${code}` }));

  const table: Array<[string, number, string]> = [
    ["unavailable", 503, "pod mesh/web: the nshub agent is not ready: msg for unavailable"],
    ["resource_exhausted", 429, "pod mesh/web: the nshub agent is not ready: msg for resource_exhausted"],
    ["aborted", 409, "pod mesh/web: the nshub agent is not ready: msg for aborted"],
    ["invalid_argument", 400, "pod mesh/web: the nshub agent refused it: msg for invalid_argument"],
    ["failed_precondition", 400, "pod mesh/web: the nshub agent refused it: msg for failed_precondition"],
    ["not_found", 404, "pod mesh/web: the nshub agent refused it: msg for not_found"],
    ["already_exists", 409, "pod mesh/web: the nshub agent refused it: msg for already_exists"],
    ["permission_denied", 403, "pod mesh/web: the nshub agent refused it: msg for permission_denied"],
    ["out_of_range", 400, "pod mesh/web: the nshub agent refused it: msg for out_of_range"],
    ["unimplemented", 501, "pod mesh/web: the nshub agent does not implement this call: msg for unimplemented"],
    ["internal", 500, "pod mesh/web: the nshub agent failed: msg for internal"],
    ["unknown", 500, "pod mesh/web: the nshub agent failed: msg for unknown"],
    ["data_loss", 500, "pod mesh/web: the nshub agent failed: msg for data_loss"],
    ["deadline_exceeded", 504, "pod mesh/web: the nshub agent did not answer within 300 ms"],
  ];
  const cniCode = (msg: string) => (msg.includes("not ready") || msg.includes("did not answer") ? 11 : msg.includes("refused it") ? 100 : msg.includes("does not implement") ? 102 : 101);
  for (const [code, status, msg] of table) {
    test(`ADD/CHECK: ${code} → ${cniCode(msg)}`, async () => {
      const sock = answering(code, code, status);
      for (const command of ["ADD", "CHECK"]) {
        const r = await cni(command, sock);
        expect(r.code).toBe(1);
        expect(r.json!.code).toBe(cniCode(msg));
        expect(r.json!.msg).toBe(msg);
      }
      // STATUS: any failure is 50
      const s = await cni("STATUS", sock);
      expect(s.json).toEqual({ cniVersion: "1.1.0", code: 50, msg: `the nshub agent is not available: ${code === "deadline_exceeded" ? "the agent did not answer in time (msg for deadline_exceeded)" : `msg for ${code}`}` });
      // DEL succeeds when the agent is unreachable, slow or unavailable; fails otherwise.
      const d = await cni("DEL", sock);
      if (code === "unavailable" || code === "deadline_exceeded") expect({ code: d.code, stdout: d.stdout }).toEqual({ code: 0, stdout: "" });
      else expect({ code: d.code, cni: d.json!.code, msg: d.json!.msg }).toEqual({ code: 1, cni: cniCode(msg), msg });
    });
  }

  test("unreachable agent (ENOENT, ECONNREFUSED) and timeout → 11; DEL still succeeds", async () => {
    const stale = join(dir, "stale-cni.sock");
    Bun.spawnSync(["python3", "-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", stale]);
    const hung = serve("cni-hung", () => new Promise<Response>(() => undefined));
    for (const [sock, msg] of [
      [join(dir, "none.sock"), `pod mesh/web: cannot reach the nshub agent at ${join(dir, "none.sock")}: the socket does not exist (ENOENT): is the agent running?`],
      [stale, `pod mesh/web: cannot reach the nshub agent at ${stale}: connection refused (ECONNREFUSED): no agent is listening`],
      [hung, "pod mesh/web: the nshub agent did not answer within 300 ms"],
    ] as const) {
      const r = await cni("ADD", sock);
      expect({ code: r.code, cni: r.json!.code, msg: r.json!.msg }).toEqual({ code: 1, cni: 11, msg });
      expect(r.json!.details).toBe(sock === hung ? "the agent did not answer in time (the operation timed out)" : "is the nshub agent running on this node? the runtime retries");
      expect(await cni("DEL", sock)).toMatchObject({ code: 0, stdout: "" });
    }
  });

  test("a garbage answer → 101 (the agent failed), as with the generated client", async () => {
    const r = await cni("ADD", serve("cni-garbage", () => json(200, "{not json")));
    expect(r.json!.code).toBe(101);
    expect(r.json!.msg).toStartWith("pod mesh/web: the nshub agent failed: JSON Parse error");
  });

  test("unexpected PodAdd states → 102; pending → 11", async () => {
    for (const [state, code, msg] of [
      [0, 102, "the agent answered PodAdd with state 0"],
      ["POD_STATE_UNSPECIFIED", 102, "the agent answered PodAdd with state 0"],
      [7, 102, "the agent answered PodAdd with state 7"],
      ["POD_STATE_PENDING", 11, "pod mesh/web is pending: no nshub proxy has taken it yet (r)"],
    ] as const) {
      const r = await cni("ADD", serve(`cni-state-${state}`, () => json(200, { state, reason: "r" })));
      expect({ code: r.json!.code, msg: r.json!.msg }).toEqual({ code, msg });
    }
    const ok = await cni("ADD", serve("cni-state-enrolled", () => json(200, { state: "POD_STATE_ENROLLED", reason: "r" })));
    expect({ code: ok.code, stdout: ok.stdout }).toEqual({ code: 0, stdout: PREV });
  });
});

describe("start-up cost", () => {
  /** Modules reached from `entry` by static imports (type-only imports are dropped by the transpiler). */
  function staticGraph(entry: string): Set<string> {
    const transpiler = new Bun.Transpiler({ loader: "ts" });
    const seen = new Set<string>();
    const walk = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      if (!file.startsWith("/")) return;
      for (const imp of transpiler.scanImports(readFileSync(file, "utf8"))) {
        if (imp.kind !== "import-statement" && imp.kind !== "require-call") continue;
        walk(imp.path.startsWith(".") ? resolve(dirname(file), imp.path) : imp.path);
      }
    };
    walk(entry);
    return seen;
  }

  test("the plugin's static imports load no Connect, protobuf, generated code, zod or yaml", () => {
    const graph = [...staticGraph(resolve(import.meta.dir, "../../src/cni/main.ts"))];
    expect(graph.some((m) => m.endsWith("/src/cni/agent-json.ts"))).toBe(true);
    expect(graph.filter((m) => !m.startsWith("/") && !m.startsWith("node:"))).toEqual([]);
    expect(graph.filter((m) => m.includes("/src/") && !m.includes("/src/cni/") && !m.endsWith("/src/log/logger.ts"))).toEqual([]);
  });
});
