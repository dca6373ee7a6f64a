// What the src/k8s tests share: objects to put in the stand-in API server, a logger that keeps
// its lines, and a bounded wait (no timing assertions: poll until true or fail after a bound).
import type { Fields, Level, Logger } from "../../src/log/logger.ts";
import type { KubeObj } from "../fixtures/kube-apiserver/resources.ts";

export function pod(namespace: string, name: string, opts: { node?: string; labels?: Record<string, string>; annotations?: Record<string, string>; ip?: string } = {}): KubeObj {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace, ...(opts.labels ? { labels: opts.labels } : {}), ...(opts.annotations ? { annotations: opts.annotations } : {}) },
    spec: { ...(opts.node ? { nodeName: opts.node } : {}), serviceAccountName: "default", containers: [{ name: "app", image: "app:1" }] },
    status: { phase: "Running", ...(opts.ip ? { podIP: opts.ip, podIPs: [{ ip: opts.ip }] } : {}) },
  };
}

export function namespace(name: string, labels?: Record<string, string>): KubeObj {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name, ...(labels ? { labels } : {}) } };
}

export interface LogLine {
  level: Level;
  msg: string;
  fields: Fields;
}

/** A Logger that records every line (all levels) instead of writing it. */
export function recordingLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const make = (base: Fields): Logger & { lines: LogLine[] } => {
    const at = (level: Level) => (msg: string, fields: Fields = {}) => void lines.push({ level, msg, fields: { ...base, ...fields } });
    return { lines, enabled: () => true, trace: at("trace"), debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: (f) => make({ ...base, ...f }) };
  };
  return make({});
}

/** Polls `fn` every 20 ms until true; throws after `timeoutMs`. */
export async function eventually(fn: () => boolean | Promise<boolean>, what = "condition", timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await Bun.sleep(20);
  }
}
