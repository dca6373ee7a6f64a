// `nshub cni` / `nshub-cni`: the chained CNI plugin. The container runtime runs it last in the
// node's conflist with the CNI_* environment and the netconf (with prevResult) on stdin. It
// tells the agent about the pod over the agent's unix socket and prints prevResult unchanged.
//
// stdout carries only the result (or the spec's error JSON); logs go to a file (netconf
// `logFile`, else config `cni.logFile`; "stderr" for stderr) and never to stdout.
//
// The pod: the one CNI_ARGS names (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID,
// K8S_POD_SERVICE_ACCOUNT: kubelet through containerd's CRI or CRI-O). A runtime outside
// Kubernetes (`ctr run --cni`, cnitool) passes none of them: the container is then a pod named
// after CNI_CONTAINERID in namespace `containerNamespace` (netconf; default "default"), with
// CNI_CONTAINERID as its UID (spec.ts containerPod). The enrollment policy decides for it as for
// any pod, and ADD, CHECK and DEL name the same pod, so a DEL without CNI_NETNS (ctr sends none)
// still removes it.
//
// Commands:
//   ADD     PodAdd. enrolled / not enrolled → prevResult; pending (no proxy acked) → error 11;
//           agent unreachable or too slow → error 11 (the runtime retries the sandbox).
//   DEL     PodDelete (by UID; CNI_NETNS may be empty). Idempotent. When the agent cannot be
//           reached DEL still succeeds (logged):
//           failing it would block the pod's teardown for as long as the agent is down, and the
//           agent drops pods whose netns is gone when it rebuilds its cache on start.
//   CHECK   validates the input; the pod must not be pending in the agent (error 11 then).
//   STATUS  error 50 unless the agent answers (it only listens once its cache is rebuilt).
//   GC      nothing to collect here (the agent reconciles on start): success.
//   VERSION supported versions.
import { appendFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { createLogger, setLogLevel, setLogSink, type Logger } from "../log/logger.ts";
// Start-up matters here (one process per pod sandbox): nothing on this path loads Connect, the
// generated protobuf code or zod. See agent-json.ts and config.ts.
import { AgentCallError, listPods, podAdd, podDelete, PodState, type AgentFailure, type AgentJsonOptions } from "./agent-json.ts";
import { CniConfigError, loadCniConfig } from "./config.ts";
import {
  CniCode,
  CniFailure,
  compareVersions,
  containerPod,
  CURRENT_VERSION,
  DEFAULT_CONTAINER_NAMESPACE,
  isSupportedVersion,
  k8sPodFromArgs,
  parseCniArgs,
  parseEnv,
  parseNetConf,
  parsePrevResult,
  SUPPORTED_VERSIONS,
  type CniEnv,
  type K8sPod,
  type NetConf,
} from "./spec.ts";

export interface CniIo {
  env: Record<string, string | undefined>;
  stdin: () => Promise<string>;
  stdout: (text: string) => Promise<void>;
  /** Where log lines go when no log file can be used. */
  stderr: (text: string) => void;
}

const HELP = `nshub-cni — nshub's chained CNI plugin (run by the container runtime, not by hand)

It reads the CNI_* environment and the network configuration on stdin, tells the nshub agent
about the pod, and prints the previous plugin's result unchanged.

netconf keys (all optional):
  agentSocket         the agent's API socket (default: cni.agentSocket in the nshub config)
  timeoutMs           how long to wait for the agent (default 5000)
  logFile             log file (default: cni.logFile, /var/log/nshub/cni.log); "stderr" for stderr
  logLevel            trace | debug | info | warn | error
  containerNamespace  namespace of a container whose CNI_ARGS name no Kubernetes pod (no
                      K8S_POD_NAMESPACE/K8S_POD_NAME, e.g. ctr run --cni): it is the pod
                      <containerNamespace>/<CNI_CONTAINERID as a DNS name>, uid CNI_CONTAINERID
                      (default "${DEFAULT_CONTAINER_NAMESPACE}")

supported CNI versions: ${SUPPORTED_VERSIONS.join(", ")}`;

export async function main(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.error(HELP);
    return 0;
  }
  return runCni({
    env: process.env,
    stdin: () => Bun.stdin.text(),
    stdout: async (text) => {
      await Bun.write(Bun.stdout, text);
    },
    stderr: (text) => process.stderr.write(text),
  });
}

