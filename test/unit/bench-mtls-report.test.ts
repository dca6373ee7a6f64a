// The page's issue-18 parts (scripts/bench-lib/mtls-report.ts, report.ts, parse.ts) on hand-made
// results: the extra paths' derived numbers (added latency over the right baseline, both proxies'
// CPU), issue 18's targets, the mTLS section and its notes, HAProxy's splice variants in the main
// table and targets, and the metrics parsers the bench's mTLS checks use. Pure: no tools run.
import { describe, expect, test } from "bun:test";
import { dsoSummary, idleStreamBytes, mtlsSection, mtlsTargets, probeMedians, topSymbols } from "../../scripts/bench-lib/mtls-report.ts";
import { metricSum, securityCounts, type Iperf3Result, type SockperfResult, type WrkResult } from "../../scripts/bench-lib/parse.ts";
import { checkTargets, derive, renderReport, strongerHaproxy } from "../../scripts/bench-lib/report.ts";
import { emptyPerPath, pushRun, type AnyPath, type BenchResults } from "../../scripts/bench-lib/results.ts";

const iperf = (gbps: number): Iperf3Result => ({ bitsPerSecond: gbps * 1e9, sentBitsPerSecond: gbps * 1e9, retransmits: 0, streams: 1, seconds: 10, cpuClient: undefined, cpuServer: undefined });
const sock = (p50: number): SockperfResult => ({ roundTrip: true, avgUs: p50, observations: 1000, percentilesUs: {}, p50Us: p50, p99Us: p50 * 2, p999Us: p50 * 10, maxUs: p50 * 10, minUs: p50, sentMessages: undefined });
const wrk = (rps: number): WrkResult => ({ requests: rps * 5, seconds: 5, requestsPerSecond: rps, errors: { connect: 0, read: 0, write: 0, timeout: 0 }, non2xx3xx: 0 });

// per path: Gb/s (1 stream), p50 µs per rep, conn/s, proxy CPU seconds (user, sys) per run
const SPEC: Partial<Record<AnyPath, { tp: number; lat: [number, number, number]; cps: number; cpu?: [number, number] }>> = {
  direct: { tp: 10, lat: [20, 30, 25], cps: 9000 },
  nshub: { tp: 5, lat: [60, 80, 70], cps: 2000, cpu: [1, 4] },
  haproxy: { tp: 3, lat: [70, 70, 90], cps: 3000, cpu: [1, 4] },
  "haproxy-splice": { tp: 3.1, lat: [90, 90, 90], cps: 3100, cpu: [1, 4] },
  "haproxy-splice-always": { tp: 6, lat: [100, 100, 100], cps: 2900, cpu: [1, 2] },
  "direct-nodes": { tp: 9, lat: [25, 35, 30], cps: 6000 },
  "hbone-nodes": { tp: 1.2, lat: [165, 175, 170], cps: 1200, cpu: [3, 2] },
  "haproxy-tls": { tp: 1.8, lat: [200, 230, 220], cps: 320, cpu: [2, 2] },
  "hbone-local": { tp: 1.5, lat: [200, 210, 220], cps: 1100, cpu: [2, 1] },
};

