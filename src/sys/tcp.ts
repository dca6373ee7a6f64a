// TCP sockets created inside a pod's netns with the mark set before the first packet leaves,
// and optionally a transparent bind to a foreign source (inbound source-IP preservation).
import { lib } from "./lib.ts";
import { EINPROGRESS, ETIMEDOUT, SysError } from "./errors.ts";
import { closeFd } from "./fds.ts";
import { homeNetns, type Netns } from "./netns.ts";
import { fdPoller, POLLOUT } from "./poller.ts";
import { encodeSockaddr } from "./sockaddr.ts";

export interface TcpConnectOptions {
  /** The namespace the socket is created in; the calling thread's own when absent. */
  netns?: Netns;
  host: string;
  port: number;
  /** SO_MARK applied before connect (0/absent: none). */
  mark?: number;
  /** Bind to this (possibly foreign) IP first, with IP_TRANSPARENT + IP_FREEBIND. */
  transparentSource?: string;
  /** Source port for the transparent bind (0/absent: the kernel picks one). */
  transparentSourcePort?: number;
}

/**
 * Creates the socket and starts a non-blocking connect. Returns the fd; the connect may still
 * be in progress — use `connectOutcome` or `connectTcp`. Throws SysError naming the netns.
 */
export function startTcpConnect(o: TcpConnectOptions): number {
  const dst = encodeSockaddr(o.host, o.port);
  const src = o.transparentSource !== undefined ? encodeSockaddr(o.transparentSource, o.transparentSourcePort ?? 0) : null;
  const r = lib.nh_tcp_connect(
    o.netns ? o.netns.fd : -1,
    o.netns ? homeNetns().fd : -1,
    (o.mark ?? 0) >>> 0,
    src,
    src ? src.byteLength : 0,
    dst,
    dst.byteLength,
  );
  if (r >= 0) return r;
  const from = src ? ` from ${o.transparentSource}:${o.transparentSourcePort ?? 0}` : "";
  throw new SysError("connect", -r, o.netns?.label, `to ${o.host}:${o.port}${from}`);
}

/** 0 when connected, -EINPROGRESS while pending, else the connect's -errno. Never blocks. */
export function connectOutcome(fd: number): number {
  return lib.nh_connect_result(fd, 0);
}

/**
 * Connects and resolves with the fd once the connection is established. A refused or
 * unreachable connect rejects with that errno (ECONNREFUSED…), and after `timeoutMs` with
 * ETIMEDOUT; the fd is closed on every failure.
 */
export async function connectTcp(o: TcpConnectOptions & { timeoutMs: number }): Promise<number> {
  return finishConnect(startTcpConnect(o), o.timeoutMs, o.netns?.label, `to ${o.host}:${o.port}`);
}

/**
 * Waits for the connect `startTcpConnect` began on `fd` (without blocking the JS thread) and
 * resolves with the fd once established; rejects as connectTcp does, with the fd closed.
 */
export async function finishConnect(fd: number, timeoutMs: number, netns?: string, detail?: string): Promise<number> {
  try {
    let r = connectOutcome(fd);
    if (r === -EINPROGRESS) {
      const revents = await fdPoller().wait(fd, POLLOUT, timeoutMs);
      r = revents === 0 ? -ETIMEDOUT : connectOutcome(fd);
      if (r === -EINPROGRESS) r = -ETIMEDOUT;
    }
    if (r < 0) throw new SysError("connect", -r, netns, detail);
    return fd;
  } catch (e) {
    fdPoller().cancel(fd);
    closeFd(fd);
    throw e;
  }
}
