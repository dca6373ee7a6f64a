// Network namespaces: open, verify, identify, and run code with the calling thread inside one.
import { lib, cstr } from "./lib.ts";
import { check, SysError } from "./errors.ts";

const CLONE_NEWNET = 0x40000000;

/** A namespace's identity: device and inode of its nsfs file. Equal identity = same netns. */
export interface NetnsIdentity {
  dev: number;
  ino: number;
}

export function identityKey(id: NetnsIdentity): string {
  return `${id.dev}:${id.ino}`;
}

/** An open network-namespace fd, verified to be one. `label` names it in errors and logs. */
export class Netns {
  readonly fd: number;
  readonly label: string;
  readonly identity: NetnsIdentity;
  #closed = false;

  private constructor(fd: number, label: string) {
    this.fd = fd;
    this.label = label;
    this.identity = netnsIdentity(fd, label);
  }

  /** Opens `path` (e.g. /var/run/netns/x or /proc/<pid>/ns/net) and checks it is a netns. */
  static open(path: string): Netns {
    const fd = check(lib.nh_open_ro(cstr(path)), "open", path);
    return Netns.adopt(fd, path);
  }

  /**
   * Takes ownership of an fd received from elsewhere (e.g. over ZDS). It is verified to be a
   * network namespace first; when it is not, the fd is closed and a NotNetnsError thrown.
   */
  static adopt(fd: number, label = `fd ${fd}`): Netns {
    try {
      assertNetworkNamespace(fd, label);
      return new Netns(fd, label);
    } catch (e) {
      lib.nh_close(fd);
      throw e;
    }
  }

  get key(): string {
    return identityKey(this.identity);
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    lib.nh_close(this.fd);
  }
}

export class NotNetnsError extends Error {
  constructor(label: string, why: string) {
    super(`${label} is not a network namespace: ${why}`);
    this.name = "NotNetnsError";
  }
}

const NS_TYPE_NAMES: Record<number, string> = {
  0x00020000: "a mount namespace",
  0x02000000: "a cgroup namespace",
  0x04000000: "a UTS namespace",
  0x08000000: "an IPC namespace",
  0x10000000: "a user namespace",
  0x20000000: "a PID namespace",
  0x00000080: "a time namespace",
};

/** Throws NotNetnsError unless `fd` is a network namespace (NS_GET_NSTYPE == CLONE_NEWNET). */
export function assertNetworkNamespace(fd: number, label = `fd ${fd}`): void {
  const t = lib.nh_ns_type(fd);
  if (t === CLONE_NEWNET) return;
  if (t >= 0) throw new NotNetnsError(label, `it is ${NS_TYPE_NAMES[t] ?? `namespace type 0x${t.toString(16)}`}`);
  const err = new SysError("ioctl(NS_GET_NSTYPE)", -t);
  // ENOTTY/EINVAL: an ordinary file or socket; EBADF: not an open fd at all.
  throw new NotNetnsError(label, err.code === "EBADF" ? "not an open file descriptor" : `not a namespace file (${err.code})`);
}

export function isNetworkNamespace(fd: number): boolean {
  return lib.nh_ns_type(fd) === CLONE_NEWNET;
}

export function netnsIdentity(fd: number, label?: string): NetnsIdentity {
  const out = new BigUint64Array(2);
  check(lib.nh_fstat_ident(fd, out), "fstat", label);
  return { dev: Number(out[0]), ino: Number(out[1]) };
}

/** Identity of the netns at `path` without keeping it open. */
export function netnsIdentityOfPath(path: string): NetnsIdentity {
  const ns = Netns.open(path);
  try {
    return ns.identity;
  } finally {
    ns.close();
  }
}

let home: Netns | undefined;

/**
 * The netns this thread started in, opened once. Must first be called before any setns on this
 * thread (src/main.ts does it at startup); every withNetns returns here.
 */
export function homeNetns(): Netns {
  home ??= Netns.open("/proc/thread-self/ns/net");
  return home;
}

/**
 * Runs `fn` synchronously with the calling thread inside `ns`, then always moves the thread
 * back home. Only work that completes before `fn` returns happens in `ns` (sockets created
 * there stay there); `fn` must not be async. If the way back fails the process cannot trust
 * any later socket it creates, so it exits rather than carry on in the wrong namespace.
 */
export function withNetns<T>(ns: Netns, fn: () => T): T {
  const back = homeNetns();
  check(lib.nh_setns_net(ns.fd), "setns", ns.label);
  try {
    const result = fn();
    if (result instanceof Promise) throw new Error("withNetns: fn must be synchronous (a promise would run outside the namespace)");
    return result;
  } finally {
    const r = lib.nh_setns_net(back.fd);
    if (r < 0) {
      console.error(`fatal: ${new SysError("setns", -r, back.label, "returning home").message}`);
      process.exit(70);
    }
  }
}
