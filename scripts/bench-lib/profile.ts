// Where the proxy's time goes under iperf3 (run when a traffic target is missed, or --profile).
//
// A. Against the measured proxy (dist/nshub), through the nshub pair:
//   * during one iperf3 run: the proxy's CPU split (user vs system) from /proc, and `perf record`:
//     samples by shared object (kernel, libc, Bun's native code, JIT'd JS) and the top symbols
//     (kernel symbols resolve; JIT'd JS shows as [JIT] addresses);
//   * during one wrk run (new connections): `perf record` again, for the kernel time by syscall
//     and the samples by thread;
//   * `strace -c -f` during a second iperf3 run, a sockperf run and a wrk run: which syscalls,
//     how many per byte, per round trip, per new connection.
// B. The proxy is then restarted from source under Bun's sampling profiler (`bun --cpu-prof-md
//    src/main.ts proxy`), so that JS frames have their real names and lines, and the loads run
//    again; the profile is written when the proxy exits. It samples the main thread (one of the
//    data-plane threads). With the splice relay no JavaScript runs per byte, so only wrk runs
//    then: an idle thread's samples would land on whatever JS ran last (a timer) and drown the
//    per-connection work. (Not strace'd: the sampling profiler itself signals the JS thread
//    about a thousand times a second.)
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { run, type NetSim, type Pod, type SimProcess } from "../../src/sim/index.ts";
import { parseIperf3Json, parseSockperf, parseWrk, straceCalls } from "./parse.ts";
import type { ProfileResult, RelayKind } from "./results.ts";
import { cpuSeconds } from "./sys.ts";

const REPO = resolve(import.meta.dir, "../..");

export interface ProfileOptions {
  sim: NetSim;
  pair: { a: Pod; b: Pod };
  /** The running (measured) proxy; it is stopped first. */
  proxy: SimProcess;
  config: string;
  /** The measured proxy's relay (proxy.relay). */
  relay: RelayKind | undefined;
  seconds: number;
  nobody: string[];
  iperfPort: number;
  sockperfPort: number;
  httpPort: number;
  workDir: string;
  /** Command prefix raising the fd limit (prlimit …), or empty. */
  fdPrefix: string[];
  log: (msg: string) => void;
}

export function hotFunctions(md: string, rows: number): string | undefined {
  const i = md.indexOf("## Hot Functions");
  if (i < 0) return undefined;
  const lines = md.slice(i).split("\n").filter((l) => l.startsWith("|"));
  return lines.slice(0, rows + 2).join("\n");
}

export function perfTable(text: string, rows: number): string {
  return text
    .split("\n")
    .filter((l) => l.trim() !== "" && !l.startsWith("#"))
    .slice(0, rows)
    .join("\n");
}

