//! libnshub: the few Linux syscalls Bun does not offer, for nshub's TypeScript side.
//!
//! Every export returns a non-negative result on success and -errno on failure (the raw
//! syscall convention), because bun:ffi has no reliable way to read errno after a call.
//! Nothing here allocates, keeps state or starts threads; the TypeScript wrappers in
//! src/sys/ turn negative results into typed errors.

const std = @import("std");
const linux = std.os.linux;

const CLONE_NEWNET: usize = 0x40000000;
const NS_GET_NSTYPE: u32 = 0xb703; // _IO(0xb7, 0x3)
const SCM_RIGHTS: i32 = 1;
const SO_ORIGINAL_DST: u32 = 80; // netfilter, SOL_IP
const IP6T_SO_ORIGINAL_DST: u32 = 80; // netfilter, SOL_IPV6
const SOL_IP: u32 = 0;
const SOL_IPV6: u32 = 41;
const SOL_SOCKET: u32 = 1;
const SO_MARK: u32 = 36;
const SO_ERROR: u32 = 4;
const SO_PEERCRED: u32 = 17;
const IP_TRANSPARENT: u32 = 19;
const IP_FREEBIND: u32 = 15;
const IPV6_TRANSPARENT: u32 = 75;
const IPV6_FREEBIND: u32 = 78;
const MSG_NOSIGNAL: u32 = 0x4000;
const MSG_DONTWAIT: u32 = 0x40;
const MSG_TRUNC: u32 = 0x20;
const POLLRDHUP: i16 = 0x2000;
const FIONREAD: u32 = 0x541B;
const MSG_CMSG_CLOEXEC: u32 = 0x40000000;
const EINPROGRESS: i32 = 115;
const EINVAL: i32 = 22;
const EIO: i32 = 5;

/// Largest number of fds one recvmsg reports; any fd beyond it is closed by the kernel
/// (MSG_CTRUNC), so callers still learn that "more than one" arrived and nothing leaks.
pub const MAX_RECV_FDS = 4;

fn ret(r: usize) i32 {
    const e = linux.getErrno(r);
    if (e != .SUCCESS) return -@as(i32, @intCast(@intFromEnum(e)));
    return @as(i32, @intCast(@as(isize, @bitCast(r))));
}

fn fdArg(fd: i32) usize {
    return @as(usize, @bitCast(@as(isize, fd)));
}

// ---- namespaces ---------------------------------------------------------------------------

/// Move the calling thread into the network namespace `fd` refers to.
export fn nh_setns_net(fd: i32) i32 {
    return ret(linux.syscall2(.setns, fdArg(fd), CLONE_NEWNET));
}

/// open(path, O_RDONLY|O_CLOEXEC): netns paths such as /proc/thread-self/ns/net or /var/run/netns/x.
export fn nh_open_ro(path: [*:0]const u8) i32 {
    return ret(linux.openat(linux.AT.FDCWD, path, linux.O.RDONLY | linux.O.CLOEXEC, 0));
}

export fn nh_close(fd: i32) i32 {
    return ret(linux.close(fd));
}

/// Writes st_dev and st_ino of `fd` into out[0], out[1]: the identity of a namespace.
export fn nh_fstat_ident(fd: i32, out: *[2]u64) i32 {
    var st: linux.Stat = undefined;
    const r = ret(linux.fstat(fd, &st));
    if (r < 0) return r;
    out[0] = st.dev;
    out[1] = st.ino;
    return 0;
}

/// The namespace type of an nsfs fd (CLONE_NEWNET for a network namespace); -ENOTTY or
/// -EINVAL for anything that is not a namespace.
export fn nh_ns_type(fd: i32) i32 {
    return ret(linux.ioctl(fd, NS_GET_NSTYPE, 0));
}

// ---- socket options ------------------------------------------------------------------------

export fn nh_setsockopt_int(fd: i32, level: i32, opt: i32, value: i32) i32 {
    var v: i32 = value;
    return ret(linux.setsockopt(fd, @as(u32, @bitCast(level)), @as(u32, @bitCast(opt)), std.mem.asBytes(&v), @sizeOf(i32)));
}

