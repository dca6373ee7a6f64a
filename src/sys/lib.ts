// Loads libnshub (zig/nshub.zig). The .so is embedded into the compiled binary by the `file`
// import below; under `bun run` the same import resolves to zig-out/ on disk. This module and
// its siblings in src/sys are the only code that touches bun:ffi.
import { dlopen, FFIType } from "bun:ffi";
import libPath from "../../zig-out/libnshub.so" with { type: "file" };

const { i32, u32, ptr, cstring } = FFIType;

export const lib = dlopen(libPath, {
  nh_setns_net: { args: [i32], returns: i32 },
  nh_open_ro: { args: [cstring], returns: i32 },
  nh_close: { args: [i32], returns: i32 },
  nh_fstat_ident: { args: [i32, ptr], returns: i32 },
  nh_ns_type: { args: [i32], returns: i32 },
  nh_setsockopt_int: { args: [i32, i32, i32, i32], returns: i32 },
  nh_getsockopt_int: { args: [i32, i32, i32, ptr], returns: i32 },
  nh_original_dst: { args: [i32, i32, ptr], returns: i32 },
  nh_sockname: { args: [i32, i32, ptr], returns: i32 },
  nh_socket_in_netns: { args: [i32, i32, i32, i32], returns: i32 },
  nh_tcp_connect: { args: [i32, i32, u32, ptr, u32, ptr, u32], returns: i32 },
  nh_connect_result: { args: [i32, i32], returns: i32 },
  nh_unix_listen: { args: [cstring, i32, i32], returns: i32 },
  nh_unix_connect: { args: [cstring, i32], returns: i32 },
  nh_accept: { args: [i32], returns: i32 },
  nh_socketpair: { args: [i32, ptr], returns: i32 },
  nh_shutdown: { args: [i32, i32], returns: i32 },
  nh_peer_finished: { args: [i32], returns: i32 },
  nh_sendmsg: { args: [i32, ptr, u32, i32], returns: i32 },
  nh_recvmsg: { args: [i32, ptr, u32, ptr, ptr], returns: i32 },
  nh_peercred: { args: [i32, ptr], returns: i32 },
  nh_poll: { args: [ptr, u32, i32], returns: i32 },
  nh_eventfd: { args: [], returns: i32 },
  nh_eventfd_signal: { args: [i32], returns: i32 },
  nh_eventfd_drain: { args: [i32], returns: i32 },
  nh_tcp_listen: { args: [ptr, u32, i32, u32, i32], returns: i32 },
  nh_close_reset: { args: [i32], returns: i32 },
  nh_epoll_create: { args: [], returns: i32 },
  nh_epoll_ctl: { args: [i32, i32, i32, u32, u32], returns: i32 },
  nh_epoll_wait: { args: [i32, ptr, u32, i32], returns: i32 },
  nh_pipe: { args: [ptr, i32], returns: i32 },
  nh_splice: { args: [i32, i32, u32], returns: i32 },
}).symbols;

/** Encodes a path for a `cstring` argument (NUL-terminated UTF-8). */
export function cstr(s: string): Buffer {
  return Buffer.from(s + "\0", "utf8");
}
