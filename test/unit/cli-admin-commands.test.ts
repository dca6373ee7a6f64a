// The operator commands (status, pods, connections, logs-level) against REAL running HTTP
// servers on loopback: the proxy's admin and readiness apps from src/admin over a FAKE
// ProxyView, and a FAKE agent admin answering /readyz and /pods like src/agent/admin.ts. Both
// fakes are stand-ins (the test names say so); the same commands against the real daemons are in
// test/netns/admin-traffic.test.ts. The daemon-not-running case uses a port nothing listens on,
// in-process and through src/main.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { Hono } from "hono";
import { createProxyAdminApp, createReadinessApp } from "../../src/admin/servers.ts";
import type { ConnectionView, ProxyView, WorkloadView } from "../../src/admin/views.ts";
import { formatAge, formatBytes, renderTable } from "../../src/cli/admin-client.ts";
import { main as connections } from "../../src/cli/connections.ts";
import { main as logsLevel } from "../../src/cli/logs-level.ts";
import { main as pods } from "../../src/cli/pods.ts";
import { main as status } from "../../src/cli/status.ts";
import { capture, closedPort } from "../helpers/cli-io.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const BUN = process.execPath;

class FakeProxyView implements ProxyView {
  level = "info";
  ready = { ready: true, reason: "ready" };
  pods: WorkloadView[] = [];
  conns: ConnectionView[] = [];
  workloads() {
    return this.pods;
  }
  connections() {
    return this.conns;
  }
  config() {
    return {};
  }
  version() {
    return { version: "0.1.0-test" };
  }
  readiness() {
    return this.ready;
  }
  getLogLevel() {
    return this.level;
  }
  setLogLevel(l: string) {
    this.level = l;
  }
  quit() {}
}



const view = new FakeProxyView();
const listeners = [
  { kind: "outbound", address: "0.0.0.0", port: 15001 },
  { kind: "inbound", address: "0.0.0.0", port: 15006 },
];
view.pods = [
  { uid: "0b7e0c52-1111-4c8e-9d7e-aaaaaaaaaaaa", name: "client", namespace: "default", serviceAccount: "default", netns: "4:4026532888", state: "Up", listeners },
  { uid: "1c8f1d63-2222-4c8e-9d7e-bbbbbbbbbbbb", name: "server-with-a-long-name", namespace: "shop", serviceAccount: "server", netns: "4:4026532999", state: "Up", listeners, ips: ["10.1.0.5"] },
  { uid: "2d901e74-3333-4c8e-9d7e-cccccccccccc", name: "stuck", namespace: "default", serviceAccount: "default", netns: "4:4026532777", state: "Pending", listeners: [], error: "bind 0.0.0.0:15001: EADDRINUSE" },
];
const now = Date.now();
view.conns = [
  {
    id: 7,
    pod: { uid: view.pods[0]!.uid, name: "client", namespace: "default" },
    direction: "outbound",
    source: { ip: "10.1.0.4", port: 40404 },
    originalDst: { ip: "10.1.0.5", port: 8080 },
    upstream: { ip: "10.1.0.5", port: 8080 },
    bytesSent: 1536,
    bytesReceived: 12,
    startedAt: now - 75_000,
    state: "open",
  },
  {
    id: 8,
    pod: { uid: view.pods[1]!.uid, name: "server-with-a-long-name", namespace: "shop" },
    direction: "inbound",
    source: { ip: "10.1.0.4", port: 40404 },
    originalDst: { ip: "10.1.0.5", port: 8080 },
    upstream: { ip: "10.1.0.5", port: 8080 },
    bytesSent: 1536,
    bytesReceived: 12,
    startedAt: now - 5_000,
    state: "half_closed",
    mtls: { srcIdentity: "spiffe://cluster.local/ns/default/sa/client", dstIdentity: "spiffe://cluster.local/ns/shop/sa/server", tunnelAddr: "10.1.0.4:40404" },
  },
];

