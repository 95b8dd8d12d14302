//! `cargo xtask lint`: the gates `.ci/run` holds every change to. rustfmt must have nothing to
//! change; clippy must have nothing to say, with warnings as errors, on the workspace and on the
//! eBPF crate (built for its own target with the eBPF toolchain, the way aya-build builds it).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, root};

pub fn run() -> anyhow::Result<()> {
    step("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The userspace crates: the embedded eBPF object is not needed to lint them.
    step(
        "clippy (workspace)",
        cargo()
            .args(["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"])
            .env("AYA_BUILD_SKIP", "1"),
    )?;
    let toolchain = crate::setup::ebpf_toolchain()?;
    let mut ebpf = Command::new("rustup");
    ebpf.args(["run", &toolchain, "cargo", "clippy", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(root().join("lb-ebpf"))
        .env("PATH", crate::setup::path_with_cargo_bin());
    if toolchain == "stable" {
        ebpf.env("RUSTC_BOOTSTRAP", "1");
    }
    step(&format!("clippy (lb-ebpf, {toolchain})"), &mut ebpf)
}

fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("lint: {what}");
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("lint: {what} failed (run `cargo xtask lint` to see it; `cargo fmt --all` fixes formatting)");
    }
    Ok(())
}