/** One plugin invocation. Returns the exit code; everything printed goes through `io`. */
export async function runCni(io: CniIo): Promise<number> {
  const started = performance.now();
  let cniVersion = CURRENT_VERSION;
  let log: Logger = createLogger("cni");
  setLogSink((line) => io.stderr(line + "\n"), "json");
  let env: CniEnv | undefined;
  try {
    env = parseEnv(io.env);
    let stdin: string;
    try {
      stdin = await io.stdin();
    } catch (e) {
      throw new CniFailure(CniCode.IoFailure, "cannot read the network configuration from stdin", (e as Error).message);
    }
    if (env.command === "VERSION") {
      await io.stdout(JSON.stringify(versionInfo()) + "\n");
      return 0;
    }
    const conf = parseNetConf(stdin);
    cniVersion = conf.cniVersion;
    const cfg = await pluginConfig(conf, io.env);
    log = openLog(cfg, io);
    const args = parseCniArgs(env.args);
    const k8s = k8sPodFromArgs(args);
    // Commands without a pod (STATUS, GC, VERSION) have no container id to name one after.
    const pod = k8s ?? (env.containerId !== "" ? containerPod(env.containerId, conf.plugin.containerNamespace ?? DEFAULT_CONTAINER_NAMESPACE) : undefined);
    log = log.child({ command: env.command, containerId: short(env.containerId), ...(pod ? { pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, ...(k8s ? {} : { namedBy: "CNI_CONTAINERID" }) } : {}) });
    const out = await dispatch(env, conf, pod, cfg, log);
    // The result is printed exactly as it came (byte for byte: prevResult is passed on unchanged).
    if (out !== undefined) await io.stdout(out);
    log.info(`${env.command} done`, { ms: Math.round(performance.now() - started) });
    return 0;
  } catch (e) {
    const failure = e instanceof CniFailure ? e : new CniFailure(CniCode.AgentFailed, `nshub-cni internal error: ${(e as Error).message ?? String(e)}`);
    log.error(`${env?.command ?? "CNI"} failed`, { code: failure.code, msg: failure.message, details: failure.details, ms: Math.round(performance.now() - started) });
    await io.stdout(JSON.stringify(failure.toJSON(isSupportedVersion(cniVersion) ? cniVersion : CURRENT_VERSION)) + "\n");
    return 1;
  }
}

export function versionInfo(): { cniVersion: string; supportedVersions: string[] } {
  return { cniVersion: CURRENT_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] };
}

interface EffectiveConfig {
  agentSocket: string;
  timeoutMs: number;
  logFile: string;
  logLevel: string | undefined;
}

async function pluginConfig(conf: NetConf, env: Record<string, string | undefined>): Promise<EffectiveConfig> {
  let defaults;
  try {
    defaults = await loadCniConfig(env);
  } catch (e) {
    if (e instanceof CniConfigError) throw new CniFailure(CniCode.InvalidNetconf, `nshub configuration is invalid: ${e.message}`);
    throw e;
  }
  return {
    agentSocket: conf.plugin.agentSocket ?? defaults.agentSocket,
    timeoutMs: conf.plugin.timeoutMs ?? defaults.timeoutMs,
    logFile: conf.plugin.logFile ?? defaults.logFile,
    logLevel: conf.plugin.logLevel,
  };
}

