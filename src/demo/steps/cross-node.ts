// Step 9: across the nodes. demo/client (node 1) sends a request carrying a random marker to
// demo/backend (node 2): curl, and a TCP echo kept open while both proxies show it with
// `nshub connections` (SECURITY mTLS, IDENTITIES). Node 1's proxy takes it from demo/client in
// plaintext and carries it in HBONE (mutual TLS to demo/backend's port 15008, as demo/client's
// identity, expecting demo/backend's); node 2's proxy verifies demo/client's certificate and
// connects to the app from demo/client's IP. Meanwhile tcpdump watches the fabric (wire.ts).
// The checks: the request worked and the server saw the client pod's IP; both proxies' records
// say mutual_tls with both identities; nothing of the payload was readable on the wire.
import { randomBytes } from "node:crypto";
import { renderTable } from "../../cli/admin-client.ts";
import { childEnv, displayPath } from "../env.ts";
import { curlIn, curlJson, httpClientsSeen, ipOf, socatPeers } from "../observe.ts";
import { BACKEND_SERVICE_ACCOUNT, DemoError, HBONE_PORT, PROXY_ADMIN, PROXY_METRICS, TRUST_DOMAIN, WEB_ECHO_PORT, WEB_HTTP_PORT, type DemoNode, type DemoRun } from "../run.ts";
import { nshubInNode } from "./report.ts";
import { httpFrom } from "./traffic.ts";
import { judgeWire, startCapture } from "./wire.ts";

/** A connection record as GET /connections?recent gives it, with the HBONE fields. */
interface Rec {
  pod: { namespace: string; name: string };
  direction: "inbound" | "outbound";
  source: string;
  originalDst: string;
  state: string;
  closeHow: string | null;
  security?: string;
  srcIdentity?: string;
  dstIdentity?: string;
  tunnelAddr?: string;
}

