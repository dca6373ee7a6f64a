// An HBONE server on loopback with a TCP echo app behind it, for the HBONE tests and the bench.
import net from "node:net";
import { createHboneServer, joinTunnel, type HbonePool, type HboneServer, type HboneServerOptions, type InboundRequest, type PoolRequest, type ServerCertificate, type TunnelResult } from "../../src/hbone/index.ts";

export interface Harness {
  server: HboneServer;
  port: number;
  /** The app's port on 127.0.0.1 (the CONNECT target). */
  appPort: number;
  app: net.Server;
  requests: InboundRequest[];
  refusals: { status?: number; reason: string }[];
  close(): Promise<void>;
}

/** `app` handles each upstream connection (default: echo, half-close aware). */
export async function startHarness(cert: ServerCertificate, o: Partial<HboneServerOptions> & { app?: (s: net.Socket) => void } = {}): Promise<Harness> {
  const app = net.createServer({ allowHalfOpen: true }, o.app ?? ((s) => s.pipe(s)));
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
  const appPort = (app.address() as net.AddressInfo).port;
  const requests: InboundRequest[] = [];
  const refusals: { status?: number; reason: string }[] = [];
  const server = createHboneServer({
    certificate: cert,
    trustDomain: "cluster.local",
    isLocalTarget: (t) => t.ip === "127.0.0.1",
    connectUpstream: (req) =>
      new Promise((resolve, reject) => {
        requests.push(req);
        const s = net.connect({ host: req.target.ip, port: req.target.port, allowHalfOpen: true });
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      }),
    onRefused: (r) => refusals.push(r),
    ...o,
  });
  const port = await server.listen("127.0.0.1", 0);
  return {
    server,
    port,
    appPort,
    app,
    requests,
    refusals,
    async close() {
      await server.close();
      app.close();
    },
  };
}

/**
 * The outbound side as the proxy will run it: a TCP listener standing for the captured
 * connection; each accepted socket gets a pooled CONNECT stream and is joined to it. A refused
 * CONNECT resets the captured socket.
 */
export async function startFront(pool: HbonePool, req: (s: net.Socket) => PoolRequest): Promise<{ port: number; results: (TunnelResult | Error)[]; close(): void }> {
  const results: (TunnelResult | Error)[] = [];
  const front = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, async (sock) => {
    sock.on("error", () => {});
    try {
      const stream = await pool.connect(req(sock));
      sock.resume();
      results.push(await joinTunnel(stream, sock));
    } catch (e) {
      results.push(e as Error);
      sock.resetAndDestroy();
    }
  });
  await new Promise<void>((r) => front.listen(0, "127.0.0.1", r));
  return { port: (front.address() as net.AddressInfo).port, results, close: () => front.close() };
}
