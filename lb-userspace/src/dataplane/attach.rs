//! Where the programs attach: TC ingress and egress of pod interfaces, XDP (or TC) ingress and
//! TC egress of external interfaces, and the socket hooks of a cgroup. Every attachment is a
//! pinned link, and a restarting agent swaps its program into the link a previous agent pinned
//! (module docs of [`super`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};

use super::{Dataplane, DataplaneError, Result};

/// How an external interface is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExternalMode {
    /// Native XDP if the driver has it, generic XDP otherwise.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// TC ingress, for devices where XDP cannot attach.
    Tc,
}

impl ExternalMode {
    /// The name used in pins, logs and `lb status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "xdp-native",
            Self::Generic => "xdp-generic",
            Self::Tc => "tc-ext",
        }
    }
}

/// Programs attached to a cgroup for socket-level translation, with their hook names.
const SOCK_PROGRAMS: [(&str, &str); 8] = [
    (lb_common::PROG_SOCK_CONNECT4, "connect4"),
    (lb_common::PROG_SOCK_SENDMSG4, "sendmsg4"),
    (lb_common::PROG_SOCK_RECVMSG4, "recvmsg4"),
    (lb_common::PROG_SOCK_GETPEERNAME4, "getpeername4"),
    (lb_common::PROG_SOCK_CONNECT6, "connect6"),
    (lb_common::PROG_SOCK_SENDMSG6, "sendmsg6"),
    (lb_common::PROG_SOCK_RECVMSG6, "recvmsg6"),
    (lb_common::PROG_SOCK_GETPEERNAME6, "getpeername6"),
];

/// Loads every program of the object into the kernel (verified, not yet attached).
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in [lb_common::PROG_TC_POD, lb_common::PROG_TC_EXT, lb_common::PROG_TC_EGRESS] {
        classifier_mut(ebpf, name)?.load().map_err(|source| DataplaneError::Program { name, source })?;
    }
    xdp_mut(ebpf)?.load().map_err(|source| DataplaneError::Program { name: lb_common::PROG_XDP_EXT, source })?;
    for (name, _) in SOCK_PROGRAMS {
        sock_mut(ebpf, name)?.load().map_err(|source| DataplaneError::Program { name, source })?;
    }
    Ok(())
}

/// Helper program `name` (of type `T`: run through BPF_PROG_TEST_RUN, never attached),
/// loaded by `load` on first use.
pub(super) fn helper_program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut T) -> std::result::Result<(), ProgramError>,
) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::MissingProgram { name })?;
    let unloaded = prog.fd().is_err();
    let prog: &mut T = prog.try_into().map_err(|source| DataplaneError::Program { name, source })?;
    if unloaded {
        load(prog).map_err(|source| DataplaneError::Program { name, source })?;
    }
    Ok(prog)
}

