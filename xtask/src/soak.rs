//! `cargo xtask soak --minutes N`: the long reliability run (issue 7, RELIABILITY.md). Mixed
//! load (HTTP and UDP on new connections, a long-lived TCP echo connection) against a one-node
//! netns cluster with the agent on the in-process API server, while endpoints churn, the agent
//! is restarted and killed, and the API server goes away and comes back. At the end the books
//! must balance (sent = answered + failed) with zero failures; they are printed.
//!
//! The scenario is the ignored test `reliability::soak` in `tests/tests/reliability.rs` (xtask
//! cannot depend on lb-userspace, the test crate can); this runs it with the duration in
//! `LB_SOAK_MINUTES`.

use anyhow::{Context as _, bail};
use clap::Args as ClapArgs;

use crate::{Bins, cargo};

#[derive(ClapArgs)]
pub struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// How long each API server outage lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
}

pub fn run(bins: &Bins, args: &Args) -> anyhow::Result<()> {
    if args.minutes.is_nan() || args.minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    println!(
        "soak: {} min of mixed load and churn (API server outages of {} s); cargo test -p lb-tests --test reliability soak -- --ignored",
        args.minutes, args.outage_seconds
    );
    let status = cargo()
        .args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            "reliability",
            "soak",
            "--",
            "--ignored",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LB_BIN", &bins.lb)
        .env("LB_TESTPOD_BIN", &bins.testpod)
        .env("LB_SOAK_MINUTES", args.minutes.to_string())
        .env("LB_SOAK_OUTAGE_S", args.outage_seconds.to_string())
        // Asked for explicitly: a machine that cannot run it is a failure, not a skip.
        .env("LB_REQUIRE_PRIVILEGED", "1")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the soak failed (its books are printed above)");
    }
    Ok(())
}
