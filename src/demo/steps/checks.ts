// The traffic checks of the summary, made from what step 8 read back: capture in both directions,
// the client's pod IP seen by the server, the non-enrolled pod not captured, bytes counted.
import { formatBytes } from "../../cli/admin-client.ts";
import { ipOf, type Conn, type MetricsSnapshot } from "../observe.ts";
import { WEB_HTTP_PORT, WEB_IPERF_PORT, type DemoRun, type HttpReply } from "../run.ts";

export function addTrafficChecks(demo: DemoRun, conns: Conn[], httpSeen: string[], echoPeers: string[], delta: MetricsSnapshot | undefined): void {
  const { web, client, outsider } = demo.allPods;
  const httpDst = `${web.ip}:${WEB_HTTP_PORT}`;
  const out = conns.find((c) => c.pod === "demo/client" && c.direction === "outbound" && c.dst === httpDst);
  demo.checks.push({
    id: "captured-outbound",
    title: "captured outbound",
    ok: out !== undefined,
    detail: out
      ? `demo/client → ${httpDst} went through the proxy's outbound listener in demo/client (${out.src} → ${out.dst}, ${out.bytesUp} B up, ${out.bytesDown} B down)`
      : `no outbound record of demo/client → ${httpDst}`,
  });
  const inb = conns.find((c) => c.pod === "demo/web" && c.direction === "inbound" && c.dst === httpDst && ipOf(c.src) === client.ip);
  demo.checks.push({
    id: "captured-inbound",
    title: "captured inbound",
    ok: inb !== undefined,
    detail: inb ? `demo/web accepted ${inb.src} → ${inb.dst} on the proxy's inbound listener in demo/web` : `no inbound record at demo/web from ${client.ip}`,
  });
  const httpReply = (demo.facts.http as { reply: HttpReply }).reply;
  const httpIp = ipOf(httpReply.client);
  const srcOk = httpIp === client.ip && httpSeen.includes(client.ip) && echoPeers.includes(client.ip) && (inb === undefined || ipOf(inb.src) === client.ip);
  demo.checks.push({
    id: "source-ip",
    title: "source IP preserved",
    ok: srcOk,
    detail: srcOk
      ? `demo/web saw ${client.ip} = demo/client's pod IP (HTTP answer, HTTP server log, echo server log), not the proxy's`
      : `demo/client is ${client.ip}, but demo/web saw HTTP ${httpIp}, logged [${httpSeen.join(", ")}], echo [${echoPeers.join(", ")}]`,
  });
  const outsiderReply = (demo.facts.outsiderHttp as { reply: HttpReply }).reply;
  const ownRecords = conns.filter((c) => c.pod === "other/outsider");
  const outsiderFacts = (demo.facts.pods as { name: string; agentState: string; proxyListeners: number[] }[]).find((p) => p.name === "outsider");
  const atWeb = conns.filter((c) => c.pod === "demo/web" && ipOf(c.src) === outsider.ip);
  const ncOk = ipOf(outsiderReply.client) === outsider.ip && ownRecords.length === 0 && outsiderFacts?.agentState === "not-enrolled" && outsiderFacts.proxyListeners.length === 0;
  demo.checks.push({
    id: "not-captured",
    title: "non-enrolled pod not captured",
    ok: ncOk,
    detail: ncOk
      ? `other/outsider has no proxy listener and no connection of its own in the proxy; its request was served and demo/web saw ${outsider.ip}` +
        (atWeb.length ? ` (recorded only on demo/web's own inbound side, web being enrolled)` : "")
      : `other/outsider: ${ownRecords.length} records of its own, agent says ${outsiderFacts?.agentState}, listeners [${outsiderFacts?.proxyListeners.join(", ")}], web saw ${outsiderReply.client}`,
  });
  const iperf = demo.facts.iperf3 as { bytes: number };
  if (delta) {
    const v = delta.values;
    const opened = v.istio_tcp_connections_opened_total!;
    const recv = v.istio_tcp_received_bytes_total!;
    const ok = opened.source >= 1 && opened.destination >= 1 && recv.source >= iperf.bytes && recv.destination >= iperf.bytes;
    demo.checks.push({
      id: "bytes",
      title: "bytes counted",
      ok,
      detail: `istio_tcp_connections_opened_total +${opened.source} outbound, +${opened.destination} inbound; istio_tcp_received_bytes_total +${formatBytes(recv.source)} outbound, +${formatBytes(recv.destination)} inbound (iperf3's server received ${formatBytes(iperf.bytes)})`,
    });
  } else {
    const data = conns.filter((c) => c.dst === `${web.ip}:${WEB_IPERF_PORT}`);
    const up = Math.max(0, ...data.filter((c) => c.direction === "inbound").map((c) => c.bytesUp));
    demo.checks.push({
      id: "bytes",
      title: "bytes counted",
      ok: up >= iperf.bytes,
      detail: `the proxy's record of the iperf3 data connection counted ${formatBytes(up)} (iperf3's server received ${formatBytes(iperf.bytes)}); the metrics endpoint did not answer`,
    });
  }
}
