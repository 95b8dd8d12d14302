//! A mini-cluster made of network namespaces: node namespaces and external clients on an
//! underlay (a bridge in a namespace of its own), and pods, each a namespace with one veth to
//! its node. Everything is deleted on drop.
//!
//! Addressing (Calico-style routed pods):
//! - node `k` has underlay address `192.168.77.{k+1}/24` on its interface `u0` (the node's
//!   external interface, where the XDP program attaches); external client `i` has
//!   `192.168.77.{100+i}/24` on its `eth0`;
//! - its pods are `10.244.{k}.{10+i}/32`, each behind a host-side veth; a pod's default route
//!   points at the link-local gateway `169.254.1.1` on its `eth0`, an address the node holds on
//!   its loopback so it answers ARP for it on every pod interface;
//! - nodes route each other's pod ranges over the underlay.
//!
//! Every sender turns TX checksum offload off: XDP sees packets as a NIC delivers them, with
//! complete checksums, and a veth would otherwise hand it partial ones. Tests of what real pods
//! send turn it back on ([`Topology::offload_checksums`]).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, unique_token};

/// The gateway every pod routes through (a node address, answered by ARP on every pod veth).
const POD_GATEWAY: &str = "169.254.1.1";
/// The IPv6 gateway of every pod: a link-local address on each host-side veth.
const POD_GATEWAY6: &str = "fe80::1";
/// Ports the test workload serves on.
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 9000;

/// A node namespace.
pub struct Node {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// `fd00:77::{k+1}`.
    pub underlay_ip6: Ipv6Addr,
    /// Servers in the node's own namespace (hostNetwork pods); stopped before the namespace.
    servers: Vec<ServerGuard>,
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
    /// `fd00:244:{node}::{10+i}`.
    pub ip6: Ipv6Addr,
    /// Index of its node in [`Topology::nodes`].
    pub node: usize,
    /// Host-side veth in the node namespace (where the TC program attaches).
    pub host_if: String,
    // Declared before `ns`: servers stop before their namespace goes.
    servers: Vec<ServerGuard>,
    pub ns: Netns,
}

/// A host outside the cluster, on the underlay.
pub struct Client {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `fd00:77::{100+i}`.
    pub ip6: Ipv6Addr,
    pub ns: Netns,
}

pub struct Topology {
    pub token: String,
    // Pods before nodes: pod namespaces go first.
    pub pods: Vec<Pod>,
    pub clients: Vec<Client>,
    pub nodes: Vec<Node>,
    underlay: Netns,
}

/// A namespace of the topology. IPv6 duplicate address detection is off in it: a fresh link's
/// link-local address stays tentative for a second or two otherwise, and a node cannot send
/// neighbour solicitations for forwarded traffic meanwhile (the first packet between two nodes
/// would wait for the 1 s retransmission). A real cluster's interfaces have long settled.
fn namespace(name: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(name)?;
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        ns.sysctl(key, "0")?;
    }
    Ok(ns)
}

/// Turns TX checksum offload off on `iface` in `ns` (see the module docs).
fn complete_checksums(ns: &Netns, iface: &str) -> anyhow::Result<()> {
    crate::netns::run(ns.command("ethtool").args(["-K", iface, "tx", "off"]))?;
    Ok(())
}

