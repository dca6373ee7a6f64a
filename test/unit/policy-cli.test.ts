// `nshub policy check` and `nshub policies`, run as the operator runs them (bun src/main.ts …):
// exit status 0 allowed / 1 denied / 2 usage / 3 bad policies, and the deciding policy and rule.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const dir = mkdtempSync(join(tmpdir(), "nshub-policy-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function nshub(...argv: string[]) {
  const p = Bun.spawn([process.execPath, MAIN, ...argv], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { stdout, stderr, code };
}

const POLICIES = join(dir, "policies.yaml");
writeFileSync(
  POLICIES,
  `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-bar, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/curl"]}}]
  - from: [{source: {namespaces: ["bar"]}}]
    to: [{operation: {ports: ["9090"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-old, namespace: foo}
spec:
  selector: {matchLabels: {version: old}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: foo}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`,
);
const base = ["policy", "check", "--policies", POLICIES, "--to", "foo/httpbin"];

describe("nshub policy check", () => {
  test("allowed: exit 0, the policy and rule that allowed it", async () => {
    const r = await nshub(...base, "--port", "8080", "--from", "spiffe://cluster.local/ns/bar/sa/curl", "--from", "10.0.1.5");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith("ALLOW  spiffe://cluster.local/ns/bar/sa/curl from 10.0.1.5 → foo/httpbin:8080 (mTLS)\n");
    expect(r.stdout).toContain("decided by  AuthorizationPolicy foo/allow-bar rules[0]");
    expect(r.stdout).toContain("mTLS mode   STRICT (mesh level, PeerAuthentication istio-system/default)");
  });

  test("the second rule decides on port 9090 (--json)", async () => {
    const r = await nshub(...base, "--port", "9090", "--from", "spiffe://cluster.local/ns/bar/sa/other", "--json");
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.decision).toEqual({ allowed: true, action: "ALLOW", code: "allowed", policy: { kind: "AuthorizationPolicy", namespace: "foo", name: "allow-bar" }, rule: 1, reason: "allowed by: foo/allow-bar rules[1]" });
  });

  test("denied: exit 1 and ztunnel's reason", async () => {
    const r = await nshub(...base, "--port", "8080", "--from", "spiffe://cluster.local/ns/baz/sa/curl");
    expect(r.code).toBe(1);
    expect(r.stdout).toStartWith("DENY  ");
    expect(r.stdout).toContain("reason      allow policies exist, but none allowed");
  });

  test("--labels selects the selector policy", async () => {
    const r = await nshub(...base, "--port", "8080", "--from", "spiffe://cluster.local/ns/bar/sa/curl", "--labels", "app=httpbin,version=old", "--json");
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).decision).toMatchObject({ code: "explicitly-denied", policy: { name: "deny-old" }, rule: 0 });
  });

  test("plaintext under a STRICT mesh is refused by the PeerAuthentication", async () => {
    const r = await nshub(...base, "--port", "8080", "--from", "10.0.1.5", "--plaintext", "--json");
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).decision).toMatchObject({ code: "mtls-required", policy: { kind: "PeerAuthentication", namespace: "istio-system", name: "default" } });
  });

  test("a bad policy file: exit 3, each error with file, line, document and field", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec:\n  rules:\n  - to: [{operation: {ports: ['99999']}}]\n");
    const r = await nshub("policy", "check", "--policies", bad, "--to", "foo/x", "--port", "80");
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(`${bad}:6 (document 1) AuthorizationPolicy foo/x: spec.rules[0].to[0].operation.ports[0]: bad port "99999"`);
  });

  test("usage errors exit 2", async () => {
    for (const argv of [
      ["policy", "check", "--policies", POLICIES, "--port", "80"],
      [...base, "--port", "80", "--from", "not-an-ip"],
      [...base, "--port", "80", "--from", "spiffe://cluster.local/ns/a/sa/b", "--plaintext"],
      [...base, "--port", "http"],
      [...base, "--port", "80", "--frob"],
      ["policy", "frob"],
    ]) {
      const r = await nshub(...argv);
      expect({ argv, code: r.code }).toEqual({ argv, code: 2 });
    }
  });

  test("--help names the running-proxy variant; --admin with nothing there is one sentence, exit 1", async () => {
    const r = await nshub("policy", "check", "--help");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--admin <url>");
    expect(r.stdout).toContain("GET /policy/check");
    const down = await nshub("policy", "check", "--admin", "127.0.0.1:1", "--to", "default/x", "--port", "80");
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("the nshub proxy is not running");
  });
});

describe("nshub policies", () => {
  test("lists what is in force, where it applies, and what is ignored", async () => {
    const r = await nshub("policies", "--policies", POLICIES);
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines[0]).toMatch(/^KIND\s+NAMESPACE\/NAME\s+ACTION\s+APPLIES TO\s+RULES\s+STATUS\s+FILE$/);
    expect(lines.find((l) => l.includes("foo/allow-bar"))).toMatch(/ALLOW\s+every workload in namespace foo\s+2\s+enforced\s+.*policies\.yaml:1 \(document 1\)$/);
    expect(lines.find((l) => l.includes("foo/deny-old"))).toContain("workloads in namespace foo with version=old");
    expect(lines.find((l) => l.includes("istio-system/default"))).toMatch(/mTLS STRICT\s+every workload \(mesh-wide\)/);
    expect(lines.find((l) => l.includes("foo/audit-all"))).toContain("ignored: ztunnel does not support the AUDIT action");
  });

  test("--json", async () => {
    const r = await nshub("policies", "--policies", POLICIES, "--json");
    const out = JSON.parse(r.stdout);
    expect(out.rootNamespace).toBe("istio-system");
    expect(out.policies.map((p: { name: string; status: string }) => `${p.name}:${p.status.split(":")[0]}`)).toEqual(["allow-bar:enforced", "deny-old:enforced", "default:enforced", "audit-all:ignored"]);
  });

  test("nshub --help lists both commands", async () => {
    const r = await nshub("--help");
    expect(r.stdout).toMatch(/^  policy\s/m);
    expect(r.stdout).toMatch(/^  policies\s/m);
  });
});
