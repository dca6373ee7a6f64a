// Checks of single values that need more than a type (addresses, the mark) and of settings that
// contradict each other or the in-pod rules. Messages name every key involved; loadConfig adds
// where each value came from.
import { isIPv4, isIPv6 } from "node:net";
import { resolve } from "node:path";
import { z } from "zod";
import type { Config } from "./schema.ts";

/**
 * What the agent's in-pod rules assume (= src/agent/rules/constants.ts, which config/ may not
 * import; test/unit/config-validate.test.ts checks that they agree). The agent applies its rules
 * with these values and no setting to change them.
 */
export const IN_POD = {
  mark: 0x539,
  markMask: 0xfff,
  outboundPort: 15001,
  inboundPort: 15006,
  /** Ports every pod keeps for the proxy's later listeners (src/proxy/listeners.ts's table). */
  reserved: [
    [15008, "HBONE"],
    [15053, "DNS"],
  ] as const,
};

const hex = (n: number) => `0x${n.toString(16)}`;

export interface HostPort {
  host: string;
  port: number;
}

/** host:port with an IPv4 address, a bracketed IPv6 address or a hostname, and a port 1-65535. */
export function parseHostPort(s: string): HostPort | string {
  const got = ` (got ${JSON.stringify(s)})`;
  const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d+)$/.exec(s);
  if (!m) return `${/^[0-9a-fA-F:]*:[0-9a-fA-F:]*:\d+$/.test(s) ? "an IPv6 address is written in brackets, e.g. [::1]:15000" : "expected host:port, e.g. 127.0.0.1:15000"}${got}`;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return `port ${m[3]} is not in 1-65535${got}`;
  if (m[1] !== undefined) return isIPv6(m[1]) ? { host: m[1], port } : `${JSON.stringify(m[1])} is not an IPv6 address${got}`;
  const host = m[2]!;
  if (/^[0-9.]+$/.test(host)) return isIPv4(host) ? { host, port } : `${JSON.stringify(host)} is not an IPv4 address${got}`;
  const label = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;
  if (host.length > 253 || !host.split(".").every((l) => label.test(l))) return `${JSON.stringify(host)} is not a valid hostname${got}`;
  return { host, port };
}

export const hostPort = z.string().superRefine((s, ctx) => {
  const r = parseHostPort(s);
  if (typeof r === "string") ctx.addIssue({ code: "custom", message: r });
});

export const ipv4 = z.string().superRefine((s, ctx) => {
  if (!isIPv4(s)) ctx.addIssue({ code: "custom", message: `${JSON.stringify(s)} is not an IPv4 address` });
});

/** The proxy's SO_MARK: what the agent's rules let through. */
export const proxyMark = z
  .number()
  .int()
  .superRefine((v, ctx) => {
    const fail = (message: string) => ctx.addIssue({ code: "custom", message });
    if (v === 0) fail("must be non-zero: the in-pod rules tell the proxy's sockets by it");
    else if (v < 0 || (v & ~IN_POD.markMask) !== 0 || v > 0xffffffff) fail(`${v < 0 ? v : hex(v)} has bits outside the in-pod rules' mark mask ${hex(IN_POD.markMask)}`);
    else if (v !== IN_POD.mark) {
      fail(
        `must be ${hex(IN_POD.mark)} (${IN_POD.mark}), not ${hex(v)}: the agent's in-pod rules let through only sockets marked ${hex(IN_POD.mark)}/${hex(IN_POD.markMask)} (they have no setting for it), so the proxy's own connections would be redirected back to it`,
      );
    }
  });

/** A constraint between keys: their paths (the first is the issue's), and its message given their names. */
export interface CrossIssue {
  keys: string[][];
  text: (names: string[]) => string;
}

/** Whether two listen addresses can take the same socket (a wildcard covers its family; [::] both). */
function overlap(a: HostPort, b: HostPort): boolean {
  if (a.port !== b.port) return false;
  if (a.host.toLowerCase() === b.host.toLowerCase() || a.host === "::" || b.host === "::") return true;
  const wild4 = (h: string, other: string) => h === "0.0.0.0" && !isIPv6(other);
  return wild4(a.host, b.host) || wild4(b.host, a.host);
}

