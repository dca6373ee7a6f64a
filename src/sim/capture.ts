// Packet captures in a harness namespace (the fabric's, see fabric.ts): tcpdump writes a pcap, and
// the result answers what a test asks of "the wire": which TCP connections crossed it (client,
// server, port) and whether some bytes appeared in clear.

import { randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { NetsimError } from "./errors.ts";
import { listNetns, type SimNamespace } from "./namespace.ts";
import { runOrThrow, type SimProcess } from "./process.ts";

/** tcpdump's capture ring (-B, KiB): 64 blocks of 512 KiB. */
const RING_KIB = 32 * 1024;

export interface CaptureOptions {
  /** A tcpdump filter expression, e.g. "tcp port 15008" (one argv element). Default: everything. */
  filter?: string;
  /** Interface to capture on; default "any" (each forwarded packet is then seen twice: In and Out). */
  interface?: string;
  /** Where to write the pcap; default a file in the owner's temp dir (gone after its destroy). */
  file?: string;
  /** How long tcpdump may take to start capturing; default 10 s. */
  readyTimeoutMs?: number;
  /**
   * Accept a capture the kernel dropped packets from. By default `stop()` throws then: an
   * incomplete capture can prove that something crossed, never that something did not.
   */
  allowDrops?: boolean;
  /** tcpdump's capture ring in KiB (-B); default 32 MiB. Bulk transfers need more (see `allowDrops`). */
  bufferKiB?: number;
}

/** One TCP segment as tcpdump printed it. */
export interface TcpSegment {
  /** Interface and direction (In, Out, …) with `-i any`; undefined otherwise. */
  ifname: string | undefined;
  direction: string | undefined;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  /** tcpdump's flags: "S", "S.", ".", "P.", "F.", "R", … */
  flags: string;
  /** TCP payload length. */
  length: number;
}

/** One TCP connection, oriented by its SYN or SYN-ACK (if neither was seen: by its first segment). */
export interface TcpConnection {
  client: string;
  clientPort: number;
  server: string;
  serverPort: number;
  /** The handshake was seen (the orientation is certain, the connection began during the capture). */
  sawSyn: boolean;
  segments: number;
}

/** Who talked to whom on which port: connections without the client's port, deduplicated. */
export interface TcpFlow {
  src: string;
  dst: string;
  dstPort: number;
}

export interface CaptureStats {
  captured: number;
  receivedByFilter: number;
  droppedByKernel: number;
}

/** A running tcpdump. `stop()` ends it and returns what it saw. */
export class Capture {
  private stopping: Promise<CaptureResult> | undefined;

  private constructor(
    private readonly ns: SimNamespace,
    private readonly proc: SimProcess,
    /** The pcap file tcpdump writes. */
    readonly path: string,
    private readonly allowDrops: boolean,
  ) {}

  /** @internal Start tcpdump in `ns` and wait until it really captures. */
  static async start(ns: SimNamespace, dir: string, opts: CaptureOptions): Promise<Capture> {
    const path = opts.file ?? join(dir, `capture-${randomBytes(3).toString("hex")}.pcap`);
    // -U: write each packet as it comes (a pcap is complete up to the last packet at any time);
    // --immediate-mode: libpcap hands packets over at once instead of when its ring block fills
    //   (a block not yet handed over is lost when tcpdump stops);
    // -B: but then every packet may retire a whole ring block, and the default 2 MiB ring has only
    //   ~7 blocks of 512 KiB: a briefly descheduled tcpdump made the kernel drop packets;
    // -Z root: Debian's tcpdump otherwise drops to user "tcpdump" BEFORE opening the -w file,
    //   which then cannot write into our 0700 temp dir.
    const argv = ["tcpdump", "-i", opts.interface ?? "any", "-n", "-U", "--immediate-mode", "-B", String(opts.bufferKiB ?? RING_KIB), "-Z", "root", "-w", path];
    if (opts.filter) argv.push(opts.filter);
    const proc = ns.spawn(argv);
    try {
      // Printed after the capture socket is open and the filter attached: from here on nothing is missed.
      await proc.waitForOutput(/listening on /, opts.readyTimeoutMs ?? 10_000);
    } catch (e) {
      await proc.stop();
      throw e;
    }
    return new Capture(ns, proc, path, opts.allowDrops ?? false);
  }

  /** Stop tcpdump (after what it already received is on disk) and read the pcap. Idempotent. */
  stop(): Promise<CaptureResult> {
    this.stopping ??= this.finish();
    return this.stopping;
  }

  private async finish(): Promise<CaptureResult> {
    await settle(this.path);
    await this.proc.stop();
    const bytes = new Uint8Array(await readFile(this.path));
    const stats = parseStats(this.proc.stderr());
    if (!stats) throw new NetsimError(`tcpdump printed no packet counts, so the capture may be incomplete: ${this.proc.stderr().trim()}`);
    if (stats.droppedByKernel > 0 && !this.allowDrops) {
      throw new NetsimError(`tcpdump: the kernel dropped ${stats.droppedByKernel} of ${stats.receivedByFilter} packets; the capture ${this.path} is incomplete`);
    }
    const nsName = this.ns.name;
    // Read back inside the capturing namespace: with `-i any` the pcap stores interface INDEXES,
    // and tcpdump -r names them from the namespace it runs in (elsewhere the names are wrong).
    const read = async (args: readonly string[]) => {
      const inside = (await listNetns()).includes(nsName);
      const argv = ["tcpdump", "-r", "-", "-nn", ...args];
      const r = await runOrThrow(inside ? ["ip", "netns", "exec", nsName, ...argv] : argv, { stdin: bytes });
      return r.stdout;
    };
    const text = await read(["-t"]);
    return new CaptureResult(this.path, bytes, stats, text.split("\n").filter((l) => l.trim() !== ""), read);
  }
}

/** What a capture saw: the raw pcap and tcpdump's reading of it. */
export class CaptureResult {
  /** Every packet, one line each, as `tcpdump -r - -nn -t` prints it. */
  readonly lines: readonly string[];
  readonly tcp: readonly TcpSegment[];
  /** Lines that are not TCP (ARP, ICMP, UDP, …). */
  readonly other: readonly string[];

  constructor(
    /** The pcap file (as long as its directory exists). */
    readonly path: string,
    /** The pcap file's bytes. */
    readonly bytes: Uint8Array,
    /** tcpdump's own counters (dropped packets mean the capture is incomplete). */
    readonly stats: CaptureStats,
    lines: string[],
    private readonly reader: (args: readonly string[]) => Promise<string>,
  ) {
    this.lines = lines;
    const tcp: TcpSegment[] = [];
    const other: string[] = [];
    for (const l of lines) {
      const s = parseTcpLine(l);
      if (s) tcp.push(s);
      else other.push(l);
    }
    this.tcp = tcp;
    this.other = other;
  }

  /** TCP connections seen, in order of first appearance. */
  get connections(): TcpConnection[] {
    return tcpConnections(this.tcp);
  }

  /** Distinct (client, server, server port) of the connections seen, sorted. */
  get flows(): TcpFlow[] {
    const seen = new Map<string, TcpFlow>();
    for (const c of this.connections) seen.set(`${c.client} ${c.server} ${c.serverPort}`, { src: c.client, dst: c.server, dstPort: c.serverPort });
    return [...seen.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, f]) => f);
  }

  /**
   * Whether `marker` occurs anywhere in the raw pcap. Only a marker that fits in one segment is
   * sure to be found whole; a longer one may be split across packets.
   */
  containsBytes(marker: string | Uint8Array): boolean {
    const needle = typeof marker === "string" ? Buffer.from(marker) : Buffer.from(marker);
    if (needle.length === 0) throw new NetsimError("containsBytes: empty marker");
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength).indexOf(needle) >= 0;
  }

  /** `tcpdump -r <pcap> -nn <args>` output, e.g. ["-A"] (payload as ASCII) or ["-X"] (hex). */
  dump(args: readonly string[] = ["-A"]): Promise<string> {
    return this.reader(args);
  }
}

