// Steps 6 and 7: real traffic to demo/web. From demo/client (enrolled): curl, a TCP echo that is
// kept open for step 8, a 1 s iperf3 burst. From other/outsider (not enrolled): the same curl.
import { formatBytes } from "../../cli/admin-client.ts";
import type { Pod } from "../../sim/namespace.ts";
import { childEnv } from "../env.ts";
import { DemoError, ECHO_TEXT, WEB_ECHO_PORT, WEB_HTTP_PORT, WEB_IPERF_PORT, type DemoRun, type HttpReply } from "../run.ts";

export async function sendTraffic(demo: DemoRun): Promise<void> {
  demo.step(6, "sending traffic from demo/client to demo/web");
  const { web, client } = demo.allPods;
  await curlWeb(demo, client, "http");
  // TCP echo, left open so that step 8 can show it live
  const echo = (demo.echo = client.spawn(["socat", "-t", "5", "-T", "30", "-", `TCP:${web.ip}:${WEB_ECHO_PORT}`], { stdin: true, env: childEnv() }));
  const sink = echo.proc.stdin as unknown as { write(s: string): void; flush(): void };
  sink.write(`${ECHO_TEXT}\n`);
  sink.flush();
  try {
    await echo.waitForOutput(new RegExp(ECHO_TEXT), 10_000);
  } catch (e) {
    throw new DemoError(`the TCP echo through the proxy did not come back: ${(e as Error).message}`);
  }
  demo.cmdIn(client, `socat - TCP:${web.ip}:${WEB_ECHO_PORT}   (TCP echo, stays open until step 8)`);
  demo.out.info(`  → sent "${ECHO_TEXT}", got "${ECHO_TEXT}" back`);
  demo.facts.echo = { from: "demo/client", to: `${web.ip}:${WEB_ECHO_PORT}`, text: ECHO_TEXT };
  // iperf3
  const ip = await client.exec(["iperf3", "-c", web.ip, "-p", String(WEB_IPERF_PORT), "-t", "1", "-J"], { timeoutMs: 30_000, env: childEnv() });
  let iperf: { bytes: number; bitsPerSecond: number; seconds: number } | undefined;
  try {
    const j = JSON.parse(ip.stdout) as { end?: { sum_received?: { bytes: number; bits_per_second: number; seconds: number } }; error?: string };
    if (j.end?.sum_received) iperf = { bytes: j.end.sum_received.bytes, bitsPerSecond: j.end.sum_received.bits_per_second, seconds: j.end.sum_received.seconds };
    else if (j.error) throw new DemoError(`iperf3 failed: ${j.error}`);
  } catch (e) {
    if (e instanceof DemoError) throw e;
  }
  if (ip.code !== 0 || !iperf) throw new DemoError(`iperf3 from demo/client failed (exit ${ip.code}): ${ip.stderr.trim() || ip.stdout.slice(0, 500)}`);
  demo.cmdIn(client, `iperf3 -c ${web.ip} -p ${WEB_IPERF_PORT} -t 1`);
  demo.out.info(`  → ${formatBytes(iperf.bytes)} in ${iperf.seconds.toFixed(1)} s, ${(iperf.bitsPerSecond / 1e9).toFixed(2)} Gbit/s — through the proxy twice (client's outbound, web's inbound)`);
  demo.facts.iperf3 = iperf;
}

export async function sendFromOutsider(demo: DemoRun): Promise<void> {
  demo.step(7, "the same request from other/outsider (namespace not enrolled)");
  await curlWeb(demo, demo.allPods.outsider, "outsiderHttp");
}

/** curl demo/web's HTTP server from `pod`: shows the command and the answer, keeps it as `fact`. */
async function curlWeb(demo: DemoRun, pod: Pod, fact: "http" | "outsiderHttp"): Promise<void> {
  const url = `http://${demo.allPods.web.ip}:${WEB_HTTP_PORT}/`;
  const reply = await httpFrom(pod, url);
  demo.cmdIn(pod, `curl ${url}`);
  demo.out.info(`  → ${JSON.stringify(reply)}`);
  demo.facts[fact] = { from: `${pod.podNamespace}/${pod.podName}`, url, reply };
}

export async function httpFrom(pod: Pod, url: string): Promise<HttpReply> {
  const r = await pod.exec(["curl", "-sS", "-m", "10", url], { timeoutMs: 20_000, env: childEnv() });
  try {
    const j = JSON.parse(r.stdout) as HttpReply;
    if (typeof j.client === "string") return j;
  } catch {
    // below
  }
  throw new DemoError(`curl ${url} from ${pod.podNamespace}/${pod.podName} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
}
