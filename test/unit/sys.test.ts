// src/sys primitives that need no root: fd passing, netns checks, connect outcomes, poller.
import { describe, expect, test } from "bun:test";
import { openSync, closeSync, readSync, writeSync } from "node:fs";
import { isIPv4 } from "node:net";
import * as sys from "../../src/sys/index.ts";

const enc = new TextEncoder();

/** Sends `fds` in one SCM_RIGHTS message from an independent implementation (Python's socket). */
async function pythonSendFds(sockFd: number, payload: string, paths: string[]): Promise<void> {
  const script = `
import os, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[3:]]
socket.send_fds(s, [sys.argv[2].encode()], fds)
`;
  const p = Bun.spawn(["python3", "-c", script, "3", payload, ...paths], { stdio: ["inherit", "inherit", "inherit", sockFd] as never });
  expect(await p.exited).toBe(0);
}

/** Starts the poller thread and waits until it has answered once, so fd counts are stable. */
async function warmPoller(): Promise<void> {
  const [a, b] = sys.socketPair();
  await sys.fdPoller().wait(a, sys.POLLOUT, 5000);
  sys.closeFd(a);
  sys.closeFd(b);
}

describe("fd passing over SOCK_SEQPACKET", () => {
  test("a netns fd arrives as a working fd with the same identity", () => {
    const [a, b] = sys.socketPair();
    const ns = sys.Netns.open("/proc/self/ns/net");
    sys.sendPacket(a, enc.encode("add"), ns.fd);
    const got = sys.recvPacket(b);
    expect(got.kind).toBe("packet");
    if (got.kind !== "packet") return;
    expect(new TextDecoder().decode(got.data)).toBe("add");
    expect(got.fds).toHaveLength(1);
    expect(got.fds[0]).not.toBe(ns.fd);
    const received = sys.Netns.adopt(got.fds[0]!);
    expect(received.identity).toEqual(ns.identity);
    expect(received.key).toBe(sys.netnsIdentityOfPath("/proc/self/ns/net").dev + ":" + ns.identity.ino);
    received.close();
    ns.close();
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("empty reads say again, a closed peer says eof", () => {
    const [a, b] = sys.socketPair();
    expect(sys.recvPacket(b).kind).toBe("again");
    sys.closeFd(a);
    expect(sys.recvPacket(b).kind).toBe("eof");
    sys.closeFd(b);
  });

  test("two fds in one message are both reported to the caller (who closes them)", async () => {
    const [a, b] = sys.socketPair();
    await pythonSendFds(a, "two", ["/proc/self/ns/net", "/proc/self/ns/net"]);
    const got = sys.recvPacket(b);
    expect(got.kind).toBe("packet");
    if (got.kind !== "packet") return;
    expect(got.fds).toHaveLength(2);
    for (const fd of got.fds) expect(sys.isNetworkNamespace(fd)).toBe(true);
    got.fds.forEach(sys.closeFd);
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("more fds than we accept: the excess is closed by the kernel and the message is flagged", async () => {
    const [a, b] = sys.socketPair();
    const before = sys.openFdCount();
    await pythonSendFds(a, "many", Array(7).fill("/proc/self/ns/net"));
    const got = sys.recvPacket(b);
    if (got.kind !== "packet") throw new Error(`expected a packet, got ${got.kind}`);
    expect(got.fds.length).toBeGreaterThan(1);
    expect(got.truncated).toBe(true);
    got.fds.forEach(sys.closeFd);
    expect(sys.openFdCount()).toBe(before);
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("a truncated message is reported as such, and its fd still reaches the caller", () => {
    const [a, b] = sys.socketPair();
    const ns = sys.Netns.open("/proc/self/ns/net");
    sys.sendPacket(a, new Uint8Array(64 * 1024), ns.fd);
    const got = sys.recvPacket(b, 1024);
    if (got.kind !== "packet") throw new Error(`expected a packet, got ${got.kind}`);
    expect(got.truncated).toBe(true);
    expect(got.data.byteLength).toBe(1024);
    expect(got.fds).toHaveLength(1);
    got.fds.forEach(sys.closeFd);
    ns.close();
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("1,000 bad messages (two fds, truncated) leak no fd", async () => {
    const [a, b] = sys.socketPair();
    const ns = sys.Netns.open("/proc/self/ns/net");
    const before = sys.openFdCount();
    for (let i = 0; i < 1000; i++) {
      sys.sendPacket(a, new Uint8Array(i % 2 ? 4000 : 10), ns.fd);
      const got = sys.recvPacket(b, 1024);
      if (got.kind !== "packet") throw new Error(`iteration ${i}: ${got.kind}`);
      expect(got.truncated).toBe(i % 2 === 1);
      got.fds.forEach(sys.closeFd);
    }
    // Two-fd messages from an independent sender, in batches (one python process per batch).
    const script = `
import os, socket, sys
s = socket.socket(fileno=3)
for i in range(int(sys.argv[1])):
    fds = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(2)]
    socket.send_fds(s, [b"x"], fds)
    for f in fds: os.close(f)
`;
    let received = 0;
    for (let batch = 0; batch < 10; batch++) {
      const p = Bun.spawn(["python3", "-c", script, "100"], { stdio: ["inherit", "inherit", "inherit", a] as never });
      while (received < (batch + 1) * 100) {
        const got = sys.recvPacket(b);
        if (got.kind === "again") { await Bun.sleep(1); continue; }
        if (got.kind !== "packet") throw new Error(got.kind);
        expect(got.fds).toHaveLength(2);
        got.fds.forEach(sys.closeFd);
        received++;
      }
      expect(await p.exited).toBe(0);
    }
    expect(sys.openFdCount()).toBe(before);
    ns.close();
    sys.closeFd(a);
    sys.closeFd(b);
  }, 60_000);

  test("SO_PEERCRED names the peer process", () => {
    const [a, b] = sys.socketPair();
    const cred = sys.peerCred(a);
    expect(cred.pid).toBe(process.pid);
    expect(cred.uid).toBe(process.getuid!());
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("a dead peer makes send fail with EPIPE, not a signal", () => {
    const [a, b] = sys.socketPair();
    sys.closeFd(b);
    expect(() => sys.sendPacket(a, enc.encode("x"))).toThrow(/sendmsg failed: EPIPE/);
    sys.closeFd(a);
  });
});

describe("network namespace checks", () => {
  test("a regular file, a socket and a mount namespace all fail the netns check, naming why", () => {
    const file = openSync("/etc/hostname", "r");
    expect(() => sys.assertNetworkNamespace(file, "fd to /etc/hostname")).toThrow(/fd to \/etc\/hostname is not a network namespace: not a namespace file \(ENOTTY\)/);
    closeSync(file);
    const [a, b] = sys.socketPair();
    expect(sys.isNetworkNamespace(a)).toBe(false);
    sys.closeFd(a);
    sys.closeFd(b);
    expect(() => sys.Netns.open("/proc/self/ns/mnt")).toThrow(/is not a network namespace: it is a mount namespace/);
    expect(() => sys.assertNetworkNamespace(987654)).toThrow(/not an open file descriptor/);
  });

  test("adopting a non-netns fd closes it (no leak)", () => {
    const before = sys.openFdCount();
    for (let i = 0; i < 100; i++) {
      const fd = openSync("/etc/hostname", "r");
      expect(() => sys.Netns.adopt(fd)).toThrow(sys.NotNetnsError);
    }
    expect(sys.openFdCount()).toBe(before);
  });

  test("errors name the syscall, the errno and the namespace", () => {
    expect(() => sys.Netns.open("/var/run/netns/does-not-exist-nshub")).toThrow(
      "open in netns /var/run/netns/does-not-exist-nshub failed: ENOENT (No such file or directory)",
    );
  });

  test("withNetns refuses async work and always returns home", () => {
    const home = sys.homeNetns();
    const self = sys.Netns.open("/proc/self/ns/net");
    expect(() => sys.withNetns(self, () => Promise.resolve(1))).toThrow(/must be synchronous/);
    expect(() => sys.withNetns(self, () => { throw new Error("inner"); })).toThrow("inner");
    expect(sys.netnsIdentityOfPath("/proc/thread-self/ns/net")).toEqual(home.identity);
    self.close();
  });
});

describe("TCP connect outcome", () => {
  test("a refused connect is reported as ECONNREFUSED, not as an open socket", async () => {
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    await warmPoller(); // its thread and eventfd exist once per process: not a leak
    const before = sys.openFdCount();
    const err = await sys.connectTcp({ host: "127.0.0.1", port, timeoutMs: 2000 }).catch((e) => e);
    expect(err).toBeInstanceOf(sys.SysError);
    expect(err.code).toBe("ECONNREFUSED");
    expect(err.message).toContain(`to 127.0.0.1:${port}`);
    expect(sys.openFdCount()).toBe(before);
  });

  test("a completed connect can be adopted by Bun and carries data both ways", async () => {
    const server = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: { data(s, d) { s.write(`echo:${d}`); } },
    });
    const fd = await sys.connectTcp({ host: "127.0.0.1", port: server.port, timeoutMs: 2000 });
    expect(sys.peerAddress(fd)).toEqual({ ip: "127.0.0.1", port: server.port, family: 4 });
    const reply = await new Promise<string>((resolve) => {
      void Bun.connect({ fd, socket: { open(s: { write(x: string): number }) { s.write("ping"); }, data(s: { end(): void }, d: Buffer) { resolve(String(d)); s.end(); } } } as never);
    });
    expect(reply).toBe("echo:ping");
    server.stop(true);
  });

  test("SO_ORIGINAL_DST on a connection that was not redirected says ENOENT", async () => {
    const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const fd = await sys.connectTcp({ host: "127.0.0.1", port: server.port, timeoutMs: 2000 });
    expect(() => sys.originalDst(fd)).toThrow(/getsockopt\(SO_ORIGINAL_DST\) failed: ENOENT/);
    sys.closeFd(fd);
    server.stop(true);
  });
});

describe("peerFinished", () => {
  test("true only once the peer's FIN is next to read, and it consumes nothing", async () => {
    // A raw server socket (libnshub's listener) so nothing but the test reads from it.
    const lfd = sys.tcpListen({ address: "127.0.0.1", port: 0, backlog: 4, mark: 0, transparent: false });
    const port = sys.localAddress(lfd).port;
    const cfd = await sys.connectTcp({ host: "127.0.0.1", port, timeoutMs: 2000 });
    let sfd = -1;
    for (let i = 0; i < 200 && sfd < 0; i++) {
      sfd = sys.acceptRaw(lfd);
      if (sfd < 0) await Bun.sleep(5);
    }
    expect(sfd).toBeGreaterThanOrEqual(0);
    try {
      expect(sys.peerFinished(sfd)).toBe(false); // nothing arrived yet
      // one byte, then the client's FIN (half-close), on the raw fds
      const bytes = new Uint8Array([0x78]);
      expect(writeSync(cfd, bytes)).toBe(1);
      sys.shutdownFd(cfd, sys.SHUT_WR);
      await Bun.sleep(50);
      expect(sys.peerFinished(sfd)).toBe(false); // the byte is still queued before the FIN
      expect(sys.peerFinished(sfd)).toBe(false); // peeking did not consume it
      const got = new Uint8Array(16);
      expect(readSync(sfd, got)).toBe(1);
      expect(got[0]).toBe(0x78);
      expect(sys.peerFinished(sfd)).toBe(true); // now the FIN is next
    } finally {
      sys.closeFd(sfd);
      sys.closeFd(cfd);
      sys.closeFd(lfd);
    }
  });

  test("a reset is left for the reader: false, and the next read still fails with ECONNRESET", async () => {
    const lfd = sys.tcpListen({ address: "127.0.0.1", port: 0, backlog: 4, mark: 0, transparent: false });
    const cfd = await sys.connectTcp({ host: "127.0.0.1", port: sys.localAddress(lfd).port, timeoutMs: 2000 });
    let sfd = -1;
    for (let i = 0; i < 200 && sfd < 0; i++) {
      sfd = sys.acceptRaw(lfd);
      if (sfd < 0) await Bun.sleep(5);
    }
    try {
      sys.closeReset(cfd); // RST
      await Bun.sleep(50);
      expect(sys.peerFinished(sfd)).toBe(false);
      expect(sys.peerFinished(sfd)).toBe(false);
      let code = "";
      try {
        readSync(sfd, new Uint8Array(16));
      } catch (e) {
        code = (e as NodeJS.ErrnoException).code ?? "";
      }
      expect(code).toBe("ECONNRESET");
    } finally {
      sys.closeFd(sfd);
      sys.closeFd(lfd);
    }
  });

  test("false for a bad fd", () => {
    expect(sys.peerFinished(-1)).toBe(false);
  });
});

describe("fd poller", () => {
  test("reports readability, times out with 0, and cancels with 0", async () => {
    const [a, b] = sys.socketPair();
    const p = sys.fdPoller();
    setTimeout(() => sys.sendPacket(a, enc.encode("x")), 10);
    expect((await p.wait(b, sys.POLLIN, 5000)) & sys.POLLIN).toBe(sys.POLLIN);
    sys.recvPacket(b);
    expect(await p.wait(b, sys.POLLIN, 30)).toBe(0);
    const pending = p.wait(b, sys.POLLIN);
    p.cancel(b);
    expect(await pending).toBe(0);
    sys.closeFd(a);
    sys.closeFd(b);
  });

  test("many concurrent waits each get their own event", async () => {
    const pairs = Array.from({ length: 200 }, () => sys.socketPair());
    const waits = pairs.map(([, b]) => sys.fdPoller().wait(b, sys.POLLIN, 5000));
    pairs.forEach(([a], i) => setTimeout(() => sys.sendPacket(a, enc.encode(String(i))), i % 20));
    const revents = await Promise.all(waits);
    expect(revents.every((r) => (r & sys.POLLIN) !== 0)).toBe(true);
    pairs.flat().forEach(sys.closeFd);
  });
});

describe("sockaddr encoding", () => {
  test("round-trips IPv4, IPv6 and maps v4-mapped IPv6 to IPv4", () => {
    expect(sys.decodeSockaddr(sys.encodeSockaddr("10.1.2.3", 15001))).toEqual({ ip: "10.1.2.3", port: 15001, family: 4 });
    expect(sys.decodeSockaddr(sys.encodeSockaddr("fd00::1:2", 80))).toEqual({ ip: "fd00::1:2", port: 80, family: 6 });
    expect(sys.decodeSockaddr(sys.encodeSockaddr("::ffff:10.0.0.9", 443))).toEqual({ ip: "10.0.0.9", port: 443, family: 4 });
    expect(sys.decodeSockaddr(sys.encodeSockaddr("::", 1))).toEqual({ ip: "::", port: 1, family: 6 });
    expect(() => sys.encodeSockaddr("localhost", 1)).toThrow(/not an IP address/);
  });

  test("sockaddr_in bytes as the kernel lays them out (hand-written)", () => {
    // sa_family AF_INET=2 (host order, little-endian), port 15001=0x3a99 (network order), 10.1.2.3, zero padding
    expect([...sys.encodeSockaddr("10.1.2.3", 15001)]).toEqual([2, 0, 0x3a, 0x99, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect([...sys.encodeSockaddr("255.255.255.255", 65535)].slice(0, 8)).toEqual([2, 0, 255, 255, 255, 255, 255, 255]);
    // AF_INET6=10, port 80, 8 bytes of flowinfo+address start at 8
    expect([...sys.encodeSockaddr("fd00::1", 80)].slice(0, 10)).toEqual([10, 0, 0, 80, 0, 0, 0, 0, 0xfd, 0]);
  });

  test("the IPv4 parser accepts exactly what node's isIPv4 accepts", () => {
    const cases = ["0.0.0.0", "10.1.2.3", "255.255.255.255", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.02.3.4", "1..3.4", ".1.2.3", "1.2.3.", "a.b.c.d", "1.2.3.4 ", " 1.2.3.4", "", "::1", "1.2.3.-4", "1000.1.1.1", "0.0.0.00"];
    for (const ip of cases) expect([ip, sys.parseIPv4(ip) >= 0]).toEqual([ip, isIPv4(ip)]);
    expect(sys.parseIPv4("10.1.2.3")).toBe(0x0a010203);
    expect(sys.parseIPv4("255.255.255.255")).toBe(0xffffffff);
  });
});
