//! Tier 2, the complete datapath end to end: two node namespaces and external clients on an
//! underlay, pods behind each node, one real `lb` agent per node (XDP on the node's external
//! interface, TC on its pod interfaces, socket hooks on a test cgroup), real curl and sockets.
//! Point numbers refer to docs/semantics.md.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_tests::{
    cluster::TwoNodeCluster,
    privilege,
    topology::{CurlOutcome, HTTP_PORT, UDP_PORT},
};

const LB_IP: &str = "198.51.100.7";

/// Services of the two-node cluster. Pods: kubia-a, kubia-a2 on node-0; kubia-b on node-1.
fn services() -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: 10.96.1.10
  externalTrafficPolicy: Cluster
  ports: [{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: local}}
spec:
  type: NodePort
  clusterIP: 10.96.1.11
  externalTrafficPolicy: Local
  ports: [{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30081}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.12
  loadBalancerSourceRanges: ["192.168.77.100/32"]
  ports: [{{port: 80, targetPort: {HTTP_PORT}, nodePort: 30082}}]
status:
  loadBalancer:
    ingress: [{{ip: {LB_IP}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: 10.96.1.13
  ports:
  - {{name: http, port: 80, targetPort: {HTTP_PORT}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}
---
apiVersion: v1
kind: Service
metadata: {{name: self}}
spec:
  clusterIP: 10.96.1.14
  ports: [{{port: 80, targetPort: {HTTP_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  clusterIP: 10.96.1.15
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 2}}}}
  ports: [{{port: 80, targetPort: {HTTP_PORT}}}]
"#
    )
}

fn slice(service: &str, port: u16, endpoints: &[(&str, &str)]) -> String {
    lb_tests::cluster::slice_yaml(service, None, port, endpoints)
}

const A: (&str, &str) = ("10.244.0.10", "node-0");
const A2: (&str, &str) = ("10.244.0.11", "node-0");
const B: (&str, &str) = ("10.244.1.10", "node-1");

fn slices() -> String {
    [
        slice("web", HTTP_PORT, &[B]),
        slice("local", HTTP_PORT, &[B]),
        slice("lb", HTTP_PORT, &[A, B]),
        slice("self", HTTP_PORT, &[A]),
        slice("sticky", HTTP_PORT, &[A, A2, B]),
    ]
    .concat()
}

fn cluster(test: &str) -> Option<TwoNodeCluster> {
    if !privilege::require(test) {
        return None;
    }
    // The LoadBalancer IP is routed to node-0 (as a cloud load balancer would).
    let manifests =
        |_: &lb_tests::topology::Topology| vec![("services.yaml".to_owned(), services()), ("slices.yaml".to_owned(), slices())];
    Some(TwoNodeCluster::start(&[(&format!("{LB_IP}/32"), "192.168.77.1")], manifests, &format!("{LB_IP}:80")).expect("cluster"))
}

#[test]
fn point_32_nodeport_cluster_policy_reaches_a_pod_on_the_other_node_with_snat() {
    let Some(c) = cluster("point_32_nodeport_cluster_policy_reaches_a_pod_on_the_other_node_with_snat") else { return };
    // node-0 has no web endpoint: XDP on node-0 DNATs to kubia-b on node-1 and SNATs to node-0.
    for _ in 0..5 {
        let who = c.body(c.from_client(0, "http://192.168.77.1:30080/"));
        assert_eq!(who, "You've hit kubia-b");
    }
    let seen = c.body(c.from_client(0, "http://192.168.77.1:30080/clientip"));
    assert_eq!(seen, "192.168.77.1", "policy Cluster: the backend sees the node's address (SNAT)");
    // The dump lists each source-NATed flow's reply entry (kept in its SNAT port's slot) beside
    // its forward entry: replies from kubia-b to node-0's SNAT ports.
    let pin = c.agents[0].pin_path.display().to_string();
    let out = std::process::Command::new(lb_tests::bins::lb())
        .args(["maps", "dump", "conntrack", "-o", "json", "--pin-path", &pin])
        .output()
        .expect("lb maps dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = rows.as_array().expect("rows");
    let replies =
        rows.iter().filter(|r| r["direction"] == "reply" && r["destination"].as_str().unwrap().starts_with("192.168.77.1:"));
    let forwards =
        rows.iter().filter(|r| r["direction"] == "forward" && r["snat"].as_str().is_some_and(|s| s.starts_with("192.168.77.1:")));
    assert_eq!(replies.count(), 6, "one reply entry per connection: {rows:#?}\n{}", c.logs());
    assert_eq!(forwards.count(), 6, "{rows:#?}");
    // Through node-1 too (point 41: every node serves the NodePort).
    assert_eq!(c.body(c.from_client(0, "http://192.168.77.2:30080/")), "You've hit kubia-b");
}

/// Real pods keep their veth's checksum offload on, so their packets reach the pod hook with a
/// partial checksum (only the pseudo-header summed, `CHECKSUM_PARTIAL`), which the TC program
/// must update differently from a full one. Here every pod keeps it on, and each translated
/// packet then leaves through the node's external interface, whose offload is off: the kernel
/// completes the checksum from the field the program wrote, and the receiver checks it (between
/// pods on one node a partial checksum is never checked, so those paths cannot show a wrong
/// update). Both directions: a pod's request through a ClusterIP to a pod on the other node
/// (DNAT at the pod hook), and an outside client's request through a Local-policy NodePort
/// whose reply from the local pod is translated back at the pod hook.
#[test]
fn pods_with_checksum_offload_on_are_translated_with_valid_checksums() {
    let Some(c) = cluster("pods_with_checksum_offload_on_are_translated_with_valid_checksums") else { return };
    for i in 0..c.topo.pods.len() {
        c.topo.offload_checksums(i).expect("checksum offload on");
    }
    for _ in 0..3 {
        assert_eq!(c.body(c.from_pod("client", "http://10.96.1.10/")), "You've hit kubia-b");
        assert_eq!(c.body(c.from_client(0, "http://192.168.77.2:30081/")), "You've hit kubia-b");
    }
}

#[test]
fn point_33_nodeport_local_policy_keeps_the_client_ip_and_drops_without_a_local_endpoint() {
    let Some(c) = cluster("point_33_nodeport_local_policy_keeps_the_client_ip_and_drops_without_a_local_endpoint") else {
        return;
    };
    let seen = c.body(c.from_client(0, "http://192.168.77.2:30081/clientip"));
    assert_eq!(seen, "192.168.77.100", "policy Local: the backend sees the client's own address");
    // node-0 has no local endpoint: dropped, not rejected (point 38).
    assert_eq!(c.from_client(0, "http://192.168.77.1:30081/"), CurlOutcome::TimedOut);
}

#[test]
fn point_47_48_loadbalancer_ip_with_source_ranges() {
    let Some(c) = cluster("point_47_48_loadbalancer_ip_with_source_ranges") else { return };
    let who = c.body(c.from_client(0, &format!("http://{LB_IP}/")));
    assert!(who == "You've hit kubia-a" || who == "You've hit kubia-b", "{who}");
    // 192.168.77.101 is outside loadBalancerSourceRanges: dropped.
    assert_eq!(c.from_client(1, &format!("http://{LB_IP}/")), CurlOutcome::TimedOut);
    // The NodePort of the same service is not restricted (point 48).
    let who = c.body(c.from_client(1, "http://192.168.77.1:30082/"));
    assert!(who.starts_with("You've hit kubia-"), "{who}");
    // `lb maps dump source-ranges` shows the LoadBalancer IP and the range it admits.
    let out = std::process::Command::new(lb_tests::bins::lb())
        .args(["maps", "dump", "source-ranges", "-o", "json", "--pin-path"])
        .arg(&c.agents[0].pin_path)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        rows,
        serde_json::json!([{"frontend": LB_IP.to_string(), "source": "192.168.77.100/32"}]),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn point_37_no_endpoints_refuses_tcp_at_once_and_answers_udp_with_icmp() {
    let Some(c) = cluster("point_37_no_endpoints_refuses_tcp_at_once_and_answers_udp_with_icmp") else { return };
    let (kind, took) = c
        .topo
        .pod("client")
        .ns
        .run_in(|| {
            let started = std::time::Instant::now();
            let addr: SocketAddr = "10.96.1.13:80".parse().unwrap();
            let err = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(|_| ()).unwrap_err();
            (err.kind(), started.elapsed())
        })
        .unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionRefused, "TCP to a service without endpoints gets a RST");
    assert!(took < Duration::from_secs(1), "a reject is immediate, not a timeout: {took:?}");
    let err = c
        .topo
        .pod("client")
        .ns
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect("10.96.1.13:53".parse::<SocketAddr>().unwrap()).unwrap();
            s.send(b"query").unwrap();
            let mut buf = [0u8; 64];
            s.recv(&mut buf).map(|_| ()).unwrap_err().kind()
        })
        .unwrap();
    assert_eq!(err, std::io::ErrorKind::ConnectionRefused, "the ICMP port unreachable must reach the UDP socket");
}

#[test]
fn point_51_a_pod_reaches_itself_through_its_service() {
    let Some(c) = cluster("point_51_a_pod_reaches_itself_through_its_service") else { return };
    for _ in 0..3 {
        assert_eq!(c.body(c.from_pod("kubia-a", "http://10.96.1.14/")), "You've hit kubia-a");
    }
}

#[test]
fn points_24_26_session_affinity_holds_then_expires() {
    let Some(c) = cluster("points_24_26_session_affinity_holds_then_expires") else { return };
    let first = c.body(c.from_pod("client", "http://10.96.1.15/"));
    for _ in 0..20 {
        assert_eq!(c.body(c.from_pod("client", "http://10.96.1.15/")), first, "ClientIP affinity must hold");
    }
    // timeoutSeconds is 2: requests spaced further apart than that choose afresh every time.
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(2200));
        seen.insert(c.body(c.from_pod("client", "http://10.96.1.15/")));
        if seen.len() > 1 {
            break;
        }
    }
    assert!(seen.len() > 1, "after the timeout the client must be able to land elsewhere: {seen:?}");
}

#[test]
fn point_42_the_node_itself_reaches_clusterips_and_its_nodeports() {
    let Some(c) = cluster("point_42_the_node_itself_reaches_clusterips_and_its_nodeports") else { return };
    let node = c.topo.nodes[0].ns.name().to_owned();
    for url in ["http://10.96.1.10/", "http://192.168.77.1:30080/"] {
        let out = c
            .cgroup
            .command("ip", &["netns", "exec", &node, "curl", "-sS", "--max-time", "3", url])
            .output()
            .expect("curl on the node");
        assert!(out.status.success(), "{url} from the node: {}\nagent logs:\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "You've hit kubia-b");
    }
}

#[test]
fn point_34_a_pod_reaching_a_local_policy_nodeport_gets_the_cluster_set() {
    let Some(c) = cluster("point_34_a_pod_reaching_a_local_policy_nodeport_gets_the_cluster_set") else { return };
    // node-0 has no local endpoint of `local`, yet its own pods get Cluster semantics.
    assert_eq!(c.body(c.from_pod("client", "http://192.168.77.1:30081/")), "You've hit kubia-b");
}
