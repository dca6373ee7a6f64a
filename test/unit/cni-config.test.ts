// The CNI plugin's configuration (src/cni/config.ts): its defaults are the schema's, the config
// loader (zod + yaml) is used exactly when it has something to read, and its errors reach the
// plugin unchanged.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CNI_DEFAULTS, CniConfigError, DEFAULT_CONFIG_FILE, loadCniConfig, needsConfigLoader } from "../../src/cni/config.ts";
import { runCni } from "../../src/cni/main.ts";
import { DEFAULT_CONFIG_FILE as LOADER_DEFAULT_FILE, envOverrides, loadConfig } from "../../src/config/load.ts";
import { cniSchema, configSchema } from "../../src/config/schema.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-cni-config-"));
const missing = join(dir, "no-such-config.yaml");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Would the real default file (/etc/nshub/config.yaml) be read on this machine? */
const machineHasConfig = existsSync(DEFAULT_CONFIG_FILE);

describe("defaults", () => {
  test("CNI_DEFAULTS equal cniSchema.parse({}) and loadConfig's cni section of an empty config", () => {
    expect({ ...CNI_DEFAULTS }).toEqual(cniSchema.parse({}));
    const empty = join(dir, "empty.yaml");
    writeFileSync(empty, "{}\n");
    expect({ ...CNI_DEFAULTS }).toEqual(loadConfig({ file: empty, env: {} }).cni);
  });

  test("the default config file is the loader's", () => {
    expect(DEFAULT_CONFIG_FILE).toBe(LOADER_DEFAULT_FILE);
  });
});

describe("when the config loader is used", () => {
  test("not without a file and without NSHUB_* variables", () => {
    expect(needsConfigLoader({}, missing)).toBe(false);
    expect(needsConfigLoader({ PATH: "/bin", CNI_COMMAND: "ADD", NSHUB_CONFIG: undefined }, missing)).toBe(false);
    // The logger's variable is not the config's.
    expect(envOverrides({ NSHUB_LOG_FORMAT: "text" })).toEqual({});
    expect(needsConfigLoader({ NSHUB_LOG_FORMAT: "text" }, missing)).toBe(false);
  });

  test("when the default file exists, or NSHUB_CONFIG names one (present or not)", () => {
    const file = join(dir, "present.yaml");
    writeFileSync(file, "cni: {}\n");
    expect(needsConfigLoader({}, file)).toBe(true);
    expect(needsConfigLoader({ NSHUB_CONFIG: missing }, missing)).toBe(true);
    expect(needsConfigLoader({ NSHUB_CONFIG: "" }, missing)).toBe(true);
  });

  test("for every variable envOverrides reads", () => {
    // Every scalar key of every section, as envOverrides names them.
    const snake = (k: string) => k.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
    const names: string[] = [];
    for (const [top, schema] of Object.entries(configSchema.shape)) {
      names.push(`NSHUB_${snake(top)}`);
      let inner: unknown = schema;
      for (let i = 0; i < 5 && inner && !(inner as { shape?: unknown }).shape; i++) {
        const def = (inner as { def?: { innerType?: unknown; in?: unknown } }).def;
        inner = def?.innerType ?? def?.in;
      }
      for (const key of Object.keys((inner as { shape?: Record<string, unknown> } | undefined)?.shape ?? {})) names.push(`NSHUB_${snake(top)}_${snake(key)}`);
    }
    const read = names.filter((n) => Object.keys(envOverrides({ [n]: "1" })).length > 0);
    expect(read).toContain("NSHUB_CNI_TIMEOUT_MS");
    expect(read).toContain("NSHUB_LOG_LEVEL");
    for (const n of read) expect(needsConfigLoader({ [n]: "1" }, missing)).toBe(true);
  });
});

describe("loadCniConfig", () => {
  test.skipIf(machineHasConfig)("no file, no variables: the defaults", async () => {
    expect(await loadCniConfig({})).toEqual({ ...CNI_DEFAULTS });
  });

  test("a file's cni section and NSHUB_CNI_* variables", async () => {
    const file = join(dir, "cni.yaml");
    writeFileSync(file, "cni:\n  timeoutMs: 1234\n  agentSocket: /run/x.sock\n");
    expect(await loadCniConfig({ NSHUB_CONFIG: file })).toEqual({ ...CNI_DEFAULTS, timeoutMs: 1234, agentSocket: "/run/x.sock" });
    expect(await loadCniConfig({ NSHUB_CONFIG: file, NSHUB_CNI_LOG_FILE: "stderr" })).toEqual({ agentSocket: "/run/x.sock", timeoutMs: 1234, logFile: "stderr" });
  });

  test("errors are loadConfig's, word for word", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "cni:\n  agentSockett: /x\n");
    const envs: Array<Record<string, string>> = [{ NSHUB_CONFIG: bad }, { NSHUB_CONFIG: missing }, { NSHUB_CONFIG: join(dir, "empty-ok.yaml"), NSHUB_CNI_TIMEOUT_MS: "soon" }];
    writeFileSync(join(dir, "empty-ok.yaml"), "{}\n");
    if (!machineHasConfig) envs.push({ NSHUB_CNI_TIMEOUT_MS: "-1" }, { NSHUB_LOG_LEVEL: "loud" });
    for (const env of envs) {
      let want = "";
      try {
        loadConfig({ env });
      } catch (e) {
        want = (e as Error).message;
      }
      expect(want).not.toBe("");
      const got = await loadCniConfig(env).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(got).toBeInstanceOf(CniConfigError);
      expect((got as Error).message).toBe(want);
    }
  });

  test.skipIf(machineHasConfig || existsSync(CNI_DEFAULTS.agentSocket))("runCni without any config file or variable uses the defaults", async () => {
    // No agentSocket in the netconf: the default socket (absent here) is what the plugin tries.
    let stdout = "";
    const conf = JSON.stringify({ cniVersion: "1.0.0", name: "n", type: "nshub-cni", logFile: "stderr", timeoutMs: 300, prevResult: { ips: [{ address: "10.0.0.5/24" }] } });
    const code = await runCni({
      env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: "abc", CNI_NETNS: "/proc/self/ns/net", CNI_IFNAME: "eth0", CNI_PATH: "/x", CNI_ARGS: "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=u" },
      stdin: async () => conf,
      stdout: async (t) => void (stdout += t),
      stderr: () => undefined,
    });
    expect(code).toBe(1);
    const out = JSON.parse(stdout) as { code: number; msg: string };
    expect(out.code).toBe(11);
    expect(out.msg).toStartWith(`pod a/b: cannot reach the nshub agent at ${CNI_DEFAULTS.agentSocket}: `);
  });
});
