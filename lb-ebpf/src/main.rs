//! The lb datapath. Entry points are thin: parse once, decide in `lb::process`, rewrite, count
//! exactly one verdict. No per-packet logging: counters are the observability.
#![no_std]
#![no_main]
// Map keys and values go by reference on purpose: passed by value to aya-ebpf's generic
// `Borrow<K>` parameters they would be copied onto the 512-byte BPF stack (40-byte conntrack
// keys, the per-CPU scratch's whole point).
#![allow(clippy::needless_borrows_for_generic_args)]

mod csum;
mod lb;
mod maps;
mod parse;
mod reject;
mod rewrite;
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
