// The config file is read with a size cap and checked to be text before YAML sees it: a binary
// given as --config (a 116 MB one cost 24 s of CPU in the YAML parser) must be refused at once,
// with a message naming the file and what is wrong with it.
import { describe, expect, test } from "bun:test";
import { closeSync, openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/config/load.ts";
import { errorOf, scratchConfigDir } from "../helpers/config-files.ts";

const { dir } = scratchConfigDir("nshub-config-file-");


/** A file of `bytes` bytes of binary-looking data (no NUL: the size check must catch it). */
function bigFile(name: string, bytes: number): string {
  const p = join(dir, name);
  const fd = openSync(p, "w");
  const chunk = Buffer.alloc(1024 * 1024, "\u00ff\u0001agent: [");
  for (let left = bytes; left > 0; left -= chunk.length) writeSync(fd, chunk, 0, Math.min(left, chunk.length));
  closeSync(fd);
  return p;
}

describe("config file size and content", () => {
  test("a file over 1 MiB is refused quickly, naming the file, its size and the limit", () => {
    const p = bigFile("big.bin", 8 * 1024 * 1024);
    const t0 = performance.now();
    const err = errorOf(() => loadConfig({ file: p, env: {} }));
    const ms = performance.now() - t0;
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`config ${p}: 8.0 MiB is over the 1 MiB limit for a config file (is it the right file?)`);
    expect(ms).toBeLessThan(200);
  });

  test("a file just under the limit is read", () => {
    const p = join(dir, "comments.yaml");
    writeFileSync(p, "# filler\n".repeat(Math.floor((1024 * 1024 - 100) / 9)) + "logLevel: warn\n");
    expect(loadConfig({ file: p, env: {} }).logLevel).toBe("warn");
  });

  test("a device or pipe without a size is cut off at the limit, not read forever", () => {
    const err = errorOf(() => loadConfig({ file: "/dev/zero", env: {} }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe("config /dev/zero: more than the 1 MiB limit for a config file (is it the right file?)");
    // /dev/null is empty: all defaults (tests use it as "no config").
    expect(loadConfig({ file: "/dev/null", env: {} }).logLevel).toBe("info");
  });

  test("a NUL byte means a binary file, with the offset", () => {
    const p = join(dir, "nul.yaml");
    writeFileSync(p, Buffer.concat([Buffer.from("logLevel: info\n"), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x00])]));
    const err = errorOf(() => loadConfig({ file: p, env: {} }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`config ${p}: not a text file (a NUL byte at offset 20)`);
  });

  test("text that is not UTF-8 is refused, with the offset of the first bad byte", () => {
    const p = join(dir, "latin1.yaml");
    writeFileSync(p, Buffer.concat([Buffer.from("logLevel: info\n# caf"), Buffer.from([0xe9]), Buffer.from("\n")]));
    const err = errorOf(() => loadConfig({ file: p, env: {} }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`config ${p}: not valid UTF-8 text (byte 0xe9 at offset 20)`);
    // A UTF-8 byte order mark is fine, and so is any valid UTF-8.
    const bom = join(dir, "bom.yaml");
    writeFileSync(bom, "\ufefflogLevel: debug # café ☕\n");
    expect(loadConfig({ file: bom, env: {} }).logLevel).toBe("debug");
  });

  test("a directory is a clear error", () => {
    const err = errorOf(() => loadConfig({ file: dir, env: {} }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`config ${dir}: is a directory, not a file`);
  });

  test("deeply nested flow collections are refused before YAML parses them; quoted and commented brackets do not count", () => {
    const p = join(dir, "nested.yaml");
    writeFileSync(p, "agent: " + "{".repeat(200_000) + "\n");
    const err = errorOf(() => loadConfig({ file: p, env: {} }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`config ${p}: [ and { nest 200000 deep, over the limit of 64 (is it the right file?)`);
    const ok = join(dir, "quoted.yaml");
    writeFileSync(ok, `# [[[[ ${"[".repeat(100)}\nagent:\n  zdsSocket: "/tmp/${"{".repeat(100)}"\n  apiSocket: '/tmp/${"[".repeat(100)}''x'\n  enrollment: { namespaces: { include: [a, "b]"] } }\n`);
    const cfg = loadConfig({ file: ok, env: {} });
    expect(cfg.agent.zdsSocket).toBe(`/tmp/${"{".repeat(100)}`);
    expect(cfg.agent.enrollment.namespaces.include).toEqual(["a", "b]"]);
  });
});
