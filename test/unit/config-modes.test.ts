// File modes (agent.zdsSocketMode, agent.apiSocketMode) mean what they say in every form people
// write them: YAML 1.2 reads an unquoted 0440 as decimal 440 (= 0o670, a group-writable socket),
// so the loader reads a mode's source text, where a leading 0 means octal.
import { describe, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, configWarnings, loadConfig, MODE_KEYS } from "../../src/config/load.ts";
import { ZdsServer } from "../../src/zds/server.ts";
import { errorOf, scratchConfigDir } from "../helpers/config-files.ts";

const { dir, yamlFile } = scratchConfigDir("nshub-config-modes-");
const oct = (m: number) => `0${m.toString(8).padStart(3, "0")}`;
const zdsMode = (line: string, env: Record<string, string> = {}) => loadConfig({ file: yamlFile(`agent:\n  zdsSocketMode: ${line}\n`), env }).agent.zdsSocketMode;

describe("file modes in the config file", () => {
  test.each([
    ["0600", "0600"],
    ["0440", "0440"],
    ["0660", "0660"],
    ["00600", "0600"],
    ['"0600"', "0600"],
    ["'0440'", "0440"],
    ['"600"', "0600"],
    ["0o600", "0600"],
    ["0o440", "0440"],
    ["384", "0600"],
    ["288", "0440"],
    ["0", "0000"],
    ["0x180", "0600"],
  ])("zdsSocketMode: %s is %s", (written, mode) => {
    expect(oct(zdsMode(written))).toBe(mode);
  });

  test("apiSocketMode reads the same way, in block and flow style", () => {
    const c = loadConfig({ file: yamlFile("agent: { apiSocketMode: 0640, zdsSocketMode: 0o600 }\n"), env: {} });
    expect([c.agent.apiSocketMode, c.agent.zdsSocketMode]).toEqual([0o640, 0o600]);
    const b = loadConfig({ file: yamlFile("agent:\n  apiSocketMode: 0640\n"), env: {} });
    expect(b.agent.apiSocketMode).toBe(0o640);
  });

  test("a leading 0 is octal only for modes: other numbers stay decimal", () => {
    const c = loadConfig({ file: yamlFile("proxy:\n  workers: 010\n"), env: {} });
    expect(c.proxy.workers).toBe(10);
  });

  test.each([
    ["0800", 'agent.zdsSocketMode: "0800" is not an octal file mode (write it like 0600, "0600" or 0o600)'],
    ["01000", 'agent.zdsSocketMode: "01000" is more than 0777 (write it like 0600, "0600" or 0o600)'],
    ["600", "agent.zdsSocketMode: 600 is more than 0777 (= 511; a number without a leading 0 is decimal: write octal as 0600)"],
    ['"384"', 'agent.zdsSocketMode: "384" is not an octal file mode (write it like 0600, "0600" or 0o600)'],
    ["-1", "agent.zdsSocketMode: -1 is not a file mode (a whole number from 0 to 0777)"],
    ["6.5", "agent.zdsSocketMode: 6.5 is not a file mode (a whole number from 0 to 0777)"],
    ["rw-------", 'agent.zdsSocketMode: "rw-------" is not an octal file mode (write it like 0600, "0600" or 0o600)'],
  ])("zdsSocketMode: %s is an error", (written, message) => {
    const err = errorOf(() => zdsMode(written));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toEndWith(message);
  });
});

describe("file modes from the environment and flags", () => {
  test.each([
    ["0600", "0600"],
    ["0440", "0440"],
    ["600", "0600"],
    ["0o660", "0660"],
  ])("NSHUB_AGENT_ZDS_SOCKET_MODE=%s is %s", (value, mode) => {
    expect(oct(loadConfig({ file: "/dev/null", env: { NSHUB_AGENT_ZDS_SOCKET_MODE: value } }).agent.zdsSocketMode)).toBe(mode);
    expect(oct(loadConfig({ file: "/dev/null", env: { NSHUB_AGENT_API_SOCKET_MODE: value } }).agent.apiSocketMode)).toBe(mode);
  });

  test("a flag's text (--zds-socket-mode 0640) is octal and beats the file and the environment", () => {
    const c = loadConfig({ file: yamlFile("agent:\n  zdsSocketMode: 0600\n"), env: { NSHUB_AGENT_ZDS_SOCKET_MODE: "0660" }, overrides: { agent: { zdsSocketMode: "0640" } } });
    expect(c.agent.zdsSocketMode).toBe(0o640);
  });
});

describe("the socket gets the mode that was written", () => {
  test("zdsSocketMode: 0440 makes an r--r----- socket, not rw-rwx--- (decimal 440)", async () => {
    const cfg = loadConfig({ file: yamlFile(`agent:\n  zdsSocket: ${join(dir, "run", "zds.sock")}\n  zdsSocketMode: 0440\n`), env: {} });
    const server = new ZdsServer({ path: cfg.agent.zdsSocket, socketMode: cfg.agent.zdsSocketMode, snapshot: () => [], log: () => undefined });
    server.start();
    try {
      expect((statSync(cfg.agent.zdsSocket).mode & 0o777).toString(8)).toBe("440");
    } finally {
      await server.stop();
    }
  });
});

describe("warnings for modes that grant group or others anything", () => {
  test("every mode key of the schema is read as a mode", () => {
    expect(MODE_KEYS.map((p) => p.join("."))).toEqual(["agent.zdsSocketMode", "agent.apiSocketMode"]);
  });

  test("the defaults warn about nothing", () => {
    expect(configWarnings(loadConfig({ file: "/dev/null", env: {} }), "agent")).toEqual([]);
  });

  test("each such mode is named with its key, in octal", () => {
    const c = loadConfig({ file: yamlFile("agent:\n  zdsSocketMode: 0440\n  apiSocketMode: 420\n"), env: {} });
    expect(configWarnings(c, "agent")).toEqual([
      "agent.zdsSocketMode is 0440 (r--r-----): it grants its group r-- on a socket meant for root alone (the default is 0600)",
      "agent.apiSocketMode is 0644 (rw-r--r--): it grants its group r-- and others r-- on a socket meant for root alone (the default is 0600)",
    ]);
    expect(configWarnings(loadConfig({ file: "/dev/null", env: { NSHUB_AGENT_ZDS_SOCKET_MODE: "0602" } }), "agent")).toEqual([
      "agent.zdsSocketMode is 0602 (rw-----w-): it grants others -w- on a socket meant for root alone (the default is 0600)",
    ]);
    expect(configWarnings(loadConfig({ file: "/dev/null", env: { NSHUB_AGENT_ZDS_SOCKET_MODE: "0400" } }), "agent")).toEqual([]);
  });
});
