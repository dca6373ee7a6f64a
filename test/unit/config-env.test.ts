// Environment variables: every key of the config file, lists included, as NSHUB_<PATH> in upper
// snake case; an error names the variable (not the config file), an unknown NSHUB_* variable is
// an error (with a did-you-mean), and the NSHUB_* variables nshub uses for other things pass.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CHAIN_POSTRT, INPOD_CHAINS } from "../../src/agent/rules/constants.ts";
import { ConfigError, loadConfig } from "../../src/config/load.ts";
import { errorOf, scratchConfigDir } from "../helpers/config-files.ts";

const { dir } = scratchConfigDir("nshub-config-env-");
const empty = join(dir, "empty.yaml");
writeFileSync(empty, "{}\n");

const load = (env: Record<string, string | undefined>, file = empty) => loadConfig({ file, env });
const message = (env: Record<string, string | undefined>, file = empty) => {
  const err = errorOf(() => load(env, file));
  expect(err).toBeInstanceOf(ConfigError);
  return err.message;
};

describe("errors name the variable", () => {
  test("a value that is not a number blames NSHUB_PROXY_WORKERS, not the config file", () => {
    expect(message({ NSHUB_PROXY_WORKERS: "abc" })).toBe("NSHUB_PROXY_WORKERS=abc: expected a whole number (decimal, or hex as 0x…)");
  });

  test("a value the schema refuses is also the variable's", () => {
    expect(message({ NSHUB_PROXY_WORKERS: "100" })).toBe("NSHUB_PROXY_WORKERS=100: Too big: expected number to be <=64");
    expect(message({ NSHUB_LOG_LEVEL: "loud" })).toBe('NSHUB_LOG_LEVEL=loud: Invalid option: expected one of "trace"|"debug"|"info"|"warn"|"error"');
    expect(message({ NSHUB_AGENT_DNS_CAPTURE: "maybe" })).toBe("NSHUB_AGENT_DNS_CAPTURE=maybe: expected true or false (or 1 or 0)");
  });

  test("errors of the file and of the environment each name their own source", () => {
    const file = join(dir, "bad.yaml");
    writeFileSync(file, "proxy:\n  drainDeadlineMs: soon\n");
    expect(message({ NSHUB_PROXY_WORKERS: "abc" }, file)).toBe(
      `NSHUB_PROXY_WORKERS=abc: expected a whole number (decimal, or hex as 0x…); config ${file}: proxy.drainDeadlineMs: Invalid input: expected number, received string`,
    );
  });

  test("a flag's error is the command line's", () => {
    const err = errorOf(() => loadConfig({ file: empty, env: { NSHUB_PROXY_WORKERS: "3" }, overrides: { proxy: { workers: 0 } } }));
    expect(err.message).toBe("command line: proxy.workers: Too small: expected number to be >=1");
  });
});

