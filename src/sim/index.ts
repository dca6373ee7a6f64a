// The virtual node (see node.ts) and the fabric joining several (fabric.ts): what the netns tests,
// `nshub demo` and the benchmarks use.
export { NetsimError } from "./errors.ts";
export { run, runOrThrow, SimProcess, type ExecOptions, type ExecResult, type SpawnOptions } from "./process.ts";
export { listNetns, NETNS_DIR, Node, parseSsListeningPorts, Pod, SimNamespace, type LinkInfo, type WaitOptions } from "./namespace.ts";
export { CNI_VERSION, CniError, STD_CNI_DIR, type ChainPlugin, type CniCommand, type CniResult, type NetConfList } from "./cni-runner.ts";
export { cleanupStale, DEFAULT_PREFIX, MARKER_DIR, STALE_AGE_MS } from "./stale.ts";
export { ipv4InSubnet, randomSubnet, subnetInfo, subnetsOverlap } from "./ipv4.ts";
export { createSim, NetSim, type PodOptions, type SimOptions } from "./node.ts";
export { createFabric, Fabric, type FabricLink, type FabricOptions } from "./fabric.ts";
export { Capture, CaptureResult, parseTcpLine, tcpConnections, type CaptureOptions, type CaptureStats, type TcpConnection, type TcpFlow, type TcpSegment } from "./capture.ts";
