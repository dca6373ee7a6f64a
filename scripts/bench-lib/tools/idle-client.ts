// Opens N connections to host:port (at most `parallel` connects in flight), writes a 16-byte hello
// on each, prints `connected <n>` when all are open (or `failed <k> …` if some failed), then keeps
// them idle until stdin closes or a signal arrives. Needs RLIMIT_NOFILE > N.
//   usage: bun idle-client.ts <host> <port> <n> [parallel]
import type { Socket } from "bun";

const [host, portText, nText, parText] = process.argv.slice(2);
const port = Number(portText);
const n = Number(nText);
const parallel = Number(parText ?? 200);
const HELLO = new TextEncoder().encode("nshub-bench-idle");
const sockets: Socket[] = [];
let failed = 0;
let firstError = "";

async function one(): Promise<void> {
  try {
    const s = await Bun.connect({ hostname: host!, port, socket: { data() {}, error() {}, close() {} } });
    s.write(HELLO);
    sockets.push(s);
  } catch (e) {
    failed++;
    firstError ||= String((e as Error).message ?? e);
  }
}

let next = 0;
async function worker(): Promise<void> {
  while (next < n) {
    next++;
    await one();
  }
}
const t0 = performance.now();
await Promise.all(Array.from({ length: Math.min(parallel, n) }, worker));
const ms = Math.round(performance.now() - t0);
if (failed > 0) console.log(`failed ${failed} of ${n} in ${ms} ms: ${firstError}`);
else console.log(`connected ${sockets.length} in ${ms} ms`);
for await (const _ of console) {
  // keep the connections until stdin closes
}
for (const s of sockets) s.end();
process.exit(0);
