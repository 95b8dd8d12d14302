//! The privilege gate. A privileged test calls [`require`] first: on a machine without BPF or
//! network-namespace privileges it prints a loud skip line and returns `false`, except where a
//! skip is not acceptable (`CI=true` or `LB_REQUIRE_PRIVILEGED=1`), where it panics. Every test
//! that gets past the gate is appended to `$LB_PRIVILEGED_LOG`, so the runner can print how many
//! privileged tests executed.

use std::{io::Write as _, process::Command, sync::OnceLock};

/// Why privileged tests cannot run here, or `None` when they can.
pub fn missing() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)".into());
    }
    // A tiny BPF map proves CAP_BPF.
    // SAFETY: bpf(BPF_MAP_CREATE) with a zeroed attr of the documented size.
    let fd = unsafe {
        let mut attr = [0u32; 32];
        attr[0] = 2; // BPF_MAP_TYPE_ARRAY
        attr[1] = 4; // key_size
        attr[2] = 4; // value_size
        attr[3] = 1; // max_entries
        libc::syscall(libc::SYS_bpf, 0 /* BPF_MAP_CREATE */, attr.as_ptr(), 128u32)
    };
    if fd < 0 {
        return Some(format!("cannot create a BPF map: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: closing the fd we just created.
    unsafe { libc::close(fd as i32) };
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("the `ip` command (iproute2) is missing; run `cargo xtask setup`".into()),
    }
    if !std::path::Path::new("/sys/fs/bpf").exists() {
        return Some("/sys/fs/bpf does not exist".into());
    }
    None
}

/// Skips are failures where privileged tests are expected to run.
pub fn skip_is_failure() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") || std::env::var("LB_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Gate for a privileged test named `test`. Returns whether it may run.
pub fn require(test: &str) -> bool {
    if let Some(why) = missing() {
        assert!(!skip_is_failure(), "privileged test {test} cannot run here: {why}");
        eprintln!("skipping {test} - {why}");
        return false;
    }
    if let Ok(log) = std::env::var("LB_PRIVILEGED_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log)
    {
        let _ = writeln!(f, "{test}");
    }
    true
}
