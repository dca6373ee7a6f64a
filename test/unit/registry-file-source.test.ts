// The file source on a real file with a real fs.watch (the stat poll is off, so only the watch
// can notice): edits, atomic replacement (rename over the file, as editors and ConfigMap
// mounts do), a bad edit (error named, previous model kept), the fix, a deleted file, and a
// file that appears after start. Every change must be in the model within a second.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setLogSink } from "../../src/log/logger.ts";
import { FileWorkloadSource } from "../../src/registry/file-source.ts";
import { WorkloadRegistry } from "../../src/registry/registry.ts";

const root = mkdtempSync(join(tmpdir(), "nshub-registry-watch-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const logs: string[] = [];
setLogSink((l) => logs.push(l), "json");

const entry = (uid: string, ip: string, sa = "app") => `- uid: ${uid}\n  name: ${uid}\n  namespace: shop\n  serviceAccount: ${sa}\n  workloadIps: ["${ip}"]\n  protocol: HBONE\n  services: {}\n`;

let n = 0;
async function started(initial?: string) {
  const dir = join(root, `case-${n++}`);
  mkdirSync(dir);
  const file = join(dir, "workloads.yaml");
  if (initial !== undefined) writeFileSync(file, initial);
  const registry = new WorkloadRegistry({ trustDomain: "cluster.local" });
  const source = new FileWorkloadSource(file, { debounceMs: 50, pollMs: 0 });
  await registry.addSource(source);
  await registry.start();
  return { dir, file, registry, source };
}

/** Resolves once `check` holds, failing after `ms`; returns how long it took. */
async function within(ms: number, check: () => boolean): Promise<number> {
  const t0 = performance.now();
  while (!check()) {
    if (performance.now() - t0 > ms) throw new Error(`not within ${ms} ms`);
    await Bun.sleep(10);
  }
  return performance.now() - t0;
}

describe("file source: reload on change", () => {
  test("an edit in place is in the model within a second", async () => {
    const { file, registry, source } = await started(`workloads:\n${entry("a", "10.5.0.1")}`);
    expect(registry.findByIp("10.5.0.1")?.uid).toBe("a");
    writeFileSync(file, `workloads:\n${entry("a", "10.5.0.1")}${entry("b", "fd00:5::2")}`);
    const took = await within(1000, () => registry.findByIp("fd00:5::2")?.uid === "b");
    expect(took).toBeLessThan(1000);
    expect(source.loads).toBe(2);
    await registry.stop();
  });

  test("a replacement by rename (editor, ConfigMap swap) is seen too", async () => {
    const { dir, file, registry } = await started(`workloads:\n${entry("a", "10.5.1.1")}`);
    const tmp = join(dir, ".workloads.yaml.tmp");
    writeFileSync(tmp, `workloads:\n${entry("a", "10.5.1.9")}`);
    renameSync(tmp, file);
    await within(1000, () => registry.findByIp("10.5.1.9")?.uid === "a");
    expect(registry.findByIp("10.5.1.1")).toBeUndefined();
    // And again: a watch on the first inode alone would miss this second replacement.
    writeFileSync(tmp, `workloads:\n${entry("a", "10.5.1.10")}`);
    renameSync(tmp, file);
    await within(1000, () => registry.findByIp("10.5.1.10")?.uid === "a");
    await registry.stop();
  });

  test("a bad edit is reported (file, entry, field) and the previous model kept; the fix is taken", async () => {
    const { file, registry, source } = await started(`workloads:\n${entry("a", "10.5.2.1")}${entry("b", "10.5.2.2")}`);
    logs.length = 0;
    writeFileSync(file, `workloads:\n${entry("a", "10.5.2.1")}${entry("b", "10.5.2.300")}`);
    await within(1000, () => source.lastError !== undefined);
    expect(source.lastError!.message).toBe(`workloads file ${file}: workloads[1] (uid "b"), line 13: workloadIps[0]: "10.5.2.300" is not an IP address (an IPv4 octet is above 255)`);
    expect(registry.findByIp("10.5.2.2")?.uid).toBe("b");
    expect(registry.list().map((w) => w.uid)).toEqual(["a", "b"]);
    expect(registry.sources()[0]!.error).toBe(source.lastError!.message);
    const warned = logs.map((l) => JSON.parse(l)).find((l) => l.level === "warn");
    expect(warned).toMatchObject({ msg: "workload source failed; keeping its previous workloads", source: `file:${file}`, workloads: 2 });
    writeFileSync(file, `workloads:\n${entry("b", "10.5.2.3", "other")}`);
    await within(1000, () => registry.findByIp("10.5.2.3")?.uid === "b");
    expect(source.lastError).toBeUndefined();
    expect(registry.sources()[0]!.error).toBeUndefined();
    expect(registry.byUid("a")).toBeUndefined();
    expect(registry.byUid("b")?.identity).toBe("spiffe://cluster.local/ns/shop/sa/other");
    await registry.stop();
  });

  test("a deleted file keeps the model (reported); a file that appears later is read", async () => {
    const gone = await started(`workloads:\n${entry("a", "10.5.3.1")}`);
    rmSync(gone.file);
    await within(1000, () => gone.source.lastError !== undefined);
    expect(gone.source.lastError!.message).toBe(`workloads file ${gone.file}: no such file`);
    expect(gone.registry.findByIp("10.5.3.1")?.uid).toBe("a");
    await gone.registry.stop();

    const later = await started();
    expect(later.source.lastError?.message).toContain("no such file");
    expect(later.registry.list()).toEqual([]);
    writeFileSync(later.file, `workloads:\n${entry("c", "10.5.3.3")}`);
    await within(1000, () => later.registry.findByIp("10.5.3.3")?.uid === "c");
    await later.registry.stop();
  });

  test("after stop, changes are not followed", async () => {
    const { file, registry, source } = await started(`workloads:\n${entry("a", "10.5.4.1")}`);
    await registry.stop();
    writeFileSync(file, `workloads:\n${entry("a", "10.5.4.2")}`);
    await Bun.sleep(300);
    expect(source.loads).toBe(1);
  });
});
