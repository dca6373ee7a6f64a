// The per-thread HBONE state (src/proxy/hbone-context.ts) and what the main thread feeds it
// (src/proxy/hbone-setup.ts): certificates held, renewed, waited for and forgotten; the mesh
// destinations from the registry's HBONE workloads, IPv4-mapped addresses folded, an IP claimed
// twice going to the workload the registry ranks first.
import { describe, expect, test } from "bun:test";
import { HboneContext, peerLookup, type CertificatePems } from "../../src/proxy/hbone-context.ts";
import { ProxyHbone } from "../../src/proxy/hbone-setup.ts";
import { WorkloadRegistry } from "../../src/registry/registry.ts";
import { ZdsWorkloadSource } from "../../src/registry/zds-source.ts";
import type { CertEvent, CertificateManager } from "../../src/identity/cert-manager.ts";
import { loadConfig } from "../../src/config/load.ts";

const ID = "spiffe://cluster.local/ns/shop/sa/web";
const pems = (serial: string, lifeMs = 60_000): CertificatePems => ({ identity: ID, keyPem: `key-${serial}`, presented: `cert-${serial}`, roots: "root", notAfter: Date.now() + lifeMs });

describe("HboneContext", () => {
  test("a certificate waited for arrives; watchers see it and every renewal; a dropped one is gone", async () => {
    const ctx = new HboneContext("cluster.local", { connectTimeoutMs: 1000 });
    const waiting = ctx.waitCertificate(ID, 2000);
    const seen: string[] = [];
    const stop = ctx.watchCertificate(ID, (c) => seen.push(c.presented));
    ctx.setCertificate(ID, pems("1"));
    expect((await waiting).presented).toBe("cert-1");
    ctx.setCertificate(ID, pems("2"));
    stop();
    ctx.setCertificate(ID, pems("3"));
    expect(seen).toEqual(["cert-1", "cert-2"]);
    expect(ctx.certificate(ID)?.presented).toBe("cert-3");
    ctx.setCertificate(ID, undefined);
    expect(ctx.certificate(ID)).toBeUndefined();
    ctx.close();
  });

  test("an expired certificate is not served, and a wait for one times out with the identity named", async () => {
    const ctx = new HboneContext("cluster.local", { connectTimeoutMs: 1000 });
    ctx.setCertificate(ID, pems("old", -1000));
    expect(ctx.certificate(ID)).toBeUndefined();
    await expect(ctx.waitCertificate(ID, 50)).rejects.toThrow(`no certificate for ${ID} within 50 ms`);
    ctx.close();
  });

  test("mesh destinations by IP (IPv4-mapped folded); pods' identities with the default service account; peer lookup falls back to the mesh", () => {
    const ctx = new HboneContext("cluster.local", { connectTimeoutMs: 1000 });
    ctx.setMesh([{ uid: "u1", name: "db-0", namespace: "shop", serviceAccount: "db", identities: ["spiffe://cluster.local/ns/shop/sa/db"], ips: ["10.1.2.3", "fd00::3"] }]);
    expect(ctx.meshDestination("10.1.2.3")?.name).toBe("db-0");
    expect(ctx.meshDestination("::ffff:10.1.2.3")?.name).toBe("db-0");
    expect(ctx.meshDestination("fd00::3")?.name).toBe("db-0");
    expect(ctx.meshDestination("10.1.2.4")).toBeUndefined();
    expect(ctx.identityOf({ uid: "x", name: "a", namespace: "ns1", serviceAccount: "" })).toBe("spiffe://cluster.local/ns/ns1/sa/default");
    const lookup = peerLookup({ peerWorkload: (ip) => (ip === "10.9.9.9" ? { name: "local", namespace: "n", serviceAccount: "s" } : undefined) }, ctx);
    expect(lookup("10.9.9.9")?.name).toBe("local");
    expect(lookup("10.1.2.3")).toEqual({ name: "db-0", namespace: "shop", serviceAccount: "db" });
    expect(lookup("10.0.0.1")).toBeUndefined();
    ctx.close();
  });
});

describe("ProxyHbone (main thread)", () => {
  test("issued/renewed/dropped certificates reach the context; the mesh follows the registry's HBONE workloads", async () => {
    const listeners: Array<(e: CertEvent) => void> = [];
    const certs = { onEvent: (fn: (e: CertEvent) => void) => listeners.push(fn) } as unknown as CertificateManager;
    const registry = new WorkloadRegistry({ trustDomain: "cluster.local" });
    const zds = new ZdsWorkloadSource({});
    await registry.addSource(zds);
    await registry.start();
    const cfg = loadConfig({ overrides: {} }).proxy;
    const h = new ProxyHbone(cfg, certs, registry, { debug() {}, info() {}, warn() {}, error() {} } as never);
    const notAfter = new Date(Date.now() + 60_000);
    for (const fn of listeners) fn({ type: "issued", identity: ID, renewal: false, cert: { identity: ID, keyPem: "k", chain: [], leaf: "", presented: "p", roots: "r", serial: "1", notBefore: new Date(), notAfter } });
    expect(h.ctx.certificate(ID)).toMatchObject({ keyPem: "k", presented: "p", roots: "r", notAfter: notAfter.getTime() });
    for (const fn of listeners) fn({ type: "dropped", identity: ID });
    expect(h.ctx.certificate(ID)).toBeUndefined();

    zds.upsert({ uid: "u1", name: "web-0", namespace: "shop", serviceAccount: "web", ips: ["10.1.0.5"] });
    await Bun.sleep(0);
    expect(h.ctx.meshDestination("10.1.0.5")?.identities).toEqual([ID]);
    zds.remove("u1");
    await Bun.sleep(0);
    expect(h.ctx.meshDestination("10.1.0.5")).toBeUndefined();
    h.close();
    await registry.stop();
  });
});
