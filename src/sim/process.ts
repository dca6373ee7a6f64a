// Commands and long-running processes of the virtual node. Everything is run as an argv array,
// never a shell string.

import { writeStdin } from "../util/stdin.ts";
import { NetsimError } from "./errors.ts";
import { OutputTail } from "./output-tail.ts";
import type { Subprocess } from "bun";

const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
const OUTPUT_CAP = 4 << 20; // spawned processes: keep at most the last 4 MiB of each stream

// ---------------------------------------------------------------------------------------------
// running commands (argv only)

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Written to the command's stdin; stdin is closed (empty) otherwise. */
  stdin?: string | Uint8Array;
  /** Full environment for the command (default: this process's environment). */
  env?: Record<string, string | undefined>;
  /** Kill (SIGKILL) after this long; default 30 s. The result then has code 128+9. */
  timeoutMs?: number;
}

/** Run argv to completion and collect its output. Never throws for a non-zero exit. */
export async function run(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  // Input through a pipe (see writeStdin).
  const proc = Bun.spawn([...argv], {
    stdin: opts.stdin === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: opts.env ?? process.env,
    timeout: opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
    killSignal: "SIGKILL",
  });
  if (opts.stdin !== undefined) await writeStdin(proc, opts.stdin);
  const [stdout, stderr, exited] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (proc.signalCode !== null) {
    // Killed (our timeout or someone else): report it like a shell would, and say so.
    return { code: exitCodeOf(proc), stdout, stderr: `${stderr}[netsim: killed by ${proc.signalCode}]\n` };
  }
  return { code: exited, stdout, stderr };
}

/** Like `run`, but throws a NetsimError naming the command when it exits non-zero. */
export async function runOrThrow(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new NetsimError(`command failed (exit ${r.code}): ${argv.join(" ")}\n${r.stderr.trim()}`);
  }
  return r;
}

function exitCodeOf(proc: Subprocess<any, any, any>): number {
  if (proc.exitCode !== null) return proc.exitCode;
  const sig = proc.signalCode;
  const num = typeof sig === "number" ? sig : sig ? (SIGNAL_NUMBERS[sig] ?? 0) : 0;
  return 128 + num;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

// ---------------------------------------------------------------------------------------------
// long-running processes

export interface SpawnOptions {
  /** Full environment (default: this process's environment). */
  env?: Record<string, string | undefined>;
  /** Give the process a writable stdin (`proc.stdin`); otherwise stdin is /dev/null. */
  stdin?: boolean;
}

export type SpawnedProc = Subprocess<"pipe" | "ignore", "pipe", "pipe">;

/**
 * A process started inside a namespace. Its stdout/stderr are drained continuously into memory
 * (so a chatty server never blocks on a full pipe) and can be read or waited on. It is stopped
 * when its pod is deleted or the harness is destroyed.
 */
export class SimProcess {
  private readonly out = new OutputTail(OUTPUT_CAP);
  private readonly err = new OutputTail(OUTPUT_CAP);
  private readonly drained: Promise<void>;

  constructor(
    readonly proc: SpawnedProc,
    readonly argv: readonly string[],
  ) {
    this.drained = Promise.all([
      drain(proc.stdout, (s) => this.out.append(s)),
      drain(proc.stderr, (s) => this.err.append(s)),
    ]).then(() => undefined);
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** Resolves with the exit code (128+signal when killed) once the process is gone. */
  get exited(): Promise<number> {
    return this.proc.exited.then(() => exitCodeOf(this.proc));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Everything the process wrote to stdout so far (last 4 MiB). */
  stdout(): string {
    return this.out.text();
  }

  /** Everything the process wrote to stderr so far (last 4 MiB). */
  stderr(): string {
    return this.err.text();
  }

  /** Wait until stdout+stderr match `pattern`; returns the match. Throws on timeout or exit. */
  async waitForOutput(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = (this.stdout() + "\n" + this.stderr()).match(pattern);
      if (m) return m;
      if (!this.running) {
        await this.drained;
        const last = (this.stdout() + "\n" + this.stderr()).match(pattern);
        if (last) return last;
        throw new NetsimError(`${this.argv.join(" ")} exited (${exitCodeOf(this.proc)}) before printing ${pattern}; stderr: ${this.stderr().trim()}`);
      }
      if (Date.now() > deadline) {
        throw new NetsimError(`timed out after ${timeoutMs} ms waiting for ${pattern} from ${this.argv.join(" ")}`);
      }
      await Bun.sleep(25);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. Idempotent. */
  async stop(graceMs = 2_000): Promise<void> {
    if (this.running) {
      this.proc.kill("SIGTERM");
      const gone = await Promise.race([this.proc.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
      if (!gone) this.proc.kill("SIGKILL");
    }
    await this.proc.exited;
    await this.drained;
  }
}

async function drain(stream: ReadableStream<Uint8Array>, onText: (s: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  try {
    for await (const chunk of stream) onText(decoder.decode(chunk, { stream: true }));
  } catch {
    // The stream errors when the process is killed mid-write; what we have is what there is.
  }
}
