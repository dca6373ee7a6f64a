// Enrollment policy: glob matching, exclude-wins, and precise config errors (schema errors from
// the config loader, pattern errors from the policy), also as the agent process reports them.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/config/load.ts";
import { compileGlob, EnrollmentPolicy } from "../../src/agent/policy.ts";

const cfgDir = mkdtempSync(join(tmpdir(), "nshub-policy-"));
afterAll(() => rmSync(cfgDir, { recursive: true, force: true }));
let seq = 0;

/** Loads a config file holding `agent.enrollment` (JSON is YAML) and compiles its policy. */
function policy(enrollment: unknown): EnrollmentPolicy {
  const file = join(cfgDir, `config-${++seq}.yaml`);
  writeFileSync(file, JSON.stringify({ agent: { enrollment } }));
  const cfg = loadConfig({ file, env: {} });
  return EnrollmentPolicy.fromConfig(cfg.agent.enrollment);
}

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.message.replace(/^config \S+: /, "");
    throw e;
  }
  throw new Error("expected a ConfigError");
}

describe("glob patterns", () => {
  test("* and ? never cross '/'; classes, negation, escapes", () => {
    const ns = (p: string) => compileGlob(p, "namespace");
    expect(ns("team-*").test("team-a")).toBe(true);
    expect(ns("team-*").test("team-")).toBe(true);
    expect(ns("team-*").test("xteam-a")).toBe(false);
    expect(ns("t?am").test("team")).toBe(true);
    expect(ns("t?am").test("tam")).toBe(false);
    expect(ns("[ab]-ns").test("b-ns")).toBe(true);
    expect(ns("[!ab]-ns").test("b-ns")).toBe(false);
    expect(ns("[a-c]x").test("cx")).toBe(true);
    expect(ns("a.b").test("axb")).toBe(false); // '.' is literal
    const pod = (p: string) => compileGlob(p, "pod");
    expect(pod("*/web-*").test("shop/web-0")).toBe(true);
    expect(pod("*/web-*").test("shop/api-0")).toBe(false);
    expect(pod("shop/*").test("shop/a/b")).toBe(false);
    expect(pod("sh\\op/x").test("shop/x")).toBe(true);
  });

  test("bad patterns say what is wrong", () => {
    expect(() => compileGlob("a/b", "namespace")).toThrow("a namespace pattern cannot contain '/' (pod patterns go under pods:)");
    expect(() => compileGlob("web-*", "pod")).toThrow('a pod pattern is "<namespace>/<name>" with exactly one \'/\', found 0');
    expect(() => compileGlob("a/b/c", "pod")).toThrow("found 2");
    expect(() => compileGlob("/x", "pod")).toThrow("needs both parts");
    expect(() => compileGlob("team-[a", "namespace")).toThrow("unterminated '[' at position 6");
    expect(() => compileGlob("Team", "namespace")).toThrow("character \"T\" at position 1 never appears in Kubernetes names");
    expect(() => compileGlob("x\\", "namespace")).toThrow("a trailing '\\' escapes nothing");
  });
});

describe("policy decisions", () => {
  test("namespace include, pod include, exclude wins", () => {
    const p = policy({
      namespaces: { include: ["team-*", "shop"], exclude: ["team-secret"] },
      pods: { include: ["default/probe-*"], exclude: ["shop/db-*", "*/debug"] },
    });
    expect(p.decide("team-a", "web")).toEqual({ enroll: true, reason: 'namespace team-a matches agent.enrollment.namespaces.include "team-*"' });
    expect(p.decide("team-secret", "web")).toEqual({ enroll: false, reason: 'namespace team-secret matches agent.enrollment.namespaces.exclude "team-secret"' });
    expect(p.decide("shop", "db-0")).toEqual({ enroll: false, reason: 'pod shop/db-0 matches agent.enrollment.pods.exclude "shop/db-*"' });
    expect(p.decide("team-a", "debug").enroll).toBe(false);
    expect(p.decide("default", "probe-1")).toEqual({ enroll: true, reason: 'pod default/probe-1 matches agent.enrollment.pods.include "default/probe-*"' });
    expect(p.decide("default", "web")).toEqual({ enroll: false, reason: "no agent.enrollment include pattern matches pod default/web" });
    expect(p.empty).toBe(false);
  });

  test("an exclude of the namespace beats a pod include", () => {
    const p = policy({ namespaces: { exclude: ["kube-system"] }, pods: { include: ["kube-system/coredns-*"] } });
    expect(p.decide("kube-system", "coredns-1").enroll).toBe(false);
  });

  test("defaults enroll nothing", () => {
    const p = policy({});
    expect(p.empty).toBe(true);
    expect(p.decide("default", "x").enroll).toBe(false);
  });
});

