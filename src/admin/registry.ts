// The Prometheus plumbing both daemons share: a prom-client registry with
// `istio_build{component,tag}` (ztunnel exports the same gauge, see
// https://github.com/istio/ztunnel/blob/master/src/metrics/meta.rs) and the process metrics
// (./process-metrics.ts). Each daemon registers its own metrics on it: src/proxy/metrics.ts,
// src/agent/metrics.ts.
import { Gauge, Registry } from "prom-client";
import pkg from "../../package.json" with { type: "json" };
import { registerProcessMetrics, type ProcessMetrics, type ProcessMetricsOptions } from "./process-metrics.ts";

export interface MetricsRegistry {
  readonly registry: Registry;
  /** Stops background samplers (event-loop lag). */
  stop(): void;
}

/**
 * A registry with `istio_build{component,tag}` and the process metrics. Pass `process: false`
 * for a registry without samplers (tests that compare exact output).
 */
export function createRegistry(opts: { component?: string; process?: boolean | ProcessMetricsOptions } = {}): MetricsRegistry {
  const registry = new Registry();
  const build = new Gauge({ name: "istio_build", help: "Istio component build info", labelNames: ["component", "tag"] as const, registers: [registry] });
  build.set({ component: opts.component ?? "nshub", tag: pkg.version }, 1);
  let proc: ProcessMetrics | undefined;
  if (opts.process !== false) proc = registerProcessMetrics(registry, typeof opts.process === "object" ? opts.process : {});
  return { registry, stop: () => proc?.stop() };
}
