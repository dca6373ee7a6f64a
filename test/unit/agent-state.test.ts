// The agent's state file (atomic write, strict read) and the pieces of netns discovery that need
// no root: cgroup UID parsing, `ip -j addr` parsing, and the /proc scan over a fake procfs.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readStateFile, StateFileError, writeStateFile, type PodRecord } from "../../src/agent/state.ts";
import { parseIpAddrJson, podUidFromCgroup, scanByIdentity, scanByPodUid } from "../../src/agent/discovery.ts";

const dir = mkdtempSync(join(tmpdir(), "nshub-agent-state-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rec = (uid: string, extra: Partial<PodRecord> = {}): PodRecord => ({
  uid,
  namespace: "shop",
  name: `web-${uid}`,
  serviceAccount: "web",
  ips: ["10.0.0.2"],
  netnsPath: "/var/run/netns/x",
  containerId: "c1",
  netns: { dev: 4, ino: 4026532301 },
  state: "enrolled",
  reason: "acked",
  updatedAt: "2026-01-01T00:00:00.000Z",
  ...extra,
});

describe("state file", () => {
  test("round trip; directory created; no temp file left; mode 0600", () => {
    const file = join(dir, "sub", "state.json");
    const pods = [rec("a"), rec("b", { state: "not-enrolled", override: "unenroll", netns: undefined })];
    delete pods[1]!.netns;
    writeStateFile(file, pods);
    expect(readStateFile(file)).toEqual(pods);
    expect(readdirSync(join(dir, "sub"))).toEqual(["state.json"]);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const raw = JSON.parse(readFileSync(file, "utf8"));
    expect(raw.version).toBe(1);
    expect(typeof raw.writtenAt).toBe("string");
    writeStateFile(file, []);
    expect(readStateFile(file)).toEqual([]);
  });

  test("a missing file is an empty cache", () => {
    expect(readStateFile(join(dir, "none.json"))).toEqual([]);
  });

  test("corrupt or foreign content is refused with a precise message", () => {
    const bad = (content: string) => {
      const f = join(dir, `bad-${Math.random()}.json`);
      writeFileSync(f, content);
      try {
        readStateFile(f);
      } catch (e) {
        expect(e).toBeInstanceOf(StateFileError);
        return (e as Error).message.replace(f, "<f>");
      }
      throw new Error("expected an error");
    };
    expect(bad("{")).toStartWith("state file <f>: not valid JSON");
    expect(bad('{"version":2,"writtenAt":"x","pods":[]}')).toContain("version: Invalid input: expected 1");
    expect(bad(JSON.stringify({ version: 1, writtenAt: "x", pods: [{ ...rec("a"), state: "weird" }] }))).toContain("pods.0.state");
    expect(bad(JSON.stringify({ version: 1, writtenAt: "x", pods: [{ ...rec("a"), extra: 1 }] }))).toContain('pods.0: unknown key "extra"');
    expect(bad(JSON.stringify({ version: 1, writtenAt: "x", pods: [rec("a"), rec("a")] }))).toBe("state file <f>: pod uid a appears twice");
  });
});

describe("discovery helpers", () => {
  test("pod UID from cgroup paths (cgroupfs and systemd drivers, v1 and v2)", () => {
    expect(podUidFromCgroup("0::/kubepods/burstable/pod0b0c8f5e-1234-4cde-9f00-aabbccddeeff/3f2e1d\n")).toBe("0b0c8f5e-1234-4cde-9f00-aabbccddeeff");
    expect(
      podUidFromCgroup("12:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b0c8f5e_1234_4cde_9f00_aabbccddeeff.slice/cri-containerd-abc.scope\n"),
    ).toBe("0b0c8f5e-1234-4cde-9f00-aabbccddeeff");
    expect(podUidFromCgroup("0::/user.slice/user-0.slice/session-1.scope\n")).toBeUndefined();
    expect(podUidFromCgroup("0::/system.slice/pod0b0c8f5e-1234-4cde-9f00-aabbccddeeff\n")).toBeUndefined();
  });

  test("ip -j addr parsing keeps global addresses only", () => {
    const json = JSON.stringify([
      { ifname: "lo", addr_info: [{ family: "inet", local: "127.0.0.1", scope: "host" }, { family: "inet6", local: "::1", scope: "host" }] },
      { ifname: "eth0", addr_info: [{ family: "inet", local: "10.1.2.3", scope: "global" }, { family: "inet6", local: "fe80::1", scope: "link" }, { family: "inet6", local: "fd00::3", scope: "global" }] },
    ]);
    expect(parseIpAddrJson(json)).toEqual(["10.1.2.3", "fd00::3"]);
    expect(parseIpAddrJson("")).toEqual([]);
  });

  test("the /proc scan over a fake procfs: wanted identities, oldest process wins, cgroup UIDs", () => {
    const root = join(dir, "proc");
    const nsA = join(dir, "nsA");
    const nsB = join(dir, "nsB");
    writeFileSync(nsA, "");
    writeFileSync(nsB, "");
    const proc = (pid: number, ns: string, start: number, cgroup: string) => {
      mkdirSync(join(root, String(pid), "ns"), { recursive: true });
      symlinkSync(ns, join(root, String(pid), "ns", "net"));
      // comm with spaces and parentheses must not confuse the field count
      writeFileSync(join(root, String(pid), "stat"), `${pid} (a (b) c) S 1 ${Array.from({ length: 17 }, () => "0").join(" ")} ${start} 0 0\n`);
      writeFileSync(join(root, String(pid), "cgroup"), cgroup);
    };
    const uid = "11111111-2222-3333-4444-555555555555";
    proc(100, nsA, 900, `0::/kubepods/pod${uid}/c1\n`);
    proc(101, nsA, 500, `0::/kubepods/pod${uid}/c2\n`);
    proc(102, nsB, 700, "0::/system.slice/x\n");
    mkdirSync(join(root, "self")); // not numeric: ignored
    const keyOf = (p: string) => `${statSync(p).dev}:${statSync(p).ino}`;
    const found = scanByIdentity(root, new Set([keyOf(nsA), keyOf(nsB), "9:9"]), new Set());
    expect(found.get(keyOf(nsA))?.pid).toBe(101);
    expect(found.get(keyOf(nsA))?.path).toBe(join(root, "101", "ns", "net"));
    expect(found.get(keyOf(nsB))?.pid).toBe(102);
    expect(found.has("9:9")).toBe(false);
    const byUid = scanByPodUid(root, new Set([uid]), new Set());
    expect(byUid.get(uid)?.map((c) => c.pid)).toEqual([101]);
    expect(scanByIdentity(root, new Set(), new Set()).size).toBe(0);
  });
});
