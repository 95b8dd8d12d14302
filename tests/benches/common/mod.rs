//! Shared by the benchmark binaries (`b1_datapath`, `b2_e2e`, `b3_control`): options, statistics,
//! the synthetic cluster (Services, EndpointSlices, the pod-IP pool), kube-proxy-style iptables
//! and nftables rulesets generated from the same cluster, and the JSON results file that
//! `cargo xtask bench` turns into BENCHMARKS.md. The node everything runs on is the modelled
//! node of `lb_tests::addresses`, configured like the datapath tests' ([`fixture`]).
#![allow(dead_code, reason = "each bench uses part of it")]

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::addresses::NODE;
use serde_json::{Value, json};

/// The datapath tests' fixture (`tests/tests/common`): the modelled node's config, conntrack keys.
#[path = "../../tests/common/mod.rs"]
pub mod fixture;

/// Command-line options of a bench binary (`cargo bench -p lb-tests --bench NAME -- [--quick]
/// [--out FILE]`). Cargo adds `--bench` itself; unknown arguments are ignored.
pub struct Opts {
    pub quick: bool,
    pub out: PathBuf,
    /// When the bench started (its run time goes into the results).
    pub started: Instant,
}

impl Opts {
    pub fn parse(name: &str) -> Self {
        let mut quick = std::env::var("LB_BENCH_QUICK").is_ok_and(|v| v == "1" || v == "true");
        let mut out = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--out" => out = args.next().map(PathBuf::from),
                _ => {}
            }
        }
        let out = out.unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bench-out").join(format!("{name}.json"))
        });
        Self { quick, out, started: Instant::now() }
    }
}

/// Fails the bench with a clear line when the machine cannot run it (not root, no BPF).
pub fn require_privileges(name: &str) {
    if let Some(why) = lb_tests::privilege::missing() {
        eprintln!("{name}: cannot run here: {why}");
        std::process::exit(2);
    }
}

/// Pins the calling thread to `cpu` (the kernel runs BPF_PROG_TEST_RUN on the caller's CPU).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPUs online (not the calling thread's affinity mask, which the benches narrow).
pub fn ncpus() -> usize {
    // SAFETY: trivial libc call.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile (p in 0..=100); NaN for an empty slice.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if p <= 0.0 {
        return s[0];
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Summary of samples as JSON: median, min, max, p99, all samples.
pub fn summary(v: &[f64]) -> Value {
    json!({"median": median(v), "min": min(v), "max": max(v), "p99": percentile(v, 99.0), "n": v.len(), "samples": v})
}

// ---------------------------------------------------------------------------------------------
// The synthetic cluster
// ---------------------------------------------------------------------------------------------

pub const NAMESPACE: &str = "bench";
/// The node everything runs on (its name as in `lb_tests::topology`; its address is
/// `lb_tests::addresses::NODE`, node 0's underlay address).
pub const NODE_NAME: &str = "node-0";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// Distinct pod IPs the dummy services' endpoints are drawn from. lb's backend map holds
/// 65,536 distinct (address, port) backends, so the dummies share a pool of 50,000 pods (with
/// 10,000 services × 10 endpoints each pod backs two services).
pub const POOL: u32 = 50_000;

/// Pod `k` of the pool: 10.200.0.0 + k (outside the node's pod range; never addressed).
pub fn pool_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (k % POOL))
}

/// ClusterIP of dummy service `i`: 10.97.0.0 + i (the measured services sit in 10.96.0.0/24).
pub fn dummy_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i)
}

