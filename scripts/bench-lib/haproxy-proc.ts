// Running HAProxy for the benchmark's comparison paths (plaintext, splice-auto, the TLS chain):
// nshub's in-pod rules with the one owner-match difference (haproxy.ts), the config checked with
// `haproxy -c`, the process started in a node's netns.
import { writeFileSync } from "node:fs";
import { applyPodRules } from "../../src/agent/rules/index.ts";
import { run, type Node, type Pod, type SimProcess } from "../../src/sim/index.ts";
import { patchOutboundRedirect } from "./haproxy.ts";

/**
 * nshub's in-pod rules in `pod` (applied with nshub's own code), then the outbound REDIRECT
 * patched to skip root's sockets (HAProxy cannot mark its upstream sockets; see haproxy.ts).
 */
export async function applyHaproxyPodRules(pod: Pod, iptablesCmd: string): Promise<{ position: number; before: string; after: string }> {
  await applyPodRules(pod.netnsPath);
  const listing = (await pod.execOrThrow([iptablesCmd, "-t", "nat", "-S", "NSHUB_OUTPUT"])).stdout;
  const patch = patchOutboundRedirect(listing);
  await pod.execOrThrow([iptablesCmd, "-t", "nat", "-R", "NSHUB_OUTPUT", String(patch.position), ...patch.after.split(" ")]);
  return patch;
}

/** Writes `config` to `path`, checks it with `haproxy -c`, starts `haproxy -db` in `node`'s netns. */
export async function startHaproxy(node: Node, path: string, config: string, prefix: string[] = []): Promise<SimProcess> {
  writeFileSync(path, config);
  const check = await run(["haproxy", "-c", "-f", path]);
  if (check.code !== 0) throw new Error(`haproxy -c -f ${path} failed: ${check.stdout}${check.stderr}`);
  return node.spawn([...prefix, "haproxy", "-db", "-f", path]);
}

/** Waits until `port` listens in `pod`; on failure the error carries HAProxy's own output. */
export async function waitHaproxyPort(proc: SimProcess, pod: Pod, port: number, timeoutMs = 10_000): Promise<void> {
  try {
    await pod.waitForTcpPort(port, { timeoutMs });
  } catch (e) {
    throw new Error(`${(e as Error).message}; haproxy ${proc.running ? "running" : "exited"}: ${(proc.stderr() + proc.stdout()).slice(-1500)}`);
  }
}

/**
 * HAProxy's `maxconn` for this fd limit: 2 fds per connection, at most 20,000; with splicing
 * HAProxy also reserves a pipe (2 fds) per 4 connections (`maxpipes` = maxconn / 4).
 */
export function haproxyMaxconn(fdLimit: number, splice?: "auto" | "always"): number {
  return Math.max(1000, Math.min(20_000, Math.floor((fdLimit - 1000) / (splice ? 2.5 : 2))));
}

/** One runtime API command on a stats socket (`show info`, …); the bench process talks to it directly. */
export async function haproxyCommand(socket: string, command: string, timeoutMs = 5000): Promise<string> {
  const { promise, resolve, reject } = Promise.withResolvers<string>();
  let out = "";
  const timer = setTimeout(() => reject(new Error(`HAProxy stats socket ${socket}: no answer to "${command}" within ${timeoutMs} ms`)), timeoutMs);
  try {
    await Bun.connect({
      unix: socket,
      socket: {
        open(s) {
          s.write(`${command}\n`);
        },
        data(_s, d) {
          out += d.toString();
        },
        close() {
          resolve(out);
        },
        error(_s, e) {
          reject(e);
        },
      },
    });
    return await promise;
  } finally {
    clearTimeout(timer);
  }
}
