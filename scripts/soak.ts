// scripts/soak: churns pods and connections on one virtual node for a bounded time while killing
// and restarting the agent and the proxy at random moments, then reports what happened and what
// was left behind. Not part of scripts/test (it runs for minutes); docs/RELIABILITY.md holds a
// report and what it proves. All traffic stays inside the namespaces this script creates.
import { randomBytes } from "node:crypto";
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, symlinkSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { createSim, type NetSim, type Pod, type SimProcess } from "../src/sim/index.ts";
import { listNetns } from "../src/sim/namespace.ts";
import { hostNetState } from "../test/helpers/host-state.ts";

const REPO = resolve(import.meta.dir, "..");
// The binary is copied into the run's directory first, so a rebuild of dist/ during a long soak
// (scripts/build starts with rm -rf dist) cannot take it away from the restarts.
let NSHUB = join(REPO, "dist/nshub");
const BUN = process.execPath;
const TOOLS = join(import.meta.dir, "soak-lib");
const NS = "soak";
const ECHO_PORT = 7000;

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: {
    minutes: { type: "string", default: "10" },
    seed: { type: "string" },
    out: { type: "string" },
    "max-pods": { type: "string", default: "6" },
    help: { type: "boolean", short: "h" },
  },
  strict: true,
});
if (flags.help) {
  console.log(`usage: scripts/soak [--minutes N] [--max-pods N] [--seed S] [--out FILE]

Churns pods (CNI ADD → traffic → CNI DEL) and connections (a steady echo client, every byte
compared) on one virtual node for N minutes (default 10), killing (SIGKILL) or stopping
(SIGTERM) the agent or the proxy at random moments and starting it again. Then reports pods
added/removed, connections tried/failed, bytes verified, fd and RSS of both daemons at start and
end, and leftovers (namespaces, host rules). Exit 1 when an echo came back wrong, a pod could not
be served once both daemons were up, or something was left behind. --out writes the markdown.`);
  process.exit(0);
}
const durationMs = Number(flags.minutes) * 60_000;
const maxPods = Number(flags["max-pods"]);
if (!(durationMs > 0) || !(maxPods > 0)) throw new Error("--minutes and --max-pods must be > 0");

// A small seeded generator (mulberry32), so a run's chaos schedule can be replayed with --seed.
const seed = flags.seed ?? randomBytes(4).toString("hex");
let state = parseInt(seed.slice(0, 8), 16) >>> 0;
const rand = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};
const between = (lo: number, hi: number) => lo + rand() * (hi - lo);

const log = (msg: string) => console.log(`${new Date().toISOString().slice(11, 19)} ${msg}`);

interface Daemon {
  name: "agent" | "proxy";
  proc: SimProcess;
}

const counts = {
  podsAdded: 0,
  podsAddRefused: 0,
  podsAddRefusedWhileUp: 0,
  podsRemoved: 0,
  podDelFailed: 0,
  churnConnTried: 0,
  churnConnFailed: 0,
  steady: { tried: 0, ok: 0, failed: 0, mismatched: 0, bytesVerified: 0 },
  churnBytesVerified: 0,
  mismatched: 0,
  kills: { agent: 0, proxy: 0 },
  failedWhileUp: [] as string[],
};
const outages: Array<{ from: number; to: number; what: string }> = [];
/** Was a daemon down (or back less than 3 s) at any moment of [t0, t1]? */
const outageDuring = (t0: number, t1: number) => outages.some((o) => t1 >= o.from - 500 && (o.to === 0 || t0 <= o.to + 3000));

function writeConfig(dir: string): string {
  const config = join(dir, "config.yaml");
  writeFileSync(
    config,
    [
      "logLevel: info",
      "agent:",
      `  zdsSocket: ${join(dir, "run/zds.sock")}`,
      `  apiSocket: ${join(dir, "run/agent.sock")}`,
      `  stateFile: ${join(dir, "state/agent-state.json")}`,
      "  enrollment:",
      "    namespaces:",
      `      include: ["${NS}"]`,
      "proxy:",
      `  zdsSocket: ${join(dir, "run/zds.sock")}`,
      "  drainDeadlineMs: 1000",
      "cni:",
      `  agentSocket: ${join(dir, "run/agent.sock")}`,
      `  logFile: ${join(dir, "cni.log")}`,
      "",
    ].join("\n"),
  );
  return config;
}