function results(): BenchResults {
  const r: BenchResults = {
    mode: "full",
    startedAt: "2026-12-03T00:00:00.000Z",
    runtimeSec: 1500,
    machine: { cpuModel: "Test CPU", nproc: 2, memoryGiB: 8, kernel: "6.1", os: "Debian 12", bun: "1.4.5", haproxy: "2.6.12", iperf3: "3.12", sockperf: "3.7", wrk: "4.1.0", iptables: "iptables v1.8.9 (nf_tables)", nshubCommit: "abc1234", nshubDirty: false },
    params: { reps: 3, tpSeconds: 10, latSeconds: 5, cpsSeconds: 5, wrkConnections: 16, msgSize: 64, enrollSeq: 100, enrollConc: 50, scalePods: 500, idleConns: 10000 },
    checks: [],
    rules: undefined,
    throughput: { "1": emptyPerPath(), "4": emptyPerPath() },
    latency: emptyPerPath(),
    cps: emptyPerPath(),
    enrollment: {},
    errors: [],
  };
  for (const [p, s] of Object.entries(SPEC) as Array<[AnyPath, NonNullable<(typeof SPEC)[AnyPath]>]>) {
    for (let i = 0; i < 3; i++) {
      const proxyCpu = s.cpu ? { user: s.cpu[0], sys: s.cpu[1] } : undefined;
      pushRun(r.throughput["1"], p, { rep: i + 1, iperf: iperf(s.tp), proxyCpu, wallSec: 10, machineBusy: p === "hbone-nodes" ? 0.6 + i * 0.1 : 0.97, probe: p === "haproxy-splice" ? { pipesUsed: 0, pipesFree: 0 } : p === "haproxy-splice-always" ? { pipesUsed: 1, pipesFree: 3 } : undefined });
      pushRun(r.throughput["4"], p, { rep: i + 1, iperf: iperf(s.tp * 1.1), proxyCpu, wallSec: 10 });
      pushRun(r.latency, p, { rep: i + 1, sockperf: sock(s.lat[i]!) });
      const probe =
        p === "haproxy-tls" ? { serverTlsConnsPerSec: 300 + i * 10, serverResumedPct: 100, clientFullHandshakesPerSec: 0, serverFullHandshakesPerSec: 0 } : p === "hbone-nodes" ? { poolConnections: 2, poolStreams: 14 } : undefined;
      pushRun(r.cps, p, { rep: i + 1, wrk: wrk(s.cps), proxyCpu: s.cpu ? { user: 0.5, sys: 0.5 } : undefined, probe });
    }
  }
  r.mtls = {
    trustDomain: "cluster.local",
    proxyWorkers: 2,
    proxyRelay: "splice",
    haproxyThreads: [2, 2],
    nodes: [
      { subnet: "10.1.1.0/24", pods: ["bench/mtls-a 10.1.1.2"] },
      { subnet: "10.2.2.0/24", pods: ["bench/mtls-b 10.2.2.2"] },
    ],
    audit: { mutualTls: 9000, plaintext: 0 },
    idle: { clientConns: 2000, held: 2000, rssBeforeKiB: [100_000, 120_000], rssAfterKiB: [114_000, 131_000], fdsBefore: [40, 60], fdsAfter: [2059, 2079], poolConnections: 21, connectMs: 700, errors: [] },
  };
  r.checks.push({ path: "hbone-nodes", peerSeen: "10.1.1.2", redirectPackets: 1, ok: true, note: "both proxies recorded mutual_tls", wire: "A → B on port 15008; marker not in clear", security: "node 1 outbound mutual_tls, node 2 inbound mutual_tls" });
  return r;
}

describe("the extra paths' numbers", () => {
  const r = results();
  const d = derive(r);

  test("added latency over each path's own baseline: cross-node paths over direct between the nodes, same-node ones over direct", () => {
    // hbone-nodes − direct-nodes per rep: 140, 140, 140
    expect(d.added["hbone-nodes"].p50).toBe(140);
    // haproxy-tls: 175, 195, 190 → 190
    expect(d.added["haproxy-tls"].p50).toBe(190);
    // hbone-local − direct: 180, 180, 195 → 180
    expect(d.added["hbone-local"].p50).toBe(180);
    expect(d.added.nshub.p50).toBe(45);
  });

  test("CPU per GB and per new connection count what the path's processes used (both proxies, summed by the bench)", () => {
    // 5 CPU-s over 10 s at 1.2 Gb/s = 0.5 CPUs per 0.15 GB/s
    expect(d.tpCpuPerGB["1"]["hbone-nodes"]).toBeCloseTo(0.5 / 0.15, 9);
    // 1 CPU-s per 1200 × 5 connections
    expect(d.cpuPerConnUs["hbone-nodes"]).toBeCloseTo(1e6 / 6000, 6);
    expect(d.cpuPerConnUs.direct).toBeNaN();
  });

  test("idle streams: both proxies' RSS growth per stream held; the probes' medians", () => {
    expect(idleStreamBytes(r)).toEqual({ total: ((14_000 + 11_000) * 1024) / 2000, node1: (14_000 * 1024) / 2000, node2: (11_000 * 1024) / 2000 });
    expect(probeMedians(r, "haproxy-tls")).toEqual({ serverTlsConnsPerSec: 310, serverResumedPct: 100, clientFullHandshakesPerSec: 0, serverFullHandshakesPerSec: 0 });
    expect(probeMedians(r, "hbone-local")).toEqual({});
  });
});

