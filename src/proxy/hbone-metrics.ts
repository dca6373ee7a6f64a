// HBONE's own metrics, per data-plane thread (the main thread sums the Workers' at each scrape):
// the pool (connections and streams open now, as ztunnel's pool reports them in its admin) and
// the tunnels refused or failed, by direction and reason (outbound: connect, tls, identity,
// status, stream, timeout, certificate; inbound: tls, identity, status_<code>, upstream).
import { Counter, Gauge, type Registry } from "prom-client";
import type { HboneContext } from "./hbone-context.ts";

export function createHboneMetrics(registry: Registry, ctx: HboneContext): void {
  const registers = [registry];
  const failures = new Counter({
    name: "nshub_hbone_failures_total",
    help: "HBONE tunnels refused or failed, by direction and reason; the connection was reset, never relayed in plaintext",
    labelNames: ["direction", "reason"] as const,
    registers,
  });
  ctx.onFailure = (direction, reason) => failures.inc({ direction, reason });
  new Gauge({
    name: "nshub_hbone_pool_connections",
    help: "Outbound HBONE connections (mTLS + HTTP/2) open in the pool",
    registers,
    collect() {
      this.set(ctx.pool.stats().connections);
    },
  });
  new Gauge({
    name: "nshub_hbone_pool_streams",
    help: "CONNECT streams open or about to open on the pool's connections",
    registers,
    collect() {
      this.set(ctx.pool.stats().streams);
    },
  });
}
