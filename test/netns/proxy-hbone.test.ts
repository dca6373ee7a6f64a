// HBONE inside one virtual node, from the compiled binary's code paths (the proxy runs from the
// sources, like the other proxy tests): enrolled pods with the identities of a local CA
// (test/helpers/hbone-pki.ts: `nshub ca`'s directory format), pod-to-pod traffic that leaves
// the client pod as mTLS to the server pod's 15008, policies deciding on the client's verified
// identity, and independent HBONE peers (Python's h2 + ssl, test/fixtures/hbone-*.py) on both
// ends. Judged by the apps (bytes, peers, resets), the Python peers' own records, and the
// proxy's connection records, metrics and access log. Cross-node traffic and the capture on the
// wire are in proxy-hbone-nodes.test.ts.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { netnsDescribe } from "../helpers/root.ts";
import type { Pod, SimProcess } from "../helpers/netsim.ts";
import { ID_A, ID_B, ID_C, makePki, type Pki } from "../helpers/hbone-pki.ts";
import { createProxyEnv, eventually, type ConnJson, type ProxyEnv, type ProxyProcess } from "../fixtures/proxy-harness.ts";

const T = 120_000;
const PY = "/usr/bin/python3";
const FIXTURES = join(import.meta.dir, "..", "fixtures");

type Rec = ConnJson & { security?: string; srcIdentity?: string; dstIdentity?: string; tunnelAddr?: string };

