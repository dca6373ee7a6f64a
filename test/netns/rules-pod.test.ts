// In-pod rules in real pod namespaces (netsim: node netns + bridge, pods through the real CNI
// plugins): exactly the expected iptables-save, ip rule and route; idempotent re-apply; clean
// removal; all-or-nothing on failure; and real TCP connections being redirected (or not).
// The machine's own namespace is snapshotted before and after and must be unchanged.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { openSync, closeSync, readdirSync, statSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { netnsDescribe } from "../helpers/root.ts";
import { createSim, run, runOrThrow, type NetSim, type Pod } from "../helpers/netsim.ts";
import { RulesError, applyPodRules, detectIptablesBackend, inspectPodRules, removePodRules, type IptablesBackend } from "../../src/agent/rules/index.ts";
import { runTool } from "../../src/agent/rules/exec.ts";
import * as sys from "../../src/sys/index.ts";
import { hostNetState as rootSnapshot } from "../helpers/host-state.ts";

const T = 60_000;

// ---------------------------------------------------------------------------------------------
// helpers


/**
 * `iptables-save` inside a namespace, reduced to what the rules are: table headers, nshub chain
 * declarations, every rule, COMMIT — counters, generator comments and built-in chain policies
 * dropped, tables sorted by name (nft and legacy list them in different orders).
 */
async function savedRules(netnsPath: string, family: "ipv4" | "ipv6" = "ipv4", backend: IptablesBackend = "nft"): Promise<string> {
  const tool = `${family === "ipv4" ? "iptables" : "ip6tables"}-${backend}-save`;
  const r = await runOrThrow(["nsenter", `--net=${netnsPath}`, "--", tool]);
  const tables = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const line of r.stdout.split("\n")) {
    if (line.startsWith("*")) tables.set(line, (cur = []));
    else if (cur && (line.startsWith("-A ") || line.startsWith(":NSHUB"))) cur.push(line.replace(/\[\d+:\d+\]/, "[0:0]"));
  }
  return [...tables]
    .filter(([, l]) => l.length > 0)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([t, l]) => [t, ...l, "COMMIT"].join("\n") + "\n")
    .join("");
}

/** The full raw iptables-save (minus generator comments and counters), for byte comparisons. */
async function rawSave(netnsPath: string, tool = "iptables-nft-save"): Promise<string> {
  const r = await runOrThrow(["nsenter", `--net=${netnsPath}`, "--", tool]);
  return r.stdout
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]/g, "[0:0]"))
    .join("\n");
}

