// The configuration file's shape, its defaults and its validation, in one place. Every key is
// documented here and in the README; unknown keys are errors so a typo never passes silently.
import { z } from "zod";
import { fileMode } from "./modes.ts";
import { crossFieldIssues, hostPort, ipv4, proxyMark } from "./validate.ts";

const port = z.number().int().min(1).max(65535);
const level = z.enum(["trace", "debug", "info", "warn", "error"]);
const globList = z.array(z.string().min(1)).default([]);

export const enrollmentSchema = z
  .strictObject({
    /** Namespaces whose pods are enrolled (glob patterns; empty = none unless pods.include matches). */
    namespaces: z.strictObject({ include: globList, exclude: globList }).prefault({}),
    /** Pods as "<namespace>/<name>" glob patterns; exclude wins over every include. */
    pods: z.strictObject({ include: globList, exclude: globList }).prefault({}),
  })
  .prefault({});

export const agentSchema = z
  .strictObject({
    zdsSocket: z.string().default("/var/run/nshub/zds.sock"),
    zdsSocketMode: fileMode.default(0o600),
    /** uids allowed to connect to the ZDS socket (SO_PEERCRED); empty = whoever the mode allows. */
    zdsAllowedUids: z.array(z.number().int().min(0)).default([]),
    apiSocket: z.string().default("/var/run/nshub/agent.sock"),
    apiSocketMode: fileMode.default(0o600),
    adminAddress: hostPort.default("127.0.0.1:15010"),
    stateFile: z.string().default("/var/run/nshub/agent-state.json"),
    procRoot: z.string().default("/proc"),
    /** How often pods are checked for a network namespace that died without a CNI DEL (src/agent/reconcile.ts). */
    reconcileIntervalMs: z.number().int().min(100).default(15_000),
    /** Capture the pod's DNS (UDP/TCP 53) to the proxy's 15053. Off until the DNS proxy exists. */
    dnsCapture: z.boolean().default(false),
    /** SNAT node-local probes to probeSnatAddress so they bypass the proxy (Istio's host rule). */
    hostProbeSnat: z.boolean().default(true),
    probeSnatAddress: ipv4.default("169.254.7.127"),
    enrollment: enrollmentSchema,
    /**
     * Enrollment from the Kubernetes API (istio.io/dataplane-mode labels) instead of the
     * patterns above: off by default. In a pod the service account is used; outside, `kubeconfig`
     * (or KUBECONFIG, ~/.kube/config). `nodeName`: default NODE_NAME (the downward API), else
     * the host name.
     */
    kubernetes: z
      .strictObject({
        enabled: z.boolean().default(false),
        kubeconfig: z.string().default(""),
        nodeName: z.string().default(""),
      })
      .prefault({}),
  })
  .prefault({});

/** A SPIFFE trust domain (SPIFFE-ID §2.1: lowercase letters, digits, '.', '-', '_'). */
const trustDomain = z
  .string()
  .max(255)
  .regex(/^[a-z0-9._-]+$/, "a trust domain is lowercase letters, digits, '.', '-' and '_' (SPIFFE-ID §2.1), e.g. cluster.local");
const path = z.string().min(1);

/**
 * Where the proxy gets its pods' workload certificates (src/identity, src/proxy/certificates.ts).
 * `none`: no certificates (the proxy relays plaintext as before). `istio`: Istio's CA API at
 * `address` (istiod :15012 or `nshub ca serve`), TLS verified with `rootCert`, authenticated
 * with `tokenFile` and/or the node client certificate `clientCert`/`clientKey`. `local`: this
 * node signs with a CA key on disk: an `nshub ca init` directory (`localDir`), or
 * `certFile`/`keyFile` (+ `rootCert` when certFile is an intermediate).
 */
export const caSchema = z
  .strictObject({
    source: z.enum(["none", "istio", "local"]).default("none"),
    address: z.string().min(1).optional(),
    rootCert: path.optional(),
    tokenFile: path.optional(),
    clientCert: path.optional(),
    clientKey: path.optional(),
    clusterId: z.string().min(1).optional(),
    /** The name the CA's serving certificate must carry when it is not the address's host. */
    serverName: z.string().min(1).optional(),
    localDir: path.optional(),
    certFile: path.optional(),
    keyFile: path.optional(),
    trustDomain: trustDomain.default("cluster.local"),
    /** Requested certificate lifetime; renewed at about half of it. */
    lifetimeSeconds: z
      .number()
      .int()
      .min(10)
      .max(90 * 24 * 3600)
      .default(86_400),
  })
  .prefault({});

