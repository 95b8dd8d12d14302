//! Changes to the source while traffic runs, on the dual-stack two-node cluster with the file
//! source, in both families:
//! - point 57, per Service: a UDP client that keeps its source port follows a selector switch
//!   although its old pod stays an endpoint of another Service;
//! - a broken manifest holds back only its own file: the other files' changes are applied, its
//!   last good objects stay, and `lb status` names the file and document.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    cluster::TwoNodeCluster,
    privilege,
    topology::{HTTP_PORT, Topology, UDP_PORT},
};

/// A dual-stack Service `name` with ClusterIPs 10.96.6.`n` and fd00:96::6:`n`.
fn svc(name: &str, n: u8, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.6.{n}\n  clusterIPs: [10.96.6.{n}, \"fd00:96::6:{n}\"]\n  ports: {ports}\n---\n"
    )
}

/// EndpointSlices of both families for `service`: the given pods, all on their own nodes.
fn slices(topo: &Topology, service: &str, ports: &str, pods: &[&str]) -> String {
    let mut out = String::new();
    for family in ["IPv4", "IPv6"] {
        let eps: String = pods
            .iter()
            .map(|p| {
                let pod = topo.pod(p);
                let ip = if family == "IPv4" { pod.ip.to_string() } else { pod.ip6.to_string() };
                format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: node-{}\n", pod.node)
            })
            .collect();
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{family}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: {ports}\nendpoints:\n{eps}---\n"
        ));
    }
    out
}

fn udp_ports() -> String {
    format!("[{{port: 53, protocol: UDP, targetPort: {UDP_PORT}}}]")
}

fn udp_slice_ports() -> String {
    format!("[{{port: {UDP_PORT}, protocol: UDP}}]")
}

fn http_ports() -> String {
    format!("[{{port: 80, targetPort: {HTTP_PORT}}}]")
}

fn http_slice_ports() -> String {
    format!("[{{port: {HTTP_PORT}, protocol: TCP}}]")
}

/// Writes `name` into both agents' manifest directories.
fn write_everywhere(c: &TwoNodeCluster, name: &str, yaml: &str) {
    for a in &c.agents {
        a.write_manifest(name, yaml).expect("writing a manifest");
    }
}

/// One datagram from `sock` and the answer's first word (the pod's name), or `None` on timeout.
fn ask(sock: &UdpSocket) -> Option<String> {
    sock.send(b"q").ok()?;
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n]).split(':').next().map(str::to_owned)
}

