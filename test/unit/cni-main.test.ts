// The CNI plugin end to end, without root: runCni with the runtime's inputs (env, stdin) and
// captured stdout, against a real agent API on a unix socket (the agent's kernel side is faked;
// enrolling a real pod is covered by the netns tests). Every error code path, the byte-exact
// pass-through of prevResult, and "stdout carries only the result".
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { runCni, versionInfo } from "../../src/cni/main.ts";
import { setLogLevel } from "../../src/log/logger.ts";
import { startStubAgent } from "../fixtures/agent-api-stub.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-cni-main-"));
const socket = join(dir, "agent.sock");
const logFile = join(dir, "log", "cni.log");
let stub: Awaited<ReturnType<typeof startStubAgent>>;
let agent: Awaited<ReturnType<typeof startStubAgent>>["agent"];
let hung: Server<undefined>;
const hungSocket = join(dir, "hung.sock");
// An empty config file, so that the machine's /etc/nshub/config.yaml never leaks into the tests.
const emptyConfig = join(dir, "config.yaml");
writeFileSync(emptyConfig, "{}\n");


beforeAll(async () => {
  stub = await startStubAgent(dir, socket, "cni-test");
  agent = stub.agent;
  // An "agent" that accepts the call and never answers.
  hung = Bun.serve({ unix: hungSocket, fetch: () => new Promise<Response>(() => undefined) });
});

afterAll(async () => {
  await stub?.stop();
  await hung?.stop(true);
  setLogLevel("info");
  rmSync(dir, { recursive: true, force: true });
});

const PREV = '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.7.0.9/24","gateway":"10.7.0.1","interface":0}],"dns":{"search":["a\\u003cb"]}}';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  json: { cniVersion?: string; code?: number; msg?: string; details?: string } | undefined;
}

async function cni(env: Record<string, string | undefined>, stdin: string): Promise<Run> {
  let stdout = "";
  let stderr = "";
  const code = await runCni({
    env: { NSHUB_CONFIG: emptyConfig, ...env },
    stdin: async () => stdin,
    stdout: async (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
  });
  let json: Run["json"];
  try {
    json = JSON.parse(stdout);
  } catch {
    json = undefined;
  }
  return { code, stdout, stderr, json };
}

const env = (command: string, cniArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web;K8S_POD_UID=0b0c8f5e-0000-4000-8000-000000000001") => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: "abc123",
  CNI_NETNS: "/var/run/netns/does-not-exist",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
  CNI_ARGS: cniArgs,
});

const conf = (extra: Record<string, unknown> = {}, prev: string | null = PREV) => {
  const o = JSON.stringify({ cniVersion: "1.0.0", name: "k8s-pod-network", type: "nshub-cni", agentSocket: socket, logFile, ...extra });
  return prev === null ? o : `${o.slice(0, -1)},"prevResult":${prev}}`;
};

describe("VERSION", () => {
  test("lists the supported versions, whatever the input", async () => {
    for (const stdin of ['{"cniVersion":"0.3.1"}', ""]) {
      const r = await cni({ CNI_COMMAND: "VERSION" }, stdin);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ cniVersion: "1.1.0", supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] });
    }
    expect(versionInfo().supportedVersions).toContain("0.4.0");
  });
});

