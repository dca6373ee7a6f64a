// One served pod: its netns, its listener set (one listener per row of the listener table,
// opened inside the pod's netns), and its live relays.
import { networkInterfaces } from "node:os";
import { readFileSync, writeFileSync } from "node:fs";
import { isIPv4 } from "node:net";
import { withNetns, type Netns } from "../sys/index.ts";
import type { ProxyConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import type { WorkloadIdentity } from "../zds/types.ts";
import type { InboundAuthorizer } from "./authorize.ts";
import type { HboneContext } from "./hbone-context.ts";
import { spliceEngine } from "./splice-engine.ts";
import type { BindFamily, ListenerKind, PodListener } from "./listeners.ts";
import type { CloseHow, ConnectionRecord, ConnectionTable, Direction, PodRef } from "./records.ts";

/** A live relayed connection of a pod: a userspace Relay (relay.ts) or a SpliceRelay. */
export interface PodRelay {
  readonly rec: ConnectionRecord;
  readonly finished: boolean;
  /** Called once when the relay ends. */
  onFinish(fn: (relay: PodRelay) => void): void;
  /** Resets both sockets and closes the record with `how`. Idempotent. */
  abort(how: CloseHow, error?: string): void;
}

export interface PodProxyDeps {
  cfg: ProxyConfig;
  table: ConnectionTable;
  log: Logger;
  /** The listener table (default LISTENER_KINDS). */
  kinds: readonly ListenerKind[];
  /** Destination ports that are self calls (listeners.proxyPorts). */
  proxyPorts: ReadonlySet<number>;
  /** This thread's inbound authorization (authorize.ts); none: every connection is allowed. */
  authorizer?: InboundAuthorizer;
  /** This thread's HBONE state (certificates, mesh destinations, pool); only with proxy.ca. */
  hbone?: HboneContext;
}

/** What the proxy found out about the pod's netns while it was inside. */
export interface PodNetInfo {
  /** Addresses of the pod's interfaces (loopback included). */
  addresses: string[];
  family: BindFamily;
  /**
   * net.ipv4.tcp_migrate_req in the pod's netns after we set it to 1: "1", or why not (old
   * kernel). With 1, connections waiting in a closing listener's accept queue move to another
   * listener of its SO_REUSEPORT group (the other proxy in a hand-over) instead of being reset.
   */
  migrateReq: string;
}

export class PodStartError extends Error {
  constructor(
    message: string,
    readonly kind: string | undefined,
  ) {
    super(message);
    this.name = "PodStartError";
  }
}

export class PodProxy {
  readonly listeners: PodListener[] = [];
  readonly relays = new Set<PodRelay>();
  #closed = false;
  #listenersClosed: Promise<void> | undefined;

  private constructor(
    readonly ref: PodRef,
    readonly netns: Netns,
    readonly net: PodNetInfo,
    readonly deps: PodProxyDeps,
    readonly startedAt: number,
  ) {}

  /**
   * Enters the pod's netns once, inspects it, and opens every enabled row of the listener
   * table there. On any failure the listeners already opened are closed and PodStartError is
   * thrown; `netns` stays owned by the caller then.
   */
  static start(uid: string, info: WorkloadIdentity | undefined, netns: Netns, deps: PodProxyDeps): PodProxy {
    const ref: PodRef = {
      uid,
      name: info?.name ?? "",
      namespace: info?.namespace ?? "",
      serviceAccount: info?.serviceAccount ?? "",
    };
    let pod: PodProxy | undefined;
    // Threads are born in their creator's netns and stay there: this thread's splice relay
    // thread must start here, at home, not inside the pod's netns window below (it would keep
    // that netns alive until the proxy exits; found by test/netns/containerd.test.ts).
    if (deps.cfg.relay === "splice" && deps.kinds.some((k) => k.enabled(deps.cfg))) spliceEngine({ pipeSize: deps.cfg.maxQueuedBytes, onWarning: (m) => deps.log.warn(m) });
    withNetns(netns, () => {
      const net = inspectNetns();
      pod = new PodProxy(ref, netns, net, deps, Date.now());
      for (const k of deps.kinds) {
        if (!k.enabled(deps.cfg)) continue;
        try {
          pod.listeners.push(k.open(pod, net.family, deps.cfg));
        } catch (e) {
          for (const l of pod.listeners) void l.close();
          throw new PodStartError(
            `cannot listen on ${net.family === "dual" ? "[::]" : "0.0.0.0"}:${k.port(deps.cfg)} (${k.kind}) in netns ${netns.label}: ${errText(e)}`,
            k.kind,
          );
        }
      }
    });
    return pod!;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** A relay of this pod; forgotten when it finishes. */
  track(relay: PodRelay): void {
    if (relay.finished) return;
    this.relays.add(relay);
    relay.onFinish((r) => this.relays.delete(r));
  }

  /**
   * Whether `dst` is the proxy itself (a loop): inbound, any destination on a proxy port;
   * outbound, a proxy port on loopback, an unspecified address or one of the pod's own IPs.
   */
  isSelfCall(dst: { ip: string; port: number }, direction: Direction): boolean {
    if (!this.deps.proxyPorts.has(dst.port)) return false;
    if (direction === "inbound") return true;
    return isLoopbackOrAny(dst.ip) || this.net.addresses.includes(dst.ip);
  }

  /** Stops accepting: closes every listener. Open connections continue. */
  stopAccepting(): Promise<void> {
    return Promise.all(this.listeners.map((l) => l.close())).then(() => undefined);
  }

  /** Resets every open connection of this pod. */
  closeConnections(how: CloseHow): void {
    for (const r of [...this.relays]) r.abort(how);
  }

  /**
   * Listeners and connections closed at once, netns released. The promise resolves once the
   * listeners are closed (splice listeners close on their relay thread). Idempotent.
   */
  close(how: CloseHow = "deleted"): Promise<void> {
    if (this.#closed) return this.#listenersClosed ?? Promise.resolve();
    this.#closed = true;
    this.#listenersClosed = this.stopAccepting();
    this.closeConnections(how);
    // Its pooled HBONE connections were made in its netns (and would keep it alive).
    this.deps.hbone?.pool.closeSources(this.net.addresses);
    this.netns.close();
    return this.#listenersClosed;
  }
}

function errText(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  const msg = (e as Error).message ?? String(e);
  return typeof code === "string" && !msg.includes(code) ? `${msg} (${code})` : msg;
}

function isLoopbackOrAny(ip: string): boolean {
  if (isIPv4(ip)) return ip.startsWith("127.") || ip === "0.0.0.0";
  return ip === "::1" || ip === "::";
}

/** Runs inside the pod's netns window (synchronous, like everything there). */
function inspectNetns(): PodNetInfo {
  const addresses: string[] = [];
  let v6 = false;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      addresses.push(a.address);
      if (a.family === "IPv6" && !a.internal && !a.address.toLowerCase().startsWith("fe80:")) v6 = true;
    }
  }
  return { addresses, family: v6 ? "dual" : "ipv4", migrateReq: enableMigrateReq() };
}

/**
 * net.ipv4.tcp_migrate_req=1 in the current thread's netns: /proc/sys/net resolves against the
 * netns of the thread that opens it, so inside the window it is the pod's.
 */
function enableMigrateReq(): string {
  const path = "/proc/sys/net/ipv4/tcp_migrate_req";
  try {
    writeFileSync(path, "1");
    return readFileSync(path, "utf8").trim();
  } catch (e) {
    return `unavailable: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
}
