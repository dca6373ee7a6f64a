// The per-pod listener table: one row per kind of listener a pod gets: outbound capture (15001),
// inbound plaintext capture (15006) and HBONE (15008, mTLS HTTP/2 CONNECT, with proxy.ca). DNS
// (15053, UDP+TCP on localhost) would be a further row of the same table: a row says on which port and
// address it listens and how it opens its sockets (synchronously, inside the pod's netns window)
// and handles what it accepts; the pod proxy (pod.ts) does not know the kinds.
import {
  closeFd,
  getSockOpt,
  IPPROTO_TCP,
  IPV6_TRANSPARENT,
  IP_TRANSPARENT,
  SOL_IP,
  SOL_IPV6,
  SOL_SOCKET,
  SO_MARK,
  SO_REUSEPORT,
  setSockOpt,
  localAddress,
  tcpListen,
  TCP_NODELAY,
} from "../sys/index.ts";
import type { ProxyConfig } from "../config/schema.ts";
import { acceptFd, acceptSocket, setKeepalive } from "./handlers.ts";
import { clientHandlers, type RelaySocket } from "./relay.ts";
import { spliceEngine, type SpliceEngine } from "./splice-engine.ts";
import type { PodProxy } from "./pod.ts";
import type { Direction } from "./records.ts";
import { HBONE_LISTENER } from "./hbone-inbound.ts";
import { HBONE_PORT } from "../hbone/wire.ts";

/** The address family the pod's wildcard listeners use: "::" (dual stack) when the pod has IPv6. */
export type BindFamily = "ipv4" | "dual";

/** One open listener of one pod. */
export interface PodListener {
  readonly kind: string;
  /** e.g. "0.0.0.0", "::", "127.0.0.1". */
  readonly address: string;
  readonly port: number;
  /** The listening sockets' fds (a DNS row would have a UDP and a TCP one). */
  readonly fds: readonly number[];
  /**
   * Stops accepting and closes the sockets. Connections are not touched. The promise resolves
   * once every socket the listener accepted has been handed to its handler (at once for Bun's
   * listeners; for splice listeners when the relay thread confirms), so a drain that waits for
   * it cannot miss a connection still on its way.
   */
  close(): Promise<void>;
}

/** A row of the listener table. */
export interface ListenerKind {
  readonly kind: string;
  /** The port this row listens on with the given config. */
  port(cfg: ProxyConfig): number;
  /** Whether the row is on with the given config (a DNS row would read dnsCapture). */
  enabled(cfg: ProxyConfig): boolean;
  /**
   * Opens the row's sockets for `pod`. Runs inside the pod's netns window: everything that
   * creates a socket must happen synchronously before returning. Throws when it cannot bind.
   */
  open(pod: PodProxy, family: BindFamily, cfg: ProxyConfig): PodListener;
}

interface BunListener {
  readonly fd?: number;
  readonly port: number;
  stop(closeActiveConnections?: boolean): void;
}

/**
 * A wildcard TCP listener with SO_REUSEPORT (so a second proxy can bind the same port for a
 * hand-over), half-open sockets, SO_MARK (accepted sockets inherit it, so the pod's rules never
 * capture the proxy's own replies) and IP_TRANSPARENT (needed for TPROXY-style inbound).
 * Must run inside the pod's netns window.
 */
export function openTcpListener(opts: {
  kind: string;
  address: string;
  port: number;
  mark: number;
  transparent: boolean;
  /** Keepalive for the accepted sockets, which inherit it from the listener (no per-connection setsockopt). */
  keepaliveIdleSec?: number;
  accept: (sock: RelaySocket) => void;
}): PodListener {
  const l = Bun.listen({
    hostname: opts.address,
    port: opts.port,
    reusePort: true,
    allowHalfOpen: true,
    socket: clientHandlers(opts.accept),
  } as never) as unknown as BunListener;
  const fd = l.fd ?? -1;
  try {
    if (fd < 0) throw new Error(`Bun listener on ${opts.address}:${opts.port} has no fd`);
    setSockOpt(fd, SOL_SOCKET, SO_MARK, opts.mark);
    if (opts.transparent) {
      if (opts.address.includes(":")) setSockOpt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1);
      else setSockOpt(fd, SOL_IP, IP_TRANSPARENT, 1);
    }
    if (getSockOpt(fd, SOL_SOCKET, SO_REUSEPORT) !== 1) throw new Error("SO_REUSEPORT did not stick");
    if (opts.keepaliveIdleSec !== undefined) setKeepalive(fd, opts.keepaliveIdleSec);
  } catch (e) {
    l.stop(true);
    throw e;
  }
  let closed = false;
  return {
    kind: opts.kind,
    address: opts.address,
    port: l.port,
    fds: [fd],
    close() {
      if (!closed) {
        closed = true;
        // false: accepted connections stay with their relays (drain decides their fate).
        l.stop(false);
      }
      return Promise.resolve();
    },
  };
}

