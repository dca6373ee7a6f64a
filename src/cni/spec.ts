// The CNI specification, as far as a chained plugin needs it: versions, error codes, the
// environment, CNI_ARGS, the network configuration and the previous plugin's result. Pure
// functions, no I/O: src/cni/main.ts does the reading, printing and talking to the agent.
//
// Spec: https://github.com/containernetworking/cni/blob/main/SPEC.md (1.1.0), with the older
// result shape of 0.3.x/0.4.0 (ips[].version) still accepted.

/** Netconf cniVersions this plugin accepts (VERSION lists them). */
export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export const CURRENT_VERSION = "1.1.0";

/** Error codes: 1-99 are the spec's, 100+ are nshub's own. */
export const CniCode = {
  /** Incompatible CNI version. */
  IncompatibleVersion: 1,
  /** Unsupported field in network configuration. */
  UnsupportedField: 2,
  /** Container unknown or does not exist. */
  UnknownContainer: 3,
  /** Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID, etc. */
  InvalidEnv: 4,
  /** I/O failure (e.g. reading stdin). */
  IoFailure: 5,
  /** Failed to decode content (e.g. the netconf is not JSON). */
  DecodingFailure: 6,
  /** Invalid network config (a required field is missing or has the wrong type). */
  InvalidNetconf: 7,
  /** Try again later: the agent cannot be reached, or no proxy has the pod yet. */
  TryAgainLater: 11,
  /** STATUS: the plugin cannot service ADD requests (agent not reachable or not ready). */
  PluginNotAvailable: 50,
  /** nshub: the agent refused the pod (its netns is missing or not a netns, no IP, ...). */
  AgentRejected: 100,
  /** nshub: the agent failed while programming the pod (nothing was left half-applied). */
  AgentFailed: 101,
  /** nshub: the agent answered something this plugin does not understand. */
  AgentProtocol: 102,
} as const;

/** A CNI failure, printed on stdout as the spec's error JSON. */
export class CniFailure extends Error {
  override name = "CniFailure";
  constructor(
    readonly code: number,
    msg: string,
    readonly details?: string,
  ) {
    super(msg);
  }

  /** The spec's error object: {cniVersion, code, msg, details?}. */
  toJSON(cniVersion: string): Record<string, unknown> {
    const out: Record<string, unknown> = { cniVersion, code: this.code, msg: this.message };
    if (this.details) out.details = this.details;
    return out;
  }
}

export type CniCommandName = "ADD" | "DEL" | "CHECK" | "VERSION" | "STATUS" | "GC";
const COMMANDS: readonly CniCommandName[] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"];

export interface CniEnv {
  command: CniCommandName;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  path: string;
}

/** Which CNI_ variables each command needs (as libcni's skel checks them). */
const REQUIRED_ENV: Record<CniCommandName, readonly string[]> = {
  ADD: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  CHECK: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  DEL: ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
  GC: ["CNI_PATH"],
  STATUS: ["CNI_PATH"],
  VERSION: [],
};

/** Reads and validates the CNI_* environment for one invocation. Throws CniFailure (code 4). */
export function parseEnv(env: Record<string, string | undefined>): CniEnv {
  const raw = env.CNI_COMMAND;
  if (raw === undefined || raw === "") {
    throw new CniFailure(CniCode.InvalidEnv, "CNI_COMMAND is not set: nshub-cni is a CNI plugin and is run by the container runtime", "set CNI_COMMAND to one of " + COMMANDS.join(", "));
  }
  if (!(COMMANDS as readonly string[]).includes(raw)) {
    throw new CniFailure(CniCode.InvalidEnv, `unknown CNI_COMMAND ${JSON.stringify(raw)}`, `expected one of ${COMMANDS.join(", ")}`);
  }
  const command = raw as CniCommandName;
  const missing = REQUIRED_ENV[command].filter((k) => (env[k] ?? "") === "");
  if (missing.length > 0) {
    throw new CniFailure(CniCode.InvalidEnv, `required environment variable${missing.length > 1 ? "s" : ""} ${missing.join(", ")} missing for ${command}`);
  }
  const containerId = env.CNI_CONTAINERID ?? "";
  if (containerId !== "" && !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(containerId)) {
    throw new CniFailure(CniCode.InvalidEnv, `CNI_CONTAINERID ${JSON.stringify(containerId)} has invalid characters`, "allowed: letters, digits, '_', '.', '-', starting with a letter or digit");
  }
  const ifname = env.CNI_IFNAME ?? "";
  if (ifname !== "") {
    const why = ifnameProblem(ifname);
    if (why) throw new CniFailure(CniCode.InvalidEnv, `CNI_IFNAME ${JSON.stringify(ifname)} is not a valid interface name: ${why}`);
  }
  const netns = env.CNI_NETNS ?? "";
  if (netns !== "" && !netns.startsWith("/")) {
    throw new CniFailure(CniCode.InvalidEnv, `CNI_NETNS ${JSON.stringify(netns)} must be an absolute path`);
  }
  return { command, containerId, netns, ifname, args: env.CNI_ARGS ?? "", path: env.CNI_PATH ?? "" };
}

