// The main thread's side of the data-plane threads (src/proxy/workers.ts) when a Worker dies:
// the failure is reported once (the proxy then drains and exits 1), questions to the dead
// thread fail at once instead of hanging, and a thread dying while it starts fails the start.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { WorkerPool } from "../../src/proxy/workers.ts";
import { proxySchema } from "../../src/config/schema.ts";
import { createLogger, setLogSink } from "../../src/log/logger.ts";

const CRASH_WORKER = join(import.meta.dir, "..", "fixtures", "crashing-dataplane-worker.ts");
const logs: string[] = [];
setLogSink((l) => logs.push(l), "json");
const log = createLogger("workers-test");

test("a thread that dies is reported once; asking it fails at once; the pool still stops", async () => {
  const pool = await WorkerPool.start(2, proxySchema.parse({}), "info", log, { workerUrl: CRASH_WORKER });
  const failures: Array<[number, string]> = [];
  const reported = new Promise<void>((resolve) =>
    pool.onFailure((thread, error) => {
      failures.push([thread, error]);
      resolve();
    }),
  );
  pool.workers[1]!.send({ t: "del", uid: "x" }); // thread 2 throws on it
  await reported;
  await Bun.sleep(50);
  expect(failures).toHaveLength(1);
  expect(failures[0]![0]).toBe(2);
  expect(failures[0]![1]).toContain("boom in the thread (del)");
  expect(logs.some((l) => l.includes("data-plane thread failed") && l.includes('"thread":2'))).toBe(true);
  const t0 = performance.now();
  await expect(pool.workers[1]!.ask({ q: "metrics" })).rejects.toThrow("thread 2 failed");
  expect(performance.now() - t0).toBeLessThan(1000); // not the 5 s ask timeout
  pool.workers[0]!.send({ t: "del", uid: "y" }); // and thread 1 too, so stop() has nobody to ask
  await Bun.sleep(100);
  expect(failures.map((f) => f[0]).sort()).toEqual([1, 2]);
  await pool.stop();
}, 20_000);

test("a thread that dies while starting fails the start with its error", async () => {
  const t0 = performance.now();
  await expect(WorkerPool.start(1, proxySchema.parse({ zdsSocket: "crash-at-init" }), "info", log, { workerUrl: CRASH_WORKER })).rejects.toThrow(
    "data-plane thread 1 failed while starting: ",
  );
  expect(performance.now() - t0).toBeLessThan(5000); // not the 10 s start timeout
}, 20_000);
