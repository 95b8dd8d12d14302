//! The IPv6 twins of the end-to-end tests, on a dual-stack two-node cluster: every Service has
//! an IPv4 and an IPv6 ClusterIP (`ipFamilies: [IPv4, IPv6]`), EndpointSlices of both address
//! types, and real clients over IPv6 (curl -6, sockets). Point numbers refer to
//! docs/semantics.md (55: dual-stack).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    cluster::TwoNodeCluster,
    privilege,
    topology::{CurlOutcome, ECHO_PORT, HTTP_PORT, Topology, UDP_PORT},
};

const LB_IP6: &str = "2001:db8::7";

/// A dual-stack Service: `name`, v4 ClusterIP 10.96.2.`n`, v6 ClusterIP fd00:96::2:`n`.
fn svc(name: &str, n: u8, extra_spec: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.2.{n}\n  clusterIPs: [10.96.2.{n}, \"fd00:96::2:{n}\"]\n{extra_spec}  ports: {ports}\n---\n"
    )
}

fn services() -> String {
    let http = format!("[{{port: 80, targetPort: {HTTP_PORT}}}]");
    [
        svc("kubia", 1, "", &format!("[{{name: http, port: 80, targetPort: {HTTP_PORT}}}, {{name: echo, port: 7, targetPort: {ECHO_PORT}}}, {{name: udp, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}]")),
        svc("web", 2, "  type: NodePort\n", &format!("[{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30080}}]")),
        svc("local", 3, "  type: NodePort\n  externalTrafficPolicy: Local\n", &format!("[{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30081}}]")),
        svc("empty", 4, "", &format!("[{{name: http, port: 80, targetPort: {HTTP_PORT}}}, {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}]")),
        svc("self", 5, "", &http),
        svc("sticky", 6, "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n", &http),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIP: \"fd00:96::2:7\"\n  clusterIPs: [\"fd00:96::2:7\"]\n  loadBalancerSourceRanges: [\"fd00:77::100/128\"]\n  ports: [{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30082}}]\nstatus:\n  loadBalancer:\n    ingress: [{{ip: \"{LB_IP6}\"}}]\n---\n"
        ),
    ]
    .concat()
}

/// EndpointSlices of both address types for `service` with the given pods (name, node).
fn slices(topo: &Topology, service: &str, ports: &str, pods: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
        let eps: String = pods
            .iter()
            .map(|(p, node)| {
                let pod = topo.pod(p);
                let ip = if family == "IPv4" { pod.ip.to_string() } else { pod.ip6.to_string() };
                format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: {node}\n")
            })
            .collect();
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{suffix}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: {ports}\nendpoints:\n{eps}---\n"
        ));
    }
    out
}

fn cluster(test: &str) -> Option<TwoNodeCluster> {
    if !privilege::require(test) {
        return None;
    }
    let manifests = |topo: &Topology| {
        let http = format!("[{{port: {HTTP_PORT}, protocol: TCP}}]");
        let kubia_ports = format!(
            "[{{name: http, port: {HTTP_PORT}, protocol: TCP}}, {{name: echo, port: {ECHO_PORT}, protocol: TCP}}, {{name: udp, port: {UDP_PORT}, protocol: UDP}}]"
        );
        let (a, a2, b) = (("kubia-a", "node-0"), ("kubia-a2", "node-0"), ("kubia-b", "node-1"));
        let all_slices = [
            slices(topo, "kubia", &kubia_ports, &[a, a2, b]),
            slices(topo, "web", &http, &[b]),
            slices(topo, "local", &http, &[b]),
            slices(topo, "self", &http, &[a]),
            slices(topo, "sticky", &http, &[a, a2, b]),
            slices(topo, "lb", &http, &[a, b]),
        ]
        .concat();
        vec![("services.yaml".to_owned(), services()), ("slices.yaml".to_owned(), all_slices)]
    };
    Some(
        TwoNodeCluster::start(&[(&format!("{LB_IP6}/128"), "fd00:77::1")], manifests, &format!("[{LB_IP6}]:80"))
            .expect("cluster"),
    )
}

#[test]
fn point_55_a_dual_stack_service_answers_on_both_families_from_all_pods() {
    let Some(c) = cluster("point_55_a_dual_stack_service_answers_on_both_families_from_all_pods") else { return };
    for url in ["http://10.96.2.1/", "http://[fd00:96::2:1]/"] {
        let seen: BTreeSet<String> = (0..30).map(|_| c.body(c.from_pod("client", url))).collect();
        assert_eq!(seen.len(), 3, "{url}: all three pods answer: {seen:?}");
    }
}

