// The benchmark's derived numbers, target checks, notes and page (scripts/bench-lib/report.ts,
// analysis.ts) on a hand-made result set: pure functions, no tools run.
import { describe, expect, test } from "bun:test";
import { analysis, dsoShares, straceCalls } from "../../scripts/bench-lib/analysis.ts";
import { checkTargets, derive, renderReport } from "../../scripts/bench-lib/report.ts";
import { emptyPerPath, type BenchResults, type PathName } from "../../scripts/bench-lib/results.ts";
import type { Iperf3Result, SockperfResult, WrkResult } from "../../scripts/bench-lib/parse.ts";

const iperf = (gbps: number): Iperf3Result => ({ bitsPerSecond: gbps * 1e9, sentBitsPerSecond: gbps * 1e9, retransmits: 0, streams: 1, seconds: 10, cpuClient: undefined, cpuServer: undefined });
const sock = (p50: number, p99: number, p999: number): SockperfResult => ({ roundTrip: true, avgUs: p50, observations: 1000, percentilesUs: {}, p50Us: p50, p99Us: p99, p999Us: p999, maxUs: p999, minUs: p50, sentMessages: undefined });
const wrk = (rps: number): WrkResult => ({ requests: rps * 5, seconds: 5, requestsPerSecond: rps, errors: { connect: 0, read: 0, write: 0, timeout: 0 }, non2xx3xx: 0 });

function results(): BenchResults {
  const r: BenchResults = {
    mode: "full",
    startedAt: "2026-01-01T00:00:00.000Z",
    runtimeSec: 600,
    machine: { cpuModel: "Test CPU", nproc: 2, memoryGiB: 8, kernel: "6.1", os: "Debian 12", bun: "1.4.5", haproxy: "2.6.12", iperf3: "3.12", sockperf: "3.7", wrk: "4.1.0", iptables: "iptables v1.8.9 (nf_tables)", nshubCommit: "abc1234", nshubDirty: false },
    params: { reps: 3, tpSeconds: 10, latSeconds: 5, cpsSeconds: 5, wrkConnections: 16, msgSize: 64, enrollSeq: 100, enrollConc: 50, scalePods: 500, idleConns: 10000 },
    checks: [],
    rules: { position: 4, before: "! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001", after: "! -d 127.0.0.1/32 -p tcp -m owner ! --uid-owner 0 -j REDIRECT --to-ports 15001" },
    throughput: { "1": emptyPerPath(), "4": emptyPerPath() },
    latency: emptyPerPath(),
    cps: emptyPerPath(),
    enrollment: {},
    errors: [],
    load: { start: "0.10 0.20 0.30", end: "0.50 0.50 0.40" },
  };
  const tp: Record<PathName, number[]> = { direct: [10, 12, 11], nshub: [5, 6, 4], haproxy: [3, 2, 4] };
  const lat: Record<PathName, number[]> = { direct: [20, 30, 25], nshub: [60, 80, 70], haproxy: [70, 70, 90] };
  for (const p of ["direct", "nshub", "haproxy"] as const) {
    for (let i = 0; i < 3; i++) {
      r.throughput["1"][p].push({ rep: i + 1, iperf: iperf(tp[p][i]!), proxyCpu: p === "direct" ? undefined : { user: 1, sys: 4 } });
      r.throughput["4"][p].push({ rep: i + 1, iperf: iperf(tp[p][i]! * 1.2) });
      r.latency[p].push({ rep: i + 1, sockperf: sock(lat[p][i]!, lat[p][i]! * 2, lat[p][i]! * 10) });
      r.cps[p].push({ rep: i + 1, wrk: wrk(p === "direct" ? 9000 : p === "nshub" ? 1700 : 2000) });
    }
  }
  r.enrollment.sequential = { pods: 100, concurrency: 1, pluginMs: Array.from({ length: 100 }, (_, i) => 100 + i), inPluginMs: [30], chainMs: [150], wallMs: 20000, failures: [] };
  r.enrollment.concurrent = { pods: 50, concurrency: 50, pluginMs: Array.from({ length: 50 }, () => 200), inPluginMs: [100], chainMs: [300], wallMs: 3000, failures: [] };
  r.enrollment.breakdown = { startupMs: [80, 85, 90], rpcMs: [25, 30, 28], errors: [] };
  r.resync = { pods: 502, readyMs: 900, podsServed: 502, stopMs: 10 };
  r.memory = { rss0KiB: 60_000, rssPodsKiB: 60_000 + 502 * 20, pods: 502, rssBeforeConnsKiB: 70_000, rssConnsKiB: 70_000 + 4000 * 9, conns: 10000, connsOpened: 4000, fdsBefore: 1000, fdsConns: 17000 };
  return r;
}

