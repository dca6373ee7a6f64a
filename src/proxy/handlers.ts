// What the outbound (15001) and inbound (15006) listeners do with an accepted connection:
// find the original destination, refuse self calls, open the upstream socket inside the pod's
// netns with the proxy's mark (inbound: from the client's own IP, so the app sees the real
// peer), then hand both sockets to the relay: the userspace Relay (Bun sockets) or the splice
// relay thread (proxy.relay).
import {
  finishConnect,
  IPPROTO_TCP,
  localAddress,
  originalDst,
  peerAddress,
  setSockOpt,
  SOL_SOCKET,
  SO_KEEPALIVE,
  closeReset,
  startTcpConnect,
  SysError,
  type TcpConnectOptions,
  TCP_NODELAY,
  type SocketAddress,
} from "../sys/index.ts";
import { fmt, type ConnectionRecord, type Direction, type Endpoint } from "./records.ts";
import { Relay, type RelaySocket } from "./relay.ts";
import { SpliceRelay } from "./splice-relay.ts";
import type { SpliceEngine } from "./splice-engine.ts";
import type { PodProxy, PodRelay } from "./pod.ts";
import { fdStream, type TcpSide } from "../hbone/index.ts";
import { HboneRelay } from "./hbone-relay.ts";
import type { MeshEntry } from "./hbone-context.ts";
import { outboundMtls, relayOverHbone } from "./hbone-outbound.ts";
import { socketStream } from "./socket-stream.ts";

const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
/** Keepalive probes before a silent peer is declared dead (ztunnel's default). */
const KEEPALIVE_PROBES = 9;

const ep = (a: SocketAddress): Endpoint => ({ ip: a.ip, port: a.port });

/** Accepts for the userspace relay (Bun sockets; relay.ts). */
export function acceptSocket(pod: PodProxy, sock: RelaySocket, direction: Direction): void {
  const { cfg, table, log } = pod.deps;
  const admitted = admit(pod, sock.fd ?? -1, direction);
  if (!admitted) {
    sock.terminate();
    return;
  }
  const { rec, transparentSource, dst, mesh } = admitted;
  if (mesh) return void hbone(pod, rec, dst, mesh, () => socketStream(sock));
  const relay = new Relay(rec, sock, table, { maxQueuedBytes: cfg.maxQueuedBytes });
  pod.track(relay);
  if (refuseSelfCall(pod, relay, dst, direction)) return;
  connectUpstream(pod, dst, cfg, transparentSource)
    .then(
      (fd) => {
        prepareUpstream(fd, rec, cfg);
        return relay.adoptUpstream(fd);
      },
      (e) => {
        const why = e instanceof SysError ? e.code : (e as Error).message;
        log.debug("upstream connect failed; resetting the client", { id: rec.id, direction, dst: fmt(dst), error: why });
        relay.connectFailed(why);
      },
    )
    .catch((e) => relay.abort("error", (e as Error).message));
}

/**
 * Accepts for the splice relay (splice-relay.ts): the upstream connect is started here, and
 * the relay thread waits for it to complete, then moves the bytes.
 */
export function acceptFd(pod: PodProxy, fd: number, direction: Direction, engine: SpliceEngine): void {
  const { cfg, table, log } = pod.deps;
  // Accepted by the relay thread just before the pod was deleted: its netns is gone.
  const admitted = pod.closed ? undefined : admit(pod, fd, direction);
  if (!admitted) {
    closeReset(fd);
    return;
  }
  const { rec, transparentSource, dst, mesh } = admitted;
  if (mesh) return void hbone(pod, rec, dst, mesh, () => fdStream(fd));
  const relay = new SpliceRelay(rec, fd, table, engine);
  pod.track(relay);
  if (refuseSelfCall(pod, relay, dst, direction)) return;
  let upstreamFd: number;
  try {
    upstreamFd = startUpstream(pod, dst, cfg, transparentSource);
  } catch (e) {
    const why = e instanceof SysError ? e.code : (e as Error).message;
    log.debug("upstream connect failed; resetting the client", { id: rec.id, direction, dst: fmt(dst), error: why });
    relay.connectFailed(why);
    return;
  }
  prepareUpstream(upstreamFd, rec, cfg);
  try {
    setSockOpt(upstreamFd, IPPROTO_TCP, TCP_NODELAY, 1);
  } catch {
    // best effort, like keepalive
  }
  relay.start(upstreamFd, cfg.connectTimeoutMs);
}

/**
 * Reads the accepted connection's addresses, opens its record and, inbound, asks the policies;
 * undefined (after logging, or closing the record as policy_denied) and the caller resets it.
 */
