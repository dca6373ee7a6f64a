#!/usr/bin/env bun
// What a workload certificate costs (issue 17): the time to get one, and the proxy's memory per
// identity. Prints a table (and --json); docs/BENCHMARKS.md "Workload certificates" quotes a run.
//
//   1. Time to issue, end to end as the proxy does it (src/identity/workload-cert.ts: a fresh
//      P-256 key, the CSR, the source, the answer checked): N certificates one after another
//      through the local signer (an `nshub ca init` directory, no network) and through the
//      compiled `nshub ca serve` on loopback (gRPC + TLS, bearer token); p50/p99/max.
//   2. Proxy memory per identity: three `nshub proxy` processes (dist/nshub), each given the same
//      P pods over ZDS (one network namespace this script creates, handed over P times under
//      different uids, so every proxy binds the same sockets): certificates off; on, with every
//      pod in one service account (1 identity); on, each pod its own (P identities). RSS after a
//      full GC through the admin socket's POST /debug/gc (three rounds, the last kept). Per
//      identity = (RSS with P identities - RSS with 1) / (P - 1): same pods, only identities differ.
//      Also the time from the proxy's ZDS snapshot to P valid certificates (8 requests at once).
//
// Root (network namespace, the proxy's capability check). Everything runs on loopback and in one
// namespace named nshi-<hex>, removed at the end (also on failure).
//
//   usage: bun scripts/bench-identity.ts [--n 200] [--pods 200] [--settle-ms 10000] [--json]
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { createCaClient } from "../src/identity/ca-client.ts";
import { openLocalCaDir } from "../src/identity/local-ca.ts";
import type { CertificateSource } from "../src/identity/source.ts";
import { fetchWorkloadCertificate } from "../src/identity/workload-cert.ts";
import { run } from "../src/sim/process.ts";
import * as sys from "../src/sys/index.ts";
import { ZdsServer } from "../src/zds/server.ts";
import { summarize, type Summary } from "./bench-lib/stats.ts";

const NSHUB = resolve(import.meta.dir, "../dist/nshub");
const { values } = parseArgs({ options: { n: { type: "string" }, pods: { type: "string" }, "settle-ms": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } } });
if (values.help) {
  console.log("usage: bun scripts/bench-identity.ts [--n 200] [--pods 200] [--settle-ms 10000] [--json]   (root; needs dist/nshub)");
  process.exit(0);
}
const N = Number(values.n ?? 200);
const PODS = Number(values.pods ?? 200);
/** Quiet time before the RSS is read: freed native memory goes back to the OS with a delay. */
const SETTLE_MS = Number(values["settle-ms"] ?? 10_000);
const tmp = mkdtempSync(join(tmpdir(), "nshub-bench-identity-"));
const caDir = join(tmp, "ca");
const netnsName = `nshi-${randomBytes(3).toString("hex")}`;

function nshub(args: string[]): string {
  const r = Bun.spawnSync([NSHUB, ...args], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`nshub ${args.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** Milliseconds per certificate, one after another. */
async function issueTimes(source: CertificateSource, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n + 5; i++) {
    const t = performance.now();
    await fetchWorkloadCertificate(source, `spiffe://cluster.local/ns/bench/sa/sa-${i}`, 86_400);
    if (i >= 5) out.push(performance.now() - t); // the first few warm the JIT and the session
  }
  return out;
}

async function viaCaServe(n: number): Promise<number[]> {
  const token = nshub(["ca", "issue-node", "--dir", caDir, "--node", "bench"]).trim();
  const ca = Bun.spawn([NSHUB, "ca", "serve", "--dir", caDir, "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"], {
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, NSHUB_LOG_FORMAT: "json", NSHUB_LOG_LEVEL: "info" },
  });
  try {
    let port = 0;
    let text = "";
    const reader = (ca.stderr as ReadableStream<Uint8Array>).getReader();
    while (!port) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`ca serve exited: ${text}`);
      text += new TextDecoder().decode(value);
      port = Number(/"address":"127\.0\.0\.1:(\d+)"/.exec(text)?.[1] ?? 0);
    }
    // Keep reading its log (one line per issuance), so a full pipe never stalls the CA.
    void (async () => {
      while (!(await reader.read()).done);
    })().catch(() => undefined);
    const client = createCaClient({ address: `127.0.0.1:${port}`, caRoots: await Bun.file(join(caDir, "root-cert.pem")).text(), token });
    try {
      return await issueTimes(client, n);
    } finally {
      client.close();
    }
  } finally {
    ca.kill("SIGTERM");
    await ca.exited;
  }
}

interface ProxyRun {
  mode: string;
  identities: number;
  rssMiB: number;
  /** The main thread's live JS heap after the GC (where the certificates live). */
  heapMiB: number;
  /** ms from the proxy's first "certificate requested" log line to its last "certificate issued". */
  allValidMs?: number;
}

