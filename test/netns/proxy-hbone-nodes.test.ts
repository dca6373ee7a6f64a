// HBONE across two virtual nodes joined by a routed fabric (src/sim/fabric.ts): each node has its
// own proxy (and the agent's ZDS role, test/fixtures/proxy-harness.ts), pods through the real
// CNI chain, and certificates from one `nshub ca serve` (the compiled binary, in a plain pod of
// node 1, reached by node 2's proxy across the fabric with its own node credential). Each
// proxy's ztunnel local-config file names the other node's pods. A tcpdump in the fabric
// namespace judges what crossed the wire.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { netnsDescribe } from "../helpers/root.ts";
import { createFabric, randomSubnet, subnetsOverlap, type Fabric, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { createProxyEnv, eventually, type ConnJson, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const BINARY = resolve(import.meta.dir, "../../dist/nshub");
const WEB = "spiffe://cluster.local/ns/shop/sa/web";
const DB = "spiffe://cluster.local/ns/shop/sa/db";

type Rec = ConnJson & { security?: string; srcIdentity?: string; dstIdentity?: string; hboneAddr?: string };

netnsDescribe("proxy: HBONE across two nodes", () => {
  let n1: ProxyEnv, n2: ProxyEnv;
  let fabric: Fabric;
  let p1: ProxyProcess, p2: ProxyProcess;
  let web: Pod, caPod: Pod, db: Pod, cache: Pod;
  let ca: SimProcess, http: SimProcess;

  const records = async (p: ProxyProcess, pred: (c: Rec) => boolean): Promise<Rec[]> => {
    const { live, recent } = await p.connections();
    return ([...recent, ...live] as Rec[]).filter(pred);
  };
  const metrics = async (p: ProxyProcess) => (await p.http("GET", p.metricsAddr, "/metrics")).body;
  const certState = async (p: ProxyProcess, id: string) => ((JSON.parse((await p.http("GET", p.admin, "/certs")).body).certificates ?? []) as Array<{ identity: string; state: string }>).find((c) => c.identity === id)?.state;

  beforeAll(async () => {
    if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run scripts/build first`);
    n1 = await createProxyEnv();
    let subnet = randomSubnet();
    while (subnetsOverlap(subnet, n1.sim.subnet)) subnet = randomSubnet();
    n2 = await createProxyEnv({ sim: { subnet } });
    fabric = await createFabric([n1.sim, n2.sim]);
    web = await n1.sim.addPod({ name: "web-0", namespace: "shop" });
    caPod = await n1.sim.addPod({ name: "ca-0", namespace: "infra" });
    db = await n2.sim.addPod({ name: "db-0", namespace: "shop" });
    cache = await n2.sim.addPod({ name: "cache-0", namespace: "shop" });

    // The CA: `nshub ca serve` in a plain pod of node 1; each node has its own credential.
    const caDir = join(n1.tmp, "ca");
    const cli = (args: string[]) => {
      const r = Bun.spawnSync([BINARY, ...args], { stdout: "pipe", stderr: "pipe" });
      if (r.exitCode !== 0) throw new Error(`nshub ${args.join(" ")}: ${r.stderr}`);
      return r.stdout.toString().trim();
    };
    cli(["ca", "init", "--dir", caDir]);
    ca = caPod.spawn([BINARY, "ca", "serve", "--dir", caDir, "--address", `${caPod.ip}:15012`, "--metrics-address", "127.0.0.1:0"], { env: { ...process.env, NSHUB_LOG_FORMAT: "json" } });
    await eventually(() => ca.stderr().includes("serving IstioCertificateService") || !ca.running, 15_000, "the CA to listen");
    if (!ca.running) throw new Error(`ca serve: ${ca.stderr()}`);

    const proxyOn = (env: ProxyEnv, node: string, others: Array<{ pod: Pod; sa: string }>) => {
      const token = join(env.tmp, "ca-token");
      writeFileSync(token, cli(["ca", "issue-node", "--dir", caDir, "--node", node]) + "\n", { mode: 0o600 });
      const workloads = join(env.tmp, "workloads.yaml");
      writeFileSync(
        workloads,
        "workloads:\n" +
          others
            .map(({ pod, sa }) => `- uid: ${pod.uid}\n  name: ${pod.podName}\n  namespace: ${pod.podNamespace}\n  serviceAccount: ${sa}\n  workloadIps: ["${pod.ip}"]\n  protocol: HBONE\n  node: ${node === "node-1" ? "node-2" : "node-1"}\n  services: {}\n`)
            .join(""),
      );
      return env.startProxy({
        env: {
          NSHUB_PROXY_CA_SOURCE: "istio",
          NSHUB_PROXY_CA_ADDRESS: `${caPod.ip}:15012`,
          NSHUB_PROXY_CA_ROOT_CERT: join(caDir, "root-cert.pem"),
          NSHUB_PROXY_CA_TOKEN_FILE: token,
          NSHUB_PROXY_WORKLOADS_FILE: workloads,
        },
      });
    };
    // Node 1 believes cache-0 runs as "cache-x": the identity check must refuse what it presents.
    p1 = proxyOn(n1, "node-1", [
      { pod: db, sa: "db" },
      { pod: cache, sa: "cache-x" },
    ]);
    p2 = proxyOn(n2, "node-2", [{ pod: web, sa: "web" }]);
    await Promise.all([p1.waitReady(), p2.waitReady()]);
    await n1.enroll(web, { serviceAccount: "web" });
    await n2.enroll(db, { serviceAccount: "db" });
    await n2.enroll(cache, { serviceAccount: "cache" });
    await eventually(async () => (await certState(p1, WEB)) === "valid" && (await certState(p2, DB)) === "valid", 30_000, "both nodes' certificates").catch((e) => {
      const certLines = (p: ProxyProcess) => p.proc.stderr().split("\n").filter((l) => l.includes("proxy/certs")).slice(-3).join("\n");
      throw new Error(`${(e as Error).message}\nnode 1: ${certLines(p1)}\nnode 2: ${certLines(p2)}\nca: ${ca.stderr().slice(-1500)}`);
    });

    n2.tool(db, ["sink", "--port", "8080"]);
    n2.tool(cache, ["echo", "--port", "7000"]);
    http = db.spawn(["/usr/bin/python3", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", n2.tmp]);
    for (const port of [8000, 8080]) await db.waitForTcpPort(port);
    await cache.waitForTcpPort(7000);
  }, T);

  afterAll(async () => {
    await fabric?.destroy();
    await ca?.stop(3000).catch(() => undefined);
    await n2?.destroy();
    await n1?.destroy();
  }, T);

  test(
    "web (node 1) → db (node 2): the app sees web's IP, bytes byte-exact; on the wire only TLS to 15008 and never the marker; both proxies record both identities",
    async () => {
      const marker = `nshub-marker-${randomBytes(8).toString("hex")}`;
      const capture = await fabric.capture({ filter: "tcp" });
      const curl = await web.exec(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", `http://${db.ip}:8000/${marker}`], { timeoutMs: 20_000 });
      const sent = await n1.toolRun(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(16 << 20)]);
      const wire = await capture.stop();

      // the app: Python's http.server logged the request with web's address and the marker
      expect(curl.stdout).toBe("404");
      await eventually(() => http.stderr().includes(marker), 5000, "the server's log line");
      const logLine = http.stderr().split("\n").find((l) => l.includes(marker))!;
      expect(logLine.startsWith(`${web.ip} `)).toBe(true);
      expect(sent.error).toBeUndefined();
      expect(JSON.parse(sent.reply)).toMatchObject({ bytes: 16 << 20, sha256: sent.sha256, peer: web.ip });

      // the wire: the two connections' bytes crossed it (it is no empty capture), all of it TLS
      // from web to db:15008, and the marker the client sent in plaintext to its own proxy is
      // nowhere in it
      expect(wire.flows).toEqual([{ src: web.ip, dst: db.ip, dstPort: 15008 }]);
      expect(wire.tcp.reduce((n, s) => n + s.length, 0)).toBeGreaterThan(16 << 20);
      expect(wire.containsBytes(marker)).toBe(false);
      expect(wire.containsBytes(new Uint8Array([0x16, 0x03, 0x01]))).toBe(true); // a TLS handshake record

      const out = await records(p1, (c) => c.direction === "outbound" && c.originalDst === `${db.ip}:8080` && c.closeHow === "done");
      expect(out[0]).toMatchObject({ security: "mutual_tls", srcIdentity: WEB, dstIdentity: DB, hboneAddr: `${db.ip}:15008` });
      const inb = await records(p2, (c) => c.direction === "inbound" && c.originalDst === `${db.ip}:8080` && c.closeHow === "done");
      expect(inb[0]).toMatchObject({ security: "mutual_tls", srcIdentity: WEB, dstIdentity: DB });
      expect(inb[0]!.source.startsWith(`${web.ip}:`)).toBe(true);
      // destination side names the peer from its registry (the workloads file) in the metrics
      expect(await metrics(p2)).toMatch(new RegExp(`istio_tcp_connections_opened_total\\{reporter="destination",source_workload="web-0",[^}]*source_principal="${WEB.replace(/[/.]/g, "\\$&")}"[^}]*destination_principal="${DB.replace(/[/.]/g, "\\$&")}"[^}]*connection_security_policy="mutual_tls"\\} [1-9]`));

      // nshub connections shows the identities while a connection is open
      const live = n1.tool(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(64 << 20), "--chunk-delay-ms", "20"]);
      try {
        await eventually(async () => (await records(p1, (c) => c.state === "open" && c.originalDst === `${db.ip}:8080`)).length > 0, 10_000, "a live connection");
        const table = await n1.sim.node.exec([BINARY, "connections", "--admin", p1.admin]);
        expect(table.code).toBe(0);
        const row = table.stdout.split("\n").find((l) => l.includes(`${db.ip}:8080`))!;
        expect(row).toContain("mTLS");
        expect(row).toContain("shop/web → shop/db");
      } finally {
        await live.stop(1000);
      }
    },
    T,
  );

  test(
    "a destination presenting another identity than the registry's: the client is reset, counted as an identity failure, nothing reaches the app",
    async () => {
      const r = await n1.toolRun(web, ["many", "--host", cache.ip, "--port", "7000", "--conns", "1", "--bytes", "1000"]);
      expect(r).toMatchObject({ ok: 0, failed: 1 });
      const out = await records(p1, (c) => c.direction === "outbound" && c.originalDst === `${cache.ip}:7000`);
      expect(out[0]).toMatchObject({ closeHow: "connect_failed", security: "mutual_tls", dstIdentity: "spiffe://cluster.local/ns/shop/sa/cache-x" });
      expect(out[0]!.error).toContain("spiffe://cluster.local/ns/shop/sa/cache");
      expect(await metrics(p1)).toMatch(/nshub_hbone_failures_total\{direction="outbound",reason="identity"\} 1/);
      expect(await records(p2, (c) => c.originalDst === `${cache.ip}:7000`)).toHaveLength(0);
    },
    T,
  );
});
