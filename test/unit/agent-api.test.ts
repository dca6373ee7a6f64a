// The agent's event API without root: a real Agent (fake dataplane and proxy side — no pod netns
// can be made here without root; the netns tests cover those paths for real) served on a unix
// socket exactly as `nshub agent` serves it, called with the real Connect client. Covers every
// refusal that happens before a pod is touched, and garbage on the socket.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { create, toBinary } from "@bufbuild/protobuf";
import type { Server } from "bun";
import { Agent } from "../../src/agent/agent.ts";
import type { ZdsPort } from "../../src/agent/enrollment.ts";
import { createAdminApp } from "../../src/agent/admin.ts";
import { createApiApp, serveApi } from "../../src/agent/api.ts";
import { parsePodRef } from "../../src/cli/enroll.ts";
import { createAgentClient, agentFailure, type AgentClient } from "../../src/agent/client.ts";
import type { Dataplane } from "../../src/agent/dataplane.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { readStateFile } from "../../src/agent/state.ts";
import { ListPodsRequestSchema, PodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";
import { openFdCount } from "../../src/sys/index.ts";
import { refusal } from "../fixtures/agent-api-stub.ts";

class FakeDataplane implements Dataplane {
  calls: string[] = [];
  async applyPod(p: string) {
    this.calls.push(`apply ${p}`);
  }
  async removePod(p: string) {
    this.calls.push(`remove ${p}`);
  }
  async resetHost(pods: readonly { ip: string; uid: string }[]) {
    this.calls.push(`reset ${pods.length}`);
  }
  async addHostPod(ip: string, uid: string) {
    this.calls.push(`host+ ${ip} ${uid}`);
  }
  async removeHostPod(ip: string, uid: string) {
    this.calls.push(`host- ${ip} ${uid}`);
  }
  async addresses() {
    return [];
  }
}

const zds: ZdsPort = {
  addWorkload: async () => {
    throw new Error("no proxy connected");
  },
  delWorkload: async () => undefined,
  connectionCount: () => 0,
};

const dir = mkdtempSync(join(tmpdir(), "nshub-agent-api-"));
const socket = join(dir, "run", "agent.sock");
const stateFile = join(dir, "state.json");
const logs: string[] = [];
let dp: FakeDataplane;
let agent: Agent;
let server: Server<undefined>;
let client: AgentClient;

function policy(): EnrollmentPolicy {
  return EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } });
}

beforeAll(async () => {
  setLogSink((l) => logs.push(l), "json");
  dp = new FakeDataplane();
  agent = new Agent({ policy: policy(), dataplane: dp, stateFile, procRoot: "/proc", log: createLogger("agent-test"), pendingRetryMs: 60_000 });
  await agent.rebuild();
  agent.attachZds(zds);
  writeFileSync(join(dir, "stale"), "");
  server = serveApi(createApiApp(agent, createLogger("agent-test")), { socketPath: socket, socketMode: 0o600 }, createLogger("agent-test"));
  client = createAgentClient({ socketPath: socket, timeoutMs: 5000 });
});

afterAll(async () => {
  await server?.stop(true);
  agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});


const base = { uid: "u-1", namespace: "mesh", name: "web", serviceAccount: "web", netnsPath: "/var/run/netns/none", ips: ["10.9.0.2"], containerId: "c1", interfaceName: "eth0" };

