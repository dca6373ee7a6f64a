// Atomic file replacement: write a hidden temp file in the same directory, fsync, then rename
// over the target, so a reader (the container runtime watching its conf dir, an agent reading
// its state at start) never sees half a file.
import { chmodSync, closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";

/** A hidden name next to `target`, without a config extension: no directory scan picks it up. */
export function tempPath(target: string): string {
  return join(dirname(target), `.${basename(target)}.nshub-tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
}

/** Writes `data` to `target` atomically with `mode`. */
export function writeFileAtomic(target: string, data: string | Uint8Array, mode: number): void {
  const tmp = tempPath(target);
  const fd = openSync(tmp, "wx", mode);
  try {
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  commit(tmp, target, mode);
}

/** Gives `tmp` its final mode (the umask applied at creation) and renames it over `target`. */
export function commit(tmp: string, target: string, mode: number): void {
  try {
    chmodSync(tmp, mode); // the umask applied at creation
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
