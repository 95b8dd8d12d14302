//! Starting the agent with bad settings: it stops at once, the first line of its error says what
//! is wrong and what to do, and it leaves nothing behind: the pin directory it would have used is
//! never created. A start that fails only after pinning removes what it created, and only that.

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

/// Item 2, after pinning: a start that fails once the datapath is loaded and pinned (here native
/// XDP on a bridge, which has no native XDP) removes every pin it created and detaches
/// what it attached; a start that adopted a previous agent's pins leaves them serving.
#[test]
fn a_start_failing_after_pinning_removes_only_what_it_created() {
    if !privilege::require("a_start_failing_after_pinning_removes_only_what_it_created") {
        return;
    }
    let token = unique_token();
    let ns = lb_tests::netns::Netns::new(&format!("lbt{token}-start")).unwrap();
    ns.ip(&["link", "add", "br9", "type", "bridge"]).unwrap();
    ns.ip(&["link", "set", "br9", "up"]).unwrap();
    ns.ip(&["link", "add", "lbv0", "type", "veth", "peer", "name", "lbv1"]).unwrap();
    ns.ip(&["link", "set", "lbv0", "up"]).unwrap();
    let manifests = std::env::temp_dir().join(format!("lbt-start2-{token}"));
    std::fs::create_dir_all(&manifests).unwrap();
    let pin = format!("/sys/fs/bpf/lbt-start2-{token}");
    let args = |extra: &[&str]| -> Vec<String> {
        let source = format!("file:{}", manifests.display());
        let netns = ns.path();
        let mut v: Vec<String> = ["--source", &source, "--pin-path", &pin, "--node-name", "node-0", "--netns", &netns]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        v.extend(["--metrics-addr", "none", "--health-addr", "none"].map(String::from));
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let failing = args(&["--pod-iface", "lbv0", "--ext-iface", "br9", "--xdp-mode", "native"]);

    // Fresh: nothing pinned before, nothing after (and no program left on lbv0).
    let (code, err) = agent(&failing);
    assert!(code.is_some_and(|c| c != 0), "native XDP on a bridge must fail the start:\n{err}");
    let first = err.lines().find(|l| l.starts_with("Error:")).unwrap_or_else(|| panic!("no error line:\n{err}"));
    assert!(first.contains("br9") && first.contains("--xdp-mode generic"), "the first line should say what to do: {first}");
    assert!(!Path::new(&pin).exists(), "the pins of the failed start were left at {pin}:\n{err}");
    let tc = ns.command("tc").args(["filter", "show", "dev", "lbv0", "ingress"]).output().unwrap();
    let links = Command::new("bpftool").args(["link", "show"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    assert!(String::from_utf8_lossy(&tc.stdout).trim().is_empty(), "a filter stayed on lbv0");
    if let Ok(links) = links {
        assert!(!links.contains(&format!("lbt{token}")), "a link stayed: {links}");
    }

    // Adopting: a working agent pinned first; the failing start must leave its pins in place.
    let mut first = Command::new(bins::lb());
    first.arg("agent").args(args(&["--pod-iface", "lbv0"])).env_remove("RUST_LOG");
    let mut child = first.stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !Path::new(&pin).join("link_lbv0_tc-pod").exists() {
        assert!(std::time::Instant::now() < deadline, "the first agent did not attach");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let (code, err) = agent(&failing);
    assert!(code.is_some_and(|c| c != 0), "{err}");
    assert!(Path::new(&pin).join("LB_SERVICES").exists() && Path::new(&pin).join("link_lbv0_tc-pod").exists(), "{err}");
    let _ = Command::new(bins::lb()).args(["agent", "--cleanup", "--pin-path", &pin]).output();
    let _ = std::fs::remove_dir_all(&manifests);
}
