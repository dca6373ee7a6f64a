// The file half of `nshub install`: atomic writes (temp file in the same directory + rename, so
// the container runtime, which watches the conf dir, never reads half a file, and a running
// nshub-cni is replaced rather than overwritten), content comparison, and recognising our binary.
import {
  closeSync,
  copyFileSync,
  fstatSync,
  fsyncSync,
  lstatSync,
  openSync,
  readSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  type Stats,
} from "node:fs";
import { dirname, resolve } from "node:path";
import { commit, tempPath, writeFileAtomic } from "../util/atomic-file.ts";

export { writeFileAtomic };

/**
 * A string that is in every nshub binary (this module is bundled into it) and in no other
 * program: `uninstall` removes an `nshub-cni` only if it carries this, so it never deletes a
 * foreign plugin that happens to use the name.
 */
export const BINARY_MARKER = "nshub-binary:cni-plugin-marker:6f1d2c";

/** Copies `src` to `target` atomically with `mode`. */
export function copyFileAtomic(src: string, target: string, mode: number): void {
  const tmp = tempPath(target);
  try {
    copyFileSync(src, tmp);
    const fd = openSync(tmp, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  commit(tmp, target, mode);
}

/** Points `target` at `dest` atomically (a symlink made aside, then renamed over). */
export function symlinkAtomic(dest: string, target: string): void {
  const tmp = tempPath(target);
  symlinkSync(dest, tmp);
  try {
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}

const CHUNK = 1 << 20;

/** Whether two files (followed through symlinks) have the same bytes. */
export function sameContent(a: string, b: string): boolean {
  const sa = statSync(a);
  const sb = statSync(b);
  if (sa.dev === sb.dev && sa.ino === sb.ino) return true;
  if (sa.size !== sb.size) return false;
  const fa = openSync(a, "r");
  const fb = openSync(b, "r");
  try {
    const ba = Buffer.allocUnsafe(CHUNK);
    const bb = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const na = readFull(fa, ba);
      const nb = readFull(fb, bb);
      if (na !== nb) return false;
      if (na === 0) return true;
      if (ba.compare(bb, 0, nb, 0, na) !== 0) return false;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

function readFull(fd: number, buf: Buffer): number {
  let n = 0;
  while (n < buf.length) {
    const got = readSync(fd, buf, n, buf.length - n, null);
    if (got === 0) break;
    n += got;
  }
  return n;
}

/** Whether the file (followed through symlinks) contains `needle`; reads it in 1 MiB chunks. */
export function fileContains(path: string, needle: string): boolean {
  const pat = Buffer.from(needle);
  const fd = openSync(path, "r");
  try {
    if (!fstatSync(fd).isFile()) return false;
    const buf = Buffer.allocUnsafe(CHUNK + pat.length);
    let carry = 0;
    for (;;) {
      const got = readFull(fd, buf.subarray(carry, carry + CHUNK));
      const end = carry + got;
      if (buf.subarray(0, end).indexOf(pat) >= 0) return true;
      if (got === 0) return false;
      // Keep the tail so a marker split across two chunks is still found.
      const keep = Math.min(pat.length - 1, end);
      buf.copy(buf, 0, end - keep, end);
      carry = keep;
    }
  } finally {
    closeSync(fd);
  }
}

/** What sits at `path` in the CNI bin dir, as far as ownership goes. */
export type PluginFile =
  | { kind: "absent" }
  | { kind: "ours"; how: string }
  | { kind: "foreign"; why: string };

/**
 * Is `path` an nshub we put there? A copy: it carries BINARY_MARKER (any nshub version) or has
 * the same bytes as `reference`. A symlink: its target is such a file, or (dangling) it points
 * exactly at `reference`, which is what `install --link` writes.
 */
export function classifyPlugin(path: string, reference: string | undefined): PluginFile {
  const st = lstatOrUndefined(path);
  if (!st) return { kind: "absent" };
  const isNshub = (p: string) => fileContains(p, BINARY_MARKER) || (reference !== undefined && sameContent(p, reference));
  if (st.isSymbolicLink()) {
    const dest = readlinkSync(path);
    const abs = resolve(dirname(path), dest);
    let exists = true;
    try {
      statSync(abs);
    } catch {
      exists = false;
    }
    if (!exists) {
      return reference !== undefined && resolve(reference) === abs
        ? { kind: "ours", how: `dangling symlink to ${dest}` }
        : { kind: "foreign", why: `a dangling symlink to ${dest}, not made by nshub install` };
    }
    return isNshub(abs) ? { kind: "ours", how: `symlink to ${dest}` } : { kind: "foreign", why: `a symlink to ${dest}, which is not an nshub binary` };
  }
  if (!st.isFile()) return { kind: "foreign", why: "not a regular file" };
  return isNshub(path) ? { kind: "ours", how: "copy of nshub" } : { kind: "foreign", why: "a file that is not an nshub binary" };
}
