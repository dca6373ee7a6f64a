// The compiled binary's front door: help, version, usage errors, and the nshub-cni name.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };

const BINARY = resolve(import.meta.dir, "../../dist/nshub");
const dir = mkdtempSync(join(tmpdir(), "nshub-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function run(argv: string[], bin = BINARY) {
  const p = Bun.spawn([bin, ...argv], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { stdout, stderr, code };
}

describe("dist/nshub dispatch", () => {
  test("--help lists every subcommand of the design and exits 0", async () => {
    const r = await run(["--help"]);
    expect(r.code).toBe(0);
    for (const cmd of ["agent", "proxy", "cni", "install", "uninstall", "status", "pods", "connections", "demo", "check"]) {
      expect(r.stdout).toMatch(new RegExp(`^  ${cmd}\\s`, "m"));
    }
  });

  test("--version prints the package version", async () => {
    const r = await run(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith(`nshub ${pkg.version} (bun `);
  });

  test("no command, an unknown command and an unknown flag are usage errors (exit 2)", async () => {
    expect((await run([])).code).toBe(2);
    const unknown = await run(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    expect(unknown.stderr).toContain("usage: nshub <command>");
    const flag = await run(["--frob"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("unknown option --frob");
    const subFlag = await run(["check", "--frob"]);
    expect(subFlag.code).toBe(2);
    expect(subFlag.stderr).toContain("Unknown option '--frob'");
  });

  test("invoked as nshub-cni (copy or symlink) it is the CNI plugin", async () => {
    const copy = join(dir, "nshub-cni");
    copyFileSync(BINARY, copy);
    const link = join(dir, "link", "nshub-cni");
    await Bun.write(join(dir, "link", ".keep"), "");
    symlinkSync(BINARY, link);
    for (const bin of [copy, link]) {
      // VERSION needs no pod and no agent: the plugin answers with the spec's version list,
      // or (while the plugin is not built) the dispatcher says "nshub cni".
      const r = await run([], bin);
      expect(r.stdout + r.stderr).toMatch(/cni|cniVersion/);
      expect(r.stderr).not.toContain("usage: nshub <command>");
    }
  });
});
