//! `cargo xtask demo`: the seed's kubia walk-through on a two-node network-namespace mini-cluster.
//! Three kubia pods (two on node-0, one on node-1) answer `You've hit kubia-N` on 8080 and 8443, a
//! client pod and a host outside the cluster send requests, and one `lb` agent per node (TC on the
//! pod interfaces, XDP on the node's external interface `u0`) programs the Services from the real
//! manifests in `xtask/demo/`. A `kubectl apply` is a manifest written into both agents'
//! directories; each step waits until both agents have programmed it, then shows the traffic:
//! ClusterIP, sessionAffinity, scaling, a multi-port Service with named ports, NodePort,
//! LoadBalancer, what `lb` shows of it all, a dual-stack Service answering on both families (the
//! cluster is dual-stack: every pod and node has an IPv6 address too, and each agent gets both
//! of its node's addresses), and the datapath asked what it does (`lb explain`) and watched
//! refusing a connection (`lb monitor`). Everything is removed on exit, Ctrl-C included.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_tests::{
    agent::{Agent, AgentOptions},
    topology::{HTTP_PORT, Topology, curl_in},
};
use serde_json::Value;

use crate::Bins;

const KUBIA: &str = include_str!("../demo/kubia.yaml");
const KUBIA_NAMED_PORTS: &str = include_str!("../demo/kubia-named-ports.yaml");
const KUBIA_NODEPORT: &str = include_str!("../demo/kubia-nodeport.yaml");
const KUBIA_LOADBALANCER: &str = include_str!("../demo/kubia-loadbalancer.yaml");
const KUBIA_DUALSTACK: &str = include_str!("../demo/kubia-dualstack.yaml");
const KUBIA_CANARY: &str = include_str!("../demo/kubia-canary.yaml");

/// ClusterIPs and external addresses the manifests use.
const VIP: &str = "10.96.0.10";
const NODEPORT_VIP: &str = "10.96.0.11";
const NODE_PORT: u16 = 30123;
const LB_VIP: &str = "10.96.0.12";
const LB_IP: &str = "198.51.100.7";
const DUAL_VIP: &str = "10.96.0.20";
const DUAL_VIP6: &str = "fd00:96::20";
const CANARY_VIP: &str = "10.96.0.13";
/// The second port the pods serve (plain HTTP), behind the Service's `https` port.
const HTTPS_PORT: u16 = 8443;

