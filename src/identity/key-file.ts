// Private key files: only root may read them (or the one user a CA runs as, when it is not root).
// A CA key that others can read is a CA anyone on the node can impersonate, so nshub refuses to
// start with one rather than warn.
import { readFileSync, statSync } from "node:fs";

/** Why `path` is not a root-only private file, or undefined. `what` names it in the message. */
export function privateFileProblem(path: string, what = "key file"): string | undefined {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    return `${what} ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "does not exist" : (e as Error).message}`;
  }
  if (!st.isFile()) return `${what} ${path} is not a regular file`;
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    return `${what} ${path} has mode ${mode.toString(8).padStart(4, "0")}: only root may read a private key; run: chmod 0600 ${path}`;
  }
  const self = process.geteuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== self) return `${what} ${path} is owned by uid ${st.uid}, not root${self !== 0 ? ` or this process's user (uid ${self})` : ""}; run: chown root:root ${path}`;
  return undefined;
}

/** Reads a private key file after checking it is root-only (mode 0600 or stricter; owner root, or the user running nshub). */
export function readPrivateFile(path: string, what = "key file"): string {
  const problem = privateFileProblem(path, what);
  if (problem) throw new Error(problem);
  return readFileSync(path, "utf8");
}
