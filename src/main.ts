// nshub: one binary, many subcommands. This file only dispatches; each subcommand lives in
// its own module and is loaded on demand so `nshub cni` starts fast.
import { basename } from "node:path";
import pkg from "../package.json" with { type: "json" };

type Run = (args: string[]) => Promise<number>;
interface Command {
  summary: string;
  load?: () => Promise<{ main: Run }>;
}

const commands: Record<string, Command> = {
  agent: { summary: "node agent: enrollment, in-pod rules, pod cache, ZDS server", load: () => import("./agent/main.ts") },
  proxy: { summary: "node proxy: per-pod listeners inside each pod's netns, relay, admin", load: () => import("./proxy/main.ts") },
  cni: { summary: "chained CNI plugin (also runs when invoked as nshub-cni)", load: () => import("./cni/main.ts") },
  install: { summary: "put nshub-cni into the CNI bin dir and chain it into the node's conflist", load: () => import("./cli/install-command.ts") },
  uninstall: { summary: "undo install: restore the conflist, remove nshub-cni", load: () => import("./cli/install-command.ts").then((m) => ({ main: m.uninstallMain })) },
  enroll: { summary: "enroll a running pod: nshub enroll <namespace>/<pod>", load: () => import("./cli/enroll.ts") },
  unenroll: { summary: "unenroll a running pod: nshub unenroll <namespace>/<pod>", load: () => import("./cli/enroll.ts").then((m) => ({ main: m.unenrollMain })) },
  status: { summary: "show both daemons, readiness and pod counts", load: () => import("./cli/status.ts") },
  pods: { summary: "list pods the proxy serves", load: () => import("./cli/pods.ts") },
  workloads: { summary: "list the workload model (who is in the mesh, IPs, identities) from a ztunnel local-config file", load: () => import("./cli/workloads.ts") },
  connections: { summary: "list live connections (--watch to follow)", load: () => import("./cli/connections.ts") },
  certs: { summary: "list the proxy's workload certificates (one per identity)", load: () => import("./cli/certs.ts") },
  "logs-level": { summary: "read or set the proxy's log level", load: () => import("./cli/logs-level.ts") },
  policy: { summary: "check a connection against L4 AuthorizationPolicy/PeerAuthentication files", load: () => import("./cli/policy.ts") },
  policies: { summary: "list the policies in a file or folder and where they apply", load: () => import("./cli/policy.ts").then((m) => ({ main: m.policiesMain })) },
  ca: { summary: "nshub's certificate authority: init, issue-node, revoke-node, serve (Istio's CA API)", load: () => import("./cli/ca.ts") },
  demo: { summary: "a virtual node in network namespaces with live captured traffic", load: () => import("./demo/main.ts") },
  check: { summary: "verify this process can do what nshub needs (setns, SO_MARK, fd passing)", load: () => import("./cli/check.ts") },
};

export function usage(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return [
    `nshub ${pkg.version} — sidecarless in-pod traffic capture (Istio ambient compatible)`,
    "",
    "usage: nshub <command> [options]",
    "",
    "commands:",
    ...lines,
    "",
    "  nshub --help | -h     this text;  nshub <command> --help  a command's options",
    "  nshub --version | -v  print the version",
  ].join("\n");
}

export async function dispatch(argv: string[], invokedAs: string): Promise<number> {
  // The container runtime runs plugins by file name: a copy named nshub-cni is the CNI plugin.
  if (invokedAs === "nshub-cni") return run("cni", argv);
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-v" || name === "version") {
    console.log(`nshub ${pkg.version} (bun ${Bun.version})`);
    return 0;
  }
  if (name.startsWith("-")) {
    console.error(`nshub: unknown option ${name}\n\n${usage()}`);
    return 2;
  }
  return run(name, rest);
}

async function run(name: string, args: string[]): Promise<number> {
  const cmd = commands[name];
  if (!cmd) {
    console.error(`nshub: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (!cmd.load) {
    console.error(`nshub ${name}: not built yet in this version (${pkg.version}).`);
    return 1;
  }
  const mod = await cmd.load();
  try {
    return await mod.main(args);
  } catch (e) {
    // Bad flags (node:util parseArgs in strict mode) are a usage error, not a crash.
    const code = (e as { code?: string }).code ?? "";
    if (code.startsWith("ERR_PARSE_ARGS")) {
      console.error(`nshub ${name}: ${(e as Error).message}\nsee: nshub ${name} --help`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) {
  const invokedAs = basename(process.argv0 === "bun" ? process.execPath : process.argv0);
  const code = await dispatch(process.argv.slice(2), invokedAs);
  process.exit(code);
}
