// The deployment files under deploy/: they parse, and they agree with what the binary relies on
// (its subcommands and flags, the config schema and its defaults, the socket and probe
// addresses, the capabilities, the host mounts, an exec-able TMPDIR for the embedded library).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { parseAllDocuments } from "yaml";
import { installFlags } from "../../src/cli/install-command.ts";
import { loadConfig } from "../../src/config/load.ts";
import { agentSchema, proxySchema, type Config } from "../../src/config/schema.ts";
import { usage } from "../../src/main.ts";

const deploy = join(import.meta.dir, "../../deploy");
const k8sDir = join(deploy, "kubernetes");
const tmp = mkdtempSync(join(tmpdir(), "nshub-deploy-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The subcommands nshub dispatches, read from its own usage table. */
const SUBCOMMANDS = new Set(
  usage()
    .split("\n")
    .map((l) => /^  ([a-z][a-z-]*)  /.exec(l)?.[1])
    .filter((x): x is string => x !== undefined),
);

/** `nshub <sub> [<command>] --help`, run once each: it must be built and name every flag we pass. */
const helpCache = new Map<string, { code: number | null; text: string }>();
function help(sub: string[]): { code: number | null; text: string } {
  let h = helpCache.get(sub.join(" "));
  if (!h) {
    const p = Bun.spawnSync([process.execPath, join(import.meta.dir, "../../src/main.ts"), ...sub, "--help"], { stdout: "pipe", stderr: "pipe" });
    h = { code: p.exitCode, text: p.stdout.toString() + p.stderr.toString() };
    helpCache.set(sub.join(" "), h);
  }
  return h;
}
/** Subcommands with commands of their own (`nshub ca serve`): the flags are the command's. */
const NESTED = new Set(["ca"]);
function expectRunnable(argv: string[], where: string): void {
  const [sub, ...rest] = argv;
  const nested = NESTED.has(sub!) ? [rest.shift()!] : [];
  const args = rest;
  expect(SUBCOMMANDS.has(sub!), `${where}: ${sub} is an nshub subcommand`).toBe(true);
  const h = help([sub!, ...nested]);
  expect(h.code, `${where}: nshub ${sub} --help exits 0 (the subcommand is built)`).toBe(0);
  for (const a of args.filter((x) => x.startsWith("--"))) expect(h.text, `${where}: nshub ${sub} takes ${a}`).toContain(a);
}

// ---- Kubernetes ------------------------------------------------------------------------------

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const files = readdirSync(k8sDir).filter((f) => /\.ya?ml$/.test(f)).sort();
const docs: { file: string; doc: Obj }[] = [];
for (const file of files) {
  for (const d of parseAllDocuments(readFileSync(join(k8sDir, file), "utf8"))) {
    if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`);
    const doc = d.toJS();
    if (doc !== null && doc !== undefined) docs.push({ file, doc });
  }
}
const find = (kind: string, name: string): Obj => {
  const hit = docs.find((d) => d.doc.kind === kind && d.doc.metadata?.name === name);
  if (!hit) throw new Error(`no ${kind} ${name} under deploy/kubernetes`);
  return hit.doc;
};

const namespace = docs.find((d) => d.doc.kind === "Namespace")?.doc;
const configMap = find("ConfigMap", "nshub-config");
const agentDs = find("DaemonSet", "nshub-agent");
const proxyDs = find("DaemonSet", "nshub-proxy");
const caDeploy = find("Deployment", "nshub-ca");

/** The ConfigMap's config.yaml, validated by the binary's own loader. */
function configMapConfig(): Config {
  const file = join(tmp, "config.yaml");
  writeFileSync(file, configMap.data["config.yaml"]);
  return loadConfig({ file, env: {} });
}
const config = configMapConfig();

function hostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) };
}

function podSpec(ds: Obj): Obj {
  return ds.spec.template.spec;
}
function volume(ds: Obj, name: string): Obj {
  const v = podSpec(ds).volumes.find((x: Obj) => x.name === name);
  if (!v) throw new Error(`${ds.metadata.name}: no volume ${name}`);
  return v;
}
/** The volume mounted at `path` in container `c` of `ds`, with the mount. */
function mountAt(ds: Obj, c: Obj, path: string): { mount: Obj; vol: Obj } | undefined {
  const mount = (c.volumeMounts ?? []).find((m: Obj) => m.mountPath === path);
  return mount ? { mount, vol: volume(ds, mount.name) } : undefined;
}
/** The hostPath volume mounted in `c` whose host path is `hostPath`, with the mount. */
function hostMount(ds: Obj, c: Obj, hostPath: string): { mount: Obj; vol: Obj } {
  for (const m of c.volumeMounts ?? []) {
    const vol = volume(ds, m.name);
    if (vol.hostPath?.path === hostPath) return { mount: m, vol };
  }
  throw new Error(`${ds.metadata.name}/${c.name}: no mount of host ${hostPath}`);
}
function container(ds: Obj, name: string, init = false): Obj {
  const list: Obj[] = (init ? podSpec(ds).initContainers : podSpec(ds).containers) ?? [];
  const c = list.find((x) => x.name === name);
  if (!c) throw new Error(`${ds.metadata.name}: no ${init ? "init " : ""}container ${name}`);
  return c;
}
function env(c: Obj, name: string): string | undefined {
  return (c.env ?? []).find((e: Obj) => e.name === name)?.value;
}
function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Every container the binary runs in: [workload, container]. */
const allContainers: [Obj, Obj][] = [agentDs, proxyDs, caDeploy].flatMap((ds) =>
  [...(podSpec(ds).initContainers ?? []), ...podSpec(ds).containers].map((c: Obj) => [ds, c] as [Obj, Obj]),
);

describe("deploy/kubernetes", () => {
  test("every file parses; every object has apiVersion, kind and a name, in the nshub namespace unless cluster-scoped", () => {
    expect(files.length).toBeGreaterThanOrEqual(5);
    expect(namespace?.metadata.name).toBe("nshub-system");
    const clusterScoped = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding"]);
    for (const { file, doc } of docs) {
      expect(typeof doc.apiVersion, file).toBe("string");
      expect(typeof doc.kind, file).toBe("string");
      expect(typeof doc.metadata?.name, file).toBe("string");
      if (clusterScoped.has(doc.kind)) expect(doc.metadata.namespace, `${file} ${doc.kind}`).toBeUndefined();
      else expect(doc.metadata.namespace, `${file} ${doc.kind}`).toBe(namespace!.metadata.name);
    }
  });

  test("the ConfigMap's config.yaml passes the binary's config validation", () => {
    expect(config.agent.procRoot).toBe("/host/proc");
    // Both daemons and the plugin agree on the sockets.
    expect(config.proxy.zdsSocket).toBe(config.agent.zdsSocket);
    expect(config.cni.agentSocket).toBe(config.agent.apiSocket);
  });

  test("containers run existing nshub subcommands, with the config file from the ConfigMap", () => {
    expect([...SUBCOMMANDS]).toEqual(expect.arrayContaining(["agent", "proxy", "install", "uninstall"]));
    const ran: string[] = [];
    for (const [ds, c] of allContainers) {
      const cmd: string[] = c.command;
      expect(cmd[0], `${ds.metadata.name}/${c.name}`).toBe("nshub");
      expectRunnable(cmd.slice(1), `${ds.metadata.name}/${c.name}`);
      ran.push(cmd[1]!);
      const cfg = flag(cmd, "--config");
      if (cfg !== undefined) {
        const m = mountAt(ds, c, dirname(cfg));
        expect(m?.vol.configMap?.name).toBe(configMap.metadata.name);
        expect(Object.keys(configMap.data)).toContain(cfg.slice(dirname(cfg).length + 1));
      }
    }
    expect(container(agentDs, "agent").command).toEqual(["nshub", "agent", "--config", "/etc/nshub/config.yaml"]);
    expect(container(proxyDs, "proxy").command).toEqual(["nshub", "proxy", "--config", "/etc/nshub/config.yaml"]);
    expect(container(caDeploy, "ca").command.slice(0, 3)).toEqual(["nshub", "ca", "serve"]);
    expect(container(caDeploy, "ca").command).toContain("--kubernetes");
    expect(ran.sort()).toEqual(["agent", "ca", "install", "proxy"]);
  });

  test("both daemons share the host network and get NET_ADMIN, SYS_ADMIN, NET_RAW with everything else dropped", () => {
    for (const [ds, name] of [
      [agentDs, "agent"],
      [proxyDs, "proxy"],
    ] as const) {
      expect(podSpec(ds).hostNetwork).toBe(true);
      const sc = container(ds, name).securityContext;
      expect(sc.capabilities.add).toEqual(expect.arrayContaining(["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]));
      expect(sc.capabilities.drop).toEqual(["ALL"]);
      expect(sc.privileged).toBe(false);
      expect(sc.runAsUser).toBe(0);
    }
  });

  test("a writable, exec-able TMPDIR on an emptyDir, and a read-only root file system, everywhere", () => {
    for (const [ds, c] of allContainers) {
      const where = `${ds.metadata.name}/${c.name}`;
      expect(c.securityContext.readOnlyRootFilesystem, where).toBe(true);
      const dir = env(c, "TMPDIR");
      expect(dir, where).toBeDefined();
      const m = mountAt(ds, c, dir!);
      expect(m, `${where}: TMPDIR ${dir} is a mount`).toBeDefined();
      expect(m!.vol.emptyDir, `${where}: TMPDIR is an emptyDir`).toBeDefined();
      expect(m!.mount.readOnly ?? false).toBe(false);
    }
  });

  test("the agent mounts the socket dir, host /proc at procRoot, and /var/run/netns with HostToContainer", () => {
    const agent = container(agentDs, "agent");
    const run = hostMount(agentDs, agent, "/var/run/nshub");
    expect(run.vol.hostPath.type).toBe("DirectoryOrCreate");
    expect(run.mount.mountPath).toBe(dirname(config.agent.apiSocket));
    expect(dirname(config.agent.zdsSocket)).toBe(run.mount.mountPath);
    expect(dirname(config.agent.stateFile)).toBe(run.mount.mountPath);

    const proc = hostMount(agentDs, agent, "/proc");
    expect(proc.mount.mountPath).toBe(config.agent.procRoot);
    expect(proc.mount.readOnly).toBe(true);

    const netns = hostMount(agentDs, agent, "/var/run/netns");
    expect(netns.mount.mountPath).toBe("/var/run/netns");
    expect(netns.mount.mountPropagation).toBe("HostToContainer");
  });

  test("the proxy mounts the same socket dir as the agent", () => {
    const m = hostMount(proxyDs, container(proxyDs, "proxy"), "/var/run/nshub");
    expect(m.mount.mountPath).toBe(dirname(config.proxy.zdsSocket));
  });

  test("the install init container: valid flags, pointed at the host's CNI dirs and the agent socket", () => {
    const init = container(agentDs, "install-cni", true);
    const [, sub, ...args] = init.command as string[];
    expect(sub).toBe("install");
    // The same parser the command uses: a typo in the manifest fails here.
    const { values } = parseArgs({ args, options: installFlags, strict: true, allowPositionals: false });
    expect(hostMount(agentDs, init, "/opt/cni/bin").mount.mountPath).toBe(values["cni-bin-dir"]!);
    expect(hostMount(agentDs, init, "/etc/cni/net.d").mount.mountPath).toBe(values["cni-conf-dir"]!);
    expect(values["agent-socket"]).toBe(config.cni.agentSocket);
    // A copy, not a link: a path inside the container means nothing to the host's runtime.
    expect(values.link).toBeUndefined();
  });

  test("readiness probes hit the readiness endpoints at the configured (default) addresses", () => {
    // Agent: /readyz on agent.adminAddress, which stays the schema default (loopback);
    // the probe names the host because kubelet shares the host netns with this pod.
    const agentDefault = agentSchema.parse(undefined).adminAddress;
    expect(config.agent.adminAddress).toBe(agentDefault);
    const a = container(agentDs, "agent").readinessProbe.httpGet;
    expect(a.path).toBe("/readyz");
    expect(a.port).toBe(hostPort(agentDefault).port);
    expect(a.host).toBe(hostPort(agentDefault).host);

    // Proxy: /healthz/ready on proxy.readinessAddress (0.0.0.0:15021), reached at the pod IP.
    const proxyDefault = proxySchema.parse(undefined).readinessAddress;
    expect(config.proxy.readinessAddress).toBe(proxyDefault);
    const p = container(proxyDs, "proxy").readinessProbe.httpGet;
    expect(p.path).toBe("/healthz/ready");
    expect(p.port).toBe(hostPort(proxyDefault).port);
    expect(hostPort(proxyDefault).host).toBe("0.0.0.0");
    expect(p.host).toBeUndefined();
    const ports = container(proxyDs, "proxy").ports.map((x: Obj) => x.containerPort);
    expect(ports).toEqual(expect.arrayContaining([hostPort(config.proxy.metricsAddress).port, p.port]));
  });

  test("the proxy's grace period covers its drain deadline", () => {
    const grace = podSpec(proxyDs).terminationGracePeriodSeconds;
    expect(grace * 1000).toBeGreaterThan(config.proxy.drainDeadlineMs);
    expect(grace * 1000).toBeGreaterThan(proxySchema.parse(undefined).drainDeadlineMs);
  });

  test("selectors match the pod labels", () => {
    for (const ds of [agentDs, proxyDs, caDeploy]) expect(ds.spec.template.metadata.labels).toMatchObject(ds.spec.selector.matchLabels);
  });
});

// ---- Dockerfile ------------------------------------------------------------------------------

describe("deploy/Dockerfile", () => {
  const text = readFileSync(join(deploy, "Dockerfile"), "utf8");
  test("copies the binary onto PATH, with the agent's tools and a TMPDIR", () => {
    expect(text).toMatch(/^FROM debian:12-slim$/m);
    expect(text).toMatch(/^COPY dist\/nshub \/usr\/local\/bin\/nshub$/m);
    for (const pkg of ["iptables", "ipset", "iproute2", "util-linux"]) expect(text).toMatch(new RegExp(`apt-get install[^\\n]*\\b${pkg}\\b`));
    expect(text).toMatch(/^ENV TMPDIR=\/tmp\/nshub$/m);
    for (const [, c] of allContainers) expect(env(c, "TMPDIR")).toBe("/tmp/nshub");
  });
});

// ---- systemd ---------------------------------------------------------------------------------

/** systemd unit files: sections of `Key=Value` lines; a key may repeat. */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let section: Record<string, string[]> | undefined;
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) return;
    const sec = /^\[([A-Za-z]+)\]$/.exec(line);
    if (sec) {
      section = out[sec[1]!] ??= {};
      return;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!kv || !section) throw new Error(`line ${i + 1}: not a section or Key=Value: ${raw}`);
    (section[kv[1]!] ??= []).push(kv[2]!);
  });
  return out;
}

describe("deploy/systemd", () => {
  const unit = (name: string) => parseUnit(readFileSync(join(deploy, "systemd", name), "utf8"));
  const agent = unit("nshub-agent.service");
  const proxy = unit("nshub-proxy.service");
  const one = (u: ReturnType<typeof parseUnit>, key: string) => {
    const v = u.Service?.[key];
    expect(v, key).toHaveLength(1);
    return v![0]!;
  };

  test("ExecStart runs existing subcommands with the config file", () => {
    for (const [u, sub] of [
      [agent, "agent"],
      [proxy, "proxy"],
    ] as const) {
      const argv = one(u, "ExecStart").split(/\s+/);
      expect(argv[0]).toBe("/usr/local/bin/nshub");
      expectRunnable(argv.slice(1), sub);
      expect(argv[1]).toBe(sub);
      expect(flag(argv, "--config")).toBe("/etc/nshub/config.yaml");
      expect(one(u, "Restart")).toBe("always");
      expect(u.Install?.WantedBy).toEqual(["multi-user.target"]);
    }
  });

  test("the proxy starts after the agent and its stop timeout covers the drain deadline", () => {
    expect(proxy.Unit?.After?.join(" ")).toContain("nshub-agent.service");
    expect(proxy.Unit?.Wants?.join(" ")).toContain("nshub-agent.service");
    const stop = Number(one(proxy, "TimeoutStopSec"));
    expect(stop * 1000).toBeGreaterThan(proxySchema.parse(undefined).drainDeadlineMs);
  });

  test("capabilities, the /run/nshub runtime dir, and an exec-able TMPDIR", () => {
    for (const u of [agent, proxy]) {
      for (const key of ["CapabilityBoundingSet", "AmbientCapabilities"]) {
        expect(one(u, key).split(/\s+/)).toEqual(expect.arrayContaining(["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"]));
      }
      expect(one(u, "RuntimeDirectory")).toBe("nshub");
      // Two units share /run/nshub: neither may delete it when it stops.
      expect(one(u, "RuntimeDirectoryPreserve")).toBe("yes");
      expect(`/var/run/${one(u, "RuntimeDirectory")}`).toBe(dirname(agentSchema.parse(undefined).apiSocket));
      // TMPDIR is the unit's CacheDirectory (on the root fs), never /run or a PrivateTmp.
      const tmpdirValue = one(u, "Environment").replace(/^TMPDIR=/, "");
      expect(tmpdirValue).toBe(`/var/cache/${one(u, "CacheDirectory")}`);
      expect(u.Service?.PrivateTmp).toBeUndefined();
    }
  });
});
