// `nshub workloads --file`: the table, --json, -n, a bad file (exit 1, the error as is), usage
// errors (exit 2), conflicts shown under the table; and the subcommand reached through
// src/main.ts like an operator would.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Io } from "../../src/cli/admin-client.ts";
import { main as workloads } from "../../src/cli/workloads.ts";

const FIXTURE = resolve(import.meta.dir, "../fixtures/registry/local-config.yaml");
const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const dir = mkdtempSync(join(tmpdir(), "nshub-workloads-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function run(args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const io: Io = { out: (t) => void out.push(t), err: (t) => void err.push(t) };
  let code: number;
  try {
    code = await workloads(args, io);
  } catch (e) {
    if (!String((e as { code?: string }).code).startsWith("ERR_PARSE_ARGS")) throw e;
    code = 2;
  }
  return { code, out: out.join("\n"), err: err.join("\n") };
}

describe("nshub workloads", () => {
  test("the table: one row per workload, sorted by namespace/name, with IPs, node, protocol and identity", async () => {
    const r = await run(["--file", FIXTURE]);
    expect(r.code).toBe(0);
    const lines = r.out.split("\n");
    expect(lines[0]).toMatch(/^NAMESPACE\/NAME\s+UID\s+IPS\s+NODE\s+PROTOCOL\s+IDENTITY$/);
    expect(lines[1]).toMatch(/^legacy\/billing-0\s+west\/\/Pod\/legacy\/billing-0\s+10\.44\.2\.9\s+node-west\s+TCP\s+spiffe:\/\/cluster\.local\/ns\/legacy\/sa\/default$/);
    expect(lines[2]).toMatch(/^shop\/cart-7d9f\s+\S+\s+10\.44\.1\.7,fd00:44:1::7\s+node-west\s+HBONE\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/cart$/);
    expect(lines[3]).toMatch(/^shop\/ledger-vm\s+\S+\s+192\.168\.40\.12\s+-\s+HBONE\s+spiffe:\/\/corp\.example\/ns\/shop\/sa\/ledger$/);
    expect(r.out).toContain("also in the file, not used by nshub yet: 1 service(s), 1 policy");
  });

  test("--json: the model; -n filters; --trust-domain changes derived identities", async () => {
    const r = await run(["--file", FIXTURE, "--json", "-n", "shop", "--trust-domain", "mesh.example"]);
    expect(r.code).toBe(0);
    const ws = JSON.parse(r.out) as { uid: string; identity: string; workloadIps: string[]; source: string }[];
    expect(ws.map((w) => w.identity)).toEqual(["spiffe://mesh.example/ns/shop/sa/cart", "spiffe://corp.example/ns/shop/sa/ledger"]);
    expect(ws[0]!.workloadIps).toEqual(["10.44.1.7", "fd00:44:1::7"]);
    expect(ws[0]!.source).toBe(`file:${FIXTURE}`);
  });

  test("an IP claimed twice is shown with the workload that gets it", async () => {
    const f = join(dir, "twice.yaml");
    const e = (uid: string, proto: string) => `- uid: ${uid}\n  namespace: ns\n  workloadIps: ["10.9.0.1"]\n  protocol: ${proto}\n  services: {}\n`;
    writeFileSync(f, `workloads:\n${e("c//Pod/ns/a", "TCP")}${e("c//Pod/ns/b", "HBONE")}`);
    const r = await run(["--file", f]);
    expect(r.out).toContain("10.9.0.1 is claimed by 2 workloads: c//Pod/ns/b is used, not c//Pod/ns/a");
  });

  test("a bad file: exit 1 and the error naming file, entry, field and line", async () => {
    const f = join(dir, "bad.yaml");
    writeFileSync(f, `workloads:\n- uid: x\n  namespace: ns\n  workloadIps: [1]\n  services: {}\n`);
    const r = await run(["--file", f]);
    expect(r.code).toBe(1);
    expect(r.out).toBe("");
    expect(r.err).toBe(`workloads file ${f}: workloads[0] (uid "x"), line 4: workloadIps[0]: expected a string, got a number (1)`);
  });

  test("usage: --file or --admin is required, --admin with nothing there, bad trust domain, unknown flag", async () => {
    const none = await run([]);
    expect(none.code).toBe(2);
    expect(none.err).toContain("--file <local-config.yaml> or --admin <url> is required");
    // Port 1 on loopback: nobody listens there.
    const admin = await run(["--admin", "127.0.0.1:1"]);
    expect(admin.code).not.toBe(0);
    expect(admin.err).toContain("the nshub proxy is not running");
    expect((await run(["--admin", ":15000", "--file", FIXTURE])).code).toBe(2);
    expect((await run(["--file", FIXTURE, "--trust-domain", "Bad_TD:1"])).code).toBe(2);
    expect((await run(["--frob"])).code).toBe(2);
  });

  test("through src/main.ts: listed in nshub --help; --help names the file format and --admin", async () => {
    const top = Bun.spawnSync([process.execPath, MAIN, "--help"]);
    expect(top.stdout.toString()).toMatch(/^  workloads\s/m);
    const help = Bun.spawnSync([process.execPath, MAIN, "workloads", "--help"]);
    expect(help.exitCode).toBe(0);
    const text = help.stdout.toString();
    expect(text).toContain("LOCAL_XDS_PATH");
    expect(text).toContain("--admin");
    expect(text).toMatch(/running proxy's registry/);
    const list = Bun.spawnSync([process.execPath, MAIN, "workloads", "--file", FIXTURE]);
    expect(list.exitCode).toBe(0);
    expect(list.stdout.toString()).toContain("spiffe://cluster.local/ns/shop/sa/cart");
  });
});
