// The agent's state file: its pod cache without the fds, so that a restarted agent can find
// every pod's netns again (by its identity) and hand the same pods to the proxy. Written
// atomically on every change: a temp file in the same directory, fsync, rename.
//
// Format (JSON, version 1):
//   {
//     "version": 1,
//     "writtenAt": "2026-…Z",
//     "pods": [
//       { "uid": "…", "namespace": "…", "name": "…", "serviceAccount": "…",
//         "ips": ["10.1.2.3"], "netnsPath": "/var/run/netns/cni-…", "containerId": "…",
//         "netns": { "dev": 4, "ino": 4026532301 },        // absent when never opened
//         "state": "enrolled" | "pending" | "not-enrolled",
//         "reason": "…", "override": "enroll" | "unenroll", // override absent = policy
//         "updatedAt": "2026-…Z" }
//     ]
//   }
import { writeFileAtomic } from "../util/atomic-file.ts";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { z } from "zod";
import { formatIssues } from "../config/load.ts";

export const STATE_VERSION = 1;

export const podStateSchema = z.enum(["enrolled", "pending", "not-enrolled"]);
export type PodStateName = z.infer<typeof podStateSchema>;

const recordSchema = z.strictObject({
  uid: z.string().min(1),
  namespace: z.string().min(1),
  name: z.string().min(1),
  serviceAccount: z.string(),
  ips: z.array(z.string()),
  netnsPath: z.string(),
  containerId: z.string(),
  netns: z.strictObject({ dev: z.number().int().nonnegative(), ino: z.number().int().nonnegative() }).optional(),
  state: podStateSchema,
  reason: z.string(),
  override: z.enum(["enroll", "unenroll"]).optional(),
  updatedAt: z.string(),
});
export type PodRecord = z.infer<typeof recordSchema>;

const fileSchema = z.strictObject({
  version: z.literal(STATE_VERSION),
  writtenAt: z.string(),
  pods: z.array(recordSchema),
});

export class StateFileError extends Error {
  override name = "StateFileError";
}

/** Reads the state file; a missing file is an empty cache. Throws StateFileError when it is unusable. */
export function readStateFile(path: string): PodRecord[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new StateFileError(`state file ${path}: cannot read: ${(e as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new StateFileError(`state file ${path}: not valid JSON (${(e as Error).message}); move it away to start with an empty pod cache`);
  }
  const parsed = fileSchema.safeParse(data);
  if (!parsed.success) {
    throw new StateFileError(`state file ${path}: ${formatIssues(parsed.error)}; move it away to start with an empty pod cache`);
  }
  const seen = new Set<string>();
  for (const p of parsed.data.pods) {
    if (seen.has(p.uid)) throw new StateFileError(`state file ${path}: pod uid ${p.uid} appears twice`);
    seen.add(p.uid);
  }
  return parsed.data.pods;
}

/** Writes the state file atomically (temp file + fsync + rename), creating its directory. */
export function writeStateFile(path: string, pods: PodRecord[]): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const body = JSON.stringify({ version: STATE_VERSION, writtenAt: new Date().toISOString(), pods }, null, 1) + "\n";
  writeFileAtomic(path, body, 0o600);
}
