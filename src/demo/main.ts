// `nshub demo`: nshub working on two virtual nodes, in one command. The story, one file per step
// (steps/):
//
//   1. checks the machine (root, iproute2, iptables, ipset, socat, curl, iperf3, tcpdump, CNI
//      plugins);
//   2. builds two nodes out of network namespaces (src/sim, prefix "nshd-"), each a namespace with
//      a bridge, its own pod subnet and no uplink, and a private CNI dir + conflist in which
//      nshub-cni (this binary, linked as nshub-cni) is chained after loopback, bridge and
//      host-local; joins them by a routed fabric namespace (src/sim/fabric.ts); makes the demo's
//      CA (`nshub ca init`);
//   3. starts `nshub agent` on each node, then the CA (`nshub ca serve` in pod
//      istio-system/nshub-ca on node 1, a token per node from `nshub ca issue-node`), then
//      `nshub proxy` on each node (this binary runs itself; from source, dist/nshub), detached;
//   4. creates pods through each node's chain: demo/web and demo/client (enrolled namespace
//      "demo") and other/outsider (not enrolled) on node 1, demo/backend on node 2; writes each
//      proxy's workloads file with the other node's pods; shows each enrolled pod's identity and
//      certificate (`nshub certs` on both nodes, one root);
//   5. starts servers in demo/web: an HTTP server that answers with the client address it saw
//      (`nshub demo --serve-http`, see serve.ts), a socat TCP echo, an iperf3 server; and the
//      HTTP server and echo in demo/backend;
//   6. sends real traffic from demo/client to demo/web: curl, a TCP echo (kept open), iperf3;
//   7. sends the same HTTP request from other/outsider;
//   8. shows what node 1's proxy saw: `nshub pods`, `nshub connections`, the captured connections,
//      what the servers saw, the metrics that moved;
//   9. across the nodes: demo/client → demo/backend with a random marker, under tcpdump on the
//      fabric: the server sees the client's IP, both proxies record mutual TLS with both
//      identities, the marker is nowhere on the wire and every connection between the pods went
//      to 15008 (a plaintext control from other/outsider shows the capture sees clear text);
//  10. tears everything down (also on Ctrl-C, SIGTERM or any failure: teardown.ts) — or, with
//      --keep, leaves it running, records it in /run/nshub-demo/ and prints how to explore it and
//      remove it (`nshub demo --down`, down.ts, which works from any later process).
// Then a summary of ✔/✘ checks (summary.ts); exit 0 only when all passed.
import { parseArgs } from "node:util";
import { down } from "./down.ts";
import { Printer, STEPS } from "./printer.ts";
import { DemoError, DemoRun, Interrupted } from "./run.ts";
import { serveHttp } from "./serve.ts";
import { checkPrerequisites } from "./steps/prerequisites.ts";
import { buildNodes } from "./steps/node.ts";
import { startDaemons } from "./steps/daemons.ts";
import { createPods } from "./steps/pods.ts";
import { showIdentities } from "./steps/identity.ts";
import { shareWorkloads } from "./steps/mesh.ts";
import { crossNodes } from "./steps/cross-node.ts";
import { startServers } from "./steps/servers.ts";
import { sendFromOutsider, sendTraffic } from "./steps/traffic.ts";
import { showWhatTheProxySaw } from "./steps/report.ts";
import { keepRunning } from "./steps/keep.ts";
import { jsonSummary, printSummary } from "./summary.ts";
import { tearDown, type TeardownOutcome } from "./teardown.ts";

const HELP = `usage: nshub demo [--keep] [--json]
       nshub demo --down

Builds two virtual Kubernetes nodes out of network namespaces on this machine, joined by a
routed fabric, starts the nshub agent and proxy on each, and a CA (nshub ca serve, in a pod)
that gives both proxies their pods' certificates from one root. Creates pods through a real CNI
chain (loopback, bridge, host-local, then nshub-cni), sends real traffic between them (curl, a
TCP echo, iperf3) and shows what the proxies captured: pods, their identities and certificates,
connections with the client IP the server saw, metrics. Then a request from a pod on node 1 to a
pod on node 2, which the proxies carry in HBONE (mutual TLS to port 15008): both proxies' records
with both identities, and a packet capture on the fabric in which the request's random marker
never appears. Everything stays inside namespaces the demo creates (nothing has an uplink) and
is removed at the end, also on Ctrl-C. Needs root, iproute2, iptables, ipset, socat, curl, iperf3,
tcpdump and containernetworking-plugins (scripts/demo installs them on Debian/Ubuntu). Takes
about 10 to 20 seconds.

  --keep     leave the nodes, pods, CA, agents and proxies running and print how to explore them
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

/** The story, step by step (steps 1 to 9, then 10 with --keep; otherwise the teardown is step 10). */
async function story(demo: DemoRun): Promise<void> {
  await checkPrerequisites(demo);
  await buildNodes(demo);
  await startDaemons(demo);
  await createPods(demo);
  await shareWorkloads(demo);
  await showIdentities(demo);
  await startServers(demo);
  const before = await demo.metrics();
  await sendTraffic(demo);
  await sendFromOutsider(demo);
  await showWhatTheProxySaw(demo, before);
  await crossNodes(demo);
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

  demo.out.line(demo.out.bold("nshub demo — two virtual Kubernetes nodes in network namespaces, with live captured traffic and mTLS between them"));
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
