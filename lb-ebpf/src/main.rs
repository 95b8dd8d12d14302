//! The lb datapath. The packet programs share one run path (`run`) behind a small context trait
//! with an XDP and a TC implementation (`xdp.rs` and `tc.rs` are the entry files), split by
//! concern: parsing (`parse`), the address filter and frontends (`service`), backend selection
//! (`select`, shared with the socket hooks of `sock`), conntrack (`conntrack`), SNAT ports and their reply slots (`snat`), translation and
//! checksums (`nat`, `csum`), fragments (`frag`), ICMP errors (`icmp`), rejects (`reject`), `lb monitor`'s events (`monitor`),
//! counters (`counters`), the clock (`clock`), an skb's checksum state (`skb`), the hook a program runs at (`hook`) and the per-CPU scratch space and its
//! map (`scratch`). No per-packet logging:
//! counters are the observability, and every packet ends in exactly one verdict counter.
#![no_std]
#![no_main]
// The one compare-and-exchange of `snat` (see there).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go by reference on purpose: passed by value to aya-ebpf's generic
// `Borrow<K>` parameters they would be copied onto the 512-byte BPF stack (40-byte conntrack
// keys, the per-CPU scratch's whole point).
#![allow(clippy::needless_borrows_for_generic_args)]

mod clock;
mod conntrack;
mod counters;
mod csum;
mod frag;
mod hook;
mod icmp;
mod maps;
mod monitor;
mod nat;
mod parse;
mod reject;
mod run;
mod scratch;
mod select;
mod service;
mod skb;
mod snat;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
