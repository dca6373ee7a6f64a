// Where the mTLS paths' CPU goes (run when one of issue 18's targets is missed, or --profile):
//
// A. perf on all four proxy processes, two at a time, during `iperf3 -P 1` through each
//    two-node path: nshub HBONE (node 1's proxy: the client side, TLS encrypt + HTTP/2 framing;
//    node 2's: the server side) and the HAProxy TLS chain (HAProxy 1 and 2). Samples by shared
//    object (kernel, libc/libcrypto, Bun's native code in the nshub binary — BoringSSL, the
//    HTTP/2 codec, the socket layer —, JIT-compiled JavaScript), top symbols, and by thread.
//    Then both HAProxy processes under wrk (`Connection: close`): what a TLS connection per client
//    connection costs them, resumed or not.
// B. Bun's sampling profiler on node 1's proxy, restarted from source (`bun --cpu-prof-md
//    src/main.ts proxy`, one data-plane thread so the samples cover all the proxy's JavaScript),
//    once under `iperf3 -P 1` and once under wrk (`Connection: close`): the JavaScript functions
//    (and the native functions they call) by self time. The profile is written when the proxy
//    exits. This is the last thing the mTLS nodes do: node 1's proxy is not restored.
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { run } from "../../src/sim/index.ts";
import type { MtlsBench } from "./mtls.ts";
import { parseIperf3Json } from "./parse.ts";
import { hotFunctions, perfTable } from "./profile.ts";
import type { MtlsProfile, ProcessProfile } from "./results.ts";
import { cpuSeconds } from "./sys.ts";

const REPO = resolve(import.meta.dir, "../..");

export interface MtlsProfileOptions {
  mtls: MtlsBench;
  seconds: number;
  nobody: string[];
  iperfPort: number;
  httpPort: number;
  workDir: string;
  fdPrefix: string[];
  log: (msg: string) => void;
}

async function perfProcess(pid: number, who: string, file: string, seconds: number): Promise<ProcessProfile & { error?: string }> {
  const c0 = cpuSeconds(pid);
  const w0 = performance.now();
  const rec = await run(["perf", "record", "-F", "499", "-g", "-p", String(pid), "-o", file, "--", "sleep", String(seconds)], { timeoutMs: (seconds + 30) * 1000 });
  const c1 = cpuSeconds(pid);
  const out: ProcessProfile & { error?: string } = { who, cpu: { user: c1.user - c0.user, sys: c1.sys - c0.sys, wallSec: (performance.now() - w0) / 1000 } };
  if (rec.code !== 0 || !existsSync(file)) return { ...out, error: `perf record for ${who} failed (exit ${rec.code}): ${rec.stderr.trim().slice(-300)}` };
  const report = (sort: string) => run(["perf", "report", "-i", file, "--stdio", "--no-children", "--sort", sort, "-g", "none"], { timeoutMs: 120_000 });
  out.byDso = perfTable((await report("dso")).stdout, 10);
  out.topSymbols = perfTable((await report("dso,sym")).stdout, 20);
  out.byThread = perfTable((await report("comm,dso")).stdout, 10);
  return out;
}

