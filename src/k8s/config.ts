// Where the API server is and how to authenticate to it: inside a cluster from the pod's service
// account (token + ca.crt under /var/run/secrets/kubernetes.io/serviceaccount and
// KUBERNETES_SERVICE_HOST/PORT), outside from a kubeconfig file (server, CA, bearer token or
// client certificate), the two ways client-go supports without plugins. Exec and auth-provider
// credential plugins are refused by name rather than ignored: a silent fallback to no credentials
// would look like an RBAC problem.
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { parse } from "yaml";

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface ClusterConfig {
  /** https://10.96.0.1:443 */
  server: string;
  /** PEM of the CA that signed the server's certificate; absent: the system's CAs. */
  ca?: string;
  insecureSkipTlsVerify?: boolean;
  /** The name to verify the server's certificate against, when not the URL's host. */
  tlsServerName?: string;
  /** A bearer token given in the config. */
  token?: string;
  /** A bearer token file, read again as it rotates (in-cluster tokens expire within hours). */
  tokenFile?: string;
  /** PEM client certificate and key. */
  clientCert?: string;
  clientKey?: string;
  /** For logs: "in-cluster" or "kubeconfig /path (context name)". */
  origin: string;
  /** The pod's own namespace when in-cluster. */
  namespace?: string;
}

export class KubeConfigError extends Error {
  override name = "KubeConfigError";
}

function read(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new KubeConfigError(`cannot read the ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The pod's service account, as client-go's rest.InClusterConfig reads it. */
export function loadInCluster(env: Record<string, string | undefined> = process.env, dir = SERVICE_ACCOUNT_DIR): ClusterConfig {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
  const tokenFile = join(dir, "token");
  read(tokenFile, "service account token"); // fail at start, not at the first request
  let namespace: string | undefined;
  try {
    namespace = readFileSync(join(dir, "namespace"), "utf8").trim();
  } catch {
    // optional: only logs and defaults use it
  }
  return { server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`, ca: read(join(dir, "ca.crt"), "service account CA"), tokenFile, origin: "in-cluster", ...(namespace ? { namespace } : {}) };
}

type Named<T> = { name: string } & T;
interface KubeconfigFile {
  clusters?: Named<{ cluster?: Record<string, unknown> }>[];
  users?: Named<{ user?: Record<string, unknown> }>[];
  contexts?: Named<{ context?: { cluster?: string; user?: string; namespace?: string } }>[];
  "current-context"?: string;
}

/** A kubeconfig file's current (or the named) context. Relative file paths are from the file's folder. */
export function loadKubeconfig(path: string, context?: string): ClusterConfig {
  let doc: KubeconfigFile;
  try {
    doc = (parse(read(path, "kubeconfig")) ?? {}) as KubeconfigFile;
  } catch (e) {
    if (e instanceof KubeConfigError) throw e;
    throw new KubeConfigError(`kubeconfig ${path} is not YAML: ${(e as Error).message}`);
  }
  const ctxName = context ?? doc["current-context"];
  if (!ctxName) throw new KubeConfigError(`kubeconfig ${path} names no current-context`);
  const ctx = doc.contexts?.find((c) => c.name === ctxName)?.context;
  if (!ctx) throw new KubeConfigError(`kubeconfig ${path} has no context "${ctxName}"`);
  const cluster = doc.clusters?.find((c) => c.name === ctx.cluster)?.cluster;
  if (!cluster) throw new KubeConfigError(`kubeconfig ${path}: context "${ctxName}" names cluster "${ctx.cluster}", which is not there`);
  const user = (ctx.user ? doc.users?.find((u) => u.name === ctx.user)?.user : undefined) ?? {};
  const here = (p: unknown) => (isAbsolute(String(p)) ? String(p) : join(dirname(path), String(p)));
  const pem = (data: unknown, file: unknown, what: string) => (data ? Buffer.from(String(data), "base64").toString("utf8") : file ? read(here(file), what) : undefined);

  for (const unsupported of ["exec", "auth-provider", "username"]) {
    if (unsupported in user) throw new KubeConfigError(`kubeconfig ${path}: user "${ctx.user}" uses "${unsupported}", which nshub does not support (use a token, a token file or a client certificate)`);
  }
  const server = String(cluster.server ?? "");
  if (!/^https?:\/\//.test(server)) throw new KubeConfigError(`kubeconfig ${path}: cluster "${ctx.cluster}" has no http(s) server (got ${JSON.stringify(cluster.server)})`);
  const cfg: ClusterConfig = { server: server.replace(/\/+$/, ""), origin: `kubeconfig ${path} (context ${ctxName})` };
  const ca = pem(cluster["certificate-authority-data"], cluster["certificate-authority"], "cluster CA");
  if (ca) cfg.ca = ca;
  if (cluster["insecure-skip-tls-verify"] === true) cfg.insecureSkipTlsVerify = true;
  if (cluster["tls-server-name"]) cfg.tlsServerName = String(cluster["tls-server-name"]);
  if (user.token) cfg.token = String(user.token);
  if (user.tokenFile) cfg.tokenFile = here(user.tokenFile);
  const cert = pem(user["client-certificate-data"], user["client-certificate"], "client certificate");
  const key = pem(user["client-key-data"], user["client-key"], "client key");
  if (cert || key) {
    if (!cert || !key) throw new KubeConfigError(`kubeconfig ${path}: user "${ctx.user}" has a client certificate without its key, or a key without its certificate`);
    cfg.clientCert = cert;
    cfg.clientKey = key;
  }
  if (ctx.namespace) cfg.namespace = ctx.namespace;
  return cfg;
}

export interface LoadOptions {
  /** An explicit kubeconfig file (a flag): always wins. */
  kubeconfig?: string;
  context?: string;
  env?: Record<string, string | undefined>;
  serviceAccountDir?: string;
}

/**
 * client-go's order: an explicit kubeconfig; else the pod's service account when in a cluster;
 * else $KUBECONFIG (its first file) or ~/.kube/config.
 */
export function loadClusterConfig(opts: LoadOptions = {}): ClusterConfig {
  const env = opts.env ?? process.env;
  if (opts.kubeconfig) return loadKubeconfig(opts.kubeconfig, opts.context);
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT) return loadInCluster(env, opts.serviceAccountDir);
  const fromEnv = env.KUBECONFIG?.split(":").find((p) => p !== "");
  return loadKubeconfig(fromEnv ?? join(env.HOME ?? homedir(), ".kube", "config"), opts.context);
}
