// What the config tests share: a scratch folder of YAML files removed after the file's tests,
// and the error a call throws.
import { afterAll } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A scratch folder for this test file; `yamlFile(text)` writes the next numbered file in it. */
export function scratchConfigDir(prefix: string): { dir: string; yamlFile: (text: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  return {
    dir,
    yamlFile: (text) => {
      const p = join(dir, `c${++n}.yaml`);
      writeFileSync(p, text);
      return p;
    },
  };
}

/** The error `f` throws; fails the test when it throws none. */
export function errorOf(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error");
}
