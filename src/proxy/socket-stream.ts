// An accepted Bun socket of the userspace relay's listeners (relay.ts clientHandlers) as a node
// Duplex, for the connections that leave over HBONE (TLS and HTTP/2 want streams). The listener's
// handlers forward each socket's events to `sock.data`; this object takes them the way a Relay
// would and feeds src/hbone's Bun-socket Duplex.
import { bunSocketStream, type BunSocket } from "../hbone/fd-stream.ts";
import type { TcpSide } from "../hbone/index.ts";
import type { RelaySocket } from "./relay.ts";

export function socketStream(sock: RelaySocket): TcpSide {
  const { stream, handlers } = bunSocketStream();
  const s = sock as unknown as BunSocket;
  handlers.open(s);
  sock.data = {
    client: sock,
    onData: (_side: unknown, chunk: Uint8Array) => handlers.data(s, chunk),
    onDrain: () => handlers.drain(s),
    onEnd: () => handlers.end(s),
    onClose: (_side: unknown, error?: Error) => handlers.close(s, error),
    onError: (_side: unknown, error: Error) => handlers.error(s, error),
  };
  return stream;
}
