// `nshub ca …`: nshub's own certificate authority. The command lines only: flags, help, what is
// printed. What they do lives in src/identity (ca-dir.ts, node-credentials.ts, ca-server.ts).
import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../log/logger.ts";
import { CA_FILES, initCaDir, loadCaDir } from "../identity/ca-dir.ts";
import { DEFAULT_LIFETIME_SECONDS, formatSeconds, MAX_LIFETIME_SECONDS, parseDuration } from "../identity/ca-signer.ts";
import { startCaServer } from "../identity/ca-server.ts";
import { DEFAULT_NODE_AGENTS, DEFAULT_TOKEN_AUDIENCES, loadKubeCluster, parseServiceAccountRef } from "../identity/ca-kube.ts";
import { issueNodeCredentials, revokeNode } from "../identity/node-credentials.ts";
import { writeFileAtomic } from "../util/atomic-file.ts";
import { DEFAULT_TRUST_DOMAIN } from "../identity/spiffe.ts";

const DEFAULT_ADDRESS = "0.0.0.0:15012";
const DEFAULT_METRICS = "127.0.0.1:15014";
const DEFAULT_NODE_LIFETIME = "365d";

const HELP = `usage: nshub ca <command> [options]

nshub's own certificate authority: it serves Istio's certificate API
(istio.v1.auth.IstioCertificateService/CreateCertificate, gRPC over TLS, as istiod on :15012),
so nshub proxies, and ztunnel, can take workload certificates from it.

commands:
  init          create a CA directory: a new root (ECDSA P-256, 10 years), or an existing one
  issue-node    give a node credentials for the CA: a bearer token and/or a client certificate
  revoke-node   remove every credential of a node
  serve         serve the certificate API

Security: without Kubernetes, a node credential may ask for ANY identity (spiffe://<trust
domain>/ns/*/sa/*) of the CA's trust domain: nshub cannot tell which pods run on which node.
Treat each node's token or key like the CA key itself, and give one only to nodes you trust.
With 'serve --kubernetes', every caller gets only identities of pods scheduled on its node.

  nshub ca <command> --help   that command's options`;

const INIT_HELP = `usage: nshub ca init --dir <dir> [--trust-domain <td>] [--root-cert <pem> --root-key <pem> [--cert-chain <pem>]]

Creates the CA directory <dir> (mode 0700) with Istio's cacerts file names:
  ${CA_FILES.cert} ${CA_FILES.key} (0600) ${CA_FILES.chain} ${CA_FILES.root}
plus ${CA_FILES.nodeCaCert}/${CA_FILES.nodeCaKey} (a separate issuer for node client certificates, so
they never pass as workload identities), ${CA_FILES.nodes} (0600) and ${CA_FILES.config}. Refuses to overwrite a CA.

  --dir <dir>            the CA directory (required)
  --trust-domain <td>    the trust domain it signs for (default ${DEFAULT_TRUST_DOMAIN})
  --root-cert <file>     sign with this CA certificate (a root, or an intermediate) instead of a new root
  --root-key <file>      its private key (ECDSA P-256/P-384 or RSA)
  --cert-chain <file>    for an intermediate: its issuers up to the root (Istio's cert-chain.pem works)
  -h, --help             this text`;

const ISSUE_HELP = `usage: nshub ca issue-node --dir <dir> --node <name> [--token-file <file> | --no-token] [--cert-dir <dir>]

Issues credentials for one node and records them in <dir>/${CA_FILES.nodes} (a token only as its
SHA-256 hash). A running 'nshub ca serve' takes them at once.

  --dir <dir>            the CA directory (required)
  --node <name>          the node's name (required), e.g. its Kubernetes node name
  --token-file <file>    write the bearer token to this file (mode 0600) instead of printing it;
                         the proxy reads it (proxy.ca.tokenFile), ztunnel too (AUTH_TOKEN)
  --no-token             no token (with --cert-dir: a client certificate only)
  --cert-dir <dir>       also issue a client certificate for mTLS to the CA: <dir>/node-cert.pem,
                         node-key.pem (0600) and root-cert.pem (to verify the CA)
  --lifetime <duration>  how long the credentials are valid (default ${DEFAULT_NODE_LIFETIME}; e.g. 30d, 12h)
  --replace              revoke the node's earlier credentials
  -h, --help             this text

The token is shown once: it is not stored anywhere but where you put it.`;

const REVOKE_HELP = `usage: nshub ca revoke-node --dir <dir> --node <name>

Removes every token and client certificate of the node from <dir>/${CA_FILES.nodes}; a running
'nshub ca serve' refuses them from its next call on. Certificates already issued to the node's
pods stay valid until they expire (at most the maximum lifetime).

  --dir <dir>            the CA directory (required)
  --node <name>          the node (required)
  -h, --help             this text`;

