// Parsers of the benchmark tools' outputs (scripts/bench-lib/parse.ts). The fixtures are real
// outputs of iperf3 3.12, sockperf 3.7 and wrk 4.1 (Debian 12), trimmed.
import { describe, expect, test } from "bun:test";
import { BenchParseError, parseCniTimingLog, parseIperf3Json, parseProcStatCpu, parseProcStatTimes, parseSockperf, parseVmRssKiB, parseWrk, perfSyscallShares } from "../../scripts/bench-lib/parse.ts";

const IPERF_P2 = JSON.stringify({
  start: { test_start: { protocol: "TCP", num_streams: 2, blksize: 131072, omit: 0, duration: 1, bytes: 0, blocks: 0, reverse: 0, tos: 0, target_bitrate: 0 } },
  end: {
    sum_sent: { start: 0, end: 1.000791, seconds: 1.000791, bytes: 1323827200, bits_per_second: 10582247042.589312, retransmits: 2, sender: true },
    sum_received: { start: 0, end: 1.00083, seconds: 1.00083, bytes: 1323827200, bits_per_second: 10581834677.217909, sender: true },
    cpu_utilization_percent: { host_total: 28.633085784084184, host_user: 0, host_system: 28.633484307157676, remote_total: 26.525865221483514, remote_user: 1.7763043517358383, remote_system: 24.749460953876838 },
  },
});

const IPERF_ERROR = `{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}`;

const SOCKPERF = `sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11111 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=49722; ReceivedMessages=49721
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=25944; ReceivedMessages=25944
sockperf: \x1b[2;35m====> avg-rtt=21.185 (std-dev=86.587)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 21.185 usec
sockperf: \x1b[2;35mTotal 25944 observations\x1b[0m; each percentile contains 259.44 observations
sockperf: ---> <MAX> observation = 6738.457
sockperf: ---> percentile 99.999 = 6738.457
sockperf: ---> percentile 99.990 = 3755.185
sockperf: ---> percentile 99.900 = 1058.195
sockperf: ---> percentile 99.000 =   77.203
sockperf: ---> percentile 90.000 =   17.442
sockperf: ---> percentile 75.000 =   16.921
sockperf: ---> percentile 50.000 =   16.300
sockperf: ---> percentile 25.000 =   16.190
sockperf: ---> <MIN> observation =   15.949
`;

const WRK_CLEAN = `Running 1s test @ http://127.0.0.1:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   624.04us    1.41ms  18.99ms   93.34%
    Req/Sec     6.62k     1.99k    9.41k    45.45%
  7245 requests in 1.16s, 608.47KB read
Requests/sec:   6258.01
Transfer/sec:    525.57KB
`;

const WRK_ERRORS = `Running 3s test @ http://10.50.85.3:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.95ms  565.07us   5.74ms   73.56%
    Req/Sec     7.06k     1.61k   11.08k    70.00%
  21082 requests in 3.00s, 2.37MB read
  Socket errors: connect 1, read 21077, write 2, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   7019.24
Transfer/sec:    808.86KB
`;

describe("iperf3 -J", () => {
  test("receiver-side goodput, streams, retransmits and CPU", () => {
    const r = parseIperf3Json(IPERF_P2);
    expect(r.bitsPerSecond).toBeCloseTo(10581834677.217909, 3);
    expect(r.sentBitsPerSecond).toBeCloseTo(10582247042.589312, 3);
    expect(r.streams).toBe(2);
    expect(r.retransmits).toBe(2);
    expect(r.seconds).toBeCloseTo(1.00083, 6);
    expect(r.cpuClient).toBeCloseTo(28.633, 3);
    expect(r.cpuServer).toBeCloseTo(26.526, 3);
  });

  test("iperf3's own error becomes a BenchParseError with its text", () => {
    expect(() => parseIperf3Json(IPERF_ERROR)).toThrow(new BenchParseError("iperf3: unable to connect to server: Connection refused"));
  });

  test("output that is not JSON, or JSON without a summary, is an error", () => {
    expect(() => parseIperf3Json("iperf3: error - unable to connect")).toThrow(BenchParseError);
    expect(() => parseIperf3Json("{}")).toThrow(/no end.sum_received/);
  });
});

describe("sockperf ping-pong", () => {
  test("round-trip percentiles in µs, colour codes stripped", () => {
    const r = parseSockperf(SOCKPERF);
    expect(r.roundTrip).toBe(true);
    expect(r.avgUs).toBe(21.185);
    expect(r.observations).toBe(25944);
    expect([r.p50Us, r.p99Us, r.p999Us]).toEqual([16.3, 77.203, 1058.195]);
    expect([r.minUs, r.maxUs]).toEqual([15.949, 6738.457]);
    expect(r.sentMessages).toBe(49722);
    expect(Object.keys(r.percentilesUs)).toEqual(["99.999", "99.990", "99.900", "99.000", "90.000", "75.000", "50.000", "25.000"]);
  });

  test("without --full-rtt sockperf prints half round trips (avg-latency)", () => {
    const half = SOCKPERF.replace("avg-rtt=21.185", "avg-latency=10.592").replace("Round trip is 21.185", "Latency is 10.592");
    const r = parseSockperf(half);
    expect(r.roundTrip).toBe(false);
    expect(r.avgUs).toBe(10.592);
  });

  test("a run that printed no statistics is an error", () => {
    expect(() => parseSockperf("sockperf: ERROR: Failed to connect\n")).toThrow(BenchParseError);
  });
});

