#!/usr/bin/env bun
// Micro-benchmark of the L4 authorization engine: decisions per second with 0, 10 and 1,000
// policies in force, to estimate what a decision adds to the proxy's connection path. Not a test:
// it prints a table. `bun scripts/bench-policy.ts [--seconds 0.5]`
//
// Rows: 10 policies in the destination's namespace (the ones that decide), 1,000 of which 990
// are in other namespaces (indexed away: should cost ~nothing), and 1,000 all in the destination's
// namespace (the worst case: every one is checked). "cached" decides for the same workload object
// (as the proxy will: registry workloads are immutable objects); "fresh" builds a new one each
// time, so the applicable policies are looked up again.
import { stringify } from "yaml";
import { PolicySet } from "../src/policy/engine.ts";
import { parsePolicyText } from "../src/policy/load.ts";
import type { Connection } from "../src/policy/types.ts";

const flag = process.argv.indexOf("--seconds");
const seconds = flag > 0 ? Number(process.argv[flag + 1]) : 0.5;
if (!(seconds > 0)) throw new Error("--seconds <s>: a positive number");

const ap = (ns: string, name: string, spec: object) => stringify({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name, namespace: ns }, spec });

/** 10 policies of the kinds people write, in namespace `ns`; none matches the benchmark's traffic until the last ALLOW. */
function tenPolicies(ns: string, tag = ""): string[] {
  return [
    ap(ns, `deny-ns${tag}`, { action: "DENY", rules: [{ from: [{ source: { namespaces: ["blocked-a", "blocked-b"] } }] }] }),
    ap(ns, `deny-ip${tag}`, { action: "DENY", rules: [{ from: [{ source: { ipBlocks: ["192.168.0.0/16", "fd00:dead::/32"] } }] }] }),
    ap(ns, `deny-port${tag}`, { action: "DENY", rules: [{ to: [{ operation: { ports: ["22", "2375"] } }] }] }),
    ap(ns, `deny-when${tag}`, { action: "DENY", rules: [{ when: [{ key: "source.principal", values: ["*/sa/attacker"] }] }] }),
    ap(ns, `allow-a${tag}`, { rules: [{ from: [{ source: { principals: ["cluster.local/ns/a/sa/a"] } }], to: [{ operation: { ports: ["80"] } }] }] }),
    ap(ns, `allow-b${tag}`, { rules: [{ from: [{ source: { namespaces: ["b", "c", "d"] } }] }] }),
    ap(ns, `allow-ip${tag}`, { rules: [{ from: [{ source: { ipBlocks: ["172.16.0.0/12"] } }] }] }),
    ap(ns, `allow-sel${tag}`, { selector: { matchLabels: { app: "other" } }, rules: [{}] }),
    ap(ns, `allow-mixed${tag}`, { rules: [{ to: [{ operation: { methods: ["GET"] } }] }, { from: [{ source: { notNamespaces: ["x"] } }], to: [{ operation: { ports: ["9999"] } }] }] }),
    ap(ns, `allow-clients${tag}`, { rules: [{ from: [{ source: { principals: ["cluster.local/ns/clients/sa/*"] } }], to: [{ operation: { ports: ["8080"] } }] }] }),
  ];
}

const STRICT = stringify({ apiVersion: "security.istio.io/v1", kind: "PeerAuthentication", metadata: { name: "default", namespace: "istio-system" }, spec: { mtls: { mode: "STRICT" } } });

function build(docs: string[]): PolicySet {
  const r = parsePolicyText(docs.join("---\n"), "bench.yaml");
  if (r.errors.length) throw new Error(JSON.stringify(r.errors[0]));
  return new PolicySet(r);
}

const sets: [string, PolicySet][] = [
  ["0 policies", build([])],
  ["10 (+1 PeerAuthentication), all in the destination's namespace", build([STRICT, ...tenPolicies("app")])],
  ["1,000: 10 there + 990 in 99 other namespaces", build([STRICT, ...tenPolicies("app"), ...Array.from({ length: 99 }, (_, i) => tenPolicies(`other-${i}`)).flat()])],
  ["1,000, all in the destination's namespace", build([STRICT, ...Array.from({ length: 100 }, (_, i) => tenPolicies("app", `-${i}`)).flat()])],
];

const WORKLOAD = { namespace: "app", name: "server-1", labels: { app: "server", version: "v1" } };
// 256 distinct clients (identity + address), all allowed by the last policy of the ten.
const conns: Connection[] = Array.from({ length: 256 }, (_, i) => ({
  sourcePrincipal: `spiffe://cluster.local/ns/clients/sa/client-${i}`,
  sourceIp: `10.1.${i >> 4}.${i & 15}`,
  destination: WORKLOAD,
  destinationIp: "10.2.0.10",
  destinationPort: 8080,
  mtls: true,
}));

function measure(set: PolicySet, fresh: boolean): { perSecond: number; nsEach: number; allowed: number } {
  let allowed = 0;
  const run = (n: number) => {
    for (let i = 0; i < n; i++) {
      const c = conns[i & 255]!;
      const d = set.decide(fresh ? { ...c, destination: { ...WORKLOAD } } : c);
      if (d.allowed) allowed++;
    }
  };
  run(50_000); // warm up (JIT)
  allowed = 0;
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < seconds * 1000) {
    run(10_000);
    n += 10_000;
    t = performance.now();
  }
  const s = (t - t0) / 1000;
  return { perSecond: n / s, nsEach: (s * 1e9) / n, allowed: allowed / n };
}

const rows = sets.map(([name, set]) => {
  const cached = measure(set, false);
  const fresh = measure(set, true);
  if (cached.allowed !== 1) throw new Error(`${name}: expected every benchmark connection to be allowed, got ${cached.allowed}`);
  return [name, String(set.size), fmt(cached.perSecond), `${cached.nsEach.toFixed(0)} ns`, fmt(fresh.perSecond), `${fresh.nsEach.toFixed(0)} ns`];
});

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M/s` : `${(n / 1e3).toFixed(0)} k/s`;
}

const head = ["policies in force", "objects", "decisions (cached)", "each", "decisions (fresh workload)", "each"];
const table = [head, ...rows];
const widths = head.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
console.log(`nshub policy engine, bun ${Bun.version}, ${seconds}s per cell, 256 mTLS clients allowed by the 10th policy\n`);
for (const r of table) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  "));
