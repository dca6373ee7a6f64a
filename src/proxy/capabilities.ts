// Startup check: can this process do what the proxy needs? Each probe exercises the real
// primitive and, when it fails, names the capability that is missing (like ztunnel's
// verify_syscalls), so an operator fixes the DaemonSet instead of reading errno values.
import { readFileSync } from "node:fs";
import {
  closeFd,
  IP_TRANSPARENT,
  Netns,
  setSockOpt,
  socketPair,
  SOCK_STREAM,
  SOL_IP,
  SOL_SOCKET,
  SO_MARK,
  withNetns,
} from "../sys/index.ts";

export class CapabilityError extends Error {
  constructor(
    message: string,
    /** e.g. "CAP_SYS_ADMIN". */
    readonly capability: string,
  ) {
    super(message);
    this.name = "CapabilityError";
  }
}

const CAP_NET_ADMIN = 12;
const CAP_NET_RAW = 13;
const CAP_SYS_ADMIN = 21;

/** The effective capability set of this process (bit mask), or undefined if unreadable. */
export function effectiveCapabilities(): bigint | undefined {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? BigInt(`0x${m[1]}`) : undefined;
  } catch {
    return undefined;
  }
}

const has = (caps: bigint | undefined, bit: number) => caps === undefined || (caps & (1n << BigInt(bit))) !== 0n;

/**
 * Throws CapabilityError naming the missing capability when the process cannot enter a network
 * namespace (setns: CAP_SYS_ADMIN), set SO_MARK (CAP_NET_ADMIN) or set IP_TRANSPARENT
 * (CAP_NET_ADMIN or CAP_NET_RAW). Returns a one-line summary when everything works.
 */
export function checkCapabilities(mark: number): string {
  const caps = effectiveCapabilities();
  const capText = caps === undefined ? "" : ` (CapEff 0x${caps.toString(16)})`;
  // setns: into our own netns and back, exactly what entering a pod does.
  let self: Netns | undefined;
  try {
    self = Netns.open("/proc/thread-self/ns/net");
    withNetns(self, () => undefined);
  } catch (e) {
    const missing = has(caps, CAP_SYS_ADMIN) ? "CAP_SYS_ADMIN (or a seccomp/LSM policy blocks setns)" : "CAP_SYS_ADMIN";
    throw new CapabilityError(`cannot enter a network namespace: ${(e as Error).message}; the proxy needs ${missing}${capText}`, "CAP_SYS_ADMIN");
  } finally {
    self?.close();
  }
  // SO_MARK, with the mark the in-pod rules expect.
  const [a, b] = socketPair(SOCK_STREAM);
  try {
    setSockOpt(a, SOL_SOCKET, SO_MARK, mark);
  } catch (e) {
    throw new CapabilityError(`cannot set SO_MARK 0x${mark.toString(16)}: ${(e as Error).message}; the proxy needs CAP_NET_ADMIN${capText}`, "CAP_NET_ADMIN");
  } finally {
    closeFd(a);
    closeFd(b);
  }
  // IP_TRANSPARENT, for the listeners and the inbound source-preserving connects.
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  try {
    setSockOpt((l as unknown as { fd: number }).fd, SOL_IP, IP_TRANSPARENT, 1);
  } catch (e) {
    const missing = has(caps, CAP_NET_ADMIN) || has(caps, CAP_NET_RAW) ? "CAP_NET_ADMIN" : "CAP_NET_ADMIN (or CAP_NET_RAW)";
    throw new CapabilityError(`cannot set IP_TRANSPARENT: ${(e as Error).message}; the proxy needs ${missing}${capText}`, "CAP_NET_ADMIN");
  } finally {
    l.stop(true);
  }
  return `setns, SO_MARK 0x${mark.toString(16)} and IP_TRANSPARENT work${capText}`;
}
