// The mTLS comparison (issue 18): two virtual nodes joined by the routed fabric (src/sim), each
// with its own `dist/nshub agent` and `dist/nshub proxy` holding workload certificates from one
// local CA (`nshub ca init`), and four pod pairs measured in the bench's interleaved loop:
//
//   direct-nodes  node 1 → node 2, neither pod enrolled: the baseline of the cross-node paths
//   hbone-nodes   node 1 → node 2, both enrolled: A's outbound (node 1's proxy) dials HBONE (mTLS
//                 HTTP/2 CONNECT) to B:15008 across the fabric; node 2's proxy relays to the app
//   haproxy-tls   node 1 → node 2, not enrolled: HAProxy 1 (node 1) captures A's outbound and
//                 speaks TLS with a client certificate to HAProxy 2 on B:15008 (haproxy-tls.ts)
//   hbone-local   both pods on node 2, enrolled: HBONE through node 2's proxy alone (nshub has
//                 no same-node shortcut: A's outbound dials B's 15008 on the same node)
//
// Node 1's proxy learns that B (node 2) is a mesh workload from `proxy.workloadsFile` (ztunnel's
// local-config format); pods it serves itself are mesh workloads by ZDS. Checks before measuring:
// the address B's server saw, A's REDIRECT counter, the proxies' records (`security:
// mutual_tls` on both legs), and a capture on the fabric (the TLS port only, a marker sent in
// the request never in clear, while the direct path's marker is). Network safety as for the
// rest of the bench: namespaces this script created, no uplink, torn down by destroy().
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createFabric, createSim, randomSubnet, run, subnetsOverlap, type Fabric, type NetSim, type Pod, type SimProcess } from "../../src/sim/index.ts";
import { applyHaproxyPodRules, haproxyCommand, haproxyMaxconn, startHaproxy, waitHaproxyPort } from "./haproxy-proc.ts";
import { makeHaproxyCerts, parseShowInfo, renderTlsClientConfig, renderTlsServerConfig, tlsInfo, TLS_PORT } from "./haproxy-tls.ts";
import { metricSum, securityCounts } from "./parse.ts";
import type { IdleStreamsResult, MtlsPath, MtlsResults, PathCheck, RelayKind } from "./results.ts";
import { fdCount, sampleRssKiB, threadCount } from "./sys.ts";

const ENROLLED_NS = "bench";
const PLAIN_NS = "plain";
const TRUST_DOMAIN = "cluster.local";

export interface MtlsContext {
  workDir: string;
  nshub: string;
  nshubCni: string;
  bun: string;
  tools: string;
  prefix: string;
  /** Pod subnets already in use (the main node's): the two nodes take others. */
  avoidSubnets: string[];
  fdPrefix: string[];
  nobody: string[];
  fdLimit: number;
  iptablesCmd: string;
  env: Record<string, string | undefined>;
  ports: { http: number; idle: number };
  startServers: (b: Pod) => Promise<void>;
  log: (msg: string) => void;
}

interface NodeSide {
  sim: NetSim;
  dir: string;
  config: string;
  adminSocket: string;
  agent?: SimProcess;
  proxy?: SimProcess;
}

export interface MtlsPair {
  a: Pod;
  b: Pod;
}

/** Set up with `setup()`, always `destroy()` (also after a failed setup). */
export class MtlsBench {
  readonly nodes: NodeSide[] = [];
  fabric: Fabric | undefined;
  pairs = {} as Record<MtlsPath, MtlsPair>;
  haproxies: SimProcess[] = [];
  readonly dir: string;
  readonly caDir: string;
  readonly statsSockets: [string, string];
  readonly results: MtlsResults = { trustDomain: TRUST_DOMAIN, nodes: [] };
  #destroying: Promise<void> | undefined;

  constructor(private readonly c: MtlsContext) {
    this.dir = join(c.workDir, "mtls");
    this.caDir = join(this.dir, "ca");
    this.statsSockets = [join(this.dir, "haproxy-tls-1.sock"), join(this.dir, "haproxy-tls-2.sock")];
  }

