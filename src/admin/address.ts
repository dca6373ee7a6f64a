// "host:port" addresses for the admin servers: "127.0.0.1:15000", "[::1]:15000", "0.0.0.0:15020",
// "localhost:15000". IPv6 literals need brackets (an unbracketed "::1:15000" is ambiguous).

export interface HostPort {
  /** Without brackets: "::1", "127.0.0.1", "localhost". */
  hostname: string;
  port: number;
}

export function parseHostPort(addr: string): HostPort {
  const m = /^\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]:(\d{1,5})$/.exec(addr) ?? /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(addr);
  if (!m) {
    const hint = (addr.match(/:/g)?.length ?? 0) > 1 && !addr.startsWith("[") ? ' (put IPv6 addresses in brackets: "[::1]:15000")' : ' (expected host:port, e.g. "127.0.0.1:15000")';
    throw new Error(`not a host:port address: ${JSON.stringify(addr)}${hint}`);
  }
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`port out of range in ${JSON.stringify(addr)}`);
  return { hostname: m[1]!, port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.hostname.includes(":") ? `[${hp.hostname}]:${hp.port}` : `${hp.hostname}:${hp.port}`;
}

/** True for addresses only the node itself can reach: 127.0.0.0/8, ::1, localhost. */
export function isLoopback(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::ffff:127.0.0.1";
}
