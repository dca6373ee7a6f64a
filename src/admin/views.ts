// What the admin API needs from the proxy, and nothing more. The proxy (src/proxy) implements
// this view over its workload manager and connection table; the admin apps, the metrics and
// the CLI only ever see these shapes. Field names follow ztunnel's config_dump where one exists.
//
// The shapes are structural on purpose: the proxy's ConnectionRecord (src/proxy/records.ts)
// and PodListener already satisfy ConnectionView and ListenerView, so `connections()` can
// return the connection table's live records as they are (checked at compile time in
// src/proxy/connection-observer.ts).

/** ztunnel's workloadState.state: "Up" once the pod's listeners are open, "Pending" before. */
export type WorkloadState = "Pending" | "Up";

export interface EndpointView {
  readonly ip: string;
  readonly port: number;
}

/** One open listener of one pod, e.g. {kind: "outbound", address: "0.0.0.0", port: 15001}. */
export interface ListenerView {
  readonly kind: string;
  readonly address: string;
  readonly port: number;
}

export interface WorkloadView {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  /** The pod's network-namespace identity "dev:ino" (see src/sys/netns.ts identityKey); null when unknown (KeepWorkload). */
  readonly netns: string | null;
  readonly state: WorkloadState;
  /** Open listeners (empty while Pending). */
  readonly listeners: readonly ListenerView[];
  /** The pod's IP addresses, when the proxy knows them. */
  readonly ips?: readonly string[];
  /** Why the pod is Pending (the last start error), when it is. */
  readonly error?: string;
}

/**
 * A live connection. Bytes are counted from the client's (source's) side, as in the proxy's
 * ConnectionRecord: `bytesSent` = client → destination, `bytesReceived` = destination → client.
 */
export interface ConnectionView {
  readonly id: number;
  /** The enrolled pod whose listener accepted the connection. */
  readonly pod: { readonly uid: string; readonly name: string; readonly namespace: string };
  readonly direction: "inbound" | "outbound";
  /** The client's address. */
  readonly source: EndpointView;
  /** Where the client meant to go (SO_ORIGINAL_DST). */
  readonly originalDst: EndpointView;
  /** Where the proxy actually connects (ztunnel's actualDst). */
  readonly upstream: EndpointView;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  /** ms since the epoch. */
  readonly startedAt: number;
  /** e.g. connecting / open / half_closed. */
  readonly state: string;
  /** Set when the connection rides HBONE (mutual TLS): the identities on both ends. */
  readonly mtls?: { readonly srcIdentity: string; readonly dstIdentity: string; readonly tunnelAddr: string };
}

export interface Readiness {
  readonly ready: boolean;
  /** Why not ready ("ready" when ready). */
  readonly reason: string;
}

/** Build information; `version` is required, anything else (bun, commit, …) is shown as given. */
export interface VersionInfo {
  readonly version: string;
  readonly [key: string]: string;
}

/** One certificate as config_dump shows it (public data only). */
export interface CertView {
  readonly pem: string;
  /** Hex, as openssl prints it. */
  readonly serial: string;
  readonly notBefore: string;
  readonly notAfter: string;
}

/** One workload identity's certificate, in ztunnel's terms (`state`: Initializing, Available, or "Unavailable: <why>"). */
export interface CertificateView {
  readonly identity: string;
  readonly state: string;
  /** Leaf + intermediates (empty unless Available). */
  readonly certChain: readonly CertView[];
  readonly rootCerts: readonly CertView[];
}

export interface ProxyView {
  /** Every pod the proxy serves or has pending. */
  workloads(): Iterable<WorkloadView>;
  /** Every live connection of the main thread. */
  connections(): Iterable<ConnectionView>;
  /** The live connections of the data-plane Worker threads (src/proxy/workers.ts), if any. */
  workerConnections?(): Promise<Iterable<ConnectionView>>;
  /** Workload certificates by identity, when the proxy has a certificate source (proxy.ca). */
  certificates?(): readonly CertificateView[];
  /** More config_dump sections (the proxy's `registry` and `policies`), next to the ones above. */
  dumpSections?(): Record<string, unknown>;
  /** The effective configuration (JSON-serialisable; secrets, if any ever exist, removed). */
  config(): unknown;
  version(): VersionInfo;
  readiness(): Readiness;
  getLogLevel(): string;
  /** Throws on an unknown level; the admin app validates first and answers 400. */
  setLogLevel(level: string): void;
  /** Start the graceful shutdown (same as SIGTERM); returns at once. */
  quit(reason: string): void;
}
