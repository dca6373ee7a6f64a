// Who may ask nshub's CA for certificates: nodes, each with bearer tokens and/or client
// certificates that `nshub ca issue-node` made. Tokens are stored as SHA-256 hashes only (a
// token is 256 random bits, so a fast hash loses nothing), client certificates by serial; both
// with an expiry. `nshub ca serve` re-reads nodes.json when it changes, so issuing or revoking
// takes effect without a restart.
//
// What a node may ask for: any workload identity of the CA's trust domain. Without Kubernetes
// nshub cannot know which pods run on which node, so a node credential is as strong as the
// whole trust domain: keep it root-only on the node.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../util/atomic-file.ts";
import { CA_FILES, type LoadedCa } from "./ca-dir.ts";
import { certFacts, generateP256, privateKeyPem, signLeaf } from "./x509.ts";

interface Credential {
  /** sha256 hex of the token, or the client certificate's serial (lowercase hex). */
  id: string;
  created: string;
  notAfter: string;
}

interface NodeRecord {
  tokens: Credential[];
  certs: Credential[];
}

interface NodesFile {
  version: 1;
  nodes: Record<string, NodeRecord>;
}

/** Kubernetes node names are DNS subdomains (RFC 1123): the same rule here. */
const NODE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function checkNodeName(name: string): string {
  if (name.length === 0 || name.length > 253 || !NODE_NAME.test(name)) {
    throw new Error(`node name ${JSON.stringify(name)}: expected a DNS name like a Kubernetes node's (lowercase letters, digits, '-', '.'; at most 253)`);
  }
  return name;
}

export const TOKEN_PREFIX = "nshub-ca.";

export function hashToken(token: string): string {
  return createHash("sha256").update(token.trim()).digest("hex");
}

function readNodes(dir: string): NodesFile {
  const f = JSON.parse(readFileSync(join(dir, CA_FILES.nodes), "utf8")) as NodesFile;
  if (f.version !== 1 || typeof f.nodes !== "object" || f.nodes === null) throw new Error(`${join(dir, CA_FILES.nodes)}: not an nshub nodes file (version 1)`);
  return f;
}

function writeNodes(dir: string, f: NodesFile): void {
  writeFileAtomic(join(dir, CA_FILES.nodes), JSON.stringify(f, null, 2) + "\n", 0o600);
}

export interface IssueNodeOptions {
  node: string;
  /** Issue a bearer token. */
  token: boolean;
  /** Issue a client certificate into this directory (node-cert.pem, node-key.pem 0600, root-cert.pem). */
  certDir?: string;
  lifetimeSeconds: number;
  /** Revoke the node's earlier credentials. */
  replace?: boolean;
  now?: Date;
}

export interface IssuedNode {
  node: string;
  token?: string;
  certFiles?: { cert: string; key: string; root: string };
  certSerial?: string;
  notAfter: Date;
  revoked: number;
}

