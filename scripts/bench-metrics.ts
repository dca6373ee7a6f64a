#!/usr/bin/env bun
// Micro-benchmark: what a metric update costs on the data path. Not a test (timings are never
// asserted); run by hand: `node_modules/.bin/bun scripts/bench-metrics.ts`.
//
// Compares, per byte-counter update (one relayed chunk):
//   * prom-client labelled child `counter.labels({...23 labels}).inc(n)` (resolved once),
//   * prom-client `counter.inc(labels, n)`,
//   * nshub's ConnectionHandle.sent(n) (adds to a plain number; flushed at scrape),
// and what the flush costs per live connection and per scrape.
import { Counter, Registry } from "prom-client";
import { createProxyMetrics } from "../src/proxy/metrics.ts";
import { connectionLabels, TRAFFIC_LABELS } from "../src/proxy/traffic-labels.ts";

function bench(name: string, iterations: number, fn: (i: number) => void): number {
  for (let i = 0; i < Math.min(iterations, 100_000); i++) fn(i); // warm up (JIT)
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const t0 = Bun.nanoseconds();
    for (let i = 0; i < iterations; i++) fn(i);
    best = Math.min(best, (Bun.nanoseconds() - t0) / iterations);
  }
  console.log(`${name.padEnd(58)} ${best.toFixed(best < 10 ? 2 : 0).padStart(8)} ns/op  (best of 5 × ${iterations})`);
  return best;
}

const labels = connectionLabels({ direction: "outbound", pod: { name: "client-7d9f8-x2x1z", namespace: "default", serviceAccount: "default" } });

// prom-client directly
{
  const registry = new Registry();
  const c = new Counter({ name: "bench_bytes_total", help: "bench", labelNames: TRAFFIC_LABELS, registers: [registry] });
  const child = c.labels(labels);
  bench("prom-client child.inc(n)  [labels resolved once]", 200_000, () => child.inc(1460));
  bench("prom-client counter.inc(labels, n)", 200_000, () => c.inc(labels, 1460));
  const plain = new Counter({ name: "bench_plain_total", help: "bench", registers: [registry] });
  bench("prom-client counter.inc(n)  [no labels]", 2_000_000, () => plain.inc(1460));
}

// nshub's handles
{
  const noop = { n: 0, add(x: number) { this.n += x; } };
  bench("baseline: a method adding to a field (loop + call cost)", 20_000_000, () => noop.add(1460));
  const registry = new Registry();
  const m = createProxyMetrics(registry);
  const h = m.connections.open(labels);
  bench("ConnectionHandle.sent(n)  [data path]", 20_000_000, () => h.sent(1460));
  bench("ConnectionHandle.sent(n) + received(n)", 20_000_000, () => {
    h.sent(1460);
    h.received(1460);
  });
  const live = 1000;
  // Worst case: every connection has its own label set (distinct peers). Typical: a pod's
  // connections to unknown peers share one.
  const distinct = Array.from({ length: live }, (_, i) => m.connections.open(connectionLabels({ direction: "inbound", pod: { name: `server-${i}`, namespace: "default" } })));
  const perFlush = bench(`flush: ${live} live connections, ${live} label sets`, 200, () => {
    for (const x of distinct) x.sent(1460);
    m.connections.flush();
  });
  console.log(`  → ${(perFlush / live).toFixed(0)} ns per live connection per scrape (worst case)`);
  for (const x of distinct) x.close("done");
  const shared = Array.from({ length: live }, () => m.connections.open(labels));
  const perFlushShared = bench(`flush: ${live} live connections, 1 label set`, 200, () => {
    for (const x of shared) x.sent(1460);
    m.connections.flush();
  });
  console.log(`  → ${(perFlushShared / live).toFixed(0)} ns per live connection per scrape (shared labels)`);
  const t0 = Bun.nanoseconds();
  const rounds = 20;
  for (let i = 0; i < rounds; i++) await registry.metrics();
  console.log(`full scrape, ${live + 1} live connections, ${live + 1} series: ${((Bun.nanoseconds() - t0) / rounds / 1e6).toFixed(1)} ms`);
  for (const x of shared) x.close("done");
  h.close("done");
}
