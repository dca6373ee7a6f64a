// HBONE across two virtual nodes joined by a routed fabric (test/fixtures/mesh-nodes.ts: each
// node its own proxy and the agent's ZDS role, pods through the real CNI chain, certificates from
// one `nshub ca serve` reached across the fabric, each proxy's ztunnel local-config file naming
// the other node's pods). A tcpdump in the fabric namespace judges what crossed the wire.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { netnsDescribe } from "../helpers/root.ts";
import type { Fabric, Pod, SimProcess } from "../helpers/netsim.ts";
import type { ConnJson, ProxyEnv, ProxyProcess } from "../fixtures/proxy-harness.ts";
import { eventually } from "../fixtures/proxy-harness.ts";
import { BINARY, createMeshNodes, type MeshNodes } from "../fixtures/mesh-nodes.ts";

const T = 120_000;
const WEB = "spiffe://cluster.local/ns/shop/sa/web";
const DB = "spiffe://cluster.local/ns/shop/sa/db";

type Rec = ConnJson & { security?: string; srcIdentity?: string; dstIdentity?: string; tunnelAddr?: string };

netnsDescribe("proxy: HBONE across two nodes", () => {
  let mesh: MeshNodes;
  let n1: ProxyEnv, n2: ProxyEnv;
  let fabric: Fabric;
  let p1: ProxyProcess, p2: ProxyProcess;
  let web: Pod, db: Pod, cache: Pod;
  let http: SimProcess;

  const records = (p: ProxyProcess, pred: (c: Rec) => boolean) => p.records<Rec>(pred);
  const metrics = (p: ProxyProcess) => p.metrics();

  beforeAll(async () => {
    // Node 1 believes cache-0 runs as "cache-x": the identity check must refuse what it presents.
    mesh = await createMeshNodes({
      pods: [
        { name: "web-0", namespace: "shop", node: 1, serviceAccount: "web" },
        { name: "db-0", namespace: "shop", node: 2, serviceAccount: "db" },
        { name: "cache-0", namespace: "shop", node: 2, serviceAccount: "cache", registryServiceAccount: "cache-x" },
      ],
    });
    [n1, n2] = mesh.nodes;
    [p1, p2] = mesh.proxies;
    fabric = mesh.fabric;
    web = mesh.pods["web-0"]!;
    db = mesh.pods["db-0"]!;
    cache = mesh.pods["cache-0"]!;
    n2.tool(db, ["sink", "--port", "8080"]);
    n2.tool(cache, ["echo", "--port", "7000"]);
    http = db.spawn(["/usr/bin/python3", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", n2.tmp]);
    for (const port of [8000, 8080]) await db.waitForTcpPort(port);
    await cache.waitForTcpPort(7000);
  }, T);

  afterAll(async () => {
    await mesh?.destroy();
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
      expect(out[0]).toMatchObject({ security: "mutual_tls", srcIdentity: WEB, dstIdentity: DB, tunnelAddr: `${db.ip}:15008` });
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
