// Istio's security.istio.io objects (v1 and v1beta1 share one schema), as zod schemas: field
// names and types of https://istio.io/latest/docs/reference/config/security/authorization-policy/
// and .../peer_authentication/. Unknown fields are refused (a misspelt `notPrincipal` must not
// quietly widen a policy). On top of the shape, the checks Istio's admission webhook makes
// (https://github.com/istio/istio/blob/master/pkg/config/validation/validation.go
// ValidateAuthorizationPolicy / ValidatePeerAuthentication), since files never pass through it.
import { z } from "zod";
import { parseCidr, parseIpText } from "./cidr.ts";

export const API_GROUP = "security.istio.io";
export const API_VERSIONS = [`${API_GROUP}/v1`, `${API_GROUP}/v1beta1`] as const;

const strings = z.array(z.string({ error: "expected a string (Istio's API writes ports as strings too, e.g. \"8080\")" }));
const labels = z.record(z.string(), z.string({ error: "expected a string label value (quote numbers and booleans)" }));

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export const Metadata = z.looseObject({
  name: z
    .string({ error: "required: the object's name" })
    .max(253)
    .regex(DNS_SUBDOMAIN, "not a Kubernetes object name (lowercase letters, digits, '-' and '.')"),
  namespace: z
    .string({ error: "required: a file has no current namespace to default to" })
    .max(63)
    .regex(DNS_LABEL, "not a Kubernetes namespace name (lowercase letters, digits and '-')"),
  annotations: z.record(z.string(), z.string()).optional(),
  labels: labels.optional(),
  creationTimestamp: z.string().optional(),
});

const WorkloadSelector = z.strictObject({ matchLabels: labels.optional() });
const TargetRef = z.looseObject({ kind: z.string(), name: z.string() });

const Source = z.strictObject({
  principals: strings.optional(),
  notPrincipals: strings.optional(),
  requestPrincipals: strings.optional(),
  notRequestPrincipals: strings.optional(),
  namespaces: strings.optional(),
  notNamespaces: strings.optional(),
  ipBlocks: strings.optional(),
  notIpBlocks: strings.optional(),
  remoteIpBlocks: strings.optional(),
  notRemoteIpBlocks: strings.optional(),
  serviceAccounts: strings.optional(),
  notServiceAccounts: strings.optional(),
  trustDomains: strings.optional(),
  notTrustDomains: strings.optional(),
});

const Operation = z.strictObject({
  hosts: strings.optional(),
  notHosts: strings.optional(),
  ports: strings.optional(),
  notPorts: strings.optional(),
  methods: strings.optional(),
  notMethods: strings.optional(),
  paths: strings.optional(),
  notPaths: strings.optional(),
});

const Condition = z.strictObject({ key: z.string(), values: strings.optional(), notValues: strings.optional() });

const Rule = z.strictObject({
  from: z.array(z.strictObject({ source: Source.optional() })).optional(),
  to: z.array(z.strictObject({ operation: Operation.optional() })).optional(),
  when: z.array(Condition).optional(),
});

export const AuthorizationPolicySpec = z
  .strictObject({
    selector: WorkloadSelector.optional(),
    targetRef: TargetRef.optional(),
    targetRefs: z.array(TargetRef).optional(),
    action: z.enum(["ALLOW", "DENY", "AUDIT", "CUSTOM"]).optional(),
    provider: z.strictObject({ name: z.string() }).optional(),
    rules: z.array(Rule).optional(),
  })
  .superRefine(validateAuthorizationPolicy);

const MutualTls = z.strictObject({ mode: z.enum(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]).optional() });

export const PeerAuthenticationSpec = z
  .strictObject({
    selector: WorkloadSelector.optional(),
    mtls: MutualTls.optional(),
    portLevelMtls: z.record(z.string(), MutualTls).optional(),
  })
  .superRefine(validatePeerAuthentication);

const envelope = <K extends string, S extends z.ZodType>(kind: K, spec: S) =>
  z.strictObject({
    apiVersion: z.enum(API_VERSIONS),
    kind: z.literal(kind),
    metadata: Metadata,
    // An empty spec is valid (an ALLOW policy with no rules: allow nothing).
    spec: spec.optional(),
    status: z.unknown().optional(),
  });

