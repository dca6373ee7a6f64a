// `nshub agent`: the node agent daemon. Startup order:
//   1. config (flags > env > YAML > defaults) and the enrollment policy: any error → exit 2
//   2. admin server (/healthz 200, /readyz 503 until step 5)
//   3. pod cache rebuild: the host's netns identified (none: exit 1, host-netns.ts), state file
//      + /proc scan, host probe set reset, rules re-asserted; then the dead-netns sweep runs
//   4. ZDS server (proxies connecting now get the rebuilt snapshot), event API socket
//   5. ready
// SIGTERM/SIGINT: stop serving, close the pods' netns fds and exit 0. Rules, the host probe set
// and the state file stay, so a restarted agent takes over without disturbing any pod.
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import type { Server } from "bun";
import { ConfigError, configWarnings, loadConfig } from "../config/load.ts";
import { createLogger, setLogLevel } from "../log/logger.ts";
import { assertSocketNotServed, homeNetns, SOCK_SEQPACKET, SOCK_STREAM } from "../sys/index.ts";
import { ZdsServer } from "../zds/server.ts";
import { createAdminApp, createAgentRegistry, parseHostPort, serveAdmin, type AdminDeps } from "./admin.ts";
import { Agent } from "./agent.ts";
import { createApiApp, serveApi } from "./api.ts";
import { RulesDataplane } from "./dataplane.ts";
import { errText } from "./errors.ts";
import { HostNetnsError } from "./host-netns.ts";
import { EnrollmentPolicy, type PodPolicy } from "./policy.ts";
import { KubeEnrollment } from "./kube-enrollment.ts";
import { KubeView } from "./kube-view.ts";
import { loadClusterConfig } from "../k8s/index.ts";
import { StateFileError } from "./state.ts";

const HELP = `usage: nshub agent [options]

The node agent: enrollment policy, in-pod redirection rules, pod cache, ZDS server, event API.

options (each overrides the config file):
  --config <file>            YAML config (default /etc/nshub/config.yaml; NSHUB_CONFIG)
  --zds-socket <path>        ZDS socket proxies connect to (agent.zdsSocket)
  --zds-socket-mode <mode>   its file mode, octal (agent.zdsSocketMode, default 0600)
  --api-socket <path>        event API socket for nshub-cni and nshub enroll (agent.apiSocket)
  --api-socket-mode <mode>   its file mode, octal (agent.apiSocketMode, default 0600)
  --admin-address <h:p>      /healthz /readyz /metrics /pods (agent.adminAddress, 127.0.0.1:15010)
  --state-file <path>        pod cache state file (agent.stateFile)
  --proc-root <path>         procfs to scan for pods' netns (agent.procRoot, default /proc)
  --dns-capture              capture pods' DNS to the proxy (agent.dnsCapture)
  --no-host-probe-snat       no host-side probe SNAT rule (agent.hostProbeSnat)
  --log-level <level>        trace | debug | info | warn | error
  -h, --help                 this text`;