function fds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : -1;
  } catch {
    return -1;
  }
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("scripts/soak needs root (network namespaces, iptables)");
    return 2;
  }
  const hostBefore = await hostNetState();
  const dir = mkdtempSync(join(tmpdir(), "nshub-soak-"));
  const config = writeConfig(dir);
  copyFileSync(NSHUB, join(dir, "nshub"));
  chmodSync(join(dir, "nshub"), 0o755);
  symlinkSync(join(dir, "nshub"), join(dir, "nshub-cni"));
  NSHUB = join(dir, "nshub");
  const sim: NetSim = await createSim({
    prefix: "nsk-",
    plugins: [{ type: "nshub-cni", binary: join(dir, "nshub-cni"), config: { agentSocket: join(dir, "run/agent.sock"), logFile: join(dir, "cni.log") } }],
  });
  const started = Date.now();
  log(`soak: ${flags.minutes} min, seed ${seed}, node ${sim.node.name}, max ${maxPods} churn pods`);
  const start = (name: Daemon["name"]): Daemon => {
    const proc = sim.node.spawn([NSHUB, name, "--config", config]);
    return { name, proc };
  };
  const daemons = { agent: start("agent"), proxy: undefined as Daemon | undefined };
  await daemons.agent.proc.waitForOutput(/agent ready/, 30_000);
  daemons.proxy = start("proxy");
  await waitReady(sim, 30_000);
  let leftovers: string[] = [];
  let steadyClient: SimProcess | undefined;
  try {
    const server = await sim.addPod({ name: "echo", namespace: NS });
    server.spawn([BUN, join(TOOLS, "echo-server.ts"), String(ECHO_PORT)]);
    await server.waitForTcpPort(ECHO_PORT);
    const client = await sim.addPod({ name: "steady", namespace: NS });
    await Bun.sleep(2000);
    const startFigures = { agent: { fds: fds(daemons.agent.proc.pid), rss: rssMiB(daemons.agent.proc.pid) }, proxy: { fds: fds(daemons.proxy.proc.pid), rss: rssMiB(daemons.proxy.proc.pid) } };
    steadyClient = client.spawn([BUN, join(TOOLS, "echo-client.ts"), server.ip, String(ECHO_PORT), "32768", "0", "20"], { stdin: true });

    const deadline = started + durationMs;
    // Chaos: one daemon at a time, killed or stopped, down for 0.2-5 s, every 15-45 s.
    const chaos = (async () => {
      while (Date.now() < deadline - 20_000) {
        await Bun.sleep(between(15_000, 45_000));
        if (Date.now() >= deadline - 20_000) break;
        const which: Daemon["name"] = rand() < 0.5 ? "agent" : "proxy";
        const hard = rand() < 0.5;
        const d = daemons[which]!;
        const o = { from: Date.now(), to: 0, what: `${which} ${hard ? "SIGKILL" : "SIGTERM"}` };
        outages.push(o);
        counts.kills[which]++;
        log(`chaos: ${o.what} (pid ${d.proc.pid})`);
        if (hard) d.proc.proc.kill("SIGKILL");
        await d.proc.stop(5000);
        await Bun.sleep(between(200, 5000));
        daemons[which] = start(which);
        if (which === "agent") await daemons.agent.proc.waitForOutput(/agent ready/, 30_000);
        await waitReady(sim, 30_000);
        // Give the proxy time to reconnect to a restarted agent and take its snapshot.
        await Bun.sleep(1500);
        o.to = Date.now();
        log(`chaos: ${which} back after ${o.to - o.from} ms`);
      }
    })();

    // Churn: keep up to maxPods pods; each gets an echo round through the mesh, then is deleted.
    const live = new Set<Pod>();
    let seq = 0;
    const churnOne = async () => {
      const name = `churn-${++seq}`;
      const t0 = Date.now();
      let pod: Pod;
      try {
        pod = await sim.addPod({ name, namespace: NS });
      } catch (e) {
        counts.podsAddRefused++;
        if (!outageDuring(t0, Date.now())) {
          counts.podsAddRefusedWhileUp++;
          counts.failedWhileUp.push(`${name}: ADD refused while both daemons were up: ${(e as Error).message.slice(0, 200)}`);
        }
        return;
      }
      counts.podsAdded++;
      live.add(pod);
      const r = await pod.exec([BUN, join(TOOLS, "echo-client.ts"), server.ip, String(ECHO_PORT), String(4096 + Math.floor(rand() * 60_000)), "3"], { timeoutMs: 60_000 });
      const last = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as { total?: typeof counts.steady; fail?: number; error?: string }).filter((x) => x.total).pop();
      const t = last?.total ?? { tried: 3, ok: 0, failed: 3, mismatched: 0, bytesVerified: 0 };
      counts.churnConnTried += t.tried;
      counts.churnConnFailed += t.failed + t.mismatched;
      counts.mismatched += t.mismatched;
      counts.churnBytesVerified += t.bytesVerified;
      if (t.failed + t.mismatched > 0 && !outageDuring(t0, Date.now())) counts.failedWhileUp.push(`${name}: ${t.failed + t.mismatched} of ${t.tried} echo rounds failed while both daemons were up`);
      await Bun.sleep(between(0, 3000));
      try {
        await sim.deletePod(pod);
        counts.podsRemoved++;
      } catch (e) {
        counts.podDelFailed++;
        log(`DEL ${name}: ${(e as Error).message.slice(0, 200)}`);
      }
      live.delete(pod);
    };
    const workers = Array.from({ length: maxPods }, async () => {
      while (Date.now() < deadline) await churnOne();
    });
    const progress = setInterval(() => log(`pods +${counts.podsAdded}/-${counts.podsRemoved} (ADD refused ${counts.podsAddRefused}), churn conns ${counts.churnConnTried} (failed ${counts.churnConnFailed}), kills agent ${counts.kills.agent} proxy ${counts.kills.proxy}`), 30_000);
    await Promise.all([...workers, chaos]);
    clearInterval(progress);

    // The end: both daemons up, the steady client stopped, one last pod must be served.
    await waitReady(sim, 30_000);
    await Bun.sleep(2000);
    steadyClient.proc.stdin?.end();
    await steadyClient.exited;
    const lines = steadyClient.stdout().trim().split("\n").map((l) => JSON.parse(l) as { total?: typeof counts.steady; fail?: number; error?: string });
    counts.steady = lines.filter((x) => x.total).pop()!.total!;
    counts.mismatched += counts.steady.mismatched;
    for (const f of lines.filter((x) => x.fail !== undefined)) {
      // A failure counts against nshub only when no outage was on (or had just ended: 3 s grace).
      if (!outageDuring(f.fail!, f.fail!)) counts.failedWhileUp.push(`steady client at +${Math.round((f.fail! - started) / 1000)} s: ${f.error}`);
    }
    const final = await sim.addPod({ name: "final", namespace: NS });
    const fr = await final.exec([BUN, join(TOOLS, "echo-client.ts"), server.ip, String(ECHO_PORT), "65536", "5"], { timeoutMs: 60_000 });
    const finalOk = /"ok":5/.test(fr.stdout.split("\n").filter(Boolean).pop() ?? "");
    if (!finalOk) counts.failedWhileUp.push(`final pod: ${fr.stdout.trim().split("\n").pop()}`);
    await sim.deletePod(final);
    await Bun.sleep(2000);
    // Pods whose DEL was lost while the agent was down are reconciled away once their netns is
    // gone: wait for that (bounded) before counting what the agent still holds.
    let agentPods = -1;
    for (const until = Date.now() + 90_000; Date.now() < until; await Bun.sleep(1000)) {
      const served = await sim.node.exec(["curl", "-s", "-m", "2", "http://127.0.0.1:15010/pods"]);
      agentPods = (JSON.parse(served.stdout || "{}").pods ?? []).length as number;
      if (agentPods === 2) break;
    }

    const endFigures = { agent: { fds: fds(daemons.agent.proc.pid), rss: rssMiB(daemons.agent.proc.pid) }, proxy: { fds: fds(daemons.proxy!.proc.pid), rss: rssMiB(daemons.proxy!.proc.pid) } };
    await sim.destroy();
    rmSync(dir, { recursive: true, force: true });
    const left = (await listNetns()).filter((n) => n.startsWith("nsk-"));
    const hostAfter = await hostNetState();
    leftovers = [...left.map((n) => `namespace ${n}`), ...Object.keys(hostBefore).filter((k) => hostBefore[k] !== hostAfter[k]).map((k) => `host ${k} changed`)];
    const report = render({ startFigures, endFigures, agentPods, finalOk, leftovers });
    console.log(report);
    if (flags.out) writeFileSync(flags.out, report);
    const bad = counts.mismatched > 0 || counts.failedWhileUp.length > 0 || leftovers.length > 0 || agentPods !== 2;
    return bad ? 1 : 0;
  } finally {
    if (steadyClient?.running) await steadyClient.stop();
    await sim.destroy().catch((e) => console.error(`cleanup: ${(e as Error).message}`));
  }
}

