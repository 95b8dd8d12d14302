//! Network namespaces and commands inside them, with cleanup on drop. Names are unique per
//! process and call ([`unique_token`]), so tests run in parallel and never collide with leftovers.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// A short token unique to this process and call: 7 base-36 characters (the process id and a
/// per-process counter), so interface names built from it stay within the kernel's
/// 15-character limit.
pub fn unique_token() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 22 bits of pid (the kernel's maximum), 14 bits of counter: 36 bits < 36^7.
    let mut v = (u64::from(std::process::id()) & 0x3f_ffff) << 14 | u64::from(n & 0x3fff);
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    for _ in 0..7 {
        s.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    String::from_utf8(s).unwrap_or_default()
}

/// Runs a command, failing with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip ARGS...` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `sysctl -w KEY=VALUE` inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(self.command("sysctl").args(["-qw", &format!("{key}={value}")]))?;
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it opens live there).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> anyhow::Result<T> {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on an fd we own; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces (and the veth peers elsewhere).
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
