import { describe, expect, test } from "bun:test";
import { OutputTail } from "../../src/sim/output-tail.ts";

describe("OutputTail (a spawned process's captured output)", () => {
  test("keeps everything below the cap", () => {
    const t = new OutputTail(100);
    t.append("hello ");
    t.append("");
    t.append("world");
    expect(t.text()).toBe("hello world");
  });

  test("keeps exactly the newest `cap` characters, whatever the chunk sizes", () => {
    const t = new OutputTail(1000);
    let all = "";
    for (let i = 0; i < 5000; i++) {
      const chunk = `line ${i} ${"x".repeat(i % 37)}\n`;
      all += chunk;
      t.append(chunk);
      if (i % 997 === 0) expect(t.text()).toBe(all.slice(-1000));
    }
    expect(t.text()).toBe(all.slice(-1000));
    expect(t.text().length).toBe(1000);
  });

  test("a single chunk larger than the cap is cut to its tail", () => {
    const t = new OutputTail(10);
    t.append("0123456789abcdef");
    expect(t.text()).toBe("6789abcdef");
    t.append("XY");
    expect(t.text()).toBe("89abcdefXY");
  });

  test("memory stays bounded: old chunks are dropped as new ones arrive", () => {
    const t = new OutputTail(64);
    for (let i = 0; i < 100_000; i++) {
      t.append("0123456789abcdef");
      // Reads in between (as waitForOutput does) must not change what is kept.
      if (i % 10_007 === 0) expect(t.text()).toBe("0123456789abcdef".repeat(Math.min(4, i + 1)));
    }
    // The cap plus at most one chunk, however much went through.
    expect(t.held).toBeLessThan(64 + 16);
    expect(t.text()).toBe("0123456789abcdef".repeat(4));
  });
});