// Stand-in for the agent's admin (same paths and JSON shape as src/agent/admin.ts).
let agentReady = true;
const agentApp = new Hono();
agentApp.get("/readyz", (c) => (agentReady ? c.text("ready\n") : c.text("not ready: rebuilding the pod cache\n", 503)));
agentApp.get("/pods", (c) =>
  c.json({
    ready: agentReady,
    pods: [
      { uid: view.pods[0]!.uid, namespace: "default", name: "client", state: "enrolled", ips: ["10.1.0.4"] },
      { uid: view.pods[1]!.uid, namespace: "shop", name: "server-with-a-long-name", state: "enrolled", ips: ["10.1.0.5"] },
      { uid: view.pods[2]!.uid, namespace: "default", name: "stuck", state: "pending", ips: ["10.1.0.6"] },
      { uid: "x", namespace: "kube-system", name: "coredns", state: "not-enrolled", ips: ["10.1.0.2"] },
    ],
  }),
);

let servers: ReturnType<typeof Bun.serve>[] = [];
let admin = "";
let readiness = "";
let agent = "";
/** Where no admin socket is (a write there must say the proxy is not running). */
const noSocket = `/nonexistent-${process.pid}/proxy-admin.sock`;

beforeAll(() => {
  const a = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: createProxyAdminApp(view).fetch });
  const r = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: createReadinessApp(view).fetch });
  const g = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: agentApp.fetch });
  servers = [a, r, g];
  admin = `127.0.0.1:${a.port}`;
  readiness = `http://127.0.0.1:${r.port}`;
  agent = `127.0.0.1:${g.port}`;
});
afterAll(() => {
  for (const s of servers) s.stop(true);
});

const both = () => ["--admin", admin, "--readiness", readiness, "--agent-admin", agent];

describe("nshub pods against a running admin server (fake ProxyView stand-in)", () => {
  test("aligned table: namespace/name, uid, IPs (proxy's, else the agent's), state, listeners, connections; pending reason below", async () => {
    const io = capture();
    expect(await pods(["--admin", admin, "--agent-admin", agent], io)).toBe(0);
    expect(io.stderr).toBe("");
    const lines = io.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAMESPACE\/NAME\s+UID\s+IPS\s+STATE\s+LISTENERS\s+CONNECTIONS$/);
    expect(lines.slice(1, 4).map((l) => l.split(/\s{2,}/)[0])).toEqual(["default/client", "default/stuck", "shop/server-with-a-long-name"]);
    expect(lines[1]).toContain("0b7e0c52-1111-4c8e-9d7e-aaaaaaaaaaaa");
    expect(lines[1]).toContain("10.1.0.4"); // from the agent: the proxy does not know it
    expect(lines[1]).toContain("outbound:15001 inbound:15006");
    expect(lines[1]).toMatch(/1 \(0 in, 1 out\)$/);
    expect(lines[2]).toMatch(/\bPending\b.*\s-\s+0$/);
    expect(lines[3]).toContain("10.1.0.5");
    // columns line up: every column starts at the same offset in every row
    const col = (l: string, text: string) => l.indexOf(text);
    expect(col(lines[1]!, "0b7e0c52")).toBe(col(lines[0]!, "UID"));
    expect(col(lines[3]!, "1c8f1d63")).toBe(col(lines[0]!, "UID"));
    expect(col(lines[1]!, "Up")).toBe(col(lines[0]!, "STATE"));
    expect(lines[1]!.length).toBe(lines[0]!.length); // right-aligned last column ends with the header
    expect(lines.slice(-1)[0]).toBe("default/stuck is pending: bind 0.0.0.0:15001: EADDRINUSE");
  });

  test("--json: one object per pod with the same facts", async () => {
    const io = capture();
    expect(await pods(["--json", "--admin", `http://${admin}`, "--agent-admin", agent], io)).toBe(0);
    const rows = JSON.parse(io.stdout) as { namespace: string; name: string; uid: string; ips: string[]; state: string; listeners: unknown[]; connections: { inbound: number; outbound: number } }[];
    expect(rows.map((r) => `${r.namespace}/${r.name}`)).toEqual(["default/client", "default/stuck", "shop/server-with-a-long-name"]);
    expect(rows[0]).toMatchObject({ uid: view.pods[0]!.uid, ips: ["10.1.0.4"], state: "Up", connections: { inbound: 0, outbound: 1 } });
    expect(rows[0]!.listeners).toHaveLength(2);
    expect(rows[2]).toMatchObject({ ips: ["10.1.0.5"], connections: { inbound: 1, outbound: 0 } });
  });

  test("-n filters by namespace; the agent being down only costs the IPs", async () => {
    const io = capture();
    expect(await pods(["-n", "shop", "--admin", admin, "--agent-admin", `127.0.0.1:${closedPort()}`], io)).toBe(0);
    expect(io.stdout.trimEnd().split("\n")).toHaveLength(2);
    expect(io.stdout).toContain("shop/server-with-a-long-name");
  });
});

