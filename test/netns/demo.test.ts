// `nshub demo` end to end, as a newcomer runs it: the compiled dist/nshub, non-interactively.
// Asserts on the printed summary (each enrolled pod's identity and certificate, capture both
// ways, source-IP preservation with the client pod's real IP, the non-enrolled pod passing
// uncaptured, bytes counted) and on a clean teardown:
// no namespace, process, file or root-namespace rule left — after a normal run, after --keep
// followed by --down from a new process, and after Ctrl-C in the middle of the traffic.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { listNetns, run } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";
import { hostNetState as rootSnapshot } from "../helpers/host-state.ts";

const T = 120_000;
const REPO = resolve(import.meta.dir, "../..");
const NSHUB = join(REPO, "dist/nshub");
const ENV = { ...process.env, NO_COLOR: "1", NSHUB_CONFIG: undefined };


interface RunFacts {
  tag: string;
  workDir: string;
  pids: number[];
  ips: Record<string, string>;
}

/** What a human-readable run printed that the leftovers check needs. */
function factsOf(output: string): RunFacts {
  const tag = /netns (nshd-[0-9a-f]{6})-node/.exec(output)?.[1] ?? "";
  const workDir = /config (\/run\/nshub-demo\/demo-[A-Za-z0-9]+)\/config\.yaml/.exec(output)?.[1] ?? "";
  const pids = [...output.matchAll(/\bpid (\d+)/g)].map((m) => Number(m[1]));
  const ips: Record<string, string> = {};
  for (const m of output.matchAll(/^\s+(demo\/web|demo\/client|other\/outsider)\s+(\d+\.\d+\.\d+\.\d+)\s+nshd-/gm)) ips[m[1]!] = m[2]!;
  return { tag, workDir, pids, ips };
}

function cmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return undefined;
  }
}

/** Nothing of the run with this tag/work dir/pids remains. */
async function expectNothingLeft(f: { tag: string; workDir: string; pids: number[] }): Promise<void> {
  expect(f.tag).toMatch(/^nshd-[0-9a-f]{6}$/);
  expect((await listNetns()).filter((n) => n.startsWith(`${f.tag}-`))).toEqual([]);
  if (f.workDir) expect(existsSync(f.workDir)).toBe(false);
  expect(readdirSync(tmpdir()).filter((d) => d.startsWith(`nshub-netsim-${f.tag}-`))).toEqual([]);
  expect(existsSync(`/run/nshub-test/${f.tag}.json`)).toBe(false);
  // Every process the demo started (agent, proxy, servers) is gone, and nothing still uses its files.
  const left = f.pids.map((p) => [p, cmdline(p)] as const).filter(([, c]) => c !== undefined && /nshub|socat|iperf3/.test(c));
  expect(left).toEqual([]);
  if (f.workDir) {
    const users = readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .filter((d) => cmdline(Number(d))?.includes(f.workDir));
    expect(users).toEqual([]);
  }
}

async function runDemo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn([NSHUB, "demo", ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: ENV, timeout: 100_000 });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) console.log(`nshub demo ${args.join(" ")} → exit ${code}\n${stdout}\n${stderr}`);
  return { code, stdout, stderr };
}

