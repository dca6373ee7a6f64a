// The shape of one entry of a local-config file's `workloads:`, with ztunnel's exact serde
// names and types (`Workload` in https://github.com/istio/ztunnel/blob/master/src/state/workload.rs,
// `#[serde(rename_all = "camelCase", deny_unknown_fields)]`, flattened into `LocalWorkload` in
// https://github.com/istio/ztunnel/blob/master/src/xds.rs), and messages that say in plain
// words what is wrong. Types follow serde's reading of the flattened fields: a string field
// takes only a string (`name: 123` is refused, as ztunnel refuses it), numbers are whole.
import { z } from "zod";
import { ipProblem } from "./ip.ts";
import { NETWORK_MODES, PROTOCOLS, type WorkloadDetails, type WorkloadInput } from "./workload.ts";
import { closestName } from "../util/did-you-mean.ts";

const u16 = z.int().min(0).max(65535);
const u32 = z.int().min(0).max(4294967295);
/** ztunnel's gatewayaddress::Destination, untagged: "<network>/<IP>" or "<namespace>/<hostname>". */
const gateway = z.strictObject({
  destination: z.string().refine((s) => s.includes("/"), 'expected "<network>/<IP>" or "<namespace>/<hostname>"'),
  hboneMtlsPort: u16,
});
const port = /^(0|[1-9][0-9]{0,4})$/;

/** `services` of a LocalWorkload: "<namespace>/<hostname>" → {service port: target port}. */
const servicePorts = z.record(z.string(), z.record(z.string(), u16)).superRefine((m, ctx) => {
  for (const [host, ports] of Object.entries(m)) {
    if (!host.includes("/")) ctx.addIssue({ code: "custom", path: [host], message: 'a service is named "<namespace>/<hostname>"' });
    for (const p of Object.keys(ports)) if (!port.test(p) || Number(p) > 65535) ctx.addIssue({ code: "custom", path: [host, p], message: `${JSON.stringify(p)} is not a port number (0–65535)` });
  }
});

export const localWorkloadSchema = z.strictObject({
  workloadIps: z.array(z.string()).superRefine((ips, ctx) => {
    ips.forEach((ip, i) => {
      const p = ipProblem(ip);
      if (p) ctx.addIssue({ code: "custom", path: [i], message: p });
    });
  }),
  waypoint: gateway.nullable().optional(),
  networkGateway: gateway.nullable().optional(),
  protocol: z.enum(PROTOCOLS as ["TCP", "HBONE"]).optional(),
  networkMode: z.enum(NETWORK_MODES as ["Standard", "HostNetwork"]).optional(),
  // ztunnel defaults uid to ""; nshub needs it: it is the key that sources are merged by.
  uid: z.string().refine((u) => u !== "", "empty: nshub needs a uid (the key sources are merged by)"),
  name: z.string().optional(),
  namespace: z.string(),
  trustDomain: z.string().optional(),
  serviceAccount: z.string().optional(),
  network: z.string().optional(),
  workloadName: z.string().optional(),
  workloadType: z.string().optional(),
  canonicalName: z.string().optional(),
  canonicalRevision: z.string().optional(),
  hostname: z.string().optional(),
  node: z.string().optional(),
  nativeTunnel: z.boolean().optional(),
  applicationTunnel: z.strictObject({ protocol: z.enum(["NONE", "PROXY"]), port: u16.nullable().optional() }).nullable().optional(),
  authorizationPolicies: z.array(z.string()).optional(),
  status: z.enum(["Healthy", "Unhealthy"]).optional(),
  clusterId: z.string().optional(),
  // ztunnel's Locality has neither defaults nor deny_unknown_fields: all three, extras ignored.
  locality: z.object({ region: z.string(), zone: z.string(), subzone: z.string() }).optional(),
  // LocalWorkload's own field, which ztunnel requires (no serde default): `services: {}` for none.
  services: servicePorts,
  capacity: u32.optional(),
});

export type LocalWorkloadEntry = z.infer<typeof localWorkloadSchema>;

/** ztunnel's serde names of a local-config workload entry, in its declaration order. */
export const ENTRY_FIELDS: readonly string[] = Object.keys(localWorkloadSchema.shape);

