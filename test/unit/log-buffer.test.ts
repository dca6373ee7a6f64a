// The daemons' stderr log is written in batches (src/log/logger.ts): these run a real child
// process and read its real stderr, to check that batching never loses or delays a line for
// long.
import { describe, expect, test } from "bun:test";
import { createLogger, getLogLevel, setLogLevel, setLogSink, type Logger } from "../../src/log/logger.ts";

const LOGGER = new URL("../../src/log/logger.ts", import.meta.url).pathname;

async function runChild(body: string): Promise<{ code: number; stderr: string }> {
  const script = `import { createLogger } from ${JSON.stringify(LOGGER)};\nconst log = createLogger("t");\n${body}`;
  const p = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NSHUB_LOG_FORMAT: "json", NSHUB_LOG_LEVEL: "info" } });
  const [stderr, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
  return { code, stderr };
}

const messages = (stderr: string) =>
  stderr
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => (JSON.parse(l) as { msg: string }).msg);

describe("batched stderr log", () => {
  test("a line is written within a short delay while the process keeps running", async () => {
    // The marker goes straight to stderr 300 ms later: the batched line must already be out.
    const r = await runChild(`log.info("first");\nawait Bun.sleep(300);\nprocess.stderr.write("MARKER\\n");\nawait Bun.sleep(50);`);
    expect(r.code).toBe(0);
    const first = r.stderr.indexOf('"msg":"first"');
    expect(first).toBeGreaterThanOrEqual(0);
    expect(first).toBeLessThan(r.stderr.indexOf("MARKER"));
  });

  test("lines still buffered at process.exit() are written, in order", async () => {
    const r = await runChild(`for (let i = 0; i < 50; i++) log.info("line " + i);\nprocess.exit(3);`);
    expect(r.code).toBe(3);
    expect(messages(r.stderr)).toEqual(Array.from({ length: 50 }, (_, i) => `line ${i}`));
  });

  test("a line logged just before the process ends by itself is written", async () => {
    const r = await runChild(`log.info("last words");`);
    expect(r.code).toBe(0);
    expect(messages(r.stderr)).toEqual(["last words"]);
  });

  test("more than 64 KiB at once is written without waiting, in order", async () => {
    // 200 lines of ~1 KiB pass the 64 KiB threshold several times within one turn.
    const r = await runChild(`const pad = "x".repeat(1000);\nfor (let i = 0; i < 200; i++) log.info("big " + i, { pad });\nprocess.stderr.write("MARKER\\n");\nawait Bun.sleep(100);`);
    expect(r.code).toBe(0);
    const msgs = messages(r.stderr);
    expect(msgs).toEqual(Array.from({ length: 200 }, (_, i) => `big ${i}`));
    // Everything up to the last 64 KiB boundary went out before the marker, synchronously.
    const beforeMarker = messages(r.stderr.slice(0, r.stderr.indexOf("MARKER")));
    expect(beforeMarker.length).toBeGreaterThanOrEqual(128);
  });
});

describe("Worker threads", () => {
  // A terminated Worker runs no exit handler: what it buffered is lost unless flushLogs() ran.
  const WORKER = new URL("../fixtures/log-worker.ts", import.meta.url).href;
  // (Without the call the line was lost in a manual run, 2026-11-25; not asserted here: on a busy
  // machine the 20 ms flush timer could beat the terminate.)
  const run = (mode: "flush" | "none") =>
    runChild(`const w = new Worker(${JSON.stringify(WORKER)});\nw.onmessage = () => { w.terminate(); setTimeout(() => process.exit(0), 100); };\nw.postMessage(${JSON.stringify(mode)});`);

  test("flushLogs() writes a Worker's buffered lines before it is terminated", async () => {
    const r = await run("flush");
    expect(r.code).toBe(0);
    expect(messages(r.stderr)).toEqual(["from the worker"]);
  });
});

describe("JSON lines", () => {
  // In-process, through the sink the CNI plugin and tests use.
  const capture = async (fn: (log: Logger) => void): Promise<Record<string, unknown>[]> => {
    const lines: string[] = [];
    const level = getLogLevel();
    setLogSink((l) => lines.push(l), "json");
    setLogLevel("info");
    try {
      fn(createLogger("t"));
    } finally {
      setLogLevel(level);
      setLogSink((l) => process.stderr.write(l + "\n"));
    }
    return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  };

  test("time, level, scope and msg first, then the fields in order; no fields is still one object", async () => {
    const [a, b] = await capture((log) => {
      log.info("hello", { b: 2, a: "x", skip: undefined });
      log.info("bare");
    });
    expect(Object.keys(a!)).toEqual(["time", "level", "scope", "msg", "b", "a"]);
    expect(a).toMatchObject({ level: "info", scope: "t", msg: "hello", b: 2, a: "x" });
    expect(typeof a!.time === "string" && !Number.isNaN(Date.parse(a!.time as string))).toBe(true);
    expect(Object.keys(b!)).toEqual(["time", "level", "scope", "msg"]);
  });

  test("an Error field is logged as its message without touching the caller's object", async () => {
    const fields = { error: new Error("boom"), n: 1 };
    const [line] = await capture((log) => log.info("failed", fields));
    expect(line).toMatchObject({ msg: "failed", error: "boom", n: 1 });
    expect(fields.error).toBeInstanceOf(Error);
  });

  test("a field named like one of the line's keys replaces it in place; child fields come first", async () => {
    const [a, b] = await capture((log) => {
      log.error("ADD failed", { code: 7, msg: "the real message" });
      log.child({ pod: "ns/p" }).warn("w", { x: "y" });
    });
    expect(Object.keys(a!)).toEqual(["time", "level", "scope", "msg", "code"]);
    expect(a!.msg).toBe("the real message");
    expect(Object.keys(b!)).toEqual(["time", "level", "scope", "msg", "pod", "x"]);
  });

  test("strings are escaped", async () => {
    const [line] = await capture((log) => log.info('a "quoted"\nmessage', { path: "C:\\x" }));
    expect(line).toMatchObject({ msg: 'a "quoted"\nmessage', path: "C:\\x" });
  });
});