  get proxies(): [SimProcess, SimProcess] {
    return [this.nodes[0]!.proxy!, this.nodes[1]!.proxy!];
  }

  /** The processes whose CPU a path's runs are charged with (both proxies on the two-node paths). */
  pids(p: MtlsPath): number[] | undefined {
    if (p === "hbone-nodes") return this.proxies.map((x) => x.pid);
    if (p === "haproxy-tls") return this.haproxies.map((x) => x.pid);
    if (p === "hbone-local") return [this.proxies[1].pid];
    return undefined;
  }

  async setup(): Promise<void> {
    const c = this.c;
    mkdirSync(this.dir, { recursive: true });
    await run([c.nshub, "ca", "init", "--dir", this.caDir, "--trust-domain", TRUST_DOMAIN], { env: c.env }).then((r) => {
      if (r.code !== 0) throw new Error(`nshub ca init: ${r.stderr}`);
    });
    const files = await makeHaproxyCerts(this.dir, this.caDir, TRUST_DOMAIN);
    const used = [...c.avoidSubnets];
    for (const i of [1, 2]) {
      let subnet = randomSubnet();
      while (used.some((u) => subnetsOverlap(u, subnet))) subnet = randomSubnet();
      used.push(subnet);
      const dir = join(this.dir, `node${i}`);
      mkdirSync(join(dir, "run"), { recursive: true });
      const cniLog = join(dir, "cni.log");
      const agentSocket = join(dir, "run/agent.sock");
      const sim = await createSim({ prefix: c.prefix, subnet, cleanStale: false, plugins: [{ type: "nshub-cni", binary: c.nshubCni, config: { agentSocket, logFile: cniLog } }] });
      const side: NodeSide = { sim, dir, config: join(dir, "config.yaml"), adminSocket: join(dir, "run/proxy-admin.sock") };
      this.nodes.push(side);
      writeFileSync(join(dir, "workloads.yaml"), "workloads: []\n");
      writeFileSync(side.config, nodeConfig(dir, agentSocket, cniLog, side.adminSocket, this.caDir));
    }
    const [n1, n2] = this.nodes as [NodeSide, NodeSide];
    this.fabric = await createFabric([n1.sim, n2.sim], { prefix: c.prefix, cleanStale: false });
    for (const n of this.nodes) {
      n.agent = n.sim.node.spawn([...c.fdPrefix, c.nshub, "agent", "--config", n.config], { env: c.env });
      await n.agent.waitForOutput(/agent ready/, 30_000);
      n.proxy = n.sim.node.spawn([...c.fdPrefix, c.nshub, "proxy", "--config", n.config], { env: c.env });
      await this.waitReady(n);
    }
    c.log(`mTLS nodes ${n1.sim.tag} (${n1.sim.subnet}) and ${n2.sim.tag} (${n2.sim.subnet}) on fabric ${this.fabric.tag}; proxies ready (pids ${n1.proxy!.pid}, ${n2.proxy!.pid})`);

    const pod = (n: NodeSide, name: string, ns: string) => n.sim.addPod({ name, namespace: ns });
    this.pairs["hbone-nodes"] = { a: await pod(n1, "mtls-a", ENROLLED_NS), b: await pod(n2, "mtls-b", ENROLLED_NS) };
    this.pairs["hbone-local"] = { a: await pod(n2, "local-a", ENROLLED_NS), b: await pod(n2, "local-b", ENROLLED_NS) };
    this.pairs["haproxy-tls"] = { a: await pod(n1, "tls-a", PLAIN_NS), b: await pod(n2, "tls-b", PLAIN_NS) };
    this.pairs["direct-nodes"] = { a: await pod(n1, "xdirect-a", PLAIN_NS), b: await pod(n2, "xdirect-b", PLAIN_NS) };
    for (const p of Object.values(this.pairs)) await c.startServers(p.b);
    this.results.nodes = this.nodes.map((n) => ({ subnet: n.sim.subnet, pods: [...n.sim.pods].map((p) => `${p.podNamespace}/${p.podName} ${p.ip}`) }));

    // Node 1's registry: B of the cross-node pair is a mesh workload on node 2.
    const b = this.pairs["hbone-nodes"].b;
    writeFileSync(
      join(n1.dir, "workloads.yaml"),
      `workloads:\n- uid: ${b.uid}\n  name: ${b.podName}\n  namespace: ${ENROLLED_NS}\n  serviceAccount: default\n  workloadIps: ["${b.ip}"]\n  protocol: HBONE\n  node: ${n2.sim.tag}\n  services: {}\n`,
    );
    await this.until(async () => (await this.http(n1, "/workloads")).body.includes(`"${b.ip}"`), 20_000, `node 1's proxy to list ${b.ip} (workloads file)`);
    // 15008 is bound once the pod's certificate is there.
    for (const p of [this.pairs["hbone-nodes"], this.pairs["hbone-local"]]) {
      await p.a.waitForTcpPort(15001, { timeoutMs: 20_000 });
      await p.b.waitForTcpPort(TLS_PORT, { timeoutMs: 20_000 });
    }
    try {
      const pc = (JSON.parse((await this.http(n1, "/config_dump")).body) as { config: { proxy: { workers: number; relay: RelayKind } } }).config.proxy;
      this.results.proxyWorkers = pc.workers;
      this.results.proxyRelay = pc.relay;
    } catch {
      // reported as unknown
    }

    // The HAProxy TLS chain.
    const tls = this.pairs["haproxy-tls"];
    for (const p of [tls.a, tls.b]) await applyHaproxyPodRules(p, c.iptablesCmd);
    const maxconn = haproxyMaxconn(c.fdLimit);
    this.haproxies.push(
      await startHaproxy(n1.sim.node, join(this.dir, "haproxy-tls-1.cfg"), renderTlsClientConfig({ pod: { netns: tls.a.name, label: "tlsa" }, files, maxconn, statsSocket: this.statsSockets[0] }), c.fdPrefix),
      await startHaproxy(n2.sim.node, join(this.dir, "haproxy-tls-2.cfg"), renderTlsServerConfig({ pod: { netns: tls.b.name, label: "tlsb" }, files, maxconn, statsSocket: this.statsSockets[1] }), c.fdPrefix),
    );
    await waitHaproxyPort(this.haproxies[0]!, tls.a, 15001);
    await waitHaproxyPort(this.haproxies[1]!, tls.b, TLS_PORT);
    this.results.haproxyThreads = [threadCount(this.haproxies[0]!.pid), threadCount(this.haproxies[1]!.pid)];
  }

