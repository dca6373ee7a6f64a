// The host-side probe rule (ipset + POSTROUTING SNAT), run in a netsim NODE namespace through
// HostProbeRules' `netnsPath` option — never in the machine's own namespace, which is
// snapshotted before and after and must be unchanged. Includes a real probe: a connection from
// a node-local socket to an enrolled pod arrives from 169.254.7.127 and is not captured, while
// the same connection from another pod is.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { statSync } from "node:fs";
import { netnsDescribe } from "../helpers/root.ts";
import { createSim, subnetInfo, type NetSim, type Pod } from "../helpers/netsim.ts";
import { HostProbeRules, RulesError, applyPodRules, removePodRules } from "../../src/agent/rules/index.ts";
import { hostNetState as rootSnapshot } from "../helpers/host-state.ts";

const T = 60_000;
const SET = "nshub-inpod-probes-v4";
const SNAT_RULE = "-A NSHUB_POSTRT -p tcp -m owner --socket-exists -m set --match-set nshub-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127";


/** Same server as in rules-pod.test.ts: one line "port=<p> peer=<ip>" per connection. */
const SERVER_JS = `
for (const port of (process.env.LISTEN_PORTS ?? "").split(",").map(Number)) {
  Bun.listen({ hostname: "0.0.0.0", port, socket: {
    open(s) { console.log("conn port=" + port + " peer=" + s.remoteAddress); s.end("port=" + port + " peer=" + s.remoteAddress + "\\n"); },
    data() {},
  } });
}
console.log("listening " + process.env.LISTEN_PORTS);
`;

