// The policy file source: loads a file or folder, reloads within a second of a change, refuses a
// reload with a bad document (logged with file, line, document and field) and keeps the last good
// set in force.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Fields, Logger } from "../../src/log/logger.ts";
import { PolicySet } from "../../src/policy/engine.ts";
import { PolicyFileSource } from "../../src/policy/file-source.ts";
import type { LoadError, PolicyDocuments } from "../../src/policy/load.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-policy-src-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string, f?: Fields) => void lines.push(`${level} ${msg} ${JSON.stringify(f ?? {})}`);
  const l = { lines, enabled: () => true, trace: at("trace"), debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: () => l };
  return l;
}

const policy = (name: string, namespaces: string[]) => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ${name}, namespace: foo}
spec:
  rules:
  - from:
    - source:
        namespaces: ${JSON.stringify(namespaces)}
`;

const W = { namespace: "foo", name: "httpbin", labels: {} };
const from = (ns: string) => ({ sourcePrincipal: `spiffe://cluster.local/ns/${ns}/sa/x`, destination: W, destinationPort: 80, mtls: true });

let sources: PolicyFileSource[] = [];
afterEach(() => {
  for (const s of sources) s.close();
  sources = [];
});

/** A started source with its updates, errors and log; `set` is the PolicySet the last good update built. */
function start(path: string) {
  const h = {
    updates: [] as PolicyDocuments[],
    errors: [] as LoadError[][],
    log: captureLogger(),
    set: PolicySet.empty(),
    first: [] as LoadError[],
    source: undefined as unknown as PolicyFileSource,
  };
  h.source = new PolicyFileSource({
    path,
    debounceMs: 50,
    resyncMs: 0,
    log: h.log,
    onUpdate: (docs) => {
      h.updates.push(docs);
      h.set = new PolicySet(docs);
    },
    onError: (e) => h.errors.push(e),
  });
  sources.push(h.source);
  h.first = h.source.start();
  return h;
}

async function until(what: () => boolean, ms = 1000): Promise<number> {
  const t0 = performance.now();
  while (!what()) {
    if (performance.now() - t0 > ms) throw new Error(`not within ${ms} ms`);
    await Bun.sleep(10);
  }
  return performance.now() - t0;
}

describe("a policy file", () => {
  test("loads at start and reloads within a second of a change", async () => {
    const file = join(dir, "one.yaml");
    writeFileSync(file, policy("allow", ["bar"]));
    const h = start(file);
    expect(h.first).toEqual([]);
    expect(h.updates).toHaveLength(1);
    expect(h.set.decide(from("bar")).allowed).toBe(true);
    expect(h.set.decide(from("baz")).allowed).toBe(false);
    writeFileSync(file, policy("allow", ["baz"]));
    const took = await until(() => h.updates.length === 2);
    expect(took).toBeLessThan(1000);
    expect(h.set.decide(from("bar")).allowed).toBe(false);
    expect(h.set.decide(from("baz")).allowed).toBe(true);
  });

  test("a bad document is refused with file, line, document and field; the last good set stays", async () => {
    const file = join(dir, "two.yaml");
    writeFileSync(file, policy("allow", ["bar"]));
    const h = start(file);
    writeFileSync(file, `${policy("allow", ["bar"])}---\n${policy("other", ["baz"]).replace("namespaces:", "namespace:")}`);
    await until(() => h.errors.length === 1);
    expect(h.updates).toHaveLength(1);
    const e = h.errors[0]![0]!;
    expect({ file: e.file, document: e.document, line: e.line, path: e.path, message: e.message }).toEqual({ file, document: 2, line: 17, path: "spec.rules[0].from[0].source.namespace", message: 'unknown field "namespace"' });
    const logged = h.log.lines.filter((l) => l.startsWith("error ")).join("\n");
    expect(logged).toContain(`${file}:17 (document 2) AuthorizationPolicy foo/other: spec.rules[0].from[0].source.namespace: unknown field "namespace"`);
    expect(logged).toContain("policy reload refused: the previous policies stay in force");
    // the policy set in force is still the first one
    expect(h.set.decide(from("bar")).allowed).toBe(true);
    // fixed: applies again
    writeFileSync(file, `${policy("allow", ["bar"])}---\n${policy("other", ["baz"])}`);
    await until(() => h.updates.length === 2);
    expect(h.set.decide(from("baz")).allowed).toBe(true);
  });

  test("an editor's replace (write a temp file, rename over) is seen", async () => {
    const file = join(dir, "three.yaml");
    writeFileSync(file, policy("allow", ["bar"]));
    const h = start(file);
    writeFileSync(`${file}.tmp`, policy("allow", ["qux"]));
    renameSync(`${file}.tmp`, file);
    await until(() => h.updates.length === 2);
    expect(h.set.decide(from("qux")).allowed).toBe(true);
  });

  test("an unchanged file (touched) is not re-applied", async () => {
    const file = join(dir, "four.yaml");
    writeFileSync(file, policy("allow", ["bar"]));
    const h = start(file);
    const now = new Date();
    utimesSync(file, now, now);
    writeFileSync(file, policy("allow", ["bar"]));
    await until(() => h.source.reloads >= 2);
    await Bun.sleep(100);
    expect(h.updates).toHaveLength(1);
  });

  test("a bad file at start: nothing is emitted and the errors are returned", () => {
    const file = join(dir, "five.yaml");
    writeFileSync(file, policy("allow", ["bar"]).replace("AuthorizationPolicy", "AuthorizationPolicy\nspec: 1"));
    const h = start(file);
    expect(h.updates).toHaveLength(0);
    expect(h.source.loaded).toBe(false);
    expect(h.first.length).toBeGreaterThan(0);
    expect(h.log.lines.some((l) => l.startsWith("error policies not loaded"))).toBe(true);
  });
});

describe("a policy folder", () => {
  test("a new file and a removed file both reload", async () => {
    const d = join(dir, "folder");
    mkdirSync(d);
    writeFileSync(join(d, "a.yaml"), policy("a", ["bar"]));
    const h = start(d);
    expect(h.set.policies.map((p) => p.ref.name)).toEqual(["a"]);
    writeFileSync(join(d, "b.yaml"), policy("b", ["baz"]));
    await until(() => h.updates.length === 2);
    expect(h.set.policies.map((p) => p.ref.name)).toEqual(["a", "b"]);
    rmSync(join(d, "a.yaml"));
    await until(() => h.updates.length === 3);
    expect(h.set.policies.map((p) => p.ref.name)).toEqual(["b"]);
  });

  test("a ConfigMap-style swap of the ..data symlink is seen", async () => {
    const d = join(dir, "configmap");
    mkdirSync(join(d, "..v1"), { recursive: true });
    writeFileSync(join(d, "..v1", "p.yaml"), policy("p", ["bar"]));
    Bun.spawnSync(["ln", "-s", "..v1", join(d, "..data")]);
    Bun.spawnSync(["ln", "-s", "..data/p.yaml", join(d, "p.yaml")]);
    const h = start(d);
    expect(h.set.decide(from("bar")).allowed).toBe(true);
    mkdirSync(join(d, "..v2"));
    writeFileSync(join(d, "..v2", "p.yaml"), policy("p", ["baz"]));
    Bun.spawnSync(["ln", "-s", "..v2", join(d, "..data_tmp")]);
    renameSync(join(d, "..data_tmp"), join(d, "..data"));
    await until(() => h.updates.length === 2);
    expect(h.set.decide(from("baz")).allowed).toBe(true);
  });
});
