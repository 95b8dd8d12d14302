//! `cargo xtask test`: every tier in one `cargo test` run (unit tests, BPF_PROG_TEST_RUN
//! fixtures, netns end-to-end tests), then how many privileged tests actually executed. Under
//! `CI=true` a privileged test that cannot run fails (see `lb_tests::privilege`), and a run in
//! which none executed fails too.

use anyhow::{Context as _, bail};

use crate::{Bins, cargo};

pub fn run(bins: &Bins, extra: &[String]) -> anyhow::Result<()> {
    let log = std::env::temp_dir().join(format!("lb-privileged-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    println!("test: cargo test --workspace --exclude lb-ebpf {}", extra.join(" "));
    let status = cargo()
        .args(["test", "--workspace", "--exclude", "lb-ebpf"])
        .args(extra)
        .env("LB_BIN", &bins.lb)
        .env("LB_TESTPOD_BIN", &bins.testpod)
        .env("LB_PRIVILEGED_LOG", &log)
        .status()
        .context("running cargo test")?;
    let executed = std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    let _ = std::fs::remove_file(&log);
    println!("test: {executed} privileged tests executed (BPF_PROG_TEST_RUN fixtures and netns end-to-end)");
    if !status.success() {
        bail!("tests failed");
    }
    if executed == 0 && crate::setup::ci() && extra.is_empty() {
        bail!("CI=true but no privileged test executed");
    }
    Ok(())
}
