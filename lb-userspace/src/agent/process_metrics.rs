//! The process metrics under the names of Prometheus' process collector (what every client
//! library exports and dashboards expect): memory, CPU time, file descriptors, start time, read
//! from `/proc/self` at scrape time.

use std::fmt::Write as _;

use super::exposition::header;

pub(super) fn render(o: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 (`state`) on.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if ticks > 0
        && let (Some(utime), Some(stime)) = (field(14), field(15))
    {
        header(o, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        let _ = writeln!(o, "process_cpu_seconds_total {}", (utime + stime) / ticks as f64);
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            header(o, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
            let _ = writeln!(o, "process_start_time_seconds {}", boot + start / ticks as f64);
        }
    }
    if let Some(vsize) = field(23) {
        header(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        let _ = writeln!(o, "process_virtual_memory_bytes {vsize}");
    }
    if let Some(rss) = field(24).filter(|_| page > 0) {
        header(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        let _ = writeln!(o, "process_resident_memory_bytes {}", rss * page as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(o, "process_open_fds", "gauge", "Number of open file descriptors.");
        let _ = writeln!(o, "process_open_fds {}", fds.count());
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        header(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        let _ = writeln!(o, "process_max_fds {}", limit.rlim_cur);
    }
}

/// The system's boot time (unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}
