// The node proxy relaying real traffic between pods of a virtual node: pods A and B enrolled
// (in-pod rules from src/agent/rules + AddWorkload over a real ZDS socket), C and D not. The
// proxy is a separate `bun src/main.ts proxy` process inside the node's netns; the tests read
// its per-connection records through its admin API (curl inside the node netns). Clients and
// servers are real: socat, curl, iperf3, and test/fixtures/proxy-tool.ts where a test needs a
// half-close followed by a reply, a reset at a chosen moment or a thousand connections at once.
// Timings are printed, never asserted. The whole file runs once per relay kind (proxy.relay).
import { INBOUND_SOURCE_PORTS } from "../../src/proxy/handlers.ts";
import { afterAll, beforeAll, expect, test } from "bun:test";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod, SimProcess } from "../helpers/netsim.ts";
import { createProxyEnv, eventually, socatPeers, type ConnJson, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const GiB = 1 << 30;

// Both relays: splice (the default: a relay thread moves bytes with splice(2)) and userspace (Bun
// sockets) must behave the same on the wire.
for (const relay of ["splice", "userspace"] as const)
netnsDescribe(`proxy (${relay} relay): traffic between pods`, () => {
  let env: ProxyEnv;
  let proxy: ProxyProcess;
  let A: Pod, B: Pod, C: Pod, D: Pod;
  let resetSinkB: SimProcess;
  let ackSinkB: SimProcess;
  let socatB: SimProcess;

  /** Records (live and recently closed) matching `pred`. */
  async function records(pred: (c: ConnJson) => boolean): Promise<ConnJson[]> {
    const { live, recent } = await proxy.connections();
    return [...recent, ...live].filter(pred);
  }

  /** Sink's JSON lines (one per connection). */
  const sinkLines = (p: SimProcess) =>
    p
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l));

  beforeAll(async () => {
    env = await createProxyEnv();
    A = await env.sim.addPod({ name: "client-a" });
    B = await env.sim.addPod({ name: "server-b" });
    C = await env.sim.addPod({ name: "plain-c" });
    D = await env.sim.addPod({ name: "plain-d" });
    await env.enroll(A);
    await env.enroll(B);
    proxy = env.startProxy({ args: ["--relay", relay] });
    await proxy.waitReady();
    env.tool(B, ["sink", "--port", "5001"]);
    env.tool(B, ["echo", "--port", "5002"]);
    resetSinkB = env.tool(B, ["sink", "--port", "5003", "--reset-after", "65536"]);
    ackSinkB = env.tool(B, ["sink", "--port", "5004", "--ack-after", String(1 << 20)]);
    socatB = B.spawn(["socat", "-d", "-d", "TCP-LISTEN:7000,reuseaddr,fork", "PIPE"]);
    env.tool(D, ["sink", "--port", "5001"]);
    for (const port of [5001, 5002, 5003, 5004, 7000]) await B.waitForTcpPort(port);
    await D.waitForTcpPort(5001);
  }, T);

  afterAll(async () => {
    await env?.destroy();
  }, T);

  test("listeners exist inside enrolled pods only, with mark 0x539", async () => {
    for (const pod of [A, B]) {
      const ss = (await pod.execOrThrow(["ss", "-ltnHe"])).stdout;
      for (const port of [15001, 15006]) {
        const line = ss.split("\n").find((l) => l.includes(`:${port} `));
        expect(line).toBeDefined();
        expect(line).toContain("fwmark:0x539");
      }
    }
    for (const ns of [C, D, env.sim.node]) {
      const ports = await ns.listeningTcpPorts();
      expect(ports).not.toContain(15001);
      expect(ports).not.toContain(15006);
    }
  }, T);

  test("keepalive is on for every relay socket: the accepted ones inherit it from the listener, upstreams get it set", async () => {
    // A slow transfer keeps both relays (A's outbound, B's inbound) open while ss looks at them.
    const transfer = env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", String(4 << 20), "--chunk-delay-ms", "300"], T);
    try {
      await eventually(async () => (await records((c) => c.state === "open" && c.originalDst === `${B.ip}:5001`)).length >= 2, 10_000, "both relays open");
      const proxySockets = async (pod: Pod) =>
        (await pod.execOrThrow(["ss", "-Htnop", "state", "established"])).stdout.split("\n").filter((l) => l.includes(`pid=${proxy.pid},`));
      const a = await proxySockets(A); // accepted on :15001, upstream to B:5001
      const b = await proxySockets(B); // accepted on :15006, upstream to the app from A's IP
      expect(a.some((l) => / \S+:15001 /.test(l))).toBe(true);
      expect(b.some((l) => / \S+:15006 /.test(l))).toBe(true);
      expect(a.length).toBeGreaterThanOrEqual(2);
      expect(b.length).toBeGreaterThanOrEqual(2);
      for (const l of [...a, ...b]) expect(l).toContain("timer:(keepalive,");
    } finally {
      await transfer;
    }
  }, T);

  test("A → B: 1 GiB arrives byte-exact through A's outbound and B's inbound listeners; B sees A's IP", async () => {
    // Baseline without the proxy (C → D, neither enrolled), for the printed ratio only.
    let t0 = performance.now();
    const base = await env.toolRun(C, ["send", "--host", D.ip, "--port", "5001", "--bytes", String(GiB)], T);
    const baseSec = (performance.now() - t0) / 1000;
    expect(JSON.parse(base.reply).sha256).toBe(base.sha256);

    t0 = performance.now();
    const r = await env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", String(GiB)], T);
    const sec = (performance.now() - t0) / 1000;
    expect(r.error).toBeUndefined();
    const reply = JSON.parse(r.reply);
    expect(reply.bytes).toBe(GiB);
    expect(reply.sha256).toBe(r.sha256); // hashed by the sender and by the server in B
    expect(reply.peer).toBe(A.ip); // inbound source preservation
    console.log(
      `[proxy] 1 GiB A→B through two relays: ${(1024 / sec).toFixed(0)} MiB/s; direct C→D: ${(1024 / baseSec).toFixed(0)} MiB/s (same tool, same node)`,
    );

    const out = await records((c) => c.pod.uid === A.uid && c.direction === "outbound" && c.originalDst === `${B.ip}:5001` && c.bytesSent === GiB);
    const inb = await records((c) => c.pod.uid === B.uid && c.direction === "inbound" && c.originalDst === `${B.ip}:5001` && c.bytesSent === GiB);
    expect(out).toHaveLength(1);
    expect(inb).toHaveLength(1);
    expect(out[0]!.closeHow).toBe("done");
    expect(inb[0]!.closeHow).toBe("done");
    expect(inb[0]!.source.startsWith(`${A.ip}:`)).toBe(true);
    // The inbound upstream socket was bound to A's IP (transparent), so that is what B saw, with
    // a source port from the proxy's own range (below clients' ephemeral ports: no conntrack
    // tuple shared with a live client connection).
    expect(inb[0]!.upstreamLocal?.startsWith(`${A.ip}:`)).toBe(true);
    const port = Number(inb[0]!.upstreamLocal!.split(":")[1]);
    expect(port).toBeGreaterThanOrEqual(INBOUND_SOURCE_PORTS.min);
    expect(port).toBeLessThanOrEqual(INBOUND_SOURCE_PORTS.max);
    // The outbound leg came from A's own IP (not spoofed) and carried the reply back.
    expect(out[0]!.bytesReceived).toBe(r.reply.length);
  }, T);

  test("iperf3 through the proxy (throughput printed, not asserted)", async () => {
    B.spawn(["iperf3", "-s", "-1", "-p", "5201"]);
    await B.waitForTcpPort(5201);
    const r = await A.execOrThrow(["iperf3", "-c", B.ip, "-p", "5201", "-t", "2", "-J"], { timeoutMs: 30_000 });
    const j = JSON.parse(r.stdout);
    const gbps = j.end.sum_received.bits_per_second / 1e9;
    expect(j.end.sum_received.bytes).toBeGreaterThan(0);
    console.log(`[proxy] iperf3 A→B via proxy: ${gbps.toFixed(2)} Gbit/s`);
    const recs = await records((c) => c.pod.uid === A.uid && c.originalDst === `${B.ip}:5201`);
    expect(recs.length).toBeGreaterThanOrEqual(2); // control + data connection
  }, T);

  test("a non-enrolled pod's traffic is not captured (C → D untouched; C → B only at B's inbound)", async () => {
    // C → D: neither is enrolled; the proxy must not see it at all.
    const cd = await env.toolRun(C, ["send", "--host", D.ip, "--port", "5001", "--bytes", "1000"]);
    expect(JSON.parse(cd.reply).peer).toBe(C.ip);
    expect(await records((c) => c.originalDst.startsWith(`${D.ip}:`) || (c.source.startsWith(`${C.ip}:`) && c.pod.uid !== B.uid))).toHaveLength(0);
    // C → B with socat (a real client): B's inbound captures it, C has no outbound leg.
    const r = await C.execOrThrow(["socat", "-t", "2", "-T", "10", "-", `TCP:${B.ip}:7000`], { stdin: "hello from C\n", timeoutMs: 20_000 });
    expect(r.stdout).toBe("hello from C\n");
    await eventually(async () => (await records((c) => c.source.startsWith(`${C.ip}:`))).length > 0, 5000, "record of C's connection");
    const recs = await records((c) => c.source.startsWith(`${C.ip}:`));
    expect(recs.every((c) => c.pod.uid === B.uid && c.direction === "inbound")).toBe(true);
    expect(recs.some((c) => c.pod.uid === C.uid)).toBe(false);
    expect(socatPeers(socatB.stderr())).toContain(C.ip);
  }, T);

  test("socat echo A → B: the server logs A's IP", async () => {
    const r = await A.execOrThrow(["socat", "-t", "2", "-T", "10", "-", `TCP:${B.ip}:7000`], { stdin: "ping\n", timeoutMs: 20_000 });
    expect(r.stdout).toBe("ping\n");
    expect(socatPeers(socatB.stderr())).toContain(A.ip);
  }, T);

  test("half-close: the client shuts down its write side; the server gets everything and its reply still arrives", async () => {
    // socat: at stdin EOF it shuts down its write side and keeps reading (-t) for the reply,
    // which the sink in B sends only after it saw the FIN.
    const payload = "x".repeat(200_000);
    const r = await A.execOrThrow(["socat", "-t", "10", "-T", "20", "-", `TCP:${B.ip}:5001`], { stdin: payload, timeoutMs: 30_000 });
    const reply = JSON.parse(r.stdout);
    expect(reply.bytes).toBe(payload.length);
    expect(reply.peer).toBe(A.ip);
    // Same with the Bun client (explicit shutdown()), 8 MiB so queues and FIN ordering matter.
    const t = await env.toolRun(A, ["send", "--host", B.ip, "--port", "5001", "--bytes", String(8 << 20)]);
    expect(t.error).toBeUndefined();
    expect(JSON.parse(t.reply)).toMatchObject({ bytes: 8 << 20, sha256: t.sha256 });
  }, T);

  test("a reset by the server reaches the client", async () => {
    const before = sinkLines(resetSinkB).length;
    const r = await env.toolRun(A, ["send", "--host", B.ip, "--port", "5003", "--bytes", String(32 << 20)]);
    expect(["ECONNRESET", "EPIPE"]).toContain(r.error);
    await eventually(() => sinkLines(resetSinkB).length > before, 5000, "sink's reset line");
    await eventually(
      async () => (await records((c) => c.originalDst === `${B.ip}:5003` && c.closeHow === "reset")).length >= 2,
      5000,
      "both legs recorded as reset",
    );
  }, T);

  test("a reset by the client reaches the server", async () => {
    // The client resets only once the server has acknowledged 1 MiB, so the connection surely
    // exists end to end (a reset that beats the connection into B's app would, correctly,
    // leave the app nothing to see).
    const before = sinkLines(ackSinkB).length;
    const r = await env.toolRun(A, ["send", "--host", B.ip, "--port", "5004", "--bytes", String(64 << 20), "--reset-on-reply"]);
    expect(r.reply).toBe("k");
    await eventually(() => sinkLines(ackSinkB).length > before, 20_000, "sink's line");
    const line = sinkLines(ackSinkB).slice(before).find((l) => l.peer === A.ip);
    expect(line).toBeDefined();
    expect(line.error).toBe("ECONNRESET");
    expect(line.sha256).toBeUndefined();
  }, T);

  test("a connect to a closed port in B fails fast for A: reset, not a timeout", async () => {
    // curl's own limit (8 s) is below the proxy's connect timeout (10 s): a hang would show as
    // exit 28. A refused upstream reaches curl as a reset (56) or a failed connect (7).
    const r = await A.exec(["curl", "-sS", "-m", "8", `http://${B.ip}:5999/`], { timeoutMs: 20_000 });
    expect([7, 56]).toContain(r.code);
    const inb = await records((c) => c.pod.uid === B.uid && c.originalDst === `${B.ip}:5999`);
    expect(inb.map((c) => [c.closeHow, c.error])).toContainEqual(["connect_failed", "ECONNREFUSED"]);
  }, T);

  test("self calls are refused: the proxy's own ports on loopback, the pod's IP, or a peer's inbound port", async () => {
    const self = await A.exec(["curl", "-sS", "-m", "8", "http://127.0.0.1:15001/"], { timeoutMs: 20_000 });
    expect([7, 52, 56]).toContain(self.code);
    const peer = await A.exec(["curl", "-sS", "-m", "8", `http://${B.ip}:15006/`], { timeoutMs: 20_000 });
    expect([7, 52, 56]).toContain(peer.code);
    await eventually(async () => {
      const loops = await records((c) => c.closeHow === "refused_loop");
      return loops.some((c) => c.pod.uid === A.uid && c.originalDst === "127.0.0.1:15001") && loops.some((c) => c.pod.uid === B.uid && c.originalDst === `${B.ip}:15006`);
    }, 5000, "refused_loop records");
  }, T);

  test("dual-stack pods: [::] listeners capture IPv4 and IPv6, both with the client's source address", async () => {
    const E = await env.sim.addPod({ name: "dual-e" });
    const F = await env.sim.addPod({ name: "dual-f" });
    const v6 = { [E.name]: "fd00:7::2", [F.name]: "fd00:7::3" };
    for (const p of [E, F]) await p.execOrThrow(["ip", "addr", "add", `${v6[p.name]}/64`, "dev", "eth0", "nodad"]);
    await env.enroll(E, { ipv6: true });
    await env.enroll(F, { ipv6: true });
    try {
      for (const p of [E, F]) {
        const l = (await p.execOrThrow(["ss", "-ltnH"])).stdout;
        expect(l).toMatch(/(\*|\[::\]):15001 /);
        expect(l).toMatch(/(\*|\[::\]):15006 /);
      }
      const echo = F.spawn(["socat", "-d", "-d", "TCP6-LISTEN:7000,reuseaddr,fork,ipv6only=0", "PIPE"]);
      await F.waitForTcpPort(7000);
      for (const dst of [F.ip, `[${v6[F.name]}]`]) {
        const r = await E.execOrThrow(["socat", "-t", "2", "-T", "10", "-", `TCP:${dst}:7000`], { stdin: "dual\n", timeoutMs: 20_000 });
        expect(r.stdout).toBe("dual\n");
      }
      await eventually(async () => (await records((c) => c.pod.uid === F.uid && c.direction === "inbound")).length >= 2, 5000, "F's inbound records");
      const inb = await records((c) => c.pod.uid === F.uid && c.direction === "inbound");
      expect(inb.map((c) => c.upstreamLocal?.replace(/:\d+$/, ""))).toEqual(expect.arrayContaining([E.ip, `[${v6[E.name]}]`]));
      expect(inb.every((c) => c.closeHow === "done")).toBe(true);
      // socat logs v4 peers as v4-mapped IPv6 on its dual-stack socket.
      const peers = echo.stderr();
      expect(peers).toContain("fd00:0007:0000:0000:0000:0000:0000:0002");
      const hex = E.ip.split(".").map((o) => Number(o).toString(16).padStart(2, "0")).join("");
      expect(peers.toLowerCase()).toContain(`ffff:${hex.slice(0, 4)}:${hex.slice(4)}`);
    } finally {
      await env.unenroll(E);
      await env.unenroll(F);
    }
  }, T);

  test("1,000 concurrent connections through one pod all complete", async () => {
    const r = await env.toolRun(A, ["many", "--host", B.ip, "--port", "5002", "--conns", "1000", "--bytes", "4096"], T);
    expect(r.errors).toEqual({});
    expect(r).toMatchObject({ ok: 1000, failed: 0 });
    // The inbound legs (those still in the proxy's ring of 1,024 recent records, which also
    // holds A's outbound legs) kept A's IP and took source ports from the proxy's range.
    const legs = await records((c) => c.pod.uid === B.uid && c.direction === "inbound" && c.originalDst === `${B.ip}:5002`);
    expect(legs.length).toBeGreaterThanOrEqual(1);
    expect(legs.every((c) => c.upstreamLocal?.startsWith(`${A.ip}:`))).toBe(true);
    const ports = legs.map((c) => Number(c.upstreamLocal?.split(":")[1]));
    expect(ports.every((p) => p >= INBOUND_SOURCE_PORTS.min && p <= INBOUND_SOURCE_PORTS.max)).toBe(true);
    await eventually(async () => (await proxy.connections()).live.length === 0, 10_000, "no live connections left");
  }, T);
});
