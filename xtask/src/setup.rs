//! `cargo xtask setup`: installs what the build, the demo and the tests need, only when it is
//! missing, printing each step. A second run only checks (a few seconds).

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Debian packages the demo and tests use: `ip`, `sysctl`, `curl`, `ethtool` (test veths send
/// complete checksums to XDP), and the kube-proxy-style baselines (`iptables`, `nft`).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("procps", "sysctl"),
    ("curl", "curl"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
    ("ethtool", "ethtool"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "setup needs root: it installs packages, mounts bpffs and loads BPF programs; run it as root (sudo -E cargo xtask ...)"
        );
    }
    apt_packages()?;
    let toolchain = rust_toolchain()?;
    rust_src(&toolchain)?;
    bpf_linker()?;
    bpffs()?;
    cgroup2()?;
    capabilities()?;
    python_tools()?;
    Ok(())
}

/// The Python tools the tests run, from PyPI (no network needed once installed):
/// `kubernetes-validate` (the manifest tests validate deploy/ against the OpenAPI schemas of
/// several Kubernetes versions) and `prometheus-client` (the metrics tests parse the agent's
/// exposition with Prometheus' own Python parser).
const PYTHON_TOOLS: [(&str, &str, &str); 2] = [
    ("kubernetes-validate (manifest schemas)", "kubernetes_validate", "kubernetes-validate==1.37.0"),
    ("prometheus-client (metrics parser)", "prometheus_client.parser", "prometheus-client==0.26.0"),
];

fn python_tools() -> anyhow::Result<()> {
    for (what, module, package) in PYTHON_TOOLS {
        python_tool(what, module, package)?;
    }
    Ok(())
}

/// Installs `package` with pip unless `import module` already works.
fn python_tool(what: &str, module: &str, package: &str) -> anyhow::Result<()> {
    let present = || quietly_succeeds(Command::new("python3").args(["-c", &format!("import {module}")]));
    if present() {
        println!("setup: {what}: present");
        return Ok(());
    }
    println!("setup: {what}: installing {package} with pip");
    if !have("pip3") && !Command::new("python3").args(["-m", "pip", "--version"]).status().is_ok_and(|s| s.success()) {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "python3-pip"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get install python3-pip")?;
        if !status.success() {
            bail!("apt-get install python3-pip failed");
        }
    }
    // A Debian system Python refuses plain installs (PEP 668): then into it regardless, as root.
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "-q", package])
            .args(extra)
            .status()
            .context("running python3 -m pip")?
            .success();
        if ok && present() {
            return Ok(());
        }
    }
    bail!("installing {package} with pip failed (python3 -m pip install {package})")
}

/// Whether `cmd` is on the PATH.
pub(crate) fn have(cmd: &str) -> bool {
    quietly_succeeds(Command::new("sh").args(["-c", &format!("command -v {cmd}")]))
}

/// Runs `c` with its output discarded: whether it exited 0.
fn quietly_succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().filter(|(_, cmd)| !have(cmd)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        println!("setup: apt packages: present ({})", APT_PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(", "));
        return Ok(());
    }
    println!("setup: apt packages: installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-q"]).status().context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// The toolchain that builds the eBPF crate: nightly if installed; stable otherwise (the build
/// then uses RUSTC_BOOTSTRAP, see build.rs).
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup (is it installed?)")?;
    let list = String::from_utf8_lossy(&out.stdout);
    Ok(if list.lines().any(|l| l.starts_with("nightly")) { "nightly" } else { "stable" }.to_owned())
}

fn rust_toolchain() -> anyhow::Result<String> {
    let tc = ebpf_toolchain()?;
    println!("setup: eBPF toolchain: {tc}{}", if tc == "stable" { " (no nightly installed; using RUSTC_BOOTSTRAP)" } else { "" });
    Ok(tc)
}

fn rust_src(toolchain: &str) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("running rustup component list")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src ({toolchain}): present");
        return Ok(());
    }
    println!("setup: rust-src ({toolchain}): installing");
    let status = Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]).status()?;
    if !status.success() {
        bail!("rustup component add rust-src --toolchain {toolchain} failed");
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"), PathBuf::from)
        .join("bin")
}

/// PATH with `~/.cargo/bin` in front.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// bpf-linker, built against the LLVM shared library inside the rustc toolchain (Debian has no
/// LLVM 22), as `../shared/reference/toolchain.md` describes.
fn bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if works {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("setup: bpf-linker {BPF_LINKER_VERSION}: building against rustc's libLLVM (about a minute)");
    let sysroot = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output();
    let sysroot = match sysroot {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => {
            let o = Command::new("rustc").args(["--print", "sysroot"]).output().context("rustc --print sysroot")?;
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        }
    };
    let lib = PathBuf::from(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lb-toolchain/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [OsString::from("libLLVM.so"), llvm.file_name().unwrap_or_default().to_owned()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let status = Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf")) {
        println!("setup: bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    println!("setup: bpffs at /sys/fs/bpf: mounting");
    let status = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
    if !status.success() {
        bail!("mounting bpffs at /sys/fs/bpf failed (needs CAP_SYS_ADMIN)");
    }
    Ok(())
}

/// Where setup mounts a cgroup v2 hierarchy when the machine has none (the hybrid layout's
/// conventional place): socket-level translation attaches to cgroup v2 only.
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup/unified";

fn cgroup2() -> anyhow::Result<()> {
    if let Some(path) = lb_tests::cgroup::cgroup2_mount() {
        println!("setup: cgroup v2 at {}: mounted", path.display());
        return Ok(());
    }
    println!("setup: cgroup v2: mounting at {CGROUP2_MOUNT}");
    std::fs::create_dir_all(CGROUP2_MOUNT).with_context(|| format!("creating {CGROUP2_MOUNT}"))?;
    let status = Command::new("mount").args(["-t", "cgroup2", "none", CGROUP2_MOUNT]).status()?;
    if !status.success() {
        bail!("mounting cgroup2 at {CGROUP2_MOUNT} failed (needs CAP_SYS_ADMIN)");
    }
    Ok(())
}

fn capabilities() -> anyhow::Result<()> {
    match lb_tests::privilege::missing() {
        None => {
            println!("setup: privileges: BPF and network namespaces available");
            Ok(())
        }
        Some(why) => bail!("this machine cannot run the datapath: {why}"),
    }
}

/// Running under CI (`CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
