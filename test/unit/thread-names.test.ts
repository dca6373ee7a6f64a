// The proxy's helper threads name themselves (src/util/thread-name.ts), so `top -H` and perf
// tell them apart; checked on the real threads of this test process through /proc.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { SpliceEngine } from "../../src/proxy/splice-engine.ts";
import { eventFd, closeFd, signalEventFd, fdPoller, POLLIN } from "../../src/sys/index.ts";
import { THREAD_NAMES } from "../../src/util/thread-name.ts";
import { waitFor } from "../helpers/loopback-tcp.ts";

function threadNames(): string[] {
  const out: string[] = [];
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      out.push(readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim());
    } catch {
      // the thread ended while we listed
    }
  }
  return out;
}

const count = (name: string) => threadNames().filter((n) => n === name).length;

describe("thread names", () => {
  test("names fit the kernel's 15-byte limit", () => {
    for (const n of Object.values(THREAD_NAMES)) expect(Buffer.byteLength(n)).toBeLessThanOrEqual(15);
  });

  test("a splice relay thread is named nshub-relay while it runs", async () => {
    const before = count(THREAD_NAMES.spliceRelay);
    const engine = new SpliceEngine();
    await waitFor(() => count(THREAD_NAMES.spliceRelay) > before, 5000);
    await engine.stop();
    await waitFor(() => count(THREAD_NAMES.spliceRelay) === before, 5000);
  });

  test("the fd poller thread is named nshub-poller", async () => {
    const fd = eventFd();
    try {
      const ready = fdPoller().wait(fd, POLLIN, 5000);
      signalEventFd(fd);
      expect(await ready).not.toBe(0);
      expect(count(THREAD_NAMES.fdPoller)).toBeGreaterThanOrEqual(1);
    } finally {
      closeFd(fd);
    }
  });
});
