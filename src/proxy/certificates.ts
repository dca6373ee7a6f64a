// Workload certificates in the proxy: the certificate source `proxy.ca` names, the certificate
// manager (src/identity/cert-manager.ts, one certificate per identity) and what tells it which
// pods have which identity — a WorkloadManager decorator between the ZDS client and the pod
// managers, so pods are counted exactly as ZDS adds and deletes them (pending pods included:
// they still are the pod's identity on this node, as in ztunnel).
//
// A pod's identity is spiffe://<proxy.ca.trustDomain>/ns/<namespace>/sa/<service account> from
// ZDS WorkloadInfo (as ztunnel's LocalWorkloadInformation), the service account "default" when
// the agent sent none (Kubernetes' own default).
import { readFileSync } from "node:fs";
import type { CaConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { createCaClient } from "../identity/ca-client.ts";
import { CertificateManager } from "../identity/cert-manager.ts";
import { readPrivateFile } from "../identity/key-file.ts";
import { openLocalCa, openLocalCaDir } from "../identity/local-ca.ts";
import type { CertificateSource } from "../identity/source.ts";
import { DEFAULT_SERVICE_ACCOUNT, formatSpiffeId } from "../identity/spiffe.ts";
import type { Netns } from "../sys/index.ts";
import { ProxyStartError, type WorkloadIdentity, type WorkloadManager } from "../zds/types.ts";

/** A `proxy.ca` the proxy cannot start with (unreadable file, key not root-only, CA for another trust domain). */
export class CaSetupError extends Error {
  override name = "CaSetupError";
}

/** The source `proxy.ca` names; undefined for `none`. Throws CaSetupError naming the key. */
export async function openCertificateSource(ca: CaConfig): Promise<CertificateSource | undefined> {
  const fail = (key: string, e: unknown): never => {
    throw new CaSetupError(`proxy.ca.${key}: ${(e as Error).message}`);
  };
  const read = (key: "rootCert" | "clientCert" | "certFile", path: string) => {
    try {
      return readFileSync(path, "utf8");
    } catch (e) {
      return fail(key, new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`));
    }
  };
  switch (ca.source) {
    case "none":
      return undefined;
    case "istio": {
      const caRoots = read("rootCert", ca.rootCert!);
      let clientCert: { certPem: string; keyPem: string } | undefined;
      if (ca.clientCert) {
        let keyPem = "";
        try {
          keyPem = readPrivateFile(ca.clientKey!, "node client key");
        } catch (e) {
          fail("clientKey", e);
        }
        clientCert = { certPem: read("clientCert", ca.clientCert), keyPem };
      }
      try {
        return createCaClient({ address: ca.address!, caRoots, tokenFile: ca.tokenFile, clientCert, clusterId: ca.clusterId, serverName: ca.serverName });
      } catch (e) {
        return fail("address", e);
      }
    }
    case "local": {
      let src;
      try {
        src = ca.localDir
          ? await openLocalCaDir(ca.localDir)
          : await openLocalCa({ trustDomain: ca.trustDomain, certFile: ca.certFile!, keyFile: ca.keyFile!, rootFile: ca.rootCert });
      } catch (e) {
        return fail(ca.localDir ? "localDir" : "keyFile", e);
      }
      if (src.trustDomain !== ca.trustDomain) {
        src.close();
        throw new CaSetupError(`proxy.ca.trustDomain is ${ca.trustDomain}, but the CA in ${ca.localDir} signs for ${src.trustDomain}: set proxy.ca.trustDomain to ${src.trustDomain}`);
      }
      return src;
    }
  }
}

/** A pod's SPIFFE ID, or undefined (with the reason logged) when ZDS gave nothing usable. */
export function podIdentity(trustDomain: string, info: WorkloadIdentity | undefined, log: Logger, uid: string): string | undefined {
  if (!info?.namespace) {
    log.warn("pod without a namespace in its WorkloadInfo: no certificate", { uid });
    return undefined;
  }
  try {
    return formatSpiffeId({ trustDomain, namespace: info.namespace, serviceAccount: info.serviceAccount || DEFAULT_SERVICE_ACCOUNT });
  } catch (e) {
    log.warn("pod's identity is not a valid SPIFFE ID: no certificate", { uid, error: (e as Error).message });
    return undefined;
  }
}

/**
 * What the ZDS client drives when certificates are on: every call goes to `inner` (the pod
 * managers), and the certificate manager learns which pods hold which identity. A pod whose
 * listeners failed (ProxyStartError: pending, retried) keeps its identity; a pod the snapshot
 * no longer names, or that `inner` dropped, loses it when the snapshot ends.
 */
export class CertifyingWorkloadManager implements WorkloadManager {
  constructor(
    private readonly inner: WorkloadManager,
    private readonly certs: CertificateManager,
    private readonly trustDomain: string,
    private readonly log: Logger,
  ) {}

  async add(uid: string, info: WorkloadIdentity | undefined, netns: Netns): Promise<void> {
    const identity = podIdentity(this.trustDomain, info, this.log, uid);
    const track = () => {
      if (identity) this.certs.podAdded({ uid, name: info?.name, namespace: info?.namespace }, identity);
      else this.certs.podRemoved(uid);
    };
    try {
      await this.inner.add(uid, info, netns);
    } catch (e) {
      if (e instanceof ProxyStartError) track();
      throw e;
    }
    track();
  }

  keep(uid: string): void {
    this.inner.keep(uid);
  }

  async del(uid: string): Promise<void> {
    try {
      await this.inner.del(uid);
    } finally {
      this.certs.podRemoved(uid);
    }
  }

  uids(): Iterable<string> {
    return this.inner.uids();
  }

  connectionStarted(): void {
    this.inner.connectionStarted();
  }

  snapshotDone(): void {
    this.inner.snapshotDone();
    // Pending pods a new connection forgot and were not in its snapshot.
    const served = new Set(this.inner.uids());
    for (const uid of this.certs.podUids()) if (!served.has(uid)) this.certs.podRemoved(uid);
  }

  connectionLost(): void {
    this.inner.connectionLost();
  }
}