function openLog(cfg: EffectiveConfig, io: CniIo): Logger {
  if (cfg.logLevel) setLogLevel(cfg.logLevel);
  if (cfg.logFile !== "stderr") {
    try {
      mkdirSync(dirname(cfg.logFile), { recursive: true, mode: 0o750 });
      appendFileSync(cfg.logFile, "", { mode: 0o640 });
      const file = cfg.logFile;
      setLogSink((line) => {
        try {
          appendFileSync(file, line + "\n");
        } catch {
          io.stderr(line + "\n");
        }
      }, "json");
    } catch (e) {
      io.stderr(`nshub-cni: cannot write log file ${cfg.logFile} (${(e as Error).message}); logging to stderr\n`);
    }
  }
  return createLogger("cni");
}

async function dispatch(env: CniEnv, conf: NetConf, pod: K8sPod | undefined, cfg: EffectiveConfig, log: Logger): Promise<string | undefined> {
  // ADD, DEL and CHECK require CNI_CONTAINERID (parseEnv), so they always have a pod.
  switch (env.command) {
    case "ADD":
      return cmdAdd(env, conf, pod!, cfg, log);
    case "DEL":
      await cmdDel(env, pod!, cfg, log);
      return undefined;
    case "CHECK":
      await cmdCheck(env, conf, pod!, cfg, log);
      return undefined;
    case "STATUS":
      await cmdStatus(conf, cfg, log);
      return undefined;
    case "GC":
      if (compareVersions(conf.cniVersion, "1.1.0") < 0) throw new CniFailure(CniCode.IncompatibleVersion, `GC needs cniVersion 1.1.0 or later, the netconf says ${conf.cniVersion}`);
      return undefined;
    case "VERSION":
      return JSON.stringify(versionInfo());
  }
}

async function cmdAdd(env: CniEnv, conf: NetConf, k8s: K8sPod, cfg: EffectiveConfig, log: Logger): Promise<string> {
  const prev = parsePrevResult(conf.prevResult, "ADD", conf.cniVersion);
  const result = conf.prevResultRaw!;
  let reply;
  try {
    reply = await podAdd(agentOptions(cfg), {
      uid: k8s.uid,
      namespace: k8s.namespace,
      name: k8s.name,
      serviceAccount: k8s.serviceAccount,
      netnsPath: env.netns,
      ips: prev.ips,
      containerId: env.containerId,
      interfaceName: env.ifname,
    });
  } catch (e) {
    throw agentCallFailure(e, cfg, `pod ${k8s.namespace}/${k8s.name}`);
  }
  switch (reply.state) {
    case PodState.ENROLLED:
    case PodState.NOT_ENROLLED:
      log.info(reply.state === PodState.ENROLLED ? "pod enrolled" : "pod not enrolled", { reason: reply.reason, ips: prev.ips });
      return result;
    case PodState.PENDING:
      throw new CniFailure(
        CniCode.TryAgainLater,
        `pod ${k8s.namespace}/${k8s.name} is pending: no nshub proxy has taken it yet (${reply.reason})`,
        "its traffic redirection is in place (fail closed); the runtime retries the sandbox, and the pod starts once a proxy is connected",
      );
    default:
      throw new CniFailure(CniCode.AgentProtocol, `the agent answered PodAdd with state ${reply.state}`, "the agent and the plugin may be different nshub versions");
  }
}

async function cmdDel(env: CniEnv, k8s: K8sPod, cfg: EffectiveConfig, log: Logger): Promise<void> {
  try {
    const r = await podDelete(agentOptions(cfg), { uid: k8s.uid, namespace: k8s.namespace, name: k8s.name, containerId: env.containerId, netnsPath: env.netns });
    log.info(r.deleted ? "pod deleted" : "nothing to delete", { reason: r.reason });
  } catch (e) {
    const f = agentFailure(e);
    if (f.kind !== "error" || f.code === "unavailable") {
      // See the header: DEL must not block pod teardown while the agent is away.
      log.warn("DEL: agent not reachable; succeeding anyway (the agent drops gone pods when it rebuilds its cache)", { error: f.message });
      return;
    }
    throw agentCallFailure(e, cfg, `pod ${k8s.namespace}/${k8s.name}`);
  }
}