const SERVE_HELP = `usage: nshub ca serve --dir <dir> [--address <host:port>] [--metrics-address <host:port>] [options]

Serves istio.v1.auth.IstioCertificateService/CreateCertificate over gRPC + TLS (HTTP/2).
The identity is the request metadata ImpersonatedIdentity, as ztunnel sends it. A CSR is signed
only when its one URI SAN is that identity, in this CA's trust domain, for at most
--max-lifetime. Every issuance is logged (node, identity, serial, not-after). Refusals use gRPC
codes: UNAUTHENTICATED, INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE.

Callers, in this order: a node client certificate; "authorization: Bearer nshub-ca.…", a node
token (both from 'nshub ca issue-node'); with --kubernetes, any other bearer token is a
service-account token the API server reviews (TokenReview): it must belong to a node agent
(--node-agent-sa) and be bound to a pod, which gives its node.

  --dir <dir>                  the CA directory (required)
  --address <host:port>        where to serve (default ${DEFAULT_ADDRESS}; port 0: any free port)
  --metrics-address <h:p>      Prometheus /metrics and /ready (default ${DEFAULT_METRICS}; "off": none)
  --server-name <name>         a DNS name or IP for the serving certificate, repeatable
                               (default: localhost, this host's name, 127.0.0.1, ::1, the --address IP)
  --default-lifetime <d>       when a request asks for 0 (default ${formatSeconds(DEFAULT_LIFETIME_SECONDS)})
  --max-lifetime <d>           refuse requests above this (default ${formatSeconds(MAX_LIFETIME_SECONDS)}, istiod's)
  --kubernetes                 sign only identities of pods scheduled on the caller's node (a watch
                               of all pods), for node credentials too; nothing before the first list
  --kubeconfig <file>          the API server (default: in a pod its service account, else
                               $KUBECONFIG or ~/.kube/config)
  --node-agent-sa <ns>/<sa>    a service account whose tokens act for a node, repeatable
                               (default ${DEFAULT_NODE_AGENTS.join(", ")})
  --token-audience <aud>       the audience the tokens must be issued for, repeatable (default ${DEFAULT_TOKEN_AUDIENCES.join(", ")})
  -h, --help                   this text

Security: without --kubernetes, any node with credentials may ask for any identity of the trust domain.`;

type Sub = (args: string[]) => Promise<number>;

const subcommands: Record<string, Sub> = { init, "issue-node": issueNode, "revoke-node": revoke, serve };

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(HELP);
    return name === undefined ? 2 : 0;
  }
  const sub = subcommands[name];
  if (!sub) {
    console.error(`nshub ca: unknown command "${name}"\n\n${HELP}`);
    return 2;
  }
  try {
    return await sub(rest);
  } catch (e) {
    if (String((e as { code?: string }).code ?? "").startsWith("ERR_PARSE_ARGS")) {
      console.error(`nshub ca ${name}: ${(e as Error).message}\nsee: nshub ca ${name} --help`);
      return 2;
    }
    console.error(`nshub ca ${name}: ${(e as Error).message}`);
    return 1;
  }
}

function usageError(message: string): Error {
  return Object.assign(new TypeError(message), { code: "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" });
}

function required(v: string | undefined, flag: string): string {
  if (v === undefined || v === "") throw usageError(`${flag} is required`);
  return v;
}

function duration(v: string | undefined, fallback: number, flag: string): number {
  if (v === undefined) return fallback;
  try {
    const s = parseDuration(v, flag);
    if (s <= 0) throw new Error(`${flag}: must be more than 0`);
    return s;
  } catch (e) {
    throw usageError((e as Error).message);
  }
}