describe("issue 18's targets", () => {
  test("met, missed, or not measured", () => {
    const r = results();
    const t = Object.fromEntries(mtlsTargets(r, derive(r)).map((x) => [x.target, x]));
    expect(t["HBONE throughput 1 stream ≥ HAProxy TLS chain"]!.met).toBe(false);
    expect(t["HBONE throughput 1 stream ≥ HAProxy TLS chain"]!.value).toBe("1.20 vs 1.80 Gb/s (0.67×)");
    expect(t["HBONE throughput 4 streams ≥ HAProxy TLS chain"]!.met).toBe(false);
    expect(t["HBONE added p50 latency ≤ HAProxy TLS chain's"]!.met).toBe(true); // 140 ≤ 190
    expect(t["HBONE connection rate ≥ 1.0× HAProxy TLS chain"]!.met).toBe(true);
    expect(t["≤ 8 KB proxy memory per idle HBONE stream (both proxies)"]!.met).toBe(false); // 12.8 KB
    delete r.mtls!.idle;
    r.cps["hbone-nodes"] = [];
    const u = Object.fromEntries(mtlsTargets(r, derive(r)).map((x) => [x.target, x.met]));
    expect(u["≤ 8 KB proxy memory per idle HBONE stream (both proxies)"]).toBeUndefined();
    expect(u["HBONE connection rate ≥ 1.0× HAProxy TLS chain"]).toBeUndefined();
  });
});

