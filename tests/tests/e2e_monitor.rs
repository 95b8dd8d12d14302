//! `lb monitor` on a running node (issue 18, item 2): real clients' packets that the datapath
//! drops (outside `loadBalancerSourceRanges`; to a Local-policy NodePort without a local
//! endpoint), refuses (a Service without endpoints) or translates as a new flow show up as
//! events with their reason, Service, addresses and interface; while no monitor runs the
//! datapath writes no event at all.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Duration,
};

use lb_tests::{
    bins,
    cluster::{TwoNodeCluster, slice_yaml},
    privilege,
    topology::{CurlOutcome, HTTP_PORT, Topology},
};
use serde_json::Value;

const LB_IP: &str = "198.51.100.8";

fn services() -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: 10.96.5.10
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.5.11
  loadBalancerSourceRanges: ["192.168.77.100/32"]
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}, nodePort: 30092}}]
status:
  loadBalancer:
    ingress: [{{ip: {LB_IP}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: local}}
spec:
  type: NodePort
  clusterIP: 10.96.5.12
  externalTrafficPolicy: Local
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}, nodePort: 30091}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: 10.96.5.13
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]
"#
    )
}

fn manifests(t: &Topology) -> Vec<(String, String)> {
    let (a, b) = (t.pod("kubia-a").ip.to_string(), t.pod("kubia-b").ip.to_string());
    let (a, b) = ((a.as_str(), "node-0"), (b.as_str(), "node-1"));
    let slice = |service: &str, endpoints: &[(&str, &str)]| slice_yaml(service, Some("http"), HTTP_PORT, endpoints);
    let slices = [slice("web", &[a, b]), slice("lb", &[a, b]), slice("local", &[b])];
    vec![("services.yaml".into(), services()), ("slices.yaml".into(), slices.concat())]
}

fn lb_json(pin: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new(bins::lb()).args(args).args(["-o", "json", "--pin-path", pin]).output().unwrap();
    assert!(out.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (events written by the datapath, drops outside the source ranges) on node-0.
fn counts(pin: &str) -> (u64, u64) {
    let stats = lb_json(pin, &["stats"]);
    (stats["monitor"]["written"].as_u64().unwrap(), stats["counters"]["drop_source_range"].as_u64().unwrap())
}

#[test]
fn lb_monitor_shows_drops_rejects_and_flows_and_nothing_is_written_without_it() {
    if !privilege::require("lb_monitor_shows_drops_rejects_and_flows_and_nothing_is_written_without_it") {
        return;
    }
    let c = TwoNodeCluster::start(&[(&format!("{LB_IP}/32"), "192.168.77.1")], manifests, "10.96.5.10:80").expect("cluster");
    let pin = c.agents[0].pin_path.display().to_string();
    let lb_url = format!("http://{LB_IP}/");

    // No monitor: the drop is counted, no event is written.
    let (written0, dropped0) = counts(&pin);
    assert_eq!(c.from_client(1, &lb_url), CurlOutcome::TimedOut);
    let (written1, dropped1) = counts(&pin);
    assert!(dropped1 > dropped0, "the stranger's SYNs were dropped");
    assert_eq!(written1, written0, "no event is written while no monitor runs");

    // A monitor in the node's network namespace, so that it names the interfaces (nsenter: `ip
    // netns exec` would mount a sysfs without the bpffs).
    let mut mon = std::process::Command::new("nsenter")
        .arg(format!("--net={}", c.topo.nodes[0].ns.path()))
        .arg(bins::lb())
        .args(["monitor", "--type", "drop,reject,flow", "--duration", "60s", "-o", "json", "--pin-path", &pin])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(mon.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("lb monitor: showing drop, reject, flow events"), "{first}");

    assert_eq!(c.from_client(1, &lb_url), CurlOutcome::TimedOut);
    assert_eq!(c.from_client(0, "http://192.168.77.1:30091/"), CurlOutcome::TimedOut);
    assert_eq!(c.from_pod("client", "http://10.96.5.13/"), CurlOutcome::Refused);
    let who = c.body(c.from_pod("client", "http://10.96.5.10/"));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mon.id() as i32, libc::SIGTERM) };
    let out = mon.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(out.status.success(), "{rest}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| {
        events.iter().find(|e| pred(e)).unwrap_or_else(|| panic!("no {what} event in {events:#?}\n{rest}")).clone()
    };

    let outside = |i: usize| c.topo.clients[i].ip.to_string();
    let e = find(&|e| e["reason"] == "drop_source_range", "source-range drop");
    assert_eq!((&e["type"], &e["hook"], &e["interface"]), (&"drop".into(), &"external".into(), &"u0".into()), "{e:#}");
    assert!(e["src"].as_str().unwrap().starts_with(&format!("{}:", outside(1))) && e["dst"] == format!("{LB_IP}:80"), "{e:#}");
    assert_eq!(e["service"], "default/lb:http/TCP", "{e:#}");

    let e = find(&|e| e["reason"] == "drop_no_local_backend", "no-local-endpoint drop");
    assert_eq!((&e["dst"], &e["service"]), (&"192.168.77.1:30091".into(), &"default/local:http/TCP".into()), "{e:#}");
    assert!(e["src"].as_str().unwrap().starts_with(&format!("{}:", outside(0))), "{e:#}");

    let client_ip = c.topo.pod("client").ip.to_string();
    let e = find(&|e| e["type"] == "reject", "reject");
    assert_eq!(
        (&e["reason"], &e["dst"], &e["hook"]),
        (&"reject_tcp_rst".into(), &"10.96.5.13:80".into(), &"pod".into()),
        "{e:#}"
    );
    assert_eq!(e["service"], "default/empty:http/TCP");
    assert!(e["src"].as_str().unwrap().starts_with(&format!("{client_ip}:")), "{e:#}");

    let e = find(&|e| e["type"] == "flow" && e["dst"] == "10.96.5.10:80", "new flow");
    let backend = e["backend"].as_str().unwrap();
    let pod = c.topo.pods.iter().find(|p| backend == format!("{}:{HTTP_PORT}", p.ip)).expect("the backend is a pod");
    assert_eq!(who, format!("You've hit {}", pod.name), "the event names the backend that answered: {e:#}");
    assert!(rest.contains("events shown"), "{rest}");

    // The monitor is gone: drops are counted again, and no event is written.
    let (written2, dropped2) = counts(&pin);
    assert!(written2 >= written1 + 4, "{written1} → {written2}");
    assert_eq!(c.from_client(1, &lb_url), CurlOutcome::TimedOut);
    let (written3, dropped3) = counts(&pin);
    assert!(dropped3 > dropped2);
    assert_eq!(written3, written2, "no event is written once the monitor has stopped");
}