export fn nh_getsockopt_int(fd: i32, level: i32, opt: i32, out: *i32) i32 {
    var len: linux.socklen_t = @sizeOf(i32);
    return ret(linux.getsockopt(fd, @as(u32, @bitCast(level)), @as(u32, @bitCast(opt)), @as([*]u8, @ptrCast(out)), &len));
}

/// The destination a connection had before a netfilter REDIRECT/DNAT, written as a raw
/// sockaddr_in or sockaddr_in6 into `out` (28 bytes). Returns the address family.
export fn nh_original_dst(fd: i32, ipv6: i32, out: *[28]u8) i32 {
    var len: linux.socklen_t = 28;
    @memset(out, 0);
    const level = if (ipv6 != 0) SOL_IPV6 else SOL_IP;
    const opt = if (ipv6 != 0) IP6T_SO_ORIGINAL_DST else SO_ORIGINAL_DST;
    const r = ret(linux.getsockopt(fd, level, opt, out, &len));
    if (r < 0) return r;
    return @as(i32, std.mem.readIntLittle(u16, out[0..2]));
}

/// The local address of a socket (getsockname) as a raw sockaddr (up to 28 bytes).
export fn nh_sockname(fd: i32, peer: i32, out: *[28]u8) i32 {
    var len: linux.socklen_t = 28;
    @memset(out, 0);
    const p: *linux.sockaddr = @ptrCast(@alignCast(out));
    const r = if (peer != 0) ret(linux.getpeername(fd, p, &len)) else ret(linux.getsockname(fd, p, &len));
    if (r < 0) return r;
    return @as(i32, std.mem.readIntLittle(u16, out[0..2]));
}

// ---- TCP sockets inside a namespace ---------------------------------------------------------

/// socket(domain, type|SOCK_NONBLOCK|SOCK_CLOEXEC) created while the calling thread is in
/// `netns` (skip the switch when netns < 0), then back to `home`. The thread always ends in
/// `home`: if the way back fails that is reported as -EIO with the socket closed, and the
/// caller must treat the thread as lost.
export fn nh_socket_in_netns(netns: i32, home: i32, domain: i32, sock_type: i32) i32 {
    if (netns >= 0) {
        const e = ret(linux.syscall2(.setns, fdArg(netns), CLONE_NEWNET));
        if (e < 0) return e;
    }
    const flags: u32 = linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC;
    const fd = ret(linux.socket(@as(u32, @bitCast(domain)), @as(u32, @bitCast(sock_type)) | flags, 0));
    if (netns >= 0) {
        const back = ret(linux.syscall2(.setns, fdArg(home), CLONE_NEWNET));
        if (back < 0) {
            if (fd >= 0) _ = linux.close(fd);
            return -EIO;
        }
    }
    return fd;
}

fn setInt(fd: i32, level: u32, opt: u32, value: i32) i32 {
    var v: i32 = value;
    return ret(linux.setsockopt(fd, level, opt, std.mem.asBytes(&v), @sizeOf(i32)));
}

/// A non-blocking TCP connect from inside `netns`: the socket gets SO_MARK `mark` (if not 0)
/// before anything leaves it; when `src` is given (src_len > 0) it is made transparent and
/// freebind and bound to that foreign address first. `dst` is a raw sockaddr_in/in6.
/// Returns the fd (connect may still be in progress: see nh_connect_result) or -errno, and
/// never leaves a half-made socket open on failure.
export fn nh_tcp_connect(netns: i32, home: i32, mark: u32, src: ?[*]const u8, src_len: u32, dst: [*]const u8, dst_len: u32) i32 {
    if (dst_len < 16 or dst_len > 28) return -EINVAL;
    const family: u16 = std.mem.readIntLittle(u16, dst[0..2]);
    const fd = nh_socket_in_netns(netns, home, family, linux.SOCK.STREAM);
    if (fd < 0) return fd;
    const r = tcpSetupAndConnect(fd, family, mark, src, src_len, dst, dst_len);
    if (r < 0 and r != -EINPROGRESS) {
        _ = linux.close(fd);
        return r;
    }
    return fd;
}

