// The network namespaces the agent must never put rules in: the host's. A CNI ADD or an operator
// may name one through any path (/var/run/netns/x, /proc/<pid>/ns/net, a bind mount of it), so
// every netns the agent acts on is compared with these by identity (device + inode of its nsfs
// file), never by path.
//
// Where the identities come from:
//   the agent's own netns  /proc/thread-self/ns/net, /proc/self/ns/net. The agent runs in the
//                          node's netns (hostNetwork), so this is the node's. Required: an agent
//                          that cannot read it refuses to start (HostNetnsError).
//   pid 1's                /proc/1/ns/net and <procRoot>/1/ns/net: the host's init. Reading it
//                          takes ptrace access to pid 1, which a sandbox may deny even to root
//                          (EACCES when pid 1 holds capabilities the agent lacks).
//   the initial netns      /proc/2/ns/net and <procRoot>/2/ns/net when pid 2 is a kernel thread
//                          (kthreadd): kernel threads live in the kernel's initial netns, the
//                          host's, and stay readable where pid 1's may not be.
// The last two also name the machine's netns when the agent runs in a virtual node (the demo,
// the netns tests), where its own netns is not the machine's. Each one that cannot be read is
// listed in `unreadable` (the agent logs them at start).
import { readFileSync, statSync } from "node:fs";
import type { Logger } from "../log/logger.ts";
import { identityKey, type NetnsIdentity } from "../sys/index.ts";

/** Where the host's identities are read from (tests give fakes). */
export interface HostNetnsSources {
  /** The agent's own netns as this process sees it; at least one must be readable. */
  self: readonly string[];
  /** procfs mounts whose pid 1 and kernel threads show the host's netns. */
  procRoots: readonly string[];
}

export const SELF_NETNS_PATHS = ["/proc/thread-self/ns/net", "/proc/self/ns/net"] as const;

/** The sources for an agent configured with `procRoot` (agent.procRoot). */
export function hostSources(procRoot: string): HostNetnsSources {
  return { self: SELF_NETNS_PATHS, procRoots: [...new Set(["/proc", procRoot])] };
}

/** The agent cannot tell which netns is the node's: it must not start. */
export class HostNetnsError extends Error {
  override name = "HostNetnsError";
}

/** PF_KTHREAD in /proc/<pid>/stat's flags (field 9): a kernel thread. */
const PF_KTHREAD = 0x00200000;

export class HostNetns {
  private constructor(
    /** Identity keys ("dev:ino") of every host netns found. */
    readonly keys: ReadonlySet<string>,
    /** Identity key of the agent's own netns. */
    readonly own: string,
    /** What each identity was read from, for the start-up log. */
    readonly found: ReadonlyArray<{ path: string; key: string }>,
    /** Sources that could not be read, with why. */
    readonly unreadable: readonly string[],
    private readonly selfCount: number,
  ) {}

  /** Reads every source; throws HostNetnsError when the agent's own netns cannot be identified. */
  static establish(src: HostNetnsSources): HostNetns {
    const found: Array<{ path: string; key: string }> = [];
    const unreadable: string[] = [];
    const read = (path: string): string | undefined => {
      const r = identityAt(path);
      if (typeof r === "string") {
        unreadable.push(`${path}: ${r}`);
        return undefined;
      }
      const key = identityKey(r);
      found.push({ path, key });
      return key;
    };
    let own: string | undefined;
    for (const p of src.self) own = read(p) ?? own;
    if (own === undefined) {
      throw new HostNetnsError(
        `cannot identify the agent's own network namespace, which is the node's (${unreadable.join("; ")}): ` +
          "without it the agent could not tell the node's namespace from a pod's, so it does not start. " +
          "It needs procfs mounted at /proc, and to run in the node's network namespace (hostNetwork: true)",
      );
    }
    const selfCount = found.length;
    for (const root of src.procRoots) {
      read(`${root}/1/ns/net`);
      const why = kernelThread(root, 2);
      if (why === undefined) read(`${root}/2/ns/net`);
      else unreadable.push(`${root}/2/ns/net: ${why}`);
    }
    return new HostNetns(new Set(found.map((f) => f.key)), own, found, unreadable, selfCount);
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  /** What was found and what not, in the agent's start-up log. */
  report(log: Logger): void {
    log.info("host network namespaces identified", { found: this.found.map((f) => `${f.path} = ${f.key}`), unreadable: this.unreadable });
    if (!this.hostKnown) {
      log.warn(
        "neither pid 1's network namespace nor the initial one could be read: only the agent's own is known to be the node's, so a netns path naming the node is refused only while the agent runs in the node's netns. Reading them needs CAP_SYS_PTRACE and the host's /proc (hostPID, or mounted at agent.procRoot)",
        { unreadable: this.unreadable },
      );
    }
  }

  /**
   * True when pid 1's or the initial netns was read, so the host's netns is known even if the
   * agent does not run in it.
   */
  get hostKnown(): boolean {
    return this.found.length > this.selfCount;
  }
}

/** The identity of the netns at `path` (stat follows the ns symlink), or why it cannot be read. */
function identityAt(path: string): NetnsIdentity | string {
  try {
    const st = statSync(path);
    return { dev: st.dev, ino: st.ino };
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/** undefined when <root>/<pid> is a kernel thread; else why not. */
function kernelThread(root: string, pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`${root}/${pid}/stat`, "utf8");
  } catch (e) {
    return `no ${root}/${pid}/stat (${(e as NodeJS.ErrnoException).code ?? String(e)})`;
  }
  // Fields after the last ')' (comm may hold anything): state, ppid, pgrp, session, tty, tpgid, flags.
  const flags = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[6]);
  return Number.isFinite(flags) && (flags & PF_KTHREAD) !== 0 ? undefined : `pid ${pid} is not a kernel thread (a PID namespace of its own?)`;
}
