// containerd as the runtime (issue 20): Debian's containerd, runc and ctr, with a CNI
// configuration (/etc/cni/net.d as containerd's own mount namespace sees it:
// test/fixtures/containerd/containerd.ts) that chains dist/nshub-cni after the standard `bridge` +
// `host-local`. Images are built here from Debian's busybox-static and imported with `ctr image
// import` (nothing is pulled). containerd, ctr, the plugins, the agent and the proxy (dist/nshub)
// all run in one virtual node (src/sim); the machine's own network namespace (links, addresses,
// routes, rules, iptables, nft, ipsets) and the paths containerd would write outside its temp
// dirs are compared before and after.
//
// Outside Kubernetes, `ctr run --cni` (recorded by a spy in front of nshub-cni that then execs
// it) sends CNI_ARGS empty (no K8S_POD_*), CNI_CONTAINERID "<containerd namespace>-<container id>",
// CNI_NETNS /proc/<pid>/ns/net on ADD and "" on DEL; `ctr run -d` sends no DEL at all. nshub names
// such a container default/<CNI_CONTAINERID as a DNS name>, its UID the container id
// (src/cni/spec.ts containerPod); the agent's policy enrolls "default/default-web-*".
//
// As kubelet: containerd's CRI plugin on the same socket, called by Debian's python3-grpcio with
// hand-encoded runtime.v1 messages (test/fixtures/containerd/cri.ts): RunPodSandbox's ADD carries
// K8S_POD_* and /var/run/netns/cni-…, StopPodSandbox's DEL the same path, RemovePodSandbox's DEL
// none. The policy enrolls namespace "mesh".
//
// A container's netns stays alive while the agent and the proxy hold it (an fd, the proxy's
// listeners): after its process is gone, the veth pair on the node's bridge disappears only once
// both let go. So "its veth left the bridge" proves the DEL (or the reconcile sweep) went all the
// way through the agent and the proxy. The first pod a proxy serves is the exception (a proxy bug,
// see "the first pod the proxy serves").
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PodState } from "../../src/gen/nshub/agent/v1/agent_pb.ts";
import { Containerd } from "../fixtures/containerd/containerd.ts";
import { CriClient } from "../fixtures/containerd/cri.ts";
import { BUSYBOX, buildBusyboxImage } from "../fixtures/containerd/image.ts";
import { AgentPaths, assertBuilt, CLEAN_STATE, ENROLLED_STATE, eventually, NSHUB, NSHUB_CNI as CNI_PLUGIN, podNetState } from "../fixtures/agent-harness.ts";
import { hostNetState } from "../helpers/host-state.ts";
import { createSim, ipv4InSubnet, randomSubnet, run, subnetsOverlap, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 120_000;
const BUN = process.execPath;
const TOOL = resolve(import.meta.dir, "../fixtures/proxy-tool.ts");
const IMAGE = "nshub.test/busybox:1";
/** The CRI plugin's sandbox ("pause") image: busybox again, whose command sends the pod's traffic. */
const PAUSE_IMAGE = "nshub.test/pause:1";
const PORT = 8080;
/** What the enrolled containers send: 4 MiB of zeros (dd in the container), hashed by the server. */
const SENT = 64 * 65536;
const SENT_SHA256 = new Bun.CryptoHasher("sha256").update(new Uint8Array(SENT)).digest("hex");
const ENV = { ...process.env, NSHUB_CONFIG: undefined, NSHUB_LOG_FORMAT: "json" };

/** The machine's own network state, plus what containerd would leave outside its mount namespace. */
async function hostSnapshot(): Promise<Record<string, string>> {
  const nft = await run(["nft", "-s", "list", "ruleset"]);
  const paths = ["/run/containerd", "/etc/cni", "/opt/cni", "/var/lib/cni", "/var/lib/containerd"].map((p) => `${p}: ${existsSync(p)}`);
  const cniNetns = existsSync("/run/netns") ? readdirSync("/run/netns").filter((n) => n.startsWith("cni-")) : [];
  return { ...(await hostNetState()), nft: `${nft.code}\n${nft.stdout}`, paths: paths.join("\n"), cniNetns: cniNetns.join("\n") };
}

interface SpyCall {
  command: string;
  containerId: string;
  netns: string;
  args: string;
}

interface Sunk {
  peer: string;
  bytes: number;
  sha256: string;
}

netnsDescribe("containerd (ctr run --cni, and the CRI) with nshub-cni chained after bridge + host-local", () => {
  let hostBefore: Record<string, string>;
  let sim: NetSim;
  let server: Pod;
  let serverProc: SimProcess;
  let dir: string;
  let paths: AgentPaths;
  let ctrd: Containerd;
  let agent: SimProcess;
  let proxy: SimProcess;
  let ctrSubnet: string;
  let bridge: string;
  let spyLog: string;
  let ipamDir: string;

  const writeAgentConfig = (reconcileIntervalMs: number) =>
    writeFileSync(
      paths.config,
      [
        "logLevel: info",
        "agent:",
        `  zdsSocket: ${paths.zdsSocket}`,
        `  apiSocket: ${paths.apiSocket}`,
        `  stateFile: ${paths.stateFile}`,
        `  reconcileIntervalMs: ${reconcileIntervalMs}`,
        "  enrollment:",
        "    namespaces:",
        '      include: ["mesh"]',
        "    pods:",
        '      include: ["default/default-web-*"]',
        "cni:",
        `  agentSocket: ${paths.apiSocket}`,
        `  logFile: ${paths.cniLog}`,
        "",
      ].join("\n"),
    );
  const startAgent = async () => {
    const p = ctrd.spawn([NSHUB, "agent", "--config", paths.config], ENV);
    await p.waitForOutput(/agent ready/, 20_000);
    return p;
  };
  /** GET inside the node (the daemons' admin addresses are on its loopback). */
  const get = async (url: string): Promise<{ status: number; body: string }> => {
    const r = await sim.node.exec(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url]);
    const i = r.stdout.lastIndexOf("\n");
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
  };
  const agentMetrics = async () => (await get("http://127.0.0.1:15010/metrics")).body;
  const proxyPods = async () => (JSON.parse((await get("http://127.0.0.1:15000/pods")).body) as { pods: Array<{ uid: string; name: string; namespace: string; ips: string[] }> }).pods;
  const recent = async () =>
    (JSON.parse((await get("http://127.0.0.1:15000/connections?recent")).body) as {
      live: Array<Record<string, any>>;
      recent: Array<Record<string, any>>;
    }).recent;
  const pods = async () => (await paths.client().listPods({})).pods;
  const spy = (): SpyCall[] =>
    existsSync(spyLog)
      ? readFileSync(spyLog, "utf8")
          .split("\n")
          .filter(Boolean)
          .map((l) => {
            const [command, containerId, netns, args] = l.split("\t");
            return { command: command!, containerId: containerId!, netns: netns!, args: args! };
          })
      : [];
  const cniLog = () =>
    existsSync(paths.cniLog)
      ? readFileSync(paths.cniLog, "utf8")
          .split("\n")
          .filter((l) => l.startsWith("{"))
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  /** Names of the links enslaved to the containers' bridge in the node (the containers' host-side veths). */
  const bridgePorts = async () =>
    (await run(["ip", "-n", sim.node.name, "-o", "link", "show", "master", bridge])).stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => /^\d+: ([^@:]+)/.exec(l)?.[1] ?? l);
  /** host-local's allocations for the containers' network (one file per IP in use). */
  const allocated = () => {
    const d = join(ipamDir, `${sim.tag}-ctr`);
    return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
  };
  const probeSet = async () => {
    const r = await sim.node.exec(["ipset", "save", "nshub-inpod-probes-v4"]);
    return r.code !== 0 ? [] : r.stdout.split("\n").filter((l) => l.startsWith("add "));
  };
  /** Who still holds a netns ("net:[inode]"): threads in it, and fds open on it (sockets made in it are not seen). */
  const holders = (ns: string): string[] => {
    const out: string[] = [];
    for (const pid of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
      try {
        for (const tid of readdirSync(`/proc/${pid}/task`)) {
          if (readlinkSync(`/proc/${pid}/task/${tid}/ns/net`) === ns) out.push(`${pid}/${tid} ${readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim()} (in it)`);
        }
        for (const fd of readdirSync(`/proc/${pid}/fd`)) if (readlinkSync(`/proc/${pid}/fd/${fd}`) === ns) out.push(`${pid} fd ${fd}`);
      } catch {
        // gone meanwhile
      }
    }
    return out;
  };
  /**
   * Waits until the bridge has no port but those of `before` (the container's veth left it: the
   * netns it was in was destroyed); the error names who still holds the netns `ns`.
   */
  const vethGone = async (ns: string, before: string[], timeoutMs = 10_000) => {
    const extra = async () => (await bridgePorts()).filter((p) => !before.includes(p));
    try {
      const deadline = Date.now() + timeoutMs;
      while ((await extra()).length > 0) {
        if (Date.now() > deadline) throw new Error("timed out waiting for the container's veth to leave the bridge");
        await Bun.sleep(100);
      }
    } catch (e) {
      throw new Error(`${(e as Error).message}: ${(await extra()).join(", ")} still there; ${ns} held by ${holders(ns).join(", ") || "nobody"}`);
    }
  };
  /** The CRI sandboxes' cgroup parent (/<tag> in every hierarchy): runc leaves it, the test made it. */
  const removeCgroupParent = () => {
    for (const h of readdirSync("/sys/fs/cgroup")) {
      const d = `/sys/fs/cgroup/${h}/${sim.tag}`;
      if (existsSync(d)) rmdirSync(d);
    }
  };
  const ctrRun = (args: string[]) => ctrd.spawn(["ctr", "--address", ctrd.socket, "run", "--cni", "--cgroup", "", ...args], ENV);
  const sunk = (out: string): Sunk => JSON.parse(out.split("\n").find((l) => l.startsWith('{"peer"'))!) as Sunk;

  beforeAll(async () => {
    assertBuilt();
    for (const bin of ["containerd", "ctr", "runc", "containerd-shim-runc-v2", "nft"]) {
      if (!Bun.which(bin)) throw new Error(`${bin} is missing: apt-get install containerd runc nftables (.ci/run installs them)`);
    }
    if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing: apt-get install busybox-static (.ci/run installs it)`);
    hostBefore = await hostSnapshot();
    sim = await createSim({ prefix: "nshc-" });
    // The server: a pod of the sim's own network, not enrolled, reporting each peer's address and
    // the hash of what it received.
    server = await sim.addPod({ name: "server", namespace: "outside" });
    serverProc = server.spawn([BUN, TOOL, "sink", "--port", String(PORT)]);
    await serverProc.waitForOutput(/"listening"/, 20_000);

    dir = mkdtempSync(join(tmpdir(), "nshub-containerd-test-"));
    paths = new AgentPaths();
    writeAgentConfig(60_000);
    do ctrSubnet = randomSubnet();
    while (subnetsOverlap(ctrSubnet, sim.subnet));
    bridge = `${sim.tag}-cb`;
    ipamDir = join(dir, "ipam");
    // nshub-cni as ctr runs it, with what ctr passed written down first.
    spyLog = join(dir, "cni-calls.tsv");
    const spyBin = join(dir, "nshub-cni-spy");
    writeFileSync(spyBin, `#!/bin/sh\nprintf '%s\\t%s\\t%s\\t%s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "\${CNI_NETNS-(unset)}" "\${CNI_ARGS-(unset)}" >> '${spyLog}'\nexec '${CNI_PLUGIN}' "$@"\n`);
    chmodSync(spyBin, 0o755);
    const ctrdDir = join(dir, "containerd");
    ctrd = await Containerd.start({
      dir: ctrdDir,
      // The CRI plugin on (as Debian ships it), for the RunPodSandbox case: no oom_score_adj below
      // containerd's own (this machine's root lacks CAP_SYS_RESOURCE: runc's "failed to update
      // /proc/self/oom_score_adj" otherwise), no AppArmor, its CNI from the same dirs as ctr's.
      disabledPlugins: [],
      extraConfig: [
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = ${JSON.stringify(PAUSE_IMAGE)}`,
        "  restrict_oom_score_adj = true",
        "  disable_apparmor = true",
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        `    bin_dir = ${JSON.stringify(join(ctrdDir, "cni-bin"))}`,
        '    conf_dir = "/etc/cni/net.d"',
        "    max_conf_num = 1",
      ].join("\n"),
      netnsPath: sim.node.netnsPath,
      plugins: { "nshub-cni": spyBin, bridge: "/usr/lib/cni/bridge", "host-local": "/usr/lib/cni/host-local", loopback: "/usr/lib/cni/loopback" },
      conflist: {
        cniVersion: "1.0.0",
        name: `${sim.tag}-ctr`,
        plugins: [
          {
            type: "bridge",
            bridge,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: { type: "host-local", ranges: [[{ subnet: ctrSubnet }]], routes: [{ dst: "0.0.0.0/0" }], dataDir: ipamDir },
          },
          { type: "nshub-cni", agentSocket: paths.apiSocket, logFile: paths.cniLog, logLevel: "debug" },
        ],
      },
    });
    agent = await startAgent();
    proxy = ctrd.spawn([NSHUB, "proxy", "--config", paths.config, "--zds-socket", paths.zdsSocket, "--admin-socket", join(dir, "proxy-admin.sock")], ENV);
    await eventually(async () => (await get("http://127.0.0.1:15021/healthz/ready")).status === 200, "the proxy to be ready", 20_000);
    const image = await buildBusyboxImage(mkdtempSync(join(dir, "image-")), IMAGE);
    await ctrd.ctrOrThrow(["images", "import", image.archive]);
    expect((await ctrd.ctrOrThrow(["images", "ls", "-q"])).stdout.trim()).toBe(IMAGE);
  }, T);

  afterAll(async () => {
    // The daemons run in containerd's mount namespace too: out of it first.
    await proxy?.stop(5_000);
    await agent?.stop(5_000);
    if (ctrd) {
      const forced = await ctrd.stop();
      if (forced.length > 0) console.error(`containerd teardown had to force: ${forced.join("; ")}\n${ctrd.log().slice(-3000)}`);
    }
    if (sim) {
      try {
        removeCgroupParent();
      } catch (e) {
        console.error(`cgroup parent /${sim.tag}: ${(e as Error).message}`);
      }
    }
    await sim?.destroy();
    paths?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
    // The machine's own namespace and files are exactly as before.
    if (hostBefore) expect(await hostSnapshot()).toEqual(hostBefore);
  }, T);

  describe("the first pod the proxy serves", () => {
    let link = "";

    test("ctr run --rm --cni web-0: enrolled, then its DEL removes it from the agent and the proxy", async () => {
      expect(await bridgePorts()).toEqual([]);
      const r = await ctrd.ctr(["run", "--rm", "--cni", "--cgroup", "", IMAGE, "web-0", "readlink", "/proc/self/ns/net"], { env: ENV });
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
      link = r.stdout.trim();
      expect(spy().map((c) => [c.command, c.containerId, c.args])).toEqual([
        ["ADD", "default-web-0", ""],
        ["DEL", "default-web-0", ""],
      ]);
      expect(cniLog().find((l) => l.command === "ADD" && l.uid === "default-web-0")?.msg).toBe("pod enrolled");
      expect(await pods()).toEqual([]);
      await eventually(async () => (await proxyPods()).length === 0, "the proxy to drop the pod");
    }, T);

    // The proxy's splice relay threads used to be born inside the first pod's netns window and
    // kept that netns (and its veth on the bridge) alive until the proxy exited; they now start
    // before the proxy enters a pod's netns (src/proxy/pod.ts).
    test("its netns is released once the agent and the proxy let go (the veth leaves the bridge)", async () => {
      await vethGone(link, [], 3_000);
    }, T);
  });

  describe("ctr run --rm --cni: enrolled, captured, and removed by a DEL without CNI_NETNS", () => {
    let runProc: SimProcess;
    let portsBefore: string[] = [];
    let podIp = "";
    let netnsPath = "";
    let netnsLink = "";

    test("the container is the pod default/default-web-1 (uid = CNI_CONTAINERID), enrolled before it starts", async () => {
      portsBefore = await bridgePorts();
      // dd → nc: 4 MiB to the server, half-close, the server's report; then the container idles.
      runProc = ctrRun(["--rm", IMAGE, "web-1", "sh", "-c", `dd if=/dev/zero bs=65536 count=64 2>/dev/null | nc ${server.ip} ${PORT}; echo; echo exchanged; exec sleep 3600`]);
      await runProc.waitForOutput(/exchanged/, 60_000);
      const calls = spy().filter((c) => c.containerId === "default-web-1");
      expect(calls).toHaveLength(1);
      expect(calls[0]).toMatchObject({ command: "ADD", containerId: "default-web-1", args: "" });
      expect(calls[0]!.netns).toMatch(/^\/proc\/\d+\/ns\/net$/);
      netnsPath = calls[0]!.netns;
      netnsLink = readlinkSync(netnsPath);
      const all = await pods();
      expect(all.map((p) => [p.namespace, p.name, p.uid, p.containerId, p.serviceAccount, p.state, p.netnsPath, p.netnsHeld])).toEqual([
        ["default", "default-web-1", "default-web-1", "default-web-1", "default", PodState.ENROLLED, netnsPath, true],
      ]);
      podIp = all[0]!.ips[0]!;
      expect(all[0]!.ips).toEqual([podIp]);
      expect(ipv4InSubnet(podIp, ctrSubnet)).toBe(true);
      expect(all[0]!.reason).toBe("rules in place; a proxy acked the pod");
      // The rules inside the container's netns, its IP in the node's probe set, the proxy serves it.
      expect(await podNetState(netnsPath)).toEqual(ENROLLED_STATE);
      expect(await probeSet()).toEqual([`add nshub-inpod-probes-v4 ${podIp} comment "default-web-1"`]);
      expect((await proxyPods()).map((p) => [p.uid, p.namespace, p.name, p.ips])).toEqual([["default-web-1", "default", "default-web-1", [podIp]]]);
      const added = cniLog().find((l) => l.command === "ADD" && l.msg === "pod enrolled" && l.uid === "default-web-1");
      expect(added).toMatchObject({ pod: "default/default-web-1", uid: "default-web-1", namedBy: "CNI_CONTAINERID", ips: [podIp] });
    }, T);

    test("its outbound connection went through the proxy: the server saw the container's IP and every byte", async () => {
      expect(sunk(runProc.stdout())).toEqual({ peer: podIp, bytes: SENT, sha256: SENT_SHA256 });
      const recs = (await recent()).filter((r) => r.pod.uid === "default-web-1");
      expect(recs).toHaveLength(1);
      expect(recs[0]).toMatchObject({
        pod: { uid: "default-web-1", name: "default-web-1", namespace: "default" },
        direction: "outbound",
        originalDst: `${server.ip}:${PORT}`,
        upstream: `${server.ip}:${PORT}`,
        bytesSent: SENT,
        state: "closed",
        error: null,
      });
      expect(recs[0]!.source).toStartWith(`${podIp}:`);
      expect(recs[0]!.upstreamLocal).toStartWith(`${podIp}:`);
    }, T);

    test("the container ends: ctr's DEL (CNI_NETNS empty, no CNI_ARGS) reaches the agent, which removes the pod; nothing is left", async () => {
      await ctrd.ctrOrThrow(["tasks", "kill", "-s", "SIGKILL", "web-1"]);
      expect(await runProc.exited).toBe(137);
      const calls = spy().filter((c) => c.containerId === "default-web-1");
      expect(calls).toHaveLength(2);
      expect(calls[1]).toEqual({ command: "DEL", containerId: "default-web-1", netns: "", args: "" });
      const del = cniLog().find((l) => l.command === "DEL" && l.msg === "pod deleted" && l.uid === "default-web-1");
      expect(del).toMatchObject({ pod: "default/default-web-1", uid: "default-web-1", reason: "pod default/default-web-1 removed (was enrolled)" });
      expect(await pods()).toEqual([]);
      expect(paths.state()).toEqual([]);
      expect(await agentMetrics()).toContain('nshub_agent_cni_requests_total{method="PodDelete",result="deleted"} 2'); // web-0, web-1
      expect(await probeSet()).toEqual([]);
      await eventually(async () => (await proxyPods()).length === 0, "the proxy to drop the pod");
      // The netns went away with the last holder: its veth left the bridge, host-local freed the IP.
      await vethGone(netnsLink, portsBefore);
      expect(existsSync(netnsPath)).toBe(false);
      expect(allocated()).toEqual([]);
      expect((await ctrd.ctrOrThrow(["containers", "ls", "-q"])).stdout).toBe("");
      expect(readdirSync("/sys/fs/cgroup/pids").filter((d) => d.startsWith("web-"))).toEqual([]);
      expect(await agentMetrics()).toContain('nshub_agent_pods_reconciled_total{reason="netns_gone"} 0');
    }, T);
  });

  test("a container the policy does not enroll: told to the agent, not captured, forgotten on DEL", async () => {
    const before = spy().length;
    const portsBefore = await bridgePorts();
    const r = await ctrd.ctr(["run", "--rm", "--cni", "--cgroup", "", IMAGE, "plain-1", "sh", "-c", `readlink /proc/self/ns/net; ip -4 -o addr show eth0; echo plain | nc ${server.ip} ${PORT}; echo`], { env: ENV });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    const ip = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(r.stdout)![1]!;
    expect(ipv4InSubnet(ip, ctrSubnet)).toBe(true);
    // Not captured: the server saw it directly, the proxy has no record of it.
    expect(sunk(r.stdout)).toEqual({ peer: ip, bytes: 6, sha256: new Bun.CryptoHasher("sha256").update("plain\n").digest("hex") });
    expect((await recent()).filter((x) => x.pod.uid === "default-plain-1")).toEqual([]);
    const calls = spy().slice(before);
    expect(calls.map((c) => [c.command, c.containerId, c.args])).toEqual([
      ["ADD", "default-plain-1", ""],
      ["DEL", "default-plain-1", ""],
    ]);
    const added = cniLog().find((l) => l.command === "ADD" && l.uid === "default-plain-1");
    expect(added).toMatchObject({ msg: "pod not enrolled", reason: "no agent.enrollment include pattern matches pod default/default-plain-1" });
    expect(cniLog().find((l) => l.command === "DEL" && l.uid === "default-plain-1")).toMatchObject({ msg: "pod deleted", reason: "pod default/default-plain-1 removed (was not-enrolled)" });
    expect(await pods()).toEqual([]);
    await vethGone(r.stdout.split("\n")[0]!, portsBefore);
    expect(allocated()).toEqual([]);
  }, T);

  test("ctr run -d sends no DEL at all: the agent keeps the pod across its own restart, then its reconcile sweep removes it once the netns is gone", async () => {
    const before = spy().length;
    const portsBefore = await bridgePorts();
    const r = await ctrd.ctr(["run", "-d", "--cni", "--cgroup", "", IMAGE, "web-2", "sleep", "3600"], { env: ENV });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    const [p] = await pods();
    expect([p?.uid, p?.state]).toEqual(["default-web-2", PodState.ENROLLED]);
    const netns = p!.netnsPath;
    const link = readlinkSync(netns);
    expect(await podNetState(netns)).toEqual(ENROLLED_STATE);

    // An agent restart (now with a short sweep interval): the pod is found again from the state file
    // and its /proc/<pid>/ns/net path, and stays served.
    writeAgentConfig(500);
    await agent.stop(5_000);
    agent = await startAgent();
    const again = await pods();
    expect(again.map((x) => [x.uid, x.state, x.netnsPath, x.netnsHeld])).toEqual([["default-web-2", PodState.ENROLLED, netns, true]]);
    expect(await podNetState(netns)).toEqual(ENROLLED_STATE);
    expect((await proxyPods()).map((x) => x.uid)).toEqual(["default-web-2"]);

    // The container goes away the ctr way: kill, delete the task, delete the container. No CNI DEL.
    await ctrd.ctrOrThrow(["tasks", "kill", "-s", "SIGKILL", "web-2"]);
    await eventually(async () => /STOPPED/.test((await ctrd.ctr(["tasks", "ls"])).stdout), "the task to stop");
    await ctrd.ctrOrThrow(["tasks", "delete", "web-2"]);
    await ctrd.ctrOrThrow(["containers", "delete", "web-2"]);
    expect(spy().slice(before).map((c) => c.command)).toEqual(["ADD"]);
    await eventually(async () => (await pods()).length === 0, "the sweep to remove the pod", 20_000);
    expect(await agentMetrics()).toContain('nshub_agent_pods_reconciled_total{reason="netns_gone"} 1');
    expect(paths.state()).toEqual([]);
    expect(await probeSet()).toEqual([]);
    await eventually(async () => (await proxyPods()).length === 0, "the proxy to drop the pod");
    await vethGone(link, portsBefore);
    // Without a DEL, host-local keeps the address: that is ctr's doing (it never calls DEL for -d).
    expect(allocated()).toHaveLength(1);
  }, T);

  describe("CRI: RunPodSandbox over containerd's socket, as kubelet (Python grpcio, hand-encoded runtime.v1)", () => {
    let cri: CriClient;
    let sandbox = "";
    let podIp = "";
    let netnsPath = "";
    let nsLink = "";
    let portsBefore: string[] = [];
    const uid = "5c1b6a9e-2f0d-4c3b-9a61-0d2e3f4a5b6c";

    test("the sandbox's CNI ADD carries kubelet's K8S_POD_* and CNI_NETNS /var/run/netns/cni-…: enrolled as mesh/web-cri", async () => {
      cri = new CriClient(ctrd.socket);
      expect(await cri.version()).toMatchObject({ runtimeName: "containerd", runtimeApiVersion: "v1" });
      // The sandbox image's command is the pod's traffic (the sandbox's process starts after the
      // CNI ADD): 4 MiB to the server, then it idles as a pause container does.
      const image = await buildBusyboxImage(mkdtempSync(join(dir, "pause-")), PAUSE_IMAGE, [
        "/bin/sh",
        "-c",
        `dd if=/dev/zero bs=65536 count=64 2>/dev/null | nc ${server.ip} ${PORT} >/dev/null; exec sleep 3600`,
      ]);
      await ctrd.ctrOrThrow(["-n", "k8s.io", "images", "import", image.archive]);
      // Nothing is pulled: the CRI plugin knows the image before the sandbox asks for it.
      await eventually(async () => (await cri.imageStatus(PAUSE_IMAGE)) !== "", "the CRI plugin to know the sandbox image");
      portsBefore = await bridgePorts();
      const before = spy().length;
      sandbox = await cri.runPodSandbox({ name: "web-cri", namespace: "mesh", uid, cgroupParent: `/${sim.tag}` });
      expect(sandbox).toMatch(/^[0-9a-f]{64}$/);
      const calls = spy().slice(before);
      // (containerd writes CNI_ARGS from a Go map: in any order.)
      expect(calls.map((c) => [c.command, c.containerId, c.args.split(";").sort()])).toEqual([
        ["ADD", sandbox, ["IgnoreUnknown=1", `K8S_POD_INFRA_CONTAINER_ID=${sandbox}`, "K8S_POD_NAME=web-cri", "K8S_POD_NAMESPACE=mesh", `K8S_POD_UID=${uid}`]],
      ]);
      netnsPath = calls[0]!.netns;
      expect(netnsPath).toMatch(/^\/var\/run\/netns\/cni-[0-9a-f-]+$/);
      const st = await cri.podSandboxStatus(sandbox);
      expect(st.state).toBe(0); // SANDBOX_READY
      podIp = st.ip;
      expect(ipv4InSubnet(podIp, ctrSubnet)).toBe(true);
      const [p, ...rest] = await pods();
      expect(rest).toEqual([]);
      expect([p?.namespace, p?.name, p?.uid, p?.containerId, p?.state, p?.netnsPath, p?.ips]).toEqual(["mesh", "web-cri", uid, sandbox, PodState.ENROLLED, netnsPath, [podIp]]);
      nsLink = `net:[${p!.netnsInode}]`;
      expect(await podNetState(`/proc/${JSON.parse(st.info.info!).pid}/ns/net`)).toEqual(ENROLLED_STATE);
    }, T);

    test("its traffic went through the proxy: the server saw the pod's IP and every byte", async () => {
      await serverProc.waitForOutput(new RegExp(`"peer":"${podIp.replace(/\./g, "\\.")}"`), 30_000);
      const line = serverProc.stdout().split("\n").find((l) => l.startsWith(`{"peer":"${podIp}"`))!;
      expect(JSON.parse(line)).toEqual({ peer: podIp, bytes: SENT, sha256: SENT_SHA256 });
      const recs = (await recent()).filter((r) => r.pod.uid === uid);
      expect(recs.map((r) => [r.pod.name, r.pod.namespace, r.direction, r.originalDst, r.bytesSent, r.error])).toEqual([["web-cri", "mesh", "outbound", `${server.ip}:${PORT}`, SENT, null]]);
    }, T);

    test("StopPodSandbox: DEL with the netns path removes the pod; RemovePodSandbox's DEL finds nothing; nothing is left", async () => {
      const before = spy().length;
      await cri.stopPodSandbox(sandbox);
      expect(await pods()).toEqual([]);
      await eventually(async () => (await proxyPods()).length === 0, "the proxy to drop the pod");
      await vethGone(nsLink, portsBefore);
      await cri.removePodSandbox(sandbox);
      const calls = spy().slice(before);
      // RemovePodSandbox runs DEL again, without CNI_NETNS (the netns is gone by then), as ctr's DEL.
      expect(calls.map((c) => [c.command, c.netns])).toEqual([
        ["DEL", netnsPath],
        ["DEL", ""],
      ]);
      const dels = cniLog().filter((l) => l.command === "DEL" && l.uid === uid && l.msg !== "DEL done");
      expect(dels.map((l) => l.reason)).toEqual(["pod mesh/web-cri removed (was enrolled)", `pod ${uid} is not known to the agent: nothing to delete`]);
      expect(allocated().filter((ip) => ip === podIp)).toEqual([]);
      // The sandbox's netns mount is gone (in containerd's mount namespace, where it was).
      expect((await run(ctrd.inside(["ls", "-A", "/var/run/netns"]))).stdout).toBe("");
      expect((await ctrd.ctrOrThrow(["-n", "k8s.io", "containers", "ls", "-q"])).stdout).toBe("");
      // runc removed the sandbox's cgroup; its parent is the test's to remove.
      expect(readdirSync(`/sys/fs/cgroup/pids/${sim.tag}`)).not.toContain(sandbox);
      removeCgroupParent();
    }, T);
  });

  test("teardown: containerd stops with nothing to force; no process is left in its mount namespace", async () => {
    expect((await ctrd.ctrOrThrow(["containers", "ls", "-q"])).stdout).toBe("");
    await proxy.stop(5_000);
    expect(await proxy.exited).toBe(0);
    await agent.stop(5_000);
    expect(await agent.exited).toBe(0);
    expect(await ctrd.stop()).toEqual([]);
    // With the proxy gone, web-0's netns (see the known bug above) is released too: no veth is left.
    await eventually(async () => (await bridgePorts()).length === 0, "every veth to leave the bridge");
    // No cgroup of a container or sandbox is left in any hierarchy.
    for (const h of readdirSync("/sys/fs/cgroup")) {
      expect(readdirSync(`/sys/fs/cgroup/${h}`).filter((d) => d === sim.tag || /^(web|plain)-\d$/.test(d))).toEqual([]);
    }
    expect(ctrd.processesInMountNs()).toEqual([]);
    expect(ctrd.shimPids()).toEqual([]);
    expect(await podNetState(sim.node.netnsPath).then((s) => s.table100)).toEqual(CLEAN_STATE.table100);
  }, T);
});
