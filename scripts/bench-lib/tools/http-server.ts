// The benchmark's tiny HTTP/1.1 server (run inside pod B for every path): answers each request
// with a fixed 200 and `Connection: close`, then closes — one request per connection, which is
// what the connection-rate measure needs. `GET /peer` answers with the client address the server
// saw (the bench uses it to check which path a connection took).
//   usage: bun http-server.ts <port>
const port = Number(process.argv[2] ?? 8080);
const OK = new TextEncoder().encode("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");

type State = { buf: string };
Bun.listen<State>({
  hostname: "0.0.0.0",
  port,
  socket: {
    open(s) {
      s.data = { buf: "" };
    },
    data(s, chunk) {
      s.data.buf += chunk.toString("latin1");
      if (!s.data.buf.includes("\r\n\r\n")) {
        if (s.data.buf.length > 16384) s.end();
        return;
      }
      if (s.data.buf.startsWith("GET /peer ")) {
        const body = `${s.remoteAddress}\n`;
        s.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      } else {
        s.end(OK);
      }
    },
    error() {},
  },
});
console.log(`http-server listening on ${port}`);

export {};
