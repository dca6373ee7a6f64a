// Holds connections open for the idle-connection memory measure: accepts, reads the client's
// hello (16 bytes) and keeps the socket. Prints `held <n>` (connections whose hello arrived)
// every 200 ms while the count changes.
//   usage: bun idle-server.ts <port>
const port = Number(process.argv[2] ?? 9000);
let held = 0;
let accepted = 0;
Bun.listen<{ got: number }>({
  hostname: "0.0.0.0",
  port,
  socket: {
    open(s) {
      s.data = { got: 0 };
      accepted++;
    },
    data(s, chunk) {
      const before = s.data.got;
      s.data.got += chunk.length;
      if (before < 16 && s.data.got >= 16) held++;
    },
    close(s) {
      accepted--;
      if (s.data.got >= 16) held--;
    },
    error() {},
  },
});
console.log(`idle-server listening on ${port}`);
let last = -1;
setInterval(() => {
  if (held !== last) {
    last = held;
    console.log(`held ${held} accepted ${accepted}`);
  }
}, 200);

export {};
