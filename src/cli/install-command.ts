// The command lines of `nshub install` and `nshub uninstall`: flags, help, and a report or a
// one-sentence error with the exit code. What they do is src/cli/install.ts.
import { parseArgs } from "node:util";
import { ConflistError } from "./install-conflist.ts";
import {
  DEFAULT_AGENT_SOCKET,
  DEFAULT_CNI_BIN_DIR,
  DEFAULT_CNI_CONF_DIR,
  InstallError,
  install,
  uninstall,
  type InstallOptions,
  type Report,
} from "./install.ts";

/** The flags of both commands (uninstall accepts install's so one command line serves both). */
export const installFlags = {
  "cni-bin-dir": { type: "string" },
  "cni-conf-dir": { type: "string" },
  conflist: { type: "string" },
  "agent-socket": { type: "string" },
  binary: { type: "string" },
  link: { type: "boolean" },
  wait: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const HELP = `usage: nshub install [options]
       nshub uninstall [options]

install: copy (or --link) this binary to <cni-bin-dir>/nshub-cni and append
{"type": "nshub-cni", "agentSocket": …} as the last plugin of the conflist the container
runtime uses (the byte-wise first *.conf/*.conflist/*.json in <cni-conf-dir>), keeping the
original as <file>.nshub-backup. A single-plugin .conf becomes <base>.conflist. Idempotent.
Refuses when there is no CNI config yet (nshub-cni chains after the primary plugin).

uninstall: put the original config back byte-for-byte (or, if the file changed since install,
remove only the nshub entry), delete the backup, and delete nshub-cni if it is an nshub binary.
Idempotent.

options:
  --cni-bin-dir <dir>     CNI plugin directory            (default ${DEFAULT_CNI_BIN_DIR})
  --cni-conf-dir <dir>    CNI network config directory    (default ${DEFAULT_CNI_CONF_DIR})
  --conflist <file>       chain into this file instead of the runtime's first one
                          (a bare name is looked up in the conf dir)
  --agent-socket <path>   the agent API socket the plugin calls  (default ${DEFAULT_AGENT_SOCKET})
  --binary <path>         the nshub binary to install    (default: this executable)
  --link                  symlink instead of copying (not across a container boundary)
  --wait <seconds>        install: wait this long for the primary CNI config to appear
  -h, --help              this text`;

function parse(args: string[]): { opts: InstallOptions; help: boolean } {
  const { values } = parseArgs({ args, options: installFlags, strict: true, allowPositionals: false });
  let waitSeconds: number | undefined;
  if (values.wait !== undefined) {
    waitSeconds = Number(values.wait);
    if (!Number.isFinite(waitSeconds) || waitSeconds < 0) {
      throw Object.assign(new TypeError(`--wait: expected a number of seconds, got "${values.wait}"`), { code: "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" });
    }
  }
  return {
    help: values.help ?? false,
    opts: {
      cniBinDir: values["cni-bin-dir"],
      cniConfDir: values["cni-conf-dir"],
      conflist: values.conflist,
      agentSocket: values["agent-socket"],
      binary: values.binary,
      link: values.link ?? false,
      waitSeconds,
    },
  };
}

async function runCommand(name: string, args: string[], fn: (o: InstallOptions) => Promise<Report>): Promise<number> {
  const { opts, help } = parse(args);
  if (help) {
    console.log(HELP);
    return 0;
  }
  try {
    const report = await fn({ ...opts, progress: (l) => console.log(l) });
    for (const l of report.lines) console.log(l);
    for (const e of report.errors) console.error(`nshub ${name}: ${e}`);
    return report.errors.length > 0 ? 1 : 0;
  } catch (e) {
    if (e instanceof ConflistError || e instanceof InstallError) {
      const untouched = e instanceof ConflistError || e.nothingChanged;
      console.error(`nshub ${name}: ${e.message}${untouched && name === "install" ? "\nnothing was changed" : ""}`);
      return 1;
    }
    throw e;
  }
}

/** `nshub install` */
export function main(args: string[]): Promise<number> {
  return runCommand("install", args, install);
}

/** `nshub uninstall` */
export function uninstallMain(args: string[]): Promise<number> {
  return runCommand("uninstall", args, uninstall);
}
