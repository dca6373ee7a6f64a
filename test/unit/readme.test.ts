// The README documents every config key with its real default, so the two cannot drift apart.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { loadConfig } from "../../src/config/load.ts";

const readme = readFileSync(resolve(import.meta.dir, "../../README.md"), "utf8");

function leaves(o: Record<string, unknown>, prefix = ""): [string, unknown][] {
  return Object.entries(o).flatMap(([k, v]) => {
    const path = prefix ? `${prefix}.${k}` : k;
    return v && typeof v === "object" && !Array.isArray(v) ? leaves(v as Record<string, unknown>, path) : [[path, v] as [string, unknown]];
  });
}

test("every config key is in the README's table with its default", () => {
  const defaults = loadConfig({ file: "/dev/null", env: {} });
  for (const [key, value] of leaves(defaults)) {
    const row = readme.split("\n").find((l) => l.startsWith(`| \`${key}\` |`));
    expect(row, `README row for ${key}`).toBeDefined();
    const shown = key.endsWith("Mode") ? `0${(value as number).toString(8)}` : Array.isArray(value) ? JSON.stringify(value) : String(value);
    expect(row!, `default of ${key}`).toContain(`\`${shown}\``);
  }
});

test("the README names scripts/test as the test command and .ci/run runs it", () => {
  expect(readme).toContain("scripts/test");
  expect(readFileSync(resolve(import.meta.dir, "../../.ci/run"), "utf8")).toContain("scripts/test");
});