describe("nshub connections against a running admin server (fake ProxyView stand-in)", () => {
  test("table: pod, direction, source, original and actual destination, bytes each way, age, state, security and identities", async () => {
    const io = capture();
    expect(await connections(["--admin", admin], io)).toBe(0);
    const lines = io.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^POD\s+DIR\s+SOURCE\s+ORIGINAL DST\s+ACTUAL DST\s+SRC→DST\s+DST→SRC\s+AGE\s+STATE\s+SECURITY\s+IDENTITIES \(SRC → DST\)$/);
    expect(lines[1]!.split(/\s{2,}/)).toEqual(["default/client", "out", "10.1.0.4:40404", "10.1.0.5:8080", "10.1.0.5:8080", "1.5 KiB", "12 B", "1m15s", "open", "plaintext", "-"]);
    expect(lines[2]!.split(/\s{2,}/)).toEqual(["shop/server-with-a-long-name", "in", "10.1.0.4:40404", "10.1.0.5:8080", "10.1.0.5:8080", "1.5 KiB", "12 B", "5s", "half_closed", "mTLS", "default/client → shop/server"]);
    // right-aligned numbers end under their headers
    expect(lines[1]!.indexOf("1.5 KiB") + "1.5 KiB".length).toBe(lines[0]!.indexOf("SRC→DST") + "SRC→DST".length);
  });

  test("--json and --pod", async () => {
    const io = capture();
    expect(await connections(["--json", "--pod", "shop/server-with-a-long-name", "--admin", admin], io)).toBe(0);
    const rows = JSON.parse(io.stdout) as { id: number; direction: string; source: string; originalDst: string; actualDst: string; bytesSent: number; bytesReceived: number }[];
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      id: 8,
      direction: "inbound",
      source: "10.1.0.4:40404",
      originalDst: "10.1.0.5:8080",
      actualDst: "10.1.0.5:8080",
      bytesSent: 1536,
      bytesReceived: 12,
      protocol: "HBONE",
      srcIdentity: "spiffe://cluster.local/ns/default/sa/client",
      dstIdentity: "spiffe://cluster.local/ns/shop/sa/server",
    });
  });

  test("--watch --json --count 3: one JSON line per refresh, live data each time", async () => {
    const io = capture();
    const run = connections(["--watch", "--json", "--count", "3", "--interval", "0.05", "--admin", admin], io);
    expect(await run).toBe(0);
    const ticks = io.stdout.trimEnd().split("\n").map((l) => JSON.parse(l) as { time: string; connections: unknown[] });
    expect(ticks).toHaveLength(3);
    expect(ticks.every((t) => t.connections.length === 2)).toBe(true);
  });

  test("--watch (text, not a terminal): a header per refresh, no screen clearing", async () => {
    const io = capture();
    expect(await connections(["--watch", "--count", "2", "--interval", "0.05", "--admin", admin], io)).toBe(0);
    expect(io.stdout.match(/^every 0\.05s: nshub connections \(2 live\)/gm)).toHaveLength(2);
    expect(io.stdout).not.toContain("\x1b[");
  });

  test("bad flag values are usage errors (exit 2)", async () => {
    const io = capture();
    expect(await connections(["--watch", "--interval", "0", "--admin", admin], io)).toBe(2);
    expect(io.stderr).toBe('nshub connections: --interval: expected a number > 0, got "0"\n');
  });
});