describe("errors: spec JSON on stdout, non-zero exit, nothing else on stdout", () => {
  const cases: Array<[string, Record<string, string | undefined>, string, number, string]> = [
    ["no CNI_COMMAND", {}, conf(), 4, "CNI_COMMAND is not set: nshub-cni is a CNI plugin and is run by the container runtime"],
    ["missing CNI_NETNS on ADD", { ...env("ADD"), CNI_NETNS: undefined }, conf(), 4, "required environment variable CNI_NETNS missing for ADD"],
    ["bad CNI_ARGS", env("ADD", "K8S_POD_NAME"), conf(), 4, 'CNI_ARGS: invalid pair "K8S_POD_NAME"'],
    ["malformed netconf JSON", env("ADD"), '{"cniVersion": "1.0.0",', 6, "network configuration on stdin is not valid JSON"],
    ["unsupported cniVersion", env("ADD"), conf({ cniVersion: "0.2.0" }), 1, 'incompatible CNI version "0.2.0"'],
    ["missing prevResult", env("ADD"), conf({}, null), 7, "ADD needs prevResult: nshub-cni is a chained plugin and must come after the plugin that sets up the pod's interface"],
    ["prevResult not an object", env("ADD"), conf({}, '"10.0.0.1"'), 7, "prevResult must be a JSON object (a CNI result), got a string"],
    ["prevResult with a bad address", env("ADD"), conf({}, '{"ips":[{"address":"10.0.0.1"}]}'), 7, 'prevResult.ips[0].address "10.0.0.1" is not an IP address with a prefix length (like "10.0.0.5/24")'],
    ["bad plugin key", env("ADD"), conf({ timeoutMs: "soon" }), 7, 'network configuration: timeoutMs must be an integer from 1 to 120000, got "soon"'],
    ["CHECK on 0.3.1", env("CHECK"), conf({ cniVersion: "0.3.1" }, '{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.1/24"}]}'), 1, "CHECK needs cniVersion 0.4.0 or later, the netconf says 0.3.1"],
    ["STATUS on 1.0.0", env("STATUS"), conf(), 1, "STATUS needs cniVersion 1.1.0 or later, the netconf says 1.0.0"],
    ["ADD, agent refuses (CNI_NETNS does not exist)", env("ADD"), conf(), 100, "pod mesh/web: the nshub agent refused it: CNI_NETNS /var/run/netns/does-not-exist does not exist"],
    ["ADD, no IP in prevResult", { ...env("ADD"), CNI_NETNS: "/proc/self/ns/net" }, conf({}, '{"cniVersion":"1.0.0","ips":[]}'), 100, "pod mesh/web: the nshub agent refused it: pod mesh/web has no IP address (the previous plugin's result lists none for the pod): cannot enroll it"],
    ["ADD, agent not running", env("ADD"), conf({ agentSocket: join(dir, "nothing.sock") }), 11, `pod mesh/web: cannot reach the nshub agent at ${join(dir, "nothing.sock")}: the socket does not exist (ENOENT): is the agent running?`],
    ["ADD, agent does not answer in time", env("ADD"), conf({ agentSocket: hungSocket, timeoutMs: 300 }), 11, "pod mesh/web: the nshub agent did not answer within 300 ms"],
    ["STATUS, agent not running", env("STATUS"), conf({ cniVersion: "1.1.0", agentSocket: join(dir, "nothing.sock") }), 50, `the nshub agent is not available: cannot reach the nshub agent at ${join(dir, "nothing.sock")}: the socket does not exist (ENOENT): is the agent running?`],
  ];
  for (const [name, e, stdin, code, msg] of cases) {
    test(name, async () => {
      const r = await cni(e, stdin);
      expect(r.code).toBe(1);
      expect(r.json).toBeDefined();
      expect(r.json!.code).toBe(code);
      expect(r.json!.msg).toBe(msg);
      expect(typeof r.json!.cniVersion).toBe("string");
      expect(Object.keys(r.json!).every((k) => ["cniVersion", "code", "msg", "details"].includes(k))).toBe(true);
      // stdout holds exactly one JSON document
      expect(r.stdout.trim()).toBe(JSON.stringify(r.json));
    });
  }

  test("the error's cniVersion is the netconf's when supported", async () => {
    const r = await cni(env("ADD"), conf({ cniVersion: "0.4.0" }, null));
    expect(r.json!.cniVersion).toBe("0.4.0");
    expect((await cni(env("ADD"), conf({ cniVersion: "9.9.9" }))).json!.cniVersion).toBe("1.1.0");
  });

  test("a broken nshub config file is an invalid-netconf error naming it", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "cni:\n  agentSockett: /x\n");
    const r = await cni({ ...env("ADD"), NSHUB_CONFIG: bad }, conf());
    expect(r.json!.code).toBe(7);
    expect(r.json!.msg).toBe(`nshub configuration is invalid: config ${bad}: cni: unknown key "agentSockett"`);
  });
});

