#!/usr/bin/env bun
// The cost of authorization on the connection path (issue 19's target: the connection rate with
// 1,000 policies in force ≤ 5% lower than with 0), measured end to end on a virtual node (root):
// client pod A (not enrolled) runs wrk with `Connection: close` (one request per connection) to
// an HTTP server in the enrolled pod S, so every request is one inbound plaintext connection the
// proxy decides, then relays. One proxy (default config: 2 data-plane threads, splice relay) stays
// up for the whole run; its policy folder is rewritten between measurements and each measurement
// waits until every thread has the new set (GET /policies). Sets, interleaved, `--reps` rounds:
//   0      no policy file content (the engine's empty fast path)
//   10     10 policies in S's namespace: 4 DENY and 5 ALLOW that do not match, the last ALLOW
//          (ipBlocks: A's address) lets the traffic in: every DENY and every ALLOW is evaluated
//   1,000  100 copies of those 10, all in S's namespace (the worst case: the namespace index
//          does not help; a decision evaluates 400 DENY and up to 600 ALLOW policies)
//   1,000 spread  the 10 in S's namespace + 990 in 99 other namespaces (indexed away)
// The proxy keeps decisions per (client IP, destination, port) until the set changes
// (src/proxy/authorize.ts), so with one client pod the 1,000 rows measure the kept path after the
// first connection; the engine's own cost per decision is scripts/bench-policy.ts's.
// Prints connections per second per round and the medians.
//   usage: bun scripts/bench-policy-conn.ts [--seconds 5] [--reps 3] [--relay splice|userspace]
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { createProxyEnv } from "../test/fixtures/proxy-harness.ts";
import { parseWrk } from "./bench-lib/parse.ts";

const { values } = parseArgs({ options: { seconds: { type: "string" }, reps: { type: "string" }, relay: { type: "string" } } });
const seconds = Number(values.seconds ?? 5);
const reps = Number(values.reps ?? 3);
const relay = values.relay ?? "splice";
const PORT = 8080;

const ap = (name: string, spec: object, ns = "default") => stringify({ apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name, namespace: ns }, spec });
function ten(tag: string, clientIp: string, ns = "default"): string[] {
  const ap_ = (name: string, spec: object) => ap(name, spec, ns);
  return tenIn(tag, clientIp).map((f) => f(ap_));
}
function tenIn(tag: string, clientIp: string): ((mk: typeof ap) => string)[] {
  return [
    (mk) => mk(`deny-ns${tag}`, { action: "DENY", rules: [{ from: [{ source: { namespaces: ["blocked-a", "blocked-b"] } }] }] }),
    (mk) => mk(`deny-ip${tag}`, { action: "DENY", rules: [{ from: [{ source: { ipBlocks: ["192.168.0.0/16", "fd00:dead::/32"] } }] }] }),
    (mk) => mk(`deny-port${tag}`, { action: "DENY", rules: [{ to: [{ operation: { ports: ["22", "2375"] } }] }] }),
    (mk) => mk(`deny-when${tag}`, { action: "DENY", rules: [{ when: [{ key: "source.principal", values: ["*/sa/attacker"] }] }] }),
    (mk) => mk(`allow-a${tag}`, { rules: [{ from: [{ source: { principals: ["cluster.local/ns/a/sa/a"] } }], to: [{ operation: { ports: ["80"] } }] }] }),
    (mk) => mk(`allow-b${tag}`, { rules: [{ from: [{ source: { namespaces: ["b", "c", "d"] } }] }] }),
    (mk) => mk(`allow-ip${tag}`, { rules: [{ from: [{ source: { ipBlocks: ["172.16.0.0/12"] } }] }] }),
    (mk) => mk(`allow-sel${tag}`, { selector: { matchLabels: { app: "other" } }, rules: [{}] }),
    (mk) => mk(`allow-port${tag}`, { rules: [{ to: [{ operation: { ports: ["9999"] } }] }] }),
    (mk) => mk(`allow-client${tag}`, { rules: [{ from: [{ source: { ipBlocks: [`${clientIp}/32`] } }], to: [{ operation: { ports: [String(PORT)] } }] }] }),
  ];
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const env = await createProxyEnv();
try {
  const A = await env.sim.addPod({ name: "bench-client" });
  const S = await env.sim.addPod({ name: "bench-server" });
  await env.enroll(S);
  const dir = join(env.tmp, "policies");
  mkdirSync(dir);
  let n = 0;
  const write = (docs: string[]) => {
    const tmp = join(env.tmp, `p-${n++}.yaml`);
    writeFileSync(tmp, docs.length ? docs.join("---\n") : "# none\n");
    renameSync(tmp, join(dir, "policies.yaml"));
  };
  write([]);
  S.spawn([process.execPath, join(import.meta.dir, "bench-lib", "tools", "http-server.ts"), String(PORT)]);
  await S.waitForTcpPort(PORT);
  const proxy = env.startProxy({ args: ["--relay", relay], env: { NSHUB_PROXY_POLICIES: dir, NSHUB_LOG_LEVEL: "warn" } });
  await proxy.waitReady();
  const sets: [string, string[]][] = [
    ["0", []],
    ["10", ten("", A.ip)],
    ["1000", Array.from({ length: 100 }, (_, i) => ten(`-${i}`, A.ip)).flat()],
    ["1000 spread", [...ten("", A.ip), ...Array.from({ length: 99 }, (_, i) => ten("", A.ip, `other-${i}`)).flat()]],
  ];
  const wrk = async (secs: number) => {
    const r = await A.exec(["wrk", "-t1", "-c16", `-d${secs}s`, "-H", "Connection: close", `http://${S.ip}:${PORT}/`], { timeoutMs: (secs + 30) * 1000 });
    return parseWrk(r.stdout);
  };
  const rates: Record<string, number[]> = Object.fromEntries(sets.map(([k]) => [k, []]));
  await wrk(2); // warm-up (JIT, the proxy's pools)
  for (let rep = 1; rep <= reps; rep++) {
    for (const [name, docs] of sets) {
      write(docs);
      const want = docs.length;
      const t0 = Date.now();
      for (;;) {
        const p = JSON.parse((await proxy.http("GET", proxy.admin, "/policies")).body);
        if (p.threads.every((t: { policies: number }) => t.policies === want) && p.policies.length === want) break;
        if (Date.now() - t0 > 10_000) throw new Error(`policy set ${name} not in force in every thread after 10 s`);
        await Bun.sleep(50);
      }
      await wrk(1);
      const r = await wrk(seconds);
      const errors = r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout + r.non2xx3xx;
      rates[name]!.push(r.requestsPerSecond);
      console.log(`round ${rep}, ${name.padStart(11)} policies: ${r.requestsPerSecond.toFixed(0)} connections/s (${r.requests} in ${r.seconds.toFixed(1)} s, ${errors} errors)`);
    }
  }
  const m0 = median(rates["0"]!);
  console.log(`\nmedians (${reps} rounds of ${seconds} s, relay ${relay}, 2 data-plane threads, wrk -t1 -c16, Connection: close):`);
  for (const [k] of sets) {
    const m = median(rates[k]!);
    console.log(`  ${k.padStart(11)} policies: ${m.toFixed(0)} connections/s (${(((m - m0) / m0) * 100).toFixed(1)}% vs 0)`);
  }
} finally {
  await env.destroy();
}
