//! Tier 2: end-to-end through real network namespaces. A node namespace, pod namespaces with the
//! test workload, the real `lb` agent reading real manifests, and real clients (curl, TCP and
//! UDP sockets inside the client pod). Point numbers refer to docs/semantics.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    bins, privilege,
    topology::{ECHO_PORT, HTTP_PORT, Topology, UDP_PORT},
};

const KUBIA_VIP: &str = "10.96.0.10";
const ECHO_VIP: &str = "10.96.0.11";

/// The seed's kubia Service (port 80 → targetPort 8080, selector app=kubia), with the ClusterIP
/// an API server would have assigned, plus a TCP line-echo port and a UDP echo port.
fn kubia_service() -> String {
    format!(
        r"apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  clusterIP: {KUBIA_VIP}
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  clusterIP: {ECHO_VIP}
  ports:
  - name: tcp-echo
    port: 7
    targetPort: {ECHO_PORT}
  - name: udp-echo
    port: 7
    protocol: UDP
    targetPort: {UDP_PORT}
  selector:
    app: kubia
"
    )
}

/// The EndpointSlices the endpoint-slice controller would write for the given pods.
fn slices(pods: &[(&str, String)], node: &str) -> String {
    let endpoints: String = pods
        .iter()
        .map(|(name, ip)| {
            format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {node}\n  targetRef: {{kind: Pod, name: {name}}}\n"
            )
        })
        .collect();
    format!(
        r"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubia-x1
  labels:
    kubernetes.io/service-name: kubia
addressType: IPv4
ports:
- port: {HTTP_PORT}
  protocol: TCP
endpoints:
{endpoints}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-x1
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: tcp-echo
  port: {ECHO_PORT}
  protocol: TCP
- name: udp-echo
  port: {UDP_PORT}
  protocol: UDP
endpoints:
{endpoints}"
    )
}

/// One node, three kubia pods serving, one client pod, the agent attached to every pod.
struct Kubia {
    topo: Topology,
    agent: Agent,
    client: usize,
}

fn kubia(test: &str) -> Option<Kubia> {
    kubia_with(test, &[])
}

fn kubia_with(test: &str, extra_args: &[&str]) -> Option<Kubia> {
    if !privilege::require(test) {
        return None;
    }
    let mut topo = Topology::new(1).expect("topology");
    let testpod = bins::testpod();
    let mut pods = Vec::new();
    for name in ["kubia-1", "kubia-2", "kubia-3"] {
        let i = topo.add_pod(0, name).expect("pod");
        topo.start_workload(i, &testpod).expect("workload");
        pods.push((name, topo.pods[i].ip.to_string()));
    }
    let client = topo.add_pod(0, "client").expect("client pod");
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
    let mut agent =
        Agent::start(&bins::lb(), &opts, &[("kubia.yaml", &kubia_service()), ("slices.yaml", &slices(&pods, "node-0"))])
            .expect("agent");
    agent
        .wait_services("kubia programmed with 3 endpoints", |rows| {
            rows.iter().any(|r| r["frontend"] == format!("{KUBIA_VIP}:80") && r["slots"].as_u64() > Some(0))
        })
        .expect("sync");
    Some(Kubia { topo, agent, client })
}

/// Drift repair, as kube-proxy's periodic full sync repairs its rules: a frontend deleted from
/// the pinned maps behind the agent's back (as `bpftool map delete` would) is written again
/// within the repair period, and the ClusterIP answers again.
#[test]
fn a_frontend_deleted_outside_the_agent_is_repaired() {
    use aya::maps::{HashMap as AyaHashMap, Map, MapData};
    let Some(mut k) = kubia_with("a_frontend_deleted_outside_the_agent_is_repaired", &["--repair-period", "1s"]) else {
        return;
    };
    k.topo.curl(k.client, &format!("http://{KUBIA_VIP}/"), 5).expect("curl before");
    let key = lb_common::ServiceKey {
        addr: lb_common::v4_mapped(KUBIA_VIP.parse::<std::net::Ipv4Addr>().unwrap().octets()),
        port_be: 80u16.to_be(),
        proto: lb_common::IPPROTO_TCP,
        _pad: 0,
    };
    let data = MapData::from_pin(k.agent.pin_path.join(lb_common::SERVICES)).expect("pinned services map");
    let mut services: AyaHashMap<MapData, lb_common::ServiceKey, lb_common::ServiceValue> =
        AyaHashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map");
    services.remove(&key).expect("deleting the kubia frontend");
    k.agent
        .wait_services("the deleted frontend written again", |rows| {
            rows.iter().any(|r| r["frontend"] == format!("{KUBIA_VIP}:80"))
        })
        .expect("repair");
    let body = k.topo.curl(k.client, &format!("http://{KUBIA_VIP}/"), 5).expect("curl after the repair");
    assert!(body.contains("You've hit"), "{body:?}");
    let log = k.agent.log_text();
    assert!(log.contains("repaired map entries"), "the repair is logged:\n{log}");
}

