// deploy/kubernetes and the Kubernetes API (deploy-manifests.test.ts checks the rest): the RBAC
// is exactly what the code calls — a table naming the code, checked both ways, no "*" — with one
// ServiceAccount per component bound only to its own role; nshub-ca's Deployment, Service and
// Secret as `nshub ca serve` needs them (its directory loaded by the real loader with the
// manifest's file modes); the proxy's and agent's env validated by the real config loader.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { parseAllDocuments } from "yaml";
import { CA_FILES, initCaDir, loadCaDir } from "../../src/identity/ca-dir.ts";
import { readEnv } from "../../src/config/env.ts";
import { loadConfig } from "../../src/config/load.ts";
import { AUTHORIZATION_POLICIES, NAMESPACES, PEER_AUTHENTICATIONS, PODS, type ResourceType } from "../../src/k8s/objects.ts";

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const ROOT = join(import.meta.dir, "../..");
const k8sDir = join(ROOT, "deploy/kubernetes");
const docs: Obj[] = readdirSync(k8sDir)
  .filter((f) => /\.ya?ml$/.test(f))
  .flatMap((f) => parseAllDocuments(readFileSync(join(k8sDir, f), "utf8")).map((d) => d.toJS()))
  .filter((d) => d);
const find = (kind: string, name: string): Obj => docs.find((d) => d.kind === kind && d.metadata?.name === name) ?? expect.unreachable(`no ${kind} ${name}`);
const NS = "nshub-system";
const tmp = mkdtempSync(join(tmpdir(), "nshub-deploy-kube-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

type Component = "agent" | "proxy" | "ca";
const COMPONENTS: Component[] = ["agent", "proxy", "ca"];
const workload: Record<Component, Obj> = { agent: find("DaemonSet", "nshub-agent"), proxy: find("DaemonSet", "nshub-proxy"), ca: find("Deployment", "nshub-ca") };
const spec = (c: Component) => workload[c].spec.template.spec;
const main = (c: Component) => spec(c).containers.find((x: Obj) => x.name === c) ?? expect.unreachable(`no container ${c}`);
const envOf = (c: Component): Record<string, string> => Object.fromEntries((main(c).env ?? []).filter((e: Obj) => "value" in e).map((e: Obj) => [e.name, e.value]));
const flags = (argv: string[], name: string) => argv.flatMap((a, i) => (a === name ? [argv[i + 1]!] : []));

// ---- which code makes which API call -------------------------------------------------------

/** A file that makes informers and names the resource's constant (informers may take it from a list). */
const informerOf = (constant: string) => (text: string) => /new Informer\b/.test(text) && new RegExp(`\\b${constant}\\b`).test(text);
const calls = (re: RegExp) => (text: string) => re.test(text);

interface Use {
  component: Component;
  group: string;
  resource: string;
  verbs: string[];
  /** Where the call is made, and how the test recognises it there. */
  code: string;
  evidence: (text: string) => boolean;
}
const USES: Use[] = [
  { component: "agent", group: "", resource: "pods", verbs: ["list", "watch"], code: "src/agent/kube-view.ts", evidence: informerOf("PODS") },
  { component: "agent", group: "", resource: "pods", verbs: ["patch"], code: "src/agent/kube-view.ts", evidence: calls(/\.patchPodAnnotations\(/) },
  { component: "agent", group: "", resource: "namespaces", verbs: ["list", "watch"], code: "src/agent/kube-view.ts", evidence: informerOf("NAMESPACES") },
  { component: "proxy", group: "", resource: "pods", verbs: ["list", "watch"], code: "src/registry/kube-source.ts", evidence: informerOf("PODS") },
  { component: "proxy", group: "security.istio.io", resource: "authorizationpolicies", verbs: ["list", "watch"], code: "src/policy/kube-source.ts", evidence: informerOf("AUTHORIZATION_POLICIES") },
  { component: "proxy", group: "security.istio.io", resource: "peerauthentications", verbs: ["list", "watch"], code: "src/policy/kube-source.ts", evidence: informerOf("PEER_AUTHENTICATIONS") },
  { component: "ca", group: "authentication.k8s.io", resource: "tokenreviews", verbs: ["create"], code: "src/identity/ca-kube.ts", evidence: calls(/\.createTokenReview\(/) },
  { component: "ca", group: "", resource: "pods", verbs: ["list", "watch"], code: "src/identity/ca-kube.ts", evidence: informerOf("PODS") },
];
/** The code each component's pod runs (the proxy links registry and policy). */
const CODE: Record<Component, string[]> = { agent: ["src/agent"], proxy: ["src/proxy", "src/registry", "src/policy"], ca: ["src/identity/ca-kube.ts", "src/identity/ca-server.ts"] };
const CONSTANTS: Record<string, ResourceType> = { PODS, NAMESPACES, AUTHORIZATION_POLICIES, PEER_AUTHENTICATIONS };

function sources(paths: string[]): { file: string; text: string }[] {
  return paths.flatMap((p) => {
    const abs = join(ROOT, p);
    if (p.endsWith(".ts")) return [{ file: p, text: readFileSync(abs, "utf8") }];
    return (readdirSync(abs, { recursive: true }) as string[]).filter((f) => f.endsWith(".ts")).map((f) => ({ file: relative(ROOT, join(abs, f)), text: readFileSync(join(abs, f), "utf8") }));
  });
}

/** The API calls a component's code makes, as "group/resource:verb", with the file. */
function callsIn(c: Component): Map<string, string> {
  const out = new Map<string, string>();
  for (const { file, text } of sources(CODE[c])) {
    for (const [name, r] of Object.entries(CONSTANTS)) {
      if (informerOf(name)(text)) for (const v of ["list", "watch"]) out.set(`${r.group}/${r.plural}:${v}`, file);
    }
    if (/\.patchPodAnnotations\(/.test(text)) out.set("/pods:patch", file);
    if (/\.createTokenReview\(/.test(text)) out.set("authentication.k8s.io/tokenreviews:create", file);
    // a raw request would need a row this test cannot infer
    expect(text, `${file}: a direct API request; add its verb and resource to USES`).not.toMatch(/\.(?:request|json)\(\s*"(?:GET|POST|PUT|PATCH|DELETE)"|\.(?:list|watch)\(\s*resourcePath\(/);
  }
  return out;
}

function rulesOf(c: Component): Obj[] {
  return find("ClusterRole", `nshub-${c}`).rules;
}

describe("RBAC: exactly the calls the code makes", () => {
  test("no wildcards, no resourceNames or non-resource URLs, and only the three ClusterRoles/bindings", () => {
    const kinds = docs.filter((d) => /Role/.test(d.kind)).map((d) => `${d.kind}/${d.metadata.name}`).sort();
    expect(kinds).toEqual(COMPONENTS.flatMap((c) => [`ClusterRole/nshub-${c}`, `ClusterRoleBinding/nshub-${c}`]).sort());
    for (const c of COMPONENTS) {
      for (const r of rulesOf(c)) {
        expect(Object.keys(r).sort(), `nshub-${c}`).toEqual(["apiGroups", "resources", "verbs"]);
        for (const list of [r.apiGroups, r.resources, r.verbs]) expect(list.join(" "), `nshub-${c}`).not.toContain("*");
      }
    }
  });

  test("every verb and resource granted is in the table, and every row of the table is granted", () => {
    for (const c of COMPONENTS) {
      const granted = new Set(rulesOf(c).flatMap((r: Obj) => r.apiGroups.flatMap((g: string) => r.resources.flatMap((res: string) => r.verbs.map((v: string) => `${g}/${res}:${v}`)))));
      const table = new Set(USES.filter((u) => u.component === c).flatMap((u) => u.verbs.map((v) => `${u.group}/${u.resource}:${v}`)));
      expect([...granted].sort(), `nshub-${c}`).toEqual([...table].sort());
    }
  });

  test("each row's code makes the call, and lies in its component's code", () => {
    for (const u of USES) {
      expect(sources([u.code]).some((s) => u.evidence(s.text)), `${u.component} ${u.group}/${u.resource} ${u.verbs}: ${u.code} does not make the call`).toBe(true);
      expect(CODE[u.component].some((p) => u.code === p || u.code.startsWith(`${p}/`)), `${u.code} runs in nshub-${u.component}`).toBe(true);
    }
  });

  test("every call in each component's code is granted to it", () => {
    for (const c of COMPONENTS) {
      const granted = new Set(USES.filter((u) => u.component === c).flatMap((u) => u.verbs.map((v) => `${u.group}/${u.resource}:${v}`)));
      for (const [call, file] of callsIn(c)) expect(granted.has(call), `${file} makes ${call}, not granted to nshub-${c}`).toBe(true);
    }
    // the scan finds the table, no more
    expect([...callsIn("ca").keys()].sort()).toEqual(["/pods:list", "/pods:watch", "authentication.k8s.io/tokenreviews:create"]);
    expect([...callsIn("agent").keys()].sort()).toEqual(["/namespaces:list", "/namespaces:watch", "/pods:list", "/pods:patch", "/pods:watch"]);
    const proxyCalls = ["/pods:list", "/pods:watch", ...["authorizationpolicies", "peerauthentications"].flatMap((r) => [`security.istio.io/${r}:list`, `security.istio.io/${r}:watch`])];
    expect([...callsIn("proxy").keys()].sort()).toEqual(proxyCalls.sort());
  });

  test("one ServiceAccount per component, used by its workload and bound only to its own role", () => {
    const bindings = docs.filter((d) => d.kind === "ClusterRoleBinding" || d.kind === "RoleBinding");
    for (const c of COMPONENTS) {
      const sa = find("ServiceAccount", `nshub-${c}`);
      expect(sa.metadata.namespace).toBe(NS);
      expect(spec(c).serviceAccountName).toBe(sa.metadata.name);
      // in-cluster credentials for the API (src/k8s loadInCluster)
      expect(spec(c).automountServiceAccountToken).toBe(true);
      const mine = bindings.filter((b) => b.subjects.some((s: Obj) => s.name === sa.metadata.name));
      expect(mine.map((b) => b.metadata.name)).toEqual([`nshub-${c}`]);
      expect(mine[0]!.roleRef).toEqual({ apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: `nshub-${c}` });
      expect(mine[0]!.subjects).toEqual([{ kind: "ServiceAccount", name: sa.metadata.name, namespace: NS }]);
    }
    expect(docs.filter((d) => d.kind === "ServiceAccount").map((d) => d.metadata.name).sort()).toEqual(COMPONENTS.map((c) => `nshub-${c}`).sort());
  });
});

// ---- nshub-ca --------------------------------------------------------------------------------

const caArgs: string[] = main("ca").command;
const caService = find("Service", "nshub-ca");
const port = (addr: string) => Number(addr.slice(addr.lastIndexOf(":") + 1));

describe("nshub-ca", () => {
  test("the Service: gRPC on 15012 and metrics on 15014, to the ports the CA serves, selecting the CA's pods", () => {
    const byName = Object.fromEntries(caService.spec.ports.map((p: Obj) => [p.name, p]));
    expect(byName["grpc-ca"]).toMatchObject({ port: 15012, targetPort: 15012, protocol: "TCP" });
    expect(byName["http-monitoring"]).toMatchObject({ port: 15014, targetPort: 15014, protocol: "TCP" });
    expect(port(flags(caArgs, "--address")[0]!)).toBe(15012);
    expect(port(flags(caArgs, "--metrics-address")[0]!)).toBe(15014);
    expect(main("ca").ports.map((p: Obj) => p.containerPort).sort()).toEqual([15012, 15014]);
    expect(workload.ca.spec.template.metadata.labels).toMatchObject(caService.spec.selector);
    expect(main("ca").readinessProbe.httpGet).toMatchObject({ path: "/ready", port: 15014 });
  });

  test("the proxy reaches it by the Service's DNS name, which the serving certificate carries, and is a node agent it trusts", () => {
    const address = envOf("proxy").NSHUB_PROXY_CA_ADDRESS!;
    expect(address).toBe(`${caService.metadata.name}.${NS}.svc:15012`);
    expect(flags(caArgs, "--server-name")).toContain(address.split(":")[0]!);
    expect(spec("proxy").dnsPolicy).toBe("ClusterFirstWithHostNet"); // hostNetwork, yet cluster DNS
    expect(flags(caArgs, "--node-agent-sa")).toEqual([`${workload.proxy.metadata.namespace}/${spec("proxy").serviceAccountName}`]);
    expect(caArgs).toContain("--kubernetes");
  });

  test("the proxy's token: a projected service-account token for audience istio-ca, the one the CA reviews for, at the token file's path", () => {
    const tokenFile = envOf("proxy").NSHUB_PROXY_CA_TOKEN_FILE!;
    const mount = main("proxy").volumeMounts.find((m: Obj) => m.mountPath === dirname(tokenFile));
    const vol = spec("proxy").volumes.find((v: Obj) => v.name === mount.name);
    const sat = vol.projected.sources[0].serviceAccountToken;
    expect(sat).toMatchObject({ path: basename(tokenFile), audience: "istio-ca" });
    expect(flags(caArgs, "--token-audience")).toEqual([sat.audience]);
    const root = envOf("proxy").NSHUB_PROXY_CA_ROOT_CERT!;
    const rootMount = main("proxy").volumeMounts.find((m: Obj) => m.mountPath === dirname(root));
    expect(spec("proxy").volumes.find((v: Obj) => v.name === rootMount.name).configMap.name).toBe("nshub-ca-root-cert");
    expect(basename(root)).toBe(CA_FILES.root);
  });

  test("the CA directory: every file of `nshub ca init` from the Secret, root-only; the real loader accepts it as mounted", async () => {
    const dir = flags(caArgs, "--dir")[0]!;
    const vol = spec("ca").volumes.find((v: Obj) => v.secret);
    expect(vol.secret.secretName).toBe("nshub-ca");
    const mounts = main("ca").volumeMounts.filter((m: Obj) => m.name === vol.name);
    expect(mounts.map((m: Obj) => m.subPath).sort()).toEqual(Object.values(CA_FILES).sort());
    for (const m of mounts) expect(m).toMatchObject({ mountPath: join(dir, m.subPath), readOnly: true });
    expect(vol.secret.defaultMode & 0o077).toBe(0); // no group or other bits
    expect(main("ca").securityContext).toMatchObject({ runAsUser: 0, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });

    // as the pod sees it: the runtime's 0755 directory, each file with the Secret's mode
    const made = join(tmp, "init");
    await initCaDir({ dir: made, trustDomain: "cluster.local" });
    const mounted = join(tmp, "etc-nshub-ca");
    mkdirSync(mounted, { mode: 0o755 });
    for (const m of mounts) {
      copyFileSync(join(made, m.subPath), join(mounted, m.subPath));
      chmodSync(join(mounted, m.subPath), vol.secret.items?.find((i: Obj) => i.key === m.subPath)?.mode ?? vol.secret.defaultMode);
    }
    expect((await loadCaDir(mounted)).trustDomain).toBe("cluster.local");
    // why one mount per file: a Secret volume's own directory is world-writable, and refused
    chmodSync(mounted, 0o1777);
    await expect(loadCaDir(mounted)).rejects.toThrow("writable by group or others");
  });
});

// ---- env of the daemons ----------------------------------------------------------------------

describe("the daemons' env, through the binary's config loader", () => {
  const configFile = join(tmp, "config.yaml");
  writeFileSync(configFile, find("ConfigMap", "nshub-config").data["config.yaml"]);
  const load = (c: Component) => {
    const env = envOf(c);
    expect(readEnv(env).errors, `nshub-${c}: every NSHUB_* variable is a config key`).toEqual([]);
    return loadConfig({ file: configFile, env });
  };

  test("agent: Kubernetes enrollment on, its node from the downward API", () => {
    expect(load("agent").agent.kubernetes.enabled).toBe(true);
    const node = main("agent").env.find((e: Obj) => e.name === "NODE_NAME");
    expect(node.valueFrom.fieldRef.fieldPath).toBe("spec.nodeName");
  });

  test("proxy: certificates from nshub-ca (source istio, root cert, token file), Kubernetes on", () => {
    const cfg = load("proxy");
    expect(cfg.proxy.ca).toMatchObject({ source: "istio", address: envOf("proxy").NSHUB_PROXY_CA_ADDRESS, rootCert: "/var/run/secrets/istio/root-cert.pem", tokenFile: "/var/run/secrets/tokens/istio-token" });
    expect(cfg.proxy.kubernetes.enabled).toBe(true);
  });
});
