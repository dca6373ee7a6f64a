// `nshub check`: can this process do what the agent and proxy need? Each probe exercises a
// real primitive of src/sys (so it also proves the embedded library works in the binary) and
// says exactly which capability is missing when one fails.
import { parseArgs } from "node:util";
import * as sys from "../sys/index.ts";

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

type Probe = () => string | Promise<string>;

const probes: Record<string, Probe> = {
  "library": () => `libnshub loaded; home netns ${sys.homeNetns().key}`,
  "setns": () => {
    const self = sys.Netns.open("/proc/thread-self/ns/net");
    try {
      sys.withNetns(self, () => undefined);
      return "entered and left own netns";
    } catch (e) {
      throw new Error(`${(e as Error).message} — setns needs CAP_SYS_ADMIN`);
    } finally {
      self.close();
    }
  },
  "so_mark": () => {
    const [a, b] = sys.socketPair(sys.SOCK_STREAM);
    try {
      sys.setSockOpt(a, sys.SOL_SOCKET, sys.SO_MARK, 0x539);
      return `mark 0x${sys.getMark(a).toString(16)} set and read back`;
    } catch (e) {
      throw new Error(`${(e as Error).message} — setting SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW`);
    } finally {
      sys.closeFd(a);
      sys.closeFd(b);
    }
  },
  "fd_passing": () => {
    const [a, b] = sys.socketPair(sys.SOCK_SEQPACKET);
    const ns = sys.Netns.open("/proc/thread-self/ns/net");
    try {
      sys.sendPacket(a, new Uint8Array([1]), ns.fd);
      const got = sys.recvPacket(b);
      if (got.kind !== "packet" || got.fds.length !== 1) throw new Error(`expected one fd, got ${JSON.stringify(got)}`);
      const recv = sys.Netns.adopt(got.fds[0]!, "received fd");
      const same = recv.key === ns.key;
      recv.close();
      if (!same) throw new Error("received netns has a different identity");
      return `netns fd passed over SOCK_SEQPACKET, identity ${ns.key} preserved`;
    } finally {
      ns.close();
      sys.closeFd(a);
      sys.closeFd(b);
    }
  },
  "poller": async () => {
    // Readiness comes from the poller thread (a Worker): prove it runs, also in the binary.
    const [a, b] = sys.socketPair(sys.SOCK_SEQPACKET);
    try {
      setTimeout(() => sys.sendPacket(a, new Uint8Array([7])), 20);
      const revents = await sys.fdPoller().wait(b, sys.POLLIN, 2000);
      if ((revents & sys.POLLIN) === 0) throw new Error(`poller reported revents=${revents}, expected POLLIN`);
      return "poller thread reported a readable socket";
    } finally {
      sys.closeFd(a);
      sys.closeFd(b);
    }
  },
  "marked_connect": async () => {
    // A listener we close at once gives a port that refuses: the connect must say so.
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    try {
      const fd = await sys.connectTcp({ host: "127.0.0.1", port, mark: 0x539, timeoutMs: 2000 });
      sys.closeFd(fd);
      throw new Error(`connect to closed port ${port} reported success`);
    } catch (e) {
      if (e instanceof sys.SysError && e.code === "ECONNREFUSED") return "refused connect reported as ECONNREFUSED";
      throw e;
    }
  },
};

export async function runChecks(): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  for (const [name, probe] of Object.entries(probes)) {
    try {
      out.push({ name, ok: true, detail: await probe() });
    } catch (e) {
      out.push({ name, ok: false, detail: (e as Error).message });
    }
  }
  return out;
}

export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } }, strict: true });
  if (values.help) {
    console.log("usage: nshub check [--json]\n\nVerifies the capabilities and kernel features nshub needs (setns, SO_MARK, fd passing).");
    return 0;
  }
  const results = await runChecks();
  sys.stopFdPoller();
  if (values.json) console.log(JSON.stringify(results, null, 2));
  else for (const r of results) console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name.padEnd(15)} ${r.detail}`);
  return results.every((r) => r.ok) ? 0 : 1;
}
