// A pod in the agent, the shapes it takes and the conversions between them:
//   PodEntry  one pod in the cache (agent.ts), holding its netns fd while enrolled or pending
//   PodRecord the same without the fd, as the state file keeps it (state.ts)
//   PodView   as the event API's replies and the admin /pods show it (no fd)
// and the requests the core takes. The field lists have one source each: the state file's in
// state.ts (its schema), the API's in proto/nshub/agent/v1/agent.proto (the generated types in
// src/gen/); the types here are derived from them.
import type { Message } from "@bufbuild/protobuf";
import type { EnrollRequest, Pod, PodAddRequest, PodDeleteRequest, UnenrollRequest } from "../gen/nshub/agent/v1/agent_pb.ts";
import { DEFAULT_SERVICE_ACCOUNT } from "../identity/spiffe.ts";
import type { Netns, NetnsIdentity } from "../sys/index.ts";
import type { WorkloadIdentity } from "../zds/types.ts";
import type { PodRecord, PodStateName } from "./state.ts";

/** A message's fields without protobuf-es's bookkeeping ($typeName, $unknown), so plain objects fit too. */
type Fields<M extends Message> = Omit<M, keyof Message>;

/** One pod in the cache: its record, with the netns identity as `identity` and the held fd as `netns`. */
export type PodEntry = Omit<PodRecord, "netns" | "override"> & {
  identity: NetnsIdentity | undefined;
  /** Held while the pod is enrolled or pending (the proxy gets a dup of it). */
  netns: Netns | undefined;
  /** Set by nshub enroll / unenroll; undefined: the policy decides. */
  override: PodRecord["override"];
};

/** A pod as replies and /pods show it: the API's Pod, with the state by name and the netns identity as numbers. */
export type PodView = Omit<Fields<Pod>, "state" | "netnsDev" | "netnsInode"> & { state: PodStateName; netnsDev: number; netnsInode: number };

export interface Reply {
  state: PodStateName;
  reason: string;
  pod: PodView;
}

// The requests as the core takes them: the API's messages, less what the agent does not use.
export type PodAddInput = Omit<Fields<PodAddRequest>, "interfaceName">;
export type PodDeleteInput = Omit<Fields<PodDeleteRequest>, "netnsPath">;
export type EnrollInput = Fields<EnrollRequest>;
export type UnenrollInput = Fields<UnenrollRequest>;

// Entries are built only by newEntry and entryFromRecord, so an entry has exactly the record's
// fields plus identity and netns: recordOf can take the rest as the record.

/**
 * A pod the agent has not handled yet. Picks its fields: `req` may be a whole API message. No
 * service account (a CNI ADD without K8S_POD_SERVICE_ACCOUNT, an enroll without
 * --service-account) is Kubernetes' own default, "default": the pod's identity is then
 * spiffe://<td>/ns/<namespace>/sa/default.
 */
export function newEntry(req: PodAddInput, override: PodEntry["override"]): PodEntry {
  return {
    uid: req.uid,
    namespace: req.namespace,
    name: req.name,
    serviceAccount: req.serviceAccount || DEFAULT_SERVICE_ACCOUNT,
    ips: [...req.ips],
    netnsPath: req.netnsPath,
    containerId: req.containerId,
    identity: undefined,
    netns: undefined,
    state: "not-enrolled",
    reason: "",
    override,
    updatedAt: new Date().toISOString(),
  };
}

/** A pod of the state file; no netns held yet. (Files of older agents may have no service account.) */
export function entryFromRecord(r: PodRecord): PodEntry {
  const { netns, override, ...rest } = r;
  return { ...rest, serviceAccount: r.serviceAccount || DEFAULT_SERVICE_ACCOUNT, ips: [...r.ips], identity: netns, netns: undefined, override };
}

/** What the state file keeps of an entry (`netns` and `override` only when set). */
export function recordOf(e: PodEntry): PodRecord {
  const { identity, netns: _held, override, ...rest } = e;
  const r: PodRecord = rest;
  if (identity) r.netns = { dev: identity.dev, ino: identity.ino };
  if (override) r.override = override;
  return r;
}

/** The view, its fields in the order of the API's Pod (the order /pods shows them in). */
export function viewOf(e: PodEntry): PodView {
  return {
    uid: e.uid,
    namespace: e.namespace,
    name: e.name,
    serviceAccount: e.serviceAccount,
    netnsPath: e.netnsPath,
    ips: [...e.ips],
    containerId: e.containerId,
    state: e.state,
    reason: e.reason,
    netnsDev: e.identity?.dev ?? 0,
    netnsInode: e.identity?.ino ?? 0,
    netnsHeld: e.netns !== undefined && !e.netns.closed,
    override: e.override ?? "",
    updatedAt: e.updatedAt,
  };
}

/** The answer to a request about `e`: its state, and `reason` or else the state's reason. */
export function reply(e: PodEntry, reason?: string): Reply {
  return { state: e.state, reason: reason ?? e.reason, pod: viewOf(e) };
}

/** Sets the state and its reason; `updatedAt` moves only when the state changes. */
export function setState(e: PodEntry, state: PodStateName, reason: string): void {
  if (e.state !== state) e.updatedAt = new Date().toISOString();
  e.state = state;
  e.reason = reason;
}

/** Who the pod is, as the proxy is told (ZDS). */
export function identityOf(e: PodEntry): WorkloadIdentity {
  return { name: e.name, namespace: e.namespace, serviceAccount: e.serviceAccount };
}
