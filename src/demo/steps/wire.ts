// Step 9, the wire: tcpdump in the fabric's namespace (src/sim/capture.ts), the only way from one
// node to the other, while step 9's requests cross it. What it must show: the random marker that
// demo/client sent (in plaintext, to its own proxy) is nowhere in the capture, and every TCP
// connection between demo/client and demo/backend went to port 15008 (HBONE). As a control, the
// same kind of request from other/outsider (not in the mesh, so plaintext on the wire) carries a
// second marker, which the capture must find: the first marker's absence is not a blind capture.
import { formatBytes, renderTable } from "../../cli/admin-client.ts";
import type { Capture, CaptureResult, TcpConnection } from "../../sim/capture.ts";
import type { Pod } from "../../sim/namespace.ts";
import { displayPath } from "../env.ts";
import { HBONE_PORT, type Check, type DemoRun } from "../run.ts";

const TLS_HANDSHAKE = new Uint8Array([0x16, 0x03, 0x01]);

export async function startCapture(demo: DemoRun): Promise<{ capture: Capture; file: string }> {
  const file = demo.path("fabric.pcap");
  const capture = await demo.fabric!.capture({ filter: "tcp", file });
  demo.out.cmd(`ip netns exec ${demo.fabric!.ns.name} tcpdump -i any -n -w ${displayPath(file)} tcp      (on the fabric, from now until the end of the requests)`);
  return { capture, file };
}

export interface WireFacts {
  pcap: string;
  netns: string;
  packets: number;
  droppedByKernel: number;
  marker: string;
  markerFound: boolean;
  controlMarker: string;
  controlMarkerFound: boolean;
  tlsHandshakeSeen: boolean;
  /** Every TCP connection seen (each oriented by its SYN). */
  connections: Array<{ client: string; clientPort: number; server: string; serverPort: number; sawSyn: boolean; segments: number; payloadBytes: number; between: string }>;
  /** The connections between demo/client and demo/backend: all to 15008? */
  podFlows: Array<{ src: string; dst: string; dstPort: number }>;
  allTo15008: boolean;
}