/** /proc/<pid>/ns/net of a process that has exited (the path no longer exists). */
async function exitedProcessNetns(): Promise<string> {
  const p = Bun.spawn(["true"], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  await p.exited;
  return `/proc/${p.pid}/ns/net`;
}

/** Every thread of this process with the netns it is in (inode of /proc/self/task/<tid>/ns/net). */
function threadNetns(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      out.set(tid, statSync(`/proc/self/task/${tid}/ns/net`).ino);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return out;
}

/** Waits until process `pid` is inside the namespace at `netnsPath`. */
async function waitForNetnsOf(pid: number, netnsPath: string): Promise<void> {
  const want = statSync(netnsPath).ino;
  for (let i = 0; i < 200; i++) {
    if (statSync(`/proc/${pid}/ns/net`).ino === want) return;
    await Bun.sleep(10);
  }
  throw new Error(`process ${pid} never entered ${netnsPath}`);
}

const ipIn = async (netnsPath: string, ...args: string[]) => (await runOrThrow(["nsenter", `--net=${netnsPath}`, "--", "ip", ...args])).stdout;

/** Exactly what `iptables-save` shows in a pod with the default rules (nft and legacy alike). */
const EXPECTED_V4 = `*mangle
:NSHUB_OUTPUT - [0:0]
:NSHUB_PRERT - [0:0]
-A PREROUTING -j NSHUB_PRERT
-A OUTPUT -j NSHUB_OUTPUT
-A NSHUB_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A NSHUB_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
*nat
:NSHUB_OUTPUT - [0:0]
:NSHUB_PRERT - [0:0]
-A PREROUTING -j NSHUB_PRERT
-A OUTPUT -j NSHUB_OUTPUT
-A NSHUB_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A NSHUB_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
-A NSHUB_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A NSHUB_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
COMMIT
`;

/** The same with DNS capture: two DNS redirects in nat, and the raw table. */
const EXPECTED_V4_DNS = `*mangle
:NSHUB_OUTPUT - [0:0]
:NSHUB_PRERT - [0:0]
-A PREROUTING -j NSHUB_PRERT
-A OUTPUT -j NSHUB_OUTPUT
-A NSHUB_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A NSHUB_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
*nat
:NSHUB_OUTPUT - [0:0]
:NSHUB_PRERT - [0:0]
-A PREROUTING -j NSHUB_PRERT
-A OUTPUT -j NSHUB_OUTPUT
-A NSHUB_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A NSHUB_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053
-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A NSHUB_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
-A NSHUB_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A NSHUB_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
COMMIT
*raw
:NSHUB_OUTPUT - [0:0]
:NSHUB_PRERT - [0:0]
-A PREROUTING -j NSHUB_PRERT
-A OUTPUT -j NSHUB_OUTPUT
-A NSHUB_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A NSHUB_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
`;

const EXPECTED_V6 = EXPECTED_V4.replaceAll("169.254.7.127/32", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128").replaceAll("127.0.0.1/32", "::1/128");

const RULE_LINE = "32764:\tfrom all fwmark 0x111/0xfff lookup 100";

/** Asserts that nothing of nshub's is left in the namespace (both families, both backends). */
async function expectClean(netnsPath: string): Promise<void> {
  for (const tool of ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"]) {
    expect({ tool, save: await rawSave(netnsPath, tool) }).toEqual({ tool, save: expect.not.stringContaining("NSHUB") });
  }
  expect(await ipIn(netnsPath, "rule", "show")).not.toContain("32764");
  expect(await ipIn(netnsPath, "-6", "rule", "show")).not.toContain("32764");
  const route4 = await run(["nsenter", `--net=${netnsPath}`, "--", "ip", "route", "show", "table", "100"]);
  const route6 = await run(["nsenter", `--net=${netnsPath}`, "--", "ip", "-6", "route", "show", "table", "100"]);
  expect(route4.stdout.trim()).toBe("");
  expect(route6.stdout.trim()).toBe("");
}

/**
 * A TCP server (Bun) inside a pod: listens on every port in LISTEN_PORTS and answers each
 * connection with one line naming the port it arrived on and the peer, then closes. Fixed code,
 * ports through the environment: no shell, nothing interpolated.
 */
const SERVER_JS = `
for (const port of (process.env.LISTEN_PORTS ?? "").split(",").map(Number)) {
  Bun.listen({ hostname: "0.0.0.0", port, socket: {
    open(s) { console.log("conn port=" + port + " peer=" + s.remoteAddress); s.end("port=" + port + " peer=" + s.remoteAddress + "\\n"); },
    data() {},
  } });
}
console.log("listening " + process.env.LISTEN_PORTS);
`;

function startServer(pod: Pod, ports: number[]) {
  const p = pod.spawn([process.execPath, "-e", SERVER_JS], { env: { ...process.env, LISTEN_PORTS: ports.join(",") } });
  return p;
}

/** Connects from `from` to ip:port with socat and returns the line the server sent (or the error). */
async function fetchLine(from: Pod | NetSim["node"], ip: string, port: number): Promise<{ code: number; out: string; err: string }> {
  const r = await from.exec(["socat", "-t", "2", "-T", "5", "-u", `TCP:${ip}:${port},connect-timeout=3`, "STDOUT"], { timeoutMs: 15_000 });
  return { code: r.code, out: r.stdout.trim(), err: r.stderr.trim() };
}

// ---------------------------------------------------------------------------------------------

netnsDescribe("in-pod rules (apply / remove / inspect in real pod namespaces)", () => {
  let rootBefore: Record<string, string>;
  let sim: NetSim;
  let a: Pod;
  let b: Pod;
  const ownNetns: string[] = []; // namespaces made here without netsim: removed in afterAll

  beforeAll(async () => {
    rootBefore = await rootSnapshot();
    sim = await createSim({ prefix: "rpod-" });
    a = await sim.addPod({ name: "rules-a" });
    b = await sim.addPod({ name: "rules-b" });
  }, T);

  afterAll(async () => {
    await sim?.destroy();
    for (const n of ownNetns) await run(["ip", "netns", "del", n]);
    sys.stopFdPoller();
    // The machine's own namespace is exactly as it was.
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  /** A bare namespace (lo DOWN, no interfaces) owned by this file. */
  async function bareNetns(): Promise<string> {
    const name = `rpodx-${randomBytes(3).toString("hex")}`;
    await runOrThrow(["ip", "netns", "add", name]);
    ownNetns.push(name);
    return `/var/run/netns/${name}`;
  }

  describe("tools run inside the pod (spawned from within its namespace, no nsenter)", () => {
    test("a tool sees the pod's network (its address, not ours); our thread is home afterwards, no thread left in the pod", async () => {
      const homeIno = statSync("/proc/thread-self/ns/net").ino;
      const podIno = statSync(a.netnsPath).ino;
      expect(podIno).not.toBe(homeIno);
      const hostAddrs = (await runOrThrow(["ip", "-o", "-4", "addr", "show"])).stdout;
      expect(hostAddrs).not.toContain(`inet ${a.ip}/`);
      const before = threadNetns();
      // Several at once, each read back asynchronously after the thread went home.
      const rs = await Promise.all(Array.from({ length: 8 }, () => runTool(["ip", "-o", "-4", "addr", "show"], { netnsPath: a.netnsPath })));
      for (const r of rs) {
        expect(r.code).toBe(0);
        expect(r.stdout).toContain(`inet ${a.ip}/`);
        expect(r.stdout).not.toBe(hostAddrs);
      }
      // The child's own view: its netns is the pod's.
      const link = await runTool(["readlink", "/proc/self/ns/net"], { netnsPath: a.netnsPath });
      expect(link.stdout.trim()).toBe(`net:[${podIno}]`);
      expect(statSync("/proc/thread-self/ns/net").ino).toBe(homeIno);
      // No thread created meanwhile (by Bun, for the spawns) lives in the pod's namespace.
      const strays = [...threadNetns()].filter(([tid, ino]) => !before.has(tid) && ino !== homeIno);
      expect(strays).toEqual([]);
      // And without a namespace the tool runs here.
      expect((await runTool(["ip", "-o", "-4", "addr", "show"])).stdout).not.toContain(`inet ${a.ip}/`);
    }, T);

    test("IPv6 off on the pod's lo is read in the pod: the IPv6 route is skipped there, not here", async () => {
      // Bare namespace, lo down: an IPv6 local route could not be added. With disable_ipv6=1 on
      // its lo (ours stays 0) Istio skips that route, so the apply must succeed.
      expect((await runOrThrow(["cat", "/proc/sys/net/ipv6/conf/lo/disable_ipv6"])).stdout.trim()).toBe("0");
      const ns = await bareNetns();
      await runOrThrow(["nsenter", `--net=${ns}`, "--", "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
      await applyPodRules(ns, { ipv6: true });
      expect((await ipIn(ns, "-6", "rule", "show")).split("\n")).toContain(RULE_LINE);
      expect((await inspectPodRules(ns, { ipv6: true })).complete).toBe(true);
      await removePodRules(ns, { ipv6: true });
      await expectClean(ns);
    }, T);
  });

  describe("default rule set", () => {
    test("apply: iptables-save shows exactly the rule set; ip rule and table 100 route exist", async () => {
      await applyPodRules(a.netnsPath);
      expect(await savedRules(a.netnsPath)).toBe(EXPECTED_V4);
      expect((await ipIn(a.netnsPath, "rule", "show")).split("\n")).toContain(RULE_LINE);
      expect((await ipIn(a.netnsPath, "route", "show", "table", "100")).trim()).toBe("local default dev lo scope host");
      // IPv6 was not asked for.
      expect(await rawSave(a.netnsPath, "ip6tables-nft-save")).not.toContain("NSHUB");
      expect(await ipIn(a.netnsPath, "-6", "rule", "show")).not.toContain("32764");
      const state = await inspectPodRules(a.netnsPath);
      expect(state).toEqual({ chainsPresent: true, rulesMatch: true, jumpsPresent: true, ipRulePresent: true, routePresent: true, complete: true, anyPresent: true, problems: [] });
    }, T);

    test("apply twice more: iptables-save byte-identical, one ip rule, one route", async () => {
      const before = await rawSave(a.netnsPath);
      const rulesBefore = await ipIn(a.netnsPath, "rule", "show");
      await applyPodRules(a.netnsPath);
      await applyPodRules(a.netnsPath);
      expect(await rawSave(a.netnsPath)).toBe(before);
      expect(await ipIn(a.netnsPath, "rule", "show")).toBe(rulesBefore);
      expect((await ipIn(a.netnsPath, "rule", "show")).match(/32764:/g)?.length).toBe(1);
      expect((await ipIn(a.netnsPath, "route", "show", "table", "100")).trim()).toBe("local default dev lo scope host");
    }, T);

    test("concurrent applies to one pod are serialized (no duplicate jumps)", async () => {
      const before = await rawSave(a.netnsPath);
      await Promise.all([applyPodRules(a.netnsPath), applyPodRules(a.netnsPath), applyPodRules(a.netnsPath)]);
      expect(await rawSave(a.netnsPath)).toBe(before);
    }, T);

    test("re-apply repairs: a deleted jump, a duplicated jump and an edited chain are put right", async () => {
      const want = await savedRules(a.netnsPath);
      await a.execOrThrow(["iptables", "-t", "nat", "-D", "OUTPUT", "-j", "NSHUB_OUTPUT"]);
      await a.execOrThrow(["iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "NSHUB_PRERT"]);
      await a.execOrThrow(["iptables", "-t", "nat", "-I", "NSHUB_PRERT", "1", "-p", "udp", "-j", "ACCEPT"]);
      await a.execOrThrow(["ip", "route", "del", "local", "default", "dev", "lo", "table", "100"]);
      const broken = await inspectPodRules(a.netnsPath);
      expect(broken.complete).toBe(false);
      expect(broken.rulesMatch).toBe(false);
      expect(broken.jumpsPresent).toBe(false);
      expect(broken.routePresent).toBe(false);
      expect(broken.problems.join("\n")).toContain('jump "OUTPUT -j NSHUB_OUTPUT" present 0 times');
      expect(broken.problems.join("\n")).toContain('jump "PREROUTING -j NSHUB_PRERT" present 2 times');
      await applyPodRules(a.netnsPath);
      expect(await savedRules(a.netnsPath)).toBe(want);
      expect((await inspectPodRules(a.netnsPath)).complete).toBe(true);
    }, T);

    test("a connection from the pod to another pod is redirected to the pod's own :15001", async () => {
      const server = startServer(a, [15001, 15006]);
      const target = startServer(b, [8080]);
      try {
        await a.waitForTcpPort(15001);
        await b.waitForTcpPort(8080);
        const r = await fetchLine(a, b.ip, 8080);
        // Answered by A's 15001 listener (REDIRECT keeps the source, A's own IP): B never saw it.
        expect(r).toEqual({ code: 0, out: `port=15001 peer=${a.ip}`, err: "" });
        expect(target.stdout()).not.toContain("conn ");
      } finally {
        await server.stop();
        await target.stop();
      }
    }, T);

    test("a connection into the pod is redirected to :15006, and the client's IP is kept", async () => {
      const server = startServer(a, [15006, 8080]);
      try {
        await a.waitForTcpPort(15006);
        await a.waitForTcpPort(8080);
        const r = await fetchLine(b, a.ip, 8080);
        expect(r).toEqual({ code: 0, out: `port=15006 peer=${b.ip}`, err: "" });
      } finally {
        await server.stop();
      }
    }, T);

    test("what is not captured: HBONE 15008 inbound, the proxy's marked sockets, 127.0.0.1", async () => {
      const server = startServer(a, [15001, 15006, 15008, 9000]);
      const target = startServer(b, [8080]);
      const ns = sys.Netns.open(a.netnsPath);
      try {
        for (const p of [15001, 15006, 15008, 9000]) await a.waitForTcpPort(p);
        await b.waitForTcpPort(8080);
        // Inbound to 15008 reaches the 15008 listener itself.
        expect(await fetchLine(b, a.ip, 15008)).toEqual({ code: 0, out: `port=15008 peer=${b.ip}`, err: "" });
        // Loopback inside the pod is not redirected.
        expect(await fetchLine(a, "127.0.0.1", 9000)).toEqual({ code: 0, out: "port=9000 peer=127.0.0.1", err: "" });
        // A socket with SO_MARK 0x539 set before connect (what the proxy does) goes straight out.
        const fd = await sys.connectTcp({ netns: ns, host: b.ip, port: 8080, mark: 0x539, timeoutMs: 5000 });
        sys.closeFd(fd);
        await target.waitForOutput(new RegExp(`conn port=8080 peer=${a.ip.replaceAll(".", "\\.")}`));
        // The same connect without the mark is captured (A's 15001 answers, B sees nothing new).
        const before = target.stdout();
        expect(await fetchLine(a, b.ip, 8080)).toEqual({ code: 0, out: `port=15001 peer=${a.ip}`, err: "" });
        expect(target.stdout()).toBe(before);
      } finally {
        ns.close();
        await server.stop();
        await target.stop();
      }
    }, T);

    test("remove: no chain, jump, ip rule or route is left; traffic flows uncaptured again", async () => {
      await removePodRules(a.netnsPath);
      await expectClean(a.netnsPath);
      expect(await inspectPodRules(a.netnsPath)).toMatchObject({ complete: false, anyPresent: false, chainsPresent: false, ipRulePresent: false, routePresent: false });
      const target = startServer(b, [8080]);
      try {
        await b.waitForTcpPort(8080);
        expect(await fetchLine(a, b.ip, 8080)).toEqual({ code: 0, out: `port=8080 peer=${a.ip}`, err: "" });
      } finally {
        await target.stop();
      }
    }, T);

    test("remove again (nothing there) succeeds", async () => {
      await removePodRules(a.netnsPath);
      await removePodRules(a.netnsPath, { ipv6: true });
      await expectClean(a.netnsPath);
    }, T);
  });

  describe("options and paths", () => {
    test("DNS capture adds the DNS redirects and the raw table; turning it off removes them", async () => {
      await applyPodRules(b.netnsPath, { dnsCapture: true });
      expect(await savedRules(b.netnsPath)).toBe(EXPECTED_V4_DNS);
      expect((await inspectPodRules(b.netnsPath, { dnsCapture: true })).complete).toBe(true);
      // Inspect against the other configuration reports the difference.
      const other = await inspectPodRules(b.netnsPath);
      expect(other.complete).toBe(false);
      expect(other.problems.join("\n")).toContain("iptables raw: unexpected nshub chains or jumps");
      await applyPodRules(b.netnsPath);
      expect(await savedRules(b.netnsPath)).toBe(EXPECTED_V4);
      await removePodRules(b.netnsPath);
      await expectClean(b.netnsPath);
    }, T);

    test("IPv6 too: ip6tables rules, ip -6 rule and route; removal takes both families", async () => {
      await applyPodRules(b.netnsPath, { ipv6: true });
      expect(await savedRules(b.netnsPath, "ipv4")).toBe(EXPECTED_V4);
      expect(await savedRules(b.netnsPath, "ipv6")).toBe(EXPECTED_V6);
      expect((await ipIn(b.netnsPath, "-6", "rule", "show")).split("\n")).toContain(RULE_LINE);
      expect(await ipIn(b.netnsPath, "-6", "route", "show", "table", "100")).toContain("local default dev lo");
      expect((await inspectPodRules(b.netnsPath, { ipv6: true })).complete).toBe(true);
      const again = await rawSave(b.netnsPath, "ip6tables-nft-save");
      await applyPodRules(b.netnsPath, { ipv6: true });
      expect(await rawSave(b.netnsPath, "ip6tables-nft-save")).toBe(again);
      await removePodRules(b.netnsPath); // ipv6 undefined: IPv6 leftovers are removed too
      await expectClean(b.netnsPath);
    }, T);

    test("netns given as /proc/<pid>/ns/net and as /proc/<agent pid>/fd/<fd>", async () => {
      const sleeper = b.spawn(["sleep", "60"]);
      try {
        // `ip netns exec` enters the pod and then execs sleep under the same pid: until it has,
        // /proc/<pid>/ns/net is still our own namespace.
        await waitForNetnsOf(sleeper.pid, b.netnsPath);
        await applyPodRules(`/proc/${sleeper.pid}/ns/net`);
        expect(await savedRules(b.netnsPath)).toBe(EXPECTED_V4);
        const fd = openSync(b.netnsPath, "r");
        try {
          const viaFd = `/proc/${process.pid}/fd/${fd}`;
          expect((await inspectPodRules(viaFd)).complete).toBe(true);
          await applyPodRules(viaFd);
          expect(await savedRules(b.netnsPath)).toBe(EXPECTED_V4);
          await removePodRules(viaFd);
        } finally {
          closeSync(fd);
        }
        await expectClean(b.netnsPath);
      } finally {
        await sleeper.stop();
      }
    }, T);

    test("legacy backend: same rules, same save output, clean removal", async () => {
      await applyPodRules(b.netnsPath, { backend: "legacy" });
      await applyPodRules(b.netnsPath, { backend: "legacy" });
      expect(await savedRules(b.netnsPath, "ipv4", "legacy")).toBe(EXPECTED_V4);
      expect(await rawSave(b.netnsPath, "iptables-nft-save")).not.toContain("NSHUB");
      expect((await inspectPodRules(b.netnsPath, { backend: "legacy" })).complete).toBe(true);
      await removePodRules(b.netnsPath, { backend: "legacy" });
      await expectClean(b.netnsPath);
    }, T);
  });

  test("backend detection (read-only, in our own namespace) picks nft on this Debian 12 machine", async () => {
    expect(await detectIptablesBackend()).toBe(process.env.NSHUB_IPTABLES_BACKEND === "legacy" ? "legacy" : "nft");
  });

  describe("failures leave nothing behind", () => {
    test("a netns path that does not exist: error names the step and the path", async () => {
      const bogus = `/var/run/netns/rpod-missing-${randomBytes(3).toString("hex")}`;
      const err = (await applyPodRules(bogus).catch((e) => e)) as RulesError;
      expect(err).toBeInstanceOf(RulesError);
      expect(err.reason).toBe("netns-missing");
      expect(err.step).toBe("open netns");
      expect(err.message).toContain(bogus);
      const rm = (await removePodRules(bogus).catch((e) => e)) as RulesError;
      expect(rm.reason).toBe("netns-missing");
    }, T);

    test("a file that is not a netns: refused before anything runs, error names step and path", async () => {
      const err = (await applyPodRules("/etc/hostname").catch((e) => e)) as RulesError;
      expect(err).toBeInstanceOf(RulesError);
      expect(err.reason).toBe("invalid-input");
      expect(err.step).toBe("open netns");
      expect(err.netns).toBe("/etc/hostname");
      expect(err.message).toContain("in netns /etc/hostname");
      expect(err.message).toContain("is not a network namespace");
    }, T);

    test("a netns that vanished (deleted namespace, exited process): netns-missing", async () => {
      const name = `rpodx-${randomBytes(3).toString("hex")}`;
      await runOrThrow(["ip", "netns", "add", name]);
      await runOrThrow(["ip", "netns", "del", name]);
      for (const gone of [`/var/run/netns/${name}`, await exitedProcessNetns()]) {
        for (const op of [applyPodRules, removePodRules, inspectPodRules]) {
          const err = (await op(gone).catch((e) => e)) as RulesError;
          expect(err).toBeInstanceOf(RulesError);
          expect({ gone, reason: err.reason, step: err.step, netns: err.netns }).toEqual({ gone, reason: "netns-missing", step: "open netns", netns: gone });
        }
      }
    }, T);

    test("our own namespace is refused (a path that does not name a pod yet must not reach the node)", async () => {
      for (const own of ["/proc/self/ns/net", `/proc/${process.pid}/ns/net`]) {
        for (const op of [applyPodRules, removePodRules]) {
          const err = (await op(own).catch((e) => e)) as RulesError;
          expect(err).toBeInstanceOf(RulesError);
          expect(err.reason).toBe("invalid-input");
          expect(err.message).toContain("the agent's own network namespace");
        }
      }
      // Reading is harmless: inspect works (and finds nothing of ours).
      expect((await inspectPodRules("/proc/self/ns/net")).anyPresent).toBe(false);
    }, T);

    test("a late step failing (ip -6 route with lo down) undoes everything this call added", async () => {
      // Bare namespace: lo is down, so `ip -6 route replace local ::/0 dev lo` fails after the
      // iptables (v4 and v6), the v4 rule and route, and the v6 rule went in.
      const ns = await bareNetns();
      const err = (await applyPodRules(ns, { ipv6: true }).catch((e) => e)) as RulesError;
      expect(err).toBeInstanceOf(RulesError);
      expect(err.step).toBe("ip -6 route replace");
      expect(err.message).toContain(`in netns ${ns}`);
      expect(err.stderr).toMatch(/not up|Network is down|No such device/i);
      await expectClean(ns);
    }, T);

    test("…and on a pod that already had the rules, a failed re-apply puts them back as they were", async () => {
      const ns = await bareNetns();
      await applyPodRules(ns); // IPv4 works with lo down
      const before = await savedRules(ns);
      expect(before).toBe(EXPECTED_V4);
      const rulesBefore = await ipIn(ns, "rule", "show");
      const err = (await applyPodRules(ns, { ipv6: true, dnsCapture: true }).catch((e) => e)) as RulesError;
      expect(err.step).toBe("ip -6 route replace");
      // The DNS rules and the raw table's chains were rolled back (nft keeps the emptied raw
      // table itself, which savedRules ignores).
      expect(await savedRules(ns)).toBe(before);
      expect(await ipIn(ns, "rule", "show")).toBe(rulesBefore);
      expect(await rawSave(ns, "ip6tables-nft-save")).not.toContain("NSHUB");
      expect(await ipIn(ns, "-6", "rule", "show")).not.toContain("32764");
      expect((await inspectPodRules(ns)).complete).toBe(true);
      await removePodRules(ns);
      await expectClean(ns);
    }, T);

    test("a failed apply deletes only what it added: an ip rule that was there before stays, once", async () => {
      const ns = await bareNetns();
      await runOrThrow(["nsenter", `--net=${ns}`, "--", "ip", "rule", "add", "fwmark", "0x111/0xfff", "lookup", "100", "pref", "32764"]);
      const rulesBefore = await ipIn(ns, "rule", "show");
      const err = (await applyPodRules(ns, { ipv6: true }).catch((e) => e)) as RulesError;
      expect(err.step).toBe("ip -6 route replace");
      expect(await ipIn(ns, "rule", "show")).toBe(rulesBefore);
      expect(await ipIn(ns, "-6", "rule", "show")).not.toContain("32764");
      expect(await rawSave(ns)).not.toContain("NSHUB");
      // Applied (IPv4) on top of it, twice: still exactly one copy.
      await applyPodRules(ns);
      await applyPodRules(ns);
      const rules = JSON.parse(await ipIn(ns, "-j", "rule", "show")) as Array<{ priority: number }>;
      expect(rules.filter((r) => r.priority === 32764).length).toBe(1);
      await removePodRules(ns);
      await expectClean(ns);
    }, T);

    test("invalid options are rejected before anything runs", async () => {
      const err = (await applyPodRules(a.netnsPath, { inboundPort: 70000 }).catch((e) => e)) as RulesError;
      expect(err.reason).toBe("invalid-input");
      expect(err.message).toContain("inboundPort");
      const bad = (await applyPodRules("relative/path").catch((e) => e)) as RulesError;
      expect(bad.reason).toBe("invalid-input");
      await expectClean(a.netnsPath);
    }, T);
  });

  test("the machine's own namespace was never touched", async () => {
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);
});
