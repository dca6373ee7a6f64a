// One connection carried over HBONE, seen as a pod's relay (PodRelay): the captured or upstream
// TCP socket on one side, a CONNECT stream on the other, joined by src/hbone's joinTunnel (bytes
// with backpressure, half-close, resets). Outbound, the TCP side is the app's captured
// connection and the stream goes to the destination pod; inbound, the stream came from the
// client pod and the TCP side is the proxy's connection to the app. Byte counts are kept on the
// record as they flow, so /connections and the metrics see live totals.
import type { Http2Stream } from "node:http2";
import { joinTunnel, RST_CANCEL, type TcpSide } from "../hbone/index.ts";
import type { PodRelay } from "./pod.ts";
import type { CloseHow, ConnectionRecord, ConnectionTable } from "./records.ts";

export class HboneRelay implements PodRelay {
  #done = false;
  #onFinish: ((r: PodRelay) => void) | undefined;
  #tcp: TcpSide | undefined;
  #stream: Http2Stream | undefined;

  constructor(
    readonly rec: ConnectionRecord,
    private readonly table: ConnectionTable,
    /** Outbound: the TCP side is the client (bytes from it are "sent"); inbound: the app. */
    private readonly tcpIsClient: boolean,
  ) {}

  get finished(): boolean {
    return this.#done;
  }

  onFinish(fn: (relay: PodRelay) => void): void {
    this.#onFinish = fn;
  }

  /** The TCP side, known before the tunnel is (outbound: at accept); abort() resets it too. */
  setTcp(tcp: TcpSide): void {
    this.#tcp = tcp;
    if (this.#done) reset(tcp);
  }

  /** Both sides are there: relay until both directions end or one side resets. */
  join(stream: Http2Stream, tcp: TcpSide): void {
    this.#stream = stream;
    this.#tcp = tcp;
    if (this.#done) {
      reset(tcp);
      if (!stream.destroyed) stream.close(RST_CANCEL);
      return;
    }
    this.table.established(this.rec);
    const rec = this.rec;
    const fromClient = (n: number) => (rec.bytesSent += n);
    const fromServer = (n: number) => (rec.bytesReceived += n);
    tcp.on("data", (b: Buffer) => (this.tcpIsClient ? fromClient : fromServer)(b.length));
    stream.on("data", (b: Buffer) => (this.tcpIsClient ? fromServer : fromClient)(b.length));
    const halfClosed = () => {
      if (rec.state === "open") rec.state = "half_closed";
    };
    tcp.once("end", halfClosed);
    stream.once("end", halfClosed);
    void joinTunnel(stream, tcp).then((r) => this.#finish(r.outcome === "closed" ? "done" : "reset", r.error));
  }

  /** The tunnel could not be set up (refused, identity, TLS, no certificate): reset the TCP side. */
  failed(how: CloseHow, error: string): void {
    this.abort(how, error);
  }

  abort(how: CloseHow, error?: string): void {
    if (this.#tcp) reset(this.#tcp);
    if (this.#stream && !this.#stream.destroyed) this.#stream.close(RST_CANCEL);
    this.#finish(how, error);
  }

  #finish(how: CloseHow, error?: string): void {
    if (this.#done) return;
    this.#done = true;
    this.table.close(this.rec, how, error);
    this.#onFinish?.(this);
  }
}

function reset(tcp: TcpSide): void {
  if (tcp.destroyed) return;
  if (tcp.resetAndDestroy) tcp.resetAndDestroy();
  else tcp.destroy();
}