/// The kubia pods in creation order (which fixes their addresses: see `Topology::add_pod`), with
/// their node and the IPv4 and IPv6 addresses the manifests' EndpointSlices list for them.
const KUBIA_PODS: [(&str, usize, &str, &str); 3] = [
    ("kubia-1", 0, "10.244.0.10", "fd00:244::10"),
    ("kubia-2", 1, "10.244.1.10", "fd00:244:1::10"),
    ("kubia-3", 0, "10.244.0.11", "fd00:244::11"),
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(bins: &Bins, requests: u32) -> anyhow::Result<()> {
    if requests == 0 {
        bail!("--requests must be at least 1");
    }
    // Ctrl-C and SIGTERM only set a flag: the demo stops at the next step and every guard
    // (agents, pods, namespaces, pins) is dropped on the way out.
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let result = walk_through(bins, requests);
    println!("\ndemo: removed the namespaces, the agents and their pinned maps");
    // Ctrl-C also reaches the children (curl, agents): report the interruption, not what it broke.
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    result?;
    println!("demo: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// The two-node cluster. Agents first: they stop before the namespaces go.
struct Cluster {
    agents: Vec<Agent>,
    topo: Topology,
    client: usize,
    outside: usize,
    lb: std::path::PathBuf,
}

/// In `lb service list -o json`: the backends (`ip:port`) of the Service view holding `frontend`
/// (`ip:port/PROTO`), and whether it has ClientIP affinity; `None` while it is not programmed.
fn backends_of<'a>(views: &'a [Value], frontend: &str) -> Option<(BTreeSet<&'a str>, bool)> {
    let view = views.iter().find(|v| v["frontends"].as_array().is_some_and(|f| f.iter().any(|f| f == frontend)))?;
    let backends = view["backends"].as_array()?.iter().filter_map(|b| b["address"].as_str()).collect();
    let affinity = view["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "affinity"));
    Some((backends, affinity))
}

/// `ip:port` of the kubia pods named in `pods` (`[ip6]:port` if `v6`, as `lb service list` prints them).
fn pod_endpoints(pods: &[&str], port: u16, v6: bool) -> BTreeSet<String> {
    KUBIA_PODS
        .iter()
        .filter(|(n, ..)| pods.contains(n))
        .map(|(_, _, ip, ip6)| if v6 { format!("[{ip6}]:{port}") } else { format!("{ip}:{port}") })
        .collect()
}

/// The pod name in a kubia answer.
fn who(body: &str) -> String {
    let body = body.trim();
    body.strip_prefix("You've hit ").unwrap_or(body).to_owned()
}

impl Cluster {
    /// `lb service list -o json` against node `k`'s agent.
    fn service_list(&self, k: usize) -> anyhow::Result<Vec<Value>> {
        let out = Command::new(&self.lb)
            .args(["service", "list", "-o", "json", "--pin-path"])
            .arg(&self.agents[k].pin_path)
            .output()
            .context("running lb service list")?;
        if !out.status.success() {
            bail!("lb service list: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        match serde_json::from_slice(&out.stdout)? {
            Value::Array(views) => Ok(views),
            other => bail!("lb service list -o json printed {other}"),
        }
    }

    /// `kubectl apply`: writes `yaml` as `file` into both agents' manifest directories and waits
    /// until `programmed(node, services)` holds on both nodes; prints how long that took.
    fn apply(&mut self, file: &str, yaml: &str, what: &str, programmed: impl Fn(usize, &[Value]) -> bool) -> anyhow::Result<()> {
        let started = Instant::now();
        for agent in &self.agents {
            agent.write_manifest(file, yaml)?;
        }
        let deadline = started + Duration::from_secs(20);
        let mut pending: Vec<usize> = (0..self.agents.len()).collect();
        while !pending.is_empty() {
            interrupted()?;
            for &k in &pending {
                // Fails at once, with the agent's log, if the agent has exited.
                self.agents[k].wait_services(what, |_| true)?;
            }
            pending.retain(|&k| !self.service_list(k).is_ok_and(|views| programmed(k, &views)));
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let k = pending[0];
                bail!("timed out waiting for node-{k}'s agent to program {what}; its log:\n{}", self.agents[k].log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("   ({what}: programmed by both agents in {} ms)", started.elapsed().as_millis());
        Ok(())
    }

    /// `kubectl exec client -- curl -s URL`: the pod that answered.
    fn curl_from_client(&self, url: &str) -> anyhow::Result<String> {
        interrupted()?;
        Ok(who(&self.topo.curl(self.client, url, 5)?))
    }

    /// `kubectl exec client -- curl -s -4|-6 URL` (`family` is `-4` or `-6`): the pod that answered.
    fn curl_family_from_client(&self, family: &str, url: &str) -> anyhow::Result<String> {
        interrupted()?;
        let out = self.topo.pods[self.client]
            .ns
            .command("curl")
            .args(["-sS", family, "--connect-timeout", "5", "--max-time", "7", url])
            .stdin(std::process::Stdio::null())
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("curl {family} {url}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(who(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `curl -s URL` on the host outside the cluster: the pod that answered.
    fn curl_from_outside(&self, url: &str) -> anyhow::Result<String> {
        interrupted()?;
        Ok(who(&curl_in(&self.topo.clients[self.outside].ns, url, 5)?))
    }

    fn node_of(&self, pod: &str) -> String {
        self.topo.pods.iter().find(|p| p.name == pod).map_or_else(|| "?".into(), |p| self.topo.nodes[p.node].name.clone())
    }

    /// Prints which pods answered `n` requests made by `request`; returns the counts.
    fn tally(&self, n: u32, mut request: impl FnMut() -> anyhow::Result<String>) -> anyhow::Result<BTreeMap<String, u32>> {
        let mut hits: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..n {
            *hits.entry(request()?).or_default() += 1;
        }
        for (pod, k) in &hits {
            println!("     You've hit {pod:<8} {k:>3} of {n}   (pod on {})", self.node_of(pod));
        }
        Ok(hits)
    }

    /// Runs the real `lb` CLI against node-0's agent and prints its output.
    fn lb_cli(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("   node-0$ lb {}", args.join(" "));
        for line in self.lb_output(args)?.lines() {
            println!("   {line}");
        }
        Ok(())
    }

    /// Runs `lb ARGS` (a monitor) against node-0's agent in node-0's network namespace (so that
    /// it names interfaces) while `traffic` runs, then prints what it printed.
    fn monitor_while(&self, args: &[&str], traffic: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        interrupted()?;
        println!("   node-0$ lb {} &", args.join(" "));
        let mut mon = Command::new("nsenter")
            .arg(format!("--net={}", self.topo.nodes[0].ns.path()))
            .arg(&self.lb)
            .args(args)
            .arg("--pin-path")
            .arg(&self.agents[0].pin_path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting lb monitor")?;
        // Its first line on stderr says it is listening.
        let mut err = std::io::BufReader::new(mon.stderr.take().context("lb monitor's stderr")?);
        let mut first = String::new();
        std::io::BufRead::read_line(&mut err, &mut first)?;
        print!("   {first}");
        let ran = traffic();
        let out = mon.wait_with_output().context("waiting for lb monitor")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("   {line}");
        }
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest)?;
        for line in rest.lines() {
            println!("   {line}");
        }
        ran
    }

    /// The output of the real `lb` CLI run against node-0's agent.
    fn lb_output(&self, args: &[&str]) -> anyhow::Result<String> {
        interrupted()?;
        let out = Command::new(&self.lb)
            .args(args)
            .arg("--pin-path")
            .arg(&self.agents[0].pin_path)
            .output()
            .with_context(|| format!("running lb {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("lb {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// kubia.yaml with the Deployment scaled to `pods`: the EndpointSlice lists only them.
fn kubia_scaled(pods: &[&str]) -> anyhow::Result<String> {
    let mut kept = 0;
    let mut yaml = String::new();
    for line in KUBIA.lines() {
        if line.starts_with("- {addresses:") {
            if !pods.iter().any(|p| line.contains(&format!("name: {p}}}"))) {
                continue;
            }
            kept += 1;
        }
        let line = if line == "  replicas: 3" { format!("  replicas: {}", pods.len()) } else { line.to_owned() };
        yaml.push_str(&line);
        yaml.push('\n');
    }
    if kept != pods.len() {
        bail!("xtask/demo/kubia.yaml: expected one endpoint line for each of {pods:?}");
    }
    Ok(yaml)
}

/// kubia.yaml with `sessionAffinity` set to `affinity`.
fn kubia_affinity(affinity: &str) -> anyhow::Result<String> {
    if !KUBIA.contains("sessionAffinity: None") {
        bail!("xtask/demo/kubia.yaml: expected `sessionAffinity: None` in the Service");
    }
    Ok(KUBIA.replace("sessionAffinity: None", &format!("sessionAffinity: {affinity}")))
}

/// A node holds `frontend` with exactly the endpoints of `pods` on `port` (their IPv6 addresses for
/// an IPv6 `[addr]:port/PROTO` frontend), with the affinity flag iff `affinity`.
fn serves(frontend: &str, pods: &[&str], port: u16, affinity: bool) -> impl Fn(usize, &[Value]) -> bool + use<> {
    let frontend = frontend.to_owned();
    let want = pod_endpoints(pods, port, frontend.starts_with('['));
    move |_, views| {
        backends_of(views, &frontend).is_some_and(|(b, a)| a == affinity && b.iter().copied().eq(want.iter().map(String::as_str)))
    }
}

fn walk_through(bins: &Bins, requests: u32) -> anyhow::Result<()> {
    let all: Vec<&str> = KUBIA_PODS.iter().map(|p| p.0).collect();

    step("The mini-cluster: two nodes, kubia pods on both, a client pod, a host outside (network namespaces)");
    let mut topo = Topology::new(2)?;
    for (name, node, ip, ip6) in KUBIA_PODS {
        let i = topo.add_pod(node, name)?;
        let pod = &topo.pods[i];
        if pod.ip.to_string() != ip || pod.ip6.to_string() != ip6 {
            bail!("pod {name} got {} and {} but the manifests in xtask/demo/ list it as {ip} and {ip6}", pod.ip, pod.ip6);
        }
        topo.start_workload_with_http(i, &bins.testpod, &[HTTPS_PORT])?;
        interrupted()?;
    }
    let client = topo.add_pod(0, "client")?;
    let outside = topo.add_client("outside")?;
    println!("   $ kubectl get pods -o wide");
    println!("   NAME     IP           IPv6            NODE    SERVES");
    for p in &topo.pods {
        let serves = if p.name == "client" {
            "curl".to_owned()
        } else {
            format!("`You've hit {}` on :{HTTP_PORT} and :{HTTPS_PORT}", p.name)
        };
        println!("   {:<8} {:<12} {:<15} {:<7} {serves}", p.name, p.ip.to_string(), p.ip6.to_string(), topo.nodes[p.node].name);
    }
    for n in &topo.nodes {
        println!("   node {:<8} {} and {} on the nodes' network (interface u0)", n.name, n.underlay_ip, n.underlay_ip6);
    }
    let host = &topo.clients[outside];
    println!("   host {:<8} {} and {} on the nodes' network, outside the cluster", "outside", host.ip, host.ip6);
    interrupted()?;

    step("One lb agent per node: TC on its pod interfaces, XDP on u0; both read the same manifests");
    let mut agents = Vec::new();
    for k in 0..topo.nodes.len() {
        let node = &topo.nodes[k];
        let ifaces = topo.pod_interfaces(k);
        let opts = AgentOptions {
            node_ns: &node.ns,
            node_name: &node.name,
            // Both families: the agent needs the node's IPv6 address for IPv6 NodePorts and SNAT.
            node_ips: vec![node.underlay_ip.to_string(), node.underlay_ip6.to_string()],
            interfaces: ifaces.clone(),
            external: vec!["u0".to_owned()],
            cgroup: None,
            extra_args: vec![],
            source: None,
        };
        let agent = Agent::start(&bins.lb, &opts, &[])?;
        println!(
            "   {}$ lb agent --source file:{} --node-name {} --node-ip {} --node-ip {} --ext-iface u0 {}",
            node.name,
            agent.manifests.display(),
            node.name,
            node.underlay_ip,
            node.underlay_ip6,
            ifaces.iter().map(|i| format!("--pod-iface {i}")).collect::<Vec<_>>().join(" ")
        );
        agents.push(agent);
        interrupted()?;
    }
    for agent in &mut agents {
        // Up and serving its pinned maps (nothing programmed yet).
        agent.wait_services("the agent to start", |_| true)?;
    }
    let mut c = Cluster { agents, topo, client, outside, lb: bins.lb.clone() };

    let curl = |url: &str| format!("kubectl exec client -- curl -s {url}");
    let vip_url = format!("http://{VIP}");

    step("1. ClusterIP: one address for the kubia pods; each connection goes to a random pod, on either node");
    println!(
        "   $ kubectl apply -f xtask/demo/kubia.yaml   (Service kubia {VIP}:80 -> targetPort {HTTP_PORT}, its EndpointSlice)"
    );
    c.apply("kubia.yaml", KUBIA, "Service kubia", serves(&format!("{VIP}:80/TCP"), &all, HTTP_PORT, false))?;
    println!("   $ {}   ({requests} times)", curl(&vip_url));
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=requests {
        let pod = c.curl_from_client(&vip_url)?;
        println!("   {n:>4}: You've hit {pod}");
        *hits.entry(pod).or_default() += 1;
    }
    println!("   Which pods answered:");
    for (pod, k) in &hits {
        println!("     {pod}: {k} of {requests}   (on {})", c.node_of(pod));
    }
    if hits.len() < 3 && requests >= 12 {
        println!("   (not all three pods answered this time: the choice is random per connection)");
    }

    step("2. sessionAffinity: ClientIP: every request from the client pod goes to the same pod; None: spread again");
    println!("   $ kubectl patch service kubia -p '{{\"spec\":{{\"sessionAffinity\":\"ClientIP\"}}}}'");
    c.apply(
        "kubia.yaml",
        &kubia_affinity("ClientIP")?,
        "sessionAffinity: ClientIP",
        serves(&format!("{VIP}:80/TCP"), &all, HTTP_PORT, true),
    )?;
    println!("   $ {}   (10 times)", curl(&vip_url));
    let sticky = c.tally(10, || c.curl_from_client(&vip_url))?;
    if sticky.len() != 1 {
        println!("   (more than one pod answered: affinity did not hold)");
    }
    println!("   $ kubectl patch service kubia -p '{{\"spec\":{{\"sessionAffinity\":\"None\"}}}}'");
    c.apply("kubia.yaml", KUBIA, "sessionAffinity: None", serves(&format!("{VIP}:80/TCP"), &all, HTTP_PORT, false))?;
    println!("   $ {}   (10 times)", curl(&vip_url));
    c.tally(10, || c.curl_from_client(&vip_url))?;

    step("3. Scaling: with one replica every request goes to it; with two the traffic splits between them");
    println!("   $ kubectl scale deployment kubia --replicas=1   (the EndpointSlice now lists kubia-1 only)");
    c.apply(
        "kubia.yaml",
        &kubia_scaled(&["kubia-1"])?,
        "1 replica",
        serves(&format!("{VIP}:80/TCP"), &["kubia-1"], HTTP_PORT, false),
    )?;
    println!("   $ {}   ({requests} times)", curl(&vip_url));
    if c.tally(requests, || c.curl_from_client(&vip_url))?.len() != 1 {
        println!("   (another pod answered: the scale-down did not hold)");
    }
    println!("   $ kubectl scale deployment kubia --replicas=2   (kubia-2, on node-1, is ready and joins the slice)");
    let two = ["kubia-1", "kubia-2"];
    c.apply("kubia.yaml", &kubia_scaled(&two)?, "2 replicas", serves(&format!("{VIP}:80/TCP"), &two, HTTP_PORT, false))?;
    println!("   $ {}   ({requests} times)", curl(&vip_url));
    c.tally(requests, || c.curl_from_client(&vip_url))?;
    println!("   $ kubectl scale deployment kubia --replicas=3");
    c.apply("kubia.yaml", KUBIA, "3 replicas", serves(&format!("{VIP}:80/TCP"), &all, HTTP_PORT, false))?;

    step("4. A multi-port Service with named ports: http 80 -> 8080, https 443 -> 8443, on one ClusterIP");
    println!("   $ kubectl apply -f xtask/demo/kubia-named-ports.yaml   (targetPort: http / targetPort: https)");
    let http_ok = serves(&format!("{VIP}:80/TCP"), &all, HTTP_PORT, false);
    let https_ok = serves(&format!("{VIP}:443/TCP"), &all, HTTPS_PORT, false);
    c.apply("kubia.yaml", KUBIA_NAMED_PORTS, "ports http and https", |k, v| http_ok(k, v) && https_ok(k, v))?;
    let https_url = format!("http://{VIP}:443");
    for url in [&vip_url, &https_url] {
        println!("   $ {}   (6 times)", curl(url));
        c.tally(6, || c.curl_from_client(url))?;
    }

    step(&format!(
        "5. NodePort: port {NODE_PORT} on every node's IP, from the host outside; a node forwards to any kubia pod, on it or not"
    ));
    println!("   $ kubectl apply -f xtask/demo/kubia-nodeport.yaml   (ClusterIP {NODEPORT_VIP}:80, nodePort {NODE_PORT})");
    let cluster_ok = serves(&format!("{NODEPORT_VIP}:80/TCP"), &all, HTTP_PORT, false);
    let node_ips: Vec<String> = c.topo.nodes.iter().map(|n| n.underlay_ip.to_string()).collect();
    c.apply("kubia-nodeport.yaml", KUBIA_NODEPORT, "Service kubia-nodeport", |k, v| {
        cluster_ok(k, v) && backends_of(v, &format!("{}:{NODE_PORT}/TCP", node_ips[k])).is_some()
    })?;
    for (node, ip) in c.topo.nodes.iter().zip(&node_ips) {
        let url = format!("http://{ip}:{NODE_PORT}");
        println!("   outside$ curl -s {url}   (6 times, through {})", node.name);
        c.tally(6, || c.curl_from_outside(&url))?;
    }

    step(&format!("6. LoadBalancer: kubia-loadbalancer at its load balancer IP {LB_IP}, from the host outside"));
    println!("   $ kubectl apply -f xtask/demo/kubia-loadbalancer.yaml   (status.loadBalancer.ingress: {LB_IP})");
    let cluster_ok = serves(&format!("{LB_VIP}:80/TCP"), &all, HTTP_PORT, false);
    c.apply("kubia-loadbalancer.yaml", KUBIA_LOADBALANCER, "Service kubia-loadbalancer", |k, v| {
        cluster_ok(k, v) && backends_of(v, &format!("{LB_IP}:80/TCP")).is_some()
    })?;
    let via = &node_ips[0];
    println!("   outside$ ip route add {LB_IP} via {via}   (what the cloud's load balancer does: {LB_IP} goes to node-0)");
    c.topo.clients[c.outside].ns.ip(&["route", "add", &format!("{LB_IP}/32"), "via", via])?;
    let url = format!("http://{LB_IP}");
    println!("   outside$ curl -s {url}   (6 times)");
    c.tally(6, || c.curl_from_outside(&url))?;

    step("7. What node-0's datapath holds: every frontend (ClusterIPs, NodePorts, the LoadBalancer IP) and its backends");
    interrupted()?;
    c.lb_cli(&["service", "list"])?;
    println!();
    c.lb_cli(&["maps", "dump", "services"])?;

    step(&format!(
        "8. Dual-stack: one Service, a ClusterIP in each family ({DUAL_VIP} and {DUAL_VIP6}), the same pods answering on both"
    ));
    println!(
        "   $ kubectl apply -f xtask/demo/kubia-dualstack.yaml   (ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6],"
    );
    println!("     clusterIPs: [{DUAL_VIP}, {DUAL_VIP6}]; an EndpointSlice of addressType IPv4 and one of IPv6)");
    let v4_ok = serves(&format!("{DUAL_VIP}:80/TCP"), &all, HTTP_PORT, false);
    let v6_ok = serves(&format!("[{DUAL_VIP6}]:80/TCP"), &all, HTTP_PORT, false);
    c.apply("kubia-dualstack.yaml", KUBIA_DUALSTACK, "Service kubia-dualstack, both families", |k, v| {
        v4_ok(k, v) && v6_ok(k, v)
    })?;
    let dual_n = requests.min(10);
    let client_pod = &c.topo.pods[c.client];
    let families = [
        ("-4", "IPv4", format!("http://{DUAL_VIP}"), client_pod.ip.to_string()),
        ("-6", "IPv6", format!("http://[{DUAL_VIP6}]"), client_pod.ip6.to_string()),
    ];
    for (flag, family, url, own) in &families {
        println!("   $ kubectl exec client -- curl -s {flag} {url}   ({dual_n} times, over {family})");
        c.tally(dual_n, || c.curl_family_from_client(flag, url))?;
        // The pod sees the client pod's own address of that family: a ClusterIP is not SNATed.
        let seen = c.curl_family_from_client(flag, &format!("{url}/clientip"))?;
        let note =
            if &seen == own { format!("the client pod's {family} address") } else { format!("not the client pod's {own}") };
        println!("   $ kubectl exec client -- curl -s {flag} {url}/clientip   -> {seen}   ({note})");
    }
    println!("   node-0$ lb service list   (its kubia-dualstack rows: a ServicePort per family, the IPv6 one named .../IPv6)");
    // The header, then every row (a Service line and its backend continuation lines) of kubia-dualstack.
    let mut keep = true;
    for line in c.lb_output(&["service", "list"])?.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            keep = line.starts_with("SERVICE") || line.starts_with("default/kubia-dualstack/");
        }
        if keep {
            println!("   {line}");
        }
    }

    step("9. Asking node-0's datapath: what it does with a packet (lb explain), what it refuses right now (lb monitor)");
    let client_ip = c.topo.pods[c.client].ip.to_string();
    c.lb_cli(&["explain", "tcp", &format!("{client_ip}:40000"), "->", &format!("{VIP}:80")])?;
    println!();
    let outside_ip = c.topo.clients[c.outside].ip.to_string();
    let node0 = format!("{}:{NODE_PORT}", node_ips[0]);
    c.lb_cli(&["explain", "tcp", &format!("{outside_ip}:41000"), "->", &node0, "--from", "external", "--iface", "u0"])?;
    println!();
    println!("   $ kubectl apply -f xtask/demo/kubia-canary.yaml   (Service kubia-canary {CANARY_VIP}:80: no pod matches yet)");
    c.apply("kubia-canary.yaml", KUBIA_CANARY, "Service kubia-canary", |_, v| {
        backends_of(v, &format!("{CANARY_VIP}:80/TCP")).is_some_and(|(b, _)| b.is_empty())
    })?;
    c.monitor_while(&["monitor", "--count", "1", "--duration", "10s"], || {
        println!("   $ {}", curl(&format!("http://{CANARY_VIP}")));
        match lb_tests::topology::curl_outcome(&c.topo.pods[c.client].ns, &format!("http://{CANARY_VIP}"), 5)? {
            lb_tests::topology::CurlOutcome::Refused => println!("   curl: (7) Failed to connect: Connection refused"),
            other => println!("   (expected a refusal, got {other:?})"),
        }
        Ok(())
    })?;
    Ok(())
}
