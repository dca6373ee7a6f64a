// End of step 4: each enrolled pod's identity and certificate, on both nodes. Each proxy got its
// pods' service accounts over ZDS (demo/web's and demo/backend's from the CNI ADD, demo/client's
// the default) and asked the demo's CA (ca.ts) for one certificate per identity with its node's
// token; `nshub certs` shows them. The check passes when every enrolled pod's SPIFFE ID has a
// valid certificate listing that pod, and both nodes' certificates chain to the same root.
import { renderCerts, type CertsResponse } from "../../cli/certs.ts";
import type { Pod } from "../../sim/namespace.ts";
import { displayPath } from "../env.ts";
import { curlJson } from "../observe.ts";
import { BACKEND_SERVICE_ACCOUNT, PROXY_ADMIN, TRUST_DOMAIN, WEB_SERVICE_ACCOUNT, type DemoNode, type DemoRun } from "../run.ts";
import { caIssued } from "./ca.ts";
import { nshubInNode } from "./report.ts";

interface Want {
  node: DemoNode;
  pod: Pod;
  identity: string;
}

const idOf = (pod: Pod, sa: string) => `spiffe://${TRUST_DOMAIN}/ns/${pod.podNamespace}/sa/${sa}`;

export async function showIdentities(demo: DemoRun): Promise<void> {
  const { web, client, backend } = demo.allPods;
  const want: Want[] = [
    { node: demo.n1, pod: web, identity: idOf(web, WEB_SERVICE_ACCOUNT) },
    { node: demo.n1, pod: client, identity: idOf(client, "default") },
    { node: demo.n2, pod: backend, identity: idOf(backend, BACKEND_SERVICE_ACCOUNT) },
  ];
  const ready = (node: DemoNode, r: CertsResponse | undefined) =>
    want.filter((w) => w.node === node).every((w) => r?.certificates.some((c) => c.identity === w.identity && c.state === "valid" && c.pods.some((p) => p.uid === w.pod.uid)));
  const certs = new Map<DemoNode, CertsResponse | undefined>();
  for (const node of demo.nodes) {
    const deadline = Date.now() + 20_000;
    for (;;) {
      demo.checkInterrupted();
      certs.set(node, await curlJson<CertsResponse>(node.ns, `${PROXY_ADMIN}/certs`));
      if (ready(node, certs.get(node)) || Date.now() > deadline) break;
      await Bun.sleep(100);
    }
  }

  demo.out.line("");
  demo.out.info("each enrolled pod's identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>) and its certificate, on each node:");
  for (const node of demo.nodes) {
    demo.out.cmd(`ip netns exec ${node.ns.name} ${displayPath(demo.bin.exe)} certs      (${node.name})`);
    const cli = await nshubInNode(demo, ["certs"], node);
    const r = certs.get(node);
    if (cli.ok) demo.out.info(cli.text);
    else demo.out.info(r ? renderCerts(r) : demo.out.dim(`(nshub certs: ${cli.text.split("\n")[0]})`));
  }
  // What the CA says it issued, to which node, from which address.
  const issued = caIssued(demo.ca!.proc.log);
  demo.out.info(`the CA's log (${displayPath(demo.ca!.proc.log)}), "certificate issued":`);
  for (const i of issued) demo.out.info(`  ${i.identity} to ${i.node} (request from ${i.peer.replace(/:\d+$/, "")}), serial ${i.serial}`);

  const rows = want.map((w) => {
    const cert = certs.get(w.node)?.certificates.find((c) => c.identity === w.identity);
    const root = cert?.chain.find((c) => c.root) ?? cert?.chain.at(-1);
    return { node: w.node.name, pod: `${w.pod.podNamespace}/${w.pod.podName}`, identity: w.identity, cert, root: root ? `${root.subject} (serial ${root.serial})` : undefined };
  });
  demo.facts.certificates = rows.map((r) => ({ node: r.node, pod: r.pod, identity: r.identity, state: r.cert?.state ?? "missing", serial: r.cert?.serial ?? null, notAfter: r.cert?.notAfter ?? null, root: r.root ?? null }));
  const roots = new Set(rows.map((r) => r.root));
  const node2Issued = issued.some((i) => i.node === demo.n2.name && i.identity === want[2]!.identity);
  const allValid = demo.nodes.every((n) => ready(n, certs.get(n)));
  const ok = allValid && roots.size === 1 && !roots.has(undefined) && node2Issued;
  const source = certs.get(demo.n1)?.source ?? "?";
  demo.checks.push({
    id: "identity",
    title: "each enrolled pod has its identity's certificate",
    ok,
    detail: ok
      ? rows.map((r) => `${r.pod} (${r.node}) is ${r.identity} (serial ${r.cert!.serial}, valid until ${r.cert!.notAfter!.replace(/\.\d+Z$/, "Z")})`).join("\n") +
        `\nall issued by the demo's CA, nshub ca serve at ${demo.ca!.address} (the proxies' certificate source: ${source}),\none root for both nodes: ${rows[0]!.root}`
      : [
          ...(allValid ? [] : [`not every enrolled pod has a valid certificate: ${rows.map((r) => `${r.pod} ${r.identity}: ${r.cert ? `${r.cert.state}${r.cert.lastError ? ` (${r.cert.lastError})` : ""}` : "none"}`).join("; ")}`]),
          ...(roots.size === 1 && !roots.has(undefined) ? [] : [`the certificates do not share one root: ${[...roots].join(" / ")}`]),
          ...(node2Issued ? [] : [`the CA logged no certificate issued to ${demo.n2.name} for ${want[2]!.identity}`]),
        ].join("\n"),
  });
}
