//! The lb datapath. Entry points are thin: parse once, decide in `lb::process`, rewrite, count
//! exactly one verdict. No per-packet logging: counters are the observability.
#![no_std]
#![no_main]

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
