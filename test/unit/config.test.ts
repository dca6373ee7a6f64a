import { describe, expect, test, afterAll } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/config/load.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe("config loading", () => {
  test("an absent default file gives the documented defaults", () => {
    const c = loadConfig({ env: { NSHUB_CONFIG: undefined }, file: file("empty.yaml", "") });
    expect(c.agent.zdsSocket).toBe("/var/run/nshub/zds.sock");
    expect(c.agent.apiSocketMode).toBe(0o600);
    expect(c.agent.adminAddress).toBe("127.0.0.1:15010");
    expect(c.agent.probeSnatAddress).toBe("169.254.7.127");
    expect(c.agent.dnsCapture).toBe(false);
    expect(c.proxy.adminAddress).toBe("127.0.0.1:15000");
    expect(c.proxy.mark).toBe(0x539);
    expect([c.proxy.outboundPort, c.proxy.inboundPort]).toEqual([15001, 15006]);
    expect(c.proxy.maxQueuedBytes).toBe(256 * 1024);
    expect(c.cni.timeoutMs).toBe(5000);
  });

  test("flags beat environment, environment beats the file", () => {
    const p = file("layers.yaml", "proxy:\n  adminAddress: 127.0.0.1:1000\n  inboundPort: 2000\n  outboundPort: 3000\n");
    const c = loadConfig({
      file: p,
      env: { NSHUB_PROXY_INBOUND_PORT: "2001", NSHUB_PROXY_OUTBOUND_PORT: "3001", NSHUB_LOG_LEVEL: "debug" },
      overrides: { proxy: { outboundPort: 3002 } },
    });
    expect(c.proxy.adminAddress).toBe("127.0.0.1:1000");
    expect(c.proxy.inboundPort).toBe(2001);
    expect(c.proxy.outboundPort).toBe(3002);
    expect(c.logLevel).toBe("debug");
  });

  test("octal modes may be written as strings", () => {
    const c = loadConfig({ file: file("mode.yaml", 'agent:\n  zdsSocketMode: "0660"\n'), env: {} });
    expect(c.agent.zdsSocketMode).toBe(0o660);
  });

  test("unknown keys and wrong types are named with their path", () => {
    const p = file("bad.yaml", "agent:\n  zdsSocket: 3\n  frob: 1\nproxy:\n  mark: -1\n  adminAddress: nope\n");
    let err: Error | undefined;
    try { loadConfig({ file: p, env: {} }); } catch (e) { err = e as Error; }
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toContain(`config ${p}:`);
    expect(err!.message).toContain("agent.zdsSocket: Invalid input: expected string, received number");
    expect(err!.message).toContain('agent: unknown key "frob"');
    expect(err!.message).toContain("proxy.adminAddress: expected host:port");
    expect(err!.message).toContain("proxy.mark: -1 has bits outside the in-pod rules' mark mask 0xfff");
  });

  test("invalid YAML and a missing explicit file are clear errors", () => {
    expect(() => loadConfig({ file: file("broken.yaml", "agent: [\n"), env: {} })).toThrow(/not valid YAML/);
    expect(() => loadConfig({ file: file("list.yaml", "- a\n"), env: {} })).toThrow(/top level must be a mapping/);
    expect(() => loadConfig({ file: join(dir, "missing.yaml"), env: {} })).toThrow(/missing.yaml: no such file/);
  });
});
