// The HBONE library: what the proxy uses (server per pod listener, pool for outbound).
export * from "./wire.ts";
export { checkClientIdentity, checkServerIdentity, peerSpiffeId, PeerIdentityError, uriSans } from "./peer.ts";
export { fdStream } from "./fd-stream.ts";
export { joinTunnel, type TcpSide, type TunnelResult } from "./tunnel.ts";
export { createHboneServer, normalizeIp, type Authorization, type HboneServer, type HboneServerOptions, type InboundRequest, type ServerCertificate } from "./server.ts";
export { dialHbone, openStream, HboneError, type ClientCertificate, type DialOptions, type HboneConnection } from "./client.ts";
export { HbonePool, type PoolOptions, type PoolRequest } from "./pool.ts";