#[test]
fn point_22_curl_through_the_clusterip_reaches_all_three_pods() {
    let Some(k) = kubia("point_22_curl_through_the_clusterip_reaches_all_three_pods") else { return };
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..60 {
        let body = k
            .topo
            .curl(k.client, &format!("http://{KUBIA_VIP}/"), 5)
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", k.agent.log_text()));
        let who = body.trim().strip_prefix("You've hit ").unwrap_or_else(|| panic!("unexpected answer {body:?}"));
        *hits.entry(who.to_owned()).or_default() += 1;
    }
    let seen: BTreeSet<&str> = hits.keys().map(String::as_str).collect();
    assert_eq!(seen, BTreeSet::from(["kubia-1", "kubia-2", "kubia-3"]), "hits: {hits:?}");
}

#[test]
fn udp_echo_service_answers_through_the_clusterip() {
    let Some(k) = kubia("udp_echo_service_answers_through_the_clusterip") else { return };
    let vip: SocketAddr = format!("{ECHO_VIP}:7").parse().unwrap();
    let answers = k.topo.pods[k.client]
        .ns
        .run_in(move || -> Vec<String> {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            // connect() makes the kernel accept replies only from the ClusterIP: a reply that
            // was not reverse-translated would be dropped, not answered.
            sock.connect(vip).unwrap();
            let mut out = Vec::new();
            for i in 0..5 {
                sock.send(format!("ping {i}").as_bytes()).unwrap();
                let mut buf = [0u8; 1500];
                let n = sock.recv(&mut buf).expect("UDP answer through the ClusterIP");
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        })
        .unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("kubia-") && a.ends_with(&format!(": ping {i}")), "answer {a:?}");
    }
    // Same socket = same flow = same backend.
    let who: BTreeSet<&str> = answers.iter().map(|a| a.split(':').next().unwrap()).collect();
    assert_eq!(who.len(), 1, "one UDP flow must stay on one backend: {answers:?}");
}

#[test]
fn point_23_one_tcp_connection_keeps_its_backend_for_its_whole_life() {
    let Some(k) = kubia("point_23_one_tcp_connection_keeps_its_backend_for_its_whole_life") else { return };
    let vip: SocketAddr = format!("{ECHO_VIP}:7").parse().unwrap();
    let (long_lived, others) = k.topo.pods[k.client]
        .ns
        .run_in(move || -> (Vec<String>, BTreeSet<String>) {
            let conn = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let mut answers = Vec::new();
            let mut others = BTreeSet::new();
            for i in 0..40 {
                writeln!(w, "line {i}").unwrap();
                let mut line = String::new();
                r.read_line(&mut line).expect("echo answer");
                answers.push(line.trim().to_owned());
                // Meanwhile, short connections spread over the backends.
                if i % 4 == 0 {
                    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("short connect");
                    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    writeln!(c, "hello").unwrap();
                    let mut l = String::new();
                    BufReader::new(c).read_line(&mut l).unwrap();
                    others.insert(l.trim().to_owned());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (answers, others)
        })
        .unwrap();
    let backends: BTreeSet<&String> = long_lived.iter().collect();
    assert_eq!(backends.len(), 1, "the connection moved between backends: {long_lived:?}");
    assert!(others.len() >= 2, "short connections should spread over backends, saw {others:?}");
}
