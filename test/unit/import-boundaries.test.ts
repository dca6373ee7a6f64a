// The import rules of ARCHITECTURE.md ("Folders and what each may import"), checked on every
// import in src/: static `import`/`export … from`, `import type`, and dynamic `import("…")`.
// Each top-level folder of src/ names the folders it may import; a folder missing from the
// table fails the test, so a new concept has to be placed in the layering when it is created.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const SRC = resolve(import.meta.dir, "../../src");

/** What each top-level folder of src/ may import from the rest of src/ (itself always). */
export const ALLOWED: Record<string, readonly string[]> = {
  // leaves
  types: [],
  util: [],
  gen: [],
  log: ["util"],
  config: ["util"],
  // the only code that touches bun:ffi, below everything else
  sys: ["util", "types"],
  // shared building blocks, used by the daemons; never by each other upward
  zds: ["gen", "sys", "util", "log"],
  admin: ["log", "config", "util", "sys", "types"],
  identity: ["gen", "sys", "util", "log", "config", "k8s"],
  registry: ["identity", "util", "log", "config", "k8s"],
  policy: ["identity", "registry", "util", "log", "config", "k8s"],
  hbone: ["identity", "registry", "policy", "sys", "util", "log", "config"],
  k8s: ["util", "log", "config"],
  // the processes: agent and proxy never import each other
  agent: ["admin", "config", "gen", "log", "sys", "util", "zds", "registry", "identity", "policy", "k8s", "types"],
  proxy: ["admin", "config", "gen", "log", "sys", "util", "zds", "registry", "identity", "policy", "hbone", "k8s", "types"],
  cni: ["config", "log", "util", "gen"],
  // the test and demo harness runs the binary; it does not link the daemons in
  sim: ["util", "log", "sys", "types"],
  // operator commands talk to the daemons over their APIs (the agent's client and view types)
  cli: ["admin", "agent", "config", "gen", "log", "sys", "util", "identity", "registry", "policy", "types"],
  demo: ["sim", "cli", "admin", "config", "log", "sys", "util", "types"],
};

/** Imports of bun:ffi are allowed only here. */
const FFI_FOLDER = "sys";

export interface Violation {
  file: string;
  imports: string;
  why: string;
}

const IMPORT_RE = /(?:^|[\s;])(?:import|export)\s[^;]*?from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)|^\s*import\s*["']([^"']+)["']/gm;

/** The module specifiers a source text imports (comments are not imports). */
export function importsOf(text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const out: string[] = [];
  for (const m of code.matchAll(IMPORT_RE)) out.push(m[1] ?? m[2] ?? m[3]!);
  return out;
}

/** The top-level folder of src/ a path lies in ("" for src/main.ts and other root files). */
function folderOf(srcRelative: string): string {
  const parts = srcRelative.split("/");
  return parts.length > 1 ? parts[0]! : "";
}

/** Checks one file (path relative to src/) against the table. */
export function check(file: string, text: string, allowed = ALLOWED): Violation[] {
  const from = folderOf(file);
  const out: Violation[] = [];
  if (from !== "" && !(from in allowed)) out.push({ file, imports: "-", why: `src/${from}/ is not in the import table: add it to ARCHITECTURE.md and ALLOWED` });
  for (const spec of importsOf(text)) {
    if (spec === "bun:ffi") {
      if (from !== FFI_FOLDER) out.push({ file, imports: spec, why: `only src/${FFI_FOLDER}/ may import bun:ffi` });
      continue;
    }
    if (!spec.startsWith(".")) continue; // packages and node: built-ins
    const target = relative(SRC, resolve(SRC, dirname(file), spec));
    if (target.startsWith("..")) continue; // package.json, zig-out/libnshub.so: outside src/
    const to = folderOf(target);
    if (from === "" || to === from) continue; // the dispatcher may load every command
    if (to === "") {
      out.push({ file, imports: spec, why: `src/${from}/ imports src/${target}, the dispatcher` });
      continue;
    }
    const ok = allowed[from]?.includes(to) ?? false;
    if (!ok) out.push({ file, imports: spec, why: `src/${from}/ may not import src/${to}/` });
  }
  return out;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (/\.(ts|tsx|js|mjs)$/.test(name)) out.push(p);
  }
  return out;
}

describe("import boundaries (ARCHITECTURE.md)", () => {
  test("every import in src/ crosses only allowed boundaries", () => {
    const files = sourceFiles(SRC);
    expect(files.length).toBeGreaterThan(50);
    const violations = files.flatMap((p) => check(relative(SRC, p), readFileSync(p, "utf8")));
    expect(violations).toEqual([]);
  });

  test("the table keeps the promised rules", () => {
    expect(ALLOWED.sys).not.toContainAnyValues(Object.keys(ALLOWED).filter((f) => !["util", "types"].includes(f)));
    expect(ALLOWED.proxy).not.toContain("agent");
    expect(ALLOWED.agent).not.toContain("proxy");
    expect(ALLOWED.admin).not.toContainAnyValues(["agent", "proxy"]);
  });

  // The checker itself must be able to fail: each of these is a real kind of mistake.
  test.each([
    ["sys/netns.ts", 'import { Agent } from "../agent/agent.ts";', "src/sys/ may not import src/agent/"],
    ["proxy/pod.ts", 'import type { PodEntry } from "../agent/pod-entry.ts";', "src/proxy/ may not import src/agent/"],
    ["agent/x.ts", 'export { Relay } from "../proxy/relay.ts";', "src/agent/ may not import src/proxy/"],
    ["admin/x.ts", 'const m = await import("../proxy/main.ts");', "src/admin/ may not import src/proxy/"],
    ["admin/x.ts", 'import {\n  fmt,\n} from "../proxy/records.ts";', "src/admin/ may not import src/proxy/"],
    ["proxy/x.ts", 'import { dlopen } from "bun:ffi";', "only src/sys/ may import bun:ffi"],
    ["newthing/x.ts", 'import { a } from "../util/a.ts";', "src/newthing/ is not in the import table"],
    ["zds/x.ts", 'import { main } from "../main.ts";', "the dispatcher"],
  ])("%s with %j is refused", (file, text, why) => {
    const v = check(file, text);
    expect(v.length).toBeGreaterThan(0);
    expect(v.map((x) => x.why).join("\n")).toContain(why);
  });

  test.each([
    ["proxy/x.ts", '// import { Agent } from "../agent/agent.ts";\nimport { sys } from "../sys/index.ts";'],
    ["sys/lib.ts", 'import { dlopen } from "bun:ffi";\nimport lib from "../../zig-out/libnshub.so" with { type: "file" };'],
    ["main.ts", 'const m = () => import("./proxy/main.ts");'],
  ])("%s with %j is allowed", (file, text) => {
    expect(check(file, text)).toEqual([]);
  });
});
