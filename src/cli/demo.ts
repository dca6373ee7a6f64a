// `nshub demo`: nshub working on a virtual node, in one command.
//
//   1. checks the machine (root, iproute2, iptables, ipset, socat, curl, iperf3, CNI plugins);
//   2. builds a node out of network namespaces (src/sim/netsim.ts, prefix "nshd-"): a namespace
//      with a bridge and no uplink, and a private CNI dir + conflist in which nshub-cni (this
//      binary, linked as nshub-cni) is chained after loopback, bridge and host-local;
//   3. starts `nshub agent` and `nshub proxy` inside the node (this binary runs itself; from
//      source, dist/nshub) as detached processes with a generated config;
//   4. creates pods through that chain: demo/web and demo/client (enrolled namespace "demo"),
//      other/outsider (not enrolled);
//   5. starts servers in demo/web: an HTTP server that answers with the client address it saw
//      (`nshub demo --serve-http`, see demo-serve.ts), a socat TCP echo, an iperf3 server;
//   6. sends real traffic from demo/client: curl, a TCP echo (kept open), a 1 s iperf3 burst;
//   7. sends the same HTTP request from other/outsider;
//   8. shows what the proxy saw: `nshub pods`, `nshub connections`, the captured connections,
//      what the servers saw, the metrics that moved;
//   9. tears everything down (also on Ctrl-C, SIGTERM or any failure) — or, with --keep, leaves
//      it running, records it in /run/nshub-demo/ and prints how to explore it and remove it
//      (`nshub demo --down`, which works from any later process).
// Then a summary of ✔/✘ checks; exit 0 only when all passed.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { cleanupStale, createSim, listNetns, run, type NetSim, type Pod, type SimProcess } from "../sim/netsim.ts";
import { formatBytes, renderTable } from "./admin-client.ts";
import {
  alive,
  childEnv,
  createWorkDir,
  DEMO_PREFIX,
  deleteNetnsHard,
  displayPath,
  missingPrerequisites,
  missingText,
  processesMentioning,
  readRecords,
  recordStatus,
  resolveBinary,
  spawnDetached,
  stopProcesses,
  tagNamespaces,
  tail,
  teardownRecord,
  writeRecord,
  type DemoBinary,
  type DemoRecord,
  type RecordedProcess,
} from "./demo-env.ts";
import { curlIn, curlJson, deltaOf, ipOf, parsePrometheus, readConnections, renderConnections, renderMetricsDelta, snapshotOf, type Conn, type MetricsSnapshot } from "./demo-observe.ts";
import { serveHttp } from "./demo-serve.ts";

const HELP = `usage: nshub demo [--keep] [--json]
       nshub demo --down

Builds a virtual Kubernetes node out of network namespaces on this machine, starts the nshub
agent and proxy in it, creates pods through a real CNI chain (loopback, bridge, host-local, then
nshub-cni), sends real traffic between them (curl, a TCP echo, iperf3) and shows what the proxy
captured: pods, connections with the client IP the server saw, metrics. Everything stays inside
namespaces the demo creates (the node has no uplink) and is removed at the end, also on Ctrl-C.
Needs root, iproute2, iptables, ipset, socat, curl, iperf3 and containernetworking-plugins
(scripts/demo installs them on Debian/Ubuntu). Takes about 5 to 10 seconds.

  --keep     leave the node, pods, agent and proxy running and print how to explore them
  --down     tear down a demo left running with --keep (works from any shell)
  --json     print a machine-readable summary on stdout (progress goes to stderr)
  -h, --help this text

exit status: 0 when every check passed, 1 when one failed or the demo could not run,
130/143 when interrupted (after tearing down).`;

const STEPS = 9;
const WEB_HTTP_PORT = 8080;
const WEB_ECHO_PORT = 9000;
const WEB_IPERF_PORT = 5201;
const AGENT_ADMIN = "http://127.0.0.1:15010";
const PROXY_ADMIN = "http://127.0.0.1:15000";
const PROXY_METRICS = "http://127.0.0.1:15020";
const PROXY_READY = "http://127.0.0.1:15021";
const ECHO_TEXT = "hello through nshub";

export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      keep: { type: "boolean" },
      down: { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      // internal: the web server the demo runs inside demo/web (see demo-serve.ts)
      "serve-http": { type: "string" },
      name: { type: "string" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values["serve-http"] !== undefined) return serveHttp(Number(values["serve-http"]), values.name ?? "web");
  if (values.down) {
    if (values.keep) {
      console.error("nshub demo: --down and --keep do not go together\nsee: nshub demo --help");
      return 2;
    }
    return down(new Printer(values.json === true), values.json === true);
  }
  return new Demo({ keep: values.keep === true, json: values.json === true }).run();
}

// ---------------------------------------------------------------------------------------------
// output

const useColor = () => process.stdout.isTTY === true && !process.env.NO_COLOR;

class Printer {
  private readonly color: boolean;
  /** Set after Ctrl-C while the step in progress winds down: its output would only confuse. */
  muted = false;
  constructor(readonly toStderr: boolean) {
    this.color = !toStderr && useColor();
  }
  line(text = ""): void {
    if (!this.muted) (this.toStderr ? process.stderr : process.stdout).write(text + "\n");
  }
  bold(s: string): string {
    return this.color ? `\x1b[1m${s}\x1b[0m` : s;
  }
  dim(s: string): string {
    return this.color ? `\x1b[2m${s}\x1b[0m` : s;
  }
  mark(ok: boolean): string {
    if (!this.color) return ok ? "✔" : "✘";
    return ok ? "\x1b[32m✔\x1b[0m" : "\x1b[31m✘\x1b[0m";
  }
  step(n: number, text: string): void {
    this.line(this.bold(`[${n}/${STEPS}] ${text} …`));
  }
  /** Detail lines under a step, indented. */
  info(text: string, indent = 6): void {
    for (const l of text.split("\n")) this.line(l === "" ? "" : " ".repeat(indent) + l);
  }
  cmd(text: string): void {
    this.info(this.dim(`$ ${text}`));
  }
}

