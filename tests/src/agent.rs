//! The `lb` agent as a child process inside a node namespace, reading manifests from its own
//! directory and pinning under its own bpffs directory. Drop stops it and removes its pins and
//! files, so nothing stays attached or pinned after a test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, run, unique_token};

/// Every call the agent makes to the API server, as RBAC names it (`apiGroup`, resource, verb):
/// the reflectors' lists and watches, and the Events it creates. deploy/rbac.yaml grants exactly
/// these (tests/tests/manifests.rs) and the agent calls exactly these (tests/tests/e2e_kube.rs,
/// from the test API server's request log).
pub const AGENT_API_CALLS: &[(&str, &str, &str)] = &[
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("events.k8s.io", "events", "create"),
];

pub struct Agent {
    child: Option<Child>,
    pub pin_path: PathBuf,
    pub manifests: PathBuf,
    pub log: PathBuf,
    lb: PathBuf,
    args: Vec<String>,
}

/// Settings of one agent.
pub struct AgentOptions<'a> {
    pub node_ns: &'a Netns,
    pub node_name: &'a str,
    pub node_ips: Vec<String>,
    /// Host-side pod interfaces.
    pub interfaces: Vec<String>,
    /// External interfaces (XDP, or `--xdp-mode` from `extra_args`).
    pub external: Vec<String>,
    /// cgroup v2 directory for socket-level translation.
    pub cgroup: Option<PathBuf>,
    /// Further `lb agent` arguments.
    pub extra_args: Vec<String>,
    /// `--source` other than the agent's own manifest directory (e.g. `kube:KUBECONFIG`).
    pub source: Option<String>,
}

impl<'a> AgentOptions<'a> {
    /// An agent for `node_ns` attached to `interfaces`, with nothing else.
    pub fn pods(node_ns: &'a Netns, node_name: &'a str, interfaces: Vec<String>) -> Self {
        Self {
            node_ns,
            node_name,
            node_ips: vec![],
            interfaces,
            external: vec![],
            cgroup: None,
            extra_args: vec![],
            source: None,
        }
    }
}

impl Agent {
    /// Writes `manifests` (file name → YAML) into a fresh directory and starts the agent on it.
    pub fn start(lb: &Path, opts: &AgentOptions<'_>, manifests: &[(&str, &str)]) -> anyhow::Result<Self> {
        let token = unique_token();
        let dir = std::env::temp_dir().join(format!("lbt-{token}-manifests"));
        fs::create_dir_all(&dir)?;
        let log = std::env::temp_dir().join(format!("lbt-{token}-agent.log"));
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/lbt-{token}"));
        let mut args = vec![
            "agent".to_owned(),
            "--source".to_owned(),
            opts.source.clone().unwrap_or_else(|| format!("file:{}", dir.display())),
            "--pin-path".to_owned(),
            pin_path.display().to_string(),
            "--netns".to_owned(),
            opts.node_ns.path(),
            "--node-name".to_owned(),
            opts.node_name.to_owned(),
            "--poll-ms".to_owned(),
            "50".to_owned(),
        ];
        for ip in &opts.node_ips {
            args.extend(["--node-ip".to_owned(), ip.clone()]);
        }
        for i in &opts.interfaces {
            args.extend(["--pod-iface".to_owned(), i.clone()]);
        }
        for i in &opts.external {
            args.extend(["--ext-iface".to_owned(), i.clone()]);
        }
        if let Some(cg) = &opts.cgroup {
            args.extend(["--cgroup".to_owned(), cg.display().to_string()]);
        }
        // Tests run many agents side by side: no listeners on fixed ports (unless a test asks
        // for one in `extra_args`).
        for flag in ["--metrics-addr", "--health-addr"] {
            if !opts.extra_args.iter().any(|a| a == flag) {
                args.extend([flag.to_owned(), "none".to_owned()]);
            }
        }
        args.extend(opts.extra_args.iter().cloned());
        let mut agent = Self { child: None, pin_path, manifests: dir, log, lb: lb.to_owned(), args };
        for (name, yaml) in manifests {
            agent.write_manifest(name, yaml)?;
        }
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.lb)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lb agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// Replaces (or adds) a manifest file atomically.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    pub fn remove_manifest(&self, name: &str) -> anyhow::Result<()> {
        fs::remove_file(self.manifests.join(name))?;
        Ok(())
    }

    /// The agent's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `lb maps dump TABLE -o json` against this agent's pins.
    pub fn dump(&self, table: &str) -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(&self.lb).args(["maps", "dump", table, "-o", "json", "--pin-path"]).arg(&self.pin_path))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `lb status -o json` against this agent's pins.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(&self.lb).args(["status", "-o", "json", "--pin-path"]).arg(&self.pin_path))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until `pred` holds for the services table (frontends as JSON rows).
    pub fn wait_services(&mut self, what: &str, pred: impl Fn(&[serde_json::Value]) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("the agent exited ({status}) before {what}; log:\n{}", self.log_text());
            }
            if let Ok(serde_json::Value::Array(rows)) = self.dump("services")
                && pred(&rows)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; agent log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGTERM (the datapath stays), leaving the pins in place.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("the agent ignored SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the agent again on the same pins and manifests.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Kills the agent with SIGKILL (no shutdown path at all), leaving the pins in place.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the agent after [`Agent::kill`] or [`Agent::stop`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// The running agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `lb` with this agent's arguments (plus `extra`) as a second process beside it, to its
    /// end or for at most `limit` (then it is killed): (exited by itself, exit code, stderr).
    pub fn run_beside(&self, extra: &[&str], limit: Duration) -> anyhow::Result<(bool, Option<i32>, String)> {
        let mut cmd = Command::new(&self.lb);
        cmd.args(&self.args).args(extra).env("RUST_LOG", "info");
        let (status, err) = run_limited(&mut cmd, limit)?;
        Ok((status.is_some(), status.and_then(|s| s.code()), err))
    }
}

/// Runs `cmd` (stdin and stdout closed, stderr captured) to its end or for at most `limit`, then
/// kills it: (its exit status, `None` when it had to be killed; its stderr).
pub fn run_limited(cmd: &mut Command, limit: Duration) -> anyhow::Result<(Option<std::process::ExitStatus>, String)> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting lb")?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    Ok((status, err))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.pin_path);
        let _ = fs::remove_dir_all(&self.manifests);
        // Failure messages carry the log (`log_text`); nothing stays behind.
        let _ = fs::remove_file(&self.log);
    }
}
