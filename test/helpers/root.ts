// Root gating for netns tests (docs/TESTING.md, "Tiers").
//
// Tests that build network namespaces need root. Run by hand without root they are skipped with a
// printed message; under CI (`CI=true`) they must FAIL instead, so that CI can never go green by
// skipping the tests that matter.

import { describe, test } from "bun:test";

/** True when this process runs as uid 0. */
export const isRoot: boolean = process.getuid?.() === 0;

/** True when running under CI (`CI=true`, see docs/TESTING.md). */
export const isCI: boolean = process.env.CI === "true";

/** The message a root-only suite fails with under CI. */
export const ROOT_REQUIRED_MESSAGE = "netns tests need root; CI must run as root";

/** What a root-only suite should do in this process: run, skip (by hand) or fail (CI). */
export type RootMode = "run" | "skip" | "fail";

export function rootMode(root: boolean = isRoot, ci: boolean = isCI): RootMode {
  if (root) return "run";
  return ci ? "fail" : "skip";
}

/**
 * `describe` for root-only suites. As root it is plain `describe`. Without root it registers the
 * suite as skipped and prints why; under CI it instead registers one test that fails with
 * {@link ROOT_REQUIRED_MESSAGE}, so the run goes red.
 *
 *     netnsDescribe("virtual node", () => { beforeAll(...); test(...); });
 */
export function netnsDescribe(name: string, body: () => void): void {
  const mode = rootMode();
  if (mode === "run") {
    describe(name, body);
    return;
  }
  const uid = process.getuid?.() ?? "unknown";
  if (mode === "fail") {
    describe(name, () => {
      test("runs as root", () => {
        throw new Error(`${ROOT_REQUIRED_MESSAGE} (uid ${uid}, CI=true): "${name}" did not run`);
      });
    });
    return;
  }
  console.warn(
    `[skip] "${name}": ${ROOT_REQUIRED_MESSAGE.split(";")[0]} (uid ${uid}); ` +
      "run as root to execute them (with CI=true this would be a failure)",
  );
  describe.skip(name, body);
}

/**
 * For code outside `describe` (scripts, one-off tests): returns true when root tests may run,
 * false when they should be skipped (after printing why), and throws under CI without root.
 */
export function requireRoot(what: string): boolean {
  const mode = rootMode();
  if (mode === "run") return true;
  if (mode === "fail") throw new Error(`${ROOT_REQUIRED_MESSAGE}: ${what}`);
  console.warn(`[skip] ${what}: needs root (uid ${process.getuid?.() ?? "unknown"})`);
  return false;
}