async function proxyRss(mode: "off" | "one" | "each", netns: sys.Netns): Promise<ProxyRun> {
  const dir = mkdtempSync(join(tmp, `proxy-${mode}-`));
  const zdsPath = join(dir, "zds.sock");
  const pods = Array.from({ length: PODS }, (_, i) => ({
    uid: `bench-${mode}-${i}`,
    info: { name: `pod-${i}`, namespace: "bench", serviceAccount: mode === "each" ? `sa-${i}` : "shared" },
    netns,
  }));
  const zds = new ZdsServer({ path: zdsPath, snapshot: () => pods });
  zds.start();
  const cfg = join(dir, "config.yaml");
  writeFileSync(cfg, "{}\n");
  const port = 30000 + Math.floor(Math.random() * 20000);
  const admin = `127.0.0.1:${port}`;
  const socket = join(dir, "admin.sock");
  const env: Record<string, string> = { ...(process.env as Record<string, string>), NSHUB_LOG_LEVEL: "info", NSHUB_LOG_FORMAT: "json" };
  if (mode !== "off") Object.assign(env, { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: caDir });
  const argv = [NSHUB, "proxy", "--config", cfg, "--zds-socket", zdsPath, "--admin-address", admin, "--admin-socket", socket, "--metrics-address", `127.0.0.1:${port + 1}`, "--readiness-address", `127.0.0.1:${port + 2}`];
  const proc = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe", env });
  const stderr = new Response(proc.stderr).text();
  try {
    const deadline = Date.now() + 120_000;
    const ready = async () => (await fetch(`http://127.0.0.1:${port + 2}/healthz/ready`).catch(() => undefined))?.status === 200;
    while (!(await ready())) {
      if (proc.exitCode !== null) throw new Error(`proxy exited: ${await stderr}`);
      if (Date.now() > deadline) throw new Error("proxy not ready");
      await Bun.sleep(50);
    }
    const want = mode === "off" ? 0 : mode === "one" ? 1 : PODS;
    if (want > 0) {
      for (;;) {
        const r = (await (await fetch(`http://${admin}/certs`)).json()) as { certificates: { state: string }[] };
        if (r.certificates.length === want && r.certificates.every((c) => c.state === "valid")) break;
        if (Date.now() > deadline) throw new Error(`certificates not valid: ${JSON.stringify(r).slice(0, 500)}`);
        await Bun.sleep(20);
      }
    }
    await Bun.sleep(SETTLE_MS);
    let gc = { rss: 0, heapUsed: 0 };
    for (let i = 0; i < 3; i++) gc = (await (await fetch("http://localhost/debug/gc", { method: "POST", unix: socket })).json()) as typeof gc;
    proc.kill("SIGKILL");
    const lines = (await stderr)
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { msg: string; time: string });
    const at = (msg: string) => lines.filter((l) => l.msg === msg).map((l) => Date.parse(l.time));
    const requested = at("certificate requested: first pod with this identity");
    const issued = at("certificate issued");
    const allValidMs = want > 0 && requested.length && issued.length ? Math.max(...issued) - Math.min(...requested) : undefined;
    return { mode, identities: want, rssMiB: gc.rss / 2 ** 20, heapMiB: gc.heapUsed / 2 ** 20, allValidMs };
  } finally {
    proc.kill("SIGKILL");
    await proc.exited;
    await zds.stop();
  }
}

const fmt = (s: Summary) => `p50 ${s.p50.toFixed(2)} ms, p99 ${s.p99.toFixed(2)} ms, max ${s.max.toFixed(2)} ms (n=${s.n})`;

try {
  if (process.getuid?.() !== 0) throw new Error("needs root (a network namespace, the proxy's capability check)");
  nshub(["ca", "init", "--dir", caDir]);
  const local = await openLocalCaDir(caDir);
  const localTimes = summarize(await issueTimes(local, N));
  const serveTimes = summarize(await viaCaServe(N));

  await run(["ip", "netns", "add", netnsName]);
  await run(["ip", "-n", netnsName, "link", "set", "lo", "up"]);
  sys.homeNetns();
  const netns = sys.Netns.open(`/var/run/netns/${netnsName}`);
  const runs: ProxyRun[] = [];
  for (const mode of ["off", "one", "each"] as const) runs.push(await proxyRss(mode, netns));
  netns.close();
  const [off, one, each] = runs as [ProxyRun, ProxyRun, ProxyRun];
  const perIdentityKiB = ((each.rssMiB - one.rssMiB) * 1024) / (PODS - 1);
  const heapPerIdentityKiB = ((each.heapMiB - one.heapMiB) * 1024) / (PODS - 1);
  const result = { date: new Date().toISOString(), bun: Bun.version, n: N, pods: PODS, issue: { local: localTimes, caServe: serveTimes }, proxy: runs, perIdentityKiB, heapPerIdentityKiB };
  if (values.json) console.log(JSON.stringify(result, null, 2));
  else {
    console.log(`workload certificates (${result.date}, Bun ${Bun.version}, ${N} issued one after another, ${PODS} pods per proxy)`);
    console.log(`  time to issue, local signer:          ${fmt(localTimes)}`);
    console.log(`  time to issue, nshub ca serve (gRPC):  ${fmt(serveTimes)}`);
    for (const r of runs) {
      const valid = r.allValidMs !== undefined ? `; all ${r.identities} issued within ${r.allValidMs} ms of the first request` : "";
      console.log(`  proxy after GC, ${r.mode.padEnd(4)} (${String(r.identities).padStart(3)} identities): RSS ${r.rssMiB.toFixed(1)} MiB, JS heap ${r.heapMiB.toFixed(1)} MiB${valid}`);
    }
    console.log(`  per identity: RSS ${perIdentityKiB.toFixed(1)} KiB, JS heap ${heapPerIdentityKiB.toFixed(1)} KiB ((${PODS} identities - 1) / ${PODS - 1})`);
    console.log(`  certificates on (1 identity) vs off: RSS +${((one.rssMiB - off.rssMiB) * 1024).toFixed(0)} KiB, JS heap +${((one.heapMiB - off.heapMiB) * 1024).toFixed(0)} KiB`);
  }
} finally {
  sys.stopFdPoller();
  await run(["ip", "netns", "del", netnsName]).catch(() => undefined);
  rmSync(tmp, { recursive: true, force: true });
}