describe("nshub status against running daemons (fake proxy view and fake agent admin, stand-ins)", () => {
  test("both running and ready: table with readiness, pod counts, connections; exit 0", async () => {
    const io = capture();
    expect(await status(both(), io)).toBe(0);
    const lines = io.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^DAEMON\s+ADDRESS\s+STATUS\s+READY\s+PODS\s+CONNECTIONS\s+VERSION$/);
    expect(lines[1]!.split(/\s{2,}/)).toEqual(["agent", agent, "running", "yes", "2 enrolled, 1 pending, 1 not-enrolled", "-", "-"]);
    expect(lines[2]!.split(/\s{2,}/)).toEqual(["proxy", admin, "running", "yes", "2 Up, 1 Pending", "2 (1 in, 1 out)", "0.1.0-test"]);
    expect(lines).toHaveLength(3);
  });

  test("--json", async () => {
    const io = capture();
    expect(await status(["--json", ...both()], io)).toBe(0);
    const s = JSON.parse(io.stdout);
    expect(s.agent).toEqual({ address: agent, running: true, ready: true, readiness: "ready", pods: { total: 4, byState: { enrolled: 2, pending: 1, "not-enrolled": 1 } } });
    expect(s.proxy).toEqual({ address: admin, running: true, ready: true, readiness: "ready", pods: { total: 3, byState: { Up: 2, Pending: 1 } }, version: "0.1.0-test", connections: { inbound: 1, outbound: 1 } });
  });

  test("not ready: the reason is printed and the exit code is 1", async () => {
    view.ready = { ready: false, reason: "1 pod(s) pending: default/stuck: bind 0.0.0.0:15001: EADDRINUSE" };
    agentReady = false;
    try {
      const io = capture();
      expect(await status(both(), io)).toBe(1);
      expect(io.stdout).toContain("agent: not ready: rebuilding the pod cache");
      expect(io.stdout).toContain("proxy: not ready: 1 pod(s) pending: default/stuck");
      expect(io.stdout.split("\n")[2]!.split(/\s{2,}/)[3]).toBe("no");
    } finally {
      view.ready = { ready: true, reason: "ready" };
      agentReady = true;
    }
  });

  test("the agent not running: its row says so, one sentence tells how to start it, exit 1", async () => {
    const port = closedPort();
    const io = capture();
    expect(await status(["--admin", admin, "--readiness", readiness, "--agent-admin", `127.0.0.1:${port}`], io)).toBe(1);
    expect(io.stdout).toMatch(new RegExp(`^agent\\s+127\\.0\\.0\\.1:${port}\\s+not running\\s+-\\s+-`, "m"));
    expect(io.stdout).toContain(`the nshub agent is not running (nothing listens on 127.0.0.1:${port}); start it with: nshub agent`);
    expect(io.stdout).toMatch(/^proxy\s.*running\s+yes/m);
    expect(io.stderr).toBe("");
  });
});