#[test]
fn point_23_v6_one_tcp_connection_keeps_its_backend_and_udp_answers() {
    let Some(c) = cluster("point_23_v6_one_tcp_connection_keeps_its_backend_and_udp_answers") else { return };
    let (answers, udp) = c
        .topo
        .pod("client")
        .ns
        .run_in(|| {
            let vip: SocketAddr = "[fd00:96::2:1]:7".parse().unwrap();
            let conn = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect over IPv6");
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let mut answers = BTreeSet::new();
            for i in 0..20 {
                writeln!(w, "line {i}").unwrap();
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                answers.insert(l.trim().to_owned());
            }
            let s = UdpSocket::bind("[::]:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect("[fd00:96::2:1]:53".parse::<SocketAddr>().unwrap()).unwrap();
            s.send(b"ping").unwrap();
            let mut buf = [0u8; 256];
            let n = s.recv(&mut buf).expect("UDP answer through the IPv6 ClusterIP");
            (answers, String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap();
    assert_eq!(answers.len(), 1, "the connection moved between backends: {answers:?}");
    assert!(udp.starts_with("kubia-") && udp.ends_with(": ping"), "{udp}");
}

#[test]
fn point_32_33_v6_nodeports_cluster_policy_snats_local_policy_keeps_the_client() {
    let Some(c) = cluster("point_32_33_v6_nodeports_cluster_policy_snats_local_policy_keeps_the_client") else { return };
    assert_eq!(c.body(c.from_client(0, "http://[fd00:77::1]:30080/")), "You've hit kubia-b");
    assert_eq!(c.body(c.from_client(0, "http://[fd00:77::1]:30080/clientip")), "fd00:77::1", "SNAT to node-0's IPv6 address");
    assert_eq!(c.body(c.from_client(0, "http://[fd00:77::2]:30081/clientip")), "fd00:77::100", "Local keeps the client");
    assert_eq!(c.from_client(0, "http://[fd00:77::1]:30081/"), CurlOutcome::TimedOut, "no local endpoint: dropped");
}

#[test]
fn point_47_48_v6_loadbalancer_ip_with_source_ranges() {
    let Some(c) = cluster("point_47_48_v6_loadbalancer_ip_with_source_ranges") else { return };
    let who = c.body(c.from_client(0, &format!("http://[{LB_IP6}]/")));
    assert!(who == "You've hit kubia-a" || who == "You've hit kubia-b", "{who}");
    assert_eq!(c.from_client(1, &format!("http://[{LB_IP6}]/")), CurlOutcome::TimedOut, "fd00:77::101 is outside the ranges");
}

#[test]
fn point_37_v6_no_endpoints_refuses_tcp_and_udp() {
    let Some(c) = cluster("point_37_v6_no_endpoints_refuses_tcp_and_udp") else { return };
    let (tcp, udp) = c
        .topo
        .pod("client")
        .ns
        .run_in(|| {
            let addr: SocketAddr = "[fd00:96::2:4]:80".parse().unwrap();
            let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(|_| ()).unwrap_err().kind();
            let s = UdpSocket::bind("[::]:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect("[fd00:96::2:4]:53".parse::<SocketAddr>().unwrap()).unwrap();
            s.send(b"q").unwrap();
            let mut buf = [0u8; 16];
            (tcp, s.recv(&mut buf).map(|_| ()).unwrap_err().kind())
        })
        .unwrap();
    assert_eq!(tcp, std::io::ErrorKind::ConnectionRefused, "RST over IPv6");
    assert_eq!(udp, std::io::ErrorKind::ConnectionRefused, "ICMPv6 port unreachable");
}

#[test]
fn point_51_v6_a_pod_reaches_itself_and_affinity_holds() {
    let Some(c) = cluster("point_51_v6_a_pod_reaches_itself_and_affinity_holds") else { return };
    for _ in 0..3 {
        assert_eq!(c.body(c.from_pod("kubia-a", "http://[fd00:96::2:5]/")), "You've hit kubia-a");
    }
    let first = c.body(c.from_pod("client", "http://[fd00:96::2:6]/"));
    for _ in 0..15 {
        assert_eq!(c.body(c.from_pod("client", "http://[fd00:96::2:6]/")), first, "ClientIP affinity over IPv6");
    }
    // timeoutSeconds is 2: requests spaced further apart than that choose afresh every time.
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(2200));
        seen.insert(c.body(c.from_pod("client", "http://[fd00:96::2:6]/")));
        if seen.len() > 1 {
            break;
        }
    }
    assert!(seen.len() > 1, "after the timeout the client must be able to land elsewhere: {seen:?}");
}

#[test]
fn point_34_v6_a_pod_reaching_a_local_policy_nodeport_gets_the_cluster_set() {
    let Some(c) = cluster("point_34_v6_a_pod_reaching_a_local_policy_nodeport_gets_the_cluster_set") else { return };
    assert_eq!(c.body(c.from_pod("client", "http://[fd00:77::1]:30081/")), "You've hit kubia-b");
}

#[test]
fn point_42_v6_the_node_itself_reaches_ipv6_clusterips_and_nodeports() {
    let Some(c) = cluster("point_42_v6_the_node_itself_reaches_ipv6_clusterips_and_nodeports") else { return };
    let node = c.topo.nodes[0].ns.name().to_owned();
    for url in ["http://[fd00:96::2:2]/", "http://[fd00:77::1]:30080/"] {
        let out = c
            .cgroup
            .command("ip", &["netns", "exec", &node, "curl", "-sS", "--max-time", "3", url])
            .output()
            .expect("curl on the node");
        assert!(out.status.success(), "{url}: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "You've hit kubia-b");
    }
}
