// `nshub enroll <namespace>/<pod>` and `nshub unenroll <namespace>/<pod>`: change a running
// pod's enrollment through the agent's event API (late enrollment). The override is kept by the
// agent (also across its restarts) until the pod is deleted.
//
// Exit codes: 0 done (enrolled / not enrolled); 3 enrolled but pending (rules in place, no proxy
// has acked it yet; it is handed over when one connects); 1 the agent refused or failed;
// 2 usage or config error.
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../config/load.ts";
import { PodState, type Pod } from "../gen/nshub/agent/v1/agent_pb.ts";
import { agentFailure, createAgentClient } from "../agent/client.ts";

const OPTIONS = {
  uid: { type: "string" },
  netns: { type: "string" },
  "service-account": { type: "string" },
  "api-socket": { type: "string" },
  config: { type: "string" },
  timeout: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const HELP_ENROLL = `usage: nshub enroll <namespace>/<pod> [options]

Enroll a running pod: the agent programs its netns and hands it to the proxy.

  --uid <uid>               the pod's UID (needed when the agent never saw the pod's CNI ADD)
  --netns <path>            the pod's netns (default: what the agent knows, or a /proc scan)
  --service-account <name>  the pod's service account: its identity is spiffe://<trust domain>/ns/<namespace>/sa/<name>
                            (default: what the agent knows from the CNI ADD, else "default")
  --api-socket <path>       the agent's API socket (default: agent.apiSocket of the config)
  --config <file>           nshub config file
  --timeout <ms>            how long to wait for the agent (default 10000)
  --json                    print the agent's answer as JSON

exit status: 0 enrolled, 3 pending (no proxy has acked it yet), 1 refused/failed, 2 usage`;

const HELP_UNENROLL = `usage: nshub unenroll <namespace>/<pod> [options]

Unenroll a running pod: its in-pod rules and host probe entry go, and the proxy is told.

  --uid <uid>               the pod's UID (when several pods share the name)
  --api-socket <path>       the agent's API socket (default: agent.apiSocket of the config)
  --config <file>           nshub config file
  --timeout <ms>            how long to wait for the agent (default 10000)
  --json                    print the agent's answer as JSON

exit status: 0 done, 1 refused/failed, 2 usage`;

export function main(args: string[]): Promise<number> {
  return run("enroll", args);
}

export function unenrollMain(args: string[]): Promise<number> {
  return run("unenroll", args);
}

/** "<namespace>/<pod>" → parts; undefined when malformed. */
export function parsePodRef(ref: string): { namespace: string; name: string } | undefined {
  const m = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/.exec(ref);
  if (!m || m[1]!.length > 63 || m[3]!.length > 253) return undefined;
  return { namespace: m[1]!, name: m[3]! };
}

async function run(cmd: "enroll" | "unenroll", args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  if (values.help) {
    console.log(cmd === "enroll" ? HELP_ENROLL : HELP_UNENROLL);
    return 0;
  }
  const usage = (msg: string) => {
    console.error(`nshub ${cmd}: ${msg}\nsee: nshub ${cmd} --help`);
    return 2;
  };
  if (positionals.length !== 1) return usage(positionals.length === 0 ? "which pod? give <namespace>/<pod>" : `one pod at a time, got ${positionals.join(" ")}`);
  const ref = parsePodRef(positionals[0]!);
  if (!ref) return usage(`${JSON.stringify(positionals[0])} is not <namespace>/<pod> (Kubernetes names: lower-case letters, digits, '-', '.')`);
  if (cmd === "unenroll" && (values.netns !== undefined || values["service-account"] !== undefined)) return usage("--netns and --service-account only apply to enroll");
  if (values.netns !== undefined && !values.netns.startsWith("/")) return usage(`--netns must be an absolute path, got ${JSON.stringify(values.netns)}`);
  let timeoutMs = 10_000;
  if (values.timeout !== undefined) {
    timeoutMs = Number(values.timeout);
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) return usage(`--timeout must be a positive number of milliseconds, got ${JSON.stringify(values.timeout)}`);
  }
  let socketPath = values["api-socket"];
  if (socketPath === undefined) {
    try {
      socketPath = loadConfig({ file: values.config }).agent.apiSocket;
    } catch (e) {
      if (e instanceof ConfigError) return usage(e.message);
      throw e;
    }
  }
  const client = createAgentClient({ socketPath, timeoutMs });
  let r: { state: PodState; reason: string; pod?: Pod };
  try {
    r =
      cmd === "enroll"
        ? await client.enroll({ namespace: ref.namespace, name: ref.name, uid: values.uid ?? "", netnsPath: values.netns ?? "", serviceAccount: values["service-account"] ?? "" })
        : await client.unenroll({ namespace: ref.namespace, name: ref.name, uid: values.uid ?? "" });
  } catch (e) {
    const f = agentFailure(e, socketPath);
    console.error(`nshub ${cmd} ${ref.namespace}/${ref.name}: ${f.message}`);
    return 1;
  }
  const state = r.state === PodState.ENROLLED ? "enrolled" : r.state === PodState.PENDING ? "pending" : r.state === PodState.NOT_ENROLLED ? "not enrolled" : "unknown";
  if (values.json) {
    console.log(JSON.stringify({ pod: `${ref.namespace}/${ref.name}`, uid: r.pod?.uid ?? "", state, reason: r.reason, ips: r.pod?.ips ?? [], netns: r.pod?.netnsPath ?? "" }));
  } else {
    console.log(`${ref.namespace}/${ref.name}: ${state} — ${r.reason}`);
  }
  if (cmd === "enroll") return r.state === PodState.ENROLLED ? 0 : r.state === PodState.PENDING ? 3 : 1;
  return r.state === PodState.NOT_ENROLLED ? 0 : 1;
}
