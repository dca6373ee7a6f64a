// L4 authorization on real traffic (issue 19, plaintext inbound): pods A and B (clients, not in
// the mesh) and S (server, enrolled) on one virtual node; the proxy runs with
// `proxy.policies` = a folder the test rewrites. S's sink prints one line per connection it
// accepted, so "nothing reached the app" is counted at the app. Run for both relays, with the
// default two data-plane threads. Principal rules need HBONE (not wired yet): not tested here.
import { renameSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, expect, test } from "bun:test";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod, SimProcess } from "../helpers/netsim.ts";
import { BUN, MAIN, createProxyEnv, eventually, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const PORT = 5001;

const allowIps = (name: string, ns: string, ips: string[]) => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ${name}, namespace: ${ns}}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: [${ips.map((ip) => `"${ip}/32"`).join(", ")}]
`;

for (const relay of ["splice", "userspace"] as const)
netnsDescribe(`proxy (${relay} relay): L4 authorization on inbound plaintext`, () => {
  let env: ProxyEnv;
  let proxy: ProxyProcess;
  let A: Pod, B: Pod, S: Pod;
  let sink: SimProcess;
  let dir: string;
  let n = 0;

  /** Replaces the policy folder's content atomically (rename), as a ConfigMap update does. */
  function writePolicies(yaml: string): void {
    const tmp = join(env.tmp, `policy-${n++}.yaml`);
    writeFileSync(tmp, yaml);
    renameSync(tmp, join(dir, "policies.yaml"));
  }

  /** One connection from `from` to S: true when the app got the bytes and answered. */
  async function tryConnect(from: Pod, bytes = 1000): Promise<{ ok: boolean; error?: string }> {
    const r = await env.toolRun(from, ["send", "--host", S.ip, "--port", String(PORT), "--bytes", String(bytes)]);
    return { ok: r.reply.includes(`"bytes":${bytes}`), error: r.error };
  }

  /** Connections S's app accepted from `ip`. */
  const appSaw = (ip: string) =>
    sink
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((x) => typeof x.peer === "string" && x.peer.replace(/^::ffff:/, "") === ip).length;

  const accessLines = () =>
    proxy.proc
      .stderr()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((l) => l.msg === "connection complete");

  async function metric(name: string, match: string[]): Promise<number> {
    const page = (await proxy.http("GET", proxy.metricsAddr, "/metrics")).body;
    let sum = 0;
    for (const line of page.split("\n")) if (line.startsWith(`${name}{`) && match.every((m) => line.includes(m))) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    return sum;
  }

  /** Waits until every data-plane thread has applied policy generation `g`. */
  async function generation(g: number): Promise<void> {
    await eventually(async () => {
      const r = JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body);
      return r.threads.length === 2 && r.threads.every((t: { generation: number }) => t.generation >= g);
    }, 5_000, `policy generation ${g} in every thread`);
  }

  beforeAll(async () => {
    env = await createProxyEnv();
    A = await env.sim.addPod({ name: "client-a" });
    B = await env.sim.addPod({ name: "client-b" });
    S = await env.sim.addPod({ name: "server-s" });
    await env.enroll(S);
    dir = join(env.tmp, "policies");
    mkdirSync(dir);
    writePolicies(allowIps("allow-a", "default", [A.ip]));
    sink = env.tool(S, ["sink", "--port", String(PORT)]);
    await S.waitForTcpPort(PORT);
    proxy = env.startProxy({ args: ["--relay", relay], env: { NSHUB_PROXY_POLICIES: dir } });
    await proxy.waitReady();
    await generation(1);
  }, T);

  afterAll(async () => {
    await env?.destroy();
  }, T);

  test("ALLOW by ipBlocks lets A in and keeps B out: reset, nothing at the app, counted with DENY, logged with the policy", async () => {
    const failedBefore = await metric("istio_tcp_connections_failed_total", ['response_flags="DENY"']);
    for (let i = 0; i < 4; i++) expect((await tryConnect(A)).ok).toBe(true);
    const bSawBefore = appSaw(B.ip);
    for (let i = 0; i < 4; i++) {
      const r = await tryConnect(B);
      expect(r.ok).toBe(false);
      // A reset: the client sees it as ECONNRESET, or EPIPE when it was still writing.
      expect(["ECONNRESET", "EPIPE"]).toContain(r.error ?? "none");
    }
    expect(appSaw(B.ip)).toBe(bSawBefore);
    expect(appSaw(A.ip)).toBeGreaterThanOrEqual(4);
    await eventually(async () => (await metric("istio_tcp_connections_failed_total", ['response_flags="DENY"', 'reporter="destination"'])) - failedBefore === 4, 5_000, "4 DENY failures");
    expect(await metric("nshub_connection_failures_total", ['direction="inbound"', 'reason="policy_denied"'])).toBe(4);
    // ztunnel counts a denied connection as opened and closed, with the DENY flag on the close.
    expect(await metric("istio_tcp_connections_closed_total", ['response_flags="DENY"'])).toBe(4);
    await eventually(() => accessLines().filter((l) => l.reason === "policy_denied").length === 4, 5_000, "4 access-log lines");
    for (const l of accessLines().filter((x) => x.reason === "policy_denied")) {
      expect(l["src.addr"]).toStartWith(`${B.ip}:`);
      expect(l["dst.addr"]).toBe(`${S.ip}:${PORT}`);
      expect(l.policy).toBe("default/allow-a");
      expect(l.error).toBe("allow policies exist, but none allowed");
      expect(l.level).toBe("error");
    }
    const { recent } = await proxy.connections();
    const denied = recent.filter((c) => c.closeHow === "policy_denied");
    expect(denied.length).toBe(4);
    expect(denied.every((c) => c.upstreamLocal === null && c.bytesSent === 0)).toBe(true);
  }, T);

  test("the admin answers with the running set: /policies, /policy/check, /workloads", async () => {
    const pol = JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body);
    expect(pol.policies.map((p: { name: string; status: string }) => [p.name, p.status])).toEqual([["allow-a", "enforced"]]);
    const check = async (q: string) => JSON.parse((await proxy.http("GET", proxy.admin, `/policy/check?${q}`)).body);
    expect((await check(`from=${A.ip}&to=default/server-s&port=${PORT}&plaintext`)).decision.allowed).toBe(true);
    const no = await check(`from=${B.ip}&to=default/server-s&port=${PORT}`);
    expect([no.decision.allowed, no.decision.code]).toEqual([false, "not-allowed"]);
    expect((await proxy.http("GET", proxy.admin, "/policy/check?to=x")).status).toBe(400);
    const ws = JSON.parse((await proxy.http("GET", proxy.admin, "/workloads")).body);
    expect(ws.workloads.map((w: { name: string; workloadIps: string[]; source: string }) => [w.name, w.workloadIps, w.source])).toEqual([["server-s", [S.ip], "zds"]]);
    // The CLI against the running proxy (inside the node netns, where its admin listens).
    const cli = (...args: string[]) => env.sim.node.exec([BUN, MAIN, ...args]);
    const yes = await cli("policy", "check", "--admin", proxy.admin, "--from", A.ip, "--to", "default/server-s", "--port", String(PORT));
    expect([yes.code, yes.stdout.split("\n")[0]]).toEqual([0, `ALLOW  ${A.ip} → default/server-s:${PORT} (plaintext)`]);
    const nope = await cli("policy", "check", "--admin", proxy.admin, "--from", B.ip, "--to", "default/server-s", "--port", String(PORT));
    expect(nope.code).toBe(1);
    expect(nope.stdout).toContain("allow policies exist, but none allowed");
    const list = await cli("policies", "--admin", proxy.admin);
    expect([list.code, list.stdout]).toEqual([0, expect.stringContaining("default/allow-a")]);
    const wl = await cli("workloads", "--admin", proxy.admin);
    expect([wl.code, wl.stdout]).toEqual([0, expect.stringContaining("spiffe://cluster.local/ns/default/sa/default")]);
    const dump = JSON.parse((await proxy.http("GET", proxy.admin, "/config_dump")).body);
    expect(dump.registry.workloads.map((w: { name: string }) => w.name)).toEqual(["server-s"]);
    expect(dump.policies.policies.length).toBe(1);
  }, T);

  test("a mesh-wide DENY (root namespace, notIpBlocks) wins over an ALLOW", async () => {
    writePolicies(
      `${allowIps("allow-a-b", "default", [A.ip, B.ip])}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-but-b, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notIpBlocks: ["${B.ip}/32"]
`,
    );
    await generation(2);
    const aSaw = appSaw(A.ip);
    for (let i = 0; i < 4; i++) expect((await tryConnect(A)).ok).toBe(false);
    for (let i = 0; i < 2; i++) expect((await tryConnect(B)).ok).toBe(true);
    expect(appSaw(A.ip)).toBe(aSaw);
    await eventually(() => accessLines().some((l) => l.policy === "istio-system/deny-all-but-b"), 5_000, "DENY access-log line");
    const l = accessLines().find((x) => x.policy === "istio-system/deny-all-but-b")!;
    expect([l["policy.rule"], l.error]).toEqual([0, "explicitly denied by: istio-system/deny-all-but-b"]);
  }, T);

  test("STRICT PeerAuthentication refuses plaintext from a non-mesh client", async () => {
    writePolicies(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
`);
    await generation(3);
    const before = appSaw(A.ip) + appSaw(B.ip);
    for (const p of [A, B]) expect((await tryConnect(p)).ok).toBe(false);
    expect(appSaw(A.ip) + appSaw(B.ip)).toBe(before);
    await eventually(() => accessLines().some((x) => typeof x.error === "string" && x.error.includes("STRICT")), 5_000, "STRICT access-log line");
  }, T);

  test("a change applies to new connections within a second in every thread; an established connection stays", async () => {
    writePolicies(allowIps("allow-a", "default", [A.ip]));
    await generation(4);
    // A slow 6 MiB upload from A (1 MiB per 300 ms), established under the old set.
    const bytes = 6 << 20;
    const slow = env.toolRun(A, ["send", "--host", S.ip, "--port", String(PORT), "--bytes", String(bytes), "--chunk-delay-ms", "300"], T);
    await eventually(async () => (await proxy.connections()).live.some((c) => c.source.startsWith(`${A.ip}:`) && c.state === "open"), 5_000, "A's slow connection open");
    const changedAt = Date.now();
    writePolicies(allowIps("allow-b", "default", [B.ip]));
    // New connections from A: refused once the new set is in force, in every thread.
    let refusedAt = 0;
    while (Date.now() - changedAt < 5_000) {
      if (!(await tryConnect(A, 10)).ok) {
        refusedAt = Date.now();
        break;
      }
    }
    expect(refusedAt).toBeGreaterThan(0);
    console.log(`policy change → first refused connection: ${refusedAt - changedAt} ms (includes the client's own start-up)`);
    await generation(5);
    console.log(`policy change → every thread on the new set: ${Date.now() - changedAt} ms`);
    expect(Date.now() - changedAt).toBeLessThan(1_500);
    // Enough connections to land on both threads (ids: main thread odd, Worker even).
    const idsBefore = new Set((await proxy.connections()).recent.map((c) => c.id));
    const many = await env.toolRun(A, ["many", "--host", S.ip, "--port", String(PORT), "--conns", "40", "--bytes", "10"]);
    expect(many.ok).toBe(0);
    const fresh = (await proxy.connections()).recent.filter((c) => !idsBefore.has(c.id) && c.source.startsWith(`${A.ip}:`));
    expect(fresh.every((c) => c.closeHow === "policy_denied")).toBe(true);
    expect(new Set(fresh.map((c) => c.id % 2)).size).toBe(2);
    expect((await tryConnect(B)).ok).toBe(true);
    // The upload established before the change finished intact.
    const r = await slow;
    expect(r.error).toBeUndefined();
    expect(r.reply).toContain(`"bytes":${bytes}`);
  }, T);

  test("a bad policy file at start: the proxy refuses to start, naming file, document and field", async () => {
    const bad = join(env.tmp, "bad-policy.yaml");
    writeFileSync(bad, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: default}\nspec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        ports: [\"99999\"]\n");
    const p = env.startProxy({ admin: "127.0.0.1:15100", readiness: "127.0.0.1:15121", metrics: "127.0.0.1:15120", args: ["--relay", relay], env: { NSHUB_PROXY_POLICIES: bad } });
    expect(await p.proc.exited).toBe(1);
    await eventually(() => p.proc.stderr().includes("nshub proxy: cannot load"), 2_000, "the refusal on stderr");
    expect(p.proc.stderr()).toContain(`nshub proxy: cannot load the policies in ${bad}: ${bad}:`);
    expect(p.proc.stderr()).toContain("spec.rules[0].to[0].operation.ports[0]");
  }, T);

  test("a bad reload is refused and the last good set stays in force", async () => {
    writePolicies(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["not-an-ip"]
`);
    await eventually(async () => JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body).lastError !== undefined, 5_000, "refused reload reported");
    const pol = JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body);
    expect(pol.lastError.join(" ")).toContain("spec.rules[0].from[0].source.ipBlocks[0]");
    expect(pol.policies.map((p: { name: string }) => p.name)).toEqual(["allow-b"]);
    expect((await tryConnect(B)).ok).toBe(true);
    expect((await tryConnect(A)).ok).toBe(false);
  }, T);
  test("with pods' labels unknown, a selector DENY applies to the namespace's pods (fail safe), and /policies says so", async () => {
    writePolicies(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b-selected, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {ipBlocks: ["${B.ip}/32"]}
`);
    await generation(6);
    const pol = JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body);
    expect(pol.warnings.join(" ")).toContain("default/deny-b-selected");
    expect(pol.warnings.join(" ")).toContain("failing safe");
    expect((await tryConnect(B)).ok).toBe(false);
    expect((await tryConnect(A)).ok).toBe(true);
  }, T);
});