describe("the mTLS section", () => {
  const perfDso = "# comment\n    41.90%  libcrypto.so.3\n    31.48%  [kernel.kallsyms]\n    10.00%  [JIT] tid 123\n     5.00%  [JIT] tid 124\n     3.92%  nshub\n";
  const perfSym = "    26.21%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore\n     2.75%  libcrypto.so.3     [.] 0x000000000023f64f\n     1.00%  [JIT] tid 123      [j] relay\n";

  test("perf summaries: shares by object with JIT entries summed, and the top symbols", () => {
    expect(dsoSummary(perfDso)).toBe("OpenSSL's libcrypto 42%, kernel 31%, JIT-compiled JavaScript 15%, the nshub binary (Bun's native code: BoringSSL, the HTTP/2 codec, sockets) 4%");
    expect(topSymbols(perfSym, 2)).toBe("26.21% `_raw_spin_unlock_irqrestore` ([kernel.kallsyms]), 2.75% `0x000000000023f64f` (libcrypto.so.3)");
  });

  test("table, checks, audit, targets and a note for each missed target, with the profile's findings", () => {
    const r = results();
    r.mtls!.profile = {
      what: "perf on both processes",
      gbps: { "hbone-nodes": 1.1, "haproxy-tls": 1.7 },
      procs: [
        { who: "nshub proxy, node 1", load: "iperf3", cpu: { user: 2, sys: 2, wallSec: 4 }, byDso: perfDso, topSymbols: perfSym },
        { who: "HAProxy 2, under wrk", load: "wrk", cpu: { user: 1, sys: 1, wallSec: 4 }, byDso: perfDso },
      ],
      js: [{ load: "`iperf3 -P 1` for 6 s", hot: "| Self% | Function |\n|---|---|\n| 10% | `write` |" }],
      notes: [],
    };
    const text = mtlsSection(r, derive(r)).join("\n");
    expect(text).toContain("## mTLS between two nodes (issue 18)");
    expect(text).toContain("**no same-node shortcut**");
    expect(text).toContain("| throughput, 1 stream (Gb/s) | 9.00 | 1.20 | 1.80 | 0.67× | 1.50 | 0.30× |");
    expect(text).toContain("| **added** latency p50 over direct (µs) | — | +140.0 | +190.0 | 0.74× | +180.0 | 4.00× |");
    expect(text).toContain("| nshub HBONE, 2 nodes | 10.1.1.2 | 1 | A → B on port 15008; marker not in clear | node 1 outbound mutual_tls, node 2 inbound mutual_tls | ok:");
    expect(text).toContain("node 2's proxy had accepted 9000 connections for its pods in mutual TLS and 0 in plaintext");
    expect(text).toContain("nshub node 1 held 2 pooled HBONE connection(s)");
    expect(text).toContain("HAProxy 2 accepted 310 TLS connections/s, 100% resumed");
    expect(text).toContain("**12.80 KB per stream**");
    expect(text).toContain("| HBONE throughput 1 stream ≥ HAProxy TLS chain | 1.20 vs 1.80 Gb/s (0.67×) | **missed** |");
    // the CPUs during the 1-stream runs: HBONE left them 70% busy (median), so CPU alone does not set its rate
    expect(text).toContain("| machine CPU busy during the 1-stream runs (%) | 97 | 70 | 97 | 0.72× | 97 | 1.00× |");
    expect(text).toContain("During the 1-stream runs nshub's two proxies kept 0.50 CPUs busy and the machine's 2 CPUs were 70% busy (the HAProxy chain: 0.40 CPUs, machine 97%). The CPUs were not saturated on the HBONE path");
    // the throughput note quotes the iperf3 profile, not the wrk one
    expect(text).toMatch(/\*\*HBONE throughput\.\*\*.*nshub proxy, node 1: 1\.00 CPUs busy \(50% of it in the kernel\); samples: OpenSSL's libcrypto 42%/);
    expect(text).not.toMatch(/\*\*HBONE throughput\.\*\*[^\n]*HAProxy 2, under wrk/);
    // connection rate met: the per-connection note instead, with the wrk profile
    expect(text).toMatch(/\*\*TLS per connection\.\*\*.*HAProxy 2, under wrk/);
    expect(text).toContain("**Memory per idle HBONE stream.** 12.80 KB per stream");
    expect(text).not.toContain("**HBONE added latency.**");
    expect(text).toContain("### Where the mTLS paths' CPU goes");
    expect(text).toContain("| 10% | `write` |");
  });

  test("no section when the mTLS paths did not run; the page still renders", () => {
    const r = results();
    delete r.mtls;
    expect(mtlsSection(r, derive(r))).toEqual([]);
    expect(renderReport(r)).not.toContain("## mTLS between two nodes");
  });
});

describe("HAProxy's splice variants on one node", () => {
  test("the main table gains a column per measured variant, nshub's ratios against each; the pipes say whether it spliced", () => {
    const page = renderReport(results());
    expect(page).toContain("| measure | direct | nshub | HAProxy | HAProxy splice-auto | HAProxy splice forced | nshub / direct | nshub / HAProxy | nshub / HAProxy splice-auto | nshub / HAProxy splice forced |");
    expect(page).toContain("| throughput, 1 stream (Gb/s) | 10.00 | 5.00 | 3.00 | 3.10 | 6.00 | 0.50× | 1.67× | 1.61× | 0.83× |");
    expect(page).toContain("HAProxy splice-auto had 0 / n/a pipes in use (1 / 4 streams, medians): it never spliced on this path");
    expect(page).not.toContain("HAProxy splice forced had 1 / n/a pipes in use (1 / 4 streams, medians): it never spliced");
  });

  test("the targets hold nshub to the strongest variant in each measure", () => {
    const r = results();
    const d = derive(r);
    expect(strongerHaproxy(r, (p) => d.tp["1"][p], "higher", 2)).toEqual({ value: 6, text: "3.00 (default) / 3.10 (splice-auto) / 6.00 (splice forced)" });
    expect(strongerHaproxy(r, (p) => d.added[p].p50, "lower", 1).value).toBe(50);
    const t = Object.fromEntries(checkTargets(r, d).map((x) => [x.target, x]));
    expect(t["throughput 1 stream ≥ HAProxy"]!.met).toBe(false); // 5 < 6 (forced splicing)
    expect(t["throughput 1 stream ≥ HAProxy"]!.value).toBe("5.00 vs 3.00 (default) / 3.10 (splice-auto) / 6.00 (splice forced) Gb/s (0.83×)");
    expect(t["connection rate ≥ 0.8× HAProxy"]!.met).toBe(false); // 2000 / 3100
    // without the variants (older results): the default alone, as before
    for (const p of ["haproxy-splice", "haproxy-splice-always"] as const) {
      delete r.throughput["1"][p];
      delete r.throughput["4"][p];
      delete r.latency[p];
      delete r.cps[p];
    }
    expect(Object.fromEntries(checkTargets(r, derive(r)).map((x) => [x.target, x.value]))["throughput 1 stream ≥ HAProxy"]).toBe("5.00 vs 3.00 Gb/s (1.67×)");
  });
});

describe("metrics text", () => {
  const m = [
    "# HELP nshub_hbone_pool_connections Outbound HBONE connections",
    "nshub_hbone_pool_connections 3",
    "nshub_hbone_pool_connections_extra 99",
    'istio_tcp_connections_opened_total{reporter="destination",source_principal="a",connection_security_policy="mutual_tls"} 10',
    'istio_tcp_connections_opened_total{reporter="destination",source_principal="b",connection_security_policy="mutual_tls"} 5',
    'istio_tcp_connections_opened_total{reporter="destination",source_principal="unknown",connection_security_policy="none"} 2',
    'istio_tcp_connections_opened_total{reporter="source",connection_security_policy="mutual_tls"} 7',
  ].join("\n");

  test("a metric's sum over its label sets; connections by security for one reporter", () => {
    expect(metricSum(m, "nshub_hbone_pool_connections")).toBe(3);
    expect(metricSum(m, "istio_tcp_connections_opened_total")).toBe(24);
    expect(metricSum(m, "nshub_hbone_pool_streams")).toBeUndefined();
    expect(securityCounts(m, "destination")).toEqual({ mutualTls: 15, plaintext: 2 });
    expect(securityCounts(m, "source")).toEqual({ mutualTls: 7, plaintext: 0 });
  });
});

describe("Bun's hot-functions table", () => {
  test("the first rows by self time, native code marked", async () => {
    const { jsTop } = await import("../../scripts/bench-lib/mtls-report.ts");
    const hot = [
      "| Self% | Self | Total% | Total | Function | Location |",
      "|------:|-----:|-------:|------:|----------|----------|",
      "| 52.3% | 3.44s | 52.3% | 3.44s | `write` | `[native code]` |",
      "| 25.3% | 1.66s | 76.6% | 5.04s | `(anonymous)` | `[native code]` |",
      "| 0.4% | 31.8ms | 0.4% | 31.8ms | `originalDst` | `/work/main/src/sys/sockopt.ts` |",
    ].join("\n");
    expect(jsTop(hot)).toBe("`write` (native) 52.3%, `(anonymous)` (native) 25.3%, `originalDst` 0.4%");
    expect(jsTop(hot, 1)).toBe("`write` (native) 52.3%");
  });
});

describe("the binary measured", () => {
  test("its build time, and the sources changed after it, under the machine table; nothing for older results", () => {
    const r = results();
    r.nshubBinary = { builtAt: "2026-12-03T16:15:48.626Z", newerSources: ["src/hbone/wire.ts", "src/proxy/pod.ts"] };
    expect(renderReport(r)).toContain("dist/nshub as measured was built 2026-12-03 16:15:48 UTC; 2 source files changed after that (src/hbone/wire.ts, src/proxy/pod.ts): the run measured that build, not the sources of the commit above.");
    r.nshubBinary.newerSources = [];
    expect(renderReport(r)).toContain("dist/nshub as measured was built 2026-12-03 16:15:48 UTC; no source file changed after that.");
    delete r.nshubBinary;
    expect(renderReport(r)).not.toContain("dist/nshub as measured");
  });
});