/** Stops the capture, shows what crossed the fabric, and returns the "wire" check. */
export async function judgeWire(demo: DemoRun, capture: Capture, file: string, marker: string, controlMarker: string): Promise<Check> {
  const { client, backend, outsider } = demo.allPods;
  let result: CaptureResult;
  try {
    result = await capture.stop();
  } catch (e) {
    return { id: "wire", title: "payload not readable on the wire", ok: false, detail: `the capture is not usable: ${(e as Error).message}` };
  }
  const name = (ip: string) => [client, backend, outsider].find((p) => p.ip === ip);
  const label = (p: Pod | undefined) => (p ? `${p.podNamespace}/${p.podName}` : "not a pod");
  const isPair = (c: TcpConnection, a: Pod, b: Pod) => (c.client === a.ip && c.server === b.ip) || (c.client === b.ip && c.server === a.ip);
  const payload = (c: TcpConnection) =>
    result.tcp.filter((s) => (s.src === c.client && s.srcPort === c.clientPort && s.dst === c.server && s.dstPort === c.serverPort) || (s.dst === c.client && s.dstPort === c.clientPort && s.src === c.server && s.srcPort === c.serverPort)).reduce((n, s) => n + s.length, 0);
  const conns = result.connections.map((c) => ({
    ...c,
    payloadBytes: payload(c),
    between: isPair(c, client, backend) ? "mesh" : isPair(c, outsider, backend) ? "control" : "other",
  }));
  const pods = conns.filter((c) => c.between === "mesh");
  const podFlows = pods.map((c) => ({ src: c.client, dst: c.server, dstPort: c.serverPort }));
  const allTo15008 = pods.length > 0 && pods.every((c) => c.sawSyn && c.client === client.ip && c.serverPort === HBONE_PORT);
  const facts: WireFacts = {
    pcap: file,
    netns: demo.fabric!.ns.name,
    packets: result.stats.captured,
    droppedByKernel: result.stats.droppedByKernel,
    marker,
    markerFound: result.containsBytes(marker),
    controlMarker,
    controlMarkerFound: result.containsBytes(controlMarker),
    tlsHandshakeSeen: result.containsBytes(TLS_HANDSHAKE),
    connections: conns,
    podFlows,
    allTo15008,
  };
  demo.facts.wire = facts;

  demo.out.line("");
  demo.out.info(`what crossed the fabric: ${result.stats.captured} packets, ${result.stats.droppedByKernel} dropped by the kernel (-i any: each packet twice, in from one node and out to the other)`);
  const table = renderTable(
    [{ header: "CLIENT" }, { header: "SERVER" }, { header: "SEGMENTS", align: "right" }, { header: "PAYLOAD", align: "right" }, { header: "" }],
    conns.map((c) => [
      `${c.client} (${label(name(c.client))})`,
      `${c.server}:${c.serverPort} (${label(name(c.server))})`,
      String(c.segments),
      formatBytes(c.payloadBytes),
      c.between === "mesh" ? (c.serverPort === HBONE_PORT ? "HBONE: mTLS to the pod's port 15008" : "NOT HBONE!") : c.between === "control" ? "the plaintext control" : "",
    ]),
  );
  demo.out.info(conns.length ? table : "(no TCP connection crossed the fabric)", 8);
  const hbone = result.lines.filter((l) => l.includes(`${backend.ip}.${HBONE_PORT}`)).slice(0, 4);
  if (hbone.length) {
    demo.out.info(`the HBONE connection's first packets (tcpdump -r ${displayPath(file)} -nn -t):`);
    for (const l of hbone) demo.out.info(l.length > 130 ? `${l.slice(0, 127)}...` : l, 8);
  }
  demo.out.info(`marker "${marker}" (sent by demo/client): ${facts.markerFound ? "FOUND in the capture — readable on the wire!" : `not in the capture (all ${formatBytes(result.bytes.byteLength)} of the pcap searched)`}`);
  demo.out.info(`control "${controlMarker}" (other/outsider, plaintext): ${facts.controlMarkerFound ? "found — the capture does see clear text" : "NOT found — the capture missed plaintext"}`);

  const ok = !facts.markerFound && allTo15008 && facts.controlMarkerFound && facts.tlsHandshakeSeen && facts.droppedByKernel === 0;
  const flows = pods.map((c) => `${c.client} → ${c.server}:${c.serverPort}`).join(", ");
  return {
    id: "wire",
    title: "payload not readable on the wire",
    ok,
    detail: ok
      ? `tcpdump on the fabric (${result.stats.captured} packets, none dropped): the marker demo/client sent is not in it, and every TCP connection\n` +
        `between demo/client and demo/backend went to port ${HBONE_PORT} (${flows}), TLS handshake seen;\n` +
        `the control marker other/outsider sent in plaintext is in it`
      : [
          facts.markerFound ? `the marker demo/client sent is in the capture: it crossed the fabric in clear` : "",
          pods.length === 0 ? `no TCP connection between demo/client and demo/backend was captured` : allTo15008 ? "" : `not every connection between demo/client and demo/backend went to ${HBONE_PORT}: ${pods.map((c) => `${c.client}:${c.clientPort} → ${c.server}:${c.serverPort}${c.sawSyn ? "" : " (no SYN seen)"}`).join(", ")}`,
          facts.tlsHandshakeSeen ? "" : "no TLS handshake in the capture",
          facts.controlMarkerFound ? "" : `the control marker (plaintext from other/outsider) is not in the capture either: it saw nothing`,
          facts.droppedByKernel ? `the kernel dropped ${facts.droppedByKernel} packets` : "",
        ]
          .filter(Boolean)
          .join("\n"),
  };
}