impl Dataplane {
    /// Attaches the pod program to TC ingress of `iface` and the reply program to its egress,
    /// replacing the programs in links a previous agent pinned (atomically, no packet
    /// unprocessed) or creating and pinning them.
    pub fn attach_pod_interface(&mut self, iface: &str) -> Result<()> {
        let path = self.pin_path.join(format!("link_{iface}_tc-pod"));
        attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_POD)?, iface, TcAttachType::Ingress, &path)?;
        self.attach_egress(iface)
    }

    /// Attaches the reply program to TC egress of `iface` (point 63: replies the node's own
    /// stack sends for a backend on one of its addresses leave through an egress).
    fn attach_egress(&mut self, iface: &str) -> Result<()> {
        let path = self.pin_path.join(format!("link_{iface}_tc-egress"));
        attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_EGRESS)?, iface, TcAttachType::Egress, &path)
    }

    /// Attaches the external program to `iface` in `mode` (auto: native XDP, else generic),
    /// replacing a pinned attachment of the same kind atomically, and the reply program to its
    /// TC egress. Returns the mode in effect.
    pub fn attach_external(&mut self, iface: &str, mode: ExternalMode) -> Result<ExternalMode> {
        let mode = self.attach_external_ingress(iface, mode)?;
        self.attach_egress(iface)?;
        Ok(mode)
    }

    fn attach_external_ingress(&mut self, iface: &str, mode: ExternalMode) -> Result<ExternalMode> {
        let attach_err = |source| DataplaneError::Attach { iface: iface.to_owned(), source };
        let wanted: &[ExternalMode] = match mode {
            ExternalMode::Auto => &[ExternalMode::Native, ExternalMode::Generic],
            ExternalMode::Native => &[ExternalMode::Native],
            ExternalMode::Generic => &[ExternalMode::Generic],
            ExternalMode::Tc => &[ExternalMode::Tc],
        };
        // An attachment of another kind pinned for this interface is released first.
        for other in [ExternalMode::Native, ExternalMode::Generic, ExternalMode::Tc] {
            let path = self.link_path(iface, other);
            if !wanted.contains(&other) && path.exists() {
                let _ = fs::remove_file(&path);
            }
        }
        if mode == ExternalMode::Tc {
            let path = self.link_path(iface, ExternalMode::Tc);
            attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_EXT)?, iface, TcAttachType::Ingress, &path)?;
            return Ok(ExternalMode::Tc);
        }
        let mut last = None;
        for m in wanted {
            let path = self.link_path(iface, *m);
            let prog = xdp_mut(&mut self.ebpf)?;
            if let Ok(old) = PinnedLink::from_pin(&path) {
                let reused = XdpLink::try_from(FdLink::from(old))
                    .map_err(|e| ProgramError::IOError(io::Error::other(e)))
                    .and_then(|link| prog.attach_to_link(link));
                match reused {
                    Ok(_) => return Ok(*m),
                    Err(e) => {
                        tracing::warn!(iface, error = %e, "could not reuse the pinned XDP link; attaching anew");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            let xdp_mode = if *m == ExternalMode::Native { XdpMode::Driver } else { XdpMode::Skb };
            match prog.attach(iface, xdp_mode) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(attach_err)?;
                    let fd_link = FdLink::try_from(link).map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
                    pin_link(fd_link, iface, &path)?;
                    return Ok(*m);
                }
                Err(e) => {
                    tracing::info!(iface, mode = m.as_str(), error = %e, "XDP attach failed");
                    last = Some(e);
                }
            }
        }
        Err(attach_err(last.unwrap_or_else(|| ProgramError::IOError(io::Error::other("no XDP mode to try")))))
    }

    fn link_path(&self, iface: &str, mode: ExternalMode) -> PathBuf {
        self.pin_path.join(format!("link_{iface}_{}", mode.as_str()))
    }

    /// Attaches the socket-level translation programs to the cgroup directory `cgroup` (cgroup
    /// v2). The new programs are attached before the ones a previous agent pinned are released,
    /// so no connect() goes untranslated.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let cg_err = |source| DataplaneError::Cgroup { path: cgroup.to_owned(), source };
        let dir = fs::File::open(cgroup).map_err(|e| cg_err(ProgramError::IOError(e)))?;
        for (name, hook) in SOCK_PROGRAMS {
            let path = self.pin_path.join(format!("link_cgroup_{hook}"));
            let prog = sock_mut(&mut self.ebpf, name)?;
            // A cgroup link (kernel >= 5.7) always coexists with other programs; the link API
            // takes no ALLOW_MULTI flag (Single means flags 0).
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(cg_err)?;
            let link = prog.take_link(id).map_err(cg_err)?;
            let fd_link = FdLink::try_from(link).map_err(|e| cg_err(ProgramError::IOError(io::Error::other(e))))?;
            let staged = self.pin_path.join(format!("staged_cgroup_{hook}"));
            let _ = fs::remove_file(&staged);
            pin_link(fd_link, hook, &staged)?;
            // Replacing the old pin releases the previous agent's program; ours is already on.
            fs::rename(&staged, &path).map_err(|e| cg_err(ProgramError::IOError(e)))?;
        }
        Ok(())
    }
}

fn classifier_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::MissingProgram { name })
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let name = lb_common::PROG_XDP_EXT;
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::MissingProgram { name })
}

fn sock_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::MissingProgram { name })
}

/// Attaches `prog` to TC `direction` of `iface` through a TCX link pinned at `path`, reusing
/// (and atomically updating) a link already pinned there.
fn attach_tcx(prog: &mut SchedClassifier, iface: &str, direction: TcAttachType, path: &Path) -> Result<()> {
    let attach_err = |source| DataplaneError::Attach { iface: iface.to_owned(), source };
    if let Ok(old) = PinnedLink::from_pin(path) {
        let reused = SchedClassifierLink::try_from(FdLink::from(old))
            .map_err(|e| ProgramError::IOError(io::Error::other(e)))
            .and_then(|link| prog.attach_to_link(link));
        match reused {
            Ok(_) => return Ok(()),
            Err(e) => {
                // The interface behind the old link is gone (a recreated pod interface): start
                // over with a new link.
                tracing::warn!(iface, error = %e, "could not reuse the pinned link; attaching anew");
                let _ = fs::remove_file(path);
            }
        }
    }
    let id = prog.attach_with_options(iface, direction, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let fd_link = FdLink::try_from(link).map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
    pin_link(fd_link, iface, path)
}

fn pin_link(link: FdLink, what: &str, path: &Path) -> Result<()> {
    link.pin(path).map(|_| ()).map_err(|e| DataplaneError::PinLink {
        what: what.to_owned(),
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}