describe("daemon not running: one sentence, how to start it, non-zero exit, no stack trace", () => {
  const sentence = (port: number) => `the nshub proxy is not running (nothing listens on 127.0.0.1:${port}); start it with: nshub proxy\n`;

  test("pods, connections, logs-level (in-process)", async () => {
    const port = closedPort();
    for (const run of [pods, connections, logsLevel]) {
      const io = capture();
      expect(await run(["--admin", `127.0.0.1:${port}`], io)).toBe(1);
      expect(io.stderr).toBe(sentence(port));
      expect(io.stdout).toBe("");
    }
  });

  test("status with both daemons down: two sentences, exit 1", async () => {
    const [p, r, a] = [closedPort(), closedPort(), closedPort()];
    const io = capture();
    expect(await status(["--admin", `127.0.0.1:${p}`, "--readiness", `127.0.0.1:${r}`, "--agent-admin", `127.0.0.1:${a}`], io)).toBe(1);
    expect(io.stdout).toContain(`the nshub agent is not running (nothing listens on 127.0.0.1:${a}); start it with: nshub agent`);
    expect(io.stdout).toContain(`the nshub proxy is not running (nothing listens on 127.0.0.1:${p}); start it with: nshub proxy`);
  });

  test("through the dispatcher (bun src/main.ts …): exit 1 and exactly the sentence on stderr", async () => {
    const port = closedPort();
    const setLevel = ["logs-level", "debug", "--admin-socket", noSocket];
    for (const cmd of [["pods"], ["connections", "--watch"], ["logs-level"], setLevel, ["status", "--json"]]) {
      const p = Bun.spawn([BUN, MAIN, ...cmd, "--admin", `127.0.0.1:${port}`, ...(cmd[0] === "status" ? ["--agent-admin", `127.0.0.1:${port}`, "--readiness", `127.0.0.1:${port}`] : [])], {
        stdout: "pipe",
        stderr: "pipe",
        stdin: "ignore",
      });
      const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      expect(code).toBe(1);
      expect(err + out).not.toMatch(/\bat .*\.ts:\d+|Error:|^\s+at /m);
      if (cmd[0] === "status") expect(JSON.parse(out).proxy.error).toBe(sentence(port).trimEnd());
      else if (cmd === setLevel) expect(err).toBe(`the nshub proxy is not running (nothing listens on ${noSocket}); start it with: nshub proxy\n`);
      else {
        expect(err).toBe(sentence(port));
        expect(out).toBe("");
      }
    }
  });

  test("a timeout is a sentence too", async () => {
    const slow = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: async () => (await Bun.sleep(2000), new Response("{}")) });
    try {
      const io = capture();
      expect(await pods(["--admin", `127.0.0.1:${slow.port}`, "--timeout", "0.2"], io)).toBe(1);
      expect(io.stderr).toBe(`the nshub proxy at 127.0.0.1:${slow.port} did not answer within 0.2 s; it may be stuck or overloaded (see its logs)\n`);
    } finally {
      slow.stop(true);
    }
  });

  test("something that is not an nshub admin: a sentence, not a JSON parse error", async () => {
    const other = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("<html>hello</html>") });
    try {
      const io = capture();
      expect(await pods(["--admin", `127.0.0.1:${other.port}`], io)).toBe(1);
      expect(io.stderr).toBe(`127.0.0.1:${other.port} answered /config_dump with something that is not JSON; is it an nshub proxy admin address?\n`);
    } finally {
      other.stop(true);
    }
  });
});

describe("table and unit helpers", () => {
  test("renderTable pads by code points and trims trailing blanks", () => {
    expect(renderTable([{ header: "A" }, { header: "→", align: "right" }, { header: "C" }], [["xx", "1", ""], ["y", "22", "z"]])).toBe("A    →  C\nxx   1\ny   22  z");
  });
  test("formatBytes / formatAge", () => {
    expect([0, 1023, 1024, 1536, 10 * 1024 * 1024, 5 * 1024 ** 3].map(formatBytes)).toEqual(["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10 MiB", "5.0 GiB"]);
    expect([0, 59, 60, 75, 3600, 3725, 86400 + 7200].map(formatAge)).toEqual(["0s", "59s", "1m00s", "1m15s", "1h00m", "1h02m", "1d02h"]);
  });
});
