// Step 3: `nshub agent` and `nshub proxy` inside the node (this binary runs itself; from source,
// dist/nshub), detached so that --keep can leave them running, each waited on until ready.
import { alive, childEnv, spawnDetached, tail, type RecordedProcess } from "../env.ts";
import { curlIn } from "../observe.ts";
import { AGENT_ADMIN, DemoError, PROXY_READY, type DemoRun } from "../run.ts";

export async function startDaemons(demo: DemoRun): Promise<void> {
  demo.step(3, "starting nshub agent and nshub proxy in the node");
  const exe = demo.bin.exe;
  const cfg = demo.path("config.yaml");
  const agent = demo.addProcess(spawnDetached("agent", demo.node.name, [exe, "agent", "--config", cfg], demo.path("agent.log"), daemonEnv()));
  await waitHttp(demo, `${AGENT_ADMIN}/readyz`, agent, "nshub agent");
  demo.out.info(`agent  pid ${agent.pid}: admin 127.0.0.1:15010, CNI event API ${demo.path("agent.sock")}, ZDS ${demo.path("zds.sock")}; enrolls namespace "demo"`);
  const proxy = demo.addProcess(spawnDetached("proxy", demo.node.name, [exe, "proxy", "--config", cfg], demo.path("proxy.log"), daemonEnv()));
  await waitHttp(demo, `${PROXY_READY}/healthz/ready`, proxy, "nshub proxy");
  demo.out.info(`proxy  pid ${proxy.pid}: connected to the agent over ZDS, got its (empty) snapshot, ready; admin 127.0.0.1:15000, metrics :15020, readiness :15021`);
  demo.out.info(`config ${cfg}   logs ${demo.path("agent.log")}, ${demo.path("proxy.log")}`);
}

/** JSON logs: the demo reads the proxy's access log back (see observe.ts). */
function daemonEnv(): Record<string, string> {
  return childEnv({ NSHUB_LOG_FORMAT: "json" });
}

/** Polls `url` inside the node until it answers 200; fails early if `proc` died. */
async function waitHttp(demo: DemoRun, url: string, proc: RecordedProcess, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    demo.checkInterrupted();
    if (!alive(proc.pid, proc.start)) throw new DemoError(`${what} exited during start-up; the end of its log (${proc.log}):\n${tail(proc.log)}`);
    const a = await curlIn(demo.node, url, 2);
    if (a.status === 200) return;
    last = a.status ? `HTTP ${a.status}: ${a.body.trim()}` : `curl exit ${a.curlCode}`;
    if (Date.now() > deadline) throw new DemoError(`${what} not ready after ${timeoutMs / 1000} s (${url}: ${last}); its log (${proc.log}):\n${tail(proc.log)}`);
    await Bun.sleep(100);
  }
}