export async function profileProxy(o: ProfileOptions): Promise<ProfileResult> {
  const notes: string[] = [];
  const dir = join(o.workDir, "profile");
  mkdirSync(dir, { recursive: true });
  const iperf = (secs: number) =>
    o.pair.a.spawn([...o.nobody, "iperf3", "-c", o.pair.b.ip, "-p", String(o.iperfPort), "-t", String(secs), "-P", "1", "-J"]);
  const sockperf = (extra: string[] = []) =>
    o.pair.a.exec([...o.nobody, "sockperf", "ping-pong", "--tcp", "-i", o.pair.b.ip, "-p", String(o.sockperfPort), "-t", "3", "-m", "64", "--full-rtt", ...extra], { timeoutMs: 60_000 });
  const wrk = (secs = 3) => o.pair.a.exec([...o.nobody, "wrk", "-t1", "-c16", `-d${secs}s`, "-H", "Connection: close", `http://${o.pair.b.ip}:${o.httpPort}/`], { timeoutMs: 60_000 });

  // ---- A. the measured proxy (dist/nshub): perf, CPU split, syscalls ----------------------------
  const pid = o.proxy.pid;

  // A1. perf + CPU split during iperf3
  const client = iperf(o.seconds + 2);
  await Bun.sleep(1000);
  const c0 = cpuSeconds(pid);
  const w0 = performance.now();
  const perfData = join(dir, "perf.data");
  const rec = await run(["perf", "record", "-F", "499", "-g", "-p", String(pid), "-o", perfData, "--", "sleep", String(o.seconds)], { timeoutMs: (o.seconds + 30) * 1000 });
  const c1 = cpuSeconds(pid);
  const wallSec = (performance.now() - w0) / 1000;
  await client.exited;
  let gbps = NaN;
  try {
    gbps = parseIperf3Json(client.stdout()).bitsPerSecond / 1e9;
  } catch (e) {
    notes.push(`iperf3 during the profile: ${(e as Error).message}`);
  }
  let byDso: string | undefined;
  let topSymbols: string | undefined;
  if (rec.code === 0 && existsSync(perfData)) {
    const dso = await run(["perf", "report", "-i", perfData, "--stdio", "--no-children", "--sort", "dso", "-g", "none"], { timeoutMs: 120_000 });
    byDso = perfTable(dso.stdout, 12);
    const sym = await run(["perf", "report", "-i", perfData, "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none"], { timeoutMs: 120_000 });
    topSymbols = perfTable(sym.stdout, 25);
  } else {
    notes.push(`perf record failed (exit ${rec.code}): ${rec.stderr.trim().slice(-300)}`);
  }

  // A1b. perf during wrk: where a new connection's time goes (kernel time by syscall, threads)
  let cps: ProfileResult["cps"];
  {
    const data = join(dir, "perf-cps.data");
    const c0w = cpuSeconds(pid);
    const load = o.pair.a.exec([...o.nobody, "wrk", "-t1", "-c16", "-d4s", "-H", "Connection: close", `http://${o.pair.b.ip}:${o.httpPort}/`], { timeoutMs: 60_000 });
    await Bun.sleep(500);
    const recCps = await run(["perf", "record", "-F", "999", "-g", "-p", String(pid), "-o", data, "--", "sleep", "3"], { timeoutMs: 60_000 });
    const out = await load;
    const c1w = cpuSeconds(pid);
    if (recCps.code === 0 && existsSync(data)) {
      const threads = await run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "comm,dso", "-g", "none"], { timeoutMs: 120_000 });
      const children = await run(["perf", "report", "-i", data, "--stdio", "--children", "--sort", "sym", "-g", "none"], { timeoutMs: 120_000 });
      let connections = 0;
      try {
        connections = parseWrk(out.stdout).requests;
      } catch (e) {
        notes.push(`wrk during perf: ${(e as Error).message}`);
      }
      cps = { cpu: { user: c1w.user - c0w.user, sys: c1w.sys - c0w.sys }, connections, byThread: perfTable(threads.stdout, 10), children: children.stdout };
    } else {
      notes.push(`perf record during wrk failed (exit ${recCps.code}): ${recCps.stderr.trim().slice(-300)}`);
    }
  }

  // A2. syscalls during iperf3
  let syscalls: string | undefined;
  {
    const client2 = iperf(5);
    await Bun.sleep(1000);
    const st = Bun.spawn(["strace", "-c", "-f", "-p", String(pid)], { stdout: "pipe", stderr: "pipe" });
    await Bun.sleep(3000);
    st.kill("SIGINT");
    const [, err] = await Promise.all([new Response(st.stdout).text(), new Response(st.stderr).text()]);
    await st.exited;
    await client2.exited;
    const lines = err.split("\n").filter((l) => /^\s*(% time|-{3,}|\s*\d)/.test(l) || /total/.test(l));
    syscalls = lines.slice(0, 20).join("\n") || undefined;
    let gbps2 = NaN;
    try {
      gbps2 = parseIperf3Json(client2.stdout()).bitsPerSecond / 1e9;
    } catch {
      // reported below as n/a
    }
    if (syscalls) notes.push(`Under strace the same transfer ran at ${Number.isFinite(gbps2) ? gbps2.toFixed(2) : "n/a"} Gb/s (strace's own overhead), so only the syscall mix and the bytes per call are meaningful.`);
  }

  // A3. syscalls per round trip (sockperf) and per new connection (wrk)
  const perOp: NonNullable<ProfileResult["perOp"]> = {};
  try {
    const { calls, out } = await straceDuring(pid, () => sockperf());
    const sp = parseSockperf(out.stdout + out.stderr);
    if (sp.sentMessages) perOp.latency = { messages: sp.sentMessages, calls };
  } catch (e) {
    notes.push(`strace during sockperf: ${(e as Error).message}`);
  }
  try {
    const { calls, out } = await straceDuring(pid, () => wrk());
    perOp.cps = { connections: parseWrk(out.stdout).requests, calls };
  } catch (e) {
    notes.push(`strace during wrk: ${(e as Error).message}`);
  }

  // ---- B. JavaScript profile: the same code from source under Bun's sampling profiler ----------
  await o.proxy.stop(15_000);
  const proxy = o.sim.node.spawn(
    [...o.fdPrefix, process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${dir}`, join(REPO, "src/main.ts"), "proxy", "--config", o.config],
    // the measured proxy's log format (its default, JSON lines), so the profile shows the same work
    { env: (({ NSHUB_LOG_FORMAT: _format, ...env }) => env)(process.env) },
  );
  await proxy.waitForOutput(/proxy ready/, 60_000);
  await o.pair.a.waitForTcpPort(15001, { timeoutMs: 30_000 });
  await o.pair.b.waitForTcpPort(15006, { timeoutMs: 30_000 });
  await Bun.sleep(500);
  const perByteJs = o.relay !== "splice";
  if (perByteJs) {
    const c = iperf(o.seconds);
    await c.exited;
    await sockperf();
    await wrk();
  } else {
    await wrk(o.seconds);
  }
  await proxy.stop(20_000);
  let hot: string | undefined;
  const mds = readdirSync(dir).filter((f) => f.endsWith(".md"));
  if (mds[0]) hot = hotFunctions(readFileSync(join(dir, mds[0]), "utf8"), 20);
  else notes.push("Bun wrote no CPU profile (the proxy did not exit cleanly?)");
  if (hot) {
    notes.push(
      [
        `Bun's sampling profiler (\`bun --cpu-prof-md\`; JS functions and the native functions they call, by self time; the proxy ran from source for this — same code as dist/nshub — and the profile covers its main thread, one of the data-plane threads) ` +
          (perByteJs
            ? `through \`iperf3 -P 1\` for ${o.seconds} s, \`sockperf ping-pong\` for 3 s and \`wrk\` with \`Connection: close\` for 3 s:`
            : `through \`wrk\` with \`Connection: close\` for ${o.seconds} s only: with the splice relay no JavaScript runs per byte, and an idle thread's samples would be charged to whatever JS ran last (a timer):`),
        "",
        hot,
      ].join("\n"),
    );
  }

  return {
    what: `perf and strace ran against the measured proxy (dist/nshub) during \`iperf3 -P 1\` through the nshub pair: \`perf record -F 499 -g -p <proxy>\` for ${o.seconds} s, then \`strace -c -f -p <proxy>\` for 3 s of a second run, then strace during a 3 s sockperf and a 3 s wrk run. For JavaScript function names the proxy was then restarted from source under Bun's profiler (all pods re-sent by the agent).`,
    cpu: { user: c1.user - c0.user, sys: c1.sys - c0.sys, wallSec, gbps },
    byDso,
    topSymbols,
    cps,
    syscalls,
    perOp,
    notes,
  };
}

/** Runs `fn` with `strace -c -f` attached to `pid`; returns the call counts and fn's result. */
async function straceDuring<T>(pid: number, fn: () => Promise<T>): Promise<{ calls: Record<string, number>; out: T }> {
  const st = Bun.spawn(["strace", "-c", "-f", "-p", String(pid)], { stdout: "pipe", stderr: "pipe" });
  await Bun.sleep(500); // attached to every thread
  let out: T;
  try {
    out = await fn();
  } finally {
    st.kill("SIGINT");
  }
  const [, err] = await Promise.all([new Response(st.stdout).text(), new Response(st.stderr).text()]);
  await st.exited;
  return { calls: straceCalls(err), out };
}