describe("the event API socket", () => {
  test("created with mode 0600 in a created directory; a stale socket would be replaced", () => {
    expect(statSync(socket).isSocket()).toBe(true);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  test("refuses to replace a file that is not a socket", () => {
    const notSock = join(dir, "stale");
    expect(() => serveApi(createApiApp(agent, createLogger("t")), { socketPath: notSock, socketMode: 0o600 }, createLogger("t"))).toThrow(`refusing to remove ${notSock}: it exists and is not a socket`);
  });
});

describe("PodAdd refusals (nothing cached, nothing applied)", () => {
  test("a pod the policy does not enroll is recorded as not enrolled, without touching it; twice = no change", async () => {
    const r = await client.podAdd({ ...base, uid: "u-plain", namespace: "default", name: "plain" });
    expect(r.state).toBe(PodState.NOT_ENROLLED);
    expect(r.reason).toBe("no agent.enrollment include pattern matches pod default/plain");
    const again = await client.podAdd({ ...base, uid: "u-plain", namespace: "default", name: "plain" });
    expect(again.state).toBe(PodState.NOT_ENROLLED);
    expect(again.reason).toContain("(no change)");
    expect(dp.calls.filter((c) => !c.startsWith("reset"))).toEqual([]);
    const pods = (await client.listPods({})).pods;
    expect(pods.map((p) => [p.uid, p.state, p.netnsHeld])).toEqual([["u-plain", PodState.NOT_ENROLLED, false]]);
    expect(readStateFile(stateFile).map((p) => [p.uid, p.state])).toEqual([["u-plain", "not-enrolled"]]);
  });

  test("CNI_NETNS that does not exist", async () => {
    expect(await refusal(client.podAdd(base))).toEqual({ code: "FailedPrecondition", msg: "CNI_NETNS /var/run/netns/none does not exist" });
  });

  test("CNI_NETNS that is a regular file, a directory, or another namespace type", async () => {
    const file = join(dir, "not-a-netns");
    writeFileSync(file, "x");
    expect(await refusal(client.podAdd({ ...base, netnsPath: file }))).toEqual({ code: "FailedPrecondition", msg: `CNI_NETNS: ${file} is not a network namespace: not a namespace file (ENOTTY)` });
    expect((await refusal(client.podAdd({ ...base, netnsPath: dir }))).msg).toContain(`${dir} is not a network namespace`);
    expect(await refusal(client.podAdd({ ...base, netnsPath: "/proc/self/ns/uts" }))).toEqual({ code: "FailedPrecondition", msg: "CNI_NETNS: /proc/self/ns/uts is not a network namespace: it is a UTS namespace" });
  });

  test("the node's own netns is never touched", async () => {
    expect(await refusal(client.podAdd({ ...base, netnsPath: `/proc/${process.pid}/ns/net` }))).toEqual({
      code: "FailedPrecondition",
      msg: `CNI_NETNS /proc/${process.pid}/ns/net is the node's own network namespace: refusing to touch it`,
    });
  });

  test("a pod with no IP", async () => {
    expect(await refusal(client.podAdd({ ...base, ips: [] }))).toEqual({ code: "FailedPrecondition", msg: "pod mesh/web has no IP address (the previous plugin's result lists none for the pod): cannot enroll it" });
  });

  test("malformed requests", async () => {
    expect(await refusal(client.podAdd({ ...base, namespace: "" }))).toEqual({ code: "InvalidArgument", msg: "pod namespace and name are required (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME)" });
    expect(await refusal(client.podAdd({ ...base, netnsPath: "" }))).toEqual({ code: "InvalidArgument", msg: "pod mesh/web: the netns path is required (CNI_NETNS)" });
    expect(await refusal(client.podAdd({ ...base, ips: ["10.0.0.300"] }))).toEqual({ code: "InvalidArgument", msg: 'pod mesh/web: "10.0.0.300" is not an IP address' });
    expect(await refusal(client.podAdd({ ...base, uid: "bad uid" }))).toEqual({ code: "InvalidArgument", msg: 'pod mesh/web: uid "bad uid" is not a valid pod UID' });
    expect(await refusal(client.podAdd({ ...base, uid: "" }))).toEqual({
      code: "FailedPrecondition",
      msg: 'pod mesh/web has no UID (CNI_ARGS K8S_POD_UID is missing), so it cannot be enrolled (namespace mesh matches agent.enrollment.namespaces.include "mesh")',
    });
    const noUidPlain = await client.podAdd({ ...base, uid: "", namespace: "default" });
    expect(noUidPlain.state).toBe(PodState.NOT_ENROLLED);
  });

  test("none of the refusals left anything behind", async () => {
    expect(dp.calls.filter((c) => !c.startsWith("reset"))).toEqual([]);
    expect((await client.listPods({})).pods.map((p) => p.uid)).toEqual(["u-plain"]);
  });
});

describe("PodDelete, Enroll, Unenroll refusals", () => {
  test("deleting an unknown pod succeeds with nothing to do; an old sandbox's DEL changes nothing", async () => {
    expect(await client.podDelete({ uid: "nope", namespace: "mesh", name: "x" })).toMatchObject({ deleted: false, reason: "pod nope is not known to the agent: nothing to delete" });
    expect(await client.podDelete({ uid: "u-plain", containerId: "old-sandbox" })).toMatchObject({ deleted: false });
    expect((await client.listPods({})).pods).toHaveLength(1);
    expect(await refusal(client.podDelete({}))).toEqual({ code: "InvalidArgument", msg: "PodDelete needs the pod uid, or its namespace and name" });
  });

  test("enroll/unenroll of unknown pods", async () => {
    const e = await refusal(client.enroll({ namespace: "mesh", name: "ghost" }));
    expect(e.code).toBe("NotFound");
    expect(e.msg).toContain("the agent does not know pod mesh/ghost");
    expect(await refusal(client.unenroll({ namespace: "mesh", name: "ghost" }))).toEqual({ code: "NotFound", msg: "pod mesh/ghost is not known to the agent" });
    expect(await refusal(client.enroll({ namespace: "x", name: "y", uid: "u-plain" }))).toEqual({ code: "InvalidArgument", msg: "uid u-plain belongs to pod default/plain, not x/y" });
    // An enroll whose netns cannot be opened leaves the pod as it was.
    expect(await refusal(client.enroll({ namespace: "default", name: "plain", netnsPath: "/var/run/netns/gone" }))).toEqual({ code: "FailedPrecondition", msg: "the netns of pod default/plain (the given path) /var/run/netns/gone does not exist" });
    expect((await client.listPods({})).pods[0]!.state).toBe(PodState.NOT_ENROLLED);
  });

  test("deleting a known pod removes it from the cache and the state file", async () => {
    expect(await client.podDelete({ uid: "u-plain", containerId: "c1" })).toMatchObject({ deleted: true });
    expect((await client.listPods({})).pods).toEqual([]);
    expect(readStateFile(stateFile)).toEqual([]);
    expect(dp.calls.filter((c) => !c.startsWith("reset"))).toEqual([]); // it was never enrolled
  });
});

describe("garbage on the event socket gets a precise Connect error, never a crash", () => {
  const url = (path: string) => `http://nshub-agent${path}`;
  const post = (path: string, body: string | Uint8Array, ctype: string) => fetch(url(path), { method: "POST", body, headers: { "content-type": ctype }, unix: socket } as RequestInit);

  test("not HTTP at all: 400 and the connection is closed", async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      let got = "";
      Bun.connect({
        unix: socket,
        socket: {
          open(s) {
            s.write("\x00\x01\x02 this is not HTTP \xff\r\n\r\n");
          },
          data(_s, d) {
            got += Buffer.from(d).toString("latin1");
          },
          close() {
            resolve(got);
          },
          error(_s, e) {
            reject(e);
          },
        },
      }).catch(reject);
    });
    expect(reply).toStartWith("HTTP/1.1 400");
  });

  test("wrong content type", async () => {
    const r = await post("/nshub.agent.v1.AgentService/ListPods", "hello", "text/plain");
    expect(r.status).toBe(400);
    expect(await r.json()).toEqual({ code: "invalid_argument", message: 'content type "text/plain" is not supported: send application/proto or application/json (Connect unary)' });
  });

  test("undecodable protobuf and JSON bodies", async () => {
    const bad = await post("/nshub.agent.v1.AgentService/PodAdd", new Uint8Array([0x0a, 0xff, 0xff, 0xff]), "application/proto");
    expect(bad.status).toBe(400);
    const badBody = (await bad.json()) as { code: string; message: string };
    expect(badBody.code).toBe("invalid_argument");
    expect(badBody.message).toStartWith("cannot decode message nshub.agent.v1.PodAddRequest from binary: ");
    const json = await post("/nshub.agent.v1.AgentService/PodAdd", "{not json", "application/json");
    expect(json.status).toBe(400);
    expect(((await json.json()) as { code: string }).code).toBe("invalid_argument");
    const wrongField = await post("/nshub.agent.v1.AgentService/PodAdd", JSON.stringify({ ips: "10.0.0.1" }), "application/json");
    expect(wrongField.status).toBe(400);
    expect(((await wrongField.json()) as { message: string }).message).toContain("cannot decode");
  });

  test("unknown method, unknown path, GET", async () => {
    const m = await post("/nshub.agent.v1.AgentService/Reboot", "{}", "application/json");
    expect(m.status).toBe(501);
    expect(await m.json()).toEqual({ code: "unimplemented", message: "unknown method Reboot of nshub.agent.v1.AgentService (methods: PodAdd, PodDelete, Enroll, Unenroll, ListPods)" });
    const p = await post("/cmdadd", "{}", "application/json");
    expect(((await p.json()) as { message: string }).message).toBe("no such endpoint /cmdadd: this socket serves the Connect service nshub.agent.v1.AgentService (POST /nshub.agent.v1.AgentService/<method>)");
    const g = await fetch(url("/nshub.agent.v1.AgentService/ListPods"), { unix: socket } as RequestInit);
    expect(await g.json()).toEqual({ code: "unimplemented", message: "GET /nshub.agent.v1.AgentService/ListPods: AgentService methods are called with POST" });
  });

  test("JSON and binary calls work, and the server still serves after all that; no fd leaked", async () => {
    const before = openFdCount();
    for (let i = 0; i < 20; i++) await post("/nshub.agent.v1.AgentService/PodAdd", new Uint8Array([0xff]), "application/proto").then((r) => r.text());
    const j = await post("/nshub.agent.v1.AgentService/ListPods", "{}", "application/json");
    expect(j.status).toBe(200);
    expect(await j.json()).toEqual({});
    const b = await post("/nshub.agent.v1.AgentService/ListPods", toBinary(ListPodsRequestSchema, create(ListPodsRequestSchema, {})), "application/proto");
    expect(b.status).toBe(200);
    expect((await client.listPods({})).pods).toEqual([]);
    await Bun.sleep(50);
    expect(openFdCount()).toBeLessThanOrEqual(before + 1); // keep-alive connections may be pooled
  });
});

