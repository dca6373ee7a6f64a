// `nshub demo`: nshub working on a virtual node, in one command. The story, one file per step
// (steps/):
//
//   1. checks the machine (root, iproute2, iptables, ipset, socat, curl, iperf3, CNI plugins);
//   2. builds a node out of network namespaces (src/sim, prefix "nshd-"): a namespace with a
//      bridge and no uplink, and a private CNI dir + conflist in which nshub-cni (this binary,
//      linked as nshub-cni) is chained after loopback, bridge and host-local;
//   3. starts `nshub agent` and `nshub proxy` inside the node (this binary runs itself; from
//      source, dist/nshub) as detached processes with a generated config;
//   4. creates pods through that chain: demo/web and demo/client (enrolled namespace "demo"),
//      other/outsider (not enrolled); shows each enrolled pod's identity and certificate
//      (`nshub certs`: the proxy signs them with a local CA the demo made with `nshub ca init`);
//   5. starts servers in demo/web: an HTTP server that answers with the client address it saw
//      (`nshub demo --serve-http`, see serve.ts), a socat TCP echo, an iperf3 server;
//   6. sends real traffic from demo/client: curl, a TCP echo (kept open), a 1 s iperf3 burst;
//   7. sends the same HTTP request from other/outsider;
//   8. shows what the proxy saw: `nshub pods`, `nshub connections`, the captured connections,
//      what the servers saw, the metrics that moved;
//   9. tears everything down (also on Ctrl-C, SIGTERM or any failure: teardown.ts) — or, with
//      --keep, leaves it running, records it in /run/nshub-demo/ and prints how to explore it and
//      remove it (`nshub demo --down`, down.ts, which works from any later process).
// Then a summary of ✔/✘ checks (summary.ts); exit 0 only when all passed.
import { parseArgs } from "node:util";
import { down } from "./down.ts";
import { Printer, STEPS } from "./printer.ts";
import { DemoError, DemoRun, Interrupted } from "./run.ts";
import { serveHttp } from "./serve.ts";
import { checkPrerequisites } from "./steps/prerequisites.ts";
import { buildNode } from "./steps/node.ts";
import { startDaemons } from "./steps/daemons.ts";
import { createPods } from "./steps/pods.ts";
import { showIdentities } from "./steps/identity.ts";
import { startServers } from "./steps/servers.ts";
import { sendFromOutsider, sendTraffic } from "./steps/traffic.ts";
import { showWhatTheProxySaw } from "./steps/report.ts";
import { keepRunning } from "./steps/keep.ts";
import { jsonSummary, printSummary } from "./summary.ts";
import { tearDown, type TeardownOutcome } from "./teardown.ts";

const HELP = `usage: nshub demo [--keep] [--json]
       nshub demo --down

Builds a virtual Kubernetes node out of network namespaces on this machine, starts the nshub
agent and proxy in it, creates pods through a real CNI chain (loopback, bridge, host-local, then
nshub-cni), sends real traffic between them (curl, a TCP echo, iperf3) and shows what the proxy
captured: pods, their identities and certificates (from a local CA the demo makes), connections
with the client IP the server saw, metrics. Everything stays inside
namespaces the demo creates (the node has no uplink) and is removed at the end, also on Ctrl-C.
Needs root, iproute2, iptables, ipset, socat, curl, iperf3 and containernetworking-plugins
(scripts/demo installs them on Debian/Ubuntu). Takes about 5 to 10 seconds.

  --keep     leave the node, pods, agent and proxy running and print how to explore them
  --down     tear down a demo left running with --keep (works from any shell)
  --json     print a machine-readable summary on stdout (progress goes to stderr)
  -h, --help this text

exit status: 0 when every check passed, 1 when one failed or the demo could not run,
130/143 when interrupted (after tearing down).`;

const FLAGS = {
  keep: { type: "boolean" },
  down: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  // internal: the web server the demo runs inside demo/web (see serve.ts)
  "serve-http": { type: "string" },
  name: { type: "string" },
} as const;

