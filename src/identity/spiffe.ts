// SPIFFE IDs: the generic form `spiffe://<trust domain>/<path>` checked against the SPIFFE spec
// (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md, §2.1–2.4), and the
// workload form Istio and ztunnel use, `spiffe://<trust domain>/ns/<namespace>/sa/<service
// account>` (ztunnel's `Identity::from_str` accepts exactly those four segments:
// https://github.com/istio/ztunnel/blob/master/src/identity/manager.rs). Every refusal names the
// input and the rule it breaks, because these strings come from CSRs, config and the CA API.

export const SPIFFE_SCHEME = "spiffe://";
/** SPIFFE-ID §2.3: implementations need not accept longer URIs, and must not make them. */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** SPIFFE-ID §2.3: RFC 3986 limits a host to 255 characters. */
export const MAX_TRUST_DOMAIN_BYTES = 255;
export const DEFAULT_TRUST_DOMAIN = "cluster.local";
/** A pod's service account when nothing names one: what Kubernetes itself assumes. */
export const DEFAULT_SERVICE_ACCOUNT = "default";

/** A workload's identity, as Istio names it. */
export interface WorkloadIdentity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

/** A generic SPIFFE ID: trust domain and path ("" or "/seg/…"). */
export interface SpiffeId {
  trustDomain: string;
  path: string;
}

export class SpiffeIdError extends Error {
  constructor(
    readonly input: string,
    readonly reason: string,
  ) {
    super(`invalid SPIFFE ID ${JSON.stringify(clip(input))}: ${reason}`);
    this.name = "SpiffeIdError";
  }
}

const TRUST_DOMAIN_CHAR = /^[a-z0-9._-]$/;
const PATH_CHAR = /^[a-zA-Z0-9._-]$/;

/** Why `td` is not a valid trust domain name (SPIFFE-ID §2.1), or undefined when it is. */
export function trustDomainProblem(td: string): string | undefined {
  if (td === "") return "the trust domain is empty";
  if (td.length > MAX_TRUST_DOMAIN_BYTES) return `the trust domain is ${td.length} bytes long, more than ${MAX_TRUST_DOMAIN_BYTES}`;
  if (td.startsWith("[")) return "an IPv6 address is not a valid trust domain";
  if (td.includes("@")) return "the trust domain may not carry user info (`user@`)";
  if (td.includes(":")) return "the trust domain may not carry a port (no `:` allowed)";
  if (td.includes("%")) return "the trust domain may not contain percent-encoded characters";
  if (td !== td.toLowerCase() && td.toLowerCase().split("").every((c) => TRUST_DOMAIN_CHAR.test(c))) {
    return `the trust domain must be lowercase (SPIFFE IDs compare it case-insensitively, but a valid ID spells it in lowercase): ${JSON.stringify(td.toLowerCase())}`;
  }
  for (const c of td) {
    if (!TRUST_DOMAIN_CHAR.test(c)) return `the trust domain contains ${describeChar(c)}; only a-z, 0-9, '.', '-' and '_' are allowed`;
  }
  return undefined;
}

/** `td` if it is a valid trust domain name; throws SpiffeIdError otherwise. */
export function checkTrustDomain(td: string): string {
  const problem = trustDomainProblem(td);
  if (problem) throw new SpiffeIdError(`${SPIFFE_SCHEME}${td}`, problem);
  return td;
}

/** Why `seg` is not a valid path segment (SPIFFE-ID §2.2), or undefined. `what` names it. */
function segmentProblem(seg: string, what: string): string | undefined {
  if (seg === "") return `${what} is empty`;
  if (seg === "." || seg === "..") return `${what} is "${seg}": relative path segments are not allowed`;
  if (seg.includes("%")) return `${what} contains percent-encoded characters`;
  for (const c of seg) {
    if (!PATH_CHAR.test(c)) return `${what} ${JSON.stringify(seg)} contains ${describeChar(c)}; only letters, digits, '.', '-' and '_' are allowed`;
  }
  return undefined;
}

