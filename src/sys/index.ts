// The system layer: everything nshub needs from the kernel that Bun does not offer.
export { SysError } from "./errors.ts";
export { Netns, NotNetnsError, assertNetworkNamespace, isNetworkNamespace, netnsIdentity, netnsIdentityOfPath, identityKey, homeNetns, withNetns, type NetnsIdentity } from "./netns.ts";
export * from "./sockopt.ts";
export { encodeSockaddr, decodeSockaddr, parseIPv4, type SocketAddress } from "./sockaddr.ts";
export { startTcpConnect, connectOutcome, connectTcp, finishConnect, type TcpConnectOptions } from "./tcp.ts";
export * from "./unix.ts";
export { assertSocketNotServed, claimSocketPath, probeSocketPath, SocketInUseError } from "./socket-path.ts";
export { closeFd, shutdownFd, peerFinished, openFdCount, eventFd, signalEventFd, drainEventFd, SHUT_RD, SHUT_WR, SHUT_RDWR } from "./fds.ts";
export { fdPoller, stopFdPoller, POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL, type FdPoller } from "./poller.ts";
export { tcpListen, acceptRaw, closeReset, epollCreate, epollAdd, epollDel, epollWait, makePipe, spliceRaw, EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP, EPOLLET } from "./splice.ts";
