//! Capacity, as users meet it:
//! - maps grow online: an agent whose maps were created far too small is given more Services and
//!   endpoints than they hold. It grows them while clients run (a loop of new connections and
//!   one long-lived connection through a Service), every Service then answers, no request fails,
//!   and `lb status` shows the growth and the new capacities;
//! - a Service that cannot fit (a map at its `--map-max` ceiling) is left out and reported by
//!   name, while the others are added, changed and deleted around it; it is programmed once it
//!   fits.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    bins, privilege,
    requests::{http_loop, http_ok},
    topology::{ECHO_PORT, HTTP_PORT, Topology},
};

/// kubia (10.96.3.3) with an HTTP and an echo port on the two kubia pods.
fn kubia(a: &str, b: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kubia, namespace: demo}}\nspec:\n  clusterIP: 10.96.3.3\n  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}, {{name: echo, port: 7000, targetPort: {ECHO_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kubia-1, namespace: demo, labels: {{kubernetes.io/service-name: kubia}}}}\naddressType: IPv4\nports: [{{name: http, port: {HTTP_PORT}}}, {{name: echo, port: {ECHO_PORT}}}]\nendpoints:\n- addresses: [\"{a}\"]\n- addresses: [\"{b}\"]\n"
    )
}

/// A node with the two kubia pods, each answering on a whole /24 besides its own address
/// (10.245.1.0/24 kubia-1, 10.245.2.0/24 kubia-2), and a client pod: (topology, client).
fn node_with_roomy_pods() -> (Topology, usize) {
    let mut topo = Topology::new(1).unwrap();
    for (k, name) in ["kubia-1", "kubia-2"].into_iter().enumerate() {
        let i = topo.add_pod(0, name).unwrap();
        topo.start_workload(i, &bins::testpod()).unwrap();
        // The pod answers on a whole /24 (a local route), reached through its interface.
        let net = format!("10.245.{}.0/24", k + 1);
        topo.pods[i].ns.ip(&["route", "add", "local", &net, "dev", "lo"]).unwrap();
        let host_if = topo.pods[i].host_if.clone();
        topo.nodes[0].ns.ip(&["route", "add", &net, "dev", &host_if]).unwrap();
    }
    let client = topo.add_pod(0, "client").unwrap();
    (topo, client)
}