export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: FLAGS, strict: true, allowPositionals: false });
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
  return runDemo(new DemoRun({ keep: values.keep === true, json: values.json === true }));
}

/** The story, step by step (steps 1 to 8, then 9 with --keep; otherwise the teardown is step 9). */
async function story(demo: DemoRun): Promise<void> {
  await checkPrerequisites(demo);
  await buildNode(demo);
  await startDaemons(demo);
  await createPods(demo);
  await showIdentities(demo);
  await startServers(demo);
  const before = await demo.metrics();
  await sendTraffic(demo);
  await sendFromOutsider(demo);
  await showWhatTheProxySaw(demo, before);
  if (demo.opts.keep) keepRunning(demo);
}

/** Runs the story; on a failure or a signal tears down what it made; then the summary. */
async function runDemo(demo: DemoRun): Promise<number> {
  let rejectInterrupt: (e: Error) => void = () => undefined;
  const interrupted = new Promise<never>((_, reject) => (rejectInterrupt = reject));
  interrupted.catch(() => undefined);
  const onSignal = (sig: NodeJS.Signals) => {
    if (demo.interruptedBy) {
      process.stderr.write(`${sig} again: still tearing down, please wait (it takes a few seconds)\n`);
      return;
    }
    demo.interruptedBy = sig;
    demo.out.line("");
    demo.out.line(`${sig === "SIGINT" ? "Ctrl-C" : sig}: stopping and tearing everything down …`);
    demo.out.muted = true;
    rejectInterrupt(new Interrupted(sig));
  };
  const onInt = () => onSignal("SIGINT");
  const onTerm = () => onSignal("SIGTERM");
  const onHup = () => onSignal("SIGHUP");
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);
  process.on("SIGHUP", onHup);

  demo.out.line(demo.out.bold("nshub demo — a virtual Kubernetes node in network namespaces, with live captured traffic"));
  demo.out.line("");
  let error: unknown;
  let kept = false;
  const flow = story(demo);
  flow.catch(() => undefined);
  try {
    await Promise.race([flow, interrupted]);
    kept = demo.opts.keep;
  } catch (e) {
    error = e;
    if (e instanceof Interrupted) {
      // Let the step in progress finish (each is bounded) so nothing is created behind the teardown.
      await Promise.race([flow.catch(() => undefined), Bun.sleep(15_000)]);
      demo.out.muted = false;
    }
  }

  let teardown: TeardownOutcome | undefined;
  if (!kept) {
    if (error && !(error instanceof Interrupted)) reportError(demo, error);
    // Nothing to undo when the demo stopped before creating anything (e.g. a prerequisite).
    if (demo.record) {
      demo.out.step(STEPS, error instanceof Interrupted ? "tearing down" : error ? "tearing down after the failure" : "tearing down");
      teardown = await tearDown(demo);
      demo.out.info(teardown.detail);
    }
  }
  process.off("SIGINT", onInt);
  process.off("SIGTERM", onTerm);
  process.off("SIGHUP", onHup);

  if (teardown) demo.checks.push({ id: "teardown", title: "clean teardown", ok: teardown.ok, detail: teardown.detail });
  const allOk = !error && demo.checks.length > 0 && demo.checks.every((c) => c.ok);
  printSummary(demo, allOk, error, kept);
  if (demo.opts.json) process.stdout.write(JSON.stringify(jsonSummary(demo, allOk, error, kept, teardown), null, 2) + "\n");
  if (demo.interruptedBy) return demo.interruptedBy === "SIGINT" ? 130 : demo.interruptedBy === "SIGTERM" ? 143 : 129;
  return allOk ? 0 : 1;
}

function reportError(demo: DemoRun, e: unknown): void {
  demo.out.line("");
  if (e instanceof DemoError) demo.out.line(`${demo.out.mark(false)} ${e.message}`);
  else demo.out.line(`${demo.out.mark(false)} the demo failed: ${(e as Error)?.stack ?? String(e)}`);
}
