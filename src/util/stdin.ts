// Feeding a child process its input. Spawn with `stdin: "pipe"` and call this, rather than
// passing a buffer as stdin: Bun backs a buffer stdin with a memfd that stays open until the GC
// collects the subprocess, so the caller's fd count drifts (leak checks and fd metrics see it).
import type { FileSink } from "bun";

export async function writeStdin(proc: { stdin: unknown }, input: string | Uint8Array): Promise<void> {
  const sink = proc.stdin as FileSink | undefined;
  if (!sink) return;
  try {
    sink.write(input);
    await sink.end();
  } catch {
    // The child exited without reading its input; its exit code and stderr say why.
  }
}