  /**
   * One request per path from A to B's HTTP server with a random marker in a header, under a
   * capture on the fabric; judged by the address B saw, A's REDIRECT counter, the proxies'
   * records and what crossed the wire.
   */
  async checks(): Promise<PathCheck[]> {
    const [n1, n2] = this.nodes as [NodeSide, NodeSide];
    const capture = await this.fabric!.capture({ filter: "tcp" });
    const markers = {} as Record<MtlsPath, string>;
    const seen = {} as Record<MtlsPath, { peer: string; redirected?: number }>;
    for (const p of Object.keys(this.pairs) as MtlsPath[]) {
      const { a, b } = this.pairs[p];
      markers[p] = `nshub-bench-marker-${p}-${Math.random().toString(36).slice(2)}`;
      const before = await this.redirectPackets(a);
      const r = await a.exec([...this.c.nobody, "curl", "-s", "-m", "10", "-H", `X-Bench-Marker: ${markers[p]}`, `http://${b.ip}:${this.c.ports.http}/peer`]);
      const after = await this.redirectPackets(a);
      seen[p] = { peer: r.stdout.trim() || `(curl exit ${r.code})`, redirected: before !== undefined && after !== undefined ? after - before : undefined };
    }
    const wire = await capture.stop();
    const flows = wire.flows;
    const crossed = (p: MtlsPath) =>
      flows
        .filter((f) => f.src === this.pairs[p].a.ip && f.dst === this.pairs[p].b.ip)
        .map((f) => String(f.dstPort))
        .sort();
    const recs = async (n: NodeSide): Promise<Rec[]> => {
      const j = JSON.parse((await this.http(n, "/connections?recent")).body) as { live?: Rec[]; recent?: Rec[] };
      return [...(j.recent ?? []), ...(j.live ?? [])];
    };
    const [r1, r2] = [await recs(n1), await recs(n2)];
    const sec = (rs: Rec[], p: MtlsPath, dir: "outbound" | "inbound") =>
      rs.find((x) => x.direction === dir && x.originalDst === `${this.pairs[p].b.ip}:${this.c.ports.http}`)?.security ?? "no record";

    const out: PathCheck[] = [];
    for (const p of Object.keys(this.pairs) as MtlsPath[]) {
      const { a, b } = this.pairs[p];
      const ports = crossed(p);
      const clear = wire.containsBytes(markers[p]);
      const wireText = p === "hbone-local" ? `nothing on the fabric (${ports.length ? `saw ports ${ports.join(", ")}` : "none"})` : `A → B on port ${ports.join(", ") || "none"}; marker ${clear ? "in clear" : "not in clear"}`;
      let ok: boolean;
      let note: string;
      let security: string | undefined;
      const s = seen[p];
      switch (p) {
        case "direct-nodes":
          ok = s.peer === a.ip && s.redirected === undefined && clear && ports.join() === String(this.c.ports.http);
          note = "B sees A's address; no rules in A; the request crossed the fabric in clear (the capture's positive control)";
          break;
        case "hbone-nodes":
          security = `node 1 outbound ${sec(r1, p, "outbound")}, node 2 inbound ${sec(r2, p, "inbound")}`;
          ok = s.peer === a.ip && (s.redirected ?? 0) > 0 && !clear && ports.join() === String(TLS_PORT) && sec(r1, p, "outbound") === "mutual_tls" && sec(r2, p, "inbound") === "mutual_tls";
          note = "captured in A; only A → B:15008 on the wire, the marker never in clear; both proxies recorded mutual_tls; B's server sees A's address";
          break;
        case "haproxy-tls":
          ok = s.peer === b.ip && (s.redirected ?? 0) > 0 && !clear && ports.join() === String(TLS_PORT);
          note = "captured in A; only A → B:15008 (TLS) on the wire, the marker never in clear; B's server sees B's own address (HAProxy 2's upstream socket in B)";
          break;
        case "hbone-local":
          security = `outbound ${sec(r2, p, "outbound")}, inbound ${sec(r2, p, "inbound")}`;
          ok = s.peer === a.ip && (s.redirected ?? 0) > 0 && ports.length === 0 && sec(r2, p, "outbound") === "mutual_tls" && sec(r2, p, "inbound") === "mutual_tls";
          note = "captured in A; node 2's proxy recorded mutual_tls on both legs (A's outbound dials B:15008 on the same node); B's server sees A's address";
          break;
      }
      out.push({ path: p, peerSeen: s.peer, redirectPackets: s.redirected, ok, note, wire: wireText, security });
    }
    this.results.wire = `${flows.length} TCP flows on the fabric during the checks (${wire.connections.length} connections)`;
    return out;
  }