describe("unknown NSHUB_* variables", () => {
  test.each([
    ["NSHUB_PROXY_BOGUS", "NSHUB_PROXY_BOGUS: not an nshub variable (config keys are NSHUB_<SECTION>_<KEY>: see the README's Configuration section)"],
    ["NSHUB_PROXY_WORKER", "NSHUB_PROXY_WORKER: not an nshub variable; did you mean NSHUB_PROXY_WORKERS?"],
    ["NSHUB_AGENT_ZDSSOCKETMODE", "NSHUB_AGENT_ZDSSOCKETMODE: not an nshub variable; did you mean NSHUB_AGENT_ZDS_SOCKET_MODE?"],
    ["NSHUB_PROXY_ADMINADDRESS", "NSHUB_PROXY_ADMINADDRESS: not an nshub variable; did you mean NSHUB_PROXY_ADMIN_ADDRESS?"],
    ["NSHUB_LOGLEVEL", "NSHUB_LOGLEVEL: not an nshub variable; did you mean NSHUB_LOG_LEVEL?"],
    ["NSHUB_LOG_FORMT", "NSHUB_LOG_FORMT: not an nshub variable; did you mean NSHUB_LOG_FORMAT?"],
    ["NSHUB_PROXY", "NSHUB_PROXY: not an nshub variable (config keys are NSHUB_<SECTION>_<KEY>: see the README's Configuration section)"],
  ])("%s=1 is an error", (name, want) => {
    expect(message({ [name]: "1" })).toBe(want);
  });

  test("the variables nshub reads for other things are not config keys and pass", () => {
    const env = {
      NSHUB_CONFIG: empty,
      NSHUB_LOG_FORMAT: "json",
      NSHUB_IPTABLES_BACKEND: "nft",
      NSHUB_SKIP_BUILD: "1",
      NSHUB_BENCH_REBUILD: "1",
      NSHUB_TEST_PROXY_BIN: "dist/nshub",
      NSHUB_PROXY_RELAY: "userspace",
    };
    expect(loadConfig({ env }).proxy.relay).toBe("userspace");
  });

  test("every NSHUB_* variable the tree reads or sets is a config key or one of those", () => {
    const repo = resolve(import.meta.dir, "../..");
    const files: string[] = [];
    const walk = (d: string) => {
      for (const name of readdirSync(d)) {
        if (["node_modules", ".git", "dist", "zig-out", "zig-cache", ".zig-cache"].includes(name)) continue;
        const p = join(d, name);
        if (statSync(p).isDirectory()) walk(p);
        else if (/\.(ts|md|ya?ml|service|sh)$|^[a-z-]+$/.test(name) && p !== import.meta.path) files.push(p);
      }
    };
    for (const d of ["src", "scripts", "test", "deploy", "docs", ".ci"]) if (statSync(join(repo, d), { throwIfNoEntry: false })?.isDirectory()) walk(join(repo, d));
    files.push(join(repo, "README.md"));
    // Uses of a variable: process.env.X, env.X, X= (shell, docs), ${X, X: (an env object), name: X.
    const use = /(?:process\.env\.|env\.|\$\{|name: )(NSHUB_[A-Z0-9_]*[A-Z0-9])|\b(NSHUB_[A-Z0-9_]*[A-Z0-9])(?:=|: ["'`$a-z{(])/g;
    const notEnv = new Set([...INPOD_CHAINS, CHAIN_POSTRT]);
    const seen = new Set<string>();
    for (const f of files) for (const m of readFileSync(f, "utf8").matchAll(use)) seen.add(m[1] ?? m[2]!);
    const names = [...seen].filter((n) => !notEnv.has(n)).sort();
    expect(names).toContain("NSHUB_LOG_FORMAT");
    expect(names).toContain("NSHUB_PROXY_RELAY");
    for (const name of names) {
      const got = errorOf(() => {
        load({ [name]: name === "NSHUB_CONFIG" ? empty : "x" });
        throw new Error("loaded");
      }).message;
      expect(got, name).not.toContain(`${name}: not an nshub variable`);
    }
  });
});

describe("lists from the environment", () => {
  test("NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE=ns1,ns2* is a list of two patterns", () => {
    const c = load({ NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE: "ns1,ns2*" });
    expect(c.agent.enrollment.namespaces.include).toEqual(["ns1", "ns2*"]);
  });

  test("every list key is settable; items are trimmed; empty is the empty list", () => {
    const c = load({
      NSHUB_AGENT_ENROLLMENT_NAMESPACES_EXCLUDE: " kube-system , nshub-* ",
      NSHUB_AGENT_ENROLLMENT_PODS_INCLUDE: "shop/web-*",
      NSHUB_AGENT_ENROLLMENT_PODS_EXCLUDE: "",
      NSHUB_AGENT_ZDS_ALLOWED_UIDS: "0,1337",
    });
    expect(c.agent.enrollment.namespaces.exclude).toEqual(["kube-system", "nshub-*"]);
    expect(c.agent.enrollment.pods).toEqual({ include: ["shop/web-*"], exclude: [] });
    expect(c.agent.zdsAllowedUids).toEqual([0, 1337]);
  });

  test("the environment's list replaces the file's", () => {
    const file = join(dir, "lists.yaml");
    writeFileSync(file, "agent:\n  enrollment:\n    namespaces:\n      include: [a, b]\n      exclude: [kube-system]\n");
    const c = load({ NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE: "c" }, file);
    expect(c.agent.enrollment.namespaces).toEqual({ include: ["c"], exclude: ["kube-system"] });
  });

  test("a bad item names the variable and the item", () => {
    expect(message({ NSHUB_AGENT_ZDS_ALLOWED_UIDS: "0,root" })).toBe('NSHUB_AGENT_ZDS_ALLOWED_UIDS=0,root: item 2 "root": expected a whole number (decimal, or hex as 0x…)');
    expect(message({ NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE: "a,,b" })).toBe("NSHUB_AGENT_ENROLLMENT_NAMESPACES_INCLUDE=a,,b: item 2: Too small: expected string to have >=1 characters");
  });
});

describe("precedence", () => {
  test("flags > environment > file > defaults, for scalars and lists", () => {
    const file = join(dir, "layers.yaml");
    writeFileSync(file, "logLevel: warn\nproxy:\n  workers: 3\n  drainDeadlineMs: 5\nagent:\n  enrollment:\n    pods:\n      include: [a/b]\n");
    const c = loadConfig({
      file,
      env: { NSHUB_PROXY_WORKERS: "4", NSHUB_PROXY_DRAIN_DEADLINE_MS: "6", NSHUB_AGENT_ENROLLMENT_PODS_INCLUDE: "c/d" },
      overrides: { proxy: { workers: 5 } },
    });
    expect([c.logLevel, c.proxy.workers, c.proxy.drainDeadlineMs, c.proxy.connectTimeoutMs]).toEqual(["warn", 5, 6, 10_000]);
    expect(c.agent.enrollment.pods.include).toEqual(["c/d"]);
  });
});
