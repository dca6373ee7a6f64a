// What the operator-command tests share: an Io that captures what a command prints, and a
// loopback port nothing listens on (for the "daemon not running" sentences).
import type { Io } from "../../src/cli/admin-client.ts";

export function capture(): Io & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    isTTY: false,
    out(t: string) {
      io.stdout += t.endsWith("\n") ? t : t + "\n";
    },
    err(t: string) {
      io.stderr += t.endsWith("\n") ? t : t + "\n";
    },
  };
  return io;
}

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
export function closedPort(): number {
  const s = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  const p = s.port!;
  s.stop(true);
  return p;
}