fn tcpSetupAndConnect(fd: i32, family: u16, mark: u32, src: ?[*]const u8, src_len: u32, dst: [*]const u8, dst_len: u32) i32 {
    if (mark != 0) {
        const r = setInt(fd, SOL_SOCKET, SO_MARK, @as(i32, @bitCast(mark)));
        if (r < 0) return r;
    }
    if (src) |s| {
        if (src_len > 0) {
            const v6 = family == linux.AF.INET6;
            var r = setInt(fd, if (v6) SOL_IPV6 else SOL_IP, if (v6) IPV6_TRANSPARENT else IP_TRANSPARENT, 1);
            if (r < 0) return r;
            r = setInt(fd, if (v6) SOL_IPV6 else SOL_IP, if (v6) IPV6_FREEBIND else IP_FREEBIND, 1);
            if (r < 0) return r;
            r = ret(linux.bind(fd, @ptrCast(@alignCast(s)), src_len));
            if (r < 0) return r;
        }
    }
    return ret(linux.connect(fd, @ptrCast(@alignCast(dst)), dst_len));
}

/// Outcome of a non-blocking connect: 0 once connected, -EINPROGRESS while still pending
/// after waiting up to `timeout_ms` (0 = just look), or the connect's own -errno (e.g.
/// -ECONNREFUSED) read from SO_ERROR.
export fn nh_connect_result(fd: i32, timeout_ms: i32) i32 {
    var pfd = [1]linux.pollfd{.{ .fd = fd, .events = linux.POLL.OUT, .revents = 0 }};
    const n = ret(linux.poll(&pfd, 1, timeout_ms));
    if (n < 0) return n;
    if (n == 0) return -EINPROGRESS;
    var err: i32 = 0;
    var len: linux.socklen_t = @sizeOf(i32);
    const r = ret(linux.getsockopt(fd, SOL_SOCKET, SO_ERROR, std.mem.asBytes(&err), &len));
    if (r < 0) return r;
    return -err;
}

// ---- AF_UNIX SOCK_SEQPACKET and fd passing ---------------------------------------------------

fn unixAddr(path: [*:0]const u8, addr: *linux.sockaddr.un) i32 {
    const p = std.mem.span(path);
    if (p.len == 0 or p.len >= addr.path.len) return -EINVAL;
    addr.* = .{ .family = linux.AF.UNIX, .path = undefined };
    @memset(&addr.path, 0);
    @memcpy(addr.path[0..p.len], p);
    return 0;
}

/// A listening, non-blocking AF_UNIX socket of `sock_type` (SOCK_SEQPACKET=5) bound to `path`.
export fn nh_unix_listen(path: [*:0]const u8, sock_type: i32, backlog: i32) i32 {
    var addr: linux.sockaddr.un = undefined;
    const a = unixAddr(path, &addr);
    if (a < 0) return a;
    const fd = ret(linux.socket(linux.AF.UNIX, @as(u32, @bitCast(sock_type)) | linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC, 0));
    if (fd < 0) return fd;
    var r = ret(linux.bind(fd, @ptrCast(&addr), @sizeOf(linux.sockaddr.un)));
    if (r >= 0) r = ret(linux.listen(fd, @as(u31, @intCast(@max(backlog, 1)))));
    if (r < 0) {
        _ = linux.close(fd);
        return r;
    }
    return fd;
}

/// A connected, non-blocking AF_UNIX socket of `sock_type` to `path`.
export fn nh_unix_connect(path: [*:0]const u8, sock_type: i32) i32 {
    var addr: linux.sockaddr.un = undefined;
    const a = unixAddr(path, &addr);
    if (a < 0) return a;
    const fd = ret(linux.socket(linux.AF.UNIX, @as(u32, @bitCast(sock_type)) | linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC, 0));
    if (fd < 0) return fd;
    const r = ret(linux.connect(fd, @ptrCast(&addr), @sizeOf(linux.sockaddr.un)));
    if (r < 0) {
        _ = linux.close(fd);
        return r;
    }
    return fd;
}

