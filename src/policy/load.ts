// Policy YAML → validated Istio objects. A file may hold several documents (`---`) and
// `kind: List` documents (what `kubectl get -o yaml` prints); a folder is every *.yaml, *.yml and
// *.json in it (not recursive; dot-files skipped, which also skips a ConfigMap volume's `..data`
// bookkeeping while its symlinked files are read). Other kinds are skipped with a note. A bad
// document is an error naming its file, line, document number and field path; the caller keeps
// its previous set when there is any error, so a half-read change never applies.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments, type Document } from "yaml";
import type { z } from "zod";
import { AuthorizationPolicySchema, API_GROUP, PeerAuthenticationSchema, type AuthorizationPolicyObject, type PeerAuthenticationObject } from "./schema.ts";
import { formatOrigin, type Origin } from "./types.ts";

export interface LoadError extends Origin {
  /** The field at fault, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`; "" for the document. */
  path: string;
  message: string;
  /** `Kind namespace/name` when known. */
  object?: string;
}

export function formatLoadError(e: LoadError): string {
  return `${formatOrigin(e)}${e.object ? ` ${e.object}` : ""}: ${e.path ? `${e.path}: ` : ""}${e.message}`;
}

export interface PolicyDocuments {
  authorizationPolicies: { object: AuthorizationPolicyObject; origin: Origin }[];
  peerAuthentications: { object: PeerAuthenticationObject; origin: Origin }[];
}

export interface LoadResult extends PolicyDocuments {
  errors: LoadError[];
  /** Skipped documents and other debug-level facts. */
  notes: string[];
  files: string[];
}

/** Refused before parsing: almost certainly the wrong file. */
export const MAX_FILE_BYTES = 16 * 1024 * 1024;
const POLICY_KINDS = new Set(["AuthorizationPolicy", "PeerAuthentication"]);

/** `spec.rules[0].source["app.kubernetes.io/name"]` from a zod/yaml path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(String(p))) out += out === "" ? String(p) : `.${String(p)}`;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}

/** Kubernetes drops null fields; so do we, so `rules:` with nothing after it means "no rules". */
function dropNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropNulls);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== null) out[k] = dropNulls(x);
    return out;
  }
  return v;
}

/** The 1-based line of the deepest node on `path` that exists: a field's key, a list's item. */
function lineOf(doc: Document, lc: LineCounter, path: readonly PropertyKey[]): number {
  for (let n = path.length; n > 0; n--) {
    const parent = n === 1 ? doc.contents : doc.getIn(path.slice(0, n - 1) as unknown[], true);
    const last = path[n - 1];
    let node: { range?: [number, number, number] | null } | null | undefined;
    if (isMap(parent)) node = parent.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(last))?.key as typeof node;
    else if (isSeq(parent) && typeof last === "number") node = parent.items[last] as typeof node;
    if (node?.range) return lc.linePos(node.range[0]).line;
  }
  return doc.contents?.range ? lc.linePos(doc.contents.range[0]).line : 1;
}

/** Parses one file's text; `file` only names it in messages. */
export function parsePolicyText(text: string, file: string): LoadResult {
  const out: LoadResult = { authorizationPolicies: [], peerAuthentications: [], errors: [], notes: [], files: [file] };
  const lc = new LineCounter();
  // An empty text parses to an EmptyStream, an empty array.
  const docs: Document[] = [...parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true })];
  docs.forEach((doc, i) => {
    const document = i + 1;
    if (doc.errors.length > 0) {
      const e = doc.errors[0]!;
      const line = e.linePos?.[0]?.line ?? lc.linePos(e.pos[0]).line;
      out.errors.push({ file, document, line, path: "", message: `not valid YAML: ${e.message.split("\n")[0]}` });
      return;
    }
    const value = dropNulls(doc.toJS({ maxAliasCount: 100 }));
    if (value === null || value === undefined) return; // an empty document (e.g. a trailing ---)
    const origin = (item?: number, base: PropertyKey[] = []): Origin => ({ file, document, line: lineOf(doc, lc, base), ...(item === undefined ? {} : { item }) });
    const obj = value as { kind?: unknown; apiVersion?: unknown; items?: unknown };
    if (typeof value !== "object" || Array.isArray(value)) {
      out.errors.push({ ...origin(), path: "", message: "expected a Kubernetes object (a mapping with apiVersion and kind)" });
      return;
    }
    if (obj.kind === "List" && Array.isArray(obj.items)) {
      obj.items.forEach((item, j) => takeObject(out, item, origin(j, ["items", j]), (p) => lineOf(doc, lc, ["items", j, ...p])));
      return;
    }
    takeObject(out, value, origin(), (p) => lineOf(doc, lc, p));
  });
  return out;
}

function describe(o: unknown): string | undefined {
  const x = o as { kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } };
  if (typeof x?.kind !== "string") return undefined;
  const ns = typeof x.metadata?.namespace === "string" ? `${x.metadata.namespace}/` : "";
  return typeof x.metadata?.name === "string" ? `${x.kind} ${ns}${x.metadata.name}` : x.kind;
}