  /** Sampled half-way through a wrk run: what shows the path's handshakes (or their absence). */
  async probe(p: MtlsPath): Promise<Record<string, number | undefined> | undefined> {
    if (p === "haproxy-tls") {
      const [c, s] = await Promise.all(this.statsSockets.map(async (sock) => tlsInfo(parseShowInfo(await haproxyCommand(sock, "show info")))));
      return { clientFullHandshakesPerSec: c!.backendKeyRate, serverFullHandshakesPerSec: s!.frontendKeyRate, serverTlsConnsPerSec: s!.sslRate, serverResumedPct: s!.frontendReusePct };
    }
    if (p === "hbone-nodes" || p === "hbone-local") {
      const n = this.nodes[p === "hbone-nodes" ? 0 : 1]!;
      const m = (await n.sim.node.exec(["curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics"])).stdout;
      return { poolConnections: metricSum(m, "nshub_hbone_pool_connections"), poolStreams: metricSum(m, "nshub_hbone_pool_streams") };
    }
    return undefined;
  }

  /** Node 2's proxy: inbound connections by security, over the whole run so far. */
  async audit(): Promise<{ mutualTls: number; plaintext: number }> {
    const m = (await this.nodes[1]!.sim.node.exec(["curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics"])).stdout;
    return securityCounts(m, "destination");
  }