export fn nh_accept(fd: i32) i32 {
    return ret(linux.accept4(fd, null, null, linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC));
}

export fn nh_socketpair(sock_type: i32, out: *[2]i32) i32 {
    return ret(linux.socketpair(linux.AF.UNIX, sock_type | linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC, 0, out));
}

export fn nh_shutdown(fd: i32, how: i32) i32 {
    return ret(linux.shutdown(fd, how));
}

/// Whether the peer's FIN is next in the receive queue: 1 when it has closed its side and
/// no byte is left to read, 0 when bytes are queued, nothing arrived yet or the socket has an
/// error, else -errno. Reads nothing and leaves a pending error (a reset) for the reader:
/// a recv(MSG_PEEK) would consume it, so this asks poll (POLLRDHUP) and FIONREAD instead.
export fn nh_peer_finished(fd: i32) i32 {
    var p = [1]linux.pollfd{.{ .fd = fd, .events = linux.POLL.IN | POLLRDHUP, .revents = 0 }};
    const r = ret(linux.poll(&p, 1, 0));
    if (r <= 0) return r;
    if (p[0].revents & (linux.POLL.ERR | linux.POLL.NVAL) != 0) return 0;
    if (p[0].revents & POLLRDHUP == 0) return 0;
    var queued: i32 = 0;
    const q = ret(linux.ioctl(fd, FIONREAD, @intFromPtr(&queued)));
    if (q < 0) return q;
    return if (queued == 0) 1 else 0;
}

const FdCmsg = extern struct {
    len: usize,
    level: i32,
    type: i32,
    fds: [MAX_RECV_FDS]i32,
};

/// Send one packet; with `pass_fd` >= 0 it carries that fd as SCM_RIGHTS. Never blocks and
/// never raises SIGPIPE (a dead peer is -EPIPE).
export fn nh_sendmsg(fd: i32, buf: [*]const u8, len: u32, pass_fd: i32) i32 {
    var iov = [1]std.os.iovec_const{.{ .iov_base = buf, .iov_len = len }};
    var cmsg = FdCmsg{ .len = @sizeOf(usize) + 8 + 4, .level = @as(i32, @intCast(SOL_SOCKET)), .type = SCM_RIGHTS, .fds = .{ pass_fd, -1, -1, -1 } };
    var msg = linux.msghdr_const{
        .name = null,
        .namelen = 0,
        .iov = &iov,
        .iovlen = 1,
        .control = if (pass_fd >= 0) &cmsg else null,
        // CMSG_SPACE(sizeof(int)) = 24 on 64-bit
        .controllen = if (pass_fd >= 0) 24 else 0,
        .flags = 0,
    };
    return ret(linux.sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT));
}

/// Receive one packet without blocking. Returns the packet's real length (larger than `cap`
/// when it was truncated), 0 at EOF, or -errno (-EAGAIN: nothing to read). Received fds
/// (close-on-exec) go to fds_out, their count to meta[0], and the msg_flags (MSG_TRUNC,
/// MSG_CTRUNC) to meta[1]. The caller owns every fd reported, also on a bad packet.
export fn nh_recvmsg(fd: i32, buf: [*]u8, cap: u32, fds_out: *[MAX_RECV_FDS]i32, meta: *[2]i32) i32 {
    var iov = [1]std.os.iovec{.{ .iov_base = buf, .iov_len = cap }};
    var control: [@sizeOf(FdCmsg) + 8]u8 align(8) = undefined;
    var msg = linux.msghdr{
        .name = null,
        .namelen = 0,
        .iov = &iov,
        .iovlen = 1,
        .control = &control,
        .controllen = control.len,
        .flags = 0,
    };
    meta[0] = 0;
    meta[1] = 0;
    const r = ret(linux.recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT | MSG_TRUNC));
    if (r < 0) return r;
    meta[1] = msg.flags;
    // Walk the control messages and collect every SCM_RIGHTS fd.
    var off: usize = 0;
    const clen: usize = msg.controllen;
    var count: i32 = 0;
    while (off + 16 <= clen) {
        const hdr_len = std.mem.readIntLittle(usize, control[off..][0..8]);
        const level = std.mem.readIntLittle(i32, control[off + 8 ..][0..4]);
        const typ = std.mem.readIntLittle(i32, control[off + 12 ..][0..4]);
        if (hdr_len < 16 or off + hdr_len > clen) break;
        if (level == SOL_SOCKET and typ == SCM_RIGHTS) {
            var p: usize = off + 16;
            while (p + 4 <= off + hdr_len) : (p += 4) {
                const got = std.mem.readIntLittle(i32, control[p..][0..4]);
                if (count < MAX_RECV_FDS) {
                    fds_out[@as(usize, @intCast(count))] = got;
                    count += 1;
                } else {
                    _ = linux.close(got);
                }
            }
        }
        off += (hdr_len + 7) & ~@as(usize, 7);
    }
    meta[0] = count;
    return r;
}

