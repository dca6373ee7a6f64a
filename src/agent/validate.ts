// What the event API's requests must look like before the agent acts on them, and how an input
// is shown in an error or a log: Kubernetes' own name rules (a namespace is a DNS-1123 label, a
// pod name or service account a DNS-1123 subdomain: k8s.io/apimachinery/pkg/util/validation,
// https://kubernetes.io/docs/concepts/overview/working-with-objects/names/), CNI's container id
// rule (https://github.com/containernetworking/cni/blob/main/SPEC.md, CNI_CONTAINERID), and no
// input echoed at full length: a 10,000-character name is shown as its first SHOWN_CHARS.
import { isIP } from "node:net";
import { AgentError } from "./errors.ts";
import type { EnrollInput, PodAddInput, PodDeleteInput, UnenrollInput } from "./pod-entry.ts";

/** Most characters of an input an error or a log shows. */
export const SHOWN_CHARS = 100;

/** `s` whole when short, else its start and how long it was (for paths and other unquoted text). */
export function clip(s: string, max = SHOWN_CHARS): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters, cut)`;
}

/** `s` as a JSON string, cut after `max` characters with a marker outside the quotes. */
export function quote(s: string, max = SHOWN_CHARS): string {
  return s.length <= max ? JSON.stringify(s) : `${JSON.stringify(s.slice(0, max))}… (${s.length} characters, cut)`;
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const UID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** Runtimes use 64 hex digits; anything far longer is not a container id. */
const CONTAINER_ID_MAX = 256;
/** PATH_MAX less the terminating NUL. */
const PATH_MAX = 4095;

const invalid = (msg: string) => new AgentError("invalid", msg);

// ---- the requests -----------------------------------------------------------------------------

export function checkPodAdd(req: PodAddInput): void {
  if (!req.namespace || !req.name) throw invalid("pod namespace and name are required (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME)");
  checkPodRef(req.namespace, req.name);
  const pod = `pod ${req.namespace}/${req.name}:`;
  if (!req.netnsPath) throw invalid(`${pod} the netns path is required (CNI_NETNS)`);
  checkNetnsPath(req.netnsPath, `${pod} the netns path`);
  for (const ip of req.ips) if (isIP(ip) === 0) throw invalid(`${pod} ${quote(ip)} is not an IP address`);
  if (req.uid) checkUid(req.uid, `${pod} `);
  checkServiceAccount(req.serviceAccount, `${pod} `);
  checkContainerId(req.containerId, `${pod} `);
}

export function checkPodDelete(req: PodDeleteInput): void {
  if (req.uid) checkUid(req.uid);
  else if (!req.namespace || !req.name) throw invalid("PodDelete needs the pod uid, or its namespace and name");
  checkPodRef(req.namespace, req.name);
  checkContainerId(req.containerId);
}

export function checkEnroll(req: EnrollInput): void {
  if (!req.namespace || !req.name) throw invalid("enroll needs the pod's namespace and name");
  checkPodRef(req.namespace, req.name);
  if (req.netnsPath) checkNetnsPath(req.netnsPath, "the netns path");
  if (req.uid) checkUid(req.uid);
  checkServiceAccount(req.serviceAccount);
}

export function checkUnenroll(req: UnenrollInput): void {
  if (!req.namespace || !req.name) throw invalid("unenroll needs the pod's namespace and name");
  checkPodRef(req.namespace, req.name);
  if (req.uid) checkUid(req.uid);
}

// ---- the fields -------------------------------------------------------------------------------

/** A namespace (a DNS-1123 label, at most 63 characters) and a pod name (a DNS-1123 subdomain, at most 253), each when given. */
function checkPodRef(namespace: string, name: string): void {
  if (namespace && (namespace.length > 63 || !DNS1123_LABEL.test(namespace))) {
    throw invalid(`namespace ${quote(namespace)} is not a Kubernetes namespace name: a DNS-1123 label of at most 63 characters (a-z, 0-9, '-'; a letter or digit at both ends)`);
  }
  if (name && (name.length > 253 || !DNS1123_SUBDOMAIN.test(name))) {
    throw invalid(`pod name ${quote(name)} is not a Kubernetes pod name: a DNS-1123 subdomain of at most 253 characters (a-z, 0-9, '-', '.'; a letter or digit at both ends of each dot-separated part)`);
  }
}

function checkUid(uid: string, prefix = ""): void {
  if (!UID.test(uid)) throw invalid(`${prefix}uid ${quote(uid)} is not a valid pod UID`);
}

function checkServiceAccount(sa: string, prefix = ""): void {
  if (sa && (sa.length > 253 || !DNS1123_SUBDOMAIN.test(sa))) throw invalid(`${prefix}service account ${quote(sa)} is not a Kubernetes service account name (a DNS-1123 subdomain)`);
}

function checkContainerId(id: string, prefix = ""): void {
  if (id && (id.length > CONTAINER_ID_MAX || !CONTAINER_ID.test(id))) {
    throw invalid(`${prefix}container id ${quote(id)} is not a CNI container id (letters, digits, '_', '.', '-', starting with a letter or digit; at most ${CONTAINER_ID_MAX})`);
  }
}

/** An absolute path the kernel can take; `what` names it in the error. */
function checkNetnsPath(path: string, what: string): void {
  if (!path.startsWith("/")) throw invalid(`${what} ${quote(path)} must be absolute`);
  if (path.includes("\0")) throw invalid(`${what} ${quote(path)} contains a NUL byte`);
  if (Buffer.byteLength(path) > PATH_MAX) throw invalid(`${what} ${quote(path)} is longer than PATH_MAX (${PATH_MAX} bytes)`);
}