export const AuthorizationPolicySchema = envelope("AuthorizationPolicy", AuthorizationPolicySpec);
export const PeerAuthenticationSchema = envelope("PeerAuthentication", PeerAuthenticationSpec);

export type AuthorizationPolicyObject = z.infer<typeof AuthorizationPolicySchema>;
export type PeerAuthenticationObject = z.infer<typeof PeerAuthenticationSchema>;
export type AuthorizationPolicyRule = z.infer<typeof Rule>;
type ApSpec = z.infer<typeof AuthorizationPolicySpec>;

type Ctx = z.RefinementCtx;
const fail = (ctx: Ctx, path: (string | number)[], message: string) => ctx.addIssue({ code: "custom", path, message });

function validateSelector(ctx: Ctx, selector: { matchLabels?: Record<string, string> } | undefined): void {
  for (const [k, v] of Object.entries(selector?.matchLabels ?? {})) {
    if (k === "") fail(ctx, ["selector", "matchLabels"], "empty key is not supported in selector");
    if (k.includes("*") || v.includes("*")) fail(ctx, ["selector", "matchLabels", k], `wildcard is not supported in selector: "${k}=${v}"`);
  }
}

function noEmptyValues(ctx: Ctx, path: (string | number)[], values: string[] | undefined): void {
  values?.forEach((v, i) => v === "" && fail(ctx, [...path, i], "empty value not allowed"));
}

function checkIps(ctx: Ctx, path: (string | number)[], values: string[] | undefined): void {
  values?.forEach((v, i) => {
    const r = v.includes("/") ? parseCidr(v) : parseIpText(v);
    if (typeof r === "string") fail(ctx, [...path, i], r);
  });
}

function checkPorts(ctx: Ctx, path: (string | number)[], values: string[] | undefined): void {
  values?.forEach((v, i) => {
    if (!/^\d+$/.test(v) || Number(v) > 65535) fail(ctx, [...path, i], `bad port ${JSON.stringify(v)}: a number from 0 to 65535`);
  });
}

function checkServiceAccounts(ctx: Ctx, path: (string | number)[], values: string[] | undefined): void {
  if (!values) return;
  if (values.length > 16) fail(ctx, path, "may not have more than 16 values");
  values.forEach((v, i) => {
    const parts = v.split("/");
    if (v.includes("*")) fail(ctx, [...path, i], "wildcard not allowed");
    else if (parts.length > 2 || parts.some((p) => p === "")) fail(ctx, [...path, i], `expected 'serviceAccount' or 'namespace/serviceAccount', found ${JSON.stringify(v)}`);
    else if (v.length > 320) fail(ctx, [...path, i], "value cannot exceed 320 characters");
  });
}

/** `when` keys Istio knows; which of them are L4 is the conversion's business (compile.ts). */
const KNOWN_WHEN = new Set(["source.ip", "remote.ip", "source.namespace", "source.serviceAccount", "source.principal", "source.trustDomain", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "destination.ip", "destination.port", "connection.sni"]);

function validateWhen(ctx: Ctx, path: (string | number)[], key: string, values: string[] | undefined, field: string): void {
  noEmptyValues(ctx, [...path, field], values);
  if (key === "source.ip" || key === "remote.ip" || key === "destination.ip") checkIps(ctx, [...path, field], values);
  if (key === "destination.port") checkPorts(ctx, [...path, field], values);
  if (key === "source.serviceAccount") checkServiceAccounts(ctx, [...path, field], values);
}

