// What the outbound (15001) and inbound (15006) listeners do with an accepted connection:
// find the original destination, refuse self calls, open the upstream socket inside the pod's
// netns with the proxy's mark (inbound: from the client's own IP, so the app sees the real
// peer), then hand both sockets to a Relay.
import {
  connectTcp,
  localAddress,
  originalDst,
  peerAddress,
  setSockOpt,
  SOL_SOCKET,
  SO_KEEPALIVE,
  SysError,
  type SocketAddress,
} from "../sys/index.ts";
import { fmt, type Direction, type Endpoint } from "./records.ts";
import { Relay, type RelaySocket } from "./relay.ts";
import type { PodProxy } from "./pod.ts";

const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
/** Keepalive probes before a silent peer is declared dead (ztunnel's default). */
const KEEPALIVE_PROBES = 9;

export function acceptOutbound(pod: PodProxy, sock: RelaySocket): void {
  accept(pod, sock, "outbound");
}

export function acceptInbound(pod: PodProxy, sock: RelaySocket): void {
  accept(pod, sock, "inbound");
}

const ep = (a: SocketAddress): Endpoint => ({ ip: a.ip, port: a.port });

function accept(pod: PodProxy, sock: RelaySocket, direction: Direction): void {
  const { cfg, table, log } = pod.deps;
  const fd = sock.fd ?? -1;
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
    sock.terminate();
    return;
  }
  const rec = table.open({ pod: pod.ref, direction, source: ep(source), originalDst: ep(dst), upstream: ep(dst) });
  // Keepalive: the accepted socket inherited it from the listener; the upstream gets it below.
  const relay = new Relay(rec, sock, table, { maxQueuedBytes: cfg.maxQueuedBytes });
  pod.track(relay);
  if (pod.isSelfCall(dst, direction)) {
    log.debug("refused a connection to the proxy's own port", { id: rec.id, direction, dst: fmt(dst), source: fmt(source) });
    relay.abort("refused_loop", `destination ${fmt(dst)} is one of the proxy's own ports`);
    return;
  }
  // Inbound keeps the client's IP as the source (IP_TRANSPARENT bind); the pod's connmark and
  // table-100 rules bring the app's replies back to this socket. Not when the client is the
  // pod itself (same IP): then a plain connect is right.
  const transparentSource = direction === "inbound" && source.ip !== dst.ip ? source.ip : undefined;
  let upstreamFd: number;
  connectUpstream(pod, dst, cfg, transparentSource)
    .then(
      (fd) => {
        upstreamFd = fd;
        setKeepalive(fd, cfg.keepaliveIdleSec);
        try {
          rec.upstreamLocal = ep(localAddress(fd));
        } catch {
          // informational only
        }
        return relay.adoptUpstream(upstreamFd);
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
 * Source ports for inbound connections that keep the client's IP. With port 0 the kernel may
 * pick a port that the same client is using right now to the same destination: in the pod
 * that is a live conntrack tuple (the client's redirected connection), the two connections
 * merge and one of them stalls. Clients' kernels take ephemeral ports from 32768–60999 by
 * default, so the proxy takes its own from below that range; a port in use here is retried.
 */
export const INBOUND_SOURCE_PORTS = { min: 20000, max: 32767 } as const;
const SOURCE_PORT_TRIES = 16;

async function connectUpstream(pod: PodProxy, dst: SocketAddress, cfg: PodProxy["deps"]["cfg"], transparentSource: string | undefined): Promise<number> {
  const base = { netns: pod.netns, host: dst.ip, port: dst.port, mark: cfg.mark, timeoutMs: cfg.connectTimeoutMs };
  if (transparentSource === undefined) return connectTcp(base);
  const span = INBOUND_SOURCE_PORTS.max - INBOUND_SOURCE_PORTS.min + 1;
  for (let i = 0; i < SOURCE_PORT_TRIES; i++) {
    const transparentSourcePort = INBOUND_SOURCE_PORTS.min + Math.floor(Math.random() * span);
    try {
      return await connectTcp({ ...base, transparentSource, transparentSourcePort });
    } catch (e) {
      // The bind is the first thing that can fail with EADDRINUSE; anything else is the connect's.
      if (!(e instanceof SysError && e.code === "EADDRINUSE")) throw e;
    }
  }
  return connectTcp({ ...base, transparentSource });
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
