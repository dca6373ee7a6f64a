// Settings that contradict each other, or the in-pod rules, are errors naming every key involved
// (and where each value came from when they differ), before any daemon starts.
import { describe, expect, test } from "bun:test";
import * as rules from "../../src/agent/rules/constants.ts";
import { ConfigError, configWarnings, loadConfig } from "../../src/config/load.ts";
import { errorOf, scratchConfigDir } from "../helpers/config-files.ts";

const { yamlFile } = scratchConfigDir("nshub-config-validate-");
/** The error of loading `yaml` (and `env`), without the "config <file>: " prefix. */
function problem(yaml: string, env: Record<string, string> = {}): string {
  const file = yamlFile(yaml);
  const err = errorOf(() => loadConfig({ file, env }));
  expect(err).toBeInstanceOf(ConfigError);
  return err.message.replace(`config ${file}: `, "");
}

describe("the proxy's in-pod ports", () => {
  test("outboundPort == inboundPort names both keys", () => {
    expect(problem("proxy:\n  outboundPort: 15006\n")).toBe("proxy.outboundPort and proxy.inboundPort (default) must differ (both 15006)");
    expect(problem("proxy:\n  outboundPort: 2000\n  inboundPort: 2000\n")).toBe("proxy.outboundPort and proxy.inboundPort must differ (both 2000)");
  });

  test.each([
    ["outboundPort", 15008, "HBONE"],
    ["inboundPort", 15008, "HBONE"],
    ["outboundPort", 15053, "DNS"],
    ["inboundPort", 15053, "DNS"],
  ])("proxy.%s: %d is reserved for %s", (key, port, what) => {
    expect(problem(`proxy:\n  ${key}: ${port}\n`)).toBe(`proxy.${key} is ${port}, which every pod keeps for ${what} (reserved: 15008 HBONE, 15053 DNS)`);
  });

  test("the keys' sources are named when they differ", () => {
    const file = yamlFile("proxy:\n  inboundPort: 2000\n");
    const err = errorOf(() => loadConfig({ file, env: { NSHUB_PROXY_OUTBOUND_PORT: "2000" } }));
    expect(err.message).toBe(`NSHUB_PROXY_OUTBOUND_PORT=2000: proxy.outboundPort and proxy.inboundPort (config ${file}) must differ (both 2000)`);
    const dflt = errorOf(() => loadConfig({ file: "/dev/null", env: { NSHUB_PROXY_OUTBOUND_PORT: "15006" } }));
    expect(dflt.message).toBe("NSHUB_PROXY_OUTBOUND_PORT=15006: proxy.outboundPort and proxy.inboundPort (default) must differ (both 15006)");
    const flag = errorOf(() => loadConfig({ file: "/dev/null", env: {}, overrides: { proxy: { inboundPort: 15001 } } }));
    expect(flag.message).toBe("command line: proxy.outboundPort (default) and proxy.inboundPort must differ (both 15001)");
  });
});

describe("ports the agent's rules do not redirect to", () => {
  test("are valid, but the proxy warns at startup (the rules have no setting for them)", () => {
    const c = loadConfig({ file: yamlFile("proxy:\n  outboundPort: 16001\n"), env: {} });
    expect(configWarnings(c, "proxy")).toEqual([
      "proxy.outboundPort is 16001, but the agent's in-pod rules redirect outbound traffic to 15001 (they have no setting for it): pods' traffic will not reach these listeners",
    ]);
    expect(configWarnings(c, "agent")).toEqual([]);
    expect(configWarnings(loadConfig({ file: "/dev/null", env: {} }), "proxy")).toEqual([]);
  });
});

describe("the proxy's mark", () => {
  test.each([
    ["0", "proxy.mark: must be non-zero: the in-pod rules tell the proxy's sockets by it"],
    ["0x1000", "proxy.mark: 0x1000 has bits outside the in-pod rules' mark mask 0xfff"],
    ["0x10539", "proxy.mark: 0x10539 has bits outside the in-pod rules' mark mask 0xfff"],
    [
      "0x600",
      "proxy.mark: must be 0x539 (1337), not 0x600: the agent's in-pod rules let through only sockets marked 0x539/0xfff (they have no setting for it), so the proxy's own connections would be redirected back to it",
    ],
  ])("mark: %s is an error", (mark, message) => {
    expect(problem(`proxy:\n  mark: ${mark}\n`)).toBe(message);
  });

  test("0x539 (1337, the default) is accepted in any form", () => {
    expect(loadConfig({ file: yamlFile("proxy:\n  mark: 1337\n"), env: { NSHUB_PROXY_MARK: "0x539" } }).proxy.mark).toBe(0x539);
  });
});