function ifnameProblem(name: string): string | undefined {
  if (name.length > 15) return "longer than 15 characters";
  if (name === "." || name === "..") return "reserved name";
  if (/[/:\s]/.test(name)) return "contains '/', ':' or whitespace";
  return undefined;
}

/** CNI_ARGS: "K=V;K=V". Throws CniFailure (code 4) for a pair without '='. */
export function parseCniArgs(args: string): Map<string, string> {
  const out = new Map<string, string>();
  if (args.trim() === "") return out;
  for (const pair of args.split(";")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new CniFailure(CniCode.InvalidEnv, `CNI_ARGS: invalid pair ${JSON.stringify(pair)}`, "CNI_ARGS must be KEY=VALUE pairs separated by ';'");
    out.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return out;
}

/** The pod the agent is told about: the Kubernetes pod CNI_ARGS names, or a container named after its id (containerPod). */
export interface K8sPod {
  namespace: string;
  name: string;
  /** "" when the runtime passed no K8S_POD_UID (the agent refuses to enroll such a pod). */
  uid: string;
  serviceAccount: string;
}

export function k8sPodFromArgs(args: Map<string, string>): K8sPod | undefined {
  const namespace = args.get("K8S_POD_NAMESPACE") ?? "";
  const name = args.get("K8S_POD_NAME") ?? "";
  if (namespace === "" || name === "") return undefined;
  return { namespace, name, uid: args.get("K8S_POD_UID") ?? "", serviceAccount: args.get("K8S_POD_SERVICE_ACCOUNT") ?? "" };
}

/** The namespace of a container CNI_ARGS names no Kubernetes pod for, unless the netconf's `containerNamespace` says otherwise. */
export const DEFAULT_CONTAINER_NAMESPACE = "default";

/** Longest CNI_CONTAINERID used as the pod UID as it is (the agent's UID rule); a longer one is hashed. */
export const CONTAINER_UID_MAX = 128;

/**
 * The pod a container is enrolled as when CNI_ARGS names no Kubernetes pod (no
 * K8S_POD_NAMESPACE/K8S_POD_NAME: `ctr run --cni`, cnitool, a runtime outside Kubernetes). The
 * same CNI_CONTAINERID gives the same pod on ADD, CHECK and DEL, so a DEL finds it without
 * CNI_NETNS (ctr sends none):
 *
 *   namespace        `namespace` (netconf `containerNamespace`, default "default")
 *   name             CNI_CONTAINERID as a DNS-1123 subdomain: lower case, any character other
 *                    than a-z 0-9 '.' '-' becomes '-', each dot-separated part trimmed of '-',
 *                    at most 253 characters (ctr: "<containerd namespace>-<container id>")
 *   uid              CNI_CONTAINERID itself (at most 128 characters), else the SHA-256 of it in hex
 *   service account  "" (the agent's default, "default")
 */
export function containerPod(containerId: string, namespace: string = DEFAULT_CONTAINER_NAMESPACE): K8sPod {
  if (containerId === "") throw new CniFailure(CniCode.InvalidEnv, "CNI_CONTAINERID is empty: a container needs it to be named");
  const uid = containerId.length <= CONTAINER_UID_MAX ? containerId : new Bun.CryptoHasher("sha256").update(containerId).digest("hex");
  return { namespace, name: dns1123Name(containerId), uid, serviceAccount: "" };
}

/** A container id (letters, digits, '_', '.', '-', starting with a letter or digit) as a DNS-1123 subdomain. */
export function dns1123Name(id: string): string {
  const labels = (s: string) =>
    s
      .split(".")
      .map((l) => l.replace(/^-+|-+$/g, ""))
      .filter((l) => l !== "")
      .join(".");
  let name = labels(id.toLowerCase().replace(/[^a-z0-9.-]/g, "-"));
  if (name.length > 253) name = labels(name.slice(0, 253));
  return name === "" ? "container" : name;
}

// ---------------------------------------------------------------------------------------------
// network configuration

/** nshub-cni's own keys in its netconf entry (all optional; defaults come from the nshub config). */
export interface PluginKeys {
  agentSocket?: string;
  /** The namespace of containers CNI_ARGS names no Kubernetes pod for (containerPod). */
  containerNamespace?: string;
  timeoutMs?: number;
  logFile?: string;
  logLevel?: "trace" | "debug" | "info" | "warn" | "error";
}

export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  /** The raw JSON text of prevResult exactly as it was on stdin; undefined when absent. */
  prevResultRaw: string | undefined;
  prevResult: unknown;
  plugin: PluginKeys;
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export function isSupportedVersion(v: unknown): v is string {
  return typeof v === "string" && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/**
 * Parses the netconf text from stdin. Throws CniFailure: 6 when it is not a JSON object,
 * 7 for a missing or mistyped field, 1 for a cniVersion this plugin does not support.
 */
export function parseNetConf(text: string): NetConf {
  if (text.trim() === "") throw new CniFailure(CniCode.DecodingFailure, "no network configuration on stdin", "the runtime passes the plugin's netconf JSON on stdin");
  let conf: unknown;
  try {
    conf = JSON.parse(text);
  } catch (e) {
    throw new CniFailure(CniCode.DecodingFailure, "network configuration on stdin is not valid JSON", (e as Error).message);
  }
  if (typeof conf !== "object" || conf === null || Array.isArray(conf)) {
    throw new CniFailure(CniCode.DecodingFailure, `network configuration must be a JSON object, got ${jsonKind(conf)}`);
  }
  const c = conf as Record<string, unknown>;
  if (c.cniVersion === undefined) throw new CniFailure(CniCode.InvalidNetconf, "network configuration has no cniVersion");
  if (typeof c.cniVersion !== "string") throw new CniFailure(CniCode.InvalidNetconf, `network configuration: cniVersion must be a string, got ${jsonKind(c.cniVersion)}`);
  if (!isSupportedVersion(c.cniVersion)) {
    throw new CniFailure(CniCode.IncompatibleVersion, `incompatible CNI version ${JSON.stringify(c.cniVersion)}`, `nshub-cni supports ${SUPPORTED_VERSIONS.join(", ")}`);
  }
  for (const key of ["name", "type"] as const) {
    if (c[key] === undefined) throw new CniFailure(CniCode.InvalidNetconf, `network configuration has no ${key}`);
    if (typeof c[key] !== "string") throw new CniFailure(CniCode.InvalidNetconf, `network configuration: ${key} must be a string, got ${jsonKind(c[key])}`);
  }
  const plugin: PluginKeys = {};
  if (c.agentSocket !== undefined) {
    if (typeof c.agentSocket !== "string" || !c.agentSocket.startsWith("/")) {
      throw new CniFailure(CniCode.InvalidNetconf, `network configuration: agentSocket must be an absolute path, got ${JSON.stringify(c.agentSocket)}`);
    }
    plugin.agentSocket = c.agentSocket;
  }
  if (c.containerNamespace !== undefined) {
    if (typeof c.containerNamespace !== "string" || c.containerNamespace.length > 63 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(c.containerNamespace)) {
      throw new CniFailure(
        CniCode.InvalidNetconf,
        `network configuration: containerNamespace must be a Kubernetes namespace name (a DNS-1123 label of at most 63 characters), got ${JSON.stringify(c.containerNamespace)}`,
      );
    }
    plugin.containerNamespace = c.containerNamespace;
  }
  if (c.timeoutMs !== undefined) {
    if (typeof c.timeoutMs !== "number" || !Number.isInteger(c.timeoutMs) || c.timeoutMs <= 0 || c.timeoutMs > 120_000) {
      throw new CniFailure(CniCode.InvalidNetconf, `network configuration: timeoutMs must be an integer from 1 to 120000, got ${JSON.stringify(c.timeoutMs)}`);
    }
    plugin.timeoutMs = c.timeoutMs;
  }
  if (c.logFile !== undefined) {
    if (typeof c.logFile !== "string" || c.logFile === "") throw new CniFailure(CniCode.InvalidNetconf, `network configuration: logFile must be a path (or "stderr"), got ${JSON.stringify(c.logFile)}`);
    plugin.logFile = c.logFile;
  }
  if (c.logLevel !== undefined) {
    const levels = ["trace", "debug", "info", "warn", "error"];
    if (typeof c.logLevel !== "string" || !levels.includes(c.logLevel)) {
      throw new CniFailure(CniCode.InvalidNetconf, `network configuration: logLevel must be one of ${levels.join(", ")}, got ${JSON.stringify(c.logLevel)}`);
    }
    plugin.logLevel = c.logLevel as PluginKeys["logLevel"];
  }
  const prevResultRaw = "prevResult" in c ? rawTopLevelValue(text, "prevResult") : undefined;
  return { cniVersion: c.cniVersion, name: c.name as string, type: c.type as string, prevResultRaw, prevResult: c.prevResult, plugin };
}

function jsonKind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

// ---------------------------------------------------------------------------------------------
// prevResult

/** The pod's addresses found in prevResult. */
export interface PrevResultInfo {
  /** IP addresses without prefix length, in prevResult order. */
  ips: string[];
}

/**
 * Validates prevResult (required for ADD and CHECK) and extracts the pod's IPs. Accepts the
 * 1.x shape (ips[].address) and the 0.3.x/0.4.0 shape (ips[].version "4"/"6" as well). IPs
 * whose `interface` index names a host-side interface (no `sandbox`) are not the pod's and are
 * skipped. Throws CniFailure (7) naming the offending field.
 */
export function parsePrevResult(prev: unknown, command: string, cniVersion: string): PrevResultInfo {
  if (prev === undefined) {
    throw new CniFailure(
      CniCode.InvalidNetconf,
      `${command} needs prevResult: nshub-cni is a chained plugin and must come after the plugin that sets up the pod's interface`,
      "list nshub-cni last in the plugins of the node's conflist (e.g. after bridge, ptp or calico)",
    );
  }
  if (typeof prev !== "object" || prev === null || Array.isArray(prev)) {
    throw new CniFailure(CniCode.InvalidNetconf, `prevResult must be a JSON object (a CNI result), got ${jsonKind(prev)}`);
  }
  const r = prev as Record<string, unknown>;
  if (r.cniVersion !== undefined && typeof r.cniVersion !== "string") {
    throw new CniFailure(CniCode.InvalidNetconf, `prevResult.cniVersion must be a string, got ${jsonKind(r.cniVersion)}`);
  }
  if (r.ip4 !== undefined || r.ip6 !== undefined) {
    throw new CniFailure(CniCode.IncompatibleVersion, "prevResult has the CNI 0.2.0 shape (ip4/ip6); nshub-cni needs a 0.3.0 or later result", `netconf cniVersion is ${cniVersion}`);
  }
  let interfaces: Array<Record<string, unknown>> = [];
  if (r.interfaces !== undefined) {
    if (!Array.isArray(r.interfaces)) throw new CniFailure(CniCode.InvalidNetconf, `prevResult.interfaces must be an array, got ${jsonKind(r.interfaces)}`);
    interfaces = r.interfaces.map((iface, i) => {
      if (typeof iface !== "object" || iface === null || Array.isArray(iface)) {
        throw new CniFailure(CniCode.InvalidNetconf, `prevResult.interfaces[${i}] must be an object, got ${jsonKind(iface)}`);
      }
      return iface as Record<string, unknown>;
    });
  }
  const ips: string[] = [];
  if (r.ips === undefined) return { ips };
  if (!Array.isArray(r.ips)) throw new CniFailure(CniCode.InvalidNetconf, `prevResult.ips must be an array, got ${jsonKind(r.ips)}`);
  const legacy = compareVersions(cniVersion, "1.0.0") < 0;
  r.ips.forEach((entry, i) => {
    const where = `prevResult.ips[${i}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) throw new CniFailure(CniCode.InvalidNetconf, `${where} must be an object, got ${jsonKind(entry)}`);
    const e = entry as Record<string, unknown>;
    if (typeof e.address !== "string") throw new CniFailure(CniCode.InvalidNetconf, `${where}.address must be a string like "10.0.0.5/24", got ${e.address === undefined ? "nothing" : jsonKind(e.address)}`);
    const addr = parseCidr(e.address);
    if (!addr) throw new CniFailure(CniCode.InvalidNetconf, `${where}.address ${JSON.stringify(e.address)} is not an IP address with a prefix length (like "10.0.0.5/24")`);
    if (e.version !== undefined) {
      if (e.version !== "4" && e.version !== "6") throw new CniFailure(CniCode.InvalidNetconf, `${where}.version must be "4" or "6", got ${JSON.stringify(e.version)}`);
      if (e.version !== String(addr.family)) throw new CniFailure(CniCode.InvalidNetconf, `${where}.version is "${e.version}" but the address ${e.address} is IPv${addr.family}`);
    } else if (legacy && r.cniVersion !== undefined && compareVersions(String(r.cniVersion), "1.0.0") < 0) {
      throw new CniFailure(CniCode.InvalidNetconf, `${where}.version is required in a CNI ${String(r.cniVersion)} result`);
    }
    if (e.interface !== undefined) {
      if (typeof e.interface !== "number" || !Number.isInteger(e.interface) || e.interface < 0) {
        throw new CniFailure(CniCode.InvalidNetconf, `${where}.interface must be a non-negative integer index into prevResult.interfaces, got ${JSON.stringify(e.interface)}`);
      }
      const iface = interfaces[e.interface];
      if (interfaces.length > 0 && iface === undefined) {
        throw new CniFailure(CniCode.InvalidNetconf, `${where}.interface ${e.interface} is out of range (prevResult.interfaces has ${interfaces.length})`);
      }
      // An address on a host-side interface (bridge, host veth) is not the pod's.
      if (iface !== undefined && (typeof iface.sandbox !== "string" || iface.sandbox === "")) return;
    }
    if (!ips.includes(addr.ip)) ips.push(addr.ip);
  });
  return { ips };
}

/** "10.1.2.3/24" → {ip, prefix, family}; undefined when it is not that. */
export function parseCidr(s: string): { ip: string; prefix: number; family: 4 | 6 } | undefined {
  const slash = s.lastIndexOf("/");
  if (slash <= 0) return undefined;
  const ip = s.slice(0, slash);
  const pfx = s.slice(slash + 1);
  if (!/^\d{1,3}$/.test(pfx)) return undefined;
  const prefix = Number(pfx);
  if (isIPv4(ip)) return prefix <= 32 ? { ip, prefix, family: 4 } : undefined;
  if (isIPv6(ip)) return prefix <= 128 ? { ip: ip.toLowerCase(), prefix, family: 6 } : undefined;
  return undefined;
}

export function isIPv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255);
}

export function isIPv6(s: string): boolean {
  if (!/^[0-9A-Fa-f:.]+$/.test(s) || !s.includes(":")) return false;
  const dbl = s.split("::");
  if (dbl.length > 2) return false;
  const groups = (part: string) => (part === "" ? [] : part.split(":"));
  const all = [...groups(dbl[0]!), ...(dbl.length === 2 ? groups(dbl[1]!) : [])];
  let count = 0;
  for (let i = 0; i < all.length; i++) {
    const g = all[i]!;
    if (i === all.length - 1 && g.includes(".")) {
      if (!isIPv4(g)) return false;
      count += 2;
    } else if (/^[0-9A-Fa-f]{1,4}$/.test(g)) count += 1;
    else return false;
  }
  return dbl.length === 2 ? count < 8 : count === 8;
}

// ---------------------------------------------------------------------------------------------
// raw JSON spans: prevResult is printed back byte for byte

/**
 * The exact source text of the top-level member `key` of the JSON object `text` (the last one,
 * as JSON.parse keeps the last duplicate). `text` must already be known to be valid JSON.
 */
export function rawTopLevelValue(text: string, key: string): string | undefined {
  let i = skipWs(text, 0);
  if (text[i] !== "{") return undefined;
  i = skipWs(text, i + 1);
  let found: string | undefined;
  if (text[i] === "}") return undefined;
  for (;;) {
    const keyEnd = skipString(text, i);
    const name = JSON.parse(text.slice(i, keyEnd)) as string;
    i = skipWs(text, keyEnd);
    i = skipWs(text, i + 1); // ':'
    const valueEnd = skipValue(text, i);
    if (name === key) found = text.slice(i, valueEnd);
    i = skipWs(text, valueEnd);
    if (text[i] === ",") {
      i = skipWs(text, i + 1);
      continue;
    }
    return found;
  }
}

function skipWs(s: string, i: number): number {
  while (i < s.length && (s[i] === " " || s[i] === "\t" || s[i] === "\n" || s[i] === "\r")) i++;
  return i;
}

function skipString(s: string, i: number): number {
  // s[i] === '"'
  i++;
  while (i < s.length) {
    const ch = s[i];
    if (ch === "\\") i += 2;
    else if (ch === '"') return i + 1;
    else i++;
  }
  return i;
}

function skipValue(s: string, i: number): number {
  const ch = s[i];
  if (ch === '"') return skipString(s, i);
  if (ch === "{" || ch === "[") {
    let depth = 0;
    while (i < s.length) {
      const c = s[i];
      if (c === '"') {
        i = skipString(s, i);
        continue;
      }
      if (c === "{" || c === "[") depth++;
      else if (c === "}" || c === "]") {
        depth--;
        if (depth === 0) return i + 1;
      }
      i++;
    }
    return i;
  }
  // number, true, false, null
  while (i < s.length && !/[\s,}\]]/.test(s[i]!)) i++;
  return i;
}
