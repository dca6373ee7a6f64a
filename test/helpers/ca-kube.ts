// What the `nshub ca serve --kubernetes` tests share: the stand-in API server with pods on two
// nodes and service-account tokens in its TokenReview table, a CA directory, the CA server
// in-process on loopback (real gRPC + TLS), and nshub's own CA client to call it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "bun:test";
import { initCaDir, loadCaDir } from "../../src/identity/ca-dir.ts";
import { NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA } from "../../src/identity/ca-kube.ts";
import { createCaClient } from "../../src/identity/ca-client.ts";
import { startCaServer, type CaServer } from "../../src/identity/ca-server.ts";
import { issueNodeCredentials } from "../../src/identity/node-credentials.ts";
import { CertificateError, type CertificateSource } from "../../src/identity/source.ts";
import { loadKubeconfig } from "../../src/k8s/index.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";
import { startStandInApiServer, type StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import { namespace, recordingLogger } from "./kube-test.ts";

export const id = (ns: string, sa: string) => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;
export const AGENT_NS = "nshub-system";
export const AGENT_SA = "nshub-proxy";

export function podOf(ns: string, name: string, node: string, sa: string, phase = "Running"): KubeObj {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: ns },
    spec: { nodeName: node, serviceAccountName: sa, containers: [{ name: "app", image: "app:1" }] },
    status: { phase },
  };
}

/** Registers `token` in the stand-in's TokenReview table as a service account's, as kube-apiserver reports a pod-bound token. */
export function saToken(api: StandInApiServer, token: string, o: { ns?: string; sa?: string; pod?: { name: string; uid: string }; node?: string; audiences?: string[] }): void {
  const ns = o.ns ?? AGENT_NS;
  const extra: Record<string, string[]> = {};
  if (o.pod) Object.assign(extra, { [POD_NAME_EXTRA]: [o.pod.name], [POD_UID_EXTRA]: [o.pod.uid] });
  if (o.node) extra[NODE_NAME_EXTRA] = [o.node];
  api.tokens.set(token, {
    username: `system:serviceaccount:${ns}:${o.sa ?? AGENT_SA}`,
    groups: ["system:serviceaccounts", `system:serviceaccounts:${ns}`, "system:authenticated"],
    audiences: o.audiences ?? ["istio-ca"],
    ...(Object.keys(extra).length ? { extra } : {}),
  });
}

export interface CaKubeEnv {
  api: StandInApiServer;
  ca: CaServer;
  root: string;
  /** node-1's token from `issue-node` (a node credential, next to the service-account tokens). */
  nodeToken: string;
  log: ReturnType<typeof recordingLogger>;
  /** The uid the stand-in gave each pod, by "ns/name". */
  uids: Map<string, string>;
  client(token: string): CertificateSource;
  metric(name: string, label?: string): Promise<number>;
  ready(): Promise<number>;
  close(): Promise<void>;
}

/**
 * node-1 runs shop/web-0 (sa web), the proxy nshub-system/proxy-1 and a finished job
 * shop/job-0 (sa batch, Succeeded); node-2 runs db/pg-0 (sa postgres) and proxy-2.
 * `apiDown`: the API server is stopped before the CA starts (its port stays reserved).
 */
export async function startCaKube(o: { apiDown?: boolean } = {}): Promise<CaKubeEnv> {
  const tmp = mkdtempSync(join(tmpdir(), "nshub-cakube-"));
  const dir = join(tmp, "ca");
  await initCaDir({ dir, trustDomain: "cluster.local" });
  const nodeToken = (await issueNodeCredentials(await loadCaDir(dir), { node: "node-1", token: true, lifetimeSeconds: 3600 })).token!;
  const api = startStandInApiServer();
  for (const ns of ["shop", "db", AGENT_NS]) api.put(namespace(ns));
  const uids = new Map<string, string>();
  for (const p of [
    podOf("shop", "web-0", "node-1", "web"),
    podOf("shop", "job-0", "node-1", "batch", "Succeeded"),
    podOf(AGENT_NS, "proxy-1", "node-1", AGENT_SA),
    podOf("db", "pg-0", "node-2", "postgres"),
    podOf(AGENT_NS, "proxy-2", "node-2", AGENT_SA),
  ]) {
    const made = api.put(p);
    uids.set(`${p.metadata.namespace}/${p.metadata.name}`, made.metadata.uid!);
  }
  if (o.apiDown) await api.stop();
  const log = recordingLogger();
  const ca = await startCaServer({
    dir,
    address: "127.0.0.1:0",
    metricsAddress: "127.0.0.1:0",
    serverNames: ["localhost"],
    kubernetes: { cluster: loadKubeconfig(api.kubeconfigPath), backoff: { initialMs: 50, maxMs: 400 } },
    log,
  });
  const root = (await loadCaDir(dir)).rootBundle;
  const clients: CertificateSource[] = [];
  return {
    api,
    ca,
    root,
    nodeToken,
    log,
    uids,
    client: (token) => {
      const c = createCaClient({ address: `localhost:${ca.port}`, caRoots: root, token });
      clients.push(c);
      return c;
    },
    metric: async (name, label = "") => {
      const text = await (await fetch(`http://127.0.0.1:${ca.metricsPort}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`${name}${label} `));
      if (!line) throw new Error(`no ${name}${label} in /metrics`);
      return Number(line.split(" ")[1]);
    },
    ready: async () => (await fetch(`http://127.0.0.1:${ca.metricsPort}/ready`)).status,
    close: async () => {
      for (const c of clients) c.close();
      await ca.close();
      await api.close();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

export async function refusal(p: Promise<unknown>): Promise<CertificateError> {
  const e = await p.then(
    () => undefined,
    (x) => x,
  );
  expect(e).toBeInstanceOf(CertificateError);
  return e as CertificateError;
}