export const proxySchema = z
  .strictObject({
    zdsSocket: z.string().default("/var/run/nshub/zds.sock"),
    /** Read-only admin views (GET); the writes (log level, quit, GC) are only on adminSocket. */
    adminAddress: hostPort.default("127.0.0.1:15000"),
    /** The whole admin API, reads and writes: a unix socket, mode 0600 (root only). */
    adminSocket: z.string().min(1).default("/var/run/nshub/proxy-admin.sock"),
    metricsAddress: hostPort.default("0.0.0.0:15020"),
    readinessAddress: hostPort.default("0.0.0.0:15021"),
    outboundPort: port.default(15001),
    inboundPort: port.default(15006),
    /** SO_MARK on every socket the proxy makes in a pod: the in-pod rules let it pass (0x539 only). */
    mark: proxyMark.default(0x539),
    connectTimeoutMs: z.number().int().positive().default(10_000),
    /** Most bytes queued per direction of one connection before its reader is paused. */
    maxQueuedBytes: z.number().int().min(16 * 1024).default(256 * 1024),
    /** On SIGTERM or /quitquitquit: how long open connections may finish. */
    drainDeadlineMs: z.number().int().min(0).default(30_000),
    /** A pod whose listeners failed to bind is retried this often. */
    pendingRetryMs: z.number().int().positive().default(5_000),
    keepaliveIdleSec: z.number().int().positive().default(180),
    /**
     * Data-plane threads: the main thread plus workers-1 Worker threads, each binding every
     * pod's listeners with SO_REUSEPORT (the kernel spreads new connections over them).
     * Default 2, like ztunnel's worker threads: measured on a 2-CPU machine, the second thread
     * raised the connection rate ~20% and 4-stream throughput, and lowered the added latency
     * (docs/BENCHMARKS.md).
     */
    workers: z.number().int().min(1).max(64).default(2),
    /**
     * How bytes are relayed: "splice" moves them socket → pipe → socket inside the kernel on a
     * relay thread per data-plane thread (no user-space copy); "userspace" reads and writes
     * them through Bun sockets. `maxQueuedBytes` bounds each direction either way (the pipe
     * size, or the queue before the reader pauses).
     */
    relay: z.enum(["splice", "userspace"]).default("splice"),
    /**
     * Istio AuthorizationPolicy/PeerAuthentication YAML (a file, or a folder of them), enforced on
     * every inbound plaintext connection and reloaded on change (src/policy). "" = none: allow all.
     */
    policies: z.string().default(""),
    /** Istio's root namespace: its policies without a selector are mesh-wide. */
    rootNamespace: z.string().min(1).default("istio-system"),
    /** A ztunnel local-config file (`workloads:`) merged into the workload registry; "" = none. */
    workloadsFile: z.string().default(""),
    /**
     * Watch the Kubernetes API (src/registry/kube-source.ts, src/policy/kube-source.ts): every
     * pod joins the workload registry (annotated `ambient.istio.io/redirection: enabled` →
     * HBONE, with its labels), and AuthorizationPolicy/PeerAuthentication objects are enforced
     * together with `policies` (both sets merged). In a pod the service account is used;
     * outside, `kubeconfig` (or KUBECONFIG, ~/.kube/config). Off by default.
     */
    kubernetes: z
      .strictObject({
        enabled: z.boolean().default(false),
        kubeconfig: z.string().default(""),
      })
      .prefault({}),
    ca: caSchema,
  })
  .prefault({});

export const cniSchema = z
  .strictObject({
    agentSocket: z.string().default("/var/run/nshub/agent.sock"),
    timeoutMs: z.number().int().positive().default(5_000),
    logFile: z.string().default("/var/log/nshub/cni.log"),
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    logLevel: level.default("info"),
    agent: agentSchema,
    proxy: proxySchema,
    cni: cniSchema,
  })
  // Runs once every key is valid. The issue's params let loadConfig name each key's source.
  .superRefine((cfg, ctx) => {
    for (const i of crossFieldIssues(cfg as Config)) {
      ctx.addIssue({ code: "custom", path: i.keys[0], message: i.text(i.keys.map((k) => k.join("."))), params: { keys: i.keys, text: i.text } });
    }
  });

export type Config = z.output<typeof configSchema>;
export type AgentConfig = Config["agent"];
export type ProxyConfig = Config["proxy"];
export type CniConfig = Config["cni"];
export type CaConfig = ProxyConfig["ca"];
export type EnrollmentConfig = AgentConfig["enrollment"];
export type LogLevel = Config["logLevel"];
