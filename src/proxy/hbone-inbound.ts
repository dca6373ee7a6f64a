// The HBONE row of the listener table: every enrolled pod's `15008` listener, in the pod's own
// netns, answering with the pod's own identity (mutual TLS, HTTP/2 CONNECT; src/hbone/server.ts).
// The in-pod rules let 15008 through uncaptured, so a peer reaches it directly.
//
// The socket is made inside the pod's netns window (synchronously, like the other rows); TLS is
// served on it once this thread holds the pod identity's certificate. Until then connections
// wait in the kernel's accept queue (ztunnel likewise holds the handshake until the certificate
// is there). Per CONNECT, in ztunnel's order: the target must be this pod, the policies decide
// with the client's verified identity (401 when denied), then the proxy connects to the app
// inside the pod exactly as the plaintext inbound path does (mark 0x539, the client pod's IP as
// the source, so the app sees its real peer) and answers 200 only once that connect succeeded
// (503 otherwise).
import { createHboneServer, HBONE_PORT, type HboneServer, type InboundRequest } from "../hbone/index.ts";
import { fdStream } from "../hbone/fd-stream.ts";
import { closeFd, finishConnect, IPPROTO_TCP, setSockOpt, SysError, tcpListen, TCP_NODELAY, type SocketAddress } from "../sys/index.ts";
import type { ProxyConfig } from "../config/schema.ts";
import { prepareUpstream, setKeepalive, startUpstream } from "./handlers.ts";
import type { HboneContext } from "./hbone-context.ts";
import { HboneRelay } from "./hbone-relay.ts";
import type { BindFamily, ListenerKind, PodListener } from "./listeners.ts";
import type { PodProxy } from "./pod.ts";
import { fmt, type ConnectionRecord } from "./records.ts";

/** The HBONE row: on whenever the proxy has workload certificates (`proxy.ca`). */
export const HBONE_LISTENER: ListenerKind = {
  kind: "hbone",
  port: () => HBONE_PORT,
  enabled: (cfg) => cfg.ca.source !== "none",
  open: (pod, family, cfg) => openHboneListener(pod, family, cfg),
};

function openHboneListener(pod: PodProxy, family: BindFamily, cfg: ProxyConfig): PodListener {
  const ctx = pod.deps.hbone;
  if (!ctx) throw new Error("HBONE listener without workload certificates (proxy.ca)");
  const identity = ctx.identityOf(pod.ref);
  const address = family === "dual" ? "::" : "0.0.0.0";
  const fd = tcpListen({ address, port: HBONE_PORT, backlog: 1024, mark: cfg.mark, transparent: true, netns: pod.netns.label });
  try {
    setSockOpt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    setKeepalive(fd, cfg.keepaliveIdleSec);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  let server: HboneServer | undefined;
  let closed = false;
  const unwatch = ctx.watchCertificate(identity, (cert) => {
    if (closed) return;
    if (server) return server.setCertificate(cert);
    server = serverFor(pod, ctx, identity, cert);
    server.listenFd(fd).catch((e) => pod.deps.log.error("cannot serve HBONE on the pod's 15008 listener", { uid: pod.ref.uid, error: (e as Error).message }));
    pod.deps.log.debug("HBONE listener serving", { uid: pod.ref.uid, identity });
  });
  return {
    kind: "hbone",
    address,
    port: HBONE_PORT,
    fds: [fd],
    close() {
      if (!closed) {
        closed = true;
        unwatch();
        // Open tunnels stay with their relays (drain decides); the listening socket closes.
        if (server) server.stopListening();
        else closeFd(fd);
      }
      return Promise.resolve();
    },
  };
}

function serverFor(pod: PodProxy, ctx: HboneContext, identity: string, cert: Parameters<typeof createHboneServer>[0]["certificate"]): HboneServer {
  const { cfg, table, log, authorizer } = pod.deps;
  // The record of each CONNECT that got past the target check, until its tunnel takes it.
  const records = new WeakMap<InboundRequest, { rec: ConnectionRecord; relay?: HboneRelay }>();
  const open = (req: InboundRequest) => {
    const source = { ip: req.peerAddress.ip, port: req.peerAddress.port };
    const rec = table.open({
      pod: pod.ref,
      direction: "inbound",
      source,
      originalDst: req.target,
      upstream: req.target,
      mtls: { srcIdentity: req.peerIdentity, dstIdentity: identity, tunnelAddr: fmt({ ip: req.target.ip, port: HBONE_PORT }) },
    });
    records.set(req, { rec });
    return rec;
  };
  return createHboneServer({
    certificate: cert,
    trustDomain: ctx.trustDomain,
    // ztunnel: the CONNECT target's IP must be the address the connection reached.
    isLocalTarget: (t, localAddress) => t.ip === localAddress,
    authorize(req) {
      const rec = open(req);
      if (!authorizer || authorizer.admit(rec, table)) return "allow";
      return { status: 401, reason: rec.error ?? "denied by policy" };
    },
    async connectUpstream(req) {
      const entry = records.get(req)!;
      const relay = new HboneRelay(entry.rec, table, false);
      entry.relay = relay;
      pod.track(relay);
      const dst: SocketAddress = { ip: req.target.ip, port: req.target.port, family: req.target.ip.includes(":") ? 6 : 4 };
      if (pod.isSelfCall(dst, "inbound")) {
        relay.abort("refused_loop", `destination ${fmt(dst)} is one of the proxy's own ports`);
        throw new Error(`target ${fmt(dst)} is one of the proxy's own ports`);
      }
      // The client pod's IP as the source (transparent), unless the client is this pod itself.
      const transparentSource = req.peerAddress.ip !== dst.ip ? req.peerAddress.ip : undefined;
      let fd: number;
      try {
        fd = startUpstream(pod, dst, cfg, transparentSource);
        fd = await finishConnect(fd, cfg.connectTimeoutMs, pod.netns.label, `to ${fmt(dst)}`);
      } catch (e) {
        const why = e instanceof SysError ? e.code : (e as Error).message;
        log.debug("upstream connect failed; answering 503", { id: entry.rec.id, dst: fmt(dst), error: why });
        relay.failed("connect_failed", why);
        throw e;
      }
      prepareUpstream(fd, entry.rec, cfg);
      return fdStream(fd);
    },
    relay(req, stream, upstream) {
      const entry = records.get(req);
      if (!entry?.relay) return upstream.destroy();
      entry.relay.join(stream, upstream);
    },
    abandoned(req) {
      records.get(req)?.relay?.abort("reset", "the client reset the stream before the app answered");
    },
    onRefused(what) {
      const reason = what.status !== undefined ? `status_${what.status}` : what.reason.startsWith("identity") ? "identity" : "tls";
      ctx.countFailure("inbound", reason);
      if (what.status === 401) return; // the record's access-log line says it all
      log.info("HBONE connection refused", { uid: pod.ref.uid, ...what });
    },
  });
}
