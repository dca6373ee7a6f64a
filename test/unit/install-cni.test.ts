// `nshub install` / `nshub uninstall` against CNI dirs in a temporary directory: the chained
// entry, idempotency, byte-for-byte restore, .conf conversion, and refusing bad input untouched.
import { afterAll, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BINARY_MARKER, InstallError, install, uninstall, type InstallOptions } from "../../src/cli/install.ts";
import { ConflistError, primaryConfigName } from "../../src/cli/install-conflist.ts";

const root = mkdtempSync(join(tmpdir(), "nshub-install-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// As containerd's own config template writes it (bridge + host-local IPAM + portmap), hand-
// formatted on purpose: the restore must give back these exact bytes, not a re-serialization.
const CONTAINERD_CONFLIST = `{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{
            "subnet": "10.88.0.0/16"
          }],
          [{
            "subnet": "2001:4860:4860::/64"
          }]
        ],
        "routes": [
          { "dst": "0.0.0.0/0" },
          { "dst": "::/0" }
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`;

// A single-plugin .conf as the CNI project's examples write it (no trailing newline).
const BRIDGE_CONF = `{
\t"cniVersion": "0.4.0",
\t"name": "mynet",
\t"type": "bridge",
\t"bridge": "cni0",
\t"isGateway": true,
\t"ipMasq": true,
\t"ipam": {
\t\t"type": "host-local",
\t\t"subnet": "10.22.0.0/16",
\t\t"routes": [ { "dst": "0.0.0.0/0" } ]
\t}
}`;

let n = 0;
let dir: string, binDir: string, confDir: string, binary: string, opts: InstallOptions;

beforeEach(() => {
  dir = join(root, `case-${++n}`);
  binDir = join(dir, "opt/cni/bin");
  confDir = join(dir, "etc/cni/net.d");
  mkdirSync(binDir, { recursive: true });
  mkdirSync(confDir, { recursive: true });
  // A stand-in for dist/nshub: carries the marker every nshub binary has.
  binary = join(dir, "nshub");
  writeFileSync(binary, `#!/bin/sh\n# ${BINARY_MARKER}\necho nshub\n` + "x".repeat(3000));
  chmodSync(binary, 0o700);
  opts = { cniBinDir: binDir, cniConfDir: confDir, binary, agentSocket: "/run/test/agent.sock" };
});

/** Every file under a directory with its bytes and mode: "nothing changed" means this is equal. */
function snapshot(d: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    for (const e of readdirSync(p)) {
      const full = join(p, e);
      const st = lstatSync(full);
      if (st.isDirectory()) walk(full, `${rel}${e}/`);
      else if (st.isSymbolicLink()) out[rel + e] = `-> ${readlinkSync(full)}`;
      else out[rel + e] = `${(st.mode & 0o7777).toString(8)} ${readFileSync(full, "base64")}`;
    }
  };
  walk(d, "");
  return out;
}

const conf = (name: string) => join(confDir, name);
const read = (p: string) => readFileSync(p, "utf8");
const pluginsOf = (p: string) => (JSON.parse(read(p)) as { plugins: Record<string, unknown>[] }).plugins;

describe("install", () => {
  test("appends nshub-cni as the last plugin of the containerd conflist and copies the binary", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    const r = await install(opts);
    expect(r.changed).toBe(true);

    const after = JSON.parse(read(conf("10-containerd-net.conflist")));
    const before = JSON.parse(CONTAINERD_CONFLIST);
    expect(after.plugins).toHaveLength(3);
    expect(after.plugins.slice(0, 2)).toEqual(before.plugins);
    expect(after.plugins[2]).toEqual({ type: "nshub-cni", agentSocket: "/run/test/agent.sock" });
    expect({ ...after, plugins: [] }).toEqual({ ...before, plugins: [] });

    const plugin = join(binDir, "nshub-cni");
    expect(readFileSync(plugin)).toEqual(readFileSync(binary));
    expect(statSync(plugin).mode & 0o777).toBe(0o755);
    expect(lstatSync(plugin).isSymbolicLink()).toBe(false);

    expect(read(conf("10-containerd-net.conflist.nshub-backup"))).toBe(CONTAINERD_CONFLIST);
    // No temp files left behind, nothing else created.
    expect(readdirSync(confDir).sort()).toEqual(["10-containerd-net.conflist", "10-containerd-net.conflist.nshub-backup"]);
    expect(readdirSync(binDir)).toEqual(["nshub-cni"]);
    expect(r.lines.join("\n")).toContain("added nshub-cni as plugin 3 of 3");
  });

  test("the default agent socket is the schema's", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install({ ...opts, agentSocket: undefined });
    expect(pluginsOf(conf("10-containerd-net.conflist")).at(-1)).toEqual({ type: "nshub-cni", agentSocket: "/var/run/nshub/agent.sock" });
  });

  test("installing twice changes nothing", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    const first = snapshot(dir);
    const mtime = statSync(conf("10-containerd-net.conflist")).mtimeMs;
    const r = await install(opts);
    expect(r.changed).toBe(false);
    expect(snapshot(dir)).toEqual(first);
    expect(statSync(conf("10-containerd-net.conflist")).mtimeMs).toBe(mtime);
    expect(r.lines.at(-1)).toBe("nothing to do: nshub is already installed");
  });

  test("an existing nshub entry is updated in place, never duplicated, and kept last", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    const backup = read(conf("10-containerd-net.conflist.nshub-backup"));
    // An operator added a key; another tool appended a plugin after ours.
    const list = JSON.parse(read(conf("10-containerd-net.conflist")));
    list.plugins[2].timeoutMs = 9000;
    list.plugins.push({ type: "bandwidth", capabilities: { bandwidth: true } });
    writeFileSync(conf("10-containerd-net.conflist"), JSON.stringify(list, null, 2));

    await install({ ...opts, agentSocket: "/run/other/agent.sock" });
    const plugins = pluginsOf(conf("10-containerd-net.conflist"));
    expect(plugins.map((p) => p.type)).toEqual(["bridge", "portmap", "bandwidth", "nshub-cni"]);
    expect(plugins[3]).toEqual({ type: "nshub-cni", agentSocket: "/run/other/agent.sock", timeoutMs: 9000 });
    // The backup still holds the file as it was before nshub.
    expect(read(conf("10-containerd-net.conflist.nshub-backup"))).toBe(backup);
  });

  test("picks the runtime's file: the byte-wise first .conf/.conflist/.json", async () => {
    expect(primaryConfigName(["99-loopback.conf", "10-b.conflist", "10-a.json", "README", ".10-0.conflist", "05.conflist.nshub-backup"])).toBe("10-a.json");
    expect(primaryConfigName(["a.conf", "Z.conflist"])).toBe("Z.conflist");
    expect(primaryConfigName(["README.md", "x.conflist.nshub-backup"])).toBeUndefined();

    writeFileSync(conf("20-second.conflist"), CONTAINERD_CONFLIST);
    writeFileSync(conf("10-first.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    expect(pluginsOf(conf("10-first.conflist")).at(-1)?.type).toBe("nshub-cni");
    expect(read(conf("20-second.conflist"))).toBe(CONTAINERD_CONFLIST);
  });

  test("--conflist chains into the named file", async () => {
    writeFileSync(conf("10-first.conflist"), CONTAINERD_CONFLIST);
    writeFileSync(conf("20-second.conflist"), CONTAINERD_CONFLIST);
    const r = await install({ ...opts, conflist: "20-second.conflist" });
    expect(read(conf("10-first.conflist"))).toBe(CONTAINERD_CONFLIST);
    expect(pluginsOf(conf("20-second.conflist")).at(-1)?.type).toBe("nshub-cni");
    expect(r.lines[0]).toContain("the runtime reads");
    await uninstall({ ...opts, conflist: conf("20-second.conflist") });
    expect(read(conf("20-second.conflist"))).toBe(CONTAINERD_CONFLIST);
  });

  test("a single-plugin .conf becomes a .conflist, and uninstall puts the .conf back", async () => {
    writeFileSync(conf("10-bridge.conf"), BRIDGE_CONF);
    chmodSync(conf("10-bridge.conf"), 0o600);
    writeFileSync(conf("99-loopback.conf"), `{"cniVersion":"0.4.0","name":"lo","type":"loopback"}`);
    const before = snapshot(dir);

    await install(opts);
    expect(existsSync(conf("10-bridge.conf"))).toBe(false);
    const list = JSON.parse(read(conf("10-bridge.conflist")));
    expect(list.cniVersion).toBe("0.4.0");
    expect(list.name).toBe("mynet");
    expect(list.plugins).toHaveLength(2);
    expect(list.plugins[0]).toEqual(JSON.parse(BRIDGE_CONF));
    expect(list.plugins[1]).toEqual({ type: "nshub-cni", agentSocket: "/run/test/agent.sock" });
    expect(statSync(conf("10-bridge.conflist")).mode & 0o777).toBe(0o600);
    expect(read(conf("10-bridge.conf.nshub-backup"))).toBe(BRIDGE_CONF);
    expect(primaryConfigName(readdirSync(confDir))).toBe("10-bridge.conflist");
    // Tab indentation is kept for the converted file.
    expect(read(conf("10-bridge.conflist"))).toContain('\n\t"plugins"');

    const installed = snapshot(dir);
    expect((await install(opts)).changed).toBe(false);
    expect(snapshot(dir)).toEqual(installed);

    await uninstall(opts);
    expect(snapshot(dir)).toEqual(before);
    expect(read(conf("10-bridge.conf"))).toBe(BRIDGE_CONF);
    expect(statSync(conf("10-bridge.conf")).mode & 0o777).toBe(0o600);
  });

  test("refuses to convert a .conf whose .conflist name is taken by another file", async () => {
    writeFileSync(conf("10-bridge.conf"), BRIDGE_CONF);
    writeFileSync(conf("10-bridge.conflist"), CONTAINERD_CONFLIST);
    const before = snapshot(dir);
    await expect(install(opts)).rejects.toThrow(/would become .*10-bridge.conflist, which already exists/);
    expect(snapshot(dir)).toEqual(before);
  });

  test("invalid JSON: a clear error and nothing changed", async () => {
    writeFileSync(conf("10-broken.conflist"), `{"cniVersion": "1.0.0", "plugins": [ {"type": "bridge"}, ]}`);
    const before = snapshot(dir);
    const err = await install(opts).catch((e) => e);
    expect(err).toBeInstanceOf(ConflistError);
    expect(err.message).toContain("10-broken.conflist: not valid JSON");
    expect(snapshot(dir)).toEqual(before);
  });

  test("a conflist without plugins, or a plugin without type: clear errors, nothing changed", async () => {
    writeFileSync(conf("10-a.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": {}}`);
    const before = snapshot(dir);
    await expect(install(opts)).rejects.toThrow('10-a.conflist: "plugins" must be an array');
    writeFileSync(conf("10-a.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"ipam": {}}]}`);
    await expect(install(opts)).rejects.toThrow('plugins[0] has no "type"');
    writeFileSync(conf("10-a.conflist"), `[1, 2]`);
    await expect(install(opts)).rejects.toThrow("the top level must be a JSON object");
    writeFileSync(conf("10-a.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": {}}`);
    expect(snapshot(dir)).toEqual(before);
  });

  test("an unreadable conflist: a clear error and nothing changed", async () => {
    mkdirSync(conf("10-dir.conflist")); // reading it fails with EISDIR, as root too
    const before = snapshot(dir);
    await expect(install(opts)).rejects.toThrow(/cannot read .*10-dir\.conflist/);
    expect(snapshot(dir)).toEqual(before);
  });

  test("no CNI config: refuses (nshub chains after the primary plugin), nothing written", async () => {
    writeFileSync(conf("README"), "not a config");
    const before = snapshot(dir);
    const err = await install(opts).catch((e) => e);
    expect(err).toBeInstanceOf(InstallError);
    expect(err.message).toContain(`no CNI network config (*.conf, *.conflist, *.json) in ${confDir}`);
    expect(err.message).toContain("primary CNI plugin");
    expect(snapshot(dir)).toEqual(before);
    await expect(install({ ...opts, cniConfDir: join(dir, "missing") })).rejects.toThrow("does not exist");
  });

  test("--wait waits for the primary plugin's config", async () => {
    setTimeout(() => writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST), 300);
    const r = await install({ ...opts, waitSeconds: 10 });
    expect(r.changed).toBe(true);
    expect(pluginsOf(conf("10-containerd-net.conflist")).at(-1)?.type).toBe("nshub-cni");
  });

  test("--link symlinks the binary, and uninstall removes the link", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install({ ...opts, link: true });
    expect(readlinkSync(join(binDir, "nshub-cni"))).toBe(binary);
    expect((await install({ ...opts, link: true })).changed).toBe(false);
    const r = await uninstall(opts);
    expect(existsSync(join(binDir, "nshub-cni"))).toBe(false);
    expect(r.lines.join("\n")).toContain("symlink to");
  });

  test("without --binary outside the compiled binary: refuses rather than copying bun", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await expect(install({ ...opts, binary: undefined })).rejects.toThrow("pass --binary");
    expect(readdirSync(binDir)).toEqual([]);
  });
});

describe("uninstall", () => {
  test("restores the conflist byte-for-byte and removes the backup and nshub-cni", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    chmodSync(conf("10-containerd-net.conflist"), 0o640);
    const before = snapshot(dir);
    await install(opts);
    await install(opts);
    const r = await uninstall(opts);
    expect(r.changed).toBe(true);
    expect(read(conf("10-containerd-net.conflist"))).toBe(CONTAINERD_CONFLIST);
    expect(snapshot(dir)).toEqual(before);
    expect(existsSync(conf("10-containerd-net.conflist.nshub-backup"))).toBe(false);
    expect(existsSync(join(binDir, "nshub-cni"))).toBe(false);
    expect(r.lines.join("\n")).toContain("restored byte-for-byte");

    const again = await uninstall(opts);
    expect(again.changed).toBe(false);
    expect(snapshot(dir)).toEqual(before);
  });

  test("when not installed: succeeds and changes nothing", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    const before = snapshot(dir);
    const r = await uninstall(opts);
    expect(r.changed).toBe(false);
    expect(r.errors).toEqual([]);
    expect(r.lines.join("\n")).toContain("nshub is not installed");
    expect(snapshot(dir)).toEqual(before);
    // Missing directories are "not installed" too.
    expect((await uninstall({ ...opts, cniConfDir: join(dir, "none"), cniBinDir: join(dir, "none") })).changed).toBe(false);
  });

  test("a conflist changed since install: only the nshub entry is removed, and it says so", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    const list = JSON.parse(read(conf("10-containerd-net.conflist")));
    list.plugins.splice(2, 0, { type: "tuning", sysctl: { "net.core.somaxconn": "500" } });
    writeFileSync(conf("10-containerd-net.conflist"), JSON.stringify(list, null, 2) + "\n");

    const r = await uninstall(opts);
    expect(pluginsOf(conf("10-containerd-net.conflist")).map((p) => p.type)).toEqual(["bridge", "portmap", "tuning"]);
    expect(r.lines.join("\n")).toContain("changed since install in other ways, so removed only the nshub-cni entry");
    expect(existsSync(conf("10-containerd-net.conflist.nshub-backup"))).toBe(false);
    expect(existsSync(join(binDir, "nshub-cni"))).toBe(false);
  });

  test("reformatting alone is not a change: the original bytes come back", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    const list = JSON.parse(read(conf("10-containerd-net.conflist")));
    writeFileSync(conf("10-containerd-net.conflist"), JSON.stringify(list));
    await uninstall(opts);
    expect(read(conf("10-containerd-net.conflist"))).toBe(CONTAINERD_CONFLIST);
  });

  test("bytes that are not UTF-8 come back unchanged too", async () => {
    const original = Buffer.concat([Buffer.from('{"cniVersion":"1.0.0","name":"caf'), Buffer.from([0xe9]), Buffer.from('","plugins":[{"type":"bridge"}]}\r\n')]);
    writeFileSync(conf("10-latin1.conflist"), original);
    await install(opts);
    expect(readFileSync(conf("10-latin1.conflist.nshub-backup"))).toEqual(original);
    await uninstall(opts);
    expect(readFileSync(conf("10-latin1.conflist"))).toEqual(original);
  });

  test("a stale backup (config without nshub: install stopped half-way, or the file was replaced) is removed, the config left alone", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    writeFileSync(conf("10-containerd-net.conflist.nshub-backup"), CONTAINERD_CONFLIST);
    const r = await uninstall(opts);
    expect(r.lines.join("\n")).toContain("has no nshub-cni entry");
    expect(readdirSync(confDir)).toEqual(["10-containerd-net.conflist"]);
    expect(read(conf("10-containerd-net.conflist"))).toBe(CONTAINERD_CONFLIST);
  });

  test("a file replaced since install (no nshub entry) refreshes the backup on the next install", async () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    const replaced = CONTAINERD_CONFLIST.replace("10.88.0.0/16", "10.99.0.0/16");
    writeFileSync(conf("10-containerd-net.conflist"), replaced); // the primary CNI rewrote it
    const r = await install(opts);
    expect(r.lines.join("\n")).toContain("backup refreshed");
    expect(read(conf("10-containerd-net.conflist.nshub-backup"))).toBe(replaced);
    await uninstall(opts);
    expect(read(conf("10-containerd-net.conflist"))).toBe(replaced);
  });

  test("an nshub entry without a backup is removed; a foreign nshub-cni is left alone", async () => {
    const list = JSON.parse(CONTAINERD_CONFLIST);
    list.plugins.push({ type: "nshub-cni", agentSocket: "/x" });
    writeFileSync(conf("10-containerd-net.conflist"), JSON.stringify(list, null, 2) + "\n");
    writeFileSync(join(binDir, "nshub-cni"), "#!/bin/sh\necho someone else's plugin\n");
    const r = await uninstall({ ...opts, binary: undefined });
    expect(pluginsOf(conf("10-containerd-net.conflist")).map((p) => p.type)).toEqual(["bridge", "portmap"]);
    expect(read(join(binDir, "nshub-cni"))).toContain("someone else's plugin");
    expect(r.lines.join("\n")).toContain("left alone: a file that is not an nshub binary");
  });

  test("nshub-cni is kept while another config still names it", async () => {
    writeFileSync(conf("10-first.conflist"), CONTAINERD_CONFLIST);
    writeFileSync(conf("20-second.conflist"), CONTAINERD_CONFLIST);
    await install(opts);
    await install({ ...opts, conflist: "20-second.conflist" });
    const r = await uninstall({ ...opts, conflist: "10-first.conflist" });
    expect(read(conf("10-first.conflist"))).toBe(CONTAINERD_CONFLIST);
    expect(existsSync(join(binDir, "nshub-cni"))).toBe(true);
    expect(r.lines.join("\n")).toContain("kept, still named by");
    await uninstall(opts);
    expect(read(conf("20-second.conflist"))).toBe(CONTAINERD_CONFLIST);
    expect(existsSync(join(binDir, "nshub-cni"))).toBe(false);
  });
});

describe("the command line", () => {
  const bun = process.execPath;
  const mainTs = join(import.meta.dir, "../../src/main.ts");
  const run = (args: string[]) => {
    const p = Bun.spawnSync([bun, mainTs, ...args], { stdout: "pipe", stderr: "pipe" });
    return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
  };

  test("install, uninstall round trip through nshub's dispatch", () => {
    writeFileSync(conf("10-containerd-net.conflist"), CONTAINERD_CONFLIST);
    const flags = ["--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--binary", binary];
    const i = run(["install", ...flags]);
    expect(i.code).toBe(0);
    expect(i.out).toContain("copied from");
    expect(i.out).toContain("added nshub-cni");
    const u = run(["uninstall", ...flags]);
    expect(u.code).toBe(0);
    expect(u.out).toContain("restored byte-for-byte");
    expect(read(conf("10-containerd-net.conflist"))).toBe(CONTAINERD_CONFLIST);
  });

  test("exit codes: 1 for a bad conflist, 2 for a bad flag, 0 for --help", () => {
    writeFileSync(conf("10-x.conflist"), "{ nope");
    const bad = run(["install", "--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--binary", binary]);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain("not valid JSON");
    expect(bad.err).toContain("nothing was changed");
    expect(run(["install", "--frobnicate"]).code).toBe(2);
    expect(run(["uninstall", "stray-positional"]).code).toBe(2);
    expect(run(["install", "--wait", "soon"]).code).toBe(2);
    const help = run(["install", "--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toContain("--cni-conf-dir");
  });
});
