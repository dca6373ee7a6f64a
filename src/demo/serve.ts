// The demo's web server: `nshub demo --serve-http <port> --name <ns/pod>`, run by the demo
// inside the demo/web pod's netns. It answers every request with one JSON line saying which
// client address it saw (the TCP peer of the accepted connection) and logs the same line, so
// the demo can prove source-IP preservation from the server's own point of view.
//
// Why nshub itself and not `socat … SYSTEM:<script>`: the demo must run from the compiled
// binary alone, the peer address comes straight from the accepted socket (no shell, no quoting),
// and the answer is JSON that the demo and a curious operator (--keep) can both read.
export async function serveHttp(port: number, name: string): Promise<number> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error(`nshub demo --serve-http: not a port: ${port}`);
    return 2;
  }
  const server = Bun.serve({
    hostname: "0.0.0.0",
    port,
    fetch(req, srv) {
      const peer = srv.requestIP(req);
      const client = peer ? (peer.family === "IPv6" ? `[${peer.address}]:${peer.port}` : `${peer.address}:${peer.port}`) : "unknown";
      const line = JSON.stringify({ server: name, client, method: req.method, path: new URL(req.url).pathname });
      console.log(JSON.stringify({ time: new Date().toISOString(), server: name, client, method: req.method, path: new URL(req.url).pathname }));
      return new Response(line + "\n", { headers: { "content-type": "application/json" } });
    },
  });
  console.log(JSON.stringify({ time: new Date().toISOString(), msg: `listening on 0.0.0.0:${server.port}`, server: name }));
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  server.stop(true);
  return 0;
}
