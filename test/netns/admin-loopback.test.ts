// The proxy's admin API must not be reachable from a pod: with the default addresses it is
// bound to 127.0.0.1 of the node's namespace, and a pod's 127.0.0.1 is its own loopback. The
// metrics and readiness ports (0.0.0.0, like ztunnel's) are reachable from the pod through the
// node's bridge — which also proves the path from pod to node works, so the refusal is the
// binding's doing and not a routing accident.
//
// The servers are the real src/admin servers (serveAdmin) with the config's default addresses,
// started in a separate process inside the virtual node, over a FAKE ProxyView (only the binding
// is under test; the real proxy, enrolled pods included, is in admin-traffic.test.ts). The pod
// side uses curl, as an operator or an attacker would.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createSim, type NetSim, type Pod, type SimProcess } from "../helpers/netsim.ts";
import { netnsDescribe } from "../helpers/root.ts";

const T = 60_000;
const SRC = resolve(import.meta.dir, "../../src");

const SERVER = (adminSocket: string) => `
import { Registry } from "prom-client";
import { proxySchema } from "${SRC}/config/schema.ts";
import { createRegistry } from "${SRC}/admin/registry.ts";
import { createProxyMetrics } from "${SRC}/proxy/metrics.ts";
import { serveAdmin } from "${SRC}/admin/servers.ts";
const cfg = proxySchema.parse({});
const { registry } = createRegistry();
createProxyMetrics(registry);
// FAKE ProxyView (stand-in: only the binding is under test here)
const view = {
  workloads: () => [], connections: () => [], config: () => cfg, version: () => ({ version: "test" }),
  readiness: () => ({ ready: true, reason: "ready" }), getLogLevel: () => "info", setLogLevel() {}, quit() { process.exit(0); },
};
const s = serveAdmin({ adminAddress: cfg.adminAddress, adminSocket: ${JSON.stringify(adminSocket)}, metricsAddress: cfg.metricsAddress, readinessAddress: cfg.readinessAddress }, view, { registry });
console.log("serving", s.adminUrl, s.metricsUrl, s.readinessUrl);
`;

netnsDescribe("admin API reachability from a pod (fake ProxyView stand-in, real servers, real namespaces)", () => {
  let sim: NetSim;
  let pod: Pod;
  let server: SimProcess;
  const dir = mkdtempSync(join(tmpdir(), "nshub-admin-"));

  beforeAll(async () => {
    sim = await createSim();
    pod = await sim.addPod({ name: "curious" });
    const script = join(dir, "server.ts");
    // Not the default admin socket (/var/run/nshub): a proxy of the host may hold it.
    writeFileSync(script, SERVER(join(dir, "proxy-admin.sock")));
    server = sim.node.spawn([process.execPath, script], { env: { ...process.env, NSHUB_LOG_FORMAT: "json" } });
    await server.waitForOutput(/^serving /m, 20_000);
  }, T);

  afterAll(async () => {
    await server?.stop();
    await sim?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }, T);

  const curl = (ns: { exec: NetSim["node"]["exec"] }, url: string) => ns.exec(["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", url]);

  test(
    "default addresses: admin on the node's 127.0.0.1:15000, metrics and readiness on the wildcard",
    async () => {
      const ss = (await sim.node.execOrThrow(["ss", "-ltnH"])).stdout;
      expect(ss).toMatch(/\s127\.0\.0\.1:15000\s/);
      expect(ss).toMatch(/\s(0\.0\.0\.0|\*):15020\s/);
      expect(ss).toMatch(/\s(0\.0\.0\.0|\*):15021\s/);
      // from the node itself the admin answers
      expect((await curl(sim.node, "http://127.0.0.1:15000/config_dump")).stdout).toBe("200");
    },
    T,
  );

  test(
    "from the pod: the admin cannot be reached (node address refused, pod loopback is the pod's own); metrics and readiness can",
    async () => {
      const gw = sim.node.gateway;
      const viaNode = await curl(pod, `http://${gw}:15000/config_dump`);
      expect(viaNode.code).toBe(7); // curl: failed to connect (refused)
      expect(viaNode.stderr).toMatch(/Connection refused|Couldn't connect/i);
      const viaLoopback = await curl(pod, "http://127.0.0.1:15000/config_dump");
      expect(viaLoopback.code).toBe(7);
      const quit = await pod.exec(["curl", "-sS", "-m", "3", "-X", "POST", `http://${gw}:15000/quitquitquit`]);
      expect(quit.code).toBe(7);
      expect(server.running).toBe(true);
      // the same path works for the wildcard ports
      expect((await curl(pod, `http://${gw}:15020/metrics`)).stdout).toBe("200");
      expect((await curl(pod, `http://${gw}:15021/healthz/ready`)).stdout).toBe("200");
    },
    T,
  );
});