netnsDescribe("nshub demo (dist/nshub, real namespaces, CNI plugins, agent, proxy and traffic)", () => {
  let rootBefore: Record<string, string>;

  beforeAll(async () => {
    if (!existsSync(NSHUB)) throw new Error(`${NSHUB} is missing: run scripts/build first (scripts/test does)`);
    rootBefore = await rootSnapshot();
  }, T);

  afterAll(async () => {
    // Safety net for a failed --keep test: --down only removes kept or crashed demos.
    await run([NSHUB, "demo", "--down"], { env: ENV, timeoutMs: 60_000 });
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  test("runs to the end: capture both ways, the client pod's IP preserved, the outsider uncaptured, clean teardown", async () => {
    const r = await runDemo([]);
    expect(r.code).toBe(0);
    const out = r.stdout;
    const f = factsOf(out);
    const client = f.ips["demo/client"]!;
    const web = f.ips["demo/web"]!;
    const outsider = f.ips["other/outsider"]!;
    expect(client).toMatch(/^10\./);
    expect(new Set([client, web, outsider]).size).toBe(3);

    // steps 1..9 in order
    for (let i = 1; i <= 9; i++) expect(out).toContain(`[${i}/9] `);
    // The web server's own answer names the client pod's IP.
    expect(out).toMatch(new RegExp(`→ \\{"server":"demo/web","client":"${client.replaceAll(".", "\\.")}:\\d+"`));
    expect(out).toMatch(new RegExp(`→ \\{"server":"demo/web","client":"${outsider.replaceAll(".", "\\.")}:\\d+"`));

    // the summary
    const summary = out.slice(out.lastIndexOf("\nsummary\n"));
    expect(summary).not.toContain("✘");
    expect(summary).toContain("✔ enrolled pods get the proxy's listeners");
    // identities: demo/web's service account from its CNI ADD, demo/client's the default; `nshub certs` shows both
    expect(summary).toMatch(/✔ each enrolled pod has its identity's certificate\s+demo\/web is spiffe:\/\/cluster\.local\/ns\/demo\/sa\/web \(serial [0-9a-f]+, valid until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)/);
    expect(summary).toMatch(/\n\s+demo\/client is spiffe:\/\/cluster\.local\/ns\/demo\/sa\/default \(serial [0-9a-f]+/);
    expect(summary).toMatch(/signed by the demo's local CA \(local-ca \/run\/nshub-demo\/demo-[A-Za-z0-9]+\/ca\)/);
    const certs = out.slice(out.indexOf(" certs\n"), out.indexOf("[5/9]"));
    expect(certs).toMatch(/SPIFFE ID\s+PODS\s+STATE\s+SERIAL\s+NOT BEFORE\s+NOT AFTER\s+RENEWAL\s+ISSUERS/);
    expect(certs).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/web\s+demo\/web\s+valid\s+[0-9a-f]+\s+\S+\s+\S+\s+renew in \d+h\d\dm/);
    expect(certs).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/default\s+demo\/client\s+valid/);
    expect(summary).toMatch(new RegExp(`✔ captured outbound\\s+demo/client → ${web}:8080 went through the proxy's outbound listener`));
    expect(summary).toMatch(new RegExp(`✔ captured inbound\\s+demo/web accepted ${client}:\\d+ → ${web}:8080 on the proxy's inbound listener`));
    expect(summary).toMatch(new RegExp(`✔ source IP preserved\\s+demo/web saw ${client} = demo/client's pod IP`));
    expect(summary).toMatch(new RegExp(`✔ non-enrolled pod not captured\\s+other/outsider has no proxy listener and no connection of its own in the proxy; its request was served and demo/web saw ${outsider}`));
    expect(summary).toMatch(/✔ bytes counted\s+/);
    expect(summary).toMatch(/✔ clean teardown\s+3 pods deleted through CNI DEL, 5 processes stopped.*no namespace, process or file of the demo left/);
    expect(summary).toContain("✔ all 8 checks passed");

    expect(f.pids.length).toBe(5); // agent, proxy, 3 servers
    await expectNothingLeft(f);
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  test("--keep --json leaves it running past the demo process; --down from a new process removes everything", async () => {
    const r = await runDemo(["--keep", "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as {
      ok: boolean;
      kept: boolean;
      node: { netns: string };
      pods: { namespace: string; name: string; ip: string; netns: string }[];
      processes: { role: string; pid: number }[];
      workDir: string;
      checks: { id: string; ok: boolean }[];
      certificates: { pod: string; identity: string; state: string }[];
      down: string;
    };
    expect(j.ok).toBe(true);
    expect(j.kept).toBe(true);
    expect(j.checks.map((c) => [c.id, c.ok])).toEqual([
      ["enrolled", true],
      ["identity", true],
      ["captured-outbound", true],
      ["captured-inbound", true],
      ["source-ip", true],
      ["not-captured", true],
      ["bytes", true],
    ]);
    expect(j.certificates.map((c) => [c.pod, c.identity, c.state])).toEqual([
      ["demo/web", "spiffe://cluster.local/ns/demo/sa/web", "valid"],
      ["demo/client", "spiffe://cluster.local/ns/demo/sa/default", "valid"],
    ]);
    expect(j.down).toMatch(/demo --down$/);
    expect(r.stderr).toContain("[9/9] leaving it running (--keep)");
    const tag = j.node.netns.replace(/-node$/, "");
    const pod = (name: string) => j.pods.find((p) => p.name === name)!;

    // The demo process has exited; agent, proxy and servers still run and still capture.
    expect(j.processes.map((p) => p.role).sort()).toEqual(["agent", "proxy", "web-echo", "web-http", "web-iperf3"]);
    for (const p of j.processes) expect(cmdline(p.pid)).toBeDefined();
    expect((await listNetns()).filter((n) => n.startsWith(`${tag}-`)).length).toBe(4);
    const reply = await run(["ip", "netns", "exec", pod("client").netns, "curl", "-sS", "-m", "5", `http://${pod("web").ip}:8080/`]);
    expect(JSON.parse(reply.stdout).client.split(":")[0]).toBe(pod("client").ip);
    const ss = await run(["ip", "netns", "exec", pod("web").netns, "ss", "-ltnH"]);
    expect(ss.stdout).toContain(":15001 ");
    expect(ss.stdout).toContain(":15006 ");
    // A second demo refuses to wipe the kept one.
    const again = await run([NSHUB, "demo"], { env: ENV, timeoutMs: 60_000 });
    expect(again.code).toBe(1);
    expect(again.stdout).toContain("demo --down");
    expect((await listNetns()).filter((n) => n.startsWith(`${tag}-`)).length).toBe(4);

    const d = await run([NSHUB, "demo", "--down"], { env: ENV, timeoutMs: 60_000 });
    expect(d.code).toBe(0);
    expect(d.stdout).toContain("stopped 5 processes, removed 4 namespaces");
    await expectNothingLeft({ tag, workDir: j.workDir, pids: j.processes.map((p) => p.pid) });
    const d2 = await run([NSHUB, "demo", "--down"], { env: ENV, timeoutMs: 60_000 });
    expect(d2.code).toBe(0);
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  test("Ctrl-C (SIGINT) in the middle of the traffic: everything torn down, exit 130", async () => {
    const p = Bun.spawn([NSHUB, "demo"], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: ENV, timeout: 100_000 });
    const stderr = new Response(p.stderr).text();
    const decoder = new TextDecoder();
    let out = "";
    let sent = false;
    for await (const chunk of p.stdout) {
      out += decoder.decode(chunk, { stream: true });
      if (!sent && out.includes("[6/9]")) {
        p.kill("SIGINT");
        sent = true;
      }
    }
    const code = await p.exited;
    if (code !== 130) console.log(out, await stderr);
    expect(sent).toBe(true);
    expect(code).toBe(130);
    expect(out).toContain("Ctrl-C: stopping and tearing everything down");
    expect(out).toMatch(/✔ clean teardown\s+3 pods deleted through CNI DEL/);
    expect(out).toContain("interrupted (SIGINT); everything the demo made was torn down");
    await expectNothingLeft(factsOf(out));
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);
});
