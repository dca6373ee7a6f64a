// The poller thread: blocks in poll(2) over the registered fds plus a wake eventfd, and
// reports each ready fd once to the main thread. It never reads or writes the fds itself.
import { lib } from "./lib.ts";
import { drainEventFd } from "./fds.ts";
import { nameThisThread, THREAD_NAMES } from "../util/thread-name.ts";
import { BASE, HIGH_WATER, SLOT_INTS, STOP, type PollEvent, type PollerInit } from "./poller-shared.ts";

declare const self: Worker;

nameThisThread(THREAD_NAMES.fdPoller);

self.onmessage = (ev: MessageEvent<PollerInit>) => {
  run(new Int32Array(ev.data.sab), ev.data.wakeFd);
  self.postMessage({ stopped: true });
};

function run(shared: Int32Array, wakeFd: number): void {
  let cap = 64;
  let buf = new ArrayBuffer(cap * 8);
  const slots: number[] = [];
  const gens: number[] = [];
  while (Atomics.load(shared, STOP) === 0) {
    const hw = Atomics.load(shared, HIGH_WATER);
    if (hw + 1 > cap) {
      while (hw + 1 > cap) cap *= 2;
      buf = new ArrayBuffer(cap * 8);
    }
    const i32 = new Int32Array(buf);
    const i16 = new Int16Array(buf);
    i32[0] = wakeFd;
    i16[2] = 0x1; // POLLIN
    i16[3] = 0;
    let n = 1;
    slots.length = 0;
    gens.length = 0;
    for (let s = 0; s < hw; s++) {
      const at = BASE + s * SLOT_INTS;
      const gen = Atomics.load(shared, at + 2);
      if (gen === 0) continue;
      i32[n * 2] = shared[at]!;
      i16[n * 4 + 2] = shared[at + 1]!;
      i16[n * 4 + 3] = 0;
      slots.push(s);
      gens.push(gen);
      n++;
    }
    const r = lib.nh_poll(i32, n, -1);
    if (r < 0) continue; // EINTR: just poll again
    if (i16[3] !== 0) drainEventFd(wakeFd);
    const fired: PollEvent[] = [];
    for (let k = 1; k < n; k++) {
      const revents = i16[k * 4 + 3]!;
      if (revents === 0) continue;
      const s = slots[k - 1]!;
      const gen = gens[k - 1]!;
      if (Atomics.compareExchange(shared, BASE + s * SLOT_INTS + 2, gen, 0) === gen) fired.push([s, gen, revents]);
    }
    if (fired.length > 0) self.postMessage(fired);
  }
}