describe("derived numbers", () => {
  const d = derive(results());

  test("medians per path; added latency is the median of per-repetition differences", () => {
    expect(d.tp["1"]).toMatchObject({ direct: 11, nshub: 5, haproxy: 3 });
    expect(d.tp["1"]["hbone-nodes"]).toBeNaN(); // not measured: results from before issue 18
    expect(d.lat.nshub.p50).toBe(70);
    // per rep: 60-20, 80-30, 70-25 → 40, 50, 45 → 45 (not 70 - 25 = 45 by luck: check haproxy)
    expect(d.added.nshub.p50).toBe(45);
    // haproxy: 70-20, 70-30, 90-25 → 50, 40, 65 → 50 (median of differences, not 75 - 25)
    expect(d.added.haproxy.p50).toBe(50);
    expect(d.cps).toMatchObject({ direct: 9000, nshub: 1700, haproxy: 2000 });
  });

  test("CPU per GB, per-pod and per-connection bytes", () => {
    // 5 Gb/s × 10 s = 6.25 GB for 5 CPU-seconds
    expect(d.tpCpuPerGB["1"].nshub).toBeCloseTo(5 / 6.25, 9);
    expect(d.tpCpuPerGB["1"].direct).toBeNaN();
    expect(d.perPodBytes).toBeCloseTo(20 * 1024, 6);
    expect(d.perConnBytes).toBeCloseTo(9 * 1024, 6);
    expect(d.enrollSeq?.p99).toBe(198); // nearest rank: the 99th of 100
    expect(d.enrollSeq?.p50).toBe(149);
  });
});

describe("targets", () => {
  test("each target met, missed, or not measured", () => {
    const t = Object.fromEntries(checkTargets(results(), derive(results())).map((x) => [x.target, x.met]));
    expect(t["throughput 1 stream ≥ HAProxy"]).toBe(true);
    expect(t["throughput 1 stream ≥ 0.5× direct"]).toBe(false); // 5 / 11
    expect(t["added p50 latency ≤ HAProxy's"]).toBe(true); // 45 ≤ 50
    expect(t["connection rate ≥ 0.8× HAProxy"]).toBe(true); // 0.85
    expect(t["enrollment p99 ≤ 50 ms, 100 pods sequential"]).toBe(false);
    expect(t["enrollment p99 ≤ 250 ms, 50 pods concurrent"]).toBe(true);
    expect(t["proxy resync ≤ 2 s with 502 pods"]).toBe(true);
    expect(t["≤ 100 KB proxy memory per enrolled pod"]).toBe(true); // 20.48 KB
    expect(t["≤ 8 KB proxy memory per idle connection"]).toBe(false); // 9.216 KB
    const empty = results();
    empty.memory = undefined;
    empty.resync = undefined;
    const u = Object.fromEntries(checkTargets(empty, derive(empty)).map((x) => [x.target, x.met]));
    expect(u["≤ 8 KB proxy memory per idle connection"]).toBeUndefined();
    expect(u[`proxy resync ≤ 2 s with 500 pods`]).toBeUndefined();
  });
});

describe("page", () => {
  const page = renderReport(results(), { notes: analysis(results(), { binaryBytes: 110 * 2 ** 20 }) });

  test("machine, results with ratios, targets, the rule difference and all runs", () => {
    expect(page).toContain("| Test CPU | 2 | 8 GiB | 6.1 | Debian 12 | 1.4.5 | 2.6.12 | 3.12 | 3.7 | 4.1.0 | abc1234 |");
    expect(page).toContain("| throughput, 1 stream (Gb/s) | 11.00 | 5.00 | 3.00 | 0.45× | 1.67× |");
    expect(page).toContain("| **added** latency p50 over direct (µs) | — | +45.0 | +50.0 | — | 0.90× |");
    expect(page).toContain("| connection rate (new connections/s) | 9,000 | 1,700 | 2,000 | 0.19× | 0.85× |");
    expect(page).toContain("| throughput 1 stream ≥ 0.5× direct | 5.00 vs 11.00 Gb/s (0.45×) | **missed** |");
    expect(page).toContain("+ -A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m owner ! --uid-owner 0 -j REDIRECT --to-ports 15001");
    expect(page).toContain("| throughput 1× (Gb/s) | nshub | 5.00, 6.00, 4.00 |");
    expect(page).not.toContain("--quick mode");
  });

  test("notes explain the missed enrollment target from the breakdown", () => {
    expect(page).toContain("starting and ending the nshub-cni process alone (a 110 MiB Bun executable) takes 85 ms");
    expect(page).not.toContain("**Noise.**"); // load 0.10 at the start
  });
});

