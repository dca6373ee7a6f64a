// Polls an HTTP URL every few milliseconds until it answers 200, then prints `ready <epoch ms>`
// and exits (exit 1 with `timeout` after the deadline). Started before the process it waits for,
// so that its own start-up is not part of what it measures.
//   usage: bun wait-ready.ts <url> <timeoutMs> [intervalMs]
const [url, timeoutText, intervalText] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutText ?? 30000);
const interval = Number(intervalText ?? 10);
console.log("polling");
for (;;) {
  try {
    const r = await fetch(url!, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    if (r.status === 200) {
      console.log(`ready ${Date.now()}`);
      process.exit(0);
    }
  } catch {
    // not listening yet
  }
  if (Date.now() > deadline) {
    console.log("timeout");
    process.exit(1);
  }
  await Bun.sleep(interval);
}

export {};