describe("success paths", () => {
  test("ADD of a pod the policy leaves alone prints prevResult byte for byte", async () => {
    const r = await cni({ ...env("ADD", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain;K8S_POD_UID=0b0c8f5e-0000-4000-8000-000000000002") }, conf());
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(PREV);
    expect(agent.listPods().map((p) => `${p.namespace}/${p.name}:${p.state}`)).toContain("default/plain:not-enrolled");
  });

  test("ADD of a container CNI_ARGS names no pod for (ctr run --cni): the agent gets default/<container id>, uid = the container id", async () => {
    // As ctr sends it: no CNI_ARGS at all, CNI_CONTAINERID "<containerd namespace>-<id>".
    const r = await cni({ ...env("ADD", ""), CNI_CONTAINERID: "default-Web_1" }, conf());
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: PREV });
    const p = agent.listPods().find((x) => x.uid === "default-Web_1");
    expect(p && [p.namespace, p.name, p.serviceAccount, p.state, p.containerId, p.ips]).toEqual(["default", "default-web-1", "default", "not-enrolled", "default-Web_1", ["10.7.0.9"]]);
  });

  test("the netconf's containerNamespace names its namespace, and the policy decides for it as for any pod", async () => {
    // Namespace "mesh" is enrolled by the stub's policy: the agent goes for the netns (missing here).
    const r = await cni({ ...env("ADD", "IgnoreUnknown=1"), CNI_CONTAINERID: "k8s.io-ctr-7" }, conf({ containerNamespace: "mesh" }));
    expect(r.json).toEqual({ cniVersion: "1.0.0", code: 100, msg: "pod mesh/k8s.io-ctr-7: the nshub agent refused it: CNI_NETNS /var/run/netns/does-not-exist does not exist" });
    const bad = await cni({ ...env("ADD", ""), CNI_CONTAINERID: "c1" }, conf({ containerNamespace: "Not_A_Namespace" }));
    // (A netconf refused before its cniVersion is taken: the error says the plugin's current version, as for every bad key.)
    expect(bad.json).toEqual({
      cniVersion: "1.1.0",
      code: 7,
      msg: 'network configuration: containerNamespace must be a Kubernetes namespace name (a DNS-1123 label of at most 63 characters), got "Not_A_Namespace"',
    });
  });

  test("CHECK and DEL of such a container: same pod; DEL with no CNI_NETNS (as ctr sends it) removes it, again is fine", async () => {
    expect(await cni({ ...env("CHECK", ""), CNI_CONTAINERID: "default-Web_1" }, conf())).toMatchObject({ code: 0, stdout: "" });
    const del = await cni({ ...env("DEL", ""), CNI_CONTAINERID: "default-Web_1", CNI_NETNS: undefined }, conf());
    expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    expect(agent.listPods().map((p) => p.uid)).not.toContain("default-Web_1");
    const again = await cni({ ...env("DEL", ""), CNI_CONTAINERID: "default-Web_1", CNI_NETNS: undefined }, conf({}, null));
    expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 0, stdout: "" });
    const log = readFileSync(logFile, "utf8");
    expect(log).toContain("removed (was not-enrolled)");
    expect(log).toContain("pod default-Web_1 is not known to the agent: nothing to delete");
  });

  test("such a container fails closed like a pod: agent unreachable → 11", async () => {
    const r = await cni({ ...env("ADD", ""), CNI_CONTAINERID: "default-web2" }, conf({ agentSocket: join(dir, "nothing.sock") }));
    expect(r.json?.code).toBe(11);
    expect(r.json?.msg).toBe(`pod default/default-web2: cannot reach the nshub agent at ${join(dir, "nothing.sock")}: the socket does not exist (ENOENT): is the agent running?`);
  });

  test("an old-shape (0.4.0) prevResult passes through unchanged too", async () => {
    const old = '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.7.0.10/24","interface":0}]}';
    const r = await cni(env("ADD", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=old;K8S_POD_UID=0b0c8f5e-0000-4000-8000-000000000003"), conf({ cniVersion: "0.4.0" }, old));
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(old);
  });

  test("DEL: known pod deleted, unknown pod fine, agent unreachable still succeeds; no output", async () => {
    const known = await cni(env("DEL", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain;K8S_POD_UID=0b0c8f5e-0000-4000-8000-000000000002"), conf());
    expect({ code: known.code, stdout: known.stdout }).toEqual({ code: 0, stdout: "" });
    expect(agent.listPods().map((p) => p.name)).not.toContain("plain");
    const again = await cni(env("DEL", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain;K8S_POD_UID=0b0c8f5e-0000-4000-8000-000000000002"), conf({}, null));
    expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 0, stdout: "" });
    const away = await cni({ ...env("DEL"), CNI_NETNS: undefined }, conf({ agentSocket: join(dir, "nothing.sock") }, null));
    expect({ code: away.code, stdout: away.stdout }).toEqual({ code: 0, stdout: "" });
    expect(readFileSync(logFile, "utf8")).toContain("DEL: agent not reachable; succeeding anyway");
  });

  test("CHECK, STATUS and GC", async () => {
    expect(await cni(env("CHECK"), conf())).toMatchObject({ code: 0, stdout: "" });
    expect(await cni(env("STATUS"), conf({ cniVersion: "1.1.0" }, null))).toMatchObject({ code: 0, stdout: "" });
    expect(await cni(env("GC"), conf({ cniVersion: "1.1.0" }, null))).toMatchObject({ code: 0, stdout: "" });
  });

  test("logs go to the log file (directory created), never to stdout", async () => {
    const lines = readFileSync(logFile, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { scope: string; msg: string });
    // (The in-process agent of this test shares the process-wide log sink, so its lines are there too.)
    expect(lines.filter((l) => l.scope === "cni").length).toBeGreaterThan(5);
    expect(lines.some((l) => l.msg === "ADD done")).toBe(true);
    // "stderr" sends them to stderr instead
    const r = await cni(env("ADD", "IgnoreUnknown=1"), conf({ logFile: "stderr", logLevel: "debug" }));
    expect(r.stdout).toBe(PREV);
    expect(r.stderr).toContain('"pod":"default/abc123","uid":"abc123","namedBy":"CNI_CONTAINERID"');
  });
});
