//! Builds the eBPF datapath (`lb-ebpf`) with aya-build and leaves it in `OUT_DIR/lb-ebpf`, where
//! `dataplane.rs` embeds it. With `AYA_BUILD_SKIP=1` (clippy, `cargo check`, unit tests on a
//! machine without bpf-linker) an empty stub is written instead and loading fails with a clear
//! error at run time.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // The commit `lb --version` and `lb_build_info` name ("unknown" outside a git checkout).
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");
    for git in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(out_dir.join("lb-ebpf"), []).context("writing the eBPF stub")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf is not in the workspace"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // Nightly when installed; otherwise stable with RUSTC_BOOTSTRAP (same LLVM, same linker).
    let has_nightly =
        Command::new("rustup").args(["run", "nightly", "rustc", "--version"]).output().is_ok_and(|o| o.status.success());
    let toolchain = if has_nightly {
        aya_build::Toolchain::Nightly
    } else {
        println!("cargo:warning=no nightly toolchain; building the eBPF object with stable and RUSTC_BOOTSTRAP=1");
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
        aya_build::Toolchain::Custom("stable")
    };
    // The workspace's release profile optimises the agent as a whole program (`lto = "fat"`);
    // the eBPF object keeps the profile its per-packet costs were measured with (bpf-linker links
    // it whole in any case; with LTO its code came out different).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("CARGO_PROFILE_RELEASE_LTO", "false") };
    let package = aya_build::Package { name: "lb-ebpf", root_dir: root.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], toolchain)
}
