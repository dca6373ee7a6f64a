// Layout of the SharedArrayBuffer the poller thread and the main thread share. Each slot is
// (fd, events, gen); gen 0 means free. Whoever changes gen from its value to 0 with a
// compare-and-swap owns the outcome, so a fire and a cancel can never both win.
export const STOP = 0;
export const HIGH_WATER = 1;
export const BASE = 4;
export const SLOT_INTS = 3;
export const MAX_SLOTS = 1 << 16;
export const SAB_INTS = BASE + MAX_SLOTS * SLOT_INTS;

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;

export interface PollerInit {
  sab: SharedArrayBuffer;
  wakeFd: number;
}

/** One readiness event: slot, the gen it was registered with, and poll's revents. */
export type PollEvent = [slot: number, gen: number, revents: number];
