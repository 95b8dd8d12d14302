//! cgroup v2 groups for tests of socket-level translation: a unique child group per test, with
//! processes started inside it, removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::netns::unique_token;

/// Where a cgroup v2 hierarchy is mounted, if anywhere.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// A child cgroup, removed on drop (once its processes are gone).
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new() -> anyhow::Result<Self> {
        let Some(root) = cgroup2_mount() else {
            bail!("no cgroup v2 hierarchy is mounted (cargo xtask setup mounts one)");
        };
        let path = root.join(format!("lbt-{}", unique_token()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A shell command line run inside this cgroup: `sh -c 'echo $$ > procs; exec CMD...'`.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#).arg(&self.path).arg("--").arg(program).args(args);
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes that ran in it have exited; an empty cgroup is removed with rmdir.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
