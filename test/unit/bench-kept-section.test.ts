// docs/BENCHMARKS.md is regenerated whole by scripts/bench; the section scripts/bench-identity.ts
// measured (between KEPT_SECTION's markers) must survive that (scripts/bench-lib/report.ts).
import { expect, test } from "bun:test";
import { carryOverKept, KEPT_SECTION } from "../../scripts/bench-lib/report.ts";

const kept = `${KEPT_SECTION.begin}\n## Workload certificates\n\nnumbers\n${KEPT_SECTION.end}`;

test("the kept section of the old page goes back before ## Method of the new one", () => {
  const old = `# nshub benchmarks\n\nold results\n\n${kept}\n\n## Method\n\nold method\n`;
  const fresh = "# nshub benchmarks\n\nnew results\n\n## Method\n\nnew method\n";
  expect(carryOverKept(old, fresh)).toBe(`# nshub benchmarks\n\nnew results\n\n${kept}\n\n## Method\n\nnew method\n`);
});

test("nothing to keep, no old page, or a page that has it already: unchanged", () => {
  const fresh = "# p\n\n## Method\n";
  expect(carryOverKept(undefined, fresh)).toBe(fresh);
  expect(carryOverKept("# old\n", fresh)).toBe(fresh);
  const already = `# p\n\n${kept}\n\n## Method\n`;
  expect(carryOverKept(`${kept}`, already)).toBe(already);
  expect(carryOverKept(`# old\n${kept}`, "# no method\n")).toBe(`# no method\n\n${kept}\n\n`);
});
