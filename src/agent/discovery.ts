// Finding pods' network namespaces without the runtime's help: the /proc scan used when the
// agent rebuilds its cache on start, for late enrollment (nshub enroll without --netns) and to
// tell whether a pod's netns still has a process in it (reconcile.ts).
//
// A netns is identified by the device and inode of its nsfs file (what stat(2) on
// /proc/<pid>/ns/net returns). The scan walks /proc/<pid>/ns/net of every process and keeps the
// ones whose identity is wanted; the host's namespaces (host-netns.ts) are never returned. A pod
// whose identity is unknown can still be found by its UID in a process's cgroup path (kubelet
// puts each pod under a cgroup named after its UID, as Istio's scan relies on). Every candidate
// is then checked to hold one of the pod's IPs, so a process that merely visits another pod's
// netns cannot fool the agent.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { identityKey, type NetnsIdentity } from "../sys/index.ts";
import type { HostNetns } from "./host-netns.ts";

export interface ProcNetns {
  pid: number;
  /** /proc/<pid>/ns/net */
  path: string;
  identity: NetnsIdentity;
  /** Process start time (clock ticks since boot, /proc/<pid>/stat field 22): older wins. */
  start: number;
}

/** Identity of the netns at `path` by stat(2) (follows the ns symlink); undefined if unreadable. */
export function statIdentity(path: string): NetnsIdentity | undefined {
  try {
    const st = statSync(path);
    return { dev: st.dev, ino: st.ino };
  } catch {
    return undefined;
  }
}

function numericDirs(procRoot: string): number[] {
  let names: string[];
  try {
    names = readdirSync(procRoot);
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const n of names) if (/^\d+$/.test(n)) pids.push(Number(n));
  return pids;
}

function startTime(procRoot: string, pid: number): number {
  try {
    const stat = readFileSync(`${procRoot}/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: fields after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(rest[19]) || Number.MAX_SAFE_INTEGER; // field 22 overall
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}

/**
 * For each wanted identity key, the oldest process whose netns has it. The host's namespaces
 * are skipped even when asked for.
 */
export function scanByIdentity(procRoot: string, wanted: ReadonlySet<string>, host: Pick<HostNetns, "has">): Map<string, ProcNetns> {
  const found = new Map<string, ProcNetns>();
  if (wanted.size === 0) return found;
  for (const pid of numericDirs(procRoot)) {
    const path = `${procRoot}/${pid}/ns/net`;
    const id = statIdentity(path);
    if (!id) continue;
    const key = identityKey(id);
    if (!wanted.has(key) || host.has(key)) continue;
    const start = startTime(procRoot, pid);
    const prev = found.get(key);
    if (!prev || start < prev.start) found.set(key, { pid, path, identity: id, start });
  }
  return found;
}

/**
 * Candidates for pods by UID, from the `pod<uid>` segment of each process's cgroup path. Per
 * UID, one entry per distinct netns, oldest process first. The host's namespaces are skipped.
 */
export function scanByPodUid(procRoot: string, uids: ReadonlySet<string>, host: Pick<HostNetns, "has">): Map<string, ProcNetns[]> {
  const out = new Map<string, ProcNetns[]>();
  if (uids.size === 0) return out;
  for (const pid of numericDirs(procRoot)) {
    let cgroup: string;
    try {
      cgroup = readFileSync(`${procRoot}/${pid}/cgroup`, "utf8");
    } catch {
      continue;
    }
    const uid = podUidFromCgroup(cgroup);
    if (!uid || !uids.has(uid)) continue;
    const path = `${procRoot}/${pid}/ns/net`;
    const id = statIdentity(path);
    if (!id || host.has(identityKey(id))) continue;
    const list = out.get(uid) ?? [];
    const start = startTime(procRoot, pid);
    const same = list.find((c) => identityKey(c.identity) === identityKey(id));
    if (same) {
      if (start < same.start) Object.assign(same, { pid, path, start });
    } else list.push({ pid, path, identity: id, start });
    out.set(uid, list);
  }
  for (const list of out.values()) list.sort((a, b) => a.start - b.start);
  return out;
}

const UID_RE = /pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})/;

/**
 * The pod UID in a /proc/<pid>/cgroup text, or undefined. Handles the cgroupfs driver
 * (`/kubepods/burstable/pod<uid>/<ctr>`) and the systemd driver
 * (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/…`).
 */
export function podUidFromCgroup(text: string): string | undefined {
  for (const line of text.split("\n")) {
    const path = line.slice(line.indexOf(":", line.indexOf(":") + 1) + 1);
    if (!path.includes("kubepods")) continue;
    const m = UID_RE.exec(path);
    if (m) return m[1]!.replaceAll("_", "-");
  }
  return undefined;
}

export interface AddressOptions {
  /** Kill `ip` after this long (default 5 s). */
  timeoutMs?: number;
}

/**
 * The IP addresses configured in the netns at `path` (any openable netns path, e.g.
 * /proc/<pid>/fd/<fd>), excluding loopback and link-local. Runs
 * `nsenter --net=<path> -- ip -j addr show` (argv only). Throws with the tool's stderr.
 */
export async function netnsAddresses(path: string, opts: AddressOptions = {}): Promise<string[]> {
  const proc = Bun.spawn(["nsenter", `--net=${path}`, "--", "ip", "-j", "addr", "show"], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin`, LC_ALL: "C" },
    timeout: opts.timeoutMs ?? 5000,
    killSignal: "SIGKILL",
  });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`listing the addresses in netns ${path} failed (exit ${code}): ${err.trim() || "no output"}`);
  return parseIpAddrJson(out);
}

/** Parses `ip -j addr show` output into global (non-loopback, non-link-local) addresses. */
export function parseIpAddrJson(json: string): string[] {
  const links = JSON.parse(json || "[]") as Array<{ ifname?: string; addr_info?: Array<{ local?: string; scope?: string }> }>;
  const out: string[] = [];
  for (const l of links) {
    for (const a of l.addr_info ?? []) {
      if (!a.local || a.scope === "host" || a.scope === "link") continue;
      if (!out.includes(a.local)) out.push(a.local);
    }
  }
  return out;
}
