// What the agent's event API accepts, without root: a real Agent (fake dataplane and proxy side)
// served on a unix socket as `nshub agent` serves it, called with the real Connect client and with
// raw requests. Pod names and namespaces are checked as Kubernetes checks them; an input of 10,000
// characters is never echoed whole, neither in the error nor in the agent's log; a JSON request
// with a field the message does not have is refused (a binary one's unknown fields are ignored,
// as protobuf does: see src/agent/api.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import type { Server } from "bun";
import { Agent } from "../../src/agent/agent.ts";
import { createApiApp, serveApi } from "../../src/agent/api.ts";
import { createAgentClient, type AgentClient } from "../../src/agent/client.ts";
import { EnrollmentPolicy } from "../../src/agent/policy.ts";
import { ListPodsRequestSchema } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";
import { fakeDataplane, refusal } from "../fixtures/agent-api-stub.ts";


const dir = mkdtempSync(join(tmpdir(), "nshub-agent-input-"));
const socket = join(dir, "agent.sock");
const logs: string[] = [];
let agent: Agent;
let server: Server<undefined>;
let client: AgentClient;

beforeAll(async () => {
  setLogSink((l) => logs.push(l), "json");
  const log = createLogger("agent-input-test");
  agent = new Agent({
    policy: EnrollmentPolicy.fromConfig({ namespaces: { include: ["mesh"], exclude: [] }, pods: { include: [], exclude: [] } }),
    dataplane: fakeDataplane,
    stateFile: join(dir, "state.json"),
    procRoot: "/proc",
    log,
    pendingRetryMs: 60_000,
  });
  await agent.rebuild();
  server = serveApi(createApiApp(agent, log), { socketPath: socket, socketMode: 0o600 }, log);
  client = createAgentClient({ socketPath: socket, timeoutMs: 5000 });
});

afterAll(async () => {
  await server?.stop(true);
  agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});


const post = (path: string, body: string | Uint8Array, ctype = "application/json") =>
  fetch(`http://nshub-agent${path}`, { method: "POST", body, headers: { "content-type": ctype }, unix: socket } as RequestInit);

const base = { uid: "u-1", namespace: "mesh", name: "web", serviceAccount: "web", netnsPath: "/var/run/netns/none", ips: ["10.9.0.2"], containerId: "c1", interfaceName: "eth0" };
/** How the agent shows an input: quoted, cut after 100 characters with a marker. */
const shown = (s: string) => (s.length <= 100 ? JSON.stringify(s) : `${JSON.stringify(s.slice(0, 100))}… (${s.length} characters, cut)`);
const LABEL = "a DNS-1123 label of at most 63 characters (a-z, 0-9, '-'; a letter or digit at both ends)";
const SUBDOMAIN = "a DNS-1123 subdomain of at most 253 characters (a-z, 0-9, '-', '.'; a letter or digit at both ends of each dot-separated part)";

describe("pod names and namespaces are checked as Kubernetes checks them", () => {
  test("namespace: a DNS-1123 label, at most 63 characters", async () => {
    for (const ns of ["Mesh", "mesh_1", "-mesh", "mesh-", "me.sh", "x".repeat(64)]) {
      expect(await refusal(client.podAdd({ ...base, namespace: ns }))).toEqual({ code: "InvalidArgument", msg: `namespace ${shown(ns)} is not a Kubernetes namespace name: ${LABEL}` });
    }
    // 63 is fine (a namespace the policy leaves alone: recorded, not enrolled).
    const ok = "x".repeat(63);
    expect((await client.podAdd({ ...base, namespace: ok })).pod?.namespace).toBe(ok);
    expect((await client.podDelete({ uid: base.uid, namespace: ok, name: base.name })).deleted).toBe(true);
  });

  test("pod name: a DNS-1123 subdomain, at most 253 characters", async () => {
    for (const name of ["Web", "web_0", "web..0", ".web", "web-", `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`]) {
      expect(await refusal(client.podAdd({ ...base, name }))).toEqual({ code: "InvalidArgument", msg: `pod name ${shown(name)} is not a Kubernetes pod name: ${SUBDOMAIN}` });
    }
    for (const name of ["web.v1", "web-0", "0", `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`]) {
      expect((await refusal(client.podAdd({ ...base, name }))).code).toBe("FailedPrecondition");
    }
  });

  test("PodDelete, Enroll and Unenroll check them too; service account and container id have their own rules", async () => {
    const bad = `namespace "Mesh" is not a Kubernetes namespace name: ${LABEL}`;
    expect(await refusal(client.podDelete({ namespace: "Mesh", name: "web" }))).toEqual({ code: "InvalidArgument", msg: bad });
    expect(await refusal(client.podDelete({ uid: "u-1", namespace: "Mesh", name: "web" }))).toEqual({ code: "InvalidArgument", msg: bad });
    expect(await refusal(client.enroll({ namespace: "Mesh", name: "web" }))).toEqual({ code: "InvalidArgument", msg: bad });
    expect(await refusal(client.unenroll({ namespace: "Mesh", name: "web" }))).toEqual({ code: "InvalidArgument", msg: bad });
    expect(await refusal(client.unenroll({ namespace: "mesh", name: "web_0" }))).toEqual({ code: "InvalidArgument", msg: `pod name "web_0" is not a Kubernetes pod name: ${SUBDOMAIN}` });
    expect(await refusal(client.podAdd({ ...base, serviceAccount: "Web SA" }))).toEqual({
      code: "InvalidArgument",
      msg: 'pod mesh/web: service account "Web SA" is not a Kubernetes service account name (a DNS-1123 subdomain)',
    });
    expect(await refusal(client.podAdd({ ...base, containerId: "-c" }))).toEqual({
      code: "InvalidArgument",
      msg: `pod mesh/web: container id "-c" is not a CNI container id (letters, digits, '_', '.', '-', starting with a letter or digit; at most 256)`,
    });
    expect(await refusal(client.podAdd({ ...base, netnsPath: "/var/run/netns/x\0y" }))).toEqual({ code: "InvalidArgument", msg: 'pod mesh/web: the netns path "/var/run/netns/x\\u0000y" contains a NUL byte' });
    expect(agent.listPods()).toEqual([]);
  });
});