// ---------------------------------------------------------------------------------------------
// the demo

interface Check {
  id: "enrolled" | "captured-outbound" | "captured-inbound" | "source-ip" | "not-captured" | "bytes" | "teardown";
  title: string;
  ok: boolean;
  detail: string;
}

/** A failure the operator can act on: printed as is, without a stack. */
class DemoError extends Error {
  override name = "DemoError";
}

class Interrupted extends Error {
  override name = "Interrupted";
}

interface HttpReply {
  server: string;
  client: string;
}

interface TeardownOutcome {
  ok: boolean;
  detail: string;
}

class Demo {
  private readonly out: Printer;
  private readonly bin: DemoBinary;
  private readonly checks: Check[] = [];
  private sim: NetSim | undefined;
  private record: DemoRecord | undefined;
  private pods: { web?: Pod; client?: Pod; outsider?: Pod } = {};
  private echo: SimProcess | undefined;
  private interruptedBy: NodeJS.Signals | undefined;
  private rejectInterrupt: (e: Error) => void = () => undefined;
  private readonly facts: Record<string, unknown> = {};
  private explore: string[] = [];

  constructor(private readonly opts: { keep: boolean; json: boolean }) {
    this.out = new Printer(opts.json);
    this.bin = resolveBinary();
  }

  private get node() {
    return this.sim!.node;
  }

  private get workDir(): string {
    return this.record!.workDir;
  }

  private path(name: string): string {
    return join(this.workDir, name);
  }