/// SO_PEERCRED of a connected unix socket: out = { pid, uid, gid }.
export fn nh_peercred(fd: i32, out: *[3]i32) i32 {
    var len: linux.socklen_t = 12;
    return ret(linux.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, @as([*]u8, @ptrCast(out)), &len));
}

// ---- waiting without blocking the JS thread ----------------------------------------------------

/// poll(2) over `n` pollfd records (8 bytes each: fd i32, events i16, revents i16).
export fn nh_poll(fds: [*]linux.pollfd, n: u32, timeout_ms: i32) i32 {
    return ret(linux.poll(fds, n, timeout_ms));
}

/// A non-blocking eventfd, used to wake a poller thread.
export fn nh_eventfd() i32 {
    return ret(linux.eventfd(0, linux.EFD.CLOEXEC | linux.EFD.NONBLOCK));
}

export fn nh_eventfd_signal(fd: i32) i32 {
    var one: u64 = 1;
    return ret(linux.write(fd, std.mem.asBytes(&one), 8));
}

export fn nh_eventfd_drain(fd: i32) i32 {
    var v: u64 = 0;
    const r = ret(linux.read(fd, std.mem.asBytes(&v), 8));
    return if (r < 0) r else 0;
}

// ---- the splice relay: listeners, epoll, pipes and splice(2) ---------------------------------
// The proxy's kernel-copy relay (src/proxy/splice-worker.ts) runs its own epoll loop on a
// Worker thread; these are its syscalls. Bytes move socket -> pipe -> socket inside the kernel.

const SO_REUSEADDR: u32 = 2;
const SO_REUSEPORT: u32 = 15;
const SO_LINGER: u32 = 13;
const IPV6_V6ONLY: u32 = 26;
const F_SETPIPE_SZ: i32 = 1031;
const F_GETPIPE_SZ: i32 = 1032;

/// A non-blocking TCP listener in the calling thread's netns, bound to the raw sockaddr `addr`
/// with SO_REUSEADDR and SO_REUSEPORT (a second proxy can bind the same port for a hand-over),
/// dual stack when bound to "::", SO_MARK `mark` (if not 0; accepted sockets inherit it) and,
/// with `transparent`, IP(V6)_TRANSPARENT. Returns the fd or -errno with nothing left open.
export fn nh_tcp_listen(addr: [*]const u8, addr_len: u32, backlog: i32, mark: u32, transparent: i32) i32 {
    if (addr_len < 16 or addr_len > 28) return -EINVAL;
    const family: u16 = std.mem.readIntLittle(u16, addr[0..2]);
    const v6 = family == linux.AF.INET6;
    const fd = ret(linux.socket(family, linux.SOCK.STREAM | linux.SOCK.NONBLOCK | linux.SOCK.CLOEXEC, 0));
    if (fd < 0) return fd;
    const r = listenSetup(fd, v6, addr, addr_len, backlog, mark, transparent != 0);
    if (r < 0) {
        _ = linux.close(fd);
        return r;
    }
    return fd;
}

