// Outbound over HBONE: a captured connection whose original destination is a mesh workload (the
// registry says HBONE) leaves the pod as a CONNECT stream in mutual TLS to `<dst IP>:15008`,
// never as plaintext. The proxy acts as the source pod: the TCP connection under the TLS is made
// inside that pod's netns with the proxy's mark (the pod's rules let it out uncaptured, its
// source IP is the pod's), and the certificate presented is the pod's identity's. The
// destination must present one of the identities the registry gives it. Anything that fails
// (no certificate, TCP, TLS, identity, a non-200 answer) resets the app's connection: there is
// no plaintext fallback (ztunnel's outbound.rs behaves the same).
import { buildBaggage, buildForwarded, HboneError, HBONE_PORT, newTraceparent, type TcpSide } from "../hbone/index.ts";
import { finishConnect, startTcpConnect, type SocketAddress } from "../sys/index.ts";
import type { HboneContext, MeshEntry } from "./hbone-context.ts";
import { HboneRelay } from "./hbone-relay.ts";
import type { PodProxy } from "./pod.ts";
import { fmt, type ConnectionRecord } from "./records.ts";

/** The record's mTLS facts for an outbound HBONE connection (before the tunnel exists). */
export function outboundMtls(ctx: HboneContext, pod: PodProxy, dst: SocketAddress, mesh: MeshEntry): ConnectionRecord["mtls"] {
  return { srcIdentity: ctx.identityOf(pod.ref), dstIdentity: mesh.identities[0] ?? "", tunnelAddr: fmt({ ip: dst.ip, port: HBONE_PORT }) };
}

/**
 * Carries `client` (the app's captured connection, already a Duplex) to `dst` over HBONE.
 * `relay` was tracked by the pod by the caller; it ends the record whatever happens.
 */
export function relayOverHbone(pod: PodProxy, ctx: HboneContext, relay: HboneRelay, client: TcpSide, dst: SocketAddress, mesh: MeshEntry): void {
  const { cfg, log } = pod.deps;
  const rec = relay.rec;
  relay.setTcp(client);
  const identity = rec.mtls!.srcIdentity;
  let haveCertificate = false;
  const fail = (e: unknown) => {
    // The pool's socket is made by createSocket below: its errors are the TCP connect's.
    const kind = e instanceof HboneError ? e.kind : haveCertificate ? "connect" : "certificate";
    const why = `hbone ${kind}: ${(e as Error).message}`;
    ctx.countFailure("outbound", kind);
    log.debug("HBONE to the destination failed; resetting the client", { id: rec.id, dst: fmt(dst), identity, error: why });
    relay.failed("connect_failed", why);
  };
  ctx
    .waitCertificate(identity, cfg.connectTimeoutMs)
    .then((certificate) => {
      if (relay.finished) return undefined;
      haveCertificate = true;
      return ctx.pool.connect({
        sourceIdentity: identity,
        sourceIp: rec.source.ip,
        certificate,
        destinationIp: dst.ip,
        expectedIdentities: mesh.identities,
        target: { ip: dst.ip, port: dst.port },
        headers: {
          forwarded: buildForwarded({ ip: rec.source.ip, port: rec.source.port }),
          baggage: buildBaggage({ namespace: pod.ref.namespace, workloadType: "pod", workloadName: pod.ref.name }),
          traceparent: newTraceparent(),
        },
        // The tunnel's TCP connection starts in the source pod's netns, marked so the pod's
        // own capture rules let it pass.
        createSocket: async () => {
          const fd = startTcpConnect({ netns: pod.netns, host: dst.ip, port: HBONE_PORT, mark: cfg.mark });
          return finishConnect(fd, cfg.connectTimeoutMs, pod.netns.label, `to ${fmt({ ip: dst.ip, port: HBONE_PORT })} (HBONE)`);
        },
      });
    })
    .then(
      (stream) => {
        if (!stream) return;
        if (relay.finished) {
          stream.close();
          return;
        }
        relay.join(stream, client);
      },
      fail,
    );
}
