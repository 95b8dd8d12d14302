//! Calibrates the datapath's clock (lb-common's `ClockCalibration`): the programs read
//! CLOCK_MONOTONIC as `jiffies × tick + offset`, one inlined load instead of a helper call. The
//! object's `lb_clock_sample` program, run through BPF_PROG_TEST_RUN, reads `jiffies` and
//! `ktime_get_coarse_ns` together; sampled over two to three clock ticks (8–12 ms at HZ 250, once
//! per process), that gives the tick length and the offset. Both clocks advance at the same tick,
//! so the calibrated clock reads what the coarse one reads, give or take a tick (two starts'
//! calibrations may differ by that much: the programs' ages saturate). Every load writes the
//! result into its own `LB_CLOCK` before anything is attached; where sampling fails, `LB_CLOCK`
//! stays 0 and the programs call `bpf_ktime_get_coarse_ns` instead (the same clock, slower).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{CLOCK, ClockCalibration, PROG_CLOCK_SAMPLE};

use super::{DataplaneError, Result};
use crate::maps::MapError;

/// Sampling gives up after this long (a tick is 10 ms at the slowest HZ, 100).
const SAMPLING_LIMIT: Duration = Duration::from_millis(100);
/// Distinct jiffies values to see: the first and last periods may be seen in part only.
const PERIODS: usize = 4;

/// Writes the calibration into the object's `LB_CLOCK` (computed once per process).
pub(super) fn write(ebpf: &mut Ebpf) -> Result<()> {
    static CALIBRATION: OnceLock<Option<ClockCalibration>> = OnceLock::new();
    let cal = *CALIBRATION.get_or_init(|| {
        let found = match sample(ebpf) {
            Ok(samples) => calibrate(&samples).ok_or_else(|| format!("{} samples gave no steady tick", samples.len())),
            Err(e) => Err(format!("{e:#}")),
        };
        found
            .inspect_err(|why| {
                tracing::warn!(reason = %why, "the datapath clock stays on bpf_ktime_get_coarse_ns (one helper call more per packet)")
            })
            .ok()
    });
    let Some(cal) = cal else { return Ok(()) };
    let map = ebpf.map_mut(CLOCK).ok_or(MapError::Missing { name: CLOCK })?;
    let mut arr: Array<_, ClockCalibration> = Array::try_from(map).map_err(MapError::typed(CLOCK, "open"))?;
    arr.set(0, cal, 0).map_err(MapError::typed(CLOCK, "write"))?;
    Ok(())
}

/// The calibration `LB_CLOCK` holds, if any.
pub(super) fn read(ebpf: &Ebpf) -> Result<Option<ClockCalibration>> {
    let map = ebpf.map(CLOCK).ok_or(MapError::Missing { name: CLOCK })?;
    let arr: Array<_, ClockCalibration> = Array::try_from(map).map_err(MapError::typed(CLOCK, "open"))?;
    let cal = arr.get(&0, 0).map_err(MapError::typed(CLOCK, "read"))?;
    Ok((cal.tick_ns != 0).then_some(cal))
}

/// `(jiffies, coarse ns)` pairs until [`PERIODS`] jiffies values were seen.
fn sample(ebpf: &mut Ebpf) -> Result<Vec<(u64, u64)>> {
    let name = PROG_CLOCK_SAMPLE;
    let prog = super::attach::helper_program(ebpf, name, Xdp::load)?;
    let frame = [0u8; 64];
    let mut out = [0u8; 64];
    let mut samples: Vec<(u64, u64)> = Vec::with_capacity(4096);
    let mut periods = 0;
    let start = Instant::now();
    while periods < PERIODS && start.elapsed() < SAMPLING_LIMIT {
        let opts = TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::default() };
        prog.test_run(opts).map_err(|source| DataplaneError::Program { name, source })?;
        let word = |i: usize| u64::from_ne_bytes(out[8 * i..8 * i + 8].try_into().unwrap_or_default());
        let s = (word(0), word(1));
        if samples.last().is_none_or(|last| last.0 != s.0) {
            periods += 1;
        }
        samples.push(s);
    }
    Ok(samples)
}

