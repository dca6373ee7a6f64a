// HBONE inside one virtual node: two enrolled pods, a proxy with a local CA (`nshub ca init`),
// traffic from one pod to the other leaves the client pod as mTLS to the server pod's 15008 and
// reaches the app with the client pod's IP. Judged by the app (bytes and peer), the proxy's
// connection records (identities, security), its metrics and its access log.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod } from "../helpers/netsim.ts";
import { createProxyEnv, eventually, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const BINARY = resolve(import.meta.dir, "../../dist/nshub");
const WEB = "spiffe://cluster.local/ns/shop/sa/web";
const DB = "spiffe://cluster.local/ns/shop/sa/db";

netnsDescribe("proxy: HBONE between pods of one node", () => {
  let env: ProxyEnv;
  let web: Pod, db: Pod;
  let p: ProxyProcess;

  beforeAll(async () => {
    if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run scripts/build first`);
    env = await createProxyEnv();
    web = await env.sim.addPod({ name: "web-0", namespace: "shop" });
    db = await env.sim.addPod({ name: "db-0", namespace: "shop" });
    const caDir = join(env.tmp, "ca");
    const r = Bun.spawnSync([BINARY, "ca", "init", "--dir", caDir], { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(r.stderr.toString());
    p = env.startProxy({ env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: caDir } });
    await p.waitReady();
    await env.enroll(web, { serviceAccount: "web" });
    await env.enroll(db, { serviceAccount: "db" });
    await eventually(async () => (await p.pods()).filter((x) => x.listeners.some((l: { port: number }) => l.port === 15008)).length === 2, 20_000, "15008 in both pods");
  }, T);

  afterAll(async () => {
    await env?.destroy();
  }, T);

  test(
    "pod → pod goes over HBONE: bytes exact, the app sees the client pod's IP, both records carry both identities",
    async () => {
      const sink = env.tool(db, ["sink", "--port", "8080"]);
      try {
        await eventually(async () => (await db.exec(["ss", "-ltn"])).stdout.includes(":8080"), 10_000, "sink listening");
        const r = await env.toolRun(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(8 << 20)]);
        expect(r.error).toBeUndefined();
        const reply = JSON.parse(r.reply);
        expect(reply.bytes).toBe(8 << 20);
        expect(reply.sha256).toBe(r.sha256);
        expect(reply.peer).toBe(web.ip);
        const c = await p.connections();
        const all = [...c.live, ...c.recent] as Array<Record<string, any>>;
        const out = all.find((x) => x.direction === "outbound" && x.originalDst === `${db.ip}:8080`);
        const inb = all.find((x) => x.direction === "inbound" && x.originalDst === `${db.ip}:8080`);
        console.log(JSON.stringify({ out, inb }, null, 1));
        expect(out?.security).toBe("mutual_tls");
        expect(out?.srcIdentity).toBe(WEB);
        expect(out?.dstIdentity).toBe(DB);
        expect(out?.hboneAddr).toBe(`${db.ip}:15008`);
        expect(inb?.security).toBe("mutual_tls");
        expect(inb?.srcIdentity).toBe(WEB);
        expect(inb?.dstIdentity).toBe(DB);
        expect(inb?.closeHow).toBe("done");
        expect(out?.closeHow).toBe("done");
      } finally {
        await sink.stop(2000);
      }
    },
    T,
  );
});
