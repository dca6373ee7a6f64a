// `nshub demo` end to end, as a newcomer runs it: the compiled dist/nshub, non-interactively.
// Asserts on the printed summary (each enrolled pod's identity and certificate on both nodes from
// one root, capture both ways, source-IP preservation with the client pod's real IP, the
// non-enrolled pod passing uncaptured, bytes counted; across the nodes: the request served with
// the client's IP, mutual TLS with both identities in both proxies' records, the marker absent
// from the fabric capture and every connection between the pods to 15008), on the --json facts
// and the capture file itself (read back by the test, not by the demo), and on a clean teardown:
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
  /** node-1, node-2 and the fabric */
  tags: string[];
  workDir: string;
  pids: number[];
  ips: Record<string, string>;
}

/** What a human-readable run printed that the leftovers check needs. */
function factsOf(output: string): RunFacts {
  const tags = [...new Set([...output.matchAll(/netns (nshd-[0-9a-f]{6})-(?:node|fab)\b/g)].map((m) => m[1]!))];
  const workDir = /config (\/run\/nshub-demo\/demo-[A-Za-z0-9]+)\/node-1\/config\.yaml/.exec(output)?.[1] ?? "";
  const pids = [...output.matchAll(/\bpid (\d+)/g)].map((m) => Number(m[1]));
  const ips: Record<string, string> = {};
  for (const m of output.matchAll(/^\s+node-[12]\s+(demo\/web|demo\/client|other\/outsider|demo\/backend)\s+(\d+\.\d+\.\d+\.\d+)\s+nshd-/gm)) ips[m[1]!] = m[2]!;
  return { tags, workDir, pids, ips };
}

function cmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return undefined;
  }
}

