//! A mini-cluster made of network namespaces: node namespaces joined by an underlay link, and
//! pods, each a namespace with one veth to its node. Everything is deleted on drop.
//!
//! Addressing (Calico-style routed pods):
//! - node `k` has underlay address `192.168.77.{k+1}/24` on its interface `u0`;
//! - its pods are `10.244.{k}.{10+i}/32`, each behind a host-side veth; a pod's default route
//!   points at the link-local gateway `169.254.1.1` on its `eth0`, an address the node holds on
//!   its loopback so it answers ARP for it on every pod interface;
//! - nodes route each other's pod ranges over the underlay.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, unique_token};

/// The gateway every pod routes through (a node address, answered by ARP on every pod veth).
const POD_GATEWAY: &str = "169.254.1.1";
/// Ports the test workload serves on.
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 9000;

/// A node namespace.
pub struct Node {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub ns: Netns,
}

/// A running server process, killed on drop.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod namespace with its host-side interface.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Index of its node in [`Topology::nodes`].
    pub node: usize,
    /// Host-side veth in the node namespace (where the TC program attaches).
    pub host_if: String,
    // Declared before `ns`: servers stop before their namespace goes.
    servers: Vec<ServerGuard>,
    pub ns: Netns,
}

pub struct Topology {
    pub token: String,
    // Pods before nodes: pod namespaces go first.
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
}

impl Topology {
    /// `n_nodes` (1 or 2) node namespaces, joined by an underlay link when there are two.
    pub fn new(n_nodes: usize) -> anyhow::Result<Self> {
        if !(1..=2).contains(&n_nodes) {
            bail!("topologies have 1 or 2 nodes");
        }
        let token = unique_token();
        let mut nodes = Vec::new();
        for k in 0..n_nodes {
            let ns = Netns::new(&format!("lbt{token}-node{k}"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            ns.ip(&["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", "lo"])?;
            nodes.push(Node {
                name: format!("node-{k}"),
                underlay_ip: Ipv4Addr::new(192, 168, 77, k as u8 + 1),
                ns,
            });
        }
        if n_nodes == 2 {
            let a = format!("lbt{token}ua");
            let b = format!("lbt{token}ub");
            nodes[0].ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b, "netns", nodes[1].ns.name()])?;
            nodes[0].ns.ip(&["link", "set", &a, "name", "u0"])?;
            nodes[1].ns.ip(&["link", "set", &b, "name", "u0"])?;
            for (k, node) in nodes.iter().enumerate() {
                node.ns.ip(&["addr", "add", &format!("{}/24", node.underlay_ip), "dev", "u0"])?;
                node.ns.ip(&["link", "set", "u0", "up"])?;
                let other = &nodes[1 - k];
                node.ns.ip(&["route", "add", &format!("10.244.{}.0/24", 1 - k), "via", &other.underlay_ip.to_string()])?;
            }
        }
        Ok(Self { token, pods: Vec::new(), nodes })
    }

    /// Adds a pod on `node`; returns its index in [`Topology::pods`].
    pub fn add_pod(&mut self, node: usize, name: &str) -> anyhow::Result<usize> {
        let i = self.pods.len();
        let on_node = self.pods.iter().filter(|p| p.node == node).count();
        let ip = Ipv4Addr::new(10, 244, node as u8, 10 + on_node as u8);
        let host_if = format!("lbt{}h{i}", self.token);
        let ns = Netns::new(&format!("lbt{}-{name}", self.token))?;
        let node_ns = &self.nodes[node].ns;
        let tmp = format!("lbt{}p{i}", self.token);
        node_ns.ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &tmp, "netns", ns.name()])?;
        ns.ip(&["link", "set", &tmp, "name", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"])?;
        node_ns.ip(&["link", "set", &host_if, "up"])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
        node_ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        self.pods.push(Pod { name: name.to_owned(), ip, node, host_if, servers: Vec::new(), ns });
        Ok(i)
    }

    /// Host-side interfaces of the pods on `node`.
    pub fn pod_interfaces(&self, node: usize) -> Vec<String> {
        self.pods.iter().filter(|p| p.node == node).map(|p| p.host_if.clone()).collect()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts the test workload in pod `i`: HTTP on [`HTTP_PORT`] answering
    /// `You've hit NAME`, a line echo on [`ECHO_PORT`] and a UDP echo on [`UDP_PORT`], and waits
    /// until it accepts connections.
    pub fn start_workload(&mut self, i: usize, testpod: &std::path::Path) -> anyhow::Result<()> {
        let pod = &mut self.pods[i];
        let child = pod
            .ns
            .command(testpod)
            .args(["--name", &pod.name, "--http", &HTTP_PORT.to_string()])
            .args(["--echo", &ECHO_PORT.to_string(), "--udp", &UDP_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the test workload")?;
        pod.servers.push(ServerGuard(child));
        let addr = SocketAddr::from((pod.ip, HTTP_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = pod.ns.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("workload in {} did not start listening", pod.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `curl` from pod `from` to `url`: the response body, or the error.
    pub fn curl(&self, from: usize, url: &str, timeout_s: u32) -> anyhow::Result<String> {
        let out = self.pods[from]
            .ns
            .command("curl")
            .args(["-sS", "--max-time", &timeout_s.to_string(), url])
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("curl {url} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A `Command` for `program` inside `ns`; convenience for callers holding only a namespace name.
pub fn in_netns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}