for (const relay of ["splice", "userspace"] as const) {
  netnsDescribe(`proxy (${relay} relay): HBONE between pods of one node`, () => {
    let env: ProxyEnv;
    let pki: Pki;
    let web: Pod, db: Pod, intruder: Pod, ext: Pod;
    let p: ProxyProcess;
    let sink: SimProcess, resetSink: SimProcess, ackSink: SimProcess;
    const files: Record<string, string> = {};

    const records = (pred: (c: Rec) => boolean) => p.records<Rec>(pred);
    const metrics = () => p.metrics();
    const lines = (s: SimProcess) =>
      s
        .stdout()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l));
    const accessLines = () =>
      p.proc
        .stderr()
        .split("\n")
        .filter((l) => l.startsWith("{") && l.includes('"scope":"access"'))
        .map((l) => JSON.parse(l));

    beforeAll(async () => {
      pki = await makePki();
      env = await createProxyEnv();
      web = await env.sim.addPod({ name: "web-0", namespace: "ns-a" });
      db = await env.sim.addPod({ name: "db-0", namespace: "ns-b" });
      intruder = await env.sim.addPod({ name: "intruder-0", namespace: "ns-c" });
      ext = await env.sim.addPod({ name: "ext-0", namespace: "ext" });
      for (const [name, c] of Object.entries({ a: pki.a, b: pki.b, c: pki.c, bExpired: pki.bExpired, aExpired: pki.aExpired, bOther: pki.bOther, aOther: pki.aOther })) {
        files[`${name}.crt`] = join(env.tmp, `${name}.crt`);
        files[`${name}.key`] = join(env.tmp, `${name}.key`);
        writeFileSync(files[`${name}.crt`]!, c.presented);
        writeFileSync(files[`${name}.key`]!, c.keyPem, { mode: 0o600 });
      }
      files.root = join(env.tmp, "root.crt");
      writeFileSync(files.root, pki.a.roots);
      // `ext` is not enrolled: the registry knows it from a ztunnel local-config file as a mesh
      // workload with identity B (the Python HBONE server there presents B's certificate).
      const workloads = join(env.tmp, "workloads.yaml");
      writeFileSync(
        workloads,
        `workloads:\n- uid: ext-uid\n  name: ext-0\n  namespace: ns-b\n  serviceAccount: sa-b\n  workloadIps: ["${ext.ip}"]\n  protocol: HBONE\n  node: elsewhere\n  services: {}\n`,
      );
      // db admits only identity A (web); intruder (C) and plaintext are refused.
      const policies = join(env.tmp, "policies.yaml");
      writeFileSync(
        policies,
        `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-web, namespace: ns-b}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: ["cluster.local/ns/ns-a/sa/sa-a"]\n`,
      );
      p = env.startProxy({
        args: ["--relay", relay],
        env: { NSHUB_PROXY_CA_SOURCE: "local", NSHUB_PROXY_CA_LOCAL_DIR: join(pki.dir, "ca"), NSHUB_PROXY_WORKLOADS_FILE: workloads, NSHUB_PROXY_POLICIES: policies },
      });
      await p.waitReady();
      await env.enroll(web, { serviceAccount: "sa-a" });
      await env.enroll(db, { serviceAccount: "sa-b" });
      await env.enroll(intruder, { serviceAccount: "sa-c" });
      await eventually(async () => (await p.pods()).filter((x) => x.listeners.some((l: { port: number }) => l.port === 15008)).length === 3, 20_000, "15008 in the three pods");
      env.tool(db, ["echo", "--port", "7000"]);
      sink = env.tool(db, ["sink", "--port", "8080"]);
      resetSink = env.tool(db, ["sink", "--port", "8081", "--reset-after", "65536"]);
      ackSink = env.tool(db, ["sink", "--port", "8082", "--ack-after", String(1 << 20)]);
      for (const port of [7000, 8080, 8081, 8082]) await db.waitForTcpPort(port);
    }, T);

    afterAll(async () => {
      await env?.destroy();
      pki?.cleanup();
    }, T);

    test(
      "web → db goes over HBONE: 8 MiB byte-exact with a half-close reply, the app sees web's IP, both legs record both identities, metrics and access log say mutual_tls",
      async () => {
        const r = await env.toolRun(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(8 << 20)]);
        expect(r.error).toBeUndefined();
        expect(JSON.parse(r.reply)).toMatchObject({ bytes: 8 << 20, sha256: r.sha256, peer: web.ip });
        const legs = await records((c) => c.originalDst === `${db.ip}:8080` && c.closeHow === "done");
        const out = legs.find((c) => c.direction === "outbound")!;
        const inb = legs.find((c) => c.direction === "inbound")!;
        expect(out).toMatchObject({ security: "mutual_tls", srcIdentity: ID_A, dstIdentity: ID_B, tunnelAddr: `${db.ip}:15008`, bytesSent: 8 << 20 });
        expect(inb).toMatchObject({ security: "mutual_tls", srcIdentity: ID_A, dstIdentity: ID_B, tunnelAddr: `${db.ip}:15008`, bytesSent: 8 << 20 });
        // the inbound leg's HBONE peer is web itself (the tunnel left web's netns), and the app
        // connection was made from web's IP
        expect(inb.source.startsWith(`${web.ip}:`)).toBe(true);
        expect(inb.upstreamLocal?.startsWith(`${web.ip}:`)).toBe(true);

        const m = await metrics();
        const opened = (reporter: string) =>
          m.split("\n").find((l) => l.startsWith("istio_tcp_connections_opened_total{") && l.includes(`reporter="${reporter}"`) && l.includes(`source_principal="${ID_A}"`) && l.includes(`destination_principal="${ID_B}"`) && l.includes('connection_security_policy="mutual_tls"'));
        expect(opened("source")).toBeDefined();
        expect(opened("destination")).toBeDefined();
        expect(m).toMatch(/^nshub_hbone_pool_connections [1-9]/m);

        await eventually(() => accessLines().some((l) => l["dst.hbone_addr"] === `${db.ip}:8080` && l.direction === "inbound"), 5000, "the access-log lines");
        const log = accessLines().filter((l) => l["dst.hbone_addr"] === `${db.ip}:8080` && l.reason === "done");
        // ztunnel's fields: dst.addr the tunnel (pod:15008), dst.hbone_addr the target inside it
        for (const direction of ["outbound", "inbound"]) {
          expect(log.find((l) => l.direction === direction)).toMatchObject({ "src.identity": ID_A, "dst.identity": ID_B, "dst.addr": `${db.ip}:15008`, "dst.hbone_addr": `${db.ip}:8080` });
        }
      },
      T,
    );

    test(
      "resets cross the tunnel both ways",
      async () => {
        const before = lines(resetSink).length;
        const r = await env.toolRun(web, ["send", "--host", db.ip, "--port", "8081", "--bytes", String(32 << 20)]);
        expect(["ECONNRESET", "EPIPE"]).toContain(r.error);
        await eventually(() => lines(resetSink).length > before, 5000, "sink's reset line");
        await eventually(async () => (await records((c) => c.originalDst === `${db.ip}:8081` && c.closeHow === "reset")).length >= 2, 5000, "both legs reset");

        const ackBefore = lines(ackSink).length;
        const c = await env.toolRun(web, ["send", "--host", db.ip, "--port", "8082", "--bytes", String(64 << 20), "--reset-on-reply"]);
        expect(c.reply).toBe("k");
        await eventually(() => lines(ackSink).length > ackBefore, 20_000, "sink's line");
        const line = lines(ackSink)
          .slice(ackBefore)
          .find((l) => l.peer === web.ip);
        expect(line?.error).toBe("ECONNRESET");
      },
      T,
    );

    test(
      "policy on the client's identity: intruder (C) is refused with 401 and reset, web (A) passes; plaintext from outside the mesh is refused too",
      async () => {
        const r = await env.toolRun(intruder, ["send", "--host", db.ip, "--port", "8080", "--bytes", "1000"]);
        expect(r.error).toBeDefined();
        const inb = await records((c) => c.direction === "inbound" && c.srcIdentity === ID_C);
        expect(inb.map((c) => c.closeHow)).toContain("policy_denied");
        const out = await records((c) => c.direction === "outbound" && c.srcIdentity === ID_C && c.originalDst === `${db.ip}:8080`);
        expect(out[0]?.closeHow).toBe("connect_failed");
        expect(out[0]?.error).toContain("answered 401");
        const m = await metrics();
        expect(m).toMatch(new RegExp(`istio_tcp_connections_failed_total\\{[^}]*reporter="destination"[^}]*source_principal="${ID_C.replace(/[/.]/g, "\\$&")}"[^}]*response_flags="DENY"[^}]*connection_security_policy="mutual_tls"[^}]*\\} 1`));
        expect(m).toMatch(/nshub_hbone_failures_total\{direction="outbound",reason="status"\} [1-9]/);
        expect(m).toMatch(/nshub_hbone_failures_total\{direction="inbound",reason="status_401"\} [1-9]/);

        const before = lines(sink).length;
        const plain = await env.toolRun(ext, ["send", "--host", db.ip, "--port", "8080", "--bytes", "1000"]);
        expect(plain.error).toBeDefined();
        expect(await records((c) => c.direction === "inbound" && c.source.startsWith(`${ext.ip}:`) && c.closeHow === "policy_denied")).not.toHaveLength(0);
        expect(lines(sink).slice(before).filter((l) => l.peer === ext.ip)).toHaveLength(0);
      },
      T,
    );

    if (relay === "userspace") return;

    test(
      "1 GiB through one tunnel, byte-exact",
      async () => {
        const r = await env.toolRun(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(1 << 30)], 110_000);
        expect(r.error).toBeUndefined();
        expect(JSON.parse(r.reply)).toMatchObject({ bytes: 1 << 30, sha256: r.sha256 });
      },
      T,
    );

    test(
      "1,000 concurrent connections ride a handful of pooled HBONE connections",
      async () => {
        const mtlsOpened = (m: string) =>
          m
            .split("\n")
            .filter((l) => l.startsWith("istio_tcp_connections_opened_total{") && l.includes('reporter="source"') && l.includes('connection_security_policy="mutual_tls"'))
            .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
        const mtlsBefore = mtlsOpened(await metrics());
        const r = await env.toolRun(web, ["many", "--host", db.ip, "--port", "7000", "--conns", "1000", "--bytes", "2000"], 110_000);
        expect(r).toMatchObject({ ok: 1000, failed: 0 });
        const m = await metrics();
        const pooled = Number(/^nshub_hbone_pool_connections (\d+)/m.exec(m)?.[1]);
        // ≤ 100 streams per connection: at least one connection per thread that had work, and
        // far fewer than one handshake per connection
        expect(pooled).toBeGreaterThanOrEqual(1);
        expect(pooled).toBeLessThanOrEqual(14);
        // every one of them counted as mutual_tls by the source side (all threads summed)
        expect(mtlsOpened(m) - mtlsBefore).toBe(1000);
      },
      T,
    );

    test(
      "ztunnel's statuses: a closed app port answers 503 and the client is reset at once (not a timeout); a CONNECT for another pod's IP answers 400",
      async () => {
        const r = await web.exec(["curl", "-sS", "-m", "8", `http://${db.ip}:5999/`], { timeoutMs: 20_000 });
        expect([7, 52, 56]).toContain(r.code);
        const out = await records((c) => c.direction === "outbound" && c.originalDst === `${db.ip}:5999`);
        expect(out.map((c) => [c.closeHow, c.error])).toEqual([["connect_failed", `hbone status: CONNECT ${db.ip}:5999 answered 503`]]);
        const inb = await records((c) => c.direction === "inbound" && c.originalDst === `${db.ip}:5999`);
        expect(inb.map((c) => [c.closeHow, c.error])).toEqual([["connect_failed", "ECONNREFUSED"]]);

        const wrong = await pyClient("a", 10, `${web.ip}:7000`);
        expect(wrong.status).toBe(400);
      },
      T,
    );

    test(
      "a pod with tunnels both ways enrolled and deleted 8 times: its 15008 listeners come and go in both threads, its own pooled tunnels close with it, no fd leaks",
      async () => {
        const tmp = await env.sim.addPod({ name: "tmp-0", namespace: "ns-t" });
        env.tool(tmp, ["echo", "--port", "7000"]);
        env.tool(web, ["echo", "--port", "7001"]);
        await tmp.waitForTcpPort(7000);
        await web.waitForTcpPort(7001);
        const hboneListeners = async () => (await tmp.exec(["ss", "-ltnH"])).stdout.split("\n").filter((l) => /:15008\s/.test(l)).length;
        const tunnelsFromTmp = async () => (await tmp.exec(["ss", "-tnH", "state", "established", "( dport = :15008 )"])).stdout.split("\n").filter(Boolean).length;
        // The first cycle may create what lives on (a thread's first dial, its pool's timers);
        // a leak grows with every cycle after it.
        let fds0 = 0;
        for (let i = 0; i < 8; i++) {
          if (i === 1) {
            await Bun.sleep(500);
            fds0 = p.fdCount();
          }
          await env.enroll(tmp, { serviceAccount: "tmp" });
          await eventually(async () => (await hboneListeners()) === 2, 10_000, `tmp's 15008 listeners (cycle ${i})`);
          const r = await env.toolRun(web, ["many", "--host", tmp.ip, "--port", "7000", "--conns", "5", "--bytes", "1000"]);
          expect(r).toMatchObject({ ok: 5, failed: 0 });
          // tmp as a client too (to web: db admits only web): its pooled tunnels live in tmp's netns
          const c = await env.toolRun(tmp, ["many", "--host", web.ip, "--port", "7001", "--conns", "3", "--bytes", "1000"]);
          expect(c).toMatchObject({ ok: 3, failed: 0 });
          expect(await tunnelsFromTmp()).toBeGreaterThan(0);
          await env.unenroll(tmp);
          await eventually(async () => (await hboneListeners()) === 0, 10_000, `tmp's 15008 listeners gone (cycle ${i})`);
          // ...and are closed with it (they would keep its netns alive until they idle out)
          await eventually(async () => (await tunnelsFromTmp()) === 0, 10_000, `tmp's pooled tunnels closed (cycle ${i})`);
        }
        const tunnelled = await records((c) => c.direction === "outbound" && c.originalDst === `${tmp.ip}:7000` && c.security === "mutual_tls" && c.closeHow === "done");
        expect(tunnelled.length).toBe(40);
        await eventually(() => p.fdCount() <= fds0, 10_000, `proxy fds back to ${fds0} after 7 more cycles (now ${p.fdCount()})`);
      },
      T,
    );

    /** Runs the Python HBONE client in `ext` against db's 15008; returns its JSON line. */
    async function pyClient(cert: string | undefined, size = 100_000, authority = `${db.ip}:7000`): Promise<Record<string, any>> {
      const args = [PY, join(FIXTURES, "hbone-client.py"), "--connect", `${db.ip}:15008`, "--ca", files.root!, "--expect", ID_B, "--authority", authority, "--size", String(size)];
      if (cert) args.push("--cert", files[`${cert}.crt`]!, "--key", files[`${cert}.key`]!);
      args.push("--forwarded", `for="${ext.ip}:4000"`, "--traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
      const r = await ext.exec(args, { timeoutMs: 30_000 });
      const last = r.stdout.trim().split("\n").pop() ?? "";
      if (!last.startsWith("{")) throw new Error(`hbone-client.py: ${r.code} ${r.stdout} ${r.stderr}\nproxy: ${p.proc.stderr().split("\n").filter((l) => !l.includes(`"scope":"access"`)).slice(-30).join("\n")}`);
      return JSON.parse(last);
    }

    test(
      "an independent HBONE client (Python h2 + ssl) with A's certificate reaches db's app through 15008; without a certificate, with an expired or an untrusted one it is refused",
      async () => {
        const ok = await pyClient("a");
        expect(ok).toMatchObject({ status: 200, tls: "TLSv1.3", alpn: "h2", peer: [ID_B], received: 100_000 });
        // the proxy raised its connection window past HTTP/2's initial 65,535 (src/hbone/wire.ts)
        expect(ok.max_conn_window).toBeGreaterThan(1 << 20);
        expect(ok.sha256).toBe(ok.sent_sha256);
        const inb = await records((c) => c.direction === "inbound" && c.originalDst === `${db.ip}:7000` && c.source.startsWith(`${ext.ip}:`));
        expect(inb[0]).toMatchObject({ security: "mutual_tls", srcIdentity: ID_A, dstIdentity: ID_B });

        const before = Number(/nshub_hbone_failures_total\{direction="inbound",reason="tls"\} (\d+)/.exec(await metrics())?.[1] ?? 0);
        for (const cert of [undefined, "aExpired", "aOther"]) {
          const r = await pyClient(cert);
          // Refused in the handshake, or (TLS 1.3: the client finishes first) by the alert or
          // close that follows it; never a response.
          expect(r.status).toBeUndefined();
          expect(r.error).toMatch(/^tls: |^connection closed$/);
        }
        await eventually(async () => Number(/nshub_hbone_failures_total\{direction="inbound",reason="tls"\} (\d+)/.exec(await metrics())?.[1] ?? 0) >= before + 3, 5000, "three refusals counted");
        // nothing of theirs reached the app
        expect(await records((c) => c.direction === "inbound" && c.source.startsWith(`${ext.ip}:`) && c.originalDst === `${db.ip}:7000`)).toHaveLength(1);
      },
      T,
    );

    /** The Python HBONE server in `ext` on 0.0.0.0:15008 with `cert`; one connection. */
    async function pyServer(cert: string): Promise<SimProcess> {
      const s = ext.spawn([PY, join(FIXTURES, "hbone-server.py"), "--listen", "0.0.0.0:15008", "--cert", files[`${cert}.crt`]!, "--key", files[`${cert}.key`]!, "--ca", files.root!, "--authority", `${ext.ip}:9000`]);
      await eventually(() => s.stdout().includes('"port"') || !s.running, 10_000, "the Python server");
      if (!s.running) throw new Error(`hbone-server.py: ${s.stderr()}`);
      return s;
    }

    test(
      "web → a mesh workload served by an independent HBONE server (Python): CONNECT with ztunnel's :authority and headers, echo byte-exact",
      async () => {
        const s = await pyServer("b");
        try {
          const r = await env.toolRun(web, ["many", "--host", ext.ip, "--port", "9000", "--conns", "1", "--bytes", "300000"]);
          expect(r).toMatchObject({ ok: 1, failed: 0 });
          await eventually(() => lines(s).some((l) => l.authority), 5000, "the server's line");
          const line = lines(s).find((l) => l.authority)!;
          expect(line).toMatchObject({ peer: ID_A, method: "CONNECT", authority: `${ext.ip}:9000`, scheme: null, path: null, tls: "TLSv1.3", alpn: "h2", echoed: 300000 });
          expect(line.forwarded).toMatch(new RegExp(`^for="${web.ip.replace(/\./g, "\\.")}:\\d+"$`));
          expect(line.baggage).toContain("k8s.namespace.name=ns-a");
          expect(line.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
        } finally {
          await s.stop(2000);
        }
      },
      T,
    );

    test(
      "a server with the wrong identity, an expired or an untrusted certificate: the client is reset, nothing in plaintext, counted with the reason",
      async () => {
        for (const [cert, reason] of [
          ["c", "identity"],
          ["bExpired", "tls"],
          ["bOther", "tls"],
        ] as const) {
          const s = await pyServer(cert);
          try {
            const before = Number(new RegExp(`nshub_hbone_failures_total\\{direction="outbound",reason="${reason}"\\} (\\d+)`).exec(await metrics())?.[1] ?? 0);
            const r = await env.toolRun(web, ["many", "--host", ext.ip, "--port", "9000", "--conns", "1", "--bytes", "1000"]);
            expect(r).toMatchObject({ ok: 0, failed: 1 });
            const m = await metrics();
            const after = Number(new RegExp(`nshub_hbone_failures_total\\{direction="outbound",reason="${reason}"\\} (\\d+)`).exec(m)?.[1] ?? 0);
            expect({ cert, after, failures: m.split("\n").filter((l) => l.startsWith("nshub_hbone_failures_total")) }).toEqual({ cert, after: before + 1, failures: expect.anything() });
            expect(lines(s).filter((l) => l.authority)).toHaveLength(0);
          } finally {
            await s.stop(2000);
          }
        }
        const failed = await records((c) => c.direction === "outbound" && c.originalDst === `${ext.ip}:9000` && c.closeHow === "connect_failed");
        expect(failed.map((c) => c.error).join("\n")).toContain("hbone identity");
      },
      T,
    );

    // Last: it stops the proxy.
    test(
      "SIGTERM drains open tunnels: 15008 stops accepting, transfers in flight finish intact, exit 0 with nothing reset",
      async () => {
        const transfers = Array.from({ length: 4 }, () => env.toolRun(web, ["send", "--host", db.ip, "--port", "8080", "--bytes", String(16 << 20), "--chunk-delay-ms", "100"], T));
        await eventually(async () => (await records((c) => c.state === "open" && c.security === "mutual_tls" && c.originalDst === `${db.ip}:8080`)).length >= 8, 10_000, "4 tunnels open (both legs)");
        p.proc.proc.kill("SIGTERM");
        // 15008 closes in db at once (both threads), while the tunnels go on
        await eventually(async () => !/:15008\s/.test((await db.exec(["ss", "-ltnH"])).stdout), 5_000, "db's 15008 listeners closed");
        expect((await records((c) => c.state !== "closed" && c.security === "mutual_tls")).length).toBeGreaterThan(0);
        for (const t of await Promise.all(transfers)) {
          expect(t.error).toBeUndefined();
          expect(JSON.parse(t.reply)).toMatchObject({ bytes: 16 << 20, sha256: t.sha256, peer: web.ip });
        }
        expect(await p.proc.exited).toBe(0);
        const drained = p.drainedLine()!;
        expect(drained).toMatchObject({ reset: 0 });
        expect(drained.finished).toBeGreaterThanOrEqual(8);
      },
      T,
    );
  });
}