/// Service `name` at `cluster_ip`:80 with endpoints `10.245.{net}.{first..first+n}`.
fn service(name: &str, cluster_ip: &str, net: u32, first: u32, n: u32) -> String {
    let eps: String = (first..first + n).map(|j| format!("- addresses: [\"10.245.{net}.{j}\"]\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {HTTP_PORT}}}]\nendpoints:\n{eps}---\n"
    )
}

/// Services `grow-1` .. `grow-n` (10.96.4.i:80), each with ten endpoints of its own: addresses
/// in 10.245.1.0/24 (kubia-1) and 10.245.2.0/24 (kubia-2), which those pods answer on.
fn many(n: u32) -> String {
    (1..=n).map(|i| service(&format!("grow-{i}"), &format!("10.96.4.{i}"), 1 + i % 2, i * 10, 10)).collect()
}

const SERVICES: u32 = 20;

#[test]
fn maps_created_too_small_grow_online_while_clients_run_and_every_service_answers() {
    if !privilege::require("maps_created_too_small_grow_online_while_clients_run_and_every_service_answers") {
        return;
    }
    let (topo, client) = node_with_roomy_pods();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    // Room for kubia and hardly more.
    for size in ["LB_BACKENDS=8", "LB_SERVICES=8", "LB_MEMBERS=8", "LB_SELECT=8", "LB_SVC_STATS=4", "LB_SVC_NAMES=4"] {
        opts.extra_args.extend(["--map-size".to_owned(), size.to_owned()]);
    }
    let base = kubia(&topo.pod("kubia-1").ip.to_string(), &topo.pod("kubia-2").ip.to_string());
    let mut agent = Agent::start(&bins::lb(), &opts, &[("kubia.yaml", &base)]).unwrap();
    agent.wait_services("kubia", |rows| rows.iter().any(|r| r["frontend"] == "10.96.3.3:80")).unwrap();
    let capacity = |agent: &Agent, map: &str| -> u64 {
        let st = agent.status().unwrap();
        let row = st["maps"].as_array().unwrap().iter().find(|m| m["map"] == map).cloned();
        row.and_then(|r| r["capacity"].as_u64()).unwrap_or_else(|| panic!("no {map} in {st:#}"))
    };
    assert_eq!(capacity(&agent, "LB_BACKENDS"), 8, "the maps start as small as asked");

    // A long-lived connection through kubia's echo port, and a loop of new connections.
    let echo = topo.pods[client]
        .ns
        .run_in(|| TcpStream::connect_timeout(&"10.96.3.3:7000".parse().unwrap(), Duration::from_secs(2)))
        .unwrap()
        .expect("connecting to kubia's echo port");
    echo.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut echo_lines = BufReader::new(echo.try_clone().unwrap());
    // Each line gets the pod's name back.
    let mut round_trip = |what: &str| -> String {
        (&echo).write_all(format!("{what}\n").as_bytes()).unwrap();
        let mut line = String::new();
        echo_lines.read_line(&mut line).unwrap_or_else(|e| panic!("echo of {what:?}: {e}"));
        line.trim_end().to_owned()
    };
    let pod_before = round_trip("before");
    assert!(pod_before.starts_with("kubia-"), "{pod_before}");
    // kubia's traffic so far, per Service port and per backend (the counter arrays grow too).
    let kubia_counts = |agent: &Agent| -> Vec<(String, u64)> {
        let out = std::process::Command::new(bins::lb())
            .args(["stats", "-o", "json", "--pin-path"])
            .arg(&agent.pin_path)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kubia_pods = [topo.pod("kubia-1").ip.to_string(), topo.pod("kubia-2").ip.to_string()];
        let rows = v["services"].as_array().unwrap().iter().chain(v["backends"].as_array().unwrap());
        rows.filter(|r| {
            let name = r["name"].as_str().unwrap();
            name.starts_with("demo/kubia:") || kubia_pods.iter().any(|ip| name.starts_with(&format!("{ip}:")))
        })
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["packets"].as_u64().unwrap()))
        .collect()
    };
    let counted_before = kubia_counts(&agent);
    assert!(counted_before.iter().any(|(_, p)| *p > 0), "kubia's traffic is counted: {counted_before:?}");

    /// Stops the client loop however the scope ends (a failed wait panics inside it).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = std::thread::scope(|s| {
        let stop_guard = StopOnDrop(stop.clone());
        let stop_loop = stop.clone();
        let client_ns = &topo.pods[client].ns;
        let looping =
            s.spawn(move || http_loop(client_ns, "10.96.3.3:80".parse().unwrap(), Duration::from_millis(5), stop_loop).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        agent.write_manifest("many.yaml", &many(SERVICES)).unwrap();
        agent
            .wait_services("every grow-i Service", |rows| {
                rows.iter().filter(|r| r["frontend"].as_str().is_some_and(|f| f.starts_with("10.96.4."))).count()
                    == SERVICES as usize
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(stop_guard);
        looping.join().unwrap()
    });
    assert_eq!(failed, 0, "{failed} of {} requests failed while the maps grew; log:\n{}", ok + failed, agent.log_text());
    assert!(ok > 10, "the client loop ran ({ok} requests)");
    assert_eq!(round_trip("after"), pod_before, "the long-lived connection keeps its pod across the growth");

    // Every Service answers, on every one of its ten endpoints' pods.
    for i in 1..=SERVICES {
        let addr: SocketAddr = format!("10.96.4.{i}:80").parse().unwrap();
        let answered = topo.pods[client].ns.run_in(move || (0..3).all(|_| http_ok(addr))).unwrap();
        assert!(answered, "grow-{i} does not answer; log:\n{}", agent.log_text());
    }
    let log = agent.log_text();
    eprintln!("{ok} requests, 0 failed, while these grew:");
    for line in log.lines().filter(|l| l.contains("grew a map online")) {
        eprintln!("  {line}");
    }
    assert!(log.contains("grew a map online") && log.contains("LB_BACKENDS"), "{log}");
    // The counters moved to the grown arrays: none went back (a fresh array would read zero).
    let counted_after: std::collections::BTreeMap<String, u64> = kubia_counts(&agent).into_iter().collect();
    for (name, before) in &counted_before {
        let after = counted_after.get(name).copied().unwrap_or(0);
        assert!(after >= *before, "{name}: {before} packets before the growth, {after} after");
    }
    assert!(capacity(&agent, "LB_BACKENDS") >= 1 + 4 + 10 * u64::from(SERVICES), "LB_BACKENDS holds every backend");
    assert!(capacity(&agent, "LB_SERVICES") > 8);
    let st = agent.status().unwrap();
    assert!(st["agent"]["map_resizes"].as_u64().unwrap() >= 2, "{st:#}");
    let table = std::process::Command::new(bins::lb()).args(["status", "--pin-path"]).arg(&agent.pin_path).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("maps grown online:"));
    assert!(
        !std::fs::read_dir(&agent.pin_path).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("replaced_"))
    );
}

