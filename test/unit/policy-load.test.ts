// Policy YAML → Istio objects: several documents per file, List documents, other kinds skipped,
// and every refusal naming its file, line, document and field, with Istio's webhook checks.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatLoadError, loadPolicyPath, parsePolicyText } from "../../src/policy/load.ts";
import { parseCidr, parseIpText } from "../../src/policy/cidr.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-policy-load-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const AP = (name: string, spec: string, ns = "foo", version = "v1") => `apiVersion: security.istio.io/${version}
kind: AuthorizationPolicy
metadata:
  name: ${name}
  namespace: ${ns}
spec:
${spec}
`;

/** The one error of a text, formatted. */
function oneError(text: string): string {
  const r = parsePolicyText(text, "p.yaml");
  expect(r.errors).toHaveLength(1);
  return formatLoadError(r.errors[0]!);
}

describe("documents", () => {
  test("several documents, v1 and v1beta1, other kinds skipped with a note", () => {
    const text = [AP("a", "  rules: [{}]"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", AP("b", "  action: DENY\n  rules: [{}]", "bar", "v1beta1"), "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n", ""].join("---\n");
    const r = parsePolicyText(text, "p.yaml");
    expect(r.errors).toEqual([]);
    expect(r.authorizationPolicies.map((p) => `${p.object.metadata.namespace}/${p.object.metadata.name}@${p.origin.document}:${p.origin.line}`)).toEqual(["foo/a@1:1", "bar/b@3:13"]);
    expect(r.peerAuthentications.map((p) => p.object.metadata.name)).toEqual(["default"]);
    expect(r.notes).toEqual(["p.yaml:9 (document 2): skipped ConfigMap (v1): not an AuthorizationPolicy or PeerAuthentication of security.istio.io"]);
  });

  test("a kind: List (kubectl get -o yaml) is read item by item", () => {
    const r = parsePolicyText(`apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a, namespace: foo}\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: b, namespace: foo}\n  spec: {rules: [{to: [{operation: {ports: [80]}}]}]}\n`, "l.yaml");
    expect(r.authorizationPolicies.map((p) => p.object.metadata.name)).toEqual(["a"]);
    expect(r.errors.map(formatLoadError)).toEqual([
      `l.yaml:10 (document 1, items[1]) AuthorizationPolicy foo/b: spec.rules[0].to[0].operation.ports[0]: expected a string (Istio's API writes ports as strings too, e.g. "8080")`,
    ]);
  });

  test("null fields are absent, as Kubernetes reads them: `rules:` alone is no rules", () => {
    const r = parsePolicyText(AP("a", "  rules:\n  selector:"), "p.yaml");
    expect(r.errors).toEqual([]);
    expect(r.authorizationPolicies[0]!.object.spec).toEqual({});
  });

  test("a YAML syntax error names its line", () => {
    expect(oneError(`${AP("a", "  rules: [{}]")}\n---\nkind: [oops\n`)).toMatch(/^p\.yaml:11 \(document 2\): not valid YAML: /);
  });

  test("a document that is not a mapping, or has no kind", () => {
    expect(oneError("- a\n- b\n")).toBe("p.yaml:1 (document 1): expected a Kubernetes object (a mapping with apiVersion and kind)");
    expect(oneError("apiVersion: security.istio.io/v1\nmetadata: {name: a}\n")).toBe("p.yaml:1 (document 1): kind: required: every document is a Kubernetes object with apiVersion and kind");
  });

  test("an unknown apiVersion of the group is refused, not skipped", () => {
    expect(oneError(AP("a", "  rules: [{}]", "foo", "v1alpha1"))).toBe('p.yaml:1 (document 1) AuthorizationPolicy foo/a: apiVersion: expected one of "security.istio.io/v1", "security.istio.io/v1beta1"');
  });
});