/** Waits until the proxy's readiness endpoint answers 200 inside the node. */
async function waitReady(sim: NetSim, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const r = await sim.node.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", "http://127.0.0.1:15021/healthz/ready"]);
    if (r.stdout === "200") return;
    await Bun.sleep(100);
  }
  throw new Error(`proxy not ready after ${timeoutMs} ms`);
}

interface Figures {
  fds: number;
  rss: number;
}

function render(r: { startFigures: Record<string, Figures>; endFigures: Record<string, Figures>; agentPods: number; finalOk: boolean; leftovers: string[] }): string {
  const o = outages.map((x) => x.to - x.from).sort((a, b) => a - b);
  return [
    `## Soak run: ${flags.minutes} min, seed \`${seed}\`, up to ${maxPods} churn pods`,
    "",
    "| measure | value |",
    "|---|---|",
    `| pods added / removed through the CNI chain | ${counts.podsAdded} / ${counts.podsRemoved} (DEL failures: ${counts.podDelFailed}) |`,
    `| pod ADDs refused (fail closed) | ${counts.podsAddRefused}, of which while both daemons were up: ${counts.podsAddRefusedWhileUp} |`,
    `| daemon kills/stops (then restarted) | agent ${counts.kills.agent}, proxy ${counts.kills.proxy}; outage ${o.length ? `${o[0]}–${o[o.length - 1]} ms` : "-"} each (kill → ready again) |`,
    `| steady client connections tried / failed | ${counts.steady.tried} / ${counts.steady.failed} |`,
    `| churn-pod connections tried / failed | ${counts.churnConnTried} / ${counts.churnConnFailed} |`,
    `| bytes echoed and verified | ${(counts.steady.bytesVerified + counts.churnBytesVerified).toLocaleString("en-US")} |`,
    `| echoes that came back different | ${counts.mismatched} |`,
    `| failures while both daemons were up (not during an outage or 3 s after it) | ${counts.failedWhileUp.length} |`,
    `| agent fds / RSS at start → end | ${r.startFigures.agent!.fds} / ${r.startFigures.agent!.rss.toFixed(1)} MiB → ${r.endFigures.agent!.fds} / ${r.endFigures.agent!.rss.toFixed(1)} MiB |`,
    `| proxy fds / RSS at start → end | ${r.startFigures.proxy!.fds} / ${r.startFigures.proxy!.rss.toFixed(1)} MiB → ${r.endFigures.proxy!.fds} / ${r.endFigures.proxy!.rss.toFixed(1)} MiB |`,
    `| pods the agent holds at the end (2 expected: echo, steady) | ${r.agentPods} |`,
    `| a new pod served at the end | ${r.finalOk ? "yes (5 of 5 echoes)" : "NO"} |`,
    `| left behind (namespaces, host links/routes/rules/iptables/ipsets) | ${r.leftovers.length ? r.leftovers.join("; ") : "nothing"} |`,
    "",
    ...(counts.failedWhileUp.length ? ["Failures while both daemons were up:", "", ...counts.failedWhileUp.slice(0, 20).map((f) => `- ${f}`), ""] : []),
    "Start and end figures are of the daemons running at that moment (after restarts they are new processes), each with the two long-lived pods only.",
    "",
  ].join("\n");
}

process.exit(await main());
