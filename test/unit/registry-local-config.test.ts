// ztunnel's local-config format (LOCAL_XDS_PATH), as src/registry reads it: a real example
// file (test/fixtures/registry/local-config.yaml, written after ztunnel's examples/localhost.yaml),
// ztunnel's exact field names in and out, identities derived from them, config_dump's shape,
// and bad files refused with the file, the entry, the field and the line.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parse as parseYaml, stringify } from "yaml";
import { configDumpWorkloads, localConfigEntry } from "../../src/registry/config-dump.ts";
import { canonicalIp, ipProblem, lookupKey } from "../../src/registry/ip.ts";
import { LocalConfigError, parseLocalConfig, readLocalConfig } from "../../src/registry/local-config.ts";
import { ENTRY_FIELDS } from "../../src/registry/workload-schema.ts";

const FIXTURE = resolve(import.meta.dir, "../fixtures/registry/local-config.yaml");
const TD = "cluster.local";
const dir = mkdtempSync(join(tmpdir(), "nshub-registry-"));

/** ztunnel's serde names of a LocalWorkload, copied by hand from src/state/workload.rs (Workload, camelCase) and src/xds.rs (LocalWorkload.services). */
const ZTUNNEL_FIELDS = [
  "workloadIps", "waypoint", "networkGateway", "protocol", "networkMode", "uid", "name", "namespace", "trustDomain", "serviceAccount", "network",
  "workloadName", "workloadType", "canonicalName", "canonicalRevision", "hostname", "node", "nativeTunnel", "applicationTunnel",
  "authorizationPolicies", "status", "clusterId", "locality", "services", "capacity",
];

function parse(text: string) {
  return parseLocalConfig(text, { file: "/etc/nshub/workloads.yaml", trustDomain: TD });
}

function refusal(text: string): LocalConfigError {
  try {
    parse(text);
  } catch (e) {
    if (e instanceof LocalConfigError) return e;
    throw e;
  }
  throw new Error("the file was accepted");
}

const ENTRY = "- uid: u1\n  name: a\n  namespace: ns\n  workloadIps: [\"10.0.0.1\"]\n  services: {}\n";

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the example file", () => {
  const cfg = readLocalConfig(FIXTURE, TD);
  const written = (parseYaml(readFileSync(FIXTURE, "utf8")) as { workloads: Record<string, unknown>[] }).workloads;

  test("every workload is read with ztunnel's values and nshub's defaults", () => {
    expect(cfg.workloads.map((w) => w.uid)).toEqual(["west//Pod/shop/cart-7d9f", "west//Pod/legacy/billing-0", "west/networking.istio.io/WorkloadEntry/shop/ledger-vm"]);
    const [cart, billing, ledger] = cfg.workloads;
    expect(cart).toMatchObject({ name: "cart-7d9f", namespace: "shop", serviceAccount: "cart", workloadIps: ["10.44.1.7", "fd00:44:1::7"], protocol: "HBONE", node: "node-west", networkMode: "Standard" });
    expect(cart!.details).toMatchObject({ canonicalName: "cart", canonicalRevision: "v2", clusterId: "west", services: { "shop/cart.shop.svc.cluster.local": { "8080": 8080 } } });
    // No serviceAccount and no protocol written: Kubernetes' "default", ztunnel's TCP.
    expect(billing).toMatchObject({ serviceAccount: "default", protocol: "TCP" });
    expect(ledger!.details).toMatchObject({ capacity: 2, status: "Healthy", locality: { region: "eu-west", zone: "eu-west-1b", subzone: "" }, applicationTunnel: { protocol: "PROXY", port: 15088 } });
    expect(cfg.services).toBe(1);
    expect(cfg.policies).toBe(1);
  });

  test("identities: spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the entry's trustDomain first", () => {
    expect(cfg.workloads.map((w) => w.identity)).toEqual(["spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/legacy/sa/default", "spiffe://corp.example/ns/shop/sa/ledger"]);
    const other = readLocalConfig(FIXTURE, "mesh.example");
    expect(other.workloads[0]!.identity).toBe("spiffe://mesh.example/ns/shop/sa/cart");
    expect(other.workloads[2]!.identity).toBe("spiffe://corp.example/ns/shop/sa/ledger");
  });

  test("the schema knows exactly ztunnel's field names", () => {
    expect([...ENTRY_FIELDS].sort()).toEqual([...ZTUNNEL_FIELDS].sort());
    for (const entry of written) for (const k of Object.keys(entry)) expect(ZTUNNEL_FIELDS).toContain(k);
  });

  test("round trip: the model written back with ztunnel's names reads as the same model, every written value kept", () => {
    const entries = cfg.workloads.map(localConfigEntry);
    entries.forEach((e, i) => {
      for (const [k, v] of Object.entries(written[i]!)) expect((e as Record<string, unknown>)[k], `${i}.${k}`).toEqual(k === "services" ? normalisePorts(v) : v);
    });
    const again = parse(stringify({ workloads: entries }));
    expect(again.workloads.map((w) => ({ ...w, source: "" }))).toEqual(cfg.workloads.map((w) => ({ ...w, source: "" })));
  });

  test("config_dump: ztunnel's Workload serialization (order, defaults left out, services as namespace/hostname), sorted by uid", () => {
    const dump = configDumpWorkloads(cfg.workloads);
    expect(dump.map((d) => d.uid)).toEqual(["west//Pod/legacy/billing-0", "west//Pod/shop/cart-7d9f", "west/networking.istio.io/WorkloadEntry/shop/ledger-vm"]);
    const cart = dump[1]!;
    expect(Object.keys(cart)).toEqual(["workloadIps", "protocol", "networkMode", "uid", "name", "namespace", "trustDomain", "serviceAccount", "workloadName", "workloadType", "canonicalName", "canonicalRevision", "node", "status", "clusterId", "services", "capacity"]);
    expect(cart).toEqual({
      workloadIps: ["10.44.1.7", "fd00:44:1::7"], protocol: "HBONE", networkMode: "Standard", uid: "west//Pod/shop/cart-7d9f", name: "cart-7d9f", namespace: "shop",
      trustDomain: "cluster.local", serviceAccount: "cart", workloadName: "cart", workloadType: "deployment", canonicalName: "cart", canonicalRevision: "v2", node: "node-west",
      status: "Healthy", clusterId: "west", services: ["shop/cart.shop.svc.cluster.local"], capacity: 1,
    });
    const ledger = dump[2]!;
    expect(ledger.waypoint).toEqual({ destination: "/10.44.0.30", hboneMtlsPort: 15008 });
    expect(ledger.applicationTunnel).toEqual({ protocol: "PROXY", port: 15088 });
    expect(ledger.node).toBeUndefined(); // "" is serde's default: skipped
    expect(dump[0]!.clusterId).toBe("Kubernetes");
  });
});

