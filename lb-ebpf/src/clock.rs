//! The datapath's clock: CLOCK_MONOTONIC at jiffy resolution (lifetimes are seconds), read as
//! `jiffies × tick + offset` from the calibration the agent writes at load (`LB_CLOCK`, see
//! lb-common's `ClockCalibration`). The verifier inlines `bpf_jiffies64` into one load, where
//! `bpf_ktime_get_coarse_ns` (the same clock) is a helper call; an uncalibrated object (`tick_ns`
//! 0) calls that helper. Every program reads time here, so conntrack, affinity, fragment and
//! monitor times are one clock, the one the agent's sweep compares with CLOCK_MONOTONIC.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};

use crate::maps::LB_CLOCK;

/// Now, in CLOCK_MONOTONIC nanoseconds (jiffy resolution).
#[inline(always)]
pub fn now() -> u64 {
    if let Some(cal) = LB_CLOCK.get(0)
        && cal.tick_ns != 0
    {
        // SAFETY: helper without arguments.
        return cal.at(unsafe { bpf_jiffies64() });
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// How long ago `then` was, at `now`. A time another object's programs stamped (the agent's
/// previous start, with its own calibration, or the helper clock of an older build) may lie up to
/// a tick after `now`: that is age 0, not a wrapped subtraction that would make a live entry look
/// expired.
#[inline(always)]
pub fn age(now: u64, then: u64) -> u64 {
    now.saturating_sub(then)
}

/// One sample of both clocks for the agent's calibration, run through BPF_PROG_TEST_RUN and never
/// attached: `jiffies` then `ktime_get_coarse_ns`, as two host-order u64 at the start of the
/// packet.
#[xdp]
pub fn lb_clock_sample(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 16 <= end {
        // SAFETY: helpers without arguments; 16 bytes inside the packet, checked above.
        unsafe {
            let jiffies = bpf_jiffies64();
            let coarse = bpf_ktime_get_coarse_ns();
            core::ptr::write_unaligned(data as *mut u64, jiffies);
            core::ptr::write_unaligned((data + 8) as *mut u64, coarse);
        }
    }
    XDP_PASS
}
