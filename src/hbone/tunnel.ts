// One HBONE stream joined to one TCP socket, on either end of the tunnel: bytes both ways with
// backpressure (pipe), half-close (END_STREAM ↔ shutdown(SHUT_WR)) and resets (RST_STREAM ↔
// TCP RST). ztunnel's copy loop does the same (https://github.com/istio/ztunnel/blob/master/src/copy.rs).
import type { Duplex } from "node:stream";
import type { Http2Stream } from "node:http2";
import { RST_CANCEL, RST_NO_ERROR } from "./wire.ts";

export type TcpSide = Duplex & { resetAndDestroy?(): void };

/** How long a received END_STREAM waits for a reset that may follow before it becomes a FIN. */
const FIN_GRACE_MS = 5;

export interface TunnelResult {
  /** Bytes from the TCP side into the stream, and from the stream to the TCP side. */
  tcpToStream: number;
  streamToTcp: number;
  /** How it ended: both sides finished, or a reset (and which side started it). */
  outcome: "closed" | "reset_by_stream" | "reset_by_tcp";
  error?: string;
}

function reset(tcp: TcpSide): void {
  if (tcp.destroyed) return;
  if (tcp.resetAndDestroy) tcp.resetAndDestroy();
  else tcp.destroy(new Error("reset"));
}

/** Pipes `stream` and `tcp` into each other until both directions end or one side resets. */
export function joinTunnel(stream: Http2Stream, tcp: TcpSide): Promise<TunnelResult> {
  const r: TunnelResult = { tcpToStream: 0, streamToTcp: 0, outcome: "closed" };
  return new Promise((resolve) => {
    let done = false;
    let tcpClosed = false;
    let streamClosed = false;
    const finish = () => {
      if (done) return;
      if (r.outcome === "closed" && !(tcpClosed && streamClosed)) return;
      done = true;
      resolve(r);
    };
    tcp.on("data", (b: Buffer) => (r.tcpToStream += b.length));
    stream.on("data", (b: Buffer) => (r.streamToTcp += b.length));
    // FIN → END_STREAM: pipe() ends the stream when the TCP side ends.
    tcp.pipe(stream);
    // END_STREAM → shutdown(SHUT_WR), but not at once: Bun's http2 emits "end" for a received
    // RST_STREAM too, and only then "aborted"/"close" with the code (measured on 1.4.5: the code
    // is set by the next setImmediate). A FIN sent first would turn the reset into a clean close.
    stream.pipe(tcp, { end: false });
    // Measured on 1.4.5: the code is usually there by the next setImmediate, but on a loaded
    // machine a reset still reached the app as FIN + RST about once in five tries; so the FIN
    // waits a few milliseconds for a reset that may follow (or for a clean close, which ends
    // the wait). Only a half-close is delayed, never data.
    let finTimer: ReturnType<typeof setTimeout> | undefined;
    const passFin = () => {
      finTimer = undefined;
      const code = stream.rstCode ?? RST_NO_ERROR;
      if (code === RST_NO_ERROR && !(stream as { aborted?: boolean }).aborted && r.outcome === "closed" && !tcp.destroyed) tcp.end();
    };
    stream.on("end", () => {
      finTimer = setTimeout(passFin, FIN_GRACE_MS);
    });
    stream.on("aborted", () => {
      if (finTimer) clearTimeout(finTimer);
      finTimer = undefined;
    });
    tcp.on("error", (e: Error) => {
      if (r.outcome !== "closed") return;
      r.outcome = "reset_by_tcp";
      r.error = (e as NodeJS.ErrnoException).code ?? e.message;
      if (!stream.destroyed) stream.close(RST_CANCEL);
      finish();
    });
    tcp.on("close", () => {
      tcpClosed = true;
      finish();
    });
    stream.on("error", () => {}); // the close below carries the code
    stream.on("close", () => {
      streamClosed = true;
      const code = stream.rstCode ?? RST_NO_ERROR;
      if (finTimer) {
        clearTimeout(finTimer);
        if (code === RST_NO_ERROR) passFin();
        finTimer = undefined;
      }
      if (code !== RST_NO_ERROR && r.outcome === "closed") {
        r.outcome = "reset_by_stream";
        r.error = `RST_STREAM ${code}`;
        reset(tcp);
      } else if (r.outcome === "closed" && !(stream as { readableEnded?: boolean }).readableEnded && !tcp.destroyed) {
        // The stream went away without END_STREAM (session gone): the TCP side must not hang.
        r.outcome = "reset_by_stream";
        r.error = "stream closed without END_STREAM";
        reset(tcp);
      }
      finish();
    });
  });
}