/// Point 57 per Service (upstream conntrack.go "should be able to preserve UDP traffic when
/// server pod cycles"): `dns` switches from kubia-a to kubia-b (a blue/green selector switch)
/// while `syslog` keeps kubia-a. A client that keeps its source port reaches kubia-b within a
/// second of the agent holding the change; before, it stayed on kubia-a for as long as it sent.
#[test]
fn point_57_a_udp_client_follows_a_selector_switch_while_the_old_pod_serves_another_service() {
    let test = "point_57_a_udp_client_follows_a_selector_switch_while_the_old_pod_serves_another_service";
    if !privilege::require(test) {
        return;
    }
    let manifests = |topo: &Topology| {
        let services = [svc("dns", 1, &udp_ports()), svc("syslog", 2, &udp_ports())].concat();
        let slices =
            [slices(topo, "dns", &udp_slice_ports(), &["kubia-a"]), slices(topo, "syslog", &udp_slice_ports(), &["kubia-a"])]
                .concat();
        vec![("services.yaml".to_owned(), services), ("dns-slices.yaml".to_owned(), slices)]
    };
    let c = TwoNodeCluster::start(&[], manifests, "[fd00:96::6:2]:53").expect("cluster");
    for (vip, bind) in [("10.96.6.1:53", "0.0.0.0:12345"), ("[fd00:96::6:1]:53", "[::]:12346")] {
        let vip: SocketAddr = vip.parse().unwrap();
        let bind: SocketAddr = bind.parse().unwrap();
        let sock = c
            .topo
            .pod("client")
            .ns
            .run_in(move || {
                let s = UdpSocket::bind(bind).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                s.connect(vip).unwrap();
                s
            })
            .unwrap();
        for _ in 0..5 {
            assert_eq!(ask(&sock).as_deref(), Some("kubia-a"), "{vip}: before the switch");
        }
        let switched = [
            slices(&c.topo, "dns", &udp_slice_ports(), &["kubia-b"]),
            slices(&c.topo, "syslog", &udp_slice_ports(), &["kubia-a"]),
        ]
        .concat();
        write_everywhere(&c, "dns-slices.yaml", &switched);
        let written = Instant::now();
        // The agent of the client's node holds the switch (kubia-b is a backend only of dns)...
        let kubia_b = c.topo.pod("kubia-b").ip.to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.agents[0].dump("backends").map(|b| b.to_string().contains(&kubia_b)).unwrap_or(false) {
            assert!(Instant::now() < deadline, "the agent never programmed kubia-b:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        let programmed = Instant::now();
        // ...and from then on the same client port must reach kubia-b within a second.
        let moved = loop {
            if ask(&sock).as_deref() == Some("kubia-b") {
                break Instant::now();
            }
            assert!(
                programmed.elapsed() < Duration::from_secs(1),
                "{vip}: the client stayed on kubia-a after the switch\n{}",
                c.logs()
            );
        };
        eprintln!(
            "{vip}: moved {:?} after the manifest write, {:?} after the agent held it",
            moved - written,
            moved.saturating_duration_since(programmed)
        );
        for _ in 0..5 {
            assert_eq!(ask(&sock).as_deref(), Some("kubia-b"), "{vip}: it stays on the new endpoint");
        }
        // syslog still answers from kubia-a.
        let syslog: SocketAddr = if vip.is_ipv4() { "10.96.6.2:53" } else { "[fd00:96::6:2]:53" }.parse().unwrap();
        let other = c
            .topo
            .pod("client")
            .ns
            .run_in(move || {
                let s = UdpSocket::bind(if syslog.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.connect(syslog).unwrap();
                ask(&s)
            })
            .unwrap();
        assert_eq!(other.as_deref(), Some("kubia-a"), "{syslog}: the other Service keeps the old pod");
        // Back to kubia-a for the next family.
        let back = [
            slices(&c.topo, "dns", &udp_slice_ports(), &["kubia-a"]),
            slices(&c.topo, "syslog", &udp_slice_ports(), &["kubia-a"]),
        ]
        .concat();
        write_everywhere(&c, "dns-slices.yaml", &back);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.agents[0].dump("backends").map(|b| b.to_string().contains(&kubia_b)).unwrap_or(true) {
            assert!(Instant::now() < deadline, "the agent never dropped kubia-b:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A broken manifest beside a working one: while `broken.yaml` does not parse, `good.yaml`'s
/// Service is scaled and a new one added there, and both take effect at once; the broken file's
/// last good Service keeps answering; `lb status` names the file and document until it is fixed.
#[test]
fn a_broken_manifest_holds_back_only_its_own_file() {
    let test = "a_broken_manifest_holds_back_only_its_own_file";
    if !privilege::require(test) {
        return;
    }
    let good = |topo: &Topology, kubia_pods: &[&str], added: bool| {
        let mut s = svc("kubia", 1, &http_ports()) + &slices(topo, "kubia", &http_slice_ports(), kubia_pods);
        if added {
            s += &svc("added", 3, &http_ports());
            s += &slices(topo, "added", &http_slice_ports(), &["kubia-b"]);
        }
        s
    };
    let kept = |topo: &Topology| svc("kept", 2, &http_ports()) + &slices(topo, "kept", &http_slice_ports(), &["kubia-a2"]);
    let manifests = |topo: &Topology| {
        vec![("good.yaml".to_owned(), good(topo, &["kubia-a", "kubia-b"], false)), ("broken.yaml".to_owned(), kept(topo))]
    };
    let mut c = TwoNodeCluster::start(&[], manifests, "[fd00:96::6:2]:80").expect("cluster");

    // Its second document no longer parses.
    write_everywhere(&c, "broken.yaml", &format!("{}kind: [\n", svc("kept", 2, &http_ports())));
    write_everywhere(&c, "good.yaml", &good(&c.topo, &["kubia-b"], true));
    c.agents[0].wait_services("the new Service", |rows| rows.iter().any(|r| r["frontend"] == "[fd00:96::6:3]:80")).unwrap();
    for (kubia, added, kept_vip) in
        [("10.96.6.1", "10.96.6.3", "10.96.6.2"), ("[fd00:96::6:1]", "[fd00:96::6:3]", "[fd00:96::6:2]")]
    {
        for _ in 0..10 {
            assert_eq!(
                c.body(c.from_pod("client", &format!("http://{kubia}/"))),
                "You've hit kubia-b",
                "{kubia}: scaled to kubia-b"
            );
        }
        assert_eq!(c.body(c.from_pod("client", &format!("http://{added}/"))), "You've hit kubia-b", "{added}: added");
        assert_eq!(c.body(c.from_pod("client", &format!("http://{kept_vip}/"))), "You've hit kubia-a2", "{kept_vip}: last good");
    }
    let status = c.agents[0].status().unwrap();
    let problems = status["agent"]["problems"].to_string();
    assert!(problems.contains("broken.yaml: document 2"), "lb status names the file and document: {status:#}");
    assert!(c.agents[0].log_text().contains("broken.yaml: document 2"), "{}", c.agents[0].log_text());

    // Fixed: the problem goes, and the file's new content is used.
    write_everywhere(
        &c,
        "broken.yaml",
        &(svc("kept", 2, &http_ports()) + &slices(&c.topo, "kept", &http_slice_ports(), &["kubia-b"])),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.agents[0].status().unwrap()["agent"]["problems_total"] != 0 {
        assert!(Instant::now() < deadline, "the problem stayed after the fix:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.body(c.from_pod("client", "http://10.96.6.2/")) != "You've hit kubia-b" {
        assert!(Instant::now() < deadline, "the fixed file was not applied:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}