async function init(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: { dir: { type: "string" }, "trust-domain": { type: "string" }, "root-cert": { type: "string" }, "root-key": { type: "string" }, "cert-chain": { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) return (console.log(INIT_HELP), 0);
  const dir = required(values.dir, "--dir");
  if ((values["root-cert"] === undefined) !== (values["root-key"] === undefined)) throw usageError("--root-cert and --root-key go together");
  if (values["cert-chain"] !== undefined && values["root-cert"] === undefined) throw usageError("--cert-chain needs --root-cert and --root-key");
  const read = (f: string | undefined) => (f === undefined ? undefined : readFileSync(f, "utf8"));
  const r = await initCaDir({
    dir,
    trustDomain: values["trust-domain"] ?? DEFAULT_TRUST_DOMAIN,
    rootCertPem: read(values["root-cert"]),
    rootKeyPem: read(values["root-key"]),
    certChainPem: read(values["cert-chain"]),
  });
  console.log(`CA created in ${dir} (trust domain ${values["trust-domain"] ?? DEFAULT_TRUST_DOMAIN})`);
  console.log(`  root:    ${r.rootSubject}, valid until ${r.rootNotAfter.toISOString()}${r.generated ? " (new ECDSA P-256 key)" : ""}`);
  if (r.signingSubject !== r.rootSubject) console.log(`  signing: ${r.signingSubject} (intermediate)`);
  console.log(`  nodes trust ${join(dir, CA_FILES.root)}; next: nshub ca issue-node --dir ${dir} --node <name>`);
  return 0;
}

async function issueNode(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      dir: { type: "string" },
      node: { type: "string" },
      "token-file": { type: "string" },
      "no-token": { type: "boolean" },
      "cert-dir": { type: "string" },
      lifetime: { type: "string" },
      replace: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return (console.log(ISSUE_HELP), 0);
  const dir = required(values.dir, "--dir");
  const node = required(values.node, "--node");
  if (values["no-token"] && values["token-file"] !== undefined) throw usageError("--no-token and --token-file exclude each other");
  if (values["no-token"] && values["cert-dir"] === undefined) throw usageError("--no-token without --cert-dir issues nothing");
  const lifetimeSeconds = duration(values.lifetime, parseDuration(DEFAULT_NODE_LIFETIME, "--lifetime"), "--lifetime");
  const ca = await loadCaDir(dir);
  const out = await issueNodeCredentials(ca, { node, token: !values["no-token"], certDir: values["cert-dir"], lifetimeSeconds, replace: values.replace });
  if (out.revoked > 0) console.error(`revoked ${out.revoked} earlier credential(s) of node ${node}`);
  if (out.token !== undefined) {
    if (values["token-file"] !== undefined) {
      writeFileAtomic(values["token-file"], out.token + "\n", 0o600);
      console.log(`token for node ${node} written to ${values["token-file"]} (mode 0600), valid until ${out.notAfter.toISOString()}`);
    } else {
      console.error(`token for node ${node}, valid until ${out.notAfter.toISOString()} (shown once; the CA keeps only its hash):`);
      console.log(out.token);
    }
  }
  if (out.certFiles) {
    console.log(`client certificate for node ${node} (serial ${out.certSerial}): ${out.certFiles.cert}, key ${out.certFiles.key} (0600), CA root ${out.certFiles.root}`);
  }
  return 0;
}

async function revoke(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { dir: { type: "string" }, node: { type: "string" }, help: { type: "boolean", short: "h" } } });
  if (values.help) return (console.log(REVOKE_HELP), 0);
  const n = revokeNode(required(values.dir, "--dir"), required(values.node, "--node"));
  console.log(`revoked ${n} credential(s) of node ${values.node}`);
  return 0;
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      dir: { type: "string" },
      address: { type: "string" },
      "metrics-address": { type: "string" },
      "server-name": { type: "string", multiple: true },
      "default-lifetime": { type: "string" },
      "max-lifetime": { type: "string" },
      kubernetes: { type: "boolean" },
      kubeconfig: { type: "string" },
      "node-agent-sa": { type: "string", multiple: true },
      "token-audience": { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return (console.log(SERVE_HELP), 0);
  if (!values.kubernetes) {
    for (const f of ["kubeconfig", "node-agent-sa", "token-audience"] as const) if (values[f] !== undefined) throw usageError(`--${f} needs --kubernetes`);
  }
  const nodeAgents = (values["node-agent-sa"] ?? []).map((r) => {
    try {
      return parseServiceAccountRef(r);
    } catch (e) {
      throw usageError((e as Error).message);
    }
  });
  const audiences = values["token-audience"] ?? [];
  if (audiences.some((a) => a.trim() === "")) throw usageError("--token-audience: empty");
  const metricsFlag = values["metrics-address"] ?? DEFAULT_METRICS;
  const maxLifetimeSeconds = duration(values["max-lifetime"], MAX_LIFETIME_SECONDS, "--max-lifetime");
  const server = await startCaServer({
    dir: required(values.dir, "--dir"),
    address: values.address ?? DEFAULT_ADDRESS,
    metricsAddress: metricsFlag === "off" ? undefined : metricsFlag,
    serverNames: values["server-name"],
    // a --max-lifetime below the default lowers the default with it
    defaultLifetimeSeconds: duration(values["default-lifetime"], Math.min(DEFAULT_LIFETIME_SECONDS, maxLifetimeSeconds), "--default-lifetime"),
    maxLifetimeSeconds,
    kubernetes: values.kubernetes ? { cluster: loadKubeCluster(values.kubeconfig), nodeAgents, audiences } : undefined,
    log: createLogger("ca"),
  });
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await server.close();
  return 0;
}