describe("the client side", () => {
  test("an absent agent is 'unreachable' with the reason; a refusal is an 'error'", async () => {
    const missing = createAgentClient({ socketPath: join(dir, "missing.sock"), timeoutMs: 1000 });
    const f = await missing.listPods({}).then(
      () => undefined,
      (e: unknown) => agentFailure(e, join(dir, "missing.sock")),
    );
    expect(f).toEqual({ kind: "unreachable", code: Code.Unavailable, message: `cannot reach the nshub agent at ${join(dir, "missing.sock")}: the socket does not exist (ENOENT): is the agent running?` });
    const refused = await client.podAdd({ ...base, ips: [] }).then(
      () => undefined,
      (e: unknown) => agentFailure(e, socket),
    );
    expect(refused?.kind).toBe("error");
    expect(refused?.code).toBe(Code.FailedPrecondition);
  });
});

describe("readiness and admin", () => {
  test("before its rebuild the agent is not ready: /readyz 503 and calls are 'unavailable'", async () => {
    const fresh = new Agent({ policy: policy(), dataplane: new FakeDataplane(), stateFile: join(dir, "fresh.json"), procRoot: "/proc", log: createLogger("t") });
    let listening = false;
    const app = createAdminApp({ agent: fresh, zdsConnections: () => 0, listening: () => listening });
    expect((await app.request("/healthz")).status).toBe(200);
    const r = await app.request("/readyz");
    expect([r.status, await r.text()]).toEqual([503, "not ready: rebuilding the pod cache\n"]);
    expect(await refusal(fresh.podAdd(base))).toEqual({ code: "Unavailable", msg: "the agent is still rebuilding its pod cache" });
    await fresh.rebuild();
    expect((await app.request("/readyz")).status).toBe(503); // rebuilt, but not serving yet
    listening = true;
    expect((await app.request("/readyz")).status).toBe(200);
    fresh.stop();
  });

  test("/metrics is Prometheus text with pods by state, requests by result, ZDS connections", async () => {
    const app = createAdminApp({ agent, zdsConnections: () => 2, listening: () => true });
    const r = await app.request("/metrics");
    expect(r.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
    const text = await r.text();
    for (const line of [
      "# TYPE nshub_agent_pods gauge",
      'nshub_agent_pods{state="enrolled"} 0',
      'nshub_agent_pods{state="not-enrolled"} 0',
      "# TYPE nshub_agent_cni_requests_total counter",
      'nshub_agent_cni_requests_total{method="PodAdd",result="not_enrolled"} ',
      'nshub_agent_cni_requests_total{method="PodAdd",result="error_failed_precondition"} ',
      "nshub_agent_zds_connections 2",
      "nshub_agent_ready 1",
    ]) {
      expect(text).toContain(line);
    }
    const pods = await (await app.request("/pods")).json();
    expect(pods).toEqual({ ready: true, pods: [] });
    expect((await app.request("/nope")).status).toBe(404);
  });
});

describe("the enroll CLI", () => {
  const cli = async (...args: string[]) => {
    const p = Bun.spawn([process.execPath, "src/main.ts", ...args], { stdout: "pipe", stderr: "pipe" });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, stdout, stderr };
  };

  test("pod references", () => {
    expect(parsePodRef("shop/web-0")).toEqual({ namespace: "shop", name: "web-0" });
    expect(parsePodRef("shop/web.v1")).toEqual({ namespace: "shop", name: "web.v1" });
    for (const bad of ["web", "Shop/web", "shop/", "/web", "a/b/c", "shop/web_0", "shop/-web"]) expect(parsePodRef(bad)).toBeUndefined();
  });

  test("usage errors exit 2; an unreachable agent exits 1 with the reason", async () => {
    const none = await cli("enroll");
    expect([none.code, none.stderr]).toEqual([2, "nshub enroll: which pod? give <namespace>/<pod>\nsee: nshub enroll --help\n"]);
    expect((await cli("enroll", "Web")).stderr).toContain('"Web" is not <namespace>/<pod>');
    expect((await cli("unenroll", "a/b", "--netns", "/x")).stderr).toContain("--netns and --service-account only apply to enroll");
    expect((await cli("enroll", "a/b", "--netns", "rel")).code).toBe(2);
    expect((await cli("enroll", "a/b", "--timeout", "soon")).code).toBe(2);
    const away = await cli("enroll", "a/b", "--api-socket", join(dir, "none.sock"));
    expect([away.code, away.stderr]).toEqual([1, `nshub enroll a/b: cannot reach the nshub agent at ${join(dir, "none.sock")}: the socket does not exist (ENOENT): is the agent running?\n`]);
  });

  test("against the agent: refusals exit 1 with the agent's words", async () => {
    const r = await cli("unenroll", "mesh/ghost", "--api-socket", socket);
    expect([r.code, r.stderr]).toEqual([1, "nshub unenroll mesh/ghost: pod mesh/ghost is not known to the agent\n"]);
  });
});