export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      config: { type: "string" },
      "zds-socket": { type: "string" },
      "zds-socket-mode": { type: "string" },
      "api-socket": { type: "string" },
      "api-socket-mode": { type: "string" },
      "admin-address": { type: "string" },
      "state-file": { type: "string" },
      "proc-root": { type: "string" },
      "dns-capture": { type: "boolean" },
      "no-host-probe-snat": { type: "boolean" },
      "log-level": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const agentOverrides: Record<string, unknown> = {};
  const set = (key: string, v: unknown) => {
    if (v !== undefined) agentOverrides[key] = v;
  };
  set("zdsSocket", values["zds-socket"]);
  set("zdsSocketMode", values["zds-socket-mode"]);
  set("apiSocket", values["api-socket"]);
  set("apiSocketMode", values["api-socket-mode"]);
  set("adminAddress", values["admin-address"]);
  set("stateFile", values["state-file"]);
  set("procRoot", values["proc-root"]);
  if (values["dns-capture"]) set("dnsCapture", true);
  if (values["no-host-probe-snat"]) set("hostProbeSnat", false);
  const overrides: Record<string, unknown> = { agent: agentOverrides };
  if (values["log-level"] !== undefined) overrides.logLevel = values["log-level"];

  let cfg;
  let policy: PodPolicy;
  let kube: { view: KubeView; enrollment: KubeEnrollment } | undefined;
  try {
    cfg = loadConfig({ file: values.config, overrides });
    parseHostPort(cfg.agent.adminAddress);
    const k = cfg.agent.kubernetes;
    if (k.enabled) {
      // A kubeconfig or cluster it cannot read is a configuration error (exit 2).
      const cluster = loadClusterConfig({ kubeconfig: k.kubeconfig || undefined });
      const nodeName = k.nodeName || process.env.NODE_NAME || hostname();
      const view = new KubeView(cluster, nodeName, createLogger("agent/k8s"));
      kube = { view, enrollment: new KubeEnrollment(view, createLogger("agent/k8s")) };
      policy = kube.enrollment;
    } else policy = EnrollmentPolicy.fromConfig(cfg.agent.enrollment);
  } catch (e) {
    if (e instanceof ConfigError || e instanceof Error) {
      console.error(`nshub agent: ${e.message}`);
      return 2;
    }
    throw e;
  }
  setLogLevel(cfg.logLevel);
  const log = createLogger("agent");
  const a = cfg.agent;
  // Record home before anything enters a netns: the rules spawn their tools from inside the pod.
  homeNetns();
  for (const w of configWarnings(cfg, "agent")) log.warn(w);
  if (policy.empty) log.warn("agent.enrollment has no include pattern: no pod is enrolled unless an operator runs nshub enroll");
  if (kube) log.info("enrollment from the Kubernetes API", { server: kube.view.client.server, node: kube.view.nodeName });

  // Another agent still serving these sockets (a rollout with surge) keeps them. Refuse before
  // step 3 touches the host: its rebuild resets the probe set and rewrites the state file.
  try {
    assertSocketNotServed(a.zdsSocket, SOCK_SEQPACKET, "ZDS");
    assertSocketNotServed(a.apiSocket, SOCK_STREAM, "API");
  } catch (e) {
    log.error(errText(e));
    console.error(`nshub agent: ${errText(e)}`);
    return 1;
  }

  const agent = new Agent({
    policy,
    onEnrollment: kube ? (p, enrolled) => void kube.enrollment.annotate(p.namespace, p.name, enrolled) : undefined,
    dataplane: new RulesDataplane({ dnsCapture: a.dnsCapture, hostProbeSnat: a.hostProbeSnat, probeAddress: a.probeSnatAddress }),
    stateFile: a.stateFile,
    procRoot: a.procRoot,
    reconcileIntervalMs: a.reconcileIntervalMs,
    log,
  });

  let listening = false;
  let zds: ZdsServer | undefined;
  let api: Server<undefined> | undefined;
  let admin: Server<undefined> | undefined;
  // /metrics: a prom-client registry with the agent's metrics and the process metrics.
  const adminDeps: AdminDeps = { agent, zdsConnections: () => zds?.connectionCount() ?? 0, listening: () => listening };
  const metrics = createAgentRegistry(adminDeps);
  const stopAll = async () => {
    listening = false;
    await kube?.view.stop();
    await api?.stop(true);
    await zds?.stop();
    agent.stop();
    await admin?.stop(true);
    metrics.stop();
  };

  try {
    admin = serveAdmin(createAdminApp(adminDeps, metrics), a.adminAddress);
    log.info("admin listening", { address: a.adminAddress });
  } catch (e) {
    console.error(`nshub agent: cannot listen on the admin address ${a.adminAddress}: ${errText(e)}`);
    metrics.stop();
    return 1;
  }

  // With Kubernetes: the watches start first; the rebuild keeps every pod as it was while the
  // API is not listed yet (an "unknown" decision), and the first complete lists re-apply the
  // labels to every pod of this node (enrolling running ones, unenrolling opted-out ones).
  kube?.view.start().then(
    () => {
      kube.enrollment.start(agent);
      log.info("Kubernetes API listed: applying its labels to this node's pods", { pods: kube.view.pods$.size, namespaces: kube.view.namespaces$.size });
      void kube.enrollment.applyAll();
    },
    () => undefined,
  );
  try {
    await agent.rebuild();
  } catch (e) {
    const msg = e instanceof StateFileError || e instanceof HostNetnsError ? e.message : `rebuilding the pod cache failed: ${errText(e)}`;
    log.error(msg);
    console.error(`nshub agent: ${msg}`);
    await stopAll();
    return 1;
  }

  const zlog = createLogger("agent/zds");
  try {
    zds = new ZdsServer({
      path: a.zdsSocket,
      socketMode: a.zdsSocketMode,
      allowedUids: a.zdsAllowedUids.length > 0 ? a.zdsAllowedUids : undefined,
      // A proxy sends its hello at once; a connection that does not must not hold a slot long.
      helloTimeoutMs: 2000,
      // Below the CNI plugin's 5 s deadline, so that a silent proxy yields "pending" (CNI error
      // 11) rather than a plugin timeout.
      ackTimeoutMs: 3000,
      keepaliveIntervalMs: 5000,
      snapshot: () => agent.snapshot(),
      // Which connection answered: a pod's state follows the proxies that serve it (serving.ts).
      onSnapshotResult: (uid, error, id) => agent.onSnapshotResult(uid, error, id),
      onConnected: (id, peer) => {
        zlog.info("proxy connected", { conn: id, pid: peer.pid, uid: peer.uid });
        agent.onProxyConnection(id, true);
      },
      onDisconnected: (id, reason) => {
        zlog.info("proxy disconnected", { conn: id, reason });
        agent.onProxyConnection(id, false);
      },
      log: (level, msg, fields) => zlog[level](msg, fields),
    });
    zds.start();
    agent.attachZds(zds);
    api = serveApi(createApiApp(agent, log), { socketPath: a.apiSocket, socketMode: a.apiSocketMode }, log);
  } catch (e) {
    const msg = `cannot start serving: ${errText(e)}`;
    log.error(msg);
    console.error(`nshub agent: ${msg}`);
    await stopAll();
    return 1;
  }
  listening = true;
  log.info("agent ready", { api: a.apiSocket, zds: a.zdsSocket, admin: a.adminAddress, pods: agent.pods.size });

  const signal = await new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  log.info(`${signal}: shutting down (rules and state stay for the next agent)`);
  await stopAll();
  return 0;
}