/// The rows of `lb service list -o json` for `demo/NAME`.
fn listed(agent: &Agent, name: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new(bins::lb())
        .args(["service", "list", "-o", "json", "--pin-path"])
        .arg(&agent.pin_path)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"].as_str().is_some_and(|s| s.starts_with(&format!("demo/{name}:"))))
        .cloned()
}

/// Waits until `pred` holds, or panics with `what` and the agent's log.
fn wait_for(agent: &Agent, what: &str, pred: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_service_that_cannot_fit_is_left_out_by_name_while_the_others_follow_every_change() {
    if !privilege::require("a_service_that_cannot_fit_is_left_out_by_name_while_the_others_follow_every_change") {
        return;
    }
    let (topo, client) = node_with_roomy_pods();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.extra_args.extend(["--map-max".to_owned(), "LB_BACKENDS=40".to_owned()]);
    let base = kubia(&topo.pod("kubia-1").ip.to_string(), &topo.pod("kubia-2").ip.to_string());
    // `big` needs 50 backends: more than LB_BACKENDS may ever hold.
    let files = [
        ("kubia.yaml", base),
        ("big.yaml", service("big", "10.96.5.1", 1, 100, 50)),
        ("small-1.yaml", service("small-1", "10.96.5.11", 2, 1, 3)),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();
    let mut agent = Agent::start(&bins::lb(), &opts, &files).unwrap();
    agent
        .wait_services("kubia and small-1", |rows| {
            ["10.96.3.3:80", "10.96.5.11:80"].iter().all(|fe| rows.iter().any(|r| r["frontend"] == *fe))
        })
        .unwrap();
    let answers = |ip: &'static str| {
        let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
        topo.pods[client].ns.run_in(move || http_ok(addr)).unwrap()
    };
    assert!(answers("10.96.3.3") && answers("10.96.5.11"));
    assert!(listed(&agent, "big").is_none(), "big is not programmed");
    let reported = |agent: &Agent| -> String {
        let st = agent.status().unwrap();
        st["agent"]["problems"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join("\n")
    };
    wait_for(&agent, "big reported", || reported(&agent).contains("left out Service demo/big: does not fit LB_BACKENDS"));
    assert!(agent.log_text().contains("Service left out") && agent.log_text().contains("demo/big"));

    // Around it: a Service added, one scaled, one deleted. Each change is applied.
    agent.write_manifest("small-2.yaml", &service("small-2", "10.96.5.12", 2, 10, 3)).unwrap();
    agent.write_manifest("small-1.yaml", &service("small-1", "10.96.5.11", 2, 1, 5)).unwrap();
    wait_for(&agent, "small-2 added and small-1 scaled to 5", || {
        listed(&agent, "small-2").is_some()
            && listed(&agent, "small-1").is_some_and(|r| r["backends"].as_array().is_some_and(|b| b.len() == 5))
    });
    assert!(answers("10.96.5.12") && answers("10.96.5.11"));
    agent.remove_manifest("small-1.yaml").unwrap();
    wait_for(&agent, "small-1 deleted", || listed(&agent, "small-1").is_none());
    assert!(!answers("10.96.5.11"), "a deleted Service no longer answers");
    assert!(answers("10.96.3.3"));
    assert!(reported(&agent).contains("left out Service demo/big"), "still reported: {}", reported(&agent));
    assert!(!agent.log_text().contains("sync failed"), "no sync failed:\n{}", agent.log_text());

    // Room appears (big shrinks to 20 endpoints): it is programmed and no longer reported.
    agent.write_manifest("big.yaml", &service("big", "10.96.5.1", 1, 100, 20)).unwrap();
    wait_for(&agent, "big programmed", || listed(&agent, "big").is_some());
    assert!(answers("10.96.5.1"));
    wait_for(&agent, "big no longer reported", || !reported(&agent).contains("demo/big"));
    for line in agent.log_text().lines().filter(|l| l.contains("left out") || l.contains("programmed again")) {
        eprintln!("{line}");
    }
}