describe("addresses", () => {
  test.each([
    ["nope", "proxy.adminAddress: expected host:port, e.g. 127.0.0.1:15000 (got \"nope\")"],
    ["127.0.0.1:0", "proxy.adminAddress: port 0 is not in 1-65535 (got \"127.0.0.1:0\")"],
    ["127.0.0.1:70000", "proxy.adminAddress: port 70000 is not in 1-65535 (got \"127.0.0.1:70000\")"],
    ["999.1.1.1:15000", "proxy.adminAddress: \"999.1.1.1\" is not an IPv4 address (got \"999.1.1.1:15000\")"],
    ["[::g]:15000", "proxy.adminAddress: \"::g\" is not an IPv6 address (got \"[::g]:15000\")"],
    ["::1:15000", "proxy.adminAddress: an IPv6 address is written in brackets, e.g. [::1]:15000 (got \"::1:15000\")"],
    ["under_score.example:15000", "proxy.adminAddress: \"under_score.example\" is not a valid hostname (got \"under_score.example:15000\")"],
    ["-bad.example:15000", "proxy.adminAddress: \"-bad.example\" is not a valid hostname (got \"-bad.example:15000\")"],
  ])("adminAddress: %s is an error", (addr, message) => {
    expect(problem(`proxy:\n  adminAddress: "${addr}"\n`)).toBe(message);
  });

  test.each(["127.0.0.1:15000", "[::1]:15000", "[::]:15000", "localhost:15000", "node-1.example.com:15000", "0.0.0.0:1", "127.0.0.1:65535"])("adminAddress: %s is fine", (addr) => {
    expect(loadConfig({ file: yamlFile(`proxy:\n  adminAddress: "${addr}"\n`), env: {} }).proxy.adminAddress).toBe(addr);
  });

  test("agent.adminAddress is checked the same way", () => {
    expect(problem("agent:\n  adminAddress: 127.0.0.1:99999\n")).toBe('agent.adminAddress: port 99999 is not in 1-65535 (got "127.0.0.1:99999")');
  });

  test.each([
    ["probe.example", 'agent.probeSnatAddress: "probe.example" is not an IPv4 address'],
    ["169.254.7", 'agent.probeSnatAddress: "169.254.7" is not an IPv4 address'],
    ["fd16::1", 'agent.probeSnatAddress: "fd16::1" is not an IPv4 address'],
  ])("probeSnatAddress: %s is an error", (addr, message) => {
    expect(problem(`agent:\n  probeSnatAddress: "${addr}"\n`)).toBe(message);
  });

  test.each([
    ["adminAddress: 127.0.0.1:15020", "proxy.adminAddress and proxy.metricsAddress (default) must differ (both can take 127.0.0.1:15020 and 0.0.0.0:15020)"],
    ["readinessAddress: 0.0.0.0:15020", "proxy.metricsAddress (default) and proxy.readinessAddress must differ (both can take 0.0.0.0:15020 and 0.0.0.0:15020)"],
    ["readinessAddress: \"[::]:15020\"", "proxy.metricsAddress (default) and proxy.readinessAddress must differ (both can take 0.0.0.0:15020 and [::]:15020)"],
  ])("proxy %s overlaps another of its servers", (line, message) => {
    expect(problem(`proxy:\n  ${line}\n`)).toBe(message);
  });

  test("different ports, or different addresses of one family, do not overlap", () => {
    const c = loadConfig({ file: yamlFile("proxy:\n  adminAddress: 127.0.0.1:15020\n  metricsAddress: 127.0.0.2:15020\n  readinessAddress: \"[::1]:15020\"\n"), env: {} });
    expect(c.proxy.readinessAddress).toBe("[::1]:15020");
  });
});

describe("the agent's files", () => {
  test("zdsSocket and apiSocket must differ, however the paths are written", () => {
    expect(problem("agent:\n  zdsSocket: /run/nshub/x.sock\n  apiSocket: /run/nshub/./x.sock\n")).toBe("agent.zdsSocket and agent.apiSocket must be different files (both /run/nshub/x.sock)");
  });

  test("the state file is neither socket", () => {
    expect(problem("agent:\n  stateFile: /var/run/nshub/agent.sock\n")).toBe("agent.apiSocket (default) and agent.stateFile must be different files (both /var/run/nshub/agent.sock)");
    expect(problem("proxy:\n  adminSocket: /var/run/nshub/zds.sock\n")).toBe("agent.zdsSocket (default) and proxy.adminSocket must be different files (both /var/run/nshub/zds.sock)");
  });
});

describe("the defaults", () => {
  test("pass every check, and agree with the in-pod rules' constants", () => {
    const c = loadConfig({ file: "/dev/null", env: {} });
    expect(c.proxy.mark).toBe(rules.DEFAULT_SOCKET_MARK);
    expect(c.proxy.mark & ~rules.DEFAULT_MARK_MASK).toBe(0);
    expect([c.proxy.outboundPort, c.proxy.inboundPort]).toEqual([rules.DEFAULT_OUTBOUND_PORT, rules.DEFAULT_INBOUND_PORT]);
    expect(c.agent.probeSnatAddress).toBe(rules.DEFAULT_PROBE_ADDRESS_V4);
    const reserved = problem(`proxy:\n  outboundPort: ${rules.DEFAULT_HBONE_PORT}\n`) + problem(`proxy:\n  inboundPort: ${rules.DEFAULT_DNS_PORT}\n`);
    expect(reserved).toContain(`${rules.DEFAULT_HBONE_PORT} HBONE, ${rules.DEFAULT_DNS_PORT} DNS`);
  });
});