// ---------------------------------------------------------------------------------------------
// parsing tcpdump's output (pure)

// `[<ifname> <In|Out|B|M|P>  ]IP <src>.<port> > <dst>.<port>: Flags [<flags>], …, length <n>`
const TCP_LINE = /^(?:(\S+)\s+(In|Out|B|M|P)\s+)?IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): Flags \[([^\]]*)\](?:.*, length (\d+))?/;

/** One line of `tcpdump -nn -t` output as a TCP segment, or undefined if it is not one. */
export function parseTcpLine(line: string): TcpSegment | undefined {
  const m = TCP_LINE.exec(line.trim());
  if (!m) return undefined;
  return { ifname: m[1], direction: m[2], src: m[3]!, srcPort: Number(m[4]), dst: m[5]!, dstPort: Number(m[6]), flags: m[7]!, length: Number(m[8] ?? 0) };
}

/** Group segments into connections (both directions of a 4-tuple), oriented by the SYN. */
export function tcpConnections(segments: readonly TcpSegment[]): TcpConnection[] {
  const byKey = new Map<string, TcpConnection>();
  for (const s of segments) {
    const a = `${s.src}:${s.srcPort}`;
    const b = `${s.dst}:${s.dstPort}`;
    const key = a < b ? `${a} ${b}` : `${b} ${a}`;
    let c = byKey.get(key);
    if (!c) {
      c = { client: s.src, clientPort: s.srcPort, server: s.dst, serverPort: s.dstPort, sawSyn: false, segments: 0 };
      byKey.set(key, c);
    }
    c.segments++;
    // A SYN comes from the client, a SYN-ACK from the server; either settles the orientation.
    if (s.flags.includes("S") && !c.sawSyn) {
      const fromClient = !s.flags.includes(".");
      c.client = fromClient ? s.src : s.dst;
      c.clientPort = fromClient ? s.srcPort : s.dstPort;
      c.server = fromClient ? s.dst : s.src;
      c.serverPort = fromClient ? s.dstPort : s.srcPort;
      c.sawSyn = true;
    }
  }
  return [...byKey.values()];
}

function parseStats(stderr: string): CaptureStats | undefined {
  const num = (what: string) => Number(new RegExp(`(\\d+) packets? ${what}`).exec(stderr)?.[1]);
  const s = { captured: num("captured"), receivedByFilter: num("received by filter"), droppedByKernel: num("dropped by kernel") };
  return Object.values(s).every(Number.isInteger) ? s : undefined;
}

/** Wait until the pcap stops growing (tcpdump has written what it got), at most `maxMs`. */
async function settle(path: string, quietMs = 200, maxMs = 3_000): Promise<void> {
  const deadline = Date.now() + maxMs;
  let last = -1;
  let since = Date.now();
  while (Date.now() < deadline) {
    const size = (await stat(path).catch(() => null))?.size ?? -1;
    if (size !== last) {
      last = size;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
    await Bun.sleep(25);
  }
}