describe("a 10,000-character input is not echoed whole", () => {
  const long = "a".repeat(10_000);

  test("in the error, for every field that can carry one", async () => {
    const cases: Array<[string, Promise<unknown>, string]> = [
      ["namespace", client.podAdd({ ...base, namespace: long }), `namespace ${shown(long)} is not a Kubernetes namespace name: ${LABEL}`],
      ["name", client.enroll({ namespace: "mesh", name: long }), `pod name ${shown(long)} is not a Kubernetes pod name: ${SUBDOMAIN}`],
      ["uid", client.podAdd({ ...base, uid: long }), `pod mesh/web: uid ${shown(long)} is not a valid pod UID`],
      ["ip", client.podAdd({ ...base, ips: [long] }), `pod mesh/web: ${shown(long)} is not an IP address`],
      ["netns path", client.podAdd({ ...base, netnsPath: `/${long}` }), `pod mesh/web: the netns path ${shown(`/${long}`)} is longer than PATH_MAX (4095 bytes)`],
      ["relative netns path", client.enroll({ namespace: "mesh", name: "web", netnsPath: long }), `the netns path ${shown(long)} must be absolute`],
      ["service account", client.podAdd({ ...base, serviceAccount: long }), `pod mesh/web: service account ${shown(long)} is not a Kubernetes service account name (a DNS-1123 subdomain)`],
      ["container id", client.podAdd({ ...base, containerId: long }), `pod mesh/web: container id ${shown(long)} is not a CNI container id (letters, digits, '_', '.', '-', starting with a letter or digit; at most 256)`],
    ];
    for (const [what, call, msg] of cases) {
      const r = await refusal(call);
      expect({ what, ...r }).toEqual({ what, code: "InvalidArgument", msg });
    }
    // A netns path the kernel takes (under PATH_MAX) but that does not exist: shown cut too.
    const deep = `/var/run/netns${`/${"d".repeat(49)}`.repeat(60)}`;
    expect(await refusal(client.podAdd({ ...base, netnsPath: deep }))).toEqual({ code: "FailedPrecondition", msg: `CNI_NETNS ${deep.slice(0, 100)}… (${deep.length} characters, cut) does not exist` });
  });

  test("in the agent's log", () => {
    const refused = logs.filter((l) => l.includes("refused"));
    expect(refused.length).toBeGreaterThan(8);
    for (const line of logs) {
      expect(line).not.toContain("a".repeat(101));
      expect(line.length).toBeLessThan(1000);
    }
  });

  test("in the API's own errors: an unknown path, a JSON key, a JSON value", async () => {
    const path = await post(`/nshub.agent.v1.AgentService/${long}`, "{}");
    const pathBody = (await path.json()) as { code: string; message: string };
    expect(pathBody.code).toBe("unimplemented");
    expect(pathBody.message).toStartWith(`unknown method ${"a".repeat(100)}… (10000 characters, cut) of nshub.agent.v1.AgentService`);
    const key = await post("/nshub.agent.v1.AgentService/ListPods", JSON.stringify({ [long]: 1 }));
    const keyBody = (await key.json()) as { code: string; message: string };
    expect(keyBody.code).toBe("invalid_argument");
    expect(keyBody.message.length).toBeLessThan(400);
    expect(keyBody.message).toEndWith(" characters, cut)");
    const value = await post("/nshub.agent.v1.AgentService/PodAdd", JSON.stringify({ ips: long }));
    expect(((await value.json()) as { message: string }).message.length).toBeLessThan(400);
  });
});

describe("unknown fields", () => {
  test("JSON: a field the message does not have is refused with invalid_argument, and nothing is done", async () => {
    const r = await post("/nshub.agent.v1.AgentService/PodAdd", JSON.stringify({ ...base, namespace: "default", contanerId: "c9" }));
    expect(r.status).toBe(400);
    expect(await r.json()).toEqual({ code: "invalid_argument", message: 'cannot decode message nshub.agent.v1.PodAddRequest from JSON: key "contanerId" is unknown' });
    const l = await post("/nshub.agent.v1.AgentService/ListPods", JSON.stringify({ namespce: "mesh" }));
    expect(await l.json()).toEqual({ code: "invalid_argument", message: 'cannot decode message nshub.agent.v1.ListPodsRequest from JSON: key "namespce" is unknown' });
    expect(agent.listPods()).toEqual([]);
    // Known fields only: served.
    const ok = await post("/nshub.agent.v1.AgentService/ListPods", JSON.stringify({ namespace: "mesh" }));
    expect([ok.status, await ok.json()]).toEqual([200, {}]);
  });

  test("binary: an unknown field is ignored, as protobuf does (a newer client's addition)", async () => {
    const known = toBinary(ListPodsRequestSchema, create(ListPodsRequestSchema, { namespace: "mesh" }));
    // field 99, varint 1: tag (99 << 3 | 0) = 792 = 0x98 0x06
    const body = new Uint8Array([...known, 0x98, 0x06, 0x01]);
    const r = await post("/nshub.agent.v1.AgentService/ListPods", body, "application/proto");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/proto");
  });
});
