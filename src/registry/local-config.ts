// ztunnel's local configuration file (what `LOCAL_XDS_PATH` points at), read into workloads.
// The format is ztunnel's `LocalConfig` (https://github.com/istio/ztunnel/blob/master/src/xds.rs):
//
//   workloads: [LocalWorkload]   each: the fields of ztunnel's Workload (camelCase, see
//                                ./workload-schema.ts) + `services: {"<ns>/<hostname>": {port: targetPort}}`
//   services:  [Service]         accepted, not used yet (nshub has no service VIPs)
//   policies:  [Authorization]   accepted, not used yet (the policy engine reads its own source)
//
// ztunnel declares both structs `deny_unknown_fields`, and serde enforces it through the
// `flatten` of Workload into LocalWorkload too, so an unknown or misspelt key is an error there
// and here. nshub is stricter in three ways, each because a silent default would hide a
// mistake: `uid` must be given (it is what sources are merged by; ztunnel defaults it to ""),
// the namespace and service account must make a valid SPIFFE ID, and a uid may appear once.
// As in ztunnel, a missing list is an empty one, and so is an empty file (`workloads:` with no
// value too; ztunnel refuses an explicit `null` there, nshub takes it as empty).
// Example: https://github.com/istio/ztunnel/blob/master/examples/localhost.yaml
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { isMap, isSeq, LineCounter, parseDocument, type Document } from "yaml";
import type { z } from "zod";
import { flowDepth, MAX_FLOW_DEPTH } from "../config/file.ts";
import { makeWorkload, WorkloadInputError, type Workload } from "./workload.ts";
import { describeIssue, localWorkloadSchema, type LocalWorkloadEntry, topLevelSchema, toWorkloadInput } from "./workload-schema.ts";

/** Far above any real file (a workload is ~300 bytes), far below what would stall the parser. */
export const MAX_LOCAL_CONFIG_BYTES = 16 * 1024 * 1024;
/** Problems listed in one error before "…and N more". */
const MAX_PROBLEMS = 10;

export interface LocalConfig {
  workloads: Workload[];
  /** The entries as written (ztunnel's names), in file order. */
  entries: LocalWorkloadEntry[];
  /** Counted and ignored for now. */
  services: number;
  policies: number;
}

export interface Problem {
  /** Index in `workloads:`, when the problem is in one entry. */
  index?: number;
  uid?: string;
  /** ztunnel's field path inside the entry (or the top level), e.g. "workloadIps[0]". */
  field?: string;
  line?: number;
  message: string;
}

/** A file nshub cannot use; the message names the file, and each entry, field and line. */
export class LocalConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: Problem[],
    readonly more = 0,
  ) {
    const lines = problems.map(problemText);
    const tail = more > 0 ? [`…and ${more} more`] : [];
    super(lines.length === 1 && more === 0 ? `workloads file ${file}: ${lines[0]}` : [`workloads file ${file}: ${problems.length + more} problems`, ...[...lines, ...tail].map((l) => `  ${l}`)].join("\n"));
    this.name = "LocalConfigError";
  }
}

function problemText(p: Problem): string {
  const where = [p.index !== undefined ? `workloads[${p.index}]${p.uid ? ` (uid ${JSON.stringify(p.uid)})` : ""}` : "", p.line !== undefined ? `line ${p.line}` : ""].filter(Boolean).join(", ");
  return `${where ? `${where}: ` : ""}${p.field ? `${p.field}: ` : ""}${p.message}`;
}

/** Reads and parses a local-config file; throws LocalConfigError. */
export function readLocalConfig(file: string, trustDomain: string): LocalConfig {
  return parseLocalConfig(readLocalConfigText(file), { file, trustDomain });
}