function admit(pod: PodProxy, fd: number, direction: Direction): { rec: ConnectionRecord; dst: SocketAddress; transparentSource: string | undefined; mesh: MeshEntry | undefined } | undefined {
  const { table, log } = pod.deps;
  let source: SocketAddress;
  let dst: SocketAddress;
  try {
    source = peerAddress(fd);
    try {
      dst = originalDst(fd);
    } catch (e) {
      // Not redirected by NAT: with TPROXY the local address is the original destination; with
      // REDIRECT rules it means the client connected to the proxy port itself (refused below).
      if (!(e instanceof SysError)) throw e;
      dst = localAddress(fd);
    }
  } catch (e) {
    log.warn("cannot read the addresses of an accepted connection; resetting it", { direction, error: (e as Error).message });
    return undefined;
  }
  // Outbound to a mesh workload goes over HBONE (hbone-outbound.ts): known before the record
  // opens, so its metrics carry the identities from the first count.
  const ctx = pod.deps.hbone;
  const mesh = direction === "outbound" && ctx && !pod.isSelfCall(dst, direction) ? ctx.meshDestination(dst.ip) : undefined;
  const mtls = mesh ? outboundMtls(ctx!, pod, dst, mesh) : undefined;
  const rec = table.open({ pod: pod.ref, direction, source: ep(source), originalDst: ep(dst), upstream: ep(dst), mtls });
  // Authorization before anything is connected (authorize.ts): a denied record is closed there.
  const authz = pod.deps.authorizer;
  if (direction === "inbound" && authz && !authz.admit(rec, table)) return undefined;
  // Inbound keeps the client's IP as the source (IP_TRANSPARENT bind); the pod's connmark and
  // table-100 rules bring the app's replies back to this socket. Not when the client is the
  // pod itself (same IP): then a plain connect is right.
  const transparentSource = direction === "inbound" && source.ip !== dst.ip ? source.ip : undefined;
  return { rec, dst, transparentSource, mesh };
}

/** The captured connection goes to a mesh workload: over HBONE, its record says which. */
function hbone(pod: PodProxy, rec: ConnectionRecord, dst: SocketAddress, mesh: MeshEntry, client: () => TcpSide): void {
  const relay = new HboneRelay(rec, pod.deps.table, true);
  pod.track(relay);
  relayOverHbone(pod, pod.deps.hbone!, relay, client(), dst, mesh);
}

function refuseSelfCall(pod: PodProxy, relay: PodRelay, dst: SocketAddress, direction: Direction): boolean {
  if (!pod.isSelfCall(dst, direction)) return false;
  pod.deps.log.debug("refused a connection to the proxy's own port", { id: relay.rec.id, direction, dst: fmt(dst), source: fmt(relay.rec.source) });
  relay.abort("refused_loop", `destination ${fmt(dst)} is one of the proxy's own ports`);
  return true;
}

/** Keepalive (the accepted socket inherited it from the listener) and the record's local address. */
export function prepareUpstream(fd: number, rec: ConnectionRecord, cfg: PodProxy["deps"]["cfg"]): void {
  setKeepalive(fd, cfg.keepaliveIdleSec);
  try {
    rec.upstreamLocal = ep(localAddress(fd));
  } catch {
    // informational only
  }
}

/**
 * Source ports for inbound connections that keep the client's IP. With port 0 the kernel may
 * pick a port that the same client is using right now to the same destination: in the pod
 * that is a live conntrack tuple (the client's redirected connection), the two connections
 * merge and one of them stalls. Clients' kernels take ephemeral ports from 32768–60999 by
 * default, so the proxy takes its own from below that range; a port in use here is retried.
 */
export const INBOUND_SOURCE_PORTS = { min: 20000, max: 32767 } as const;
const SOURCE_PORT_TRIES = 16;

/** The upstream socket, connected (the userspace relay adopts only connected sockets). */
async function connectUpstream(pod: PodProxy, dst: SocketAddress, cfg: PodProxy["deps"]["cfg"], transparentSource: string | undefined): Promise<number> {
  const fd = startUpstream(pod, dst, cfg, transparentSource);
  return finishConnect(fd, cfg.connectTimeoutMs, pod.netns.label, `to ${fmt(dst)}`);
}

/**
 * Creates the upstream socket in the pod's netns and starts its connect (it may still be in
 * progress on return). Inbound binds the client's IP with a port from INBOUND_SOURCE_PORTS,
 * another one when that is taken.
 */
export function startUpstream(pod: PodProxy, dst: SocketAddress, cfg: PodProxy["deps"]["cfg"], transparentSource: string | undefined): number {
  const o: TcpConnectOptions = { netns: pod.netns, host: dst.ip, port: dst.port, mark: cfg.mark, transparentSource, transparentSourcePort: undefined };
  if (transparentSource === undefined) return startTcpConnect(o);
  const span = INBOUND_SOURCE_PORTS.max - INBOUND_SOURCE_PORTS.min + 1;
  for (let i = 0; i < SOURCE_PORT_TRIES; i++) {
    o.transparentSourcePort = INBOUND_SOURCE_PORTS.min + Math.floor(Math.random() * span);
    try {
      return startTcpConnect(o);
    } catch (e) {
      // The bind is the first thing that can fail with EADDRINUSE; anything else is the connect's.
      if (!(e instanceof SysError && e.code === "EADDRINUSE")) throw e;
    }
  }
  o.transparentSourcePort = undefined;
  return startTcpConnect(o);
}

/**
 * Keepalive as ztunnel has it: probes after `idleSec` idle, then every `idleSec`, 9 of them.
 * Set with plain setsockopt on the raw fd (a listener's accepted sockets inherit it), not Bun's
 * setKeepAlive per socket: on a connection-heavy load that was ~4% of the proxy's CPU.
 */
export function setKeepalive(fd: number, idleSec: number): void {
  try {
    setSockOpt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
    setSockOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE, idleSec);
    setSockOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL, idleSec);
    setSockOpt(fd, IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE_PROBES);
  } catch {
    // the socket may already be gone; keepalive is best effort
  }
}
