// Step 5: servers. In demo/web (node 1): an HTTP server that answers with the client address it
// saw (`nshub demo --serve-http`, see serve.ts), a socat TCP echo, an iperf3 server. In
// demo/backend (node 2): the same HTTP server and TCP echo, for the cross-node traffic of step 9.
import type { Pod } from "../../sim/namespace.ts";
import { alive, childEnv, spawnDetached, tail, type RecordedProcess } from "../env.ts";
import { DemoError, WEB_ECHO_PORT, WEB_HTTP_PORT, WEB_IPERF_PORT, type DemoNode, type DemoRun } from "../run.ts";

export async function startServers(demo: DemoRun): Promise<void> {
  demo.step(5, "starting servers in demo/web (node-1) and demo/backend (node-2)");
  const { web, backend } = demo.allPods;
  const http = (pod: Pod) => [demo.bin.exe, "demo", "--serve-http", String(WEB_HTTP_PORT), "--name", `${pod.podNamespace}/${pod.podName}`];
  const echo = ["socat", "-d", "-d", `TCP-LISTEN:${WEB_ECHO_PORT},reuseaddr,fork`, "PIPE"];
  await start(demo, demo.n1, web, [
    ["web-http", WEB_HTTP_PORT, http(web), "HTTP, answers with the client address it saw (nshub demo --serve-http)"],
    ["web-echo", WEB_ECHO_PORT, echo, "TCP echo (socat), logs each peer"],
    ["web-iperf3", WEB_IPERF_PORT, ["iperf3", "-s", "-p", String(WEB_IPERF_PORT)], "iperf3 server"],
  ]);
  await start(demo, demo.n2, backend, [
    ["backend-http", WEB_HTTP_PORT, http(backend), "HTTP, the same server"],
    ["backend-echo", WEB_ECHO_PORT, echo, "TCP echo (socat)"],
  ]);
}

async function start(demo: DemoRun, node: DemoNode, pod: Pod, servers: Array<[role: string, port: number, argv: string[], what: string]>): Promise<void> {
  const env = childEnv();
  const started: Array<[RecordedProcess, number, string]> = [];
  for (const [role, port, argv, what] of servers) started.push([demo.addProcess(spawnDetached(role, pod.name, argv, node.path(`${role}.log`), env, node.name)), port, what]);
  for (const [proc, port, what] of started) {
    const deadline = Date.now() + 20_000;
    while (!(await pod.listeningTcpPorts()).includes(port)) {
      demo.checkInterrupted();
      if (!alive(proc.pid, proc.start)) throw new DemoError(`${proc.role} exited; its log (${proc.log}):\n${tail(proc.log)}`);
      if (Date.now() > deadline) throw new DemoError(`${proc.role} does not listen on ${port} after 20 s; its log:\n${tail(proc.log)}`);
      await Bun.sleep(50);
    }
    demo.out.info(`${pod.podNamespace}/${pod.podName} ${pod.ip}:${port}  ${what}  (pid ${proc.pid})`);
  }
}