/// The calibration from `samples` (in time order): each jiffies value's most frequent coarse
/// time (a sample taken while the tick updates the two may pair a new jiffies value with the
/// old time), the tick from consecutive values rounded to the kernel's TICK_NSEC for a whole HZ,
/// and the offset. `None` without two steady values or with a tick no HZ explains.
pub fn calibrate(samples: &[(u64, u64)]) -> Option<ClockCalibration> {
    // (jiffies, the most frequent coarse time while jiffies had that value).
    let mut periods: Vec<(u64, u64)> = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let j = samples[i].0;
        let end = samples[i..].iter().position(|s| s.0 != j).map_or(samples.len(), |n| i + n);
        let mut times: Vec<u64> = samples[i..end].iter().map(|s| s.1).collect();
        times.sort_unstable();
        let mode = times.chunk_by(|a, b| a == b).max_by_key(|run| run.len()).map(|run| run[0])?;
        periods.push((j, mode));
        i = end;
    }
    // The first and last values may have been seen for part of their tick only: keep the
    // middle ones when there are enough.
    let steady = if periods.len() > 2 { &periods[1..periods.len() - 1] } else { &periods[..] };
    let (first, last) = (steady.first()?, steady.last()?);
    let (dj, dt) = (last.0.checked_sub(first.0)?, last.1.checked_sub(first.1)?);
    if dj == 0 || dt == 0 {
        return None;
    }
    let hz = (1_000_000_000.0 * dj as f64 / dt as f64).round() as u64;
    if !(24..=10_000).contains(&hz) {
        return None;
    }
    // The kernel's TICK_NSEC: (NSEC_PER_SEC + HZ/2) / HZ.
    let tick_ns = (1_000_000_000 + hz / 2) / hz;
    if dt.abs_diff(dj * tick_ns) > tick_ns / 20 {
        return None;
    }
    let offset_ns = first.1.wrapping_sub(first.0.wrapping_mul(tick_ns));
    let cal = ClockCalibration { tick_ns, offset_ns };
    // Every steady value must agree to within a twentieth of a tick.
    steady.iter().all(|&(j, t)| cal.at(j).abs_diff(t) <= tick_ns / 20).then_some(cal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of a kernel at `hz` whose jiffies start near the boot value, `per_tick` samples a
    /// tick, the first sample of every tick racing the update (new jiffies, old time) when `race`.
    fn kernel(hz: u64, ticks: u64, per_tick: usize, race: bool) -> Vec<(u64, u64)> {
        let tick = (1_000_000_000 + hz / 2) / hz;
        let j0 = (1u64 << 32) - 300 * hz + 12_345;
        let t0 = 7_000_000_000u64;
        let mut out = Vec::new();
        for k in 0..ticks {
            for s in 0..per_tick {
                let t = if race && s == 0 && k > 0 { t0 + (k - 1) * tick } else { t0 + k * tick };
                out.push((j0 + k, t));
            }
        }
        out
    }

    #[test]
    fn the_calibrated_clock_equals_the_coarse_clock_at_every_tick() {
        for hz in [100, 250, 300, 1000] {
            for race in [false, true] {
                let samples = kernel(hz, 5, 50, race);
                let cal = calibrate(&samples).unwrap_or_else(|| panic!("HZ {hz}, race {race}"));
                assert_eq!(cal.tick_ns, (1_000_000_000 + hz / 2) / hz);
                let (j, t) = samples[samples.len() / 2 + 1];
                assert_eq!(cal.at(j), t, "HZ {hz}, race {race}");
                // And an hour later.
                let later = j + 3600 * hz;
                assert_eq!(cal.at(later), t + 3600 * hz * cal.tick_ns);
            }
        }
    }

    #[test]
    fn too_few_or_inconsistent_samples_give_no_calibration() {
        assert_eq!(calibrate(&[]), None);
        assert_eq!(calibrate(&[(5, 100)]), None);
        // Time stood still while jiffies moved.
        assert_eq!(calibrate(&[(5, 100), (6, 100), (7, 100), (8, 100)]), None);
        // A tick of 3 ms then 5 ms: no HZ explains both.
        assert_eq!(calibrate(&[(1, 0), (2, 3_000_000), (3, 8_000_000), (4, 11_000_000), (5, 16_000_000)]), None);
    }
}
