// Step 5: servers in demo/web: an HTTP server that answers with the client address it saw
// (`nshub demo --serve-http`, see serve.ts), a socat TCP echo, an iperf3 server.
import { alive, childEnv, spawnDetached, tail, type RecordedProcess } from "../env.ts";
import { DemoError, WEB_ECHO_PORT, WEB_HTTP_PORT, WEB_IPERF_PORT, type DemoRun } from "../run.ts";

export async function startServers(demo: DemoRun): Promise<void> {
  demo.step(5, "starting servers in demo/web");
  const web = demo.pods.web!;
  const env = childEnv();
  const servers: Array<[string, number, string[], string]> = [
    ["web-http", WEB_HTTP_PORT, [demo.bin.exe, "demo", "--serve-http", String(WEB_HTTP_PORT), "--name", "demo/web"], "HTTP, answers with the client address it saw (nshub demo --serve-http)"],
    ["web-echo", WEB_ECHO_PORT, ["socat", "-d", "-d", `TCP-LISTEN:${WEB_ECHO_PORT},reuseaddr,fork`, "PIPE"], "TCP echo (socat), logs each peer"],
    ["web-iperf3", WEB_IPERF_PORT, ["iperf3", "-s", "-p", String(WEB_IPERF_PORT)], "iperf3 server"],
  ];
  const started: Array<[RecordedProcess, number, string]> = [];
  for (const [role, port, argv, what] of servers) started.push([demo.addProcess(spawnDetached(role, web.name, argv, demo.path(`${role}.log`), env)), port, what]);
  for (const [proc, port, what] of started) {
    const deadline = Date.now() + 20_000;
    while (!(await web.listeningTcpPorts()).includes(port)) {
      demo.checkInterrupted();
      if (!alive(proc.pid, proc.start)) throw new DemoError(`${proc.role} exited; its log (${proc.log}):\n${tail(proc.log)}`);
      if (Date.now() > deadline) throw new DemoError(`${proc.role} does not listen on ${port} after 20 s; its log:\n${tail(proc.log)}`);
      await Bun.sleep(50);
    }
    demo.out.info(`${web.ip}:${port}  ${what}  (pid ${proc.pid})`);
  }
}