describe("field errors name file, line, document and field path", () => {
  const cases: [string, string, string][] = [
    ["an unknown field (a typo must not widen a policy)", AP("a", "  rules:\n  - from:\n    - source:\n        principals: [a]\n        notPrincipal: [x]"), 'p.yaml:11 (document 1) AuthorizationPolicy foo/a: spec.rules[0].from[0].source.notPrincipal: unknown field "notPrincipal"'],
    ["a bad CIDR", AP("a", "  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/8, 10.0.0.300/8]"), "p.yaml:10 (document 1) AuthorizationPolicy foo/a: spec.rules[0].from[0].source.ipBlocks[1]: bad CIDR range (10.0.0.300/8): bad IP address (10.0.0.300): IPv4 field has value >255"],
    ["a bad port", AP("a", '  rules:\n  - to:\n    - operation:\n        ports: ["80", "http"]'), 'p.yaml:10 (document 1) AuthorizationPolicy foo/a: spec.rules[0].to[0].operation.ports[1]: bad port "http": a number from 0 to 65535'],
    ["an unknown action", AP("a", "  action: REJECT"), 'p.yaml:7 (document 1) AuthorizationPolicy foo/a: spec.action: expected one of "ALLOW", "DENY", "AUDIT", "CUSTOM"'],
    ["DENY without rules (Istio's webhook refuses it)", AP("a", "  action: DENY"), "p.yaml:6 (document 1) AuthorizationPolicy foo/a: spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"],
    ["an unknown when key", AP("a", "  rules:\n  - when:\n    - key: source.nmespace\n      values: [bar]"), "p.yaml:9 (document 1) AuthorizationPolicy foo/a: spec.rules[0].when[0].key: unknown attribute: source.nmespace"],
    ["a when with neither values nor notValues", AP("a", "  rules:\n  - when:\n    - key: source.ip"), "p.yaml:9 (document 1) AuthorizationPolicy foo/a: spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key source.ip"],
    ["an empty from.source", AP("a", "  rules:\n  - from:\n    - source: {}"), "p.yaml:9 (document 1) AuthorizationPolicy foo/a: spec.rules[0].from[0].source: `from.source` must not be empty"],
    ["serviceAccounts with namespaces", AP("a", "  rules:\n  - from:\n    - source: {serviceAccounts: [x], namespaces: [y]}"), "p.yaml:9 (document 1) AuthorizationPolicy foo/a: spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"],
    ["selector and targetRefs together", AP("a", "  selector: {matchLabels: {app: x}}\n  targetRefs: [{kind: Service, name: x}]"), "p.yaml:6 (document 1) AuthorizationPolicy foo/a: spec: only one of targetRefs or workloadSelector can be set"],
    ["a label value that is a number", AP("a", "  selector: {matchLabels: {version: 2}}"), "p.yaml:7 (document 1) AuthorizationPolicy foo/a: spec.selector.matchLabels.version: expected a string label value (quote numbers and booleans)"],
    ["no namespace", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n", "p.yaml:3 (document 1) AuthorizationPolicy a: metadata.namespace: required: a file has no current namespace to default to"],
    ["mesh-wide PeerAuthentication with port-level mTLS", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: istio-system}\nspec:\n  portLevelMtls:\n    8080: {mode: STRICT}\n", "p.yaml:5 (document 1) PeerAuthentication istio-system/d: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"],
    ["a bad mTLS mode", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: foo}\nspec: {mtls: {mode: strict}}\n", 'p.yaml:4 (document 1) PeerAuthentication foo/d: spec.mtls.mode: expected one of "UNSET", "DISABLE", "PERMISSIVE", "STRICT"'],
  ];
  for (const [name, text, want] of cases) test(name, () => expect(oneError(text)).toBe(want));
});

describe("files and folders", () => {
  test("a folder: every *.yaml/*.yml/*.json by name, dot-files skipped, symlinks followed", () => {
    const d = join(dir, "folder");
    mkdirSync(join(d, "..data"), { recursive: true });
    writeFileSync(join(d, "b.yaml"), AP("b", "  rules: [{}]"));
    writeFileSync(join(d, "a.yml"), AP("a", "  rules: [{}]"));
    writeFileSync(join(d, "c.json"), JSON.stringify({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name: "c", namespace: "foo" } }));
    writeFileSync(join(d, "README.md"), "not a policy");
    writeFileSync(join(d, ".hidden.yaml"), "{{{ not even yaml");
    writeFileSync(join(d, "..data", "d.yaml"), AP("d", "  rules: [{}]"));
    symlinkSync("..data/d.yaml", join(d, "d.yaml")); // a ConfigMap volume's layout
    const r = loadPolicyPath(d);
    expect(r.errors).toEqual([]);
    expect(r.authorizationPolicies.map((p) => p.object.metadata.name)).toEqual(["a", "b", "c", "d"]);
  });

  test("the same object in two files is an error naming both places", () => {
    const d = join(dir, "dup");
    mkdirSync(d);
    writeFileSync(join(d, "1.yaml"), AP("a", "  rules: [{}]"));
    writeFileSync(join(d, "2.yaml"), `# again\n${AP("a", "  rules: []")}`);
    const r = loadPolicyPath(d);
    expect(r.errors.map(formatLoadError)).toEqual([`${d}/2.yaml:2 (document 1) AuthorizationPolicy foo/a: metadata.name: duplicate: AuthorizationPolicy foo/a is already defined at ${d}/1.yaml:1 (document 1)`]);
  });

  test("a missing path, a binary file and invalid UTF-8 are errors, not exceptions", () => {
    expect(loadPolicyPath(join(dir, "nope")).errors[0]!.message).toStartWith("cannot read: ENOENT");
    writeFileSync(join(dir, "bin.yaml"), Buffer.from([0x61, 0, 0x62]));
    expect(loadPolicyPath(join(dir, "bin.yaml")).errors[0]!.message).toBe("cannot read: contains a NUL byte: not a text file");
    writeFileSync(join(dir, "latin1.yaml"), Buffer.from([0x61, 0xe9, 0x0a]));
    expect(loadPolicyPath(join(dir, "latin1.yaml")).errors[0]!.message).toBe("cannot read: not valid UTF-8");
  });
});

describe("addresses as istiod's Go netip reads them", () => {
  test.each([
    ["10.0.0.1", true],
    ["010.0.0.1", false],
    ["10.0.0.256", false],
    ["fd00::1", true],
    ["::ffff:10.0.0.1", true],
    ["fe80::1%eth0", false],
    ["1:2:3:4:5:6:7:8", true],
    ["1:2:3:4:5:6:7:8:9", false],
    ["1::2::3", false],
    ["::", true],
  ])("%s valid: %p", (text, ok) => expect(typeof parseIpText(text) !== "string").toBe(ok));
  test.each([
    ["10.0.0.0/8", true],
    ["10.0.0.0/33", false],
    ["10.0.0.0/08", false],
    ["fd00::/129", false],
    ["fd00::/0", true],
  ])("%s valid: %p", (text, ok) => expect(typeof parseCidr(text) !== "string").toBe(ok));
});
