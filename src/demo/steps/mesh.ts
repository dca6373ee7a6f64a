// End of step 4: each node's proxy learns the other node's pods. A proxy knows the pods it serves
// (ZDS) by itself; the other node's come from its proxy.workloadsFile, in ztunnel's local-config
// format, which the demo writes now that the pods have their IPs (the proxy re-reads the file
// when it changes). A destination listed there with protocol HBONE is reached over mutual TLS to
// its port 15008, and must present the identity of its service account.
import { writeFileSync } from "node:fs";
import type { Pod } from "../../sim/namespace.ts";
import { displayPath } from "../env.ts";
import { curlJson } from "../observe.ts";
import { BACKEND_SERVICE_ACCOUNT, DemoError, PROXY_ADMIN, WEB_SERVICE_ACCOUNT, type DemoNode, type DemoRun } from "../run.ts";
import { nshubInNode } from "./report.ts";

interface Entry {
  pod: Pod;
  serviceAccount: string;
  node: DemoNode;
}

export async function shareWorkloads(demo: DemoRun): Promise<void> {
  const { web, client, backend } = demo.allPods;
  const { n1, n2 } = demo;
  const files: Array<[DemoNode, Entry[]]> = [
    [n1, [{ pod: backend, serviceAccount: BACKEND_SERVICE_ACCOUNT, node: n2 }]],
    [
      n2,
      [
        { pod: web, serviceAccount: WEB_SERVICE_ACCOUNT, node: n1 },
        { pod: client, serviceAccount: "default", node: n1 },
      ],
    ],
  ];
  for (const [node, entries] of files) writeFileSync(node.path("workloads.yaml"), localConfig(entries));

  // Until each proxy's registry has them, its traffic to them would be plaintext.
  const deadline = Date.now() + 15_000;
  for (const [node, entries] of files) {
    for (;;) {
      demo.checkInterrupted();
      const r = await curlJson<{ workloads: { uid: string; protocol: string }[] }>(node.ns, `${PROXY_ADMIN}/workloads`);
      if (entries.every((e) => r?.workloads.some((w) => w.uid === e.pod.uid && w.protocol === "HBONE"))) break;
      if (Date.now() > deadline) throw new DemoError(`${node.name}'s proxy did not take ${node.path("workloads.yaml")} in 15 s (GET /workloads: ${JSON.stringify(r?.workloads.map((w) => w.uid) ?? null)})`);
      await Bun.sleep(100);
    }
  }

  demo.out.line("");
  demo.out.info(`each proxy's workloads file names the other node's pods (ztunnel's local-config format), e.g. ${displayPath(n1.path("workloads.yaml"))}:`);
  demo.out.info(localConfig(files[0]![1]).trimEnd(), 8);
  demo.out.cmd(`ip netns exec ${n1.ns.name} ${displayPath(demo.bin.exe)} workloads --admin 127.0.0.1:15000      (node-1's registry: its own pods from ZDS + node-2's from the file)`);
  const cli = await nshubInNode(demo, ["workloads", "--admin", "127.0.0.1:15000"], n1);
  demo.out.info(cli.ok ? cli.text : demo.out.dim(`(nshub workloads: ${cli.text.split("\n")[0]})`));
  demo.facts.workloadsFiles = files.map(([node, entries]) => ({ node: node.name, file: node.path("workloads.yaml"), names: entries.map((e) => `${e.pod.podNamespace}/${e.pod.podName}`) }));
}

function localConfig(entries: Entry[]): string {
  const lines = ["workloads:"];
  for (const e of entries) {
    lines.push(
      `- uid: ${e.pod.uid}`,
      `  name: ${e.pod.podName}`,
      `  namespace: ${e.pod.podNamespace}`,
      `  serviceAccount: ${e.serviceAccount}`,
      `  workloadIps: ["${e.pod.ip}"]`,
      `  protocol: HBONE`,
      `  node: ${e.node.name}`,
      `  services: {}`,
    );
  }
  return lines.join("\n") + "\n";
}