netnsDescribe("host probe rule (ipset + POSTROUTING SNAT) in a node namespace", () => {
  let rootBefore: Record<string, string>;
  let sim: NetSim;
  let a: Pod;
  let b: Pod;
  let host: HostProbeRules;

  const inNode = async (...argv: string[]) => (await sim.node.execOrThrow(argv)).stdout;
  const postrouting = async (family: "" | "6" = "") => (await inNode(`ip${family}tables`, "-t", "nat", "-S", "POSTROUTING")).split("\n").filter(Boolean);

  beforeAll(async () => {
    rootBefore = await rootSnapshot();
    sim = await createSim({ prefix: "rhst-" });
    a = await sim.addPod({ name: "probe-a" });
    b = await sim.addPod({ name: "probe-b" });
    host = new HostProbeRules({ netnsPath: sim.node.netnsPath });
  }, T);

  afterAll(async () => {
    await host?.teardown().catch(() => undefined);
    await sim?.destroy();
    expect(await rootSnapshot()).toEqual(rootBefore);
  }, T);

  describe("IPv4", () => {
    test("setup + addPod: the jump is POSTROUTING's first rule, the set holds the IP with the uid", async () => {
      // Something else already in POSTROUTING: ours must still end up first.
      await inNode("iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "udp", "-j", "ACCEPT");
      await host.setup();
      await host.addPod(a.ip, a.uid);
      expect(await postrouting()).toEqual(["-P POSTROUTING ACCEPT", "-A POSTROUTING -j NSHUB_POSTRT", "-A POSTROUTING -p udp -j ACCEPT"]);
      expect((await inNode("iptables", "-t", "nat", "-S", "NSHUB_POSTRT")).split("\n").filter(Boolean)).toEqual(["-N NSHUB_POSTRT", SNAT_RULE]);
      const list = await inNode("ipset", "list", SET);
      expect(list).toContain("Type: hash:ip");
      expect(list).toContain(`${a.ip} comment "${a.uid}"`);
      expect(await host.list()).toEqual([{ ip: a.ip, uid: a.uid }]);
      expect(await host.inspect()).toEqual({ setPresent: true, chainPresent: true, ruleMatches: true, jumpFirst: true, complete: true, anyPresent: true, problems: [] });
    }, T);

    test("setup is idempotent, and moves the jump back to position 1 when something was inserted before it", async () => {
      const before = await inNode("iptables-nft-save", "-t", "nat");
      await host.setup();
      await host.setup();
      const strip = (s: string) => s.split("\n").filter((l) => !l.startsWith("#")).map((l) => l.replace(/\[\d+:\d+\]/g, "")).join("\n");
      expect(strip(await inNode("iptables-nft-save", "-t", "nat"))).toBe(strip(before));
      await inNode("iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-p", "tcp", "-j", "ACCEPT");
      expect((await host.inspect()).jumpFirst).toBe(false);
      await host.setup();
      expect(await postrouting()).toEqual(["-P POSTROUTING ACCEPT", "-A POSTROUTING -j NSHUB_POSTRT", "-A POSTROUTING -p tcp -j ACCEPT", "-A POSTROUTING -p udp -j ACCEPT"]);
      expect((await host.inspect()).complete).toBe(true);
      // The set kept its entries through setup.
      expect(await host.list()).toEqual([{ ip: a.ip, uid: a.uid }]);
    }, T);

    test("removePod with another uid keeps the entry (IP reuse); addPod re-labels", async () => {
      expect(await host.removePod(a.ip, randomUUID())).toBe(false);
      expect(await inNode("ipset", "list", SET)).toContain(`${a.ip} comment "${a.uid}"`);
      const newer = randomUUID();
      await host.addPod(a.ip, newer); // the IP now belongs to a newer pod
      expect(await host.list()).toEqual([{ ip: a.ip, uid: newer }]);
      expect(await host.removePod(a.ip, a.uid)).toBe(false); // the old pod's late DEL
      expect(await host.list()).toEqual([{ ip: a.ip, uid: newer }]);
      expect(await host.removePod(a.ip, newer)).toBe(true);
      expect(await host.list()).toEqual([]);
      expect(await host.removePod(a.ip, newer)).toBe(false); // already gone: fine
      await host.addPod(a.ip, a.uid);
      await host.addPod(a.ip, a.uid); // idempotent
      expect(await host.list()).toEqual([{ ip: a.ip, uid: a.uid }]);
    }, T);

    test("a node-local connection to an enrolled pod arrives from 169.254.7.127, uncaptured; from a pod it is captured", async () => {
      await applyPodRules(a.netnsPath);
      const server = a.spawn([process.execPath, "-e", SERVER_JS], { env: { ...process.env, LISTEN_PORTS: "8080,15006" } });
      const fetch = async (from: { exec: Pod["exec"] }) => {
        const r = await from.exec(["socat", "-t", "2", "-T", "5", "-u", `TCP:${a.ip}:8080,connect-timeout=3`, "STDOUT"], { timeoutMs: 15_000 });
        return { code: r.code, out: r.stdout.trim(), err: r.stderr.trim() };
      };
      try {
        await a.waitForTcpPort(8080);
        await a.waitForTcpPort(15006);
        // kubelet-like probe from the node: SNATed, accepted by the in-pod probe rule.
        expect(await fetch(sim.node)).toEqual({ code: 0, out: "port=8080 peer=169.254.7.127", err: "" });
        // Another pod: captured to the proxy's inbound port, source kept.
        expect(await fetch(b)).toEqual({ code: 0, out: `port=15006 peer=${b.ip}`, err: "" });
        // Pod removed from the set: the node's connection is no longer SNATed, so it is captured.
        expect(await host.removePod(a.ip, a.uid)).toBe(true);
        const gateway = subnetInfo(sim.subnet).gateway;
        expect(await fetch(sim.node)).toEqual({ code: 0, out: `port=15006 peer=${gateway}`, err: "" });
        await host.addPod(a.ip, a.uid);
        expect(await fetch(sim.node)).toEqual({ code: 0, out: "port=8080 peer=169.254.7.127", err: "" });
      } finally {
        await server.stop();
        await removePodRules(a.netnsPath);
      }
    }, T);

    test("reset: the set holds exactly the given pods, swapped in at once", async () => {
      const pods = [
        { ip: b.ip, uid: b.uid },
        { ip: "10.250.0.9", uid: "uid-gone-pod" },
        { ip: "10.250.0.9", uid: "uid-newer-pod" }, // same IP later in the list wins
      ];
      await host.reset(pods);
      const got = (await host.list()).sort((x, y) => x.ip.localeCompare(y.ip));
      expect(got).toEqual([{ ip: b.ip, uid: b.uid }, { ip: "10.250.0.9", uid: "uid-newer-pod" }].sort((x, y) => x.ip.localeCompare(y.ip)));
      expect(await inNode("ipset", "list", "-n")).not.toContain("-tmp");
      expect((await host.inspect()).complete).toBe(true); // the rule still references the (swapped) set
      await host.reset([]);
      expect(await host.list()).toEqual([]);
    }, T);

    test("bad input is rejected before anything runs", async () => {
      await host.addPod(b.ip, b.uid);
      for (const [ip, uid] of [
        ["10.0.0.300", "u"],
        ["example.com", "u"],
        [`${b.ip} comment x`, "u"],
        [b.ip, 'x" y'],
        [b.ip, ""],
        [b.ip, "-exist"],
      ] as const) {
        const e = (await host.addPod(ip, uid).catch((x) => x)) as RulesError;
        expect({ ip, uid, reason: e.reason }).toEqual({ ip, uid, reason: "invalid-input" });
      }
      const e = (await host.reset([{ ip: b.ip, uid: b.uid }, { ip: "nope", uid: "u" }]).catch((x) => x)) as RulesError;
      expect(e).toBeInstanceOf(RulesError);
      expect(await host.list()).toEqual([{ ip: b.ip, uid: b.uid }]); // unchanged
      expect(() => new HostProbeRules({ netnsPath: "relative" })).toThrow(RulesError);
      expect(() => new HostProbeRules({ probeAddress: "::1" })).toThrow(/probeAddress must be an IPv4/);
    }, T);

    test("adds that arrive together (many pods starting at once) all land with their uid, a later add of the same IP wins; a failed write fails each add with its own error", async () => {
      await host.reset([]);
      const pods = Array.from({ length: 30 }, (_, i) => ({ ip: `10.251.0.${i + 1}`, uid: `uid-batch-${i + 1}` }));
      await Promise.all([...pods.map((p) => host.addPod(p.ip, p.uid)), host.addPod("10.251.0.1", "uid-batch-late")]);
      const byIp = (x: { ip: string }, y: { ip: string }) => x.ip.localeCompare(y.ip);
      const want = pods.map((p) => (p.ip === "10.251.0.1" ? { ip: p.ip, uid: "uid-batch-late" } : p));
      expect((await host.list()).sort(byIp)).toEqual(want.sort(byIp));
      await host.reset([]);

      // A set that does not exist: the batch's restore fails, then each add is tried alone.
      const missing = new HostProbeRules({ netnsPath: sim.node.netnsPath, setName: "nshub-test-missing", setNameV6: "nshub-test-missing6" });
      const results = await Promise.allSettled(["10.251.1.1", "10.251.1.2", "10.251.1.3"].map((ip, i) => missing.addPod(ip, `uid-m-${i}`)));
      for (const [i, r] of results.entries()) {
        expect(r.status).toBe("rejected");
        const e = (r as PromiseRejectedResult).reason as RulesError;
        expect({ step: e.step, reason: e.reason, names: e.message.includes(`10.251.1.${i + 1}`) }).toEqual({ step: "ipset add", reason: "tool-failed", names: true });
      }
      expect(await host.list()).toEqual([]);
    }, T);

    test("teardown removes the jump, the chain and the set; twice is fine", async () => {
      await host.teardown();
      await host.teardown();
      const save = await inNode("iptables-nft-save");
      expect(save).not.toContain("NSHUB");
      expect(await postrouting()).toEqual(["-P POSTROUTING ACCEPT", "-A POSTROUTING -p tcp -j ACCEPT", "-A POSTROUTING -p udp -j ACCEPT"]);
      expect((await inNode("ipset", "list", "-n")).trim()).toBe("");
      expect((await host.inspect()).anyPresent).toBe(false);
      expect(await host.removePod(b.ip, b.uid)).toBe(false); // no set: nothing to remove
      // Clean up what the test itself added.
      await inNode("iptables", "-t", "nat", "-F", "POSTROUTING");
    }, T);
  });

  test("IPv6 too: a -v6 set and the ip6tables rule; IPv6 pod IPs go there", async () => {
    const h6 = new HostProbeRules({ netnsPath: sim.node.netnsPath, ipv6: true });
    try {
      await h6.setup();
      await h6.addPod("FD00:10::0005", "uid-v6");
      await h6.addPod(a.ip, a.uid);
      expect((await postrouting("6"))[1]).toBe("-A POSTROUTING -j NSHUB_POSTRT");
      expect(await inNode("ip6tables", "-t", "nat", "-S", "NSHUB_POSTRT")).toContain(
        "-A NSHUB_POSTRT -p tcp -m owner --socket-exists -m set --match-set nshub-inpod-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
      );
      expect(await inNode("ipset", "list", "nshub-inpod-probes-v6")).toContain('fd00:10::5 comment "uid-v6"');
      expect((await h6.list()).sort((x, y) => x.ip.localeCompare(y.ip))).toEqual([{ ip: a.ip, uid: a.uid }, { ip: "fd00:10::5", uid: "uid-v6" }].sort((x, y) => x.ip.localeCompare(y.ip)));
      expect((await h6.inspect()).complete).toBe(true);
      expect(await h6.removePod("fd00:10:0::5", "uid-v6")).toBe(true);
      // Without ipv6 an IPv6 pod IP is ignored, not an error.
      const v4only = new HostProbeRules({ netnsPath: sim.node.netnsPath });
      await v4only.addPod("fd00::7", "uid-x");
      expect(await inNode("ipset", "list", "nshub-inpod-probes-v6")).not.toContain("fd00::7");
    } finally {
      await h6.teardown();
    }
    expect(await inNode("ip6tables-nft-save")).not.toContain("NSHUB");
    expect(await inNode("iptables-nft-save")).not.toContain("NSHUB");
    expect((await inNode("ipset", "list", "-n")).trim()).toBe("");
  }, T);

  test("the machine's own namespace was never touched", async () => {
    expect(await rootSnapshot()).toEqual(rootBefore);
    // And the node namespace really is another one (the rules above were not in ours).
    const id = (p: string) => {
      const st = statSync(p);
      return `${st.dev}:${st.ino}`;
    };
    expect(id(sim.node.netnsPath)).not.toBe(id("/proc/self/ns/net"));
  }, T);
});
