//! The return values of the datapath's programs, as BPF_PROG_TEST_RUN reports them
//! (`TC_ACT_*` from `linux/pkt_cls.h`, `XDP_*` from `linux/bpf.h`).

/// TC: the packet continues (translated or untouched).
pub const TC_ACT_OK: i32 = 0;
/// TC: the packet is dropped.
pub const TC_ACT_SHOT: i32 = 2;
/// TC: the packet leaves through another (or, for a reject, the same) interface.
pub const TC_ACT_REDIRECT: i32 = 7;
/// XDP: the packet is dropped.
pub const XDP_DROP: i32 = 1;
/// XDP: the packet continues to the stack (translated or untouched).
pub const XDP_PASS: i32 = 2;
/// XDP: the packet is sent back out of the interface it came in on (a reject).
pub const XDP_TX: i32 = 3;