describe("wrk", () => {
  test("requests/s, total and no errors", () => {
    const r = parseWrk(WRK_CLEAN);
    expect(r).toEqual({ requests: 7245, seconds: 1.16, requestsPerSecond: 6258.01, errors: { connect: 0, read: 0, write: 0, timeout: 0 }, non2xx3xx: 0 });
  });

  test("socket errors and non-2xx responses", () => {
    const r = parseWrk(WRK_ERRORS);
    expect(r.requests).toBe(21082);
    expect(r.requestsPerSecond).toBe(7019.24);
    expect(r.errors).toEqual({ connect: 1, read: 21077, write: 2, timeout: 3 });
    expect(r.non2xx3xx).toBe(5);
  });

  test("durations in ms and minutes", () => {
    expect(parseWrk("  10 requests in 500.00ms, 1KB read\nRequests/sec: 20.00\n").seconds).toBeCloseTo(0.5, 9);
    expect(parseWrk("  10 requests in 1.00m, 1KB read\nRequests/sec: 0.17\n").seconds).toBe(60);
  });

  test("no summary is an error", () => {
    expect(() => parseWrk("unable to connect to 10.0.0.1:8080 Connection refused\n")).toThrow(BenchParseError);
  });
});

describe("CNI timing log", () => {
  test("one line per plugin run; comma decimals accepted", () => {
    const t = parseCniTimingLog("ADD 1700000000.100000 1700000000.142500 0 abc\nDEL 1700000001,000000 1700000001,010000 1 def\n\n");
    expect(t.map((x) => [x.command, x.containerId, x.exitCode])).toEqual([
      ["ADD", "abc", 0],
      ["DEL", "def", 1],
    ]);
    expect(t[0]!.ms).toBeCloseTo(42.5, 3);
    expect(t[1]!.ms).toBeCloseTo(10, 3);
    expect(t[0]!.start).toBeCloseTo(1700000000.1, 6);
  });

  test("a malformed line is an error", () => {
    expect(() => parseCniTimingLog("ADD 1 2\n")).toThrow(BenchParseError);
    expect(() => parseCniTimingLog("ADD x y 0 abc\n")).toThrow(/bad times/);
  });
});

describe("/proc", () => {
  test("VmRSS in KiB", () => {
    expect(parseVmRssKiB("Name:\tnshub\nVmPeak:\t  999 kB\nVmRSS:\t   61124 kB\nRssAnon:\t 1 kB\n")).toBe(61124);
    expect(() => parseVmRssKiB("Name:\tkthreadd\n")).toThrow(BenchParseError);
  });

  test("utime, stime and the children's cutime, cstime, also when comm has spaces and parentheses", () => {
    const rest = "S 1 2 3 4 5 6 7 8 9 10 1234 567 89 12 20 0 7 0 100 0 0";
    expect(parseProcStatTimes(`4242 (nshub) ${rest}`)).toEqual({ utime: 1234, stime: 567, cutime: 89, cstime: 12 });
    expect(parseProcStatTimes(`4242 (we(ird) name) ${rest}`)).toEqual({ utime: 1234, stime: 567, cutime: 89, cstime: 12 });
  });

  test("machine CPU from /proc/stat: busy = total − idle − iowait over the first 8 fields", () => {
    const stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\nintr 1 2 3\n";
    expect(parseProcStatCpu(stat)).toEqual({ busy: 165, total: 1185 });
    expect(() => parseProcStatCpu("intr 1\n")).toThrow(BenchParseError);
  });
});

describe("perf --children by syscall", () => {
  test("children shares per syscall, the larger of __x64_sys_ and __do_sys_, largest first; other lines ignored", () => {
    const text = [
      "# Samples: 12K of event 'cpu-clock:ppp'",
      "    65.20%     0.00%  [k] entry_SYSCALL_64_after_hwframe",
      "    16.36%     0.16%  [k] __x64_sys_splice",
      "    15.81%     0.00%  [k] __x64_sys_connect",
      "     1.06%     0.10%  [k] __do_sys_setns",
      "     0.68%     0.01%  [k] __x64_sys_setns",
      "     5.63%     0.01%  [k] schedule",
      "     0.61%     0.01%  [.] nh_eventfd_signal",
    ].join("\n");
    expect(perfSyscallShares(text)).toEqual([
      { name: "splice", pct: 16.36 },
      { name: "connect", pct: 15.81 },
      { name: "setns", pct: 1.06 },
    ]);
  });
});
