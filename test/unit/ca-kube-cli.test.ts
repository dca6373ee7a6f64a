// `nshub ca serve --kubernetes` as a command (src/main.ts under bun, not dist/: no build needed):
// its flags reach the server (kubeconfig, node agents, audience), and bad combinations are usage
// errors (exit 2) before anything starts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createCaClient } from "../../src/identity/ca-client.ts";
import { initCaDir } from "../../src/identity/ca-dir.ts";
import { fetchWorkloadCertificate } from "../../src/identity/workload-cert.ts";
import { startStandInApiServer, type StandInApiServer } from "../fixtures/kube-apiserver/server.ts";
import { id, podOf, refusal, saToken } from "../helpers/ca-kube.ts";
import { eventually, namespace } from "../helpers/kube-test.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const tmp = mkdtempSync(join(tmpdir(), "nshub-cakube-cli-"));
const dir = join(tmp, "ca");
let api: StandInApiServer;

beforeAll(async () => {
  await initCaDir({ dir, trustDomain: "cluster.local" });
  api = startStandInApiServer();
  for (const ns of ["shop", "mesh"]) api.put(namespace(ns));
  api.put(podOf("shop", "web-0", "node-1", "web"));
  const agent = api.put(podOf("mesh", "agent-1", "node-1", "node-agent"));
  // a node agent outside nshub-system, with its own audience: only the flags make it trusted
  saToken(api, "agent-token", { ns: "mesh", sa: "node-agent", pod: { name: "agent-1", uid: agent.metadata.uid! }, node: "node-1", audiences: ["nshub-test"] });
  saToken(api, "proxy-token", { pod: { name: "x", uid: "y" }, node: "node-1", audiences: ["nshub-test"] }); // nshub-system/nshub-proxy, the default
});

afterAll(async () => {
  await api?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function run(args: string[]): Promise<{ code: number; out: string }> {
  const p = Bun.spawn([process.execPath, MAIN, "ca", "serve", ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [o, e, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out: o + e };
}

describe("nshub ca serve --kubernetes (a process)", () => {
  test("--kubeconfig, --node-agent-sa and --token-audience reach the server: the named agent is served, the default one is not", async () => {
    const p = Bun.spawn(
      [process.execPath, MAIN, "ca", "serve", "--dir", dir, "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", "--server-name", "localhost",
        "--kubernetes", "--kubeconfig", api.kubeconfigPath, "--node-agent-sa", "mesh/node-agent", "--token-audience", "nshub-test"],
      { stdout: "ignore", stderr: "pipe", env: { ...process.env, NSHUB_LOG_FORMAT: "json" } },
    );
    const lines: Record<string, unknown>[] = [];
    void (async () => {
      let rest = "";
      for await (const chunk of p.stderr as ReadableStream<Uint8Array>) {
        rest += new TextDecoder().decode(chunk);
        const parts = rest.split("\n");
        rest = parts.pop()!;
        for (const l of parts) if (l.startsWith("{")) lines.push(JSON.parse(l));
      }
    })();
    try {
      const end = Date.now() + 15_000;
      let started: Record<string, unknown> | undefined;
      while (!(started = lines.find((l) => l.msg === "serving IstioCertificateService")) && Date.now() < end) await Bun.sleep(20);
      expect(started).toMatchObject({ kubernetes: api.url, nodeAgents: ["mesh/node-agent"], tokenAudiences: ["nshub-test"] });
      const port = Number(String(started!.address).split(":").pop());
      const client = (token: string) => createCaClient({ address: `localhost:${port}`, caRoots: readFileSync(join(dir, "root-cert.pem"), "utf8"), token });
      const ok = client("agent-token");
      const other = client("proxy-token");
      try {
        // UNAVAILABLE until the first list: poll until served
        let served = false;
        while (!served && Date.now() < end) served = await fetchWorkloadCertificate(ok, id("shop", "web"), 600).then(() => true, () => false);
        expect(served).toBe(true);
        await eventually(() => lines.some((l) => l.msg === "certificate issued"), "the issuance log line");
        expect(lines.find((l) => l.msg === "certificate issued")).toMatchObject({ node: "node-1", via: "kubernetes", serviceAccount: "mesh/node-agent" });
        expect((await refusal(fetchWorkloadCertificate(other, id("shop", "web"), 600))).message).toContain("service account nshub-system/nshub-proxy is not a node agent of this CA (trusted: mesh/node-agent");
      } finally {
        ok.close();
        other.close();
      }
    } finally {
      p.kill("SIGTERM");
      expect(await p.exited).toBe(0);
    }
  }, 30_000);

  test("usage errors, exit 2: Kubernetes flags without --kubernetes, a malformed --node-agent-sa", async () => {
    const a = await run(["--dir", dir, "--kubeconfig", api.kubeconfigPath]);
    expect(a.code).toBe(2);
    expect(a.out).toContain("--kubeconfig needs --kubernetes");
    const b = await run(["--dir", dir, "--kubernetes", "--kubeconfig", api.kubeconfigPath, "--node-agent-sa", "nshub-proxy"]);
    expect(b.code).toBe(2);
    expect(b.out).toContain("--node-agent-sa: expected <namespace>/<service account>");
  });

  test("--help names the Kubernetes flags and the order callers are taken in", async () => {
    const h = await run(["--help"]);
    expect(h.code).toBe(0);
    for (const f of ["--kubernetes", "--kubeconfig", "--node-agent-sa", "--token-audience", "nshub-system/nshub-proxy", "istio-ca"]) expect(h.out).toContain(f);
  });
});
