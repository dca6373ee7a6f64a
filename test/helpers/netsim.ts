// The virtual-node harness lives in src/sim (the demo and the benchmarks use it too).
export * from "../../src/sim/index.ts";
