// Step 8: what node 1's proxy saw of the traffic on node 1, shown with the operator's own commands where they work (`nshub pods`,
// `nshub connections` inside the node), then every captured connection leg, what demo/web's
// servers saw, and the metrics that moved. The checks are made from the same data (checks.ts).
import { renderTable } from "../../cli/admin-client.ts";
import { childEnv, displayPath } from "../env.ts";
import { curlJson, deltaOf, httpClientsSeen, ipOf, readConnections, renderConnections, renderMetricsDelta, socatPeers, type Conn, type MetricsSnapshot } from "../observe.ts";
import { PROXY_ADMIN, PROXY_METRICS, WEB_ECHO_PORT, WEB_HTTP_PORT, WEB_IPERF_PORT, type DemoNode, type DemoRun } from "../run.ts";
import { addTrafficChecks } from "./checks.ts";

export async function showWhatTheProxySaw(demo: DemoRun, before: MetricsSnapshot | undefined): Promise<void> {
  demo.step(8, "what node-1's proxy saw");
  const { web, client, outsider } = demo.allPods;
  const exe = displayPath(demo.bin.exe);
  const nodeCmd = (args: string) => `ip netns exec ${demo.node.name} ${exe} ${args}`;

  // the pods the proxy serves
  demo.out.line("");
  demo.out.cmd(nodeCmd("pods"));
  const pods = await nshubInNode(demo, ["pods"]);
  if (pods.ok) demo.out.info(pods.text);
  else {
    const raw = await curlJson<{ pods: { namespace: string; name: string; state: string; listeners: { kind: string; port: number }[]; connections: number }[] }>(demo.node, `${PROXY_ADMIN}/pods`);
    demo.out.info(demo.out.dim(`(nshub pods: ${pods.text.split("\n")[0]}; showing the proxy's GET /pods instead)`));
    demo.out.info(
      renderTable(
        [{ header: "NAMESPACE/NAME" }, { header: "STATE" }, { header: "LISTENERS" }, { header: "CONNECTIONS", align: "right" }],
        (raw?.pods ?? []).map((p) => [`${p.namespace}/${p.name}`, p.state, p.listeners.map((l) => `${l.kind}:${l.port}`).join(" "), String(p.connections)]),
      ),
    );
  }

  // live connections: the echo session is still open
  demo.out.line("");
  demo.out.cmd(nodeCmd("connections") + "      (the TCP echo from step 6 is still open)");
  const live = await nshubInNode(demo, ["connections"]);
  if (live.ok) demo.out.info(live.text);
  else {
    const rep = await readConnections(demo.node, PROXY_ADMIN, demo.n1.path("proxy.log"));
    demo.out.info(demo.out.dim(`(nshub connections: ${live.text.split("\n")[0]}; showing ${rep.source} instead)`));
    demo.out.info(renderConnections(rep.conns.filter((c) => c.live)));
  }
  // close the echo session; its records then move to "finished"
  const sink = demo.echo?.proc.stdin as unknown as { end(): void } | undefined;
  sink?.end();
  await Promise.race([demo.echo?.exited, Bun.sleep(8000)]);

  // every captured connection leg of the demo's traffic
  const expect = (cs: Conn[]) =>
    cs.some((c) => c.pod === "demo/client" && c.direction === "outbound" && c.dst === `${web.ip}:${WEB_HTTP_PORT}`) &&
    cs.some((c) => c.pod === "demo/web" && c.direction === "inbound" && ipOf(c.src) === client.ip && c.dst === `${web.ip}:${WEB_HTTP_PORT}`) &&
    cs.some((c) => c.pod === "demo/web" && c.direction === "inbound" && ipOf(c.src) === outsider.ip) &&
    cs.some((c) => c.dst === `${web.ip}:${WEB_ECHO_PORT}` && !c.live);
  let rep = await readConnections(demo.node, PROXY_ADMIN, demo.n1.path("proxy.log"));
  for (let i = 0; i < 50 && !expect(rep.conns); i++) {
    demo.checkInterrupted();
    await Bun.sleep(100);
    rep = await readConnections(demo.node, PROXY_ADMIN, demo.n1.path("proxy.log"));
  }
  // In the order the traffic was sent: curl, echo, iperf3, then the outsider; outbound leg first.
  const rank = (c: Conn) => {
    const port = Number(c.dst.slice(c.dst.lastIndexOf(":") + 1));
    const i = ipOf(c.src) === outsider.ip ? 3 : [WEB_HTTP_PORT, WEB_ECHO_PORT, WEB_IPERF_PORT].indexOf(port);
    return (i < 0 ? 9 : i) * 2 + (c.direction === "outbound" ? 0 : 1);
  };
  const conns = [...rep.conns].sort((a, b) => rank(a) - rank(b));
  const label = (c: Conn) => {
    const port = Number(c.dst.slice(c.dst.lastIndexOf(":") + 1));
    const what = port === WEB_HTTP_PORT ? "curl" : port === WEB_ECHO_PORT ? "TCP echo" : port === WEB_IPERF_PORT ? "iperf3" : "";
    const who = ipOf(c.src) === outsider.ip ? " from other/outsider" : "";
    return what + who;
  };
  demo.out.line("");
  demo.out.info(`captured connection legs (from ${rep.source}):`);
  demo.out.info(renderConnections(conns, label), 8);
  demo.facts.connections = conns;

  // what the servers saw
  const seen = httpClientsSeen(demo.n1.path("web-http.log"));
  const echoPeers = socatPeers(demo.n1.path("web-echo.log"));
  demo.out.line("");
  demo.out.info("what demo/web's servers saw (their own logs):");
  const who = (ip: string) => (ip === client.ip ? "demo/client's pod IP" : ip === outsider.ip ? "other/outsider's pod IP" : "not a pod IP!");
  demo.out.info(
    renderTable(
      [{ header: "SERVER" }, { header: "CLIENT IP" }, { header: "" }],
      [...seen.map((ip) => [`HTTP :${WEB_HTTP_PORT}`, ip, who(ip)]), ...echoPeers.map((ip) => [`TCP echo :${WEB_ECHO_PORT}`, ip, who(ip)])],
    ),
    8,
  );
  demo.facts.serversSaw = { http: seen, echo: echoPeers };

  // metrics
  const after = await demo.metrics();
  let delta: MetricsSnapshot | undefined;
  demo.out.line("");
  if (before && after) {
    delta = deltaOf(before, after);
    demo.out.info(`metrics that moved (${PROXY_METRICS.replace("http://", "")}/metrics in the node, before → after the traffic):`);
    demo.out.info(renderMetricsDelta(delta), 8);
    demo.facts.metricsDelta = delta.values;
  } else {
    demo.out.info(demo.out.dim(`(the proxy's metrics endpoint ${PROXY_METRICS}/metrics did not answer; bytes below come from its connection records)`));
  }

  addTrafficChecks(demo, conns, seen, echoPeers, delta);
}

/** An operator command (`nshub pods`, …) run inside a node (node 1 by default), where the admin addresses are. */
export async function nshubInNode(demo: DemoRun, args: string[], node: DemoNode = demo.n1): Promise<{ ok: boolean; text: string }> {
  const r = await node.ns.exec([demo.bin.exe, ...args], { timeoutMs: 20_000, env: childEnv() });
  return { ok: r.code === 0, text: (r.code === 0 ? r.stdout : r.stderr || r.stdout).trimEnd() };
}
