//! Point 63: an endpoint on the node's own address (a hostNetwork pod, the API server of a
//! control-plane node) answers through its Service from every kind of client, in both families,
//! on the dual-stack two-node cluster. node-0 runs the server in its own namespace on
//! 192.168.77.1 / fd00:77::1; the Services' only endpoint is that address.
//!
//! What each client must see, as with kube-proxy: a pod keeps its own address (no SNAT on
//! ClusterIP traffic); an outside client reaching node-0 keeps its address too (the traffic is
//! delivered on the node, never masqueraded); an outside client reaching node-1 is masqueraded to
//! node-1 (policy Cluster, endpoint elsewhere). The replies of the node's stack leave through
//! the egress of a pod interface or of the external interface, where `lb_tc_egress` translates
//! them back.

use lb_tests::{bins, cluster::TwoNodeCluster, privilege, topology::Topology};

/// Ports the node's own server listens on (nothing else in the node uses them).
const HOST_HTTP: u16 = 18080;
const HOST_UDP: u16 = 19000;
const EXTERNAL_IP: &str = "203.0.113.50";
const EXTERNAL_IP6: &str = "2001:db8::50";

fn services() -> String {
    let svc = |name: &str, n: u8, policy: &str, node_port: u16, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: {policy}\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.5.{n}\n  clusterIPs: [10.96.5.{n}, \"fd00:96::5:{n}\"]\n{extra}  ports: [{{port: 80, targetPort: {HOST_HTTP}, nodePort: {node_port}}}]\n---\n"
        )
    };
    [
        svc("hostnet", 1, "Cluster", 30090, &format!("  externalIPs: [{EXTERNAL_IP}, \"{EXTERNAL_IP6}\"]\n")),
        svc("hostnet-local", 2, "Local", 30091, ""),
    ]
    .concat()
}

/// One slice per family whose endpoint is node-0's own address.
fn slices(topo: &Topology) -> String {
    let node = &topo.nodes[0];
    let mut out = String::new();
    for svc in ["hostnet", "hostnet-local"] {
        for (family, ip) in [("IPv4", node.underlay_ip.to_string()), ("IPv6", node.underlay_ip6.to_string())] {
            out.push_str(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-{family}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: {family}\nports: [{{port: {HOST_HTTP}, protocol: TCP}}]\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: node-0\n---\n"
            ));
        }
    }
    out
}

fn cluster(test: &str) -> Option<TwoNodeCluster> {
    if !privilege::require(test) {
        return None;
    }
    let manifests = |topo: &Topology| vec![("services.yaml".to_owned(), services()), ("slices.yaml".to_owned(), slices(topo))];
    let routes = [(format!("{EXTERNAL_IP}/32"), "192.168.77.1"), (format!("{EXTERNAL_IP6}/128"), "fd00:77::1")];
    let routes: Vec<(&str, &str)> = routes.iter().map(|(d, v)| (d.as_str(), *v)).collect();
    let mut c = TwoNodeCluster::start(&routes, manifests, "[fd00:96::5:2]:80").expect("cluster");
    c.topo.start_node_workload(0, "host-0", &bins::testpod(), HOST_HTTP, HOST_UDP).expect("node workload");
    Some(c)
}

/// `http://ADDR:PORT` for an address of either family.
fn url(addr: &str, port: u16, path: &str) -> String {
    if addr.contains(':') { format!("http://[{addr}]:{port}/{path}") } else { format!("http://{addr}:{port}/{path}") }
}

#[test]
fn point_63_pods_reach_a_host_network_endpoint_through_its_clusterip_and_keep_their_address() {
    let Some(c) = cluster("point_63_pods_reach_a_host_network_endpoint_through_its_clusterip_and_keep_their_address") else {
        return;
    };
    // `client` is on node-0, next to the endpoint (the reply leaves through its pod interface);
    // kubia-b is on node-1 (the reply crosses the underlay back to node-1).
    for pod in ["client", "kubia-b"] {
        let p = c.topo.pod(pod);
        for (vip, own) in [("10.96.5.1", p.ip.to_string()), ("fd00:96::5:1", p.ip6.to_string())] {
            assert_eq!(c.body(c.from_pod(pod, &url(vip, 80, ""))), "You've hit host-0", "{pod} → {vip}");
            assert_eq!(c.body(c.from_pod(pod, &url(vip, 80, "clientip"))), own, "{pod} → {vip}: the endpoint sees the pod");
        }
    }
    // A pod reaching its own node's NodePort (point 42) gets there too.
    for node_ip in ["192.168.77.1", "fd00:77::1"] {
        assert_eq!(c.body(c.from_pod("client", &url(node_ip, 30090, ""))), "You've hit host-0", "{node_ip}:30090");
    }
}

#[test]
fn point_63_outside_clients_reach_a_host_network_endpoint_through_nodeports_and_external_ips() {
    let Some(c) = cluster("point_63_outside_clients_reach_a_host_network_endpoint_through_nodeports_and_external_ips") else {
        return;
    };
    let outside = &c.topo.clients[0];
    for (own, node0, node1, external_ip) in [
        (outside.ip.to_string(), "192.168.77.1", "192.168.77.2", EXTERNAL_IP),
        (outside.ip6.to_string(), "fd00:77::1", "fd00:77::2", EXTERNAL_IP6),
    ] {
        // Delivered on node-0 itself: the client's own address, whatever the policy.
        for (addr, port) in [(node0, 30090), (node0, 30091), (external_ip, 80)] {
            assert_eq!(c.body(c.from_client(0, &url(addr, port, ""))), "You've hit host-0", "{addr}:{port}");
            assert_eq!(c.body(c.from_client(0, &url(addr, port, "clientip"))), own, "{addr}:{port}: the client's address");
        }
        // Through node-1 (policy Cluster): forwarded to node-0, masqueraded to node-1.
        assert_eq!(c.body(c.from_client(0, &url(node1, 30090, "clientip"))), node1, "{node1}:30090 is masqueraded");
    }
}

#[test]
fn point_63_the_node_itself_reaches_its_host_network_endpoint_through_the_clusterip() {
    let Some(c) = cluster("point_63_the_node_itself_reaches_its_host_network_endpoint_through_the_clusterip") else { return };
    let node = c.topo.nodes[0].ns.name().to_owned();
    for (vip, own) in [("10.96.5.1", "192.168.77.1"), ("fd00:96::5:1", "fd00:77::1")] {
        for (path, want) in [("", "You've hit host-0"), ("clientip", own)] {
            let u = url(vip, 80, path);
            let out = c
                .cgroup
                .command("ip", &["netns", "exec", &node, "curl", "-sS", "--max-time", "3", &u])
                .output()
                .expect("curl on the node");
            assert!(
                out.status.success(),
                "{u} from the node: {}\nagent logs:\n{}",
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{u}");
        }
    }
}