describe("profile parsing", () => {
  test("perf --sort dso shares", () => {
    const s = dsoShares("    81.82%  [kernel.kallsyms]\n    10.41%  libc.so.6        \n     7.25%  bun.exe          \n     0.40%  [JIT] tid 8611   \n     0.13%  [vdso]\n");
    expect(s).toEqual({ kernel: 81.82, libc: 10.41, bun: 7.25, jit: 0.4, other: 0.13 });
  });

  test("strace -c call counts", () => {
    const c = straceCalls(`% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 55.28    4.022893         611      6578      1946 futex
  5.40    0.392989         170      2306           sendto
  3.54    0.257484         112      2295       128 recvfrom
------ ----------- ----------- --------- --------- ----------------
100.00    7.277000                 19000      2949 total
`);
    expect(c).toEqual({ futex: 6578, sendto: 2306, recvfrom: 2295 });
  });
});

describe("the two relays (phase relay)", () => {
  test("medians per relay and splice/userspace ratios; the throughput note quotes them; no section without the phase", () => {
    const r = results();
    r.proxyRelay = "splice";
    // 1 stream: splice 8, 6, 7 Gb/s; userspace 4, 5, 3 → medians 7 and 4 (1.75×).
    const run = (rep: number, relay: "splice" | "userspace", g1: number, p50: number, rps: number) => ({
      rep,
      relay,
      seconds: 5,
      tp1: { rep, iperf: iperf(g1), proxyCpu: { user: 0, sys: 2 }, wallSec: 6 },
      tp4: { rep, iperf: iperf(g1 * 1.5), proxyCpu: { user: 0, sys: 2 }, wallSec: 6 },
      latency: sock(p50, p50 * 2, p50 * 10),
      cps: { wrk: wrk(rps), proxyCpu: { user: 0.2, sys: 0.8 } },
    });
    r.relayAB = [run(1, "splice", 8, 100, 2000), run(1, "userspace", 4, 110, 1900), run(2, "userspace", 5, 120, 2100), run(2, "splice", 6, 90, 2200), run(3, "splice", 7, 95, 2100), run(3, "userspace", 3, 130, 2000)];
    const page = renderReport(r, { notes: analysis(r) });
    expect(page).toContain("### The two relays (nshub only, same run)");
    expect(page).toMatch(/\| throughput, 1 stream \(Gb\/s\) \| 7\.00 \| 4\.00 \| 1\.75× \|/);
    expect(page).toMatch(/\| round trip p50 \(µs\) \| 95\.0 \| 120\.0 \| 0\.79× \|/);
    expect(page).toMatch(/\| connection rate \(new connections\/s\) \| 2,100 \| 2,000 \| 1\.05× \|/);
    expect(page).toContain("reached 7.00 (splice) and 4.00 Gb/s (userspace) for 1 stream");
    expect(page).toContain("with the splice relay (`proxy.relay`");
    const without = renderReport(results(), { notes: analysis(results()) });
    expect(without).not.toContain("The two relays");
    expect(without).toContain("with the userspace relay");
    // no collapse here: no note about it
    expect(page).not.toContain("The userspace relay under a connection storm");
  });

  test("a userspace rate below half of splice's gets the TIME_WAIT note, with the counts from pod A", () => {
    const r = results();
    r.proxyRelay = "splice";
    const run = (rep: number, relay: "splice" | "userspace", rps: number, tw: number) => ({
      rep,
      relay,
      seconds: 5,
      tp1: { rep, iperf: iperf(5), proxyCpu: { user: 0, sys: 2 }, wallSec: 6 },
      tp4: { rep, iperf: iperf(6), proxyCpu: { user: 0, sys: 2 }, wallSec: 6 },
      latency: sock(100, 200, 1000),
      cps: { wrk: wrk(rps), proxyCpu: { user: 0.2, sys: 0.8 }, timeWaitA: tw },
    });
    r.relayAB = [run(1, "splice", 2000, 4000), run(1, "userspace", 600, 16000), run(2, "userspace", 2000, 9000), run(2, "splice", 2100, 5000), run(3, "splice", 2200, 4500), run(3, "userspace", 500, 17000)];
    const page = renderReport(r, { notes: analysis(r) });
    expect(page).toMatch(/\| TCP sockets in TIME_WAIT in pod A after the wrk run \| 4,500 \| 16,000 \| 0\.28× \|/);
    expect(page).toContain("**The userspace relay under a connection storm.** In the relay comparison its connection rate was 600 against 2,100 conn/s with splice, with 16,000 sockets in TIME_WAIT in pod A after its wrk runs (splice: 4,500).");
  });
});