/** Nothing of the run with these tags/work dir/pids remains. */
async function expectNothingLeft(f: { tags: string[]; workDir: string; pids: number[] }): Promise<void> {
  expect(f.tags.length).toBeGreaterThan(0);
  for (const tag of f.tags) {
    expect(tag).toMatch(/^nshd-[0-9a-f]{6}$/);
    expect((await listNetns()).filter((n) => n.startsWith(`${tag}-`))).toEqual([]);
    expect(readdirSync(tmpdir()).filter((d) => d.startsWith(`nshub-netsim-${tag}-`))).toEqual([]);
    expect(existsSync(`/run/nshub-test/${tag}.json`)).toBe(false);
  }
  if (f.workDir) expect(existsSync(f.workDir)).toBe(false);
  // Every process the demo started (agent, proxy, servers) is gone, and nothing still uses its files.
  const left = f.pids.map((p) => [p, cmdline(p)] as const).filter(([, c]) => c !== undefined && /nshub|socat|iperf3|tcpdump/.test(c));
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

  test("runs to the end: capture both ways, the client pod's IP preserved, the outsider uncaptured; across the nodes mTLS with both identities and nothing readable on the wire; clean teardown", async () => {
    const r = await runDemo([]);
    expect(r.code).toBe(0);
    const out = r.stdout;
    const f = factsOf(out);
    const client = f.ips["demo/client"]!;
    const web = f.ips["demo/web"]!;
    const outsider = f.ips["other/outsider"]!;
    const backend = f.ips["demo/backend"]!;
    expect(client).toMatch(/^10\./);
    expect(new Set([client, web, outsider, backend]).size).toBe(4);
    expect(f.tags.length).toBe(3); // node-1, node-2, fabric
    const re = (ip: string) => ip.replaceAll(".", "\\.");

    // steps 1..10 in order
    for (let i = 1; i <= 10; i++) expect(out).toContain(`[${i}/10] `);
    // The web server's own answer names the client pod's IP.
    expect(out).toMatch(new RegExp(`→ \\{"server":"demo/web","client":"${re(client)}:\\d+"`));
    expect(out).toMatch(new RegExp(`→ \\{"server":"demo/web","client":"${re(outsider)}:\\d+"`));
    // Across the nodes: demo/backend's own answer names demo/client's IP and the marker it got.
    const marker = /curl http:\/\/[\d.]+:8080\/(nshub-demo-secret-[0-9a-f]{16})/.exec(out)?.[1];
    expect(marker).toBeDefined();
    expect(out).toMatch(new RegExp(`→ \\{"server":"demo/backend","client":"${re(client)}:\\d+","method":"GET","path":"/${marker}"\\}`));
    // the CA is a pod on node-1; node-2's proxy got its certificate across the fabric with its own token
    expect(out).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/backend to node-2 \(request from 172\.31\.\d+\.\d+\)/);
    // both proxies show the live echo across the nodes as mTLS with both identities
    expect(out).toMatch(new RegExp(`demo/client\\s+out\\s+${re(client)}:\\d+\\s+${re(backend)}:9000\\s+.*\\bmTLS\\s+demo/default → demo/backend`));
    expect(out).toMatch(new RegExp(`demo/backend\\s+in\\s+${re(client)}:\\d+\\s+${re(backend)}:9000\\s+.*\\bmTLS\\s+demo/default → demo/backend`));

    // the summary
    const summary = out.slice(out.lastIndexOf("\nsummary\n"));
    expect(summary).not.toContain("✘");
    expect(summary).toContain("✔ enrolled pods get the proxy's listeners");
    // identities: demo/web's and demo/backend's service accounts from their CNI ADD, demo/client's the default; `nshub certs` shows them
    expect(summary).toMatch(/✔ each enrolled pod has its identity's certificate\s+demo\/web \(node-1\) is spiffe:\/\/cluster\.local\/ns\/demo\/sa\/web \(serial [0-9a-f]+, valid until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)/);
    expect(summary).toMatch(/\n\s+demo\/client \(node-1\) is spiffe:\/\/cluster\.local\/ns\/demo\/sa\/default \(serial [0-9a-f]+/);
    expect(summary).toMatch(/\n\s+demo\/backend \(node-2\) is spiffe:\/\/cluster\.local\/ns\/demo\/sa\/backend \(serial [0-9a-f]+/);
    expect(summary).toMatch(/all issued by the demo's CA, nshub ca serve at 10\.[\d.]+:15012 \(the proxies' certificate source: istio-ca https:\/\/10\.[\d.]+:15012\)/);
    expect(summary).toMatch(/one root for both nodes: O=cluster\.local, CN=nshub root CA \(serial [0-9a-f]+\)/);
    const certs = out.slice(out.indexOf(" certs      (node-1)\n"), out.indexOf("[5/10]"));
    expect(certs).toMatch(/SPIFFE ID\s+PODS\s+STATE\s+SERIAL\s+NOT BEFORE\s+NOT AFTER\s+RENEWAL\s+ISSUERS/);
    expect(certs).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/web\s+demo\/web\s+valid\s+[0-9a-f]+\s+\S+\s+\S+\s+renew in \d+h\d\dm/);
    expect(certs).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/default\s+demo\/client\s+valid/);
    expect(certs).toMatch(/spiffe:\/\/cluster\.local\/ns\/demo\/sa\/backend\s+demo\/backend\s+valid/);
    expect(summary).toMatch(new RegExp(`✔ captured outbound\\s+demo/client → ${re(web)}:8080 went through the proxy's outbound listener`));
    expect(summary).toMatch(new RegExp(`✔ captured inbound\\s+demo/web accepted ${re(client)}:\\d+ → ${re(web)}:8080 on the proxy's inbound listener`));
    expect(summary).toMatch(new RegExp(`✔ source IP preserved\\s+demo/web saw ${re(client)} = demo/client's pod IP`));
    expect(summary).toMatch(new RegExp(`✔ non-enrolled pod not captured\\s+other/outsider has no proxy listener and no connection of its own in the proxy; its request was served and demo/web saw ${re(outsider)}`));
    expect(summary).toMatch(/✔ bytes counted\s+/);
    expect(summary).toMatch(new RegExp(`✔ cross-node request, client IP preserved\\s+demo/client \\(node-1, ${re(client)}\\) → demo/backend \\(node-2\\) ${re(backend)}:8080 answered; demo/backend saw ${re(client)} = demo/client's pod IP`));
    expect(summary).toMatch(
      new RegExp(`✔ mutual TLS across the nodes, both identities\\s+node-1's proxy, outbound: mutual_tls from spiffe://cluster\\.local/ns/demo/sa/default to spiffe://cluster\\.local/ns/demo/sa/backend over HBONE to ${re(backend)}:15008`),
    );
    expect(summary).toMatch(new RegExp(`node-2's proxy, inbound from ${re(client)}: mutual_tls, verified spiffe://cluster\\.local/ns/demo/sa/default → spiffe://cluster\\.local/ns/demo/sa/backend`));
    expect(summary).toMatch(/✔ payload not readable on the wire\s+tcpdump on the fabric \(\d+ packets, none dropped\): the marker demo\/client sent is not in it/);
    // every connection between the two pods, as the capture saw it: client → backend:15008 only
    const flows = /between demo\/client and demo\/backend went to port 15008 \(([^)]*)\)/.exec(summary)?.[1] ?? "";
    expect(flows.split(", ").length).toBeGreaterThan(0);
    for (const fl of flows.split(", ")) expect(fl).toBe(`${client} → ${backend}:15008`);
    expect(summary).toContain("the control marker other/outsider sent in plaintext is in it");
    expect(summary).toMatch(/✔ clean teardown\s+5 pods deleted through CNI DEL, 10 processes stopped, 2 nodes, the fabric and the files removed.*no namespace, process or file of the demo left/);
    expect(summary).toContain("✔ all 11 checks passed");

    expect(f.pids.length).toBe(10); // 2 agents, 2 proxies, the CA, 3 servers in demo/web, 2 in demo/backend
    await expectNothingLeft(f);
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  test("--keep --json leaves it running past the demo process (the facts and the capture file say the marker never crossed in clear); --down from a new process removes everything", async () => {
    const r = await runDemo(["--keep", "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as {
      ok: boolean;
      kept: boolean;
      nodes: { name: string; netns: string }[];
      fabric: { netns: string };
      pods: { node: string; namespace: string; name: string; ip: string; netns: string }[];
      processes: { role: string; node: string; pid: number }[];
      workDir: string;
      checks: { id: string; ok: boolean }[];
      certificates: { node: string; pod: string; identity: string; state: string; root: string }[];
      ca: { pod: string; node: string; address: string };
      crossNode: {
        marker: string;
        reply: { server: string; client: string; path: string };
        serverSaw: { http: string[]; echo: string[] };
        node1Outbound: { security: string; srcIdentity: string; dstIdentity: string; tunnelAddr: string };
        node2Inbound: { security: string; srcIdentity: string; dstIdentity: string; source: string };
        control: { reply: { path: string } };
      };
      wire: {
        pcap: string;
        packets: number;
        droppedByKernel: number;
        marker: string;
        markerFound: boolean;
        controlMarker: string;
        controlMarkerFound: boolean;
        tlsHandshakeSeen: boolean;
        podFlows: { src: string; dst: string; dstPort: number }[];
        allTo15008: boolean;
      };
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
      ["cross-node", true],
      ["mtls", true],
      ["wire", true],
    ]);
    expect(j.certificates.map((c) => [c.node, c.pod, c.identity, c.state])).toEqual([
      ["node-1", "demo/web", "spiffe://cluster.local/ns/demo/sa/web", "valid"],
      ["node-1", "demo/client", "spiffe://cluster.local/ns/demo/sa/default", "valid"],
      ["node-2", "demo/backend", "spiffe://cluster.local/ns/demo/sa/backend", "valid"],
    ]);
    expect(new Set(j.certificates.map((c) => c.root)).size).toBe(1);
    expect(j.down).toMatch(/demo --down$/);
    expect(r.stderr).toContain("[10/10] leaving it running (--keep)");
    const pod = (name: string) => j.pods.find((p) => p.name === name)!;
    expect(pod("backend").node).toBe("node-2");
    expect(j.ca).toMatchObject({ pod: "istio-system/nshub-ca", node: "node-1" });
    expect(j.ca.address).toMatch(/^10\.[\d.]+:15012$/);

    // Across the nodes, by the demo's facts: the marker reached the server, with the client's IP …
    const { client, backend } = { client: pod("client").ip, backend: pod("backend").ip };
    const x = j.crossNode;
    expect(x.marker).toMatch(/^nshub-demo-secret-[0-9a-f]{16}$/);
    expect(x.reply).toMatchObject({ server: "demo/backend", path: `/${x.marker}` });
    expect(x.reply.client.split(":")[0]).toBe(client);
    expect(x.serverSaw.http).toContain(client);
    expect(x.serverSaw.echo).toContain(client);
    expect(x.node1Outbound).toMatchObject({ security: "mutual_tls", srcIdentity: "spiffe://cluster.local/ns/demo/sa/default", dstIdentity: "spiffe://cluster.local/ns/demo/sa/backend", tunnelAddr: `${backend}:15008` });
    expect(x.node2Inbound).toMatchObject({ security: "mutual_tls", srcIdentity: "spiffe://cluster.local/ns/demo/sa/default", dstIdentity: "spiffe://cluster.local/ns/demo/sa/backend" });
    expect(x.node2Inbound.source.split(":")[0]).toBe(client);
    // … and on the wire it was never readable; every connection between the pods went to 15008.
    const w = j.wire;
    expect(w.marker).toBe(x.marker);
    expect(w.markerFound).toBe(false);
    expect(w.controlMarkerFound).toBe(true);
    expect(w.tlsHandshakeSeen).toBe(true);
    expect(w.droppedByKernel).toBe(0);
    expect(w.podFlows.length).toBeGreaterThan(0);
    expect(w.podFlows.every((fl) => fl.src === client && fl.dst === backend && fl.dstPort === 15008)).toBe(true);
    expect(w.allTo15008).toBe(true);
    // The capture file itself, read by this test: the marker is not in it, the plaintext control
    // is, and tcpdump's own reading shows only client → backend:15008 between the two pods.
    const pcap = readFileSync(w.pcap);
    expect(pcap.length).toBeGreaterThan(1000);
    expect(pcap.includes(Buffer.from(x.marker))).toBe(false);
    expect(pcap.includes(Buffer.from(w.controlMarker))).toBe(true);
    const read = await run(["tcpdump", "-r", w.pcap, "-nn", "-t", "tcp"]);
    const between = read.stdout.split("\n").filter((l) => l.includes(`${client}.`) && l.includes(`${backend}.`));
    expect(between.length).toBeGreaterThan(10);
    for (const l of between) expect(l).toMatch(new RegExp(`IP (${client.replaceAll(".", "\\.")}\\.\\d+ > ${backend.replaceAll(".", "\\.")}\\.15008|${backend.replaceAll(".", "\\.")}\\.15008 > ${client.replaceAll(".", "\\.")}\\.\\d+):`));

    // The demo process has exited; agents, proxies, the CA and the servers still run and still capture.
    expect(j.processes.map((p) => p.role).sort()).toEqual(["agent", "agent", "backend-echo", "backend-http", "ca", "proxy", "proxy", "web-echo", "web-http", "web-iperf3"]);
    for (const p of j.processes) expect(cmdline(p.pid)).toBeDefined();
    const tags = [...j.nodes.map((n) => n.netns.replace(/-node$/, "")), j.fabric.netns.replace(/-fab$/, "")];
    const ours = async () => (await listNetns()).filter((n) => tags.some((t) => n.startsWith(`${t}-`)));
    expect((await ours()).length).toBe(8); // node-1 + 4 pods, node-2 + 1 pod, the fabric
    const reply = await run(["ip", "netns", "exec", pod("client").netns, "curl", "-sS", "-m", "5", `http://${pod("web").ip}:8080/`]);
    expect(JSON.parse(reply.stdout).client.split(":")[0]).toBe(client);
    const across = await run(["ip", "netns", "exec", pod("client").netns, "curl", "-sS", "-m", "5", `http://${backend}:8080/`]);
    expect(JSON.parse(across.stdout)).toMatchObject({ server: "demo/backend" });
    expect(JSON.parse(across.stdout).client.split(":")[0]).toBe(client);
    const ss = await run(["ip", "netns", "exec", pod("web").netns, "ss", "-ltnH"]);
    expect(ss.stdout).toContain(":15001 ");
    expect(ss.stdout).toContain(":15006 ");
    expect(ss.stdout).toContain(":15008 ");
    // A second demo refuses to wipe the kept one.
    const again = await run([NSHUB, "demo"], { env: ENV, timeoutMs: 60_000 });
    expect(again.code).toBe(1);
    expect(again.stdout).toContain("demo --down");
    expect((await ours()).length).toBe(8);

    const d = await run([NSHUB, "demo", "--down"], { env: ENV, timeoutMs: 60_000 });
    expect(d.code).toBe(0);
    expect(d.stdout).toContain("stopped 10 processes, removed 8 namespaces");
    await expectNothingLeft({ tags, workDir: j.workDir, pids: j.processes.map((p) => p.pid) });
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
      if (!sent && out.includes("[6/10]")) {
        p.kill("SIGINT");
        sent = true;
      }
    }
    const code = await p.exited;
    if (code !== 130) console.log(out, await stderr);
    expect(sent).toBe(true);
    expect(code).toBe(130);
    expect(out).toContain("Ctrl-C: stopping and tearing everything down");
    expect(out).toMatch(/✔ clean teardown\s+5 pods deleted through CNI DEL, 10 processes stopped, 2 nodes, the fabric/);
    expect(out).toContain("interrupted (SIGINT); everything the demo made was torn down");
    const f = factsOf(out);
    expect(f.tags.length).toBe(3);
    await expectNothingLeft(f);
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);
});