  /**
   * `n` idle connections from A (node 1) to an idle server in B (node 2) through the HBONE path:
   * each one stream on node 1's pooled HBONE connections and one on node 2's. Both proxies' RSS
   * before and after (each after a full GC).
   */
  async idleStreams(n: number, port: number): Promise<IdleStreamsResult> {
    const { a, b } = this.pairs["hbone-nodes"];
    const c = this.c;
    const errors: string[] = [];
    const server = b.spawn([...c.fdPrefix, c.bun, join(c.tools, "idle-server.ts"), String(port)], { stdin: true });
    try {
      await b.waitForTcpPort(port);
      const heapBefore = (await this.gcBoth()).map((x) => x.heapUsed) as [number, number];
      const rssBeforeKiB = (await Promise.all(this.proxies.map((x) => sampleRssKiB(x.pid)))) as [number, number];
      const fdsBefore = this.proxies.map((x) => fdCount(x.pid)) as [number, number];
      const client = a.spawn([...c.fdPrefix, c.bun, join(c.tools, "idle-client.ts"), b.ip, String(port), String(n), "32"], { stdin: true });
      try {
        const m = await client.waitForOutput(/connected (\d+) in (\d+) ms|failed (\d+) of/, 180_000);
        if (m[3]) errors.push(`idle HBONE streams: ${m[0]}`);
        const opened = m[1] ? Number(m[1]) : n - Number(m[3] ?? 0);
        const held = () => {
          const all = [...server.stdout().matchAll(/held (\d+) accepted (\d+)/g)];
          return all.length ? Number(all[all.length - 1]![1]) : 0;
        };
        let last = -1;
        let since = Date.now();
        const deadline = Date.now() + 90_000;
        while (held() < opened && Date.now() < deadline && Date.now() - since < 12_000) {
          if (held() !== last) {
            last = held();
            since = Date.now();
          }
          await Bun.sleep(200);
        }
        if (held() < opened) errors.push(`idle HBONE streams: ${opened} opened by the client, ${held()} reached the server in B`);
        await Bun.sleep(3000);
        const heapAfter = (await this.gcBoth()).map((x) => x.heapUsed) as [number, number];
        const rssAfterKiB = (await Promise.all(this.proxies.map((x) => sampleRssKiB(x.pid)))) as [number, number];
        const fdsAfter = this.proxies.map((x) => fdCount(x.pid)) as [number, number];
        const probe = await this.probe("hbone-nodes");
        return { clientConns: opened, held: held(), rssBeforeKiB, rssAfterKiB, fdsBefore, fdsAfter, heapBefore, heapAfter, poolConnections: probe?.poolConnections, connectMs: m[2] ? Number(m[2]) : undefined, errors };
      } finally {
        client.proc.stdin?.end();
        await client.stop(10_000);
      }
    } finally {
      await server.stop();
    }
  }

