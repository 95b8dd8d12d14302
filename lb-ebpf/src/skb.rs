//! How an skb holds its L4 checksum (`skb->ip_summed`), which decides how a TC program may update
//! that checksum by direct writes instead of a helper call per change. `__sk_buff` does not expose
//! the field: the program reads it from the kernel's `struct sk_buff`, reached through the
//! `bpf_cast_to_kern_ctx` kfunc (which the verifier inlines into a register move), at the offset
//! the agent found in the kernel's BTF before loading. aya 0.14 cannot load kfunc calls, so the
//! program calls a placeholder helper id that the agent rewrites (lb-common's
//! `KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER`); where the kernel offers neither, the call becomes
//! `r0 = 0` and the offset stays 0, and [`ip_summed`] answers `None`.

use core::ffi::c_void;

use aya_ebpf::bindings::__sk_buff;
use lb_common::KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER;

/// The byte of `struct sk_buff` holding `ip_summed`; 0 until the agent sets it (lb-common's
/// `GLOBAL_SKB_IP_SUMMED_BYTE`). In `.rodata`: frozen after load, so the verifier knows the value
/// and checks the load below against the kernel's BTF at that constant offset.
#[unsafe(no_mangle)]
static LB_SKB_IP_SUMMED_BYTE: u32 = 0;
/// The bit position of `ip_summed` in that byte (`GLOBAL_SKB_IP_SUMMED_SHIFT`).
#[unsafe(no_mangle)]
static LB_SKB_IP_SUMMED_SHIFT: u32 = 0;

/// `skb->ip_summed` (lb-common's `CHECKSUM_*`), or `None` where the kernel context cannot be read.
#[inline(always)]
pub fn ip_summed(skb: *mut __sk_buff) -> Option<u8> {
    // SAFETY: reads of our own globals; volatile, or the compiler would fold in the object's 0.
    let (byte, shift) =
        unsafe { (core::ptr::read_volatile(&LB_SKB_IP_SUMMED_BYTE), core::ptr::read_volatile(&LB_SKB_IP_SUMMED_SHIFT)) };
    if byte == 0 {
        return None;
    }
    // SAFETY: the call the agent rewrites into `bpf_cast_to_kern_ctx(ctx)` (its one argument must
    // be the program's context, as here) or into `r0 = 0`. Calling a constant address is how
    // every helper is called.
    let kern = unsafe {
        let cast: unsafe extern "C" fn(*mut c_void) -> *const u8 =
            core::mem::transmute(KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER as usize);
        cast(skb.cast())
    };
    if kern.is_null() {
        return None;
    }
    // SAFETY: a one-byte read inside `struct sk_buff` (the byte holding the bitfield); the
    // verifier checks it against the kernel's BTF and turns it into a fault-protected load.
    let b = unsafe { core::ptr::read_volatile(kern.add(byte as usize)) };
    Some((b >> (shift & 7)) & 3)
}
