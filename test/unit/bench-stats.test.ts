// Statistics helpers of the benchmark (scripts/bench-lib/stats.ts).
import { describe, expect, test } from "bun:test";
import { median, percentile, ratio, rotate, summarize } from "../../scripts/bench-lib/stats.ts";

describe("median", () => {
  test("odd and even counts, unsorted input, non-finite values ignored", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([5, NaN, 1, Infinity, 3])).toBe(3);
    expect(median([])).toBeNaN();
  });

  test("does not reorder the caller's array", () => {
    const xs = [3, 1, 2];
    median(xs);
    expect(xs).toEqual([3, 1, 2]);
  });
});

describe("percentile (nearest rank)", () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1); // 1..100
  test("p50, p99, p100 and p0 of 1..100", () => {
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile(xs, 100)).toBe(100);
    expect(percentile(xs, 0)).toBe(1);
  });

  test("p99 of 50 samples is the largest; p50 of 50 is the 25th", () => {
    const fifty = Array.from({ length: 50 }, (_, i) => 50 - i);
    expect(percentile(fifty, 99)).toBe(50);
    expect(percentile(fifty, 50)).toBe(25);
  });

  test("single value, empty input, bad p", () => {
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBeNaN();
    expect(() => percentile([1], 101)).toThrow(RangeError);
    expect(() => percentile([1], -1)).toThrow(RangeError);
  });
});

describe("summarize, ratio, rotate", () => {
  test("summary of a sample", () => {
    expect(summarize([4, 2, 8, 6])).toEqual({ n: 4, min: 2, p50: 4, p90: 8, p99: 8, max: 8, mean: 5 });
    expect(summarize([]).n).toBe(0);
  });

  test("ratio is NaN for a zero or missing denominator", () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(3, 0)).toBeNaN();
    expect(ratio(NaN, 2)).toBeNaN();
  });

  test("rotate changes the starting element per repetition", () => {
    expect(rotate(["a", "b", "c"], 0)).toEqual(["a", "b", "c"]);
    expect(rotate(["a", "b", "c"], 1)).toEqual(["b", "c", "a"]);
    expect(rotate(["a", "b", "c"], 4)).toEqual(["b", "c", "a"]);
    expect(rotate(["a", "b", "c"], -1)).toEqual(["c", "a", "b"]);
    expect(rotate([], 3)).toEqual([]);
  });
});