/** YAML's integer map keys come back as strings in JS: {80: 8080} is {"80": 8080}. */
function normalisePorts(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v));
}

describe("what ztunnel's reader does too", () => {
  test("empty file, comments only, `workloads:` with nothing: no workloads", () => {
    expect(parse("").workloads).toEqual([]);
    expect(parse("# nothing yet\n").workloads).toEqual([]);
    expect(parse("workloads:\n").workloads).toEqual([]);
  });

  test("IPs: IPv4 and IPv6 in canonical form, duplicates once", () => {
    const w = parse(`workloads:\n- uid: u1\n  namespace: ns\n  workloadIps: ["10.1.2.3", "FD00:0:0:0:0:0:0:1", "10.1.2.3", "::ffff:10.9.8.7"]\n  services: {}\n`).workloads[0]!;
    expect(w.workloadIps).toEqual(["10.1.2.3", "fd00::1", "::ffff:10.9.8.7"]);
    expect(canonicalIp("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(canonicalIp("2001:0db8:0000:0001:0000:0000:0000:0000")).toBe("2001:db8:0:1::");
    expect(canonicalIp("1:0:2:0:3:0:4:0")).toBe("1:0:2:0:3:0:4:0");
    expect(lookupKey("::ffff:10.9.8.7")).toBe("10.9.8.7");
    for (const bad of ["10.0.0.256", "010.0.0.1", "10.0.0", "fe80::1%eth0", "[::1]", "10.0.0.0/8", "", "host.example"]) expect(ipProblem(bad), bad).toBeDefined();
  });
});

describe("bad files are refused with file, entry, field and line", () => {
  test("wrong type", () => {
    const e = refusal(`workloads:\n${ENTRY}- uid: u2\n  namespace: ns\n  workloadIps: "10.0.0.2"\n  services: {}\n`);
    expect(e.problems).toEqual([{ index: 1, uid: "u2", field: "workloadIps", line: 9, message: 'expected a list, got a string ("10.0.0.2")' }]);
    expect(e.message).toBe('workloads file /etc/nshub/workloads.yaml: workloads[1] (uid "u2"), line 9: workloadIps: expected a list, got a string ("10.0.0.2")');
    // serde reads the flattened Workload through its buffered form: a number is no string.
    expect(refusal(`workloads:\n- uid: u1\n  name: 123\n  namespace: ns\n  workloadIps: []\n  services: {}\n`).message).toContain("workloads[0] (uid \"u1\"), line 3: name: expected a string, got a number (123)");
    expect(refusal(`workloads:\n${ENTRY.replace("services: {}", "services: {}\n  capacity: 1.5")}`).message).toContain("capacity: expected a whole number, got 1.5");
    expect(refusal(`workloads:\n${ENTRY.replace("name: a", "protocol: hbone")}`).message).toContain('protocol: "hbone" is not one of TCP, HBONE');
    expect(refusal("workloads: {}\n").message).toContain("line 1: workloads: expected a list, got a mapping");
  });

  test("missing uid (nshub's rule), missing namespace and services (ztunnel's)", () => {
    const e = refusal(`workloads:\n${ENTRY}- name: b\n  workloadIps: []\n`);
    expect(e.problems.map((p) => [p.index, p.field, p.line])).toEqual([[1, "uid", 7], [1, "namespace", 7], [1, "services", 7]]);
    expect(e.problems[0]!.message).toContain("nshub needs a uid");
    expect(e.problems[2]!.message).toContain('write "services: {}"');
    expect(refusal(`workloads:\n${ENTRY.replace("uid: u1", 'uid: ""')}`).problems[0]).toMatchObject({ index: 0, field: "uid" });
  });

  test("bad IP", () => {
    const e = refusal(`workloads:\n${ENTRY.replace('["10.0.0.1"]', '["10.0.0.1", "10.0.0.300"]')}`);
    expect(e.problems).toEqual([{ index: 0, uid: "u1", field: "workloadIps[1]", line: 5, message: '"10.0.0.300" is not an IP address (an IPv4 octet is above 255)' }]);
  });

  test("unknown fields, as ztunnel's deny_unknown_fields: in an entry, nested, and at the top", () => {
    const e = refusal(`workloads:\n${ENTRY}  serviceAcount: x\n  waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008, port: 1}\nservice: []\n`);
    expect(e.problems.map((p) => [p.field, p.line])).toEqual([["service", 9], ["waypoint.port", 8], ["serviceAcount", 7]]);
    expect(e.problems[0]!.message).toContain('unknown field "service" (did you mean "services"?)');
    expect(e.problems[2]!.message).toContain('(did you mean "serviceAccount"?)');
  });

  test("an identity the SPIFFE rules refuse, and a uid given twice", () => {
    const e = refusal(`workloads:\n${ENTRY.replace("name: a", "serviceAccount: Bad/sa")}${ENTRY.replace("name: a", "name: b")}`);
    expect(e.problems[0]).toMatchObject({ index: 0, field: "serviceAccount", line: 3 });
    expect(e.problems[0]!.message).toContain("no valid SPIFFE identity");
    const twice = refusal(`workloads:\n${ENTRY}${ENTRY}`);
    expect(twice.problems).toEqual([{ index: 1, uid: "u1", field: "uid", line: 7, message: "the same uid as workloads[0]: each workload appears once" }]);
  });

  test("not YAML, several documents, not text", () => {
    expect(refusal("workloads:\n  - uid: [\n").message).toMatch(/^workloads file \/etc\/nshub\/workloads.yaml: line \d+: not valid YAML/);
    expect(refusal("workloads: []\n---\nworkloads: []\n").message).toContain("not valid YAML: Source contains multiple documents");
    const f = join(dir, "binary.yaml");
    writeFileSync(f, Buffer.from([0x77, 0x3a, 0x00, 0x01]));
    expect(() => readLocalConfig(f, TD)).toThrow(`workloads file ${f}: not a text file (a NUL byte at offset 2)`);
    expect(() => readLocalConfig(join(dir, "absent.yaml"), TD)).toThrow("no such file");
  });

  test("many problems: the first ten, then a count", () => {
    const e = refusal(`workloads:\n${Array.from({ length: 12 }, (_, i) => `- uid: u${i}\n  namespace: ns\n  workloadIps: ["bad"]\n  services: {}\n`).join("")}`);
    expect(e.problems).toHaveLength(10);
    expect(e.more).toBe(2);
    expect(e.message.split("\n")[0]).toBe("workloads file /etc/nshub/workloads.yaml: 12 problems");
    expect(e.message).toEndWith("…and 2 more");
  });
});
