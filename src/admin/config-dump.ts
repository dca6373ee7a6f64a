// GET /config_dump: the proxy's state as JSON, in ztunnel's shape where ztunnel has one (its
// ConfigDump in https://github.com/istio/ztunnel/blob/master/src/admin.rs, and "workloadState"
// from https://github.com/istio/ztunnel/blob/master/src/inpod/admin.rs), so
// `istioctl ztunnel-config`-style tooling and habits carry over:
//
//   {
//     "workloads":     [ {uid, name, namespace, serviceAccount, workloadIps, protocol, state,
//                         netns, listeners, connections: {inbound, outbound}, error?} ]  (by uid)
//     "workloadState": { "<uid>": {state, info: {name, namespace, serviceAccount},
//                         connections: {inbound: [conn], outbound: [conn]}} }
//     "certificates": [ {identity, state, certChain: [cert], rootCerts: [cert]} ]  (by identity;
//                     only when the proxy has a certificate source)
//     "registry", "policies": the proxy's workload registry (ztunnel's workload shape) and the
//                     authorization policies in force (ProxyView.dumpSections)
//     "config":  the effective configuration,
//     "version": build information
//   }
//
// conn = {id, src, originalDst, actualDst, protocol: "TCP" | "HBONE" (with srcIdentity, dstIdentity,
// tunnelAddr), state, bytesSent, bytesReceived, startedAt, ageSeconds}; bytes are counted from the
// source's (client's) side.
// cert = {pem, serialNumber, validFrom, expirationTime} as ztunnel dumps it (its dump_certs):
// pem base64 of the PEM text, the serial in decimal, times RFC 3339 UTC to the second; state
// "Initializing", "Available" or "Unavailable: <why>". Private keys are never in it.
import type { CertView, CertificateView, ConnectionView, EndpointView, ProxyView, VersionInfo, WorkloadState } from "./views.ts";

export interface DumpListener {
  kind: string;
  address: string;
  port: number;
}

export interface DumpWorkload {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  workloadIps: string[];
  protocol: "TCP";
  state: WorkloadState;
  /** "dev:ino" of the pod's network namespace, null when unknown. */
  netns: string | null;
  listeners: DumpListener[];
  connections: { inbound: number; outbound: number };
  error?: string;
}

export interface DumpConnection {
  id: number;
  src: string;
  originalDst: string;
  actualDst: string;
  /** HBONE: carried in a mutual-TLS tunnel (then the identities are set); TCP: plaintext. */
  protocol: "TCP" | "HBONE";
  srcIdentity?: string;
  dstIdentity?: string;
  /** The tunnel's TCP endpoint: the destination pod's <IP>:15008. */
  tunnelAddr?: string;
  state: string;
  /** client → destination */
  bytesSent: number;
  /** destination → client */
  bytesReceived: number;
  startedAt: string;
  ageSeconds: number;
}

export interface DumpWorkloadState {
  /** "Unknown" only for connections of a pod the proxy no longer lists (being torn down). */
  state: WorkloadState | "Unknown";
  info: { name: string; namespace: string; serviceAccount: string };
  connections: { inbound: DumpConnection[]; outbound: DumpConnection[] };
}

export interface DumpCert {
  pem: string;
  serialNumber: string;
  validFrom: string;
  expirationTime: string;
}

export interface DumpCertificate {
  identity: string;
  state: string;
  certChain: DumpCert[];
  rootCerts: DumpCert[];
}

export interface ConfigDump {
  workloads: DumpWorkload[];
  workloadState: Record<string, DumpWorkloadState>;
  certificates?: DumpCertificate[];
  [section: string]: unknown;
  config: unknown;
  version: VersionInfo;
}

export function endpoint(e: EndpointView): string {
  return e.ip.includes(":") ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

function dumpConnection(c: ConnectionView, now: number): DumpConnection {
  return {
    id: c.id,
    src: endpoint(c.source),
    originalDst: endpoint(c.originalDst),
    actualDst: endpoint(c.upstream),
    protocol: c.mtls ? "HBONE" : "TCP",
    ...(c.mtls ? { srcIdentity: c.mtls.srcIdentity, dstIdentity: c.mtls.dstIdentity, tunnelAddr: c.mtls.tunnelAddr } : {}),
    state: c.state,
    bytesSent: c.bytesSent,
    bytesReceived: c.bytesReceived,
    startedAt: new Date(c.startedAt).toISOString(),
    ageSeconds: Math.max(0, Math.round((now - c.startedAt) / 100) / 10),
  };
}

/** RFC 3339 UTC to whole seconds, as ztunnel prints certificate times. */
const seconds = (iso: string) => new Date(iso).toISOString().replace(/\.\d+Z$/, "Z");

function dumpCert(c: CertView): DumpCert {
  return { pem: Buffer.from(c.pem).toString("base64"), serialNumber: BigInt(`0x${c.serial}`).toString(10), validFrom: seconds(c.notBefore), expirationTime: seconds(c.notAfter) };
}

export function dumpCertificate(c: CertificateView): DumpCertificate {
  return { identity: c.identity, state: c.state, certChain: c.certChain.map(dumpCert), rootCerts: c.rootCerts.map(dumpCert) };
}

export function buildConfigDump(view: ProxyView, workerConnections: Iterable<ConnectionView> = [], now = Date.now()): ConfigDump {
  const workloads: DumpWorkload[] = [];
  const workloadState: Record<string, DumpWorkloadState> = {};
  const byUid = new Map<string, DumpWorkload>();
  for (const w of view.workloads()) {
    const d: DumpWorkload = {
      uid: w.uid,
      name: w.name,
      namespace: w.namespace,
      serviceAccount: w.serviceAccount,
      workloadIps: [...(w.ips ?? [])],
      protocol: "TCP",
      state: w.state,
      netns: w.netns,
      listeners: w.listeners.map((l) => ({ kind: l.kind, address: l.address, port: l.port })),
      connections: { inbound: 0, outbound: 0 },
      ...(w.error ? { error: w.error } : {}),
    };
    workloads.push(d);
    byUid.set(w.uid, d);
    workloadState[w.uid] = {
      state: w.state,
      info: { name: w.name, namespace: w.namespace, serviceAccount: w.serviceAccount },
      connections: { inbound: [], outbound: [] },
    };
  }
  const conns = [...view.connections(), ...workerConnections].sort((a, b) => a.startedAt - b.startedAt || a.id - b.id);
  for (const c of conns) {
    let st = workloadState[c.pod.uid];
    if (!st) {
      st = workloadState[c.pod.uid] = {
        state: "Unknown",
        info: { name: c.pod.name, namespace: c.pod.namespace, serviceAccount: "" },
        connections: { inbound: [], outbound: [] },
      };
    }
    st.connections[c.direction].push(dumpConnection(c, now));
    const w = byUid.get(c.pod.uid);
    if (w) w.connections[c.direction]++;
  }
  workloads.sort((a, b) => (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0));
  const certificates = view.certificates ? { certificates: view.certificates().map(dumpCertificate) } : {};
  return { workloads, workloadState, ...certificates, ...(view.dumpSections?.() ?? {}), config: view.config(), version: view.version() };
}
