//! `cargo xtask`: set-up, build, demo and tests. Only what cargo cannot express on its own.

mod against;
mod bench;
mod demo;
mod kind;
mod lint;
mod profile;
mod setup;
mod soak;
mod test;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set-up, build, demo and tests for lb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (apt packages, rust-src, bpf-linker) and mount bpffs. Idempotent.
    Setup,
    /// The lint gates of CI: rustfmt --check, and clippy -D warnings on the workspace and the
    /// eBPF crate.
    Lint,
    /// Set up, then build the `lb` binary (with its embedded eBPF object) and the test workload.
    Build,
    /// Set up, build, and run every test tier: unit, BPF_PROG_TEST_RUN fixtures, netns end-to-end.
    #[command(after_help = "Extra arguments go to `cargo test`, e.g. `cargo xtask test -- e2e`.")]
    Test {
        /// Arguments passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the kubia walk-through on a network-namespace mini-cluster.
    Demo {
        /// How many requests the client pod sends to the ClusterIP.
        #[arg(long, default_value_t = 30)]
        requests: u32,
    },
    /// lb on a local kind cluster without kube-proxy: `up`, `deploy`, `bench`, `down` (`--dry-run`
    /// prints the commands, files and manifests instead; needs docker, kind and kubectl otherwise).
    Kind(kind::Args),
    /// Set up, build, and run the reliability soak: mixed load with endpoint churn, agent
    /// restarts and API server outages for `--minutes` (default 5); prints the books.
    Soak(soak::Args),
    /// Set up, build (release), run the benchmarks against kube-proxy-style iptables and
    /// nftables, and write BENCHMARKS.md and bench-results/*.svg.
    Bench(bench::Args),
    /// Set up, build the B1 bench, and profile where its cases' time goes in the datapath
    /// (`perf record` on the JIT image, charged to source lines); writes bench-results/b1-profile.md.
    #[command(after_help = "Example: `cargo xtask profile --cases ct_hit,new_flow --against 659ea9b`.")]
    Profile(profile::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Lint => lint::run(),
        Cmd::Build => {
            setup::run()?;
            build()?;
            Ok(())
        }
        Cmd::Test { args } => {
            setup::run()?;
            let bins = build()?;
            test::run(&bins, &args)
        }
        Cmd::Demo { requests } => {
            setup::run()?;
            let bins = build()?;
            demo::run(&bins, requests)
        }
        Cmd::Kind(args) => kind::run(&args),
        Cmd::Soak(args) => {
            setup::run()?;
            let bins = build()?;
            soak::run(&bins, &args)
        }
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Profile(args) => profile::run(&args),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// `cargo` with `~/.cargo/bin` (where bpf-linker lives) on PATH.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.env("PATH", setup::path_with_cargo_bin());
    c.current_dir(root());
    c
}

/// Paths of the built binaries.
pub struct Bins {
    pub lb: PathBuf,
    pub testpod: PathBuf,
}

fn build() -> anyhow::Result<Bins> {
    println!("build: lb (with the eBPF datapath) and lb-testpod");
    let status = cargo()
        .args(["build", "--package", "lb-userspace", "--package", "lb-tests", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("debug");
    Ok(Bins { lb: dir.join("lb"), testpod: dir.join("lb-testpod") })
}