  async run(): Promise<number> {
    const interrupted = new Promise<never>((_, reject) => (this.rejectInterrupt = reject));
    interrupted.catch(() => undefined);
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.interruptedBy) {
        process.stderr.write(`${sig} again: still tearing down, please wait (it takes a few seconds)\n`);
        return;
      }
      this.interruptedBy = sig;
      this.out.line("");
      this.out.line(`${sig === "SIGINT" ? "Ctrl-C" : sig}: stopping and tearing everything down …`);
      this.out.muted = true;
      this.rejectInterrupt(new Interrupted(sig));
    };
    const onInt = () => onSignal("SIGINT");
    const onTerm = () => onSignal("SIGTERM");
    const onHup = () => onSignal("SIGHUP");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
    process.on("SIGHUP", onHup);

    this.out.line(this.out.bold("nshub demo — a virtual Kubernetes node in network namespaces, with live captured traffic"));
    this.out.line("");
    let error: unknown;
    let kept = false;
    const flow = this.flow();
    flow.catch(() => undefined);
    try {
      await Promise.race([flow, interrupted]);
      kept = this.opts.keep;
    } catch (e) {
      error = e;
      if (e instanceof Interrupted) {
        // Let the step in progress finish (each is bounded) so nothing is created behind the teardown.
        await Promise.race([flow.catch(() => undefined), Bun.sleep(15_000)]);
        this.out.muted = false;
      }
    }

    let teardown: TeardownOutcome | undefined;
    if (!kept) {
      if (error && !(error instanceof Interrupted)) this.reportError(error);
      // Nothing to undo when the demo stopped before creating anything (e.g. a prerequisite).
      if (this.record) {
        this.out.step(STEPS, error instanceof Interrupted ? "tearing down" : error ? "tearing down after the failure" : "tearing down");
        teardown = await this.teardown();
        this.out.info(teardown.detail);
      }
    }
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
    process.off("SIGHUP", onHup);

    if (teardown) this.checks.push({ id: "teardown", title: "clean teardown", ok: teardown.ok, detail: teardown.detail });
    const allOk = !error && this.checks.length > 0 && this.checks.every((c) => c.ok);
    this.printSummary(allOk, error, kept);
    if (this.opts.json) process.stdout.write(JSON.stringify(this.jsonSummary(allOk, error, kept, teardown), null, 2) + "\n");
    if (this.interruptedBy) return this.interruptedBy === "SIGINT" ? 130 : this.interruptedBy === "SIGTERM" ? 143 : 129;
    return allOk ? 0 : 1;
  }

  private checkInterrupted(): void {
    if (this.interruptedBy) throw new Interrupted(this.interruptedBy);
  }

  private step(n: number, text: string): void {
    this.checkInterrupted();
    this.out.step(n, text);
  }

  // -------------------------------------------------------------------------------------------

  private async flow(): Promise<void> {
    await this.stepPrerequisites();
    await this.stepNode();
    await this.stepDaemons();
    await this.stepPods();
    await this.stepServers();
    const before = await this.metrics();
    await this.stepTraffic();
    await this.stepOutsider();
    await this.stepObserve(before);
    if (this.opts.keep) this.stepKeep();
  }

  private async stepPrerequisites(): Promise<void> {
    this.step(1, "checking prerequisites");
    const missing = missingPrerequisites(this.bin);
    if (missing.length) throw new DemoError(`this machine lacks what the demo needs:\n${missingText(missing)}`);
    if (this.bin.fromSource) {
      this.out.info(`running from source: the agent, the proxy, the CNI plugin and the web server are ${displayPath(this.bin.exe)}`);
      const r = await run([this.bin.exe, "demo", "--help"], { timeoutMs: 20_000 });
      if (r.code !== 0) throw new DemoError(`${displayPath(this.bin.exe)} was built before nshub demo existed: rebuild it with scripts/build`);
    }
    // Demos from earlier runs: remove what an interrupted one left; refuse to wipe a kept one.
    for (const rec of await readRecords()) {
      const status = recordStatus(rec);
      if (status === "running") {
        this.out.info(`another demo is running (pid ${rec.ownerPid}, node ${rec.nodeNetns ?? "being built"}); this one runs next to it`);
      } else if (status === "kept") {
        throw new DemoError(
          `a demo left running with --keep is still there (node ${rec.nodeNetns ?? "?"}, started ${rec.startedAt}).\n` +
            `tear it down first:  ${displayPath(this.bin.exe)} demo --down`,
        );
      } else {
        const r = await teardownRecord(rec);
        this.out.info(`removed the leftovers of an interrupted demo (${plural(r.namespaces.length, "namespace")}, ${plural(r.processes, "process", "processes")})`);
      }
    }
    const stale = await cleanupStale(DEMO_PREFIX);
    if (stale.length) this.out.info(`removed ${stale.length} leftover namespaces of an earlier demo: ${stale.join(", ")}`);
    this.out.info("root; ip, ss, iptables, ipset, nsenter, socat, curl, iperf3; CNI plugins loopback, bridge, host-local in /usr/lib/cni: all present");
  }

  private async stepNode(): Promise<void> {
    this.step(2, "building a virtual node in network namespaces");
    const workDir = await createWorkDir();
    this.record = {
      version: 1,
      ownerPid: process.pid,
      ownerStart: readOwnStart(),
      kept: false,
      startedAt: new Date().toISOString(),
      workDir,
      exe: this.bin.exe,
      pods: [],
      processes: [],
    };
    writeRecord(this.record);
    writeFileSync(this.path("config.yaml"), this.configYaml());
    const plugin = { agentSocket: this.path("agent.sock"), logFile: this.path("cni.log") };
    this.sim = await createSim({
      prefix: DEMO_PREFIX,
      networkName: "nshub-demo",
      cleanStale: false,
      plugins: [{ type: "nshub-cni", binary: this.bin.exe, config: plugin }],
      pluginEnv: { NSHUB_CONFIG: this.path("config.yaml") },
    });
    Object.assign(this.record, { tag: this.sim.tag, nodeNetns: this.sim.node.name, simTmpDir: this.sim.tmpDir });
    writeRecord(this.record);
    const s = this.sim;
    this.out.info(`node      netns ${s.node.name}: bridge ${s.node.bridge}, pods' subnet ${s.subnet}, gateway ${s.node.gateway}; no uplink (nothing leaves it)`);
    this.out.info(`CNI       loopback on lo, then bridge + host-local on eth0, then nshub-cni — chained last, as \`nshub install\` does on a node`);
    this.out.info(`          nshub-cni = ${displayPath(this.bin.exe)}, linked into the private CNI bin dir ${join(s.tmpDir, "bin")}`);
    this.out.info(`conflist  ${s.conflistPath}:`);
    this.out.info(compactConflist(s.conflist as unknown as { plugins: Record<string, unknown>[] }), 16);
    this.facts.conflistPath = s.conflistPath;
    this.facts.conflist = s.conflist;
  }

  private configYaml(): string {
    const q = (s: string) => JSON.stringify(s);
    return [
      "# nshub demo: agent, proxy and nshub-cni configuration (generated; removed on teardown)",
      "logLevel: info",
      "agent:",
      `  zdsSocket: ${q(this.path("zds.sock"))}`,
      `  apiSocket: ${q(this.path("agent.sock"))}`,
      `  stateFile: ${q(this.path("agent-state.json"))}`,
      `  adminAddress: "127.0.0.1:15010"`,
      "  enrollment:",
      "    namespaces:",
      '      include: ["demo"]',
      "proxy:",
      `  zdsSocket: ${q(this.path("zds.sock"))}`,
      `  adminAddress: "127.0.0.1:15000"`,
      `  metricsAddress: "0.0.0.0:15020"`,
      `  readinessAddress: "0.0.0.0:15021"`,
      "  drainDeadlineMs: 1000",
      "cni:",
      `  agentSocket: ${q(this.path("agent.sock"))}`,
      `  logFile: ${q(this.path("cni.log"))}`,
      "",
    ].join("\n");
  }

  private addProcess(p: RecordedProcess): RecordedProcess {
    this.record!.processes.push(p);
    writeRecord(this.record!);
    return p;
  }

  private daemonEnv(): Record<string, string> {
    return childEnv({ NSHUB_LOG_FORMAT: "json" });
  }

  private async stepDaemons(): Promise<void> {
    this.step(3, "starting nshub agent and nshub proxy in the node");
    const exe = this.bin.exe;
    const cfg = this.path("config.yaml");
    const agent = this.addProcess(spawnDetached("agent", this.node.name, [exe, "agent", "--config", cfg], this.path("agent.log"), this.daemonEnv()));
    await this.waitHttp(`${AGENT_ADMIN}/readyz`, agent, "nshub agent");
    this.out.info(`agent  pid ${agent.pid}: admin 127.0.0.1:15010, CNI event API ${this.path("agent.sock")}, ZDS ${this.path("zds.sock")}; enrolls namespace "demo"`);
    const proxy = this.addProcess(spawnDetached("proxy", this.node.name, [exe, "proxy", "--config", cfg], this.path("proxy.log"), this.daemonEnv()));
    await this.waitHttp(`${PROXY_READY}/healthz/ready`, proxy, "nshub proxy");
    this.out.info(`proxy  pid ${proxy.pid}: connected to the agent over ZDS, got its (empty) snapshot, ready; admin 127.0.0.1:15000, metrics :15020, readiness :15021`);
    this.out.info(`config ${cfg}   logs ${this.path("agent.log")}, ${this.path("proxy.log")}`);
  }

  /** Polls `url` inside the node until it answers 200; fails early if `proc` died. */
  private async waitHttp(url: string, proc: RecordedProcess, what: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    for (;;) {
      this.checkInterrupted();
      if (!alive(proc.pid, proc.start)) throw new DemoError(`${what} exited during start-up; the end of its log (${proc.log}):\n${tail(proc.log)}`);
      const a = await curlIn(this.node, url, 2);
      if (a.status === 200) return;
      last = a.status ? `HTTP ${a.status}: ${a.body.trim()}` : `curl exit ${a.curlCode}`;
      if (Date.now() > deadline) throw new DemoError(`${what} not ready after ${timeoutMs / 1000} s (${url}: ${last}); its log (${proc.log}):\n${tail(proc.log)}`);
      await Bun.sleep(100);
    }
  }

  private async stepPods(): Promise<void> {
    this.step(4, "creating pods through the CNI chain (loopback, bridge + host-local, nshub-cni)");
    const sim = this.sim!;
    const add = async (namespace: string, name: string): Promise<Pod> => {
      this.checkInterrupted();
      const pod = await sim.addPod({ namespace, name });
      this.record!.pods.push({ namespace, name, netns: pod.name, ip: pod.ip, uid: pod.uid });
      writeRecord(this.record!);
      return pod;
    };
    const web = (this.pods.web = await add("demo", "web"));
    const client = (this.pods.client = await add("demo", "client"));
    const outsider = (this.pods.outsider = await add("other", "outsider"));
    const agentPods = (await curlJson<{ pods: { uid: string; state: string; reason: string }[] }>(this.node, `${AGENT_ADMIN}/pods`))?.pods ?? [];
    const rows: string[][] = [];
    const podFacts: Record<string, unknown>[] = [];
    let enrolledOk = true;
    for (const pod of [web, client, outsider]) {
      const state = agentPods.find((p) => p.uid === pod.uid)?.state ?? "unknown";
      const ports = (await pod.listeningTcpPorts()).filter((p) => p === 15001 || p === 15006);
      const shouldEnroll = pod.podNamespace === "demo";
      const ok = shouldEnroll ? state === "enrolled" && ports.includes(15001) && ports.includes(15006) : state === "not-enrolled" && ports.length === 0;
      enrolledOk &&= ok;
      rows.push([`${pod.podNamespace}/${pod.podName}`, pod.ip, pod.name, state, ports.length ? ports.map((p) => `${p} (${p === 15001 ? "outbound" : "inbound"})`).join(", ") : "none"]);
      podFacts.push({ namespace: pod.podNamespace, name: pod.podName, uid: pod.uid, ip: pod.ip, netns: pod.name, agentState: state, proxyListeners: ports });
    }
    this.facts.pods = podFacts;
    this.out.info(renderTable([{ header: "POD" }, { header: "IP" }, { header: "NETNS" }, { header: "AGENT SAYS" }, { header: "PROXY LISTENERS INSIDE THE POD'S NETNS" }], rows));
    this.out.info(this.out.dim(`(listeners from \`ss -ltn\` run inside each pod; the proxy opened them from the node, in the pod's namespace)`));
    this.checks.push({
      id: "enrolled",
      title: "enrolled pods get the proxy's listeners",
      ok: enrolledOk,
      detail: enrolledOk
        ? `demo/web and demo/client are enrolled with 15001/15006 inside their netns; other/outsider is not-enrolled and has none`
        : `unexpected enrollment: ${rows.map((r) => `${r[0]} ${r[3]} [${r[4]}]`).join("; ")}`,
    });
  }

  private async stepServers(): Promise<void> {
    this.step(5, "starting servers in demo/web");
    const web = this.pods.web!;
    const env = childEnv();
    const servers: Array<[string, number, string[], string]> = [
      ["web-http", WEB_HTTP_PORT, [this.bin.exe, "demo", "--serve-http", String(WEB_HTTP_PORT), "--name", "demo/web"], "HTTP, answers with the client address it saw (nshub demo --serve-http)"],
      ["web-echo", WEB_ECHO_PORT, ["socat", "-d", "-d", `TCP-LISTEN:${WEB_ECHO_PORT},reuseaddr,fork`, "PIPE"], "TCP echo (socat), logs each peer"],
      ["web-iperf3", WEB_IPERF_PORT, ["iperf3", "-s", "-p", String(WEB_IPERF_PORT)], "iperf3 server"],
    ];
    const started: Array<[RecordedProcess, number, string]> = [];
    for (const [role, port, argv, what] of servers) started.push([this.addProcess(spawnDetached(role, web.name, argv, this.path(`${role}.log`), env)), port, what]);
    for (const [proc, port, what] of started) {
      const deadline = Date.now() + 20_000;
      while (!(await web.listeningTcpPorts()).includes(port)) {
        this.checkInterrupted();
        if (!alive(proc.pid, proc.start)) throw new DemoError(`${proc.role} exited; its log (${proc.log}):\n${tail(proc.log)}`);
        if (Date.now() > deadline) throw new DemoError(`${proc.role} does not listen on ${port} after 20 s; its log:\n${tail(proc.log)}`);
        await Bun.sleep(50);
      }
      this.out.info(`${web.ip}:${port}  ${what}  (pid ${proc.pid})`);
    }
  }

  private async stepTraffic(): Promise<void> {
    this.step(6, "sending traffic from demo/client to demo/web");
    const { web, client } = this.pods as Required<typeof this.pods>;
    // HTTP
    const url = `http://${web.ip}:${WEB_HTTP_PORT}/`;
    const reply = await this.httpFrom(client, url);
    this.cmdIn(client, `curl ${url}`);
    this.out.info(`  → ${JSON.stringify(reply)}`);
    this.facts.http = { from: "demo/client", url, reply };
    // TCP echo, left open so that step 8 can show it live
    const echo = (this.echo = client.spawn(["socat", "-t", "5", "-T", "30", "-", `TCP:${web.ip}:${WEB_ECHO_PORT}`], { stdin: true, env: childEnv() }));
    const sink = echo.proc.stdin as unknown as { write(s: string): void; flush(): void };
    sink.write(`${ECHO_TEXT}\n`);
    sink.flush();
    try {
      await echo.waitForOutput(new RegExp(ECHO_TEXT), 10_000);
    } catch (e) {
      throw new DemoError(`the TCP echo through the proxy did not come back: ${(e as Error).message}`);
    }
    this.cmdIn(client, `socat - TCP:${web.ip}:${WEB_ECHO_PORT}   (TCP echo, stays open until step 8)`);
    this.out.info(`  → sent "${ECHO_TEXT}", got "${ECHO_TEXT}" back`);
    this.facts.echo = { from: "demo/client", to: `${web.ip}:${WEB_ECHO_PORT}`, text: ECHO_TEXT };
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
    this.cmdIn(client, `iperf3 -c ${web.ip} -p ${WEB_IPERF_PORT} -t 1`);
    this.out.info(`  → ${formatBytes(iperf.bytes)} in ${iperf.seconds.toFixed(1)} s, ${(iperf.bitsPerSecond / 1e9).toFixed(2)} Gbit/s — through the proxy twice (client's outbound, web's inbound)`);
    this.facts.iperf3 = iperf;
  }

  private async stepOutsider(): Promise<void> {
    this.step(7, "the same request from other/outsider (namespace not enrolled)");
    const { web, outsider } = this.pods as Required<typeof this.pods>;
    const url = `http://${web.ip}:${WEB_HTTP_PORT}/`;
    const reply = await this.httpFrom(outsider, url);
    this.cmdIn(outsider, `curl ${url}`);
    this.out.info(`  → ${JSON.stringify(reply)}`);
    this.facts.outsiderHttp = { from: "other/outsider", url, reply };
  }

  private async httpFrom(pod: Pod, url: string): Promise<HttpReply> {
    const r = await pod.exec(["curl", "-sS", "-m", "10", url], { timeoutMs: 20_000, env: childEnv() });
    try {
      const j = JSON.parse(r.stdout) as HttpReply;
      if (typeof j.client === "string") return j;
    } catch {
      // below
    }
    throw new DemoError(`curl ${url} from ${pod.podNamespace}/${pod.podName} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  }

  private cmdIn(pod: Pod, text: string): void {
    this.out.cmd(`${pod.podNamespace}/${pod.podName}: ${text}`);
  }

  /** The proxy's traffic counters, or undefined when its metrics endpoint does not answer. */
  private async metrics(): Promise<MetricsSnapshot | undefined> {
    const a = await curlIn(this.node, `${PROXY_METRICS}/metrics`);
    if (a.status !== 200) return undefined;
    return snapshotOf(parsePrometheus(a.body));
  }

  private async nshubInNode(args: string[]): Promise<{ ok: boolean; text: string }> {
    const r = await this.node.exec([this.bin.exe, ...args], { timeoutMs: 20_000, env: childEnv() });
    return { ok: r.code === 0, text: (r.code === 0 ? r.stdout : r.stderr || r.stdout).trimEnd() };
  }

  private async stepObserve(before: MetricsSnapshot | undefined): Promise<void> {
    this.step(8, "what the proxy saw");
    const { web, client, outsider } = this.pods as Required<typeof this.pods>;
    const exe = displayPath(this.bin.exe);
    const nodeCmd = (args: string) => `ip netns exec ${this.node.name} ${exe} ${args}`;

    // the pods the proxy serves
    this.out.line("");
    this.out.cmd(nodeCmd("pods"));
    const pods = await this.nshubInNode(["pods"]);
    if (pods.ok) this.out.info(pods.text);
    else {
      const raw = await curlJson<{ pods: { namespace: string; name: string; state: string; listeners: { kind: string; port: number }[]; connections: number }[] }>(this.node, `${PROXY_ADMIN}/pods`);
      this.out.info(this.out.dim(`(nshub pods: ${pods.text.split("\n")[0]}; showing the proxy's GET /pods instead)`));
      this.out.info(
        renderTable(
          [{ header: "NAMESPACE/NAME" }, { header: "STATE" }, { header: "LISTENERS" }, { header: "CONNECTIONS", align: "right" }],
          (raw?.pods ?? []).map((p) => [`${p.namespace}/${p.name}`, p.state, p.listeners.map((l) => `${l.kind}:${l.port}`).join(" "), String(p.connections)]),
        ),
      );
    }

    // live connections: the echo session is still open
    this.out.line("");
    this.out.cmd(nodeCmd("connections") + "      (the TCP echo from step 6 is still open)");
    const live = await this.nshubInNode(["connections"]);
    if (live.ok) this.out.info(live.text);
    else {
      const rep = await readConnections(this.node, PROXY_ADMIN, this.path("proxy.log"));
      this.out.info(this.out.dim(`(nshub connections: ${live.text.split("\n")[0]}; showing ${rep.source} instead)`));
      this.out.info(renderConnections(rep.conns.filter((c) => c.live)));
    }
    // close the echo session; its records then move to "finished"
    const sink = this.echo?.proc.stdin as unknown as { end(): void } | undefined;
    sink?.end();
    await Promise.race([this.echo?.exited, Bun.sleep(8000)]);

    // every captured connection leg of the demo's traffic
    const expect = (cs: Conn[]) =>
      cs.some((c) => c.pod === "demo/client" && c.direction === "outbound" && c.dst === `${web.ip}:${WEB_HTTP_PORT}`) &&
      cs.some((c) => c.pod === "demo/web" && c.direction === "inbound" && ipOf(c.src) === client.ip && c.dst === `${web.ip}:${WEB_HTTP_PORT}`) &&
      cs.some((c) => c.pod === "demo/web" && c.direction === "inbound" && ipOf(c.src) === outsider.ip) &&
      cs.some((c) => c.dst === `${web.ip}:${WEB_ECHO_PORT}` && !c.live);
    let rep = await readConnections(this.node, PROXY_ADMIN, this.path("proxy.log"));
    for (let i = 0; i < 50 && !expect(rep.conns); i++) {
      this.checkInterrupted();
      await Bun.sleep(100);
      rep = await readConnections(this.node, PROXY_ADMIN, this.path("proxy.log"));
    }
    // In the order the traffic was sent: curl, echo, iperf3, then the outsider; outbound leg first.
    const rank = (c: Conn) => {
      const port = Number(c.dst.slice(c.dst.lastIndexOf(":") + 1));
      const i = ipOf(c.src) === outsider.ip ? 3 : [WEB_HTTP_PORT, WEB_ECHO_PORT, WEB_IPERF_PORT].indexOf(port);
      return (i < 0 ? 9 : i) * 2 + (c.direction === "outbound" ? 0 : 1);
    };
    const conns = [...rep.conns].sort((a, b) => rank(a) - rank(b));
    const label = (c: Conn) => {
      const port = Number(c.dst.slice(c.dst.lastIndexOf(":") + 1));
      const what = port === WEB_HTTP_PORT ? "curl" : port === WEB_ECHO_PORT ? "TCP echo" : port === WEB_IPERF_PORT ? "iperf3" : "";
      const who = ipOf(c.src) === outsider.ip ? " from other/outsider" : "";
      return what + who;
    };
    this.out.line("");
    this.out.info(`captured connection legs (from ${rep.source}):`);
    this.out.info(renderConnections(conns, label), 8);
    this.facts.connections = conns;

    // what the servers saw
    const seen = httpClientsSeen(this.path("web-http.log"));
    const echoPeers = socatPeers(this.path("web-echo.log"));
    this.out.line("");
    this.out.info("what demo/web's servers saw (their own logs):");
    const who = (ip: string) => (ip === client.ip ? "demo/client's pod IP" : ip === outsider.ip ? "other/outsider's pod IP" : "not a pod IP!");
    this.out.info(
      renderTable(
        [{ header: "SERVER" }, { header: "CLIENT IP" }, { header: "" }],
        [...seen.map((ip) => [`HTTP :${WEB_HTTP_PORT}`, ip, who(ip)]), ...echoPeers.map((ip) => [`TCP echo :${WEB_ECHO_PORT}`, ip, who(ip)])],
      ),
      8,
    );
    this.facts.serversSaw = { http: seen, echo: echoPeers };

    // metrics
    const after = await this.metrics();
    let delta: MetricsSnapshot | undefined;
    this.out.line("");
    if (before && after) {
      delta = deltaOf(before, after);
      this.out.info(`metrics that moved (${PROXY_METRICS.replace("http://", "")}/metrics in the node, before → after the traffic):`);
      this.out.info(renderMetricsDelta(delta), 8);
      this.facts.metricsDelta = delta.values;
    } else {
      this.out.info(this.out.dim(`(the proxy's metrics endpoint ${PROXY_METRICS}/metrics did not answer; bytes below come from its connection records)`));
    }

    this.evaluate(conns, seen, echoPeers, delta);
  }

  private evaluate(conns: Conn[], httpSeen: string[], echoPeers: string[], delta: MetricsSnapshot | undefined): void {
    const { web, client, outsider } = this.pods as Required<typeof this.pods>;
    const httpDst = `${web.ip}:${WEB_HTTP_PORT}`;
    const out = conns.find((c) => c.pod === "demo/client" && c.direction === "outbound" && c.dst === httpDst);
    this.checks.push({
      id: "captured-outbound",
      title: "captured outbound",
      ok: out !== undefined,
      detail: out
        ? `demo/client → ${httpDst} went through the proxy's outbound listener in demo/client (${out.src} → ${out.dst}, ${out.bytesUp} B up, ${out.bytesDown} B down)`
        : `no outbound record of demo/client → ${httpDst}`,
    });
    const inb = conns.find((c) => c.pod === "demo/web" && c.direction === "inbound" && c.dst === httpDst && ipOf(c.src) === client.ip);
    this.checks.push({
      id: "captured-inbound",
      title: "captured inbound",
      ok: inb !== undefined,
      detail: inb ? `demo/web accepted ${inb.src} → ${inb.dst} on the proxy's inbound listener in demo/web` : `no inbound record at demo/web from ${client.ip}`,
    });
    const httpReply = (this.facts.http as { reply: HttpReply }).reply;
    const httpIp = ipOf(httpReply.client);
    const srcOk = httpIp === client.ip && httpSeen.includes(client.ip) && echoPeers.includes(client.ip) && (inb === undefined || ipOf(inb.src) === client.ip);
    this.checks.push({
      id: "source-ip",
      title: "source IP preserved",
      ok: srcOk,
      detail: srcOk
        ? `demo/web saw ${client.ip} = demo/client's pod IP (HTTP answer, HTTP server log, echo server log), not the proxy's`
        : `demo/client is ${client.ip}, but demo/web saw HTTP ${httpIp}, logged [${httpSeen.join(", ")}], echo [${echoPeers.join(", ")}]`,
    });
    const outsiderReply = (this.facts.outsiderHttp as { reply: HttpReply }).reply;
    const ownRecords = conns.filter((c) => c.pod === "other/outsider");
    const outsiderFacts = (this.facts.pods as { name: string; agentState: string; proxyListeners: number[] }[]).find((p) => p.name === "outsider");
    const atWeb = conns.filter((c) => c.pod === "demo/web" && ipOf(c.src) === outsider.ip);
    const ncOk = ipOf(outsiderReply.client) === outsider.ip && ownRecords.length === 0 && outsiderFacts?.agentState === "not-enrolled" && outsiderFacts.proxyListeners.length === 0;
    this.checks.push({
      id: "not-captured",
      title: "non-enrolled pod not captured",
      ok: ncOk,
      detail: ncOk
        ? `other/outsider has no proxy listener and no connection of its own in the proxy; its request was served and demo/web saw ${outsider.ip}` +
          (atWeb.length ? ` (recorded only on demo/web's own inbound side, web being enrolled)` : "")
        : `other/outsider: ${ownRecords.length} records of its own, agent says ${outsiderFacts?.agentState}, listeners [${outsiderFacts?.proxyListeners.join(", ")}], web saw ${outsiderReply.client}`,
    });
    const iperf = this.facts.iperf3 as { bytes: number };
    if (delta) {
      const v = delta.values;
      const opened = v.istio_tcp_connections_opened_total!;
      const recv = v.istio_tcp_received_bytes_total!;
      const ok = opened.source >= 1 && opened.destination >= 1 && recv.source >= iperf.bytes && recv.destination >= iperf.bytes;
      this.checks.push({
        id: "bytes",
        title: "bytes counted",
        ok,
        detail: `istio_tcp_connections_opened_total +${opened.source} outbound, +${opened.destination} inbound; istio_tcp_received_bytes_total +${formatBytes(recv.source)} outbound, +${formatBytes(recv.destination)} inbound (iperf3's server received ${formatBytes(iperf.bytes)})`,
      });
    } else {
      const data = conns.filter((c) => c.dst === `${web.ip}:${WEB_IPERF_PORT}`);
      const up = Math.max(0, ...data.filter((c) => c.direction === "inbound").map((c) => c.bytesUp));
      this.checks.push({
        id: "bytes",
        title: "bytes counted",
        ok: up >= iperf.bytes,
        detail: `the proxy's record of the iperf3 data connection counted ${formatBytes(up)} (iperf3's server received ${formatBytes(iperf.bytes)}); the metrics endpoint did not answer`,
      });
    }
  }

  private stepKeep(): void {
    this.step(9, "leaving it running (--keep)");
    this.record!.kept = true;
    writeRecord(this.record!);
    const { web, client, outsider } = this.pods as Required<typeof this.pods>;
    const exe = displayPath(this.bin.exe);
    const n = this.node.name;
    this.explore = [
      `ip netns exec ${n} ${exe} status`,
      `ip netns exec ${n} ${exe} pods`,
      `ip netns exec ${n} ${exe} connections --watch`,
      `ip netns exec ${n} curl -s 127.0.0.1:15000/config_dump`,
      `ip netns exec ${n} curl -s 127.0.0.1:15020/metrics | grep istio_tcp`,
      `ip netns exec ${n} curl -s 127.0.0.1:15010/pods`,
      `ip netns exec ${client.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from demo/client (captured)`,
      `ip netns exec ${outsider.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from other/outsider (not captured)`,
      `ip netns exec ${web.name} ss -ltnp                  # demo/web: the proxy's listeners inside the pod`,
      `ip netns exec ${web.name} iptables-save -t nat      # demo/web: the in-pod redirection rules`,
    ];
    this.out.info(`state: ${join(this.workDir, "demo.json")}; logs: ${this.workDir}/*.log`);
  }

  private reportError(e: unknown): void {
    this.out.line("");
    if (e instanceof DemoError) this.out.line(`${this.out.mark(false)} ${e.message}`);
    else this.out.line(`${this.out.mark(false)} the demo failed: ${(e as Error)?.stack ?? String(e)}`);
  }

  // -------------------------------------------------------------------------------------------

  /** Removes everything, in the order a node would: servers, pods (CNI DEL), proxy, agent, node. */
  private async teardown(): Promise<TeardownOutcome> {
    const errors: string[] = [];
    const step = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message.split("\n")[0]}`);
      }
    };
    const rec = this.record;
    const procs = rec?.processes ?? [];
    await step("stopping the echo client", async () => this.echo?.stop(1000));
    await step("stopping the servers", () => stopProcesses(procs.filter((p) => p.role.startsWith("web-")), 3000));
    let podsDeleted = 0;
    if (this.sim) {
      // CNI DEL through the chain while agent and proxy still run: the agent removes the in-pod
      // rules and tells the proxy (DelWorkload), which closes the pod's listeners.
      for (const pod of [...this.sim.pods].reverse()) {
        await step(`CNI DEL of ${pod.podNamespace}/${pod.podName}`, async () => {
          await this.sim!.deletePod(pod);
          podsDeleted++;
        });
      }
    }
    await step("stopping the proxy", () => stopProcesses(procs.filter((p) => p.role === "proxy"), 5000));
    await step("stopping the agent", () => stopProcesses(procs.filter((p) => p.role === "agent"), 5000));
    if (this.sim) await step("removing the node", () => this.sim!.destroy());
    // Anything left of this demo's tag (a step interrupted half-way), then the files.
    const tag = this.sim?.tag ?? rec?.tag;
    if (tag) for (const ns of await tagNamespaces(tag)) await step(`removing netns ${ns}`, () => deleteNetnsHard(ns));
    if (rec) await step("removing the work dir", () => teardownRecord({ ...rec, processes: procs }));

    // Verify: nothing of this demo remains.
    const leftNs = tag ? await tagNamespaces(tag) : [];
    const leftProcs = procs.filter((p) => alive(p.pid, p.start)).map((p) => `${p.role} (pid ${p.pid})`);
    const mentioning = rec ? processesMentioning(rec.workDir) : [];
    const leftFiles = [rec?.workDir, this.sim?.tmpDir].filter((p): p is string => p !== undefined && existsSync(p));
    const ok = errors.length === 0 && leftNs.length === 0 && leftProcs.length === 0 && mentioning.length === 0 && leftFiles.length === 0;
    const what = `${plural(podsDeleted, "pod")} deleted through CNI DEL, ${plural(procs.length, "process", "processes")} stopped, node namespace and files removed`;
    const detail = ok
      ? `${what}: no namespace, process or file of the demo left`
      : [
          `teardown incomplete:`,
          ...errors,
          ...(leftNs.length ? [`namespaces left: ${leftNs.join(", ")}`] : []),
          ...(leftProcs.length ? [`processes left: ${leftProcs.join(", ")}`] : []),
          ...(mentioning.length ? [`processes still using ${rec?.workDir}: ${mentioning.join(", ")}`] : []),
          ...(leftFiles.length ? [`files left: ${leftFiles.join(", ")}`] : []),
        ].join("\n");
    return { ok, detail };
  }

  // -------------------------------------------------------------------------------------------

  private printSummary(allOk: boolean, error: unknown, kept: boolean): void {
    const o = this.out;
    if (this.checks.length > 0) {
      o.line("");
      o.line(o.bold("summary"));
    }
    const width = Math.max(0, ...this.checks.map((c) => c.title.length));
    for (const c of this.checks) {
      const [first, ...rest] = c.detail.split("\n");
      o.line(`  ${o.mark(c.ok)} ${c.title.padEnd(width)}  ${first}`);
      for (const r of rest) o.line(`    ${" ".repeat(width)}  ${r}`);
    }
    if (this.pods.client) {
      o.line("");
      o.line(`  pods: ${[this.pods.web, this.pods.client, this.pods.outsider].filter((p): p is Pod => p !== undefined).map((p) => `${p.podNamespace}/${p.podName} ${p.ip}`).join(", ")}`);
      if (this.facts.conflistPath) o.line(`  CNI chain: ${chainOf(this.facts.conflist)} (conflist ${this.facts.conflistPath}${kept ? "" : ", removed with the node"})`);
    }
    o.line("");
    if (this.interruptedBy) o.line(`interrupted (${this.interruptedBy}); everything the demo made was torn down${this.checks.find((c) => c.id === "teardown")?.ok ? "" : " — see above for what was left"}`);
    else if (error) o.line(`${o.mark(false)} the demo did not run to the end (see the error above)`);
    else if (allOk) o.line(`${o.mark(true)} all ${this.checks.length} checks passed`);
    else o.line(`${o.mark(false)} ${this.checks.filter((c) => !c.ok).length} of ${this.checks.length} checks failed`);
    if (kept) {
      o.line("");
      o.line(o.bold("the demo is still running — explore it:"));
      for (const c of this.explore) o.line(`  ${c}`);
      o.line("");
      o.line(o.bold("tear it down:"));
      o.line(`  ${displayPath(this.bin.exe)} demo --down`);
    }
  }

  private jsonSummary(allOk: boolean, error: unknown, kept: boolean, teardown: TeardownOutcome | undefined): unknown {
    return {
      ok: allOk,
      kept,
      interrupted: this.interruptedBy ?? null,
      error: error ? (error instanceof Error ? error.message : String(error)) : null,
      checks: this.checks,
      node: this.sim ? { netns: this.sim.node.name, bridge: this.sim.node.bridge, subnet: this.sim.subnet, gateway: this.sim.node.gateway } : null,
      ...this.facts,
      processes: (this.record?.processes ?? []).map((p) => ({ role: p.role, pid: p.pid, netns: p.netns, log: p.log })),
      workDir: this.record?.workDir ?? null,
      teardown: teardown ?? null,
      explore: kept ? this.explore : [],
      down: kept ? `${displayPath(this.bin.exe)} demo --down` : null,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// --down

async function down(out: Printer, json: boolean): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("nshub demo --down: needs root (it removes network namespaces)");
    return 1;
  }
  const removed: { node: string | undefined; namespaces: string[]; processes: number; errors: string[] }[] = [];
  const skipped: string[] = [];
  for (const rec of await readRecords()) {
    const status = recordStatus(rec);
    if (status === "running") {
      skipped.push(`a demo is running in process ${rec.ownerPid} (node ${rec.nodeNetns ?? "being built"}): it tears itself down when it ends; stop it with Ctrl-C`);
      continue;
    }
    out.line(`tearing down the ${status === "kept" ? "demo left running with --keep" : "leftovers of an interrupted demo"} (node ${rec.nodeNetns ?? "?"}) …`);
    const r = await teardownRecord(rec);
    removed.push({ node: rec.nodeNetns, ...r });
    out.line(`  stopped ${plural(r.processes, "process", "processes")}, removed ${plural(r.namespaces.length, "namespace")}${r.namespaces.length ? ` (${r.namespaces.join(", ")})` : ""} and ${rec.workDir}`);
    for (const e of r.errors) out.line(`  ${out.mark(false)} ${e}`);
  }
  // Namespaces whose demo left no state file (its owner is gone): netsim's marker tells.
  const stale = await cleanupStale(DEMO_PREFIX, 0);
  if (stale.length) out.line(`removed leftover namespaces: ${stale.join(", ")}`);
  for (const s of skipped) out.line(s);
  const errors = removed.flatMap((r) => r.errors);
  const left = (await listNetns()).filter((n) => n.startsWith(DEMO_PREFIX));
  if (removed.length === 0 && stale.length === 0 && skipped.length === 0) out.line("nothing to tear down: no demo is running");
  else if (errors.length === 0) out.line(`${out.mark(true)} done${left.length ? ` (still present, owned by a running demo: ${left.join(", ")})` : ""}`);
  if (json) process.stdout.write(JSON.stringify({ ok: errors.length === 0, removed, staleNamespaces: stale, skipped, left }, null, 2) + "\n");
  return errors.length === 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// small helpers

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function readOwnStart(): string | null {
  try {
    const stat = readFileSync(`/proc/${process.pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** The conflist as a short JSON block: one line per plugin. */
function compactConflist(list: { plugins: Record<string, unknown>[] } & Record<string, unknown>): string {
  const head = Object.fromEntries(Object.entries(list).filter(([k]) => k !== "plugins"));
  const lines = [`${JSON.stringify(head).slice(0, -1)}, "plugins": [`];
  list.plugins.forEach((p, i) => lines.push(`  ${JSON.stringify(p)}${i < list.plugins.length - 1 ? "," : ""}`));
  lines.push("]}");
  return lines.join("\n");
}

function chainOf(conflist: unknown): string {
  const plugins = (conflist as { plugins?: { type: string; ipam?: { type?: string } }[] })?.plugins ?? [];
  return ["loopback (lo)", ...plugins.map((p) => (p.ipam?.type ? `${p.type} + ${p.ipam.type}` : p.type))].join(" → ");
}

/** Client IPs in the demo HTTP server's log, in order, without repeats. */
function httpClientsSeen(log: string): string[] {
  const out: string[] = [];
  let text = "";
  try {
    text = readFileSync(log, "utf8");
  } catch {
    return out;
  }
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const j = JSON.parse(line) as { client?: string };
      if (j.client) {
        const ip = ipOf(j.client);
        if (!out.includes(ip)) out.push(ip);
      }
    } catch {
      // not ours
    }
  }
  return out;
}

/** Peers in socat's `-d -d` log ("accepting connection from AF=2 10.1.2.3:45678 on …"). */
function socatPeers(log: string): string[] {
  let text = "";
  try {
    text = readFileSync(log, "utf8");
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const m of text.matchAll(/accepting connection from AF=\d+ \[?([0-9a-fA-F.:]+?)\]?:\d+ /g)) if (!out.includes(m[1]!)) out.push(m[1]!);
  return out;
}
