// End of step 4: each enrolled pod's identity and certificate. The proxy got the pods' service
// accounts over ZDS (demo/web's from the CNI ADD, demo/client's the default) and signed one
// certificate per identity with the demo's local CA; `nshub certs` shows them. The check passes
// when every enrolled pod's SPIFFE ID has a valid certificate listing that pod.
import { renderCerts, type CertsResponse } from "../../cli/certs.ts";
import { displayPath } from "../env.ts";
import { curlJson } from "../observe.ts";
import { PROXY_ADMIN, TRUST_DOMAIN, WEB_SERVICE_ACCOUNT, type DemoRun } from "../run.ts";
import { nshubInNode } from "./report.ts";

export async function showIdentities(demo: DemoRun): Promise<void> {
  const { web, client } = demo.allPods;
  const want = [
    { pod: web, identity: `spiffe://${TRUST_DOMAIN}/ns/${web.podNamespace}/sa/${WEB_SERVICE_ACCOUNT}` },
    { pod: client, identity: `spiffe://${TRUST_DOMAIN}/ns/${client.podNamespace}/sa/default` },
  ];
  const ready = (r: CertsResponse | undefined) =>
    want.every((w) => r?.certificates.some((c) => c.identity === w.identity && c.state === "valid" && c.pods.some((p) => p.uid === w.pod.uid)));
  let certs: CertsResponse | undefined;
  const deadline = Date.now() + 15_000;
  for (;;) {
    demo.checkInterrupted();
    certs = await curlJson<CertsResponse>(demo.node, `${PROXY_ADMIN}/certs`);
    if (ready(certs) || Date.now() > deadline) break;
    await Bun.sleep(100);
  }

  demo.out.line("");
  demo.out.info("each enrolled pod's identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>) and its certificate:");
  demo.out.cmd(`ip netns exec ${demo.node.name} ${displayPath(demo.bin.exe)} certs`);
  const cli = await nshubInNode(demo, ["certs"]);
  if (cli.ok) demo.out.info(cli.text);
  else demo.out.info(certs ? renderCerts(certs) : demo.out.dim(`(nshub certs: ${cli.text.split("\n")[0]})`));

  const rows = want.map((w) => ({ pod: `${w.pod.podNamespace}/${w.pod.podName}`, identity: w.identity, cert: certs?.certificates.find((c) => c.identity === w.identity) }));
  demo.facts.certificates = rows.map((r) => ({ pod: r.pod, identity: r.identity, state: r.cert?.state ?? "missing", serial: r.cert?.serial ?? null, notAfter: r.cert?.notAfter ?? null }));
  const ok = ready(certs);
  demo.checks.push({
    id: "identity",
    title: "each enrolled pod has its identity's certificate",
    ok,
    detail: ok
      ? rows.map((r) => `${r.pod} is ${r.identity} (serial ${r.cert!.serial}, valid until ${r.cert!.notAfter!.replace(/\.\d+Z$/, "Z")})`).join("\n") + `\nsigned by the demo's local CA (${certs!.source})`
      : `not every enrolled pod has a valid certificate: ${rows.map((r) => `${r.pod} ${r.identity}: ${r.cert ? `${r.cert.state}${r.cert.lastError ? ` (${r.cert.lastError})` : ""}` : "none"}`).join("; ")}`,
  });
}