/// A Service as the benchmarks see it: one TCP port, a ClusterIP, endpoints.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    pub target_port: u16,
    /// `sessionAffinity: ClientIP`.
    pub affinity: bool,
    /// `type: NodePort` with this node port.
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local` (every endpoint of a bench Service is on the node).
    pub local_policy: bool,
}

impl Svc {
    pub fn new(name: &str, vip: Ipv4Addr, endpoints: Vec<Ipv4Addr>) -> Self {
        Self {
            name: name.to_owned(),
            vip,
            port: SERVICE_PORT,
            endpoints,
            target_port: TARGET_PORT,
            affinity: false,
            node_port: None,
            local_policy: false,
        }
    }

    /// Dummy service `i` with `k` endpoints of its own, as in a real cluster where every
    /// endpoint is its own pod: 10.128.0.0 + i·k + j (up to 1,048,576 distinct; never addressed).
    pub fn dummy_own(i: u32, k: u32) -> Self {
        let ip = |j: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * k + j) % (1 << 20));
        Self::new(&format!("dummy-{i}"), dummy_vip(i), (0..k).map(ip).collect())
    }

    /// Dummy service `i` with `k` endpoints from the pool.
    pub fn dummy(i: u32, k: u32) -> Self {
        Self::new(&format!("dummy-{i}"), dummy_vip(i), (0..k).map(|j| pool_ip(i * k + j)).collect())
    }

    /// The Service object (API shape, JSON).
    pub fn service_json(&self) -> Value {
        let mut port = json!({"port": self.port, "targetPort": self.target_port, "protocol": "TCP"});
        if let Some(np) = self.node_port {
            port["nodePort"] = np.into();
        }
        let mut spec = json!({
            "type": if self.node_port.is_some() { "NodePort" } else { "ClusterIP" },
            "clusterIP": self.vip.to_string(),
            "ports": [port],
            "selector": {"app": self.name},
        });
        if self.local_policy {
            spec["externalTrafficPolicy"] = "Local".into();
        }
        if self.affinity {
            spec["sessionAffinity"] = "ClientIP".into();
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": spec,
        })
    }

    /// Its EndpointSlice, every endpoint ready on this node.
    pub fn slice_json(&self) -> Value {
        let eps: Vec<Value> = self
            .endpoints
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": NODE_NAME}))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-abcde", self.name), "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": self.name}},
            "addressType": "IPv4",
            "ports": [{"port": self.target_port, "protocol": "TCP"}],
            "endpoints": eps,
        })
    }

    fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:http", self.name)
    }
}

/// The desired state lb would compute for `svcs` on node [`NODE_NAME`] with address
/// `lb_tests::addresses::NODE`: the agent's own compile step over the API objects.
pub fn desired(svcs: &[Svc]) -> lb_userspace::model::DesiredState {
    use k8s_openapi::api::core::v1::Service;
    use lb_userspace::model::slice::Slice;
    let services: Vec<Service> = svcs.iter().map(|s| serde_json::from_value(s.service_json()).expect("Service")).collect();
    let slices: Vec<Slice> = svcs.iter().map(|s| serde_json::from_value(s.slice_json()).expect("EndpointSlice")).collect();
    let node = lb_userspace::model::NodeContext {
        name: NODE_NAME.into(),
        addresses: vec![std::net::IpAddr::V4(NODE)],
        ..Default::default()
    };
    let d = lb_userspace::compile::compile(&services, &slices, &node, lb_userspace::model::Family::V4);
    assert!(d.rejected.is_empty(), "the bench cluster has invalid objects: {:?}", d.rejected);
    d
}

// ---------------------------------------------------------------------------------------------
// kube-proxy-style rulesets
// ---------------------------------------------------------------------------------------------

/// kube-proxy's chain-name hash: 16 base32 characters of a hash of the port name (kube-proxy
/// uses SHA-256; any stable hash gives the same shape).
fn chain_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut h2 = h ^ 0x9e37_79b9_7f4a_7c15;
    h2 = h2.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(16);
    for i in 0..16 {
        let v = if i < 12 { h >> (i * 5) } else { h2 >> ((i - 12) * 5) };
        out.push(B32[(v & 31) as usize] as char);
    }
    out
}

pub fn ipt_svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", chain_hash(&s.port_name()))
}

pub fn ipt_sep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!("KUBE-SEP-{}", chain_hash(&format!("{}{ep}:{}", s.port_name(), s.target_port)))
}

fn ipt_service_rule(out: &mut String, s: &Svc) {
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {}",
        s.port_name(),
        s.vip,
        s.port,
        ipt_svc_chain(s)
    );
}

/// A service's own chains (KUBE-SVC-* and its KUBE-SEP-*), as rules.
fn ipt_service_chains(out: &mut String, s: &Svc) {
    let svc_chain = ipt_svc_chain(s);
    let pn = s.port_name();
    let _ = writeln!(
        out,
        "-A {svc_chain} -m comment --comment \"{pn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        s.vip, s.port
    );
    let n = s.endpoints.len();
    for (j, ep) in s.endpoints.iter().enumerate() {
        let sep = ipt_sep_chain(s, *ep);
        if j + 1 < n {
            let p = 1.0 / (n - j) as f64;
            let _ = writeln!(
                out,
                "-A {svc_chain} -m comment --comment \"{pn} -> {ep}:{}\" -m statistic --mode random --probability {p:.10} -j {sep}",
                s.target_port
            );
        } else {
            let _ = writeln!(out, "-A {svc_chain} -m comment --comment \"{pn} -> {ep}:{}\" -j {sep}", s.target_port);
        }
    }
    for ep in &s.endpoints {
        let sep = ipt_sep_chain(s, *ep);
        let _ = writeln!(out, "-A {sep} -m comment --comment \"{pn}\" -s {ep}/32 -j KUBE-MARK-MASQ");
        let _ =
            writeln!(out, "-A {sep} -m comment --comment \"{pn}\" -m tcp -p tcp -j DNAT --to-destination {ep}:{}", s.target_port);
    }
}

fn ipt_declare_service(out: &mut String, s: &Svc) {
    let _ = writeln!(out, ":{} - [0:0]", ipt_svc_chain(s));
    for ep in &s.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", ipt_sep_chain(s, *ep));
    }
}

/// The whole ruleset kube-proxy's iptables mode writes for `svcs` (ClusterIP services, all with
/// endpoints), in `iptables-restore` format, in the order given (the first rule of
/// KUBE-SERVICES is the first service). Loaded without `--noflush` it replaces both tables.
pub fn iptables_ruleset(svcs: &[Svc]) -> String {
    let mut out = String::with_capacity(svcs.len() * 1200);
    out.push_str("*filter\n");
    for c in ["KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"]
    {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A INPUT -j KUBE-FIREWALL\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -j KUBE-FIREWALL\n",
        "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        "COMMIT\n",
        "*nat\n",
        ":KUBE-SERVICES - [0:0]\n",
        ":KUBE-NODEPORTS - [0:0]\n",
        ":KUBE-POSTROUTING - [0:0]\n",
        ":KUBE-MARK-MASQ - [0:0]\n",
    ));
    for s in svcs {
        ipt_declare_service(&mut out, s);
    }
    out.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ));
    ipt_nat_common(&mut out);
    for s in svcs {
        ipt_service_rule(&mut out, s);
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for s in svcs {
        ipt_service_chains(&mut out, s);
    }
    out.push_str("COMMIT\n");
    out
}

fn ipt_nat_common(out: &mut String) {
    out.push_str(concat!(
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
}

/// What kube-proxy's iptables partial sync (`MinimizeIPTablesRestore`, the default since 1.27)
/// hands to `iptables-restore --noflush` after one endpoint of `changed` changed: the
/// top-level nat chains in full (KUBE-SERVICES always has one rule per service), and the
/// changed service's chains. Stale KUBE-SEP chains are deleted by a later periodic cleanup.
pub fn iptables_partial(svcs: &[Svc], changed: &Svc) -> String {
    let mut out = String::with_capacity(svcs.len() * 160);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    ipt_declare_service(&mut out, changed);
    ipt_nat_common(&mut out);
    for s in svcs {
        ipt_service_rule(&mut out, s);
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    ipt_service_chains(&mut out, changed);
    out.push_str("COMMIT\n");
    out
}

pub const NFT_TABLE: &str = "kube-proxy";

pub fn nft_svc_chain(s: &Svc) -> String {
    format!("service-{}-{NAMESPACE}/{}/tcp/http", &chain_hash(&s.port_name())[..8], s.name)
}

pub fn nft_ep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "endpoint-{}-{NAMESPACE}/{}/tcp/http__{ep}/{}",
        &chain_hash(&format!("{}{ep}", s.port_name()))[..8],
        s.name,
        s.target_port
    )
}

/// A service's chains in kube-proxy's nftables layout; `counter` adds a counter to the service
/// chain (to prove that the measured service's traffic went through it).
fn nft_service_chains(out: &mut String, s: &Svc, counter: bool) {
    let t = NFT_TABLE;
    let sc = nft_svc_chain(s);
    // Endpoint chains first: the service chain's verdict map jumps to them.
    for ep in &s.endpoints {
        let ec = nft_ep_chain(s, *ep);
        let _ = writeln!(out, "add chain ip {t} {ec}");
        let _ = writeln!(out, "flush chain ip {t} {ec}");
        let _ = writeln!(out, "add rule ip {t} {ec} ip saddr {ep} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule ip {t} {ec} meta l4proto tcp dnat to {ep}:{}", s.target_port);
    }
    let _ = writeln!(out, "add chain ip {t} {sc}");
    let _ = writeln!(out, "flush chain ip {t} {sc}");
    let _ = writeln!(
        out,
        "add rule ip {t} {sc} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.vip, s.port
    );
    let vmap: Vec<String> =
        s.endpoints.iter().enumerate().map(|(j, ep)| format!("{j} : goto {}", nft_ep_chain(s, *ep))).collect();
    let _ = writeln!(
        out,
        "add rule ip {t} {sc} {}numgen random mod {} vmap {{ {} }}",
        if counter { "counter " } else { "" },
        s.endpoints.len(),
        vmap.join(" , ")
    );
}

/// The whole table kube-proxy's nftables mode (KEP-3866) writes for `svcs`, for `nft -f`:
/// the `service-ips` verdict map on daddr . l4proto . dport, a chain per service with a
/// `numgen random` verdict map, a chain per endpoint with the DNAT, and the hook chains.
/// The table is deleted and recreated (a full resync). `counted` names the service whose chain
/// carries a counter.
pub fn nft_ruleset(svcs: &[Svc], counted: Option<&str>) -> String {
    let t = NFT_TABLE;
    let mut out = String::with_capacity(svcs.len() * 900);
    let _ = writeln!(out, "add table ip {t} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(out, "delete table ip {t}");
    let _ = writeln!(out, "add table ip {t} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = write!(
        out,
        concat!(
            "add chain ip {t} mark-for-masquerade\n",
            "add rule ip {t} mark-for-masquerade mark set mark or 0x4000\n",
            "add chain ip {t} masquerading {{ type nat hook postrouting priority srcnat ; }}\n",
            "add rule ip {t} masquerading mark and 0x4000 == 0 return\n",
            "add rule ip {t} masquerading mark set mark xor 0x4000\n",
            "add rule ip {t} masquerading masquerade fully-random\n",
            "add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n",
            "add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n",
            "add map ip {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n",
            "add set ip {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n",
            "add set ip {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n",
            "add chain ip {t} services\n",
            "add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n",
            "add rule ip {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n",
            "add chain ip {t} service-endpoints-check\n",
            "add rule ip {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n",
            "add chain ip {t} cluster-ips-check\n",
            "add rule ip {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n",
            "add chain ip {t} filter-prerouting {{ type filter hook prerouting priority -110 ; }}\n",
            "add chain ip {t} filter-forward {{ type filter hook forward priority -110 ; }}\n",
            "add rule ip {t} filter-forward ct state new jump service-endpoints-check\n",
            "add rule ip {t} filter-forward ct state new jump cluster-ips-check\n",
            "add chain ip {t} filter-output {{ type filter hook output priority -110 ; }}\n",
            "add rule ip {t} filter-output ct state new jump service-endpoints-check\n",
            "add rule ip {t} filter-output ct state new jump cluster-ips-check\n",
            "add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n",
            "add rule ip {t} nat-prerouting jump services\n",
            "add chain ip {t} nat-output {{ type nat hook output priority -100 ; }}\n",
            "add rule ip {t} nat-output jump services\n",
        ),
        t = t
    );
    for s in svcs {
        nft_service_chains(&mut out, s, counted == Some(s.name.as_str()));
    }
    // Elements in batches (one huge line is slow for nft's parser).
    for chunk in svcs.chunks(500) {
        let els: Vec<String> =
            chunk.iter().map(|s| format!("{} . tcp . {} : goto {}", s.vip, s.port, nft_svc_chain(s))).collect();
        let _ = writeln!(out, "add element ip {t} service-ips {{ {} }}", els.join(" , "));
        let ips: Vec<String> = chunk.iter().map(|s| s.vip.to_string()).collect();
        let _ = writeln!(out, "add element ip {t} cluster-ips {{ {} }}", ips.join(" , "));
    }
    out
}

/// What kube-proxy's nftables mode sends in one transaction after one endpoint of `changed`
/// was replaced (`old` is gone): the service's chains rewritten, the stale endpoint chain
/// flushed (kube-proxy deletes stale chains later).
pub fn nft_partial(changed: &Svc, old: Ipv4Addr) -> String {
    let mut out = String::new();
    nft_service_chains(&mut out, changed, false);
    let _ = writeln!(out, "flush chain ip {NFT_TABLE} {}", nft_ep_chain(changed, old));
    out
}

/// Runs `cmd` (in namespace `ns`) with `input` on stdin; returns how long it took.
pub fn run_with_stdin(ns: &str, cmd: &[&str], input: &str) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let t = Instant::now();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        anyhow::bail!("{} failed ({}): {}", cmd.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// The machine, for the report.
pub fn environment() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpus": ncpus(),
        "cpu_model": cpu,
        "kernel": kernel,
        "bpf_jit_enable": read("/proc/sys/net/core/bpf_jit_enable"),
        "clocksource": read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "loadavg_at_start": read("/proc/loadavg"),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// Writes the bench's results file.
pub fn write_results(opts: &Opts, bench: &str, results: Value) {
    let doc = json!({
        "bench": bench, "quick": opts.quick, "environment": environment(),
        "run_s": opts.started.elapsed().as_secs_f64(), "results": results,
    });
    if let Some(dir) = opts.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&doc).expect("json")).expect("writing the results");
    println!("{bench}: results written to {}", opts.out.display());
}