export async function crossNodes(demo: DemoRun): Promise<void> {
  demo.step(9, "across the nodes: demo/client (node-1) → demo/backend (node-2), mutual TLS on the wire");
  const { client, backend, outsider } = demo.allPods;
  const { n1, n2 } = demo;
  const clientId = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/default`;
  const backendId = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/${BACKEND_SERVICE_ACCOUNT}`;
  const marker = `nshub-demo-secret-${randomBytes(8).toString("hex")}`;
  const control = `nshub-demo-plaintext-${randomBytes(8).toString("hex")}`;
  const httpDst = `${backend.ip}:${WEB_HTTP_PORT}`;
  const { capture, file } = await startCapture(demo);

  const url = `http://${httpDst}/${marker}`;
  const reply = await httpFrom(client, url);
  demo.cmdIn(client, `curl ${url}`);
  demo.out.info(`  → ${JSON.stringify(reply)}`);
  // the TCP echo, open while both proxies show it
  const echo = (demo.echo = client.spawn(["socat", "-t", "5", "-T", "30", "-", `TCP:${backend.ip}:${WEB_ECHO_PORT}`], { stdin: true, env: childEnv() }));
  const sink = echo.proc.stdin as unknown as { write(s: string): void; flush(): void; end(): void };
  sink.write(`${marker}\n`);
  sink.flush();
  try {
    await echo.waitForOutput(new RegExp(marker), 10_000);
  } catch (e) {
    throw new DemoError(`the TCP echo from demo/client to demo/backend did not come back: ${(e as Error).message}`);
  }
  demo.cmdIn(client, `socat - TCP:${backend.ip}:${WEB_ECHO_PORT}   (TCP echo across the nodes, kept open)`);
  demo.out.info(`  → sent "${marker}", got it back`);
  for (const node of demo.nodes) {
    demo.out.line("");
    demo.out.cmd(`ip netns exec ${node.ns.name} ${displayPath(demo.bin.exe)} connections      (${node.name}'s proxy, while the echo is open)`);
    const live = await nshubInNode(demo, ["connections"], node);
    demo.out.info(live.ok ? live.text : demo.out.dim(`(nshub connections: ${live.text.split("\n")[0]})`));
  }
  sink.end();
  await Promise.race([echo.exited, Bun.sleep(8000)]);
  // the control: the same kind of request from outside the mesh crosses in plaintext
  const ctlUrl = `http://${httpDst}/${control}`;
  const ctl = await httpFrom(outsider, ctlUrl);
  demo.out.line("");
  demo.cmdIn(outsider, `curl ${ctlUrl}      (not in the mesh: plaintext across the fabric, a control for the capture)`);
  demo.out.info(`  → ${JSON.stringify(ctl)}`);

  const wire = await judgeWire(demo, capture, file, marker, control);

  // both proxies' records of the curl: node 1's outbound leg, node 2's inbound leg
  const isOut = (r: Rec) => r.direction === "outbound" && r.pod.name === "client" && r.originalDst === httpDst && r.closeHow !== null;
  const isIn = (r: Rec) => r.direction === "inbound" && r.pod.name === "backend" && r.originalDst === httpDst && ipOf(r.source) === client.ip && r.closeHow !== null;
  let recs1: Rec[] = [];
  let recs2: Rec[] = [];
  for (let i = 0; i < 50; i++) {
    demo.checkInterrupted();
    [recs1, recs2] = await Promise.all([records(n1), records(n2)]);
    if (recs1.some(isOut) && recs2.some(isIn)) break;
    await Bun.sleep(100);
  }
  const toBackend = (r: Rec) => r.originalDst.startsWith(`${backend.ip}:`);
  const shown = [...recs1.filter(toBackend).map((r) => [n1, r] as const), ...recs2.filter(toBackend).map((r) => [n2, r] as const)];
  const short = (id: string | undefined) => (id ? id.replace(`spiffe://${TRUST_DOMAIN}/`, "") : "-");
  demo.out.line("");
  demo.out.info(`both proxies' records of the traffic to demo/backend (GET /connections?recent on each node):`);
  demo.out.info(
    renderTable(
      [{ header: "NODE" }, { header: "POD" }, { header: "DIRECTION" }, { header: "SOURCE" }, { header: "ORIGINAL DST" }, { header: "SECURITY" }, { header: "SOURCE IDENTITY" }, { header: "DESTINATION IDENTITY" }, { header: "TUNNEL" }],
      shown.map(([n, r]) => [n.name, `${r.pod.namespace}/${r.pod.name}`, r.direction, r.source, r.originalDst, r.security ?? "?", short(r.srcIdentity), short(r.dstIdentity), r.tunnelAddr ?? "-"]),
    ),
    8,
  );
  demo.out.info(demo.out.dim(`(identities as ns/<namespace>/sa/<service account> of spiffe://${TRUST_DOMAIN}/; outbound: what node-1's proxy presented and required, inbound: what node-2's verified)`));
  const principals = await mtlsMetric(n2, clientId, backendId);
  demo.out.info(`node-2's metrics (${PROXY_METRICS.replace("http://", "")}/metrics): ${principals ?? "(no istio_tcp_connections_opened_total sample with both principals and mutual_tls)"}`, 6);

  // the checks
  const out = recs1.find(isOut);
  const inb = recs2.find(isIn);
  const httpSeen = httpClientsSeen(n2.path("backend-http.log"));
  const echoSeen = socatPeers(n2.path("backend-echo.log"));
  const seenOk = reply.server === "demo/backend" && ipOf(reply.client) === client.ip && httpSeen.includes(client.ip) && echoSeen.includes(client.ip);
  demo.checks.push({
    id: "cross-node",
    title: "cross-node request, client IP preserved",
    ok: seenOk,
    detail: seenOk
      ? `demo/client (node-1, ${client.ip}) → demo/backend (node-2) ${httpDst} answered; demo/backend saw ${client.ip} = demo/client's pod IP (HTTP answer, HTTP and echo server logs)`
      : `demo/backend answered ${JSON.stringify(reply)}; its logs saw HTTP [${httpSeen.join(", ")}], echo [${echoSeen.join(", ")}]; demo/client is ${client.ip}`,
  });
  const outOk = out?.security === "mutual_tls" && out.srcIdentity === clientId && out.dstIdentity === backendId && out.tunnelAddr === `${backend.ip}:${HBONE_PORT}`;
  const inOk = inb?.security === "mutual_tls" && inb.srcIdentity === clientId && inb.dstIdentity === backendId;
  const mtlsOk = outOk && inOk && principals !== undefined;
  const desc = (r: Rec | undefined) => (r ? `${r.security}, ${r.srcIdentity ?? "-"} → ${r.dstIdentity ?? "-"}${r.tunnelAddr ? ` via ${r.tunnelAddr}` : ""}` : "no record");
  demo.checks.push({
    id: "mtls",
    title: "mutual TLS across the nodes, both identities",
    ok: mtlsOk,
    detail: mtlsOk
      ? `node-1's proxy, outbound: mutual_tls from ${clientId} to ${backendId} over HBONE to ${backend.ip}:${HBONE_PORT}\n` +
        `node-2's proxy, inbound from ${ipOf(inb!.source)}: mutual_tls, verified ${clientId} → ${backendId}; its metrics count it with both principals`
      : `node-1 outbound: ${desc(out)}; node-2 inbound: ${desc(inb)}${principals ? "" : "; node-2's metrics have no mutual_tls sample with both principals"}`,
  });
  demo.checks.push(wire);
  demo.facts.crossNode = {
    from: { pod: "demo/client", node: n1.name, ip: client.ip, identity: clientId },
    to: { pod: "demo/backend", node: n2.name, ip: backend.ip, identity: backendId },
    marker,
    url,
    reply,
    serverSaw: { http: httpSeen, echo: echoSeen },
    node1Outbound: out ?? null,
    node2Inbound: inb ?? null,
    node2Metric: principals ?? null,
    control: { from: "other/outsider", url: ctlUrl, reply: ctl },
  };
}

async function records(node: DemoNode): Promise<Rec[]> {
  const r = await curlJson<{ live?: Rec[]; recent?: Rec[] }>(node.ns, `${PROXY_ADMIN}/connections?recent`);
  return [...(r?.recent ?? []), ...(r?.live ?? [])];
}

/** node's istio_tcp_connections_opened_total sample (reporter=destination) with both principals and mutual_tls, shortened. */
async function mtlsMetric(node: DemoNode, src: string, dst: string): Promise<string | undefined> {
  const a = await curlIn(node.ns, `${PROXY_METRICS}/metrics`);
  const line = a.body
    .split("\n")
    .find((l) => l.startsWith("istio_tcp_connections_opened_total{") && l.includes('reporter="destination"') && l.includes(`source_principal="${src}"`) && l.includes(`destination_principal="${dst}"`) && l.includes('connection_security_policy="mutual_tls"'));
  if (!line) return undefined;
  return `istio_tcp_connections_opened_total{reporter="destination",…,source_principal="${src}",destination_principal="${dst}",…,connection_security_policy="mutual_tls"} ${line.slice(line.lastIndexOf(" ") + 1)}`;
}