export async function profileMtls(o: MtlsProfileOptions): Promise<MtlsProfile> {
  const notes: string[] = [];
  const dir = join(o.workDir, "mtls-profile");
  mkdirSync(dir, { recursive: true });
  const m = o.mtls;
  const iperf = (path: "hbone-nodes" | "haproxy-tls", secs: number) => {
    const { a, b } = m.pairs[path];
    return a.spawn([...o.nobody, "iperf3", "-c", b.ip, "-p", String(o.iperfPort), "-t", String(secs), "-P", "1", "-J"]);
  };
  const gbps: MtlsProfile["gbps"] = {};
  const procs: ProcessProfile[] = [];

  // ---- A. perf on both processes of each two-node path under iperf3 -P 1 -------------------------
  const who = {
    "hbone-nodes": ["nshub proxy, node 1 (HBONE client side: A's outbound, TLS encrypt)", "nshub proxy, node 2 (HBONE server side: B's 15008, TLS decrypt)"],
    "haproxy-tls": ["HAProxy 1, node 1 (TLS client side)", "HAProxy 2, node 2 (TLS server side)"],
  } as const;
  for (const path of ["hbone-nodes", "haproxy-tls"] as const) {
    const client = iperf(path, o.seconds + 3);
    await Bun.sleep(1000);
    const pids = m.pids(path)!;
    const got = await Promise.all(pids.map((pid, i) => perfProcess(pid, who[path][i]!, join(dir, `perf-${path}-${i + 1}.data`), o.seconds)));
    await client.exited;
    try {
      gbps[path] = parseIperf3Json(client.stdout()).bitsPerSecond / 1e9;
    } catch (e) {
      notes.push(`iperf3 during the ${path} profile: ${(e as Error).message}`);
    }
    for (const g of got) {
      if (g.error) notes.push(g.error);
      const { error: _e, ...p } = g;
      procs.push({ ...p, load: "iperf3" });
    }
    await Bun.sleep(1000);
  }

  // ---- A2. perf on the HAProxy chain under wrk: what a TLS connection per client connection costs ----
  {
    const { a, b } = m.pairs["haproxy-tls"];
    const load = a.exec([...o.nobody, "wrk", "-t1", "-c16", `-d${o.seconds + 2}s`, "-H", "Connection: close", `http://${b.ip}:${o.httpPort}/`], { timeoutMs: (o.seconds + 40) * 1000 });
    await Bun.sleep(1000);
    const pids = m.pids("haproxy-tls")!;
    const names = ["HAProxy 1, node 1 (TLS client side), under wrk", "HAProxy 2, node 2 (TLS server side), under wrk"];
    const got = await Promise.all(pids.map((pid, i) => perfProcess(pid, names[i]!, join(dir, `perf-haproxy-tls-wrk-${i + 1}.data`), o.seconds)));
    const w = await load;
    const rps = /Requests\/sec:\s+([0-9.]+)/.exec(w.stdout)?.[1];
    for (const g of got) {
      if (g.error) notes.push(g.error);
      const { error: _e, ...p } = g;
      procs.push({ ...p, load: "wrk", who: `${p.who} (${rps ?? "?"} connections/s)` });
    }
    await Bun.sleep(1000);
  }

  // ---- B. node 1's proxy from source under Bun's profiler ------------------------------------------
  const js: NonNullable<MtlsProfile["js"]> = [];
  const node1 = m.nodes[0]!;
  for (const load of ["iperf3", "wrk"] as const) {
    const out = join(dir, `js-${load}`);
    mkdirSync(out, { recursive: true });
    await node1.proxy!.stop(15_000);
    const { NSHUB_LOG_FORMAT: _f, ...env } = process.env;
    node1.proxy = node1.sim.node.spawn([...o.fdPrefix, process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${out}`, join(REPO, "src/main.ts"), "proxy", "--config", m.configOf(0)], {
      env: { ...env, NSHUB_PROXY_WORKERS: "1" },
    });
    try {
      await node1.proxy.waitForOutput(/proxy ready/, 60_000);
      const { a, b } = m.pairs["hbone-nodes"];
      await a.waitForTcpPort(15001, { timeoutMs: 30_000 });
      // The first connection waits for the pod's certificate: not part of the profile's load.
      await a.exec([...o.nobody, "curl", "-s", "-m", "15", "-o", "/dev/null", `http://${b.ip}:${o.httpPort}/`], { timeoutMs: 20_000 });
      if (load === "iperf3") await iperf("hbone-nodes", o.seconds).exited;
      else await a.exec([...o.nobody, "wrk", "-t1", "-c16", `-d${o.seconds}s`, "-H", "Connection: close", `http://${b.ip}:${o.httpPort}/`], { timeoutMs: (o.seconds + 30) * 1000 });
    } catch (e) {
      notes.push(`JS profile under ${load}: ${(e as Error).message}`);
    }
    await node1.proxy.stop(20_000);
    const md = readdirSync(out).find((f) => f.endsWith(".md"));
    const hot = md ? hotFunctions(readFileSync(join(out, md), "utf8"), 20) : undefined;
    if (hot) js.push({ load: load === "iperf3" ? `\`iperf3 -P 1\` for ${o.seconds} s` : `\`wrk -t1 -c16 -H 'Connection: close'\` for ${o.seconds} s`, hot });
    else notes.push(`Bun wrote no CPU profile under ${load} (the proxy did not exit cleanly?)`);
  }

  return {
    what:
      `perf (\`perf record -F 499 -g -p <pid>\`, ${o.seconds} s) on both processes of each two-node path at once, during \`iperf3 -P 1\` through that path, and on both HAProxy processes during wrk with \`Connection: close\`; then node 1's proxy restarted from source (same code as dist/nshub) with one data-plane thread under Bun's sampling profiler (\`bun --cpu-prof-md\`), ` +
      `once under \`iperf3 -P 1\` and once under wrk with \`Connection: close\`, through the HBONE path.`,
    gbps,
    procs,
    js,
    notes,
  };
}
