//! Starting the agent with bad settings (issue 17, items 2 and 3): it stops at once, the first
//! line of its error says what is wrong and what to do, and it leaves nothing behind: the pin
//! directory it would have used is never created.

use std::{net::TcpListener, path::Path, process::Command, time::Duration};

use lb_tests::{agent::run_limited, bins, netns::unique_token, privilege};

/// Runs `lb agent ARGS` for at most 20 s: (exit code, `None` if it had to be killed; stderr).
fn agent(args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bins::lb());
    cmd.arg("agent").args(args).env_remove("RUST_LOG");
    let (status, err) = run_limited(&mut cmd, Duration::from_secs(20)).expect("running lb agent");
    (status.and_then(|s| s.code()), err)
}

#[test]
fn bad_settings_fail_at_start_saying_what_to_do_and_leave_no_pins() {
    if !privilege::require("bad_settings_fail_at_start_saying_what_to_do_and_leave_no_pins") {
        return;
    }
    let token = unique_token();
    let manifests = std::env::temp_dir().join(format!("lbt-start-{token}"));
    std::fs::create_dir_all(&manifests).unwrap();
    let pin = format!("/sys/fs/bpf/lbt-start-{token}");
    let off_bpffs = std::env::temp_dir().join(format!("lbt-start-{token}-pins")).display().to_string();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let source = format!("file:{}", manifests.display());
    let with_health = |pin: &str, source: &str, health: &str| -> Vec<String> {
        ["--source", source, "--pin-path", pin, "--node-name", "node-0", "--metrics-addr", "none", "--health-addr", health]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    let base = |pin: &str, source: &str| with_health(pin, source, "none");
    let nosuch = format!("/nonexistent-{token}");
    let cases: Vec<(Vec<String>, &str, String)> = vec![
        (base(&off_bpffs, &source), "pin path off bpffs", "is not a bpffs".into()),
        (base(&pin, &format!("file:{nosuch}")), "missing manifest directory", "no such directory".into()),
        (base(&pin, &format!("kube:{nosuch}")), "missing kubeconfig", "no such kubeconfig file".into()),
        (
            [base(&pin, &source), vec!["--netns".into(), format!("/run/netns/nosuch-{token}")]].concat(),
            "missing netns",
            format!("--netns /run/netns/nosuch-{token}: cannot open it"),
        ),
        (
            [base(&pin, &source), vec!["--pod-iface".into(), "lbnosuch0".into()]].concat(),
            "missing interface",
            "interface lbnosuch0 does not exist in this network namespace".into(),
        ),
        (
            [base(&pin, &source), vec!["--cgroup".into(), nosuch.clone()]].concat(),
            "not a cgroup v2 directory",
            "not a cgroup v2 directory".into(),
        ),
        (
            [base(&pin, &source), vec!["--log".into(), "verbose=[[".into()]].concat(),
            "bad log filter",
            "--log \"verbose=[[\"".into(),
        ),
        (with_health(&pin, &source, &busy), "health port in use", format!("--health-addr {busy}: cannot listen")),
    ];
    for (args, what, expected) in &cases {
        let (code, err) = agent(args);
        assert!(code.is_some_and(|c| c != 0), "{what}: the agent must stop with an error, got {code:?}:\n{err}");
        let first = err.lines().find(|l| l.starts_with("Error:")).unwrap_or_else(|| panic!("{what}: no error line:\n{err}"));
        assert!(first.contains(expected.as_str()), "{what}: first line {first:?} should say {expected:?}");
        assert!(!Path::new(&pin).exists(), "{what}: the pin directory {pin} was created");
        assert!(!Path::new(&off_bpffs).exists(), "{what}: {off_bpffs} was created");
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&manifests);
}