/** Parses local-config text; `file` only names it in errors. Throws LocalConfigError. */
export function parseLocalConfig(text: string, opts: { file: string; trustDomain: string; source?: string }): LocalConfig {
  const fail = (message: string, line?: number): never => {
    throw new LocalConfigError(opts.file, [{ message, ...(line !== undefined ? { line } : {}) }]);
  };
  const depth = flowDepth(text);
  if (depth > MAX_FLOW_DEPTH) fail(`[ and { nest ${depth} deep, over the limit of ${MAX_FLOW_DEPTH} (is it the right file?)`);
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, merge: false });
  const bad = doc.errors[0];
  if (bad) fail(`not valid YAML: ${bad.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`, bad.linePos?.[0]?.line);
  let raw: unknown;
  try {
    raw = doc.toJS() ?? {};
  } catch (e) {
    fail(`not valid YAML: ${(e as Error).message.split("\n")[0]}`);
  }
  const problems: Problem[] = [];
  let more = 0;
  const add = (p: Problem) => (problems.length < MAX_PROBLEMS ? problems.push(p) : more++);
  const top = topLevelSchema.safeParse(raw);
  for (const i of top.error?.issues ?? []) add({ ...describeIssue(i, raw, true), ...lineOf(doc, lc, issuePath(i)) });
  // A misspelt top-level key does not hide the entries' own problems.
  const list = (raw as { workloads?: unknown }).workloads;
  const items = top.success ? (top.data.workloads ?? []) : Array.isArray(list) ? list : [];
  const source = opts.source ?? `file:${opts.file}`;
  const workloads: Workload[] = [];
  const entries: LocalWorkloadEntry[] = [];
  const seen = new Map<string, number>();
  items.forEach((item, index) => {
    const uid = typeof (item as { uid?: unknown })?.uid === "string" ? ((item as { uid: string }).uid as string) : undefined;
    const at = (field: (string | number)[]) => ({ index, ...(uid ? { uid } : {}), ...lineOf(doc, lc, ["workloads", index, ...field]) });
    const parsed = localWorkloadSchema.safeParse(item);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) add({ ...at(issuePath(issue)), ...describeIssue(issue, item) });
      return;
    }
    try {
      workloads.push(makeWorkload(toWorkloadInput(parsed.data), { trustDomain: opts.trustDomain, source }));
      entries.push(parsed.data);
    } catch (e) {
      if (!(e instanceof WorkloadInputError)) throw e;
      const path = e.field.replace(/\[(\d+)\]/g, ".$1").split(".").map((s) => (/^\d+$/.test(s) ? Number(s) : s));
      add({ ...at(path), field: e.field, message: e.reason });
      return;
    }
    const key = workloads[workloads.length - 1]!.uid;
    const first = seen.get(key);
    if (first !== undefined) add({ ...at(["uid"]), field: "uid", message: `the same uid as workloads[${first}]: each workload appears once` });
    else seen.set(key, index);
  });
  if (problems.length > 0) throw new LocalConfigError(opts.file, problems, more);
  return { workloads, entries, services: top.data?.services?.length ?? 0, policies: top.data?.policies?.length ?? 0 };
}

/** Where an issue points; for an unknown key, at the key itself. */
function issuePath(i: z.core.$ZodIssue): (string | number)[] {
  const path = i.path as (string | number)[];
  return i.code === "unrecognized_keys" ? [...path, i.keys[0]!] : path;
}

/** The line of the deepest node that exists on `path` (a missing key: its mapping's line). */
function lineOf(doc: Document, lc: LineCounter, path: readonly PropertyKey[]): { line?: number } {
  let node: unknown = doc.contents;
  let offset: number | undefined = (node as { range?: number[] } | null)?.range?.[0];
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => String((p.key as { value?: unknown } | null)?.value) === String(seg));
      if (!pair) break;
      // An unknown key's line is the key's own; a value's is where the value starts.
      offset = (pair.value as { range?: number[] } | null)?.range?.[0] ?? (pair.key as { range?: number[] }).range?.[0];
      node = pair.value;
    } else if (isSeq(node) && typeof seg === "number" && node.items[seg]) {
      node = node.items[seg];
      offset = (node as { range?: number[] }).range?.[0];
    } else break;
  }
  return offset === undefined ? {} : { line: lc.linePos(offset).line };
}

/** The file's text: refused early when it cannot be a local config (size, NUL bytes, not UTF-8). */
export function readLocalConfigText(file: string): string {
  const fail = (message: string): never => {
    throw new LocalConfigError(file, [{ message }]);
  };
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    const code = (e as { code?: string }).code;
    return fail(code === "ENOENT" ? "no such file" : `cannot read: ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) fail("is a directory, not a file");
    // Devices and pipes report no size; a file still being written may have grown since fstat.
    const buf = Buffer.allocUnsafe(Math.min(MAX_LOCAL_CONFIG_BYTES + 1, st.isFile() ? st.size + 65536 : MAX_LOCAL_CONFIG_BYTES + 1));
    let n = 0;
    for (let r = -1; r !== 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null);
    if (n > MAX_LOCAL_CONFIG_BYTES) fail(`more than ${MAX_LOCAL_CONFIG_BYTES / 1024 / 1024} MiB (is it the right file?)`);
    const bytes = buf.subarray(0, n);
    const nul = bytes.indexOf(0);
    if (nul >= 0) fail(`not a text file (a NUL byte at offset ${nul})`);
    try {
      return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
    } catch {
      return fail("not valid UTF-8 text");
    }
  } finally {
    closeSync(fd);
  }
}