/** The constraints between keys of a config whose keys are each valid. */
export function crossFieldIssues(cfg: Config): CrossIssue[] {
  const out: CrossIssue[] = [];
  const p = cfg.proxy;
  if (p.outboundPort === p.inboundPort) {
    out.push({ keys: [["proxy", "outboundPort"], ["proxy", "inboundPort"]], text: ([a, b]) => `${a} and ${b} must differ (both ${p.outboundPort})` });
  }
  const reserved = IN_POD.reserved.map(([port, what]) => `${port} ${what}`).join(", ");
  for (const key of ["outboundPort", "inboundPort"] as const) {
    const hit = IN_POD.reserved.find(([port]) => port === p[key]);
    if (hit) out.push({ keys: [["proxy", key]], text: ([a]) => `${a} is ${hit[0]}, which every pod keeps for ${hit[1]} (reserved: ${reserved})` });
  }
  const servers = (["adminAddress", "metricsAddress", "readinessAddress"] as const).map((k) => [k, parseHostPort(p[k]) as HostPort] as const);
  for (let i = 0; i < servers.length; i++) {
    for (let j = i + 1; j < servers.length; j++) {
      const [ka, a] = servers[i]!;
      const [kb, b] = servers[j]!;
      if (overlap(a, b)) out.push({ keys: [["proxy", ka], ["proxy", kb]], text: ([x, y]) => `${x} and ${y} must differ (both can take ${p[ka]} and ${p[kb]})` });
    }
  }
  // The proxy's admin socket sits next to the agent's files: a shared path would make one
  // daemon refuse to start (the socket is live) or clobber the other's file.
  const files = [
    ...(["zdsSocket", "apiSocket", "stateFile"] as const).map((k) => [["agent", k], resolve(cfg.agent[k])] as const),
    [["proxy", "adminSocket"], resolve(cfg.proxy.adminSocket)] as const,
  ];
  for (let i = 0; i < files.length; i++) {
    for (let j = i + 1; j < files.length; j++) {
      const [ka, a] = files[i]!;
      const [kb, b] = files[j]!;
      if (a === b) out.push({ keys: [[...ka], [...kb]], text: ([x, y]) => `${x} and ${y} must be different files (both ${a})` });
    }
  }
  out.push(...caIssues(cfg.proxy.ca));
  return out;
}

/**
 * `proxy.ca`: what each certificate source needs. A missing key is named in the message (its
 * own source would only say "default"); the issue is blamed on `source`.
 */
function caIssues(ca: Config["proxy"]["ca"]): CrossIssue[] {
  const out: CrossIssue[] = [];
  const key = (k: string) => ["proxy", "ca", k];
  const need = (what: string) => out.push({ keys: [key("source")], text: ([s]) => `${s} is ${ca.source}: ${what}` });
  const given = (ks: string[]) => ks.filter((k) => (ca as Record<string, unknown>)[k] !== undefined);
  if (ca.source === "none") return out;
  if (ca.source === "istio") {
    if (ca.address === undefined) need("set proxy.ca.address to the CA's address (istiod's is istiod.istio-system.svc:15012; nshub ca serve's host:15012)");
    else if (!/^(https:\/\/)?[^/\s]+$/i.test(ca.address) && !/^https:\/\/[^\s]+$/i.test(ca.address)) {
      out.push({ keys: [key("address")], text: ([a]) => `${a} ${JSON.stringify(ca.address)} is not host:port or https://host:port (the CA API needs TLS)` });
    }
    if (ca.rootCert === undefined) need("set proxy.ca.rootCert to the PEM file of the roots that verify the CA's serving certificate (istiod's: /var/run/secrets/istio/root-cert.pem)");
    if (ca.tokenFile === undefined && ca.clientCert === undefined) need("set proxy.ca.tokenFile (a bearer token file) or proxy.ca.clientCert and proxy.ca.clientKey (a node certificate from nshub ca issue-node)");
    if ((ca.clientCert === undefined) !== (ca.clientKey === undefined)) need("proxy.ca.clientCert and proxy.ca.clientKey go together");
    const local = given(["localDir", "certFile", "keyFile"]);
    if (local.length) need(`${local.map((k) => `proxy.ca.${k}`).join(", ")} only apply to source local`);
    return out;
  }
  const files = given(["certFile", "keyFile"]);
  if (ca.localDir === undefined && files.length < 2) {
    need(`set proxy.ca.localDir (an nshub ca init directory) or both proxy.ca.certFile and proxy.ca.keyFile (the signing certificate and its key)${files.length ? `; only proxy.ca.${files[0]} is set` : ""}`);
  }
  if (ca.localDir !== undefined && files.length) need(`proxy.ca.localDir or proxy.ca.certFile/keyFile, not both`);
  const remote = given(["address", "tokenFile", "clientCert", "clientKey", "clusterId", "serverName"]);
  if (remote.length) need(`${remote.map((k) => `proxy.ca.${k}`).join(", ")} only apply to source istio`);
  return out;
}

/**
 * Valid but probably wrong: the proxy listens on other ports than the agent's rules redirect to
 * (they have no setting for the ports), so pods' traffic would not reach it.
 */
export function portWarnings(cfg: Config): string[] {
  const out: string[] = [];
  for (const key of ["outboundPort", "inboundPort"] as const) {
    const want = IN_POD[key];
    if (cfg.proxy[key] !== want) out.push(`proxy.${key} is ${cfg.proxy[key]}, but the agent's in-pod rules redirect ${key === "outboundPort" ? "outbound" : "inbound"} traffic to ${want} (they have no setting for it): pods' traffic will not reach these listeners`);
  }
  return out;
}
