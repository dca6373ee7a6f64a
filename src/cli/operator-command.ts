// The shape every operator command shares (`status`, `pods`, `connections`, `logs-level`):
// strict flags with --json/--admin/--timeout/--help, --help printed before anything runs, and
// the body run under runCommand so an unreachable daemon or a bad value becomes one sentence
// and an exit code. Bad flags still throw from parseArgs: src/main.ts turns them into exit 2.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { runCommand, type Io } from "./admin-client.ts";

type Options = NonNullable<ParseArgsConfig["options"]>;

const COMMON = {
  json: { type: "boolean" },
  admin: { type: "string" },
  timeout: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies Options;

export interface OperatorCommand<O extends Options> {
  /** The subcommand's name, as in `nshub <name>`; prefixes its usage errors. */
  name: string;
  help: string;
  /** Flags beyond --json, --admin, --timeout and --help. */
  options: O;
  /** Whether the command takes positional arguments (only `logs-level` does). */
  positionals?: boolean;
}

type Values<O extends Options> = ReturnType<typeof parseArgs<{ options: O & typeof COMMON; strict: true; allowPositionals: boolean }>>["values"];

export async function runOperatorCommand<O extends Options>(
  cmd: OperatorCommand<O>,
  args: string[],
  io: Io,
  body: (values: Values<O>, positionals: string[]) => Promise<number>,
): Promise<number> {
  type Config = { args: string[]; options: O & typeof COMMON; strict: true; allowPositionals: boolean };
  const { values, positionals } = parseArgs<Config>({
    args,
    options: { ...COMMON, ...cmd.options } as O & typeof COMMON,
    strict: true,
    allowPositionals: cmd.positionals ?? false,
  });
  if ((values as { help?: boolean }).help) {
    io.out(cmd.help);
    return 0;
  }
  return runCommand(io, cmd.name, () => body(values as Values<O>, positionals));
}
