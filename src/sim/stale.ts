// Who owns a node, and the cleanup of what crashed runs left behind. Every harness instance (a
// node, or a fabric: fabric.ts) has a tag `<prefix><6 hex>` that starts the name of everything it
// creates (namespaces, bridge, temp dir), and an owner marker MARKER_DIR/<tag>.json naming the
// process that runs it.

import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deleteNetns, listNetns, NETNS_DIR } from "./namespace.ts";

/** One owner marker per harness instance lives here (see `cleanupStale`). */
export const MARKER_DIR = "/run/nshub-test";
/** Default naming prefix; the instance tag is `<prefix><6 hex>`. */
export const DEFAULT_PREFIX = "nsh-";
/** Namespaces of unknown ownership older than this are considered leftovers of a crashed run. */
export const STALE_AGE_MS = 10 * 60_000;
/** Start of an instance's temp dir name: `<tmpdir>/nshub-netsim-<tag>-XXXXXX`. */
export const TMP_PREFIX = "nshub-netsim-";

/** What a harness instance writes to MARKER_DIR/<tag>.json before it creates any namespace. */
export interface OwnerMarker {
  tag: string;
  pid: number;
  /** /proc/<pid>/stat starttime, so that a recycled pid is not mistaken for the owner. */
  pidStart: string | null;
  createdAt: number;
  tmpDir: string;
}

/**
 * Delete what crashed runs left behind: namespaces named `<prefix><6 hex>-…`, their temp dirs and
 * owner markers. Returns the namespaces removed.
 *
 * Ownership rule (so that concurrent runs, in this or another process, are never destroyed):
 *   * every harness writes MARKER_DIR/<tag>.json with its pid and the pid's start time BEFORE it
 *     creates any namespace;
 *   * a tag whose owner is alive (same pid AND same start time) is never touched, however old:
 *     a long suite or a benchmark may legitimately keep a node for more than 10 minutes;
 *   * a tag whose owner is dead (pid gone, or pid recycled by another process) is removed;
 *   * a tag without a marker (the marker dir was wiped, or the namespaces are not ours) is removed
 *     only when its newest namespace is older than `maxAgeMs` (default 10 min), which avoids racing a
 *     harness of an older version that writes no marker.
 */
export async function cleanupStale(prefix = DEFAULT_PREFIX, maxAgeMs = STALE_AGE_MS): Promise<string[]> {
  const tagRe = new RegExp(`^(${escapeRegExp(prefix)}[0-9a-f]{6})(?:-|$)`);
  const byTag = new Map<string, string[]>();
  for (const name of await listNetns()) {
    const m = tagRe.exec(name);
    if (m?.[1]) byTag.set(m[1], [...(byTag.get(m[1]) ?? []), name]);
  }
  for (const tag of await markerTags(prefix)) if (!byTag.has(tag)) byTag.set(tag, []);

  const removed: string[] = [];
  for (const [tag, names] of byTag) {
    const marker = await readMarker(join(MARKER_DIR, `${tag}.json`));
    if (marker && (await ownerAlive(marker))) continue;
    if (!marker && !(await allOlderThan(names, maxAgeMs))) continue;
    // Pods before the node, so that veth pairs go away with their pod side first.
    for (const name of [...names].sort((a, b) => Number(a.endsWith("-node")) - Number(b.endsWith("-node")))) {
      try {
        await deleteNetns(name);
        removed.push(name);
      } catch {
        // best effort: another cleaner may have raced us
      }
    }
    if (marker && isOurTmpDir(marker.tmpDir, tag)) await rm(marker.tmpDir, { recursive: true, force: true });
    await rm(join(MARKER_DIR, `${tag}.json`), { force: true });
  }
  return removed;
}

async function markerTags(prefix: string): Promise<string[]> {
  const re = new RegExp(`^(${escapeRegExp(prefix)}[0-9a-f]{6})\\.json$`);
  try {
    return (await readdir(MARKER_DIR)).flatMap((f) => re.exec(f)?.[1] ?? []);
  } catch {
    return [];
  }
}

export async function writeMarker(path: string, m: OwnerMarker): Promise<void> {
  await mkdir(MARKER_DIR, { recursive: true, mode: 0o755 });
  await writeFile(path, JSON.stringify(m) + "\n");
}

async function readMarker(path: string): Promise<OwnerMarker | undefined> {
  try {
    const m = JSON.parse(await readFile(path, "utf8")) as Partial<OwnerMarker>;
    if (typeof m.pid !== "number" || typeof m.tmpDir !== "string") return undefined;
    return { tag: String(m.tag), pid: m.pid, pidStart: m.pidStart ?? null, createdAt: Number(m.createdAt), tmpDir: m.tmpDir };
  } catch {
    return undefined;
  }
}

async function ownerAlive(m: OwnerMarker): Promise<boolean> {
  const start = await procStartTime(m.pid);
  if (start === null) return false;
  return m.pidStart === null || m.pidStart === start;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); null if no such process. */
export async function procStartTime(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] ?? null; // fields[0] is field 3 (state), so field 22 is fields[19]
  } catch {
    return null;
  }
}

/** Age of a named namespace: the nsfs inode's mtime, set when the namespace was created. */
async function allOlderThan(names: string[], maxAgeMs: number): Promise<boolean> {
  const now = Date.now();
  for (const name of names) {
    try {
      const st = await stat(join(NETNS_DIR, name));
      if (now - st.mtimeMs < maxAgeMs) return false;
    } catch {
      // vanished meanwhile
    }
  }
  return true;
}

function isOurTmpDir(dir: string, tag: string): boolean {
  return dir.startsWith(join(tmpdir(), TMP_PREFIX + tag + "-")) && !dir.includes("..");
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