describe("enrollment config errors", () => {
  test("unknown keys and wrong types are named by key path", () => {
    expect(configError(() => policy({ namespace: { include: ["a"] } }))).toContain('agent.enrollment: unknown key "namespace"');
    expect(configError(() => policy({ namespaces: { include: "team-a" } }))).toContain("agent.enrollment.namespaces.include: Invalid input: expected array, received string");
    expect(configError(() => policy({ pods: { exclude: [3] } }))).toContain("agent.enrollment.pods.exclude.0: Invalid input: expected string, received number");
    expect(configError(() => policy({ pods: { include: [""] } }))).toContain("agent.enrollment.pods.include.0");
  });

  test("pattern errors name the list entry", () => {
    expect(configError(() => policy({ pods: { include: ["ok/x", "web-*"] } }))).toBe(
      'agent.enrollment.pods.include[1]: a pod pattern is "<namespace>/<name>" with exactly one \'/\', found 0 (pattern "web-*")',
    );
    expect(configError(() => policy({ namespaces: { exclude: ["Prod"] } }))).toContain('agent.enrollment.namespaces.exclude[0]: character "P"');
  });
});

describe("nshub agent with a bad config file exits non-zero with a precise message", () => {
  const dir = mkdtempSync(join(tmpdir(), "nshub-agent-config-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function agentWith(yaml: string, extra: string[] = []): Promise<{ code: number; stderr: string; stdout: string }> {
    const file = join(dir, `c${Math.random().toString(16).slice(2)}.yaml`);
    writeFileSync(file, yaml);
    const p = Bun.spawn([process.execPath, "src/main.ts", "agent", "--config", file, ...extra], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NSHUB_CONFIG: undefined } });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, stderr: stderr.replace(file, "<file>"), stdout };
  }

  test("unknown key", async () => {
    const r = await agentWith("agent:\n  zdsSockett: /tmp/x.sock\n");
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('nshub agent: config <file>: agent: unknown key "zdsSockett"');
  });

  test("wrong type", async () => {
    const r = await agentWith("agent:\n  dnsCapture: maybe\n  apiSocketMode: 999\n");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("agent.dnsCapture: Invalid input: expected boolean, received string");
    expect(r.stderr).toContain("agent.apiSocketMode");
  });

  test("bad enrollment pattern", async () => {
    const r = await agentWith("agent:\n  enrollment:\n    pods:\n      include: [\"web\"]\n");
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('nshub agent: agent.enrollment.pods.include[0]: a pod pattern is "<namespace>/<name>" with exactly one \'/\', found 0 (pattern "web")');
  });

  test("not YAML, missing file, unknown flag", async () => {
    expect((await agentWith("agent: [\n")).stderr).toContain("not valid YAML");
    const p = Bun.spawn([process.execPath, "src/main.ts", "agent", "--config", join(dir, "missing.yaml")], { stdout: "pipe", stderr: "pipe" });
    expect(await p.exited).toBe(2);
    expect(await new Response(p.stderr).text()).toContain("missing.yaml: no such file");
    const q = await agentWith("{}\n", ["--bogus"]);
    expect(q.code).toBe(2);
    expect(q.stderr).toContain("--bogus");
  });
});