/** Issues credentials for a node and records them in nodes.json. The token is returned once, never stored. */
export async function issueNodeCredentials(ca: LoadedCa, o: IssueNodeOptions): Promise<IssuedNode> {
  const node = checkNodeName(o.node);
  if (!o.token && o.certDir === undefined) throw new Error("nothing to issue: ask for a token, a client certificate (--cert-dir), or both");
  const now = o.now ?? new Date();
  const notAfter = new Date(now.getTime() + o.lifetimeSeconds * 1000);
  const file = readNodes(ca.dir);
  const before = file.nodes[node];
  const revoked = o.replace && before ? before.tokens.length + before.certs.length : 0;
  const rec: NodeRecord = o.replace || !before ? { tokens: [], certs: [] } : before;
  const out: IssuedNode = { node, notAfter, revoked };
  if (o.token) {
    out.token = TOKEN_PREFIX + randomBytes(32).toString("base64url");
    rec.tokens.push({ id: hashToken(out.token), created: now.toISOString(), notAfter: notAfter.toISOString() });
  }
  if (o.certDir !== undefined) {
    mkdirSync(o.certDir, { recursive: true, mode: 0o700 });
    const keys = await generateP256();
    const certPem = await signLeaf({
      issuer: ca.nodeIssuer,
      publicKey: keys.publicKey,
      kind: "node-client",
      subject: `O=nshub-node, CN=${node}`,
      notBefore: new Date(now.getTime() - 120_000),
      notAfter,
    });
    const files = { cert: join(o.certDir, "node-cert.pem"), key: join(o.certDir, "node-key.pem"), root: join(o.certDir, "root-cert.pem") };
    writeFileAtomic(files.key, await privateKeyPem(keys.privateKey), 0o600);
    writeFileAtomic(files.cert, certPem, 0o644);
    writeFileAtomic(files.root, ca.rootBundle, 0o644);
    out.certFiles = files;
    out.certSerial = certFacts(certPem).serial;
    rec.certs.push({ id: out.certSerial, created: now.toISOString(), notAfter: notAfter.toISOString() });
  }
  file.nodes[node] = rec;
  writeNodes(ca.dir, file);
  return out;
}

/** Drops every credential of `node`; returns how many there were. */
export function revokeNode(dir: string, node: string): number {
  const file = readNodes(dir);
  const rec = file.nodes[node];
  if (!rec) throw new Error(`no node ${JSON.stringify(node)} in ${join(dir, CA_FILES.nodes)}`);
  delete file.nodes[node];
  writeNodes(dir, file);
  return rec.tokens.length + rec.certs.length;
}

export type AuthResult = { ok: true; node: string; via: "token" | "cert" } | { ok: false; why: string };

/** Checks callers against nodes.json, re-read whenever the file changes. */
export class NodeAuthenticator {
  private stamp = "";
  private byToken = new Map<string, { node: string; notAfter: number }>();
  private byCert = new Map<string, { node: string; notAfter: number }>();

  constructor(
    private readonly dir: string,
    private readonly now: () => number = Date.now,
  ) {
    this.reload();
  }

  /** A bearer token (without "Bearer "). */
  token(token: string): AuthResult {
    this.reload();
    const hit = this.byToken.get(hashToken(token));
    if (!hit) return { ok: false, why: "unknown or revoked token" };
    if (hit.notAfter <= this.now()) return { ok: false, why: `the token of node ${hit.node} expired at ${new Date(hit.notAfter).toISOString()}` };
    return { ok: true, node: hit.node, via: "token" };
  }

  /** A client certificate the TLS layer already verified against node-ca-cert.pem. */
  cert(serial: string, commonName: string): AuthResult {
    this.reload();
    const hit = this.byCert.get(serial.toLowerCase());
    if (!hit || hit.node !== commonName) return { ok: false, why: `client certificate ${serial.toLowerCase()} (CN ${commonName}) is not, or no longer, a credential of this CA` };
    if (hit.notAfter <= this.now()) return { ok: false, why: `the client certificate of node ${hit.node} expired at ${new Date(hit.notAfter).toISOString()}` };
    return { ok: true, node: hit.node, via: "cert" };
  }

  private reload(): void {
    const path = join(this.dir, CA_FILES.nodes);
    const st = statSync(path);
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (stamp === this.stamp) return;
    const file = readNodes(this.dir);
    const tokens = new Map<string, { node: string; notAfter: number }>();
    const certs = new Map<string, { node: string; notAfter: number }>();
    for (const [node, rec] of Object.entries(file.nodes)) {
      for (const t of rec.tokens) tokens.set(t.id, { node, notAfter: Date.parse(t.notAfter) });
      for (const c of rec.certs) certs.set(c.id, { node, notAfter: Date.parse(c.notAfter) });
    }
    this.byToken = tokens;
    this.byCert = certs;
    this.stamp = stamp;
  }
}