impl Topology {
    /// `n_nodes` (1 or 2) node namespaces on the underlay.
    pub fn new(n_nodes: usize) -> anyhow::Result<Self> {
        if !(1..=2).contains(&n_nodes) {
            bail!("topologies have 1 or 2 nodes");
        }
        let token = unique_token();
        let underlay = namespace(&format!("lbt{token}-ul"))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let mut topo = Self { token, pods: Vec::new(), clients: Vec::new(), nodes: Vec::new(), underlay };
        for k in 0..n_nodes {
            let ns = namespace(&format!("lbt{}-node{k}", topo.token))?;
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ] {
                ns.sysctl(key, value)?;
            }
            ns.ip(&["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", "lo"])?;
            let underlay_ip = Ipv4Addr::new(192, 168, 77, k as u8 + 1);
            let underlay_ip6 = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, k as u16 + 1);
            topo.plug(&ns, &format!("n{k}"), underlay_ip, underlay_ip6, "u0")?;
            topo.nodes.push(Node { name: format!("node-{k}"), underlay_ip, underlay_ip6, servers: Vec::new(), ns });
        }
        if n_nodes == 2 {
            for (k, node) in topo.nodes.iter().enumerate() {
                let other = &topo.nodes[1 - k];
                node.ns.ip(&["route", "add", &format!("10.244.{}.0/24", 1 - k), "via", &other.underlay_ip.to_string()])?;
                node.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:244:{}::/64", 1 - k),
                    "via",
                    &other.underlay_ip6.to_string(),
                ])?;
            }
        }
        Ok(topo)
    }

    /// Connects `ns` to the underlay bridge through an interface named `iface` with `ip`/24 and
    /// `ip6`/64.
    fn plug(&self, ns: &Netns, tag: &str, ip: Ipv4Addr, ip6: Ipv6Addr, iface: &str) -> anyhow::Result<()> {
        let outer = format!("lbt{}b{tag}", self.token);
        let inner = format!("lbt{}i{tag}", self.token);
        self.underlay.ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns.name()])?;
        self.underlay.ip(&["link", "set", &outer, "master", "br0", "up"])?;
        ns.ip(&["link", "set", &inner, "name", iface])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", iface])?;
        // nodad: usable at once, not after duplicate address detection.
        ns.ip(&["-6", "addr", "add", &format!("{ip6}/64"), "dev", iface, "nodad"])?;
        ns.ip(&["link", "set", iface, "up"])?;
        complete_checksums(ns, iface)
    }

    /// Adds a host outside the cluster on the underlay; returns its index in
    /// [`Topology::clients`].
    pub fn add_client(&mut self, name: &str) -> anyhow::Result<usize> {
        let i = self.clients.len();
        let ip = Ipv4Addr::new(192, 168, 77, 100 + i as u8);
        let ip6 = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100 + i as u16);
        let ns = namespace(&format!("lbt{}-{name}", self.token))?;
        self.plug(&ns, &format!("c{i}"), ip, ip6, "eth0")?;
        self.clients.push(Client { name: name.to_owned(), ip, ip6, ns });
        Ok(i)
    }

    /// Adds a pod on `node`; returns its index in [`Topology::pods`].
    pub fn add_pod(&mut self, node: usize, name: &str) -> anyhow::Result<usize> {
        let i = self.pods.len();
        let on_node = self.pods.iter().filter(|p| p.node == node).count();
        let ip = Ipv4Addr::new(10, 244, node as u8, 10 + on_node as u8);
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, 0x10 + on_node as u16);
        let host_if = format!("lbt{}h{i}", self.token);
        let ns = namespace(&format!("lbt{}-{name}", self.token))?;
        let node_ns = &self.nodes[node].ns;
        let tmp = format!("lbt{}p{i}", self.token);
        node_ns.ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &tmp, "netns", ns.name()])?;
        ns.ip(&["link", "set", &tmp, "name", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"])?;
        // IPv6: the pod's /128, and a default route via the link-local gateway the node holds
        // on every host-side veth.
        ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
        ns.ip(&["-6", "route", "add", "default", "via", POD_GATEWAY6, "dev", "eth0"])?;
        complete_checksums(&ns, "eth0")?;
        node_ns.ip(&["link", "set", &host_if, "up"])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
        node_ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        node_ns.ip(&["-6", "addr", "add", &format!("{POD_GATEWAY6}/64"), "dev", &host_if, "nodad"])?;
        node_ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &host_if])?;
        self.pods.push(Pod { name: name.to_owned(), ip, ip6, node, host_if, servers: Vec::new(), ns });
        Ok(i)
    }

    /// Turns TX checksum and segmentation offload back on for pod `i`, as a CNI plugin leaves a
    /// pod's veth: its packets then reach the node with partial checksums (`CHECKSUM_PARTIAL`:
    /// the field holds only the pseudo-header's sum) and TCP as segmentation-offload packets
    /// larger than the MTU.
    pub fn offload_checksums(&self, i: usize) -> anyhow::Result<()> {
        crate::netns::run(self.pods[i].ns.command("ethtool").args(["-K", "eth0", "tx", "on", "sg", "on", "tso", "on"]))?;
        Ok(())
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
        self.start_workload_with_http(i, testpod, &[])
    }

    /// [`Topology::start_workload`], with the same HTTP answer served on `extra_http` ports too
    /// (e.g. a plain-HTTP 8443 behind a multi-port Service's `https` port); waits for all of them.
    pub fn start_workload_with_http(&mut self, i: usize, testpod: &std::path::Path, extra_http: &[u16]) -> anyhow::Result<()> {
        let pod = &mut self.pods[i];
        let mut cmd = pod.ns.command(testpod);
        cmd.args(["--name", &pod.name, "--http", &HTTP_PORT.to_string()]);
        for port in extra_http {
            cmd.args(["--http", &port.to_string()]);
        }
        let child = cmd
            .args(["--echo", &ECHO_PORT.to_string(), "--udp", &UDP_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the test workload")?;
        pod.servers.push(ServerGuard(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in std::iter::once(HTTP_PORT).chain(extra_http.iter().copied()) {
            let addr = SocketAddr::from((pod.ip, port));
            loop {
                let ok = pod.ns.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("workload in {} did not start listening on {port}", pod.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Starts the test workload in node `k`'s own namespace, as a hostNetwork pod would run:
    /// HTTP on `http` answering `You've hit NAME` and a UDP echo on `udp`, on every node address
    /// (the endpoint address of such a pod is the node's); waits until it accepts connections.
    pub fn start_node_workload(
        &mut self,
        k: usize,
        name: &str,
        testpod: &std::path::Path,
        http: u16,
        udp: u16,
    ) -> anyhow::Result<()> {
        let node = &mut self.nodes[k];
        let child = node
            .ns
            .command(testpod)
            .args(["--name", name, "--http", &http.to_string(), "--udp", &udp.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the node workload")?;
        node.servers.push(ServerGuard(child));
        let addr = SocketAddr::from((node.underlay_ip, http));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.ns.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())? {
            if Instant::now() > deadline {
                bail!("workload on {} did not start listening on {http}", node.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `curl` from pod `from` to `url`: the response body, or the error.
    pub fn curl(&self, from: usize, url: &str, timeout_s: u32) -> anyhow::Result<String> {
        curl_in(&self.pods[from].ns, url, timeout_s)
    }
}

/// How a curl ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CurlOutcome {
    /// The response body.
    Body(String),
    /// Connection refused (curl exit 7 with "refused"): a reject.
    Refused,
    /// No answer in time (curl exit 28): a drop.
    TimedOut,
    /// Anything else, with curl's message.
    Failed(String),
}

/// `curl` run in `ns`, classified.
pub fn curl_outcome(ns: &Netns, url: &str, timeout_s: u32) -> anyhow::Result<CurlOutcome> {
    let out = ns
        .command("curl")
        .args(["-sS", "--connect-timeout", &timeout_s.to_string(), "--max-time", &(timeout_s + 2).to_string(), url])
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Ok(match out.status.code() {
        Some(0) => CurlOutcome::Body(String::from_utf8_lossy(&out.stdout).into_owned()),
        // curl's "Failed to connect": refused (a RST or ICMP unreachable came back).
        Some(7) => CurlOutcome::Refused,
        Some(28) => CurlOutcome::TimedOut,
        _ => CurlOutcome::Failed(format!("{}: {err}", out.status)),
    })
}

/// `curl` run in `ns`: the response body, or the error.
pub fn curl_in(ns: &Netns, url: &str, timeout_s: u32) -> anyhow::Result<String> {
    match curl_outcome(ns, url, timeout_s)? {
        CurlOutcome::Body(b) => Ok(b),
        other => bail!("curl {url}: {other:?}"),
    }
}