/** Parses any SPIFFE ID, checked against the spec's rules. */
export function parseSpiffeUri(input: string): SpiffeId {
  const fail = (reason: string): never => {
    throw new SpiffeIdError(input, reason);
  };
  if (typeof input !== "string" || input === "") fail("empty");
  const bytes = Buffer.byteLength(input);
  if (bytes > MAX_SPIFFE_ID_BYTES) fail(`${bytes} bytes long, more than the ${MAX_SPIFFE_ID_BYTES} the SPIFFE spec allows`);
  if (!input.startsWith(SPIFFE_SCHEME)) {
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(input)?.[1];
    if (scheme?.toLowerCase() === "spiffe") {
      if (scheme !== "spiffe") fail(`the scheme must be written "spiffe" in lowercase, not "${scheme}"`);
      fail(`expected "${SPIFFE_SCHEME}" followed by the trust domain`);
    }
    fail(scheme === undefined ? `no scheme: a SPIFFE ID starts with "${SPIFFE_SCHEME}"` : `the scheme is "${scheme}", not "spiffe"`);
  }
  const rest = input.slice(SPIFFE_SCHEME.length);
  if (rest.includes("?")) fail("a SPIFFE ID may not have a query ('?')");
  if (rest.includes("#")) fail("a SPIFFE ID may not have a fragment ('#')");
  const slash = rest.indexOf("/");
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? "" : rest.slice(slash);
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem) fail(tdProblem);
  if (path !== "") {
    if (path.endsWith("/")) fail("the path may not end with '/'");
    const segs = path.slice(1).split("/");
    segs.forEach((s, i) => {
      const p = segmentProblem(s, `path segment ${i + 1}`);
      if (p) fail(p);
    });
  }
  return { trustDomain, path };
}

/** Parses a workload identity `spiffe://<td>/ns/<namespace>/sa/<service account>`, exactly. */
export function parseSpiffeId(input: string): WorkloadIdentity {
  const { trustDomain, path } = parseSpiffeUri(input);
  const segs = path === "" ? [] : path.slice(1).split("/");
  const shape = `a workload identity is spiffe://<trust domain>/ns/<namespace>/sa/<service account>`;
  if (segs.length === 0) throw new SpiffeIdError(input, `no path: ${shape}`);
  if (segs[0] !== "ns") throw new SpiffeIdError(input, `the path starts with "${segs[0]}", not "ns": ${shape}`);
  if (segs.length < 4) throw new SpiffeIdError(input, `the path has ${segs.length} segments, not 4: ${shape}`);
  if (segs[2] !== "sa") throw new SpiffeIdError(input, `the third path segment is "${segs[2]}", not "sa": ${shape}`);
  if (segs.length > 4) throw new SpiffeIdError(input, `${segs.length - 4} extra path segment(s) after the service account (/${segs.slice(4).join("/")}): ${shape}`);
  return { trustDomain, namespace: segs[1]!, serviceAccount: segs[3]! };
}

/** The SPIFFE ID of a workload identity; throws SpiffeIdError on a part the spec refuses. */
export function formatSpiffeId(id: WorkloadIdentity): string {
  const text = `${SPIFFE_SCHEME}${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
  const td = trustDomainProblem(id.trustDomain);
  if (td) throw new SpiffeIdError(text, td);
  const ns = segmentProblem(id.namespace, "the namespace");
  if (ns) throw new SpiffeIdError(text, ns);
  const sa = segmentProblem(id.serviceAccount, "the service account");
  if (sa) throw new SpiffeIdError(text, sa);
  if (Buffer.byteLength(text) > MAX_SPIFFE_ID_BYTES) throw new SpiffeIdError(text, `${Buffer.byteLength(text)} bytes long, more than ${MAX_SPIFFE_ID_BYTES}`);
  return text;
}

/** True when `input` is a valid workload identity. */
export function isWorkloadSpiffeId(input: string): boolean {
  try {
    parseSpiffeId(input);
    return true;
  } catch {
    return false;
  }
}

function describeChar(c: string): string {
  const code = c.codePointAt(0)!;
  if (c === " ") return "a space";
  if (code < 0x20 || code === 0x7f) return `a control character (U+${code.toString(16).padStart(4, "0").toUpperCase()})`;
  if (code > 0x7e) return `a non-ASCII character ${JSON.stringify(c)}`;
  return `'${c}'`;
}

function clip(s: unknown): string {
  const text = String(s);
  return text.length > 120 ? `${text.slice(0, 100)}…(${text.length} characters)` : text;
}
