// Names the calling thread, so `top -H`, `ps -L` and perf show which of the proxy's threads is
// busy (Bun names every Worker "Worker"). Linux lets a thread rename itself through
// /proc/thread-self/comm; names are cut to 15 bytes. Best effort: a failure only loses the name.
import { writeFileSync } from "node:fs";

/** Thread names the proxy uses (at most 15 bytes each). */
export const THREAD_NAMES = {
  dataPlane: "nshub-dataplane",
  spliceRelay: "nshub-relay",
  fdPoller: "nshub-poller",
} as const;

export function nameThisThread(name: string): void {
  try {
    writeFileSync("/proc/thread-self/comm", name.slice(0, 15));
  } catch {
    // not Linux, or /proc not mounted: the thread keeps its default name
  }
}