/** LocalConfig: all three lists default to empty; services and policies are not read yet. */
export const topLevelSchema = z.strictObject({
  workloads: z.array(z.unknown()).nullable().optional(),
  policies: z.array(z.unknown()).nullable().optional(),
  services: z.array(z.unknown()).nullable().optional(),
});

const KNOWN: Record<string, readonly string[]> = {
  "": ENTRY_FIELDS,
  top: Object.keys(topLevelSchema.shape),
  waypoint: Object.keys(gateway.shape),
  networkGateway: Object.keys(gateway.shape),
  applicationTunnel: ["protocol", "port"],
};

export function toWorkloadInput(e: LocalWorkloadEntry): WorkloadInput {
  const { workloadIps, uid, name, namespace, serviceAccount, trustDomain, node, protocol, networkMode, ...rest } = e;
  const details: WorkloadDetails = {};
  for (const [k, v] of Object.entries(rest)) if (v !== undefined && v !== null) (details as Record<string, unknown>)[k] = v;
  return {
    uid,
    namespace,
    workloadIps,
    ...(name !== undefined ? { name } : {}),
    ...(serviceAccount !== undefined ? { serviceAccount } : {}),
    ...(trustDomain !== undefined ? { trustDomain } : {}),
    ...(node !== undefined ? { node } : {}),
    ...(protocol !== undefined ? { protocol } : {}),
    ...(networkMode !== undefined ? { networkMode } : {}),
    details,
  };
}

/** A field path as written: workloadIps[0], waypoint.hboneMtlsPort, services["ns/host"]["80"]. */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path
    .map((s, i) => (typeof s === "number" ? `[${s}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(String(s)) ? `${i ? "." : ""}${String(s)}` : `[${JSON.stringify(String(s))}]`))
    .join("");
}

/** One zod issue as {field, message}; `root` is what was parsed: an entry, or the whole file. */
export function describeIssue(issue: z.core.$ZodIssue, root: unknown, isTop = false): { field?: string; message: string } {
  const path = issue.path as PropertyKey[];
  const value = valueAt(root, path);
  if (issue.code === "unrecognized_keys") {
    const known = path.length === 0 ? (isTop ? KNOWN.top! : KNOWN[""]!) : (KNOWN[String(path[path.length - 1])] ?? []);
    const keys = issue.keys.map((k) => {
      const near = closestName(k, known, { ignoreCase: true });
      return `${JSON.stringify(k)}${near ? ` (did you mean ${JSON.stringify(near)}?)` : ""}`;
    });
    const field = issue.keys.length === 1 ? fieldPath([...path, issue.keys[0]!]) : path.length ? fieldPath(path) : undefined;
    return { ...(field ? { field } : {}), message: `unknown field${keys.length > 1 ? "s" : ""} ${keys.join(", ")}: ztunnel's local config has no such field, and refuses unknown fields too` };
  }
  const field = path.length ? fieldPath(path) : undefined;
  const at = field ? { field } : {};
  switch (issue.code) {
    case "invalid_type":
      if (value === undefined && field === "uid") return { ...at, message: "missing: nshub needs a uid, the key sources are merged by (ztunnel would take an empty one)" };
      if (value === undefined) return { ...at, message: `missing (ztunnel requires it${field === "services" ? '; write "services: {}" for a workload that backs no service' : ""})` };
      if (issue.expected === "int" && typeof value === "number") return { ...at, message: `expected a whole number, got ${value}` };
      return { ...at, message: `expected ${article(issue.expected)}, got ${describe(value)}` };
    case "invalid_value":
      return { ...at, message: `${JSON.stringify(value)} is not one of ${issue.values.map(String).join(", ")}` };
    case "too_big":
    case "too_small":
      return { ...at, message: `${String(value)} is out of range (0–${issue.code === "too_big" ? issue.maximum : "…"})` };
    default:
      return { ...at, message: issue.message };
  }
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root;
  for (const s of path) v = v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[s] : undefined;
  return v;
}

function article(expected: string): string {
  const words: Record<string, string> = { string: "a string", array: "a list", object: "a mapping", boolean: "true or false", number: "a number", int: "a whole number" };
  return words[expected] ?? expected;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  if (typeof v === "string") return `a string (${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)})`;
  if (typeof v === "number") return `a number (${v})`;
  if (typeof v === "boolean") return `${v}`;
  return typeof v;
}
