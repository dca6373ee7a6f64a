// The proxy's workload manager in-process, on bare network namespaces (`ip netns add`, a veth
// pair for addresses): same netns identity on re-add is a no-op, a different identity replaces
// the pod, delete closes the listeners, a dual-stack pod gets "::" listeners, the manager sets
// net.ipv4.tcp_migrate_req=1 in the pod's netns only, and readiness follows snapshot/pending.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import * as sys from "../../src/sys/index.ts";
import { loadConfig } from "../../src/config/load.ts";
import { createLogger, getLogLevel, setLogLevel } from "../../src/log/logger.ts";
import { ProxyWorkloadManager } from "../../src/proxy/manager.ts";
import { ProxyStartError } from "../../src/zds/types.ts";
import { netnsDescribe } from "../helpers/root.ts";
import { run, runOrThrow } from "../helpers/netsim.ts";

const T = 60_000;
const tag = `nshm-${randomBytes(3).toString("hex")}`;
const ns1 = `${tag}-1`;
const ns2 = `${tag}-2`;
const info = { name: "web", namespace: "shop", serviceAccount: "default" };

async function listening(ns: string): Promise<string[]> {
  const r = await runOrThrow(["ip", "netns", "exec", ns, "ss", "-ltnH"]);
  return r.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => l.trim().split(/\s+/)[3]!);
}

netnsDescribe("proxy: workload manager (in-process)", () => {
  let mgr: ProxyWorkloadManager;
  const level = getLogLevel();

  beforeAll(async () => {
    setLogLevel(process.env.PROXY_TEST_LOG ? "debug" : "error");
    sys.homeNetns();
    for (const ns of [ns1, ns2]) {
      await runOrThrow(["ip", "netns", "add", ns]);
      await runOrThrow(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // ns2 gets IPv6 on a veth (peer end in ns1): it is a dual-stack pod.
    await runOrThrow(["ip", "-n", ns2, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", ns1]);
    await runOrThrow(["ip", "-n", ns2, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    await runOrThrow(["ip", "-n", ns2, "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"]);
    await runOrThrow(["ip", "-n", ns2, "link", "set", "eth0", "up"]);
    // Up on both ends: libuv's interface list (what the manager reads) skips links without carrier.
    await runOrThrow(["ip", "-n", ns1, "link", "set", "peer0", "up"]);
    const cfg = loadConfig({ file: "/dev/null", env: {}, overrides: { proxy: { pendingRetryMs: 100 } } }).proxy;
    mgr = new ProxyWorkloadManager({ cfg, log: createLogger("test/proxy") });
  }, T);

  afterAll(async () => {
    mgr?.closeAll();
    for (const ns of [ns1, ns2]) await run(["ip", "netns", "del", ns]);
    sys.stopFdPoller();
    setLogLevel(level);
  }, T);

  test("readiness waits for the snapshot", () => {
    expect(mgr.readiness()).toEqual({ ready: false, reason: "not connected to the node agent (ZDS)" });
    mgr.connectionStarted();
    expect(mgr.readiness().reason).toBe("waiting for the ZDS snapshot");
  });

  test("add binds the listener set inside the pod's netns; tcp_migrate_req is set there only", async () => {
    const hostBefore = readFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "utf8").trim();
    await mgr.add("uid-1", info, sys.Netns.open(`/var/run/netns/${ns1}`));
    mgr.snapshotDone();
    expect(mgr.readiness().ready).toBe(true);
    expect((await listening(ns1)).sort()).toEqual(["0.0.0.0:15001", "0.0.0.0:15006"]);
    expect((await runOrThrow(["ip", "netns", "exec", ns1, "sysctl", "-n", "net.ipv4.tcp_migrate_req"])).stdout.trim()).toBe("1");
    expect(readFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "utf8").trim()).toBe(hostBefore);
    const st = mgr.pods().find((p) => p.uid === "uid-1")!;
    expect(st).toMatchObject({ state: "running", name: "web", namespace: "shop" });
  }, T);

  test("re-adding with the same netns identity is a no-op that closes the extra fd", async () => {
    const before = mgr.pod("uid-1");
    const again = sys.Netns.open(`/var/run/netns/${ns1}`);
    await mgr.add("uid-1", info, again);
    expect(again.closed).toBe(true);
    expect(mgr.pod("uid-1")).toBe(before);
    expect((await listening(ns1)).length).toBe(2);
  }, T);

  test("re-adding with a different netns replaces the pod; a dual-stack pod listens on [::]", async () => {
    const old = mgr.pod("uid-1")!;
    await mgr.add("uid-1", info, sys.Netns.open(`/var/run/netns/${ns2}`));
    expect(old.closed).toBe(true);
    expect(old.netns.closed).toBe(true);
    expect(await listening(ns1)).toEqual([]);
    const l = (await listening(ns2)).sort();
    expect(l.every((a) => a.startsWith("*:") || a.startsWith("[::]:"))).toBe(true);
    expect(l.map((a) => a.slice(a.lastIndexOf(":") + 1))).toEqual(["15001", "15006"]);
    expect(mgr.pod("uid-1")!.net.family).toBe("dual");
  }, T);

  test("a pod that cannot bind is pending (ProxyStartError), blocks readiness, and starts on retry", async () => {
    // Hold 15006 in ns1 without SO_REUSEPORT so the manager's bind fails.
    const blocker = sys.withNetns(sys.Netns.open(`/var/run/netns/${ns1}`), () =>
      Bun.listen({ hostname: "0.0.0.0", port: 15006, socket: { data() {} } }),
    );
    let err: unknown;
    try {
      await mgr.add("uid-2", info, sys.Netns.open(`/var/run/netns/${ns1}`));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProxyStartError);
    expect((err as Error).message).toContain("15006");
    expect(await listening(ns1)).toEqual(["0.0.0.0:15006"]); // the half-opened set was closed
    expect(mgr.readiness().ready).toBe(false);
    expect(mgr.readiness().reason).toContain("pending");
    expect([...mgr.uids()].sort()).toEqual(["uid-1", "uid-2"]);
    blocker.stop(true);
    const end = Date.now() + 5000;
    while (!mgr.readiness().ready && Date.now() < end) await Bun.sleep(20);
    expect(mgr.readiness().ready).toBe(true);
    expect(mgr.pods().find((p) => p.uid === "uid-2")?.state).toBe("running");
  }, T);

  test("del closes the pod's listeners at once; unknown uid is a no-op", async () => {
    await mgr.del("uid-2");
    await mgr.del("uid-1");
    await mgr.del("nope");
    expect(await listening(ns1)).toEqual([]);
    expect(await listening(ns2)).toEqual([]);
    expect([...mgr.uids()]).toEqual([]);
  }, T);
});
