// Echo client for scripts/soak: connects to host:port again and again, sends random bytes,
// reads them back and compares. Prints one JSON line per failed connection ({"fail": …}) and a
// running total ({"total": …}) every second and at the end.
//   usage: bun echo-client.ts <host> <port> <bytes per connection> <connections | 0 = until stdin closes> [pause ms]
import { randomBytes } from "node:crypto";
import { connect } from "node:net";

const [host, portText, bytesText, countText, pauseText] = process.argv.slice(2);
const port = Number(portText);
const size = Number(bytesText);
const count = Number(countText);
const pauseMs = Number(pauseText ?? 0);
const total = { tried: 0, ok: 0, failed: 0, mismatched: 0, bytesVerified: 0 };
let stop = false;
if (count === 0) {
  process.stdin.on("end", () => (stop = true));
  process.stdin.on("close", () => (stop = true));
  process.stdin.resume();
}

function once(): Promise<void> {
  const payload = randomBytes(size);
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    let settled = false;
    const done = (err?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err === undefined) {
        const echoed = Buffer.concat(chunks);
        if (echoed.equals(payload)) {
          total.ok++;
          total.bytesVerified += size;
        } else {
          total.mismatched++;
          console.log(JSON.stringify({ fail: Date.now(), error: `echo differs (${echoed.length} of ${size} bytes)` }));
        }
      } else {
        total.failed++;
        console.log(JSON.stringify({ fail: Date.now(), error: err }));
      }
      resolve();
    };
    const timer = setTimeout(() => done(`timeout after 10 s (${got} of ${size} bytes back)`), 10_000);
    const sock = connect({ host: host!, port }, () => sock.write(payload));
    sock.on("data", (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= size) done();
    });
    sock.on("end", () => done(`closed after ${got} of ${size} bytes`));
    sock.on("error", (e) => done(e.message));
  });
}

const report = setInterval(() => console.log(JSON.stringify({ total })), 1000);
for (let i = 0; (count === 0 || i < count) && !stop; i++) {
  total.tried++;
  await once();
  if (pauseMs > 0) await Bun.sleep(pauseMs);
}
clearInterval(report);
console.log(JSON.stringify({ total, done: true }));
process.exit(0);