describe("profile of new connections", () => {
  test("kernel time by syscall per connection in the profile table and in the connection-rate note", () => {
    const r = results();
    r.cps.nshub = r.cps.nshub.map((x) => ({ ...x, proxyCpu: { user: 1, sys: 3 } }));
    r.cps.haproxy = r.cps.haproxy.map((x) => ({ ...x, proxyCpu: { user: 0.2, sys: 1.5 } }));
    const children = ["    16.36%     0.16%  [k] __x64_sys_splice", "    15.81%     0.00%  [k] __x64_sys_connect", "    10.63%     0.03%  [k] __x64_sys_shutdown"].join("\n");
    r.profile = { what: "profiled", notes: [], cps: { cpu: { user: 0.5, sys: 1.5 }, connections: 1000, children, byThread: "52.08%  Worker  [kernel.kallsyms]" } };
    const page = renderReport(r, { notes: analysis(r) });
    // 2 s of CPU for 1,000 connections = 2,000 µs each; 16.36% of it is 327 µs.
    expect(page).toContain("| `splice` | 16.4% | 327 |");
    expect(page).toContain("| `connect` | 15.8% | 316 |");
    expect(page).toContain("splice 327 µs, connect 316 µs, shutdown 213 µs");
    expect(page).toContain("52.08%  Worker  [kernel.kallsyms]");
  });
});

describe("CPU per connection by thread", () => {
  test("nshub's measured wrk runs, grouped by thread role, medians per client connection, in the connection-rate note", () => {
    const r = results();
    r.cps.haproxy = r.cps.haproxy.map((x) => ({ ...x, proxyCpu: { user: 0.2, sys: 1.5 } }));
    // 8,500 requests per run (1,700/s × 5 s); the three runs differ so the median is visible.
    r.cps.nshub = r.cps.nshub.map((x, i) => ({
      ...x,
      proxyCpu: { user: 1, sys: 3 },
      proxyThreads: {
        nshub: { user: 0.17 * (i + 1), sys: 0.34 },
        "nshub-dataplane": { user: 0.17, sys: 0.34 },
        "nshub-relay": { user: 0.085, sys: 0.85 },
        JITWorker: { user: 0.0085 * i, sys: 0 },
        HeapHelper: { user: 0.017, sys: 0 },
        "Heap Collector Thread": { user: 0.0085, sys: 0 },
        "nshub-poller": { user: 0.0085, sys: 0.017 },
      },
    }));
    const note = analysis(r).find((n) => n.startsWith("**Connection rate: CPU per new connection.**"));
    expect(note).toBeDefined();
    // data plane: median of (0.34, 0.51, 0.68) s user / 8,500 = 60 µs; kernel 0.68 s / 8,500 = 80 µs.
    expect(note).toContain("By thread (per client connection, medians over the measured wrk runs): data-plane threads");
    expect(note).toContain("the upstream connect) 60 µs user + 80 µs kernel");
    expect(note).toContain("close) 10 µs user + 100 µs kernel");
    expect(note).toContain("JavaScriptCore's JIT compiler 1 µs user + 0 µs kernel");
    expect(note).toContain("garbage collection 3 µs user + 0 µs kernel; other threads 1 µs user + 2 µs kernel. ");
  });

  test("no sentence without per-thread samples (results from before 2026-11-25)", () => {
    const r = results();
    r.cps.nshub = r.cps.nshub.map((x) => ({ ...x, proxyCpu: { user: 1, sys: 3 } }));
    r.cps.haproxy = r.cps.haproxy.map((x) => ({ ...x, proxyCpu: { user: 0.2, sys: 1.5 } }));
    const note = analysis(r).find((n) => n.startsWith("**Connection rate: CPU per new connection.**"));
    expect(note).toBeDefined();
    expect(note).not.toContain("By thread");
  });
});

describe("the concurrent-enrollment note", () => {
  test("quotes the batch's measured CPU: machine busy share, agent per pod, proxy, the rest; CPU-bound only when the CPUs were saturated", () => {
    const r = results();
    r.enrollment.concurrent = { pods: 50, concurrency: 50, pluginMs: Array.from({ length: 50 }, () => 900), inPluginMs: [700], chainMs: [2000], wallMs: 2000, failures: [], cpu: { machineBusySec: 3.8, machineTotalSec: 4, agentSec: 0.5, proxySec: 0.1 } };
    const busy = analysis(r).find((n) => n.startsWith("**Enrollment (50 at once).**"))!;
    expect(busy).toContain("the machine's CPUs were 95% busy (3.80 CPU-seconds)");
    expect(busy).toContain("used 0.50 (10.0 ms per pod), the proxy 0.10, and the other 3.20");
    expect(busy).toContain("The batch is CPU-bound");
    r.enrollment.concurrent.cpu = { machineBusySec: 1, machineTotalSec: 4, agentSec: 0.5, proxySec: 0.1 };
    const idle = analysis(r).find((n) => n.startsWith("**Enrollment (50 at once).**"))!;
    expect(idle).toContain("The CPUs were not saturated");
  });
});
