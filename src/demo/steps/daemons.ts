// Step 3: on each node `nshub agent`, then the demo's CA (ca.ts: a pod of node 1, so the agents
// must run first: pods are made through the CNI chain, which reports to the agent), then on each
// node `nshub proxy` with the CA in its config. This binary runs itself (from source,
// dist/nshub), detached so that --keep can leave them running, each waited on until ready.
import { alive, childEnv, spawnDetached, tail, type RecordedProcess } from "../env.ts";
import { curlIn } from "../observe.ts";
import { AGENT_ADMIN, DemoError, PROXY_READY, type DemoNode, type DemoRun } from "../run.ts";
import { startCa } from "./ca.ts";

export async function startDaemons(demo: DemoRun): Promise<void> {
  demo.step(3, "starting each node's nshub agent, the CA, and each node's nshub proxy");
  const exe = demo.bin.exe;
  for (const n of demo.nodes) {
    const agent = demo.addProcess(spawnDetached("agent", n.ns.name, [exe, "agent", "--config", n.path("config.yaml")], n.path("agent.log"), daemonEnv(), n.name));
    await waitHttp(demo, n, `${AGENT_ADMIN}/readyz`, agent, `${n.name}'s nshub agent`);
    demo.out.info(`agent  ${n.name} pid ${agent.pid}: admin 127.0.0.1:15010, CNI event API ${n.path("agent.sock")}, ZDS ${n.path("zds.sock")}; enrolls namespace "demo"`);
  }
  await startCa(demo);
  for (const n of demo.nodes) {
    const proxy = demo.addProcess(spawnDetached("proxy", n.ns.name, [exe, "proxy", "--config", n.path("config.yaml")], n.path("proxy.log"), daemonEnv(), n.name));
    await waitHttp(demo, n, `${PROXY_READY}/healthz/ready`, proxy, `${n.name}'s nshub proxy`);
    demo.out.info(`proxy  ${n.name} pid ${proxy.pid}: connected to its agent over ZDS, ready; admin 127.0.0.1:15000, metrics :15020, readiness :15021;`);
    demo.out.info(`       certificates from the CA at ${demo.ca!.address}${n === demo.n1 ? "" : " (across the fabric)"} with ${n.name}'s token`);
  }
  for (const n of demo.nodes) demo.out.info(`config ${n.path("config.yaml")}   logs ${n.path("agent.log")}, ${n.path("proxy.log")}`);
}

/** JSON logs: the demo reads the proxy's access log back (see observe.ts). */
function daemonEnv(): Record<string, string> {
  return childEnv({ NSHUB_LOG_FORMAT: "json" });
}

/** Polls `url` inside the node until it answers 200; fails early if `proc` died. */
async function waitHttp(demo: DemoRun, node: DemoNode, url: string, proc: RecordedProcess, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    demo.checkInterrupted();
    if (!alive(proc.pid, proc.start)) throw new DemoError(`${what} exited during start-up; the end of its log (${proc.log}):\n${tail(proc.log)}`);
    const a = await curlIn(node.ns, url, 2);
    if (a.status === 200) return;
    last = a.status ? `HTTP ${a.status}: ${a.body.trim()}` : `curl exit ${a.curlCode}`;
    if (Date.now() > deadline) throw new DemoError(`${what} not ready after ${timeoutMs / 1000} s (${url}: ${last}); its log (${proc.log}):\n${tail(proc.log)}`);
    await Bun.sleep(100);
  }
}