fn listenSetup(fd: i32, v6: bool, addr: [*]const u8, addr_len: u32, backlog: i32, mark: u32, transparent: bool) i32 {
    var r = setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (r < 0) return r;
    r = setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (r < 0) return r;
    if (v6) {
        r = setInt(fd, SOL_IPV6, IPV6_V6ONLY, 0);
        if (r < 0) return r;
    }
    if (mark != 0) {
        r = setInt(fd, SOL_SOCKET, SO_MARK, @as(i32, @bitCast(mark)));
        if (r < 0) return r;
    }
    if (transparent) {
        r = setInt(fd, if (v6) SOL_IPV6 else SOL_IP, if (v6) IPV6_TRANSPARENT else IP_TRANSPARENT, 1);
        if (r < 0) return r;
    }
    r = ret(linux.bind(fd, @ptrCast(@alignCast(addr)), addr_len));
    if (r < 0) return r;
    const b: u31 = if (backlog < 0) 0 else @as(u31, @intCast(backlog));
    return ret(linux.listen(fd, b));
}

/// Closes `fd` with an RST instead of a FIN (SO_LINGER on, timeout 0): a relay reset.
export fn nh_close_reset(fd: i32) i32 {
    const linger = extern struct { onoff: i32, secs: i32 }{ .onoff = 1, .secs = 0 };
    _ = linux.setsockopt(fd, SOL_SOCKET, SO_LINGER, std.mem.asBytes(&linger), @sizeOf(@TypeOf(linger)));
    return ret(linux.close(fd));
}

export fn nh_epoll_create() i32 {
    return ret(linux.epoll_create1(linux.EPOLL.CLOEXEC));
}

/// epoll_ctl with a 32-bit cookie as the event's data (what nh_epoll_wait reports back).
export fn nh_epoll_ctl(ep: i32, op: i32, fd: i32, events: u32, cookie: u32) i32 {
    var ev = linux.epoll_event{ .events = events, .data = .{ .u64 = cookie } };
    return ret(linux.epoll_ctl(ep, @as(u32, @bitCast(op)), fd, if (op == linux.EPOLL.CTL_DEL) null else &ev));
}

/// epoll_wait into `out` as [events, cookie] pairs of u32 (epoll_event itself is packed,
/// awkward to read from JS). Returns how many pairs were written.
export fn nh_epoll_wait(ep: i32, out: [*]u32, max: u32, timeout_ms: i32) i32 {
    var evs: [256]linux.epoll_event = undefined;
    const n_max: u32 = if (max > evs.len) evs.len else max;
    const r = ret(linux.epoll_wait(ep, &evs, n_max, timeout_ms));
    if (r <= 0) return r;
    var i: usize = 0;
    while (i < @as(usize, @intCast(r))) : (i += 1) {
        out[2 * i] = evs[i].events;
        out[2 * i + 1] = @as(u32, @truncate(evs[i].data.u64));
    }
    return r;
}

/// A non-blocking pipe pair into out[0] (read end), out[1] (write end), sized to `size` bytes
/// when the system allows (else the default). Returns the pipe's capacity in bytes.
export fn nh_pipe(out: *[2]i32, size: i32) i32 {
    const r = ret(linux.pipe2(out, linux.O.NONBLOCK | linux.O.CLOEXEC));
    if (r < 0) return r;
    if (size > 0) _ = linux.fcntl(out[1], F_SETPIPE_SZ, @as(usize, @intCast(size)));
    const cap = ret(linux.fcntl(out[1], F_GETPIPE_SZ, 0));
    if (cap < 0) {
        _ = linux.close(out[0]);
        _ = linux.close(out[1]);
        return cap;
    }
    return cap;
}

const SPLICE_F_MOVE: usize = 1;
const SPLICE_F_NONBLOCK: usize = 2;

/// splice(2) up to `len` bytes from `fd_in` to `fd_out` (one of them a pipe), never blocking.
/// Returns the bytes moved, 0 at end of input, or -errno (-EAGAIN: nothing to do now).
export fn nh_splice(fd_in: i32, fd_out: i32, len: u32) i32 {
    return ret(linux.syscall6(.splice, fdArg(fd_in), 0, fdArg(fd_out), 0, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
}