  /** Full GC in every thread of both proxies (POST /debug/gc on their admin sockets); each one's answer (main thread's heap). */
  async gcBoth(): Promise<Array<{ rss: number; heapUsed: number }>> {
    const out: Array<{ rss: number; heapUsed: number }> = [];
    for (const n of this.nodes) {
      const r = await n.sim.node.exec(["curl", "-s", "-m", "30", "-X", "POST", "-w", "\n%{http_code}", "--unix-socket", n.adminSocket, "http://localhost/debug/gc"], { timeoutMs: 35_000 });
      const i = r.stdout.lastIndexOf("\n");
      if (r.stdout.slice(i + 1).trim() !== "200") throw new Error(`POST /debug/gc on ${n.sim.tag}'s proxy answered ${r.stdout.trim() || r.stderr.trim()}`);
      out.push(JSON.parse(r.stdout.slice(0, i)) as { rss: number; heapUsed: number });
    }
    return out;
  }

  /** Node `i`'s proxy config file (the profile restarts it from source with the same one). */
  configOf(i: 0 | 1): string {
    return this.nodes[i]!.config;
  }

  destroy(): Promise<void> {
    this.#destroying ??= (async () => {
      for (const h of this.haproxies) await h.stop().catch(() => undefined);
      await this.fabric?.destroy().catch((e) => this.c.log(`mTLS cleanup (fabric): ${(e as Error).message}`));
      for (const n of this.nodes) await n.sim.destroy().catch((e) => this.c.log(`mTLS cleanup (${n.sim.tag}): ${(e as Error).message}`));
    })();
    return this.#destroying;
  }

  // ---- helpers

  private async http(n: NodeSide, path: string): Promise<{ status: number; body: string }> {
    const r = await n.sim.node.exec(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", `http://127.0.0.1:15000${path}`], { timeoutMs: 15_000 });
    const i = r.stdout.lastIndexOf("\n");
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
  }

  private async waitReady(n: NodeSide): Promise<void> {
    await this.until(
      async () => {
        if (!n.proxy!.running) throw new Error(`proxy on ${n.sim.tag} exited: ${n.proxy!.stderr().slice(-2000)}`);
        return (await n.sim.node.exec(["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15021/healthz/ready"])).stdout.trim() === "200";
      },
      60_000,
      `the proxy on ${n.sim.tag} to be ready`,
    );
  }

  private async until(f: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await f())) {
      if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await Bun.sleep(100);
    }
  }

  private async redirectPackets(a: Pod): Promise<number | undefined> {
    const r = await a.exec([this.c.iptablesCmd, "-t", "nat", "-L", "NSHUB_OUTPUT", "-v", "-x", "-n"]);
    if (r.code !== 0) return undefined;
    const line = r.stdout.split("\n").find((l) => /REDIRECT/.test(l) && /redir ports 15001/.test(l));
    return line ? Number(line.trim().split(/\s+/)[0]) : undefined;
  }
}

interface Rec {
  direction: string;
  originalDst: string;
  security?: string;
}

/** A node's config: the agent enrolls namespace `bench`; the proxy has certificates from the shared local CA. */
function nodeConfig(dir: string, agentSocket: string, cniLog: string, adminSocket: string, caDir: string): string {
  return [
    "logLevel: info",
    "agent:",
    `  zdsSocket: ${join(dir, "run/zds.sock")}`,
    `  apiSocket: ${agentSocket}`,
    `  stateFile: ${join(dir, "state/agent-state.json")}`,
    "  adminAddress: 127.0.0.1:15010",
    "  enrollment:",
    "    namespaces:",
    `      include: ["${ENROLLED_NS}"]`,
    "proxy:",
    `  zdsSocket: ${join(dir, "run/zds.sock")}`,
    "  adminAddress: 127.0.0.1:15000",
    `  adminSocket: ${adminSocket}`,
    "  metricsAddress: 127.0.0.1:15020",
    "  readinessAddress: 127.0.0.1:15021",
    "  drainDeadlineMs: 1000",
    `  workloadsFile: ${join(dir, "workloads.yaml")}`,
    "  ca:",
    "    source: local",
    `    localDir: ${caDir}`,
    `    trustDomain: ${TRUST_DOMAIN}`,
    "cni:",
    `  agentSocket: ${agentSocket}`,
    `  logFile: ${cniLog}`,
    "",
  ].join("\n");
}