function validateAuthorizationPolicy(spec: ApSpec, ctx: Ctx): void {
  const targets = [spec.selector, spec.targetRef, spec.targetRefs?.length ? spec.targetRefs : undefined].filter((x) => x !== undefined).length;
  if (targets > 1) fail(ctx, [], "only one of targetRefs or workloadSelector can be set");
  validateSelector(ctx, spec.selector);
  const action = spec.action ?? "ALLOW";
  if (action === "CUSTOM") {
    if (spec.rules === undefined) fail(ctx, ["rules"], "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request");
    else if (!spec.provider?.name) fail(ctx, ["provider", "name"], "`provider.name` must not be empty");
  }
  if (spec.provider && action !== "CUSTOM") fail(ctx, ["provider"], `\`provider\` must not be with non CUSTOM action, found ${action}`);
  if (action === "DENY" && !spec.rules?.length) fail(ctx, ["rules"], "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request");
  spec.rules?.forEach((rule, i) => {
    const at = ["rules", i];
    if (rule.from && rule.from.length === 0) fail(ctx, [...at, "from"], "`from` must not be empty");
    rule.from?.forEach((f, j) => {
      const src = f.source;
      const p = [...at, "from", j, "source"];
      if (!src) return fail(ctx, p, "`from.source` must not be nil");
      const filled = Object.values(src).filter((v) => v.length > 0).length;
      if (filled === 0) fail(ctx, p, "`from.source` must not be empty");
      if ((src.principals?.length || src.notPrincipals?.length || src.namespaces?.length || src.notNamespaces?.length) && (src.serviceAccounts?.length || src.notServiceAccounts?.length)) {
        fail(ctx, p, "cannot set serviceAccounts with namespaces or principals");
      }
      for (const k of ["ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"] as const) checkIps(ctx, [...p, k], src[k]);
      for (const k of ["principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"] as const) noEmptyValues(ctx, [...p, k], src[k]);
      checkServiceAccounts(ctx, [...p, "serviceAccounts"], src.serviceAccounts);
      checkServiceAccounts(ctx, [...p, "notServiceAccounts"], src.notServiceAccounts);
    });
    if (rule.to && rule.to.length === 0) fail(ctx, [...at, "to"], "`to` must not be empty");
    rule.to?.forEach((t, j) => {
      const op = t.operation;
      const p = [...at, "to", j, "operation"];
      if (!op) return fail(ctx, p, "`to.operation` must not be nil");
      if (Object.values(op).every((v) => v.length === 0)) fail(ctx, p, "`to.operation` must not be empty");
      checkPorts(ctx, [...p, "ports"], op.ports);
      checkPorts(ctx, [...p, "notPorts"], op.notPorts);
      for (const k of ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const) noEmptyValues(ctx, [...p, k], op[k]);
    });
    rule.when?.forEach((c, j) => {
      const p = [...at, "when", j];
      if (c.key === "") return fail(ctx, [...p, "key"], "`key` must not be empty");
      if (!c.values?.length && !c.notValues?.length) return fail(ctx, p, `at least one of \`values\` or \`notValues\` must be set for key ${c.key}`);
      if (c.key === "destination.namespace") return fail(ctx, [...p, "key"], `attribute ${c.key} is replaced by the metadata.namespace`);
      if (c.key.startsWith("destination.labels")) return fail(ctx, [...p, "key"], `attribute ${c.key} is replaced by the workload selector`);
      if (c.key === "destination.name" || c.key === "destination.user") return fail(ctx, [...p, "key"], `deprecated attribute ${c.key}: only supported in v1alpha1`);
      const mapKey = /^(request\.headers|request\.auth\.claims)\[.+\]$/.test(c.key) || /^experimental\.envoy\.filters\..+\[.+\]$/.test(c.key);
      if (!KNOWN_WHEN.has(c.key) && !mapKey) return fail(ctx, [...p, "key"], `unknown attribute: ${c.key}`);
      validateWhen(ctx, p, c.key, c.values, "values");
      validateWhen(ctx, p, c.key, c.notValues, "notValues");
    });
  });
}

function validatePeerAuthentication(spec: { selector?: { matchLabels?: Record<string, string> }; portLevelMtls?: Record<string, unknown> }, ctx: Ctx): void {
  const emptySelector = Object.keys(spec.selector?.matchLabels ?? {}).length === 0;
  const ports = spec.portLevelMtls;
  if (ports !== undefined && emptySelector) fail(ctx, ["portLevelMtls"], "mesh/namespace peer authentication cannot have port level mTLS");
  if (ports !== undefined && Object.keys(ports).length === 0) fail(ctx, ["portLevelMtls"], "port level mTLS, if defined, must have at least one element");
  for (const p of Object.keys(ports ?? {})) {
    if (!/^\d+$/.test(p) || Number(p) < 1 || Number(p) > 65535) fail(ctx, ["portLevelMtls", p], "port must be in range 1..65535");
  }
  validateSelector(ctx, spec.selector);
}