async function cmdCheck(env: CniEnv, conf: NetConf, k8s: K8sPod, cfg: EffectiveConfig, log: Logger): Promise<void> {
  if (compareVersions(conf.cniVersion, "0.4.0") < 0) throw new CniFailure(CniCode.IncompatibleVersion, `CHECK needs cniVersion 0.4.0 or later, the netconf says ${conf.cniVersion}`);
  parsePrevResult(conf.prevResult, "CHECK", conf.cniVersion);
  let pods;
  try {
    pods = (await listPods(agentOptions(cfg), { namespace: k8s.namespace })).pods;
  } catch (e) {
    throw agentCallFailure(e, cfg, `pod ${k8s.namespace}/${k8s.name}`);
  }
  const pod = pods.find((p) => (k8s.uid ? p.uid === k8s.uid : p.name === k8s.name));
  if (!pod) {
    log.warn("CHECK: the agent does not know this pod", { netns: env.netns });
    return;
  }
  if (pod.state === PodState.PENDING) {
    throw new CniFailure(CniCode.TryAgainLater, `pod ${k8s.namespace}/${k8s.name} is pending: no nshub proxy has taken it yet (${pod.reason})`);
  }
}

async function cmdStatus(conf: NetConf, cfg: EffectiveConfig, log: Logger): Promise<void> {
  if (compareVersions(conf.cniVersion, "1.1.0") < 0) throw new CniFailure(CniCode.IncompatibleVersion, `STATUS needs cniVersion 1.1.0 or later, the netconf says ${conf.cniVersion}`);
  try {
    await listPods(agentOptions(cfg), {});
  } catch (e) {
    const f = agentFailure(e);
    log.warn("STATUS: agent not available", { error: f.message });
    throw new CniFailure(CniCode.PluginNotAvailable, `the nshub agent is not available: ${f.message}`);
  }
}

/** Maps a failed agent call to the CNI error the runtime should see. */
function agentCallFailure(e: unknown, cfg: EffectiveConfig, what: string): CniFailure {
  const f = agentFailure(e);
  switch (f.kind) {
    case "unreachable":
      return new CniFailure(CniCode.TryAgainLater, `${what}: ${f.message}`, "is the nshub agent running on this node? the runtime retries");
    case "timeout":
      return new CniFailure(CniCode.TryAgainLater, `${what}: the nshub agent did not answer within ${cfg.timeoutMs} ms`, f.message);
    case "error":
      switch (f.code) {
        case "unavailable":
        case "resource_exhausted":
        case "aborted":
          return new CniFailure(CniCode.TryAgainLater, `${what}: the nshub agent is not ready: ${f.message}`);
        case "invalid_argument":
        case "failed_precondition":
        case "not_found":
        case "already_exists":
        case "permission_denied":
        case "out_of_range":
          return new CniFailure(CniCode.AgentRejected, `${what}: the nshub agent refused it: ${f.message}`);
        case "unimplemented":
          return new CniFailure(CniCode.AgentProtocol, `${what}: the nshub agent does not implement this call: ${f.message}`, "the agent and the plugin may be different nshub versions");
        default:
          return new CniFailure(CniCode.AgentFailed, `${what}: the nshub agent failed: ${f.message}`);
      }
  }
}

function agentOptions(cfg: EffectiveConfig): AgentJsonOptions {
  return { socketPath: cfg.agentSocket, timeoutMs: cfg.timeoutMs };
}

/** The failure behind an error thrown by an agent-json call (anything else: an "unknown" error). */
function agentFailure(e: unknown): AgentFailure {
  if (e instanceof AgentCallError) return e.failure;
  return { kind: "error", code: "unknown", message: e instanceof Error ? e.message : String(e) };
}

function short(id: string): string {
  return id.length > 12 ? id.slice(0, 12) : id;
}
