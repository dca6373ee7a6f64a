// Echo server for scripts/soak: every byte a client sends comes back on the same connection.
//   usage: bun echo-server.ts <port>
const port = Number(process.argv[2]);
Bun.listen({
  hostname: "0.0.0.0",
  port,
  socket: {
    data(s, d) {
      // Backpressure is ignored on purpose: a soak client sends at most a few hundred KiB and
      // waits for the echo before it sends more, so the kernel buffers hold it.
      const n = s.write(d);
      if (n < d.byteLength) s.data = d.subarray(n);
    },
    drain(s) {
      const rest = s.data as Uint8Array | undefined;
      if (rest) {
        const n = s.write(rest);
        s.data = n < rest.byteLength ? rest.subarray(n) : undefined;
      }
    },
    error() {},
  },
});
console.log(`echo server on ${port}`);
