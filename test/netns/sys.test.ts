// src/sys primitives against real namespaces, real iptables and the compiled binary.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { netnsDescribe } from "../helpers/root.ts";
import { createSim, type NetSim, type Pod } from "../helpers/netsim.ts";
import * as sys from "../../src/sys/index.ts";

const BINARY = `${import.meta.dir}/../../dist/nshub`;

netnsDescribe("src/sys in pod namespaces", () => {
  let sim: NetSim;
  let a: Pod;
  let b: Pod;
  beforeAll(async () => {
    sim = await createSim();
    a = await sim.addPod({ name: "sys-a" });
    b = await sim.addPod({ name: "sys-b" });
  });
  afterAll(async () => {
    await sim?.destroy();
    sys.stopFdPoller();
  });

  test("a listener made inside a pod's netns is reachable from that pod, not from the node or the host", async () => {
    const ns = sys.Netns.open(a.netnsPath);
    const listener = sys.withNetns(ns, () =>
      Bun.listen({ hostname: "127.0.0.1", port: 18080, socket: { open(s) { s.write("hello from pod\n"); s.end(); }, data() {} } }),
    );
    try {
      const inPod = await a.exec(["socat", "-u", "TCP:127.0.0.1:18080,connect-timeout=2", "STDOUT"]);
      expect(inPod.stdout).toBe("hello from pod\n");
      const fromNode = await sim.node.exec(["socat", "-u", "TCP:127.0.0.1:18080,connect-timeout=2", "STDOUT"]);
      expect(fromNode.code).not.toBe(0);
      expect(fromNode.stderr).toContain("Connection refused");
      // The test process itself runs in the host netns: 127.0.0.1:18080 is not there either.
      const err = await sys.connectTcp({ host: "127.0.0.1", port: 18080, timeoutMs: 2000 }).catch((e) => e);
      expect(err.code).toBe("ECONNREFUSED");
      expect(sys.netnsIdentityOfPath("/proc/thread-self/ns/net")).toEqual(sys.homeNetns().identity);
    } finally {
      listener.stop(true);
      ns.close();
    }
  });

  test("a marked connect from inside a pod carries the mark on its very first packet", async () => {
    // Count SYNs leaving pod A that carry mark 0x539: only a mark set before connect is seen.
    await a.execOrThrow(["iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--syn", "-m", "mark", "--mark", "0x539", "-j", "ACCEPT"]);
    const server = b.spawn(["socat", "TCP-LISTEN:7100,reuseaddr,fork", "SYSTEM:echo marked"]);
    await b.waitForTcpPort(7100);
    const ns = sys.Netns.open(a.netnsPath);
    try {
      const fd = await sys.connectTcp({ netns: ns, host: b.ip, port: 7100, mark: 0x539, timeoutMs: 5000 });
      expect(sys.getMark(fd)).toBe(0x539);
      expect(sys.localAddress(fd).ip).toBe(a.ip);
      sys.closeFd(fd);
      const rules = await a.execOrThrow(["iptables", "-t", "mangle", "-L", "OUTPUT", "-v", "-x", "-n"]);
      const line = rules.stdout.split("\n").find((l) => l.includes("mark match 0x539"));
      expect(Number(line?.trim().split(/\s+/)[0])).toBe(1);
    } finally {
      ns.close();
      await server.stop();
    }
  });

  test("SO_ORIGINAL_DST returns the destination of a connection redirected by iptables REDIRECT", async () => {
    await a.execOrThrow(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", b.ip, "--dport", "9999", "-j", "REDIRECT", "--to-ports", "15001"]);
    const ns = sys.Netns.open(a.netnsPath);
    const seen = Promise.withResolvers<sys.SocketAddress>();
    const listener = sys.withNetns(ns, () =>
      Bun.listen({
        hostname: "0.0.0.0",
        port: 15001,
        socket: {
          open(s) {
            seen.resolve(sys.originalDst((s as unknown as { fd: number }).fd));
            s.end();
          },
          data() {},
        },
      }),
    );
    try {
      await a.exec(["socat", "-u", "OPEN:/dev/null", `TCP:${b.ip}:9999,connect-timeout=2`]);
      expect(await seen.promise).toEqual({ ip: b.ip, port: 9999, family: 4 });
    } finally {
      listener.stop(true);
      ns.close();
    }
  });

  test("an unanswered connect times out through the poller and leaks nothing", async () => {
    const ns = sys.Netns.open(a.netnsPath);
    // Warm the poller first: its thread and eventfd exist once per process.
    const [x, y] = sys.socketPair();
    await sys.fdPoller().wait(x, sys.POLLOUT, 1000);
    sys.closeFd(x);
    sys.closeFd(y);
    // Collect garbage first: fds that only the GC releases (spawn-stdin memfds of the CNI runs in
    // beforeAll, earlier files' subprocesses) must not vanish in the middle of the count.
    Bun.gc(true);
    const before = sys.openFdCount();
    // Drop B's SYNs so the connect neither completes nor fails.
    await b.execOrThrow(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7200", "-j", "DROP"]);
    try {
      const err = await sys.connectTcp({ netns: ns, host: b.ip, port: 7200, mark: 0x539, timeoutMs: 300 }).catch((e) => e);
      expect(err).toBeInstanceOf(sys.SysError);
      expect(err.code).toBe("ETIMEDOUT");
      expect(err.message).toContain(`in netns ${a.netnsPath}`);
      expect(sys.openFdCount()).toBe(before);
    } finally {
      ns.close();
    }
  });

  test("the compiled binary runs the same primitives inside a pod (embedded library, poller worker)", async () => {
    const r = await a.exec([BINARY, "check", "--json"]);
    expect(r.code).toBe(0);
    const results = JSON.parse(r.stdout) as { name: string; ok: boolean; detail: string }[];
    expect(results.map((c) => c.name)).toEqual(["library", "setns", "so_mark", "fd_passing", "poller", "marked_connect"]);
    expect(results.filter((c) => !c.ok)).toEqual([]);
    // The binary's "home" netns is the pod's: it really ran inside pod A.
    expect(results[0]!.detail).toContain(sys.netnsIdentityOfPath(a.netnsPath).dev + ":" + sys.netnsIdentityOfPath(a.netnsPath).ino);
  });
});
