//! Checks of the agent's settings before it touches anything: the pin directory is on a bpffs,
//! the network namespace opens, every interface exists in it, `--cgroup` is a cgroup v2
//! directory, the file source's directory or the kubeconfig exists, and the listeners can bind.
//! A start that fails here leaves nothing behind (no pin directory, no map, no link), and each
//! error's first line says what to do.

use std::{
    ffi::CString,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::{AgentConfig, Source};

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `statfs` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "--pin-path {}: {} is not a bpffs (found filesystem type {found:#x}); mount one with `mount -t bpf bpf /sys/fs/bpf` or pick a --pin-path on one",
        path.display(), on.display()
    )]
    NotBpffs { path: PathBuf, on: PathBuf, found: i64 },
    #[error("--netns {}: cannot open it ({source}); named namespaces are /run/netns/NAME (`ip netns list`)", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {iface} does not exist in {where_}; `ip link` there lists the interfaces")]
    NoInterface { iface: String, where_: String },
    #[error("--cgroup {}: not a cgroup v2 directory; {hint}", path.display())]
    NotCgroup2 { path: PathBuf, hint: String },
    #[error("--source file:{}: no such directory; give the directory that holds the manifests", path.display())]
    NoManifestDir { path: PathBuf },
    #[error("--source kube:{}: no such kubeconfig file", path.display())]
    NoKubeconfig { path: PathBuf },
    #[error(
        "{flag} {addr}: cannot listen ({source}); another process holds it (kube-proxy?): stop it, pick another address, or `none`"
    )]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every check, in the order a user fixes them.
pub fn check(cfg: &AgentConfig) -> Result<(), PreflightError> {
    pin_path_on_bpffs(&cfg.dataplane.pin_path)?;
    match &cfg.source {
        Source::File(dir) if !dir.is_dir() => return Err(PreflightError::NoManifestDir { path: dir.clone() }),
        Source::Kube(Some(file)) if !file.is_file() => return Err(PreflightError::NoKubeconfig { path: file.clone() }),
        _ => {}
    }
    if let Some(ns) = &cfg.netns {
        std::fs::File::open(ns).map_err(|source| PreflightError::Netns { path: ns.clone(), source })?;
    }
    for iface in cfg.pod_interfaces.iter().chain(&cfg.external_interfaces) {
        let exists = crate::netns::run_in(cfg.netns.as_deref(), || interface_exists(iface))
            .map_err(|source| PreflightError::Netns { path: cfg.netns.clone().unwrap_or_default(), source })?;
        if !exists {
            let where_ = cfg
                .netns
                .as_ref()
                .map_or_else(|| "this network namespace".to_owned(), |p| format!("network namespace {}", p.display()));
            return Err(PreflightError::NoInterface { iface: iface.clone(), where_ });
        }
    }
    if let Some(cg) = &cfg.cgroup
        && fs_type(cg) != Some(CGROUP2_SUPER_MAGIC)
    {
        let hint = match cgroup2_mount() {
            Some(m) => format!("cgroup v2 is mounted at {m} on this host"),
            None => "this host has no cgroup v2 mount (`mount -t cgroup2 none /sys/fs/cgroup/unified`)".to_owned(),
        };
        return Err(PreflightError::NotCgroup2 { path: cg.clone(), hint });
    }
    for (flag, addr) in [("--health-addr", cfg.health_addr), ("--metrics-addr", cfg.metrics_addr)] {
        if let Some(addr) = addr {
            // Bound and released at once: the listener binds it again right after.
            std::net::TcpListener::bind(addr).map_err(|source| PreflightError::Listen { flag, addr, source })?;
        }
    }
    Ok(())
}

/// The pin directory, or its nearest existing ancestor (the agent creates the rest), is on a
/// bpffs.
fn pin_path_on_bpffs(pin: &Path) -> Result<(), PreflightError> {
    let on = pin.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match fs_type(on) {
        Some(BPF_FS_MAGIC) => Ok(()),
        found => Err(PreflightError::NotBpffs { path: pin.to_owned(), on: on.to_owned(), found: found.unwrap_or(0) }),
    }
}

/// The filesystem type (`statfs` magic) of `path`.
fn fs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `statfs` is plain data: all zeros is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we own; `c` is a valid C string.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64)
}

fn interface_exists(iface: &str) -> bool {
    let Ok(c) = CString::new(iface) else {
        return false;
    };
    // SAFETY: a valid C string; no memory is written.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Where cgroup v2 is mounted, from /proc/self/mounts.
fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| dir.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_path_off_bpffs_says_how_to_mount_one() {
        let e = pin_path_on_bpffs(&std::env::temp_dir().join("lb-not-bpffs")).unwrap_err().to_string();
        assert!(e.contains("is not a bpffs") && e.contains("mount -t bpf bpf /sys/fs/bpf"), "{e}");
    }

    #[test]
    fn interfaces_are_looked_up_by_name() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("nosuch-lb0"));
    }
}