function takeObject(out: LoadResult, value: unknown, origin: Origin, line: (path: readonly PropertyKey[]) => number): void {
  const o = value as { kind?: unknown; apiVersion?: unknown };
  const kind = typeof o?.kind === "string" ? o.kind : undefined;
  const apiVersion = typeof o?.apiVersion === "string" ? o.apiVersion : undefined;
  const group = apiVersion?.split("/")[0];
  if (!o || typeof o !== "object" || kind === undefined || apiVersion === undefined) {
    out.errors.push({ ...origin, path: kind === undefined ? "kind" : "apiVersion", message: "required: every document is a Kubernetes object with apiVersion and kind" });
    return;
  }
  if (group !== API_GROUP || !POLICY_KINDS.has(kind)) {
    out.notes.push(`${formatOrigin(origin)}: skipped ${kind} (${apiVersion}): not an AuthorizationPolicy or PeerAuthentication of ${API_GROUP}`);
    return;
  }
  const schema: z.ZodType = kind === "AuthorizationPolicy" ? AuthorizationPolicySchema : PeerAuthenticationSchema;
  const r = schema.safeParse(value);
  if (!r.success) {
    for (const issue of r.error.issues) {
      let path = issue.path;
      let message = issue.message;
      if (issue.code === "unrecognized_keys") {
        path = [...issue.path, issue.keys[0]!];
        message = `unknown field${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}`;
      } else if (issue.code === "invalid_value" && "values" in issue) {
        message = `expected one of ${(issue.values as unknown[]).map((v) => JSON.stringify(v)).join(", ")}`;
      }
      out.errors.push({ ...origin, line: line(path), path: formatPath(path), message, object: describe(value) });
    }
    return;
  }
  if (kind === "AuthorizationPolicy") out.authorizationPolicies.push({ object: r.data as AuthorizationPolicyObject, origin });
  else out.peerAuthentications.push({ object: r.data as PeerAuthenticationObject, origin });
}

function readText(file: string): string {
  const size = statSync(file).size;
  if (size > MAX_FILE_BYTES) throw new Error(`${size} bytes, more than ${MAX_FILE_BYTES}: is this the right file?`);
  const bytes = readFileSync(file);
  if (bytes.includes(0)) throw new Error("contains a NUL byte: not a text file");
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Error("not valid UTF-8");
  }
}

/** The files a path stands for: itself, or the policy files directly in the folder, by name. */
export function policyFiles(path: string): string[] {
  if (!statSync(path).isDirectory()) return [path];
  return readdirSync(path)
    .filter((n) => !n.startsWith(".") && /\.(ya?ml|json)$/i.test(n))
    .sort()
    .map((n) => join(path, n))
    .filter((f) => statSync(f, { throwIfNoEntry: false })?.isFile());
}

/** Loads a file or folder. Never throws: an unreadable path is an error in the result. */
export function loadPolicyPath(path: string): LoadResult & { fingerprint: string } {
  const all: LoadResult = { authorizationPolicies: [], peerAuthentications: [], errors: [], notes: [], files: [] };
  const seen = new Map<string, Origin>();
  let fingerprint = "";
  let files: string[];
  try {
    files = policyFiles(path);
  } catch (e) {
    all.errors.push({ file: path, document: 0, line: 0, path: "", message: `cannot read: ${(e as Error).message}` });
    return { ...all, fingerprint: `error:${(e as Error).message}` };
  }
  for (const file of files) {
    let text: string;
    try {
      text = readText(file);
    } catch (e) {
      all.errors.push({ file, document: 0, line: 0, path: "", message: `cannot read: ${(e as Error).message}` });
      continue;
    }
    fingerprint += `${file}\0${Bun.hash(text)}\0`;
    const r = parsePolicyText(text, file);
    all.files.push(file);
    all.errors.push(...r.errors);
    all.notes.push(...r.notes);
    // Kubernetes holds one object per kind/namespace/name: a second one is a mistake to report.
    const unique = <T extends { object: { kind: string; metadata: { namespace: string; name: string } }; origin: Origin }>(x: T): boolean => {
      const key = `${x.object.kind} ${x.object.metadata.namespace}/${x.object.metadata.name}`;
      const first = seen.get(key);
      if (first) {
        all.errors.push({ ...x.origin, path: "metadata.name", message: `duplicate: ${key} is already defined at ${formatOrigin(first)}`, object: key });
        return false;
      }
      seen.set(key, x.origin);
      return true;
    };
    all.authorizationPolicies.push(...r.authorizationPolicies.filter(unique));
    all.peerAuthentications.push(...r.peerAuthentications.filter(unique));
  }
  if (files.length === 0) all.notes.push(`${path}: no policy files (*.yaml, *.yml, *.json)`);
  return { ...all, fingerprint };
}