/**
 * The same listener for the splice relay: the socket is made by libnshub, not Bun, and the
 * calling thread's splice relay thread accepts on it (Bun never owns these sockets, so their
 * bytes can move by splice(2)). TCP_NODELAY and keepalive are set here for the accepted
 * sockets to inherit. Must run inside the pod's netns window.
 */
export function openSpliceListener(opts: {
  kind: string;
  address: string;
  port: number;
  mark: number;
  transparent: boolean;
  keepaliveIdleSec: number;
  netns: string;
  /** This thread's splice relay (splice-engine.ts spliceEngine()). */
  engine: SpliceEngine;
  accept: (fd: number) => void;
}): PodListener {
  const fd = tcpListen({ address: opts.address, port: opts.port, backlog: 1024, mark: opts.mark, transparent: opts.transparent, netns: opts.netns });
  let port: number;
  try {
    setSockOpt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    setKeepalive(fd, opts.keepaliveIdleSec);
    port = localAddress(fd).port;
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  const engine = opts.engine;
  const tag = engine.listen(fd, opts.accept);
  let closed: Promise<void> | undefined;
  return {
    kind: opts.kind,
    address: opts.address,
    port,
    fds: [fd],
    close() {
      closed ??= engine.unlisten(tag);
      return closed;
    },
  };
}

/** A capture listener (outbound or inbound) with the relay `cfg.relay` chooses. */
function openCaptureListener(pod: PodProxy, family: BindFamily, cfg: ProxyConfig, direction: Direction, port: number): PodListener {
  const common = { kind: direction, address: wildcard(family), port, mark: cfg.mark, transparent: true, keepaliveIdleSec: cfg.keepaliveIdleSec };
  if (cfg.relay === "splice") {
    // The first call starts this thread's relay thread; its pipes are maxQueuedBytes large.
    const engine = spliceEngine({ pipeSize: cfg.maxQueuedBytes, onWarning: (m) => pod.deps.log.warn(m) });
    return openSpliceListener({ ...common, netns: pod.netns.label, engine, accept: (fd) => acceptFd(pod, fd, direction, engine) });
  }
  return openTcpListener({ ...common, accept: (sock) => acceptSocket(pod, sock, direction) });
}

const wildcard = (family: BindFamily) => (family === "dual" ? "::" : "0.0.0.0");

/** The listener table. Order matters only for logs. */
export const LISTENER_KINDS: readonly ListenerKind[] = [
  {
    kind: "outbound",
    port: (cfg) => cfg.outboundPort,
    enabled: () => true,
    open: (pod, family, cfg) => openCaptureListener(pod, family, cfg, "outbound", cfg.outboundPort),
  },
  {
    kind: "inbound",
    port: (cfg) => cfg.inboundPort,
    enabled: () => true,
    open: (pod, family, cfg) => openCaptureListener(pod, family, cfg, "inbound", cfg.inboundPort),
  },
  // mTLS HTTP/2 CONNECT on 15008 (hbone-inbound.ts), when the proxy has workload certificates.
  HBONE_LISTENER,
  // Next row: { kind: "dns", port: () => 15053, open: UDP + TCP on 127.0.0.1 (and ::1) }.
];

/** Istio's HBONE port: a self call even when the HBONE row is off (no proxy.ca). */
const RESERVED_PORTS = [HBONE_PORT];

/**
 * Ports that must never be a relayed connection's destination (self calls): every port of the
 * table, enabled or not, plus the reserved HBONE port, like ztunnel's illegal_ports.
 */
export function proxyPorts(cfg: ProxyConfig, kinds: readonly ListenerKind[] = LISTENER_KINDS): Set<number> {
  return new Set([...kinds.map((k) => k.port(cfg)), ...RESERVED_PORTS]);
}
