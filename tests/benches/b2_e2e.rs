//! B2: end to end through a node. A client pod opens a new TCP connection per request to a
//! ClusterIP (one GET, read to the end, close) through the node namespace to three pod servers
//! (`lb-testpod`), with 10 … 10,000 services programmed, in four modes, each on its own
//! topology (so no mode ever sees another's programs or rules):
//!
//! - `lb`: the real datapath, loaded and programmed here through the agent's compile → plan →
//!   apply path, attached to TC ingress of every pod interface of the node;
//! - `iptables`: kube-proxy's iptables-mode ruleset (KUBE-SERVICES → KUBE-SVC-* with
//!   `statistic` random → KUBE-SEP-* DNAT), loaded with `iptables-restore` in the node
//!   namespace; the measured service sits in the middle of KUBE-SERVICES;
//! - `nftables`: kube-proxy's nftables-mode table (service-ips verdict map → service chain with
//!   `numgen random` → endpoint chains with dnat), loaded with `nft -f`;
//! - `direct`: the client connects to the pod IPs itself, round robin (no service at all): the
//!   ceiling.
//!
//! Modes are interleaved (lb, iptables, nftables, direct, lb, ...) and each figure is the
//! median over the repetitions. The ClusterIP has no route in the node namespace, so an answer
//! proves the translation happened; lb's counters, the iptables chain counters and an nft
//! counter on the measured service chain are read as well.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Opts, Svc, median, percentile};
use lb_tests::{addresses::VIP, bins, netns::unique_token, topology::Topology};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, cleanup},
    maps::pinned::PinnedMaps,
    plan::{PlanConfig, PlanMemory, map_state},
};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Lb,
    Iptables,
    Nftables,
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Direct => "direct",
        }
    }
}

const MODES: [Mode; 4] = [Mode::Lb, Mode::Iptables, Mode::Nftables, Mode::Direct];

/// One mode's topology: a node, three server pods, a client pod.
struct Setup {
    mode: Mode,
    // Declared first: the datapath is released before its namespaces go.
    dp: Option<Dataplane>,
    ids: PlanMemory,
    pin: Option<PathBuf>,
    topo: Topology,
    client: usize,
    servers: Vec<Ipv4Addr>,
    /// Seconds the rules took to load (iptables-restore, nft -f, or the map writes).
    load_s: f64,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.dp = None;
        if let Some(pin) = &self.pin {
            let _ = cleanup(pin);
        }
    }
}

impl Setup {
    fn new(mode: Mode) -> anyhow::Result<Self> {
        let mut topo = Topology::new(1)?;
        let mut servers = Vec::new();
        for k in 0..3 {
            let i = topo.add_pod(0, &format!("srv-{k}"))?;
            topo.start_workload(i, &bins::testpod())?;
            servers.push(topo.pods[i].ip);
        }
        let client = topo.add_pod(0, "client")?;
        // A wide ephemeral range for the client: it opens thousands of connections a second.
        topo.pods[client].ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        let mut s = Self { mode, dp: None, ids: PlanMemory::default(), pin: None, topo, client, servers, load_s: 0.0 };
        if mode == Mode::Lb {
            let pin = PathBuf::from(format!("/sys/fs/bpf/lbbench-b2-{}", unique_token()));
            s.pin = Some(pin.clone());
            let mut dp = Dataplane::load(&DataplaneConfig { pin_path: pin, ..DataplaneConfig::default() })?;
            dp.set_config(&common::fixture::node_config())?;
            let node_ns = PathBuf::from(s.topo.nodes[0].ns.path());
            for iface in s.topo.pod_interfaces(0) {
                lb_userspace::netns::run_in(Some(&node_ns), || dp.attach_pod_interface(&iface))??;
            }
            s.dp = Some(dp);
        }
        Ok(s)
    }

    fn node_ns(&self) -> &str {
        self.topo.nodes[0].ns.name()
    }

    /// Programs `svcs` the way this mode does; returns the time it took.
    fn program(&mut self, svcs: &[Svc], measured: &Svc) -> anyhow::Result<()> {
        let t = Instant::now();
        match self.mode {
            Mode::Lb => {
                let d = common::desired(svcs);
                let st = map_state(&d, &mut self.ids, &PlanConfig::default());
                self.dp.as_mut().expect("datapath").apply(&st)?;
            }
            Mode::Iptables => {
                common::run_with_stdin(self.node_ns(), &["iptables-restore"], &common::iptables_ruleset(svcs))?;
            }
            Mode::Nftables => {
                common::run_with_stdin(self.node_ns(), &["nft", "-f", "-"], &common::nft_ruleset(svcs, Some(&measured.name)))?;
            }
            Mode::Direct => {}
        }
        self.load_s = t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Packets the measured service's rules (or lb's new flows) have seen so far.
    fn translated(&self, measured: &Svc) -> anyhow::Result<u64> {
        let out = |args: &[&str]| -> anyhow::Result<String> {
            let o = lb_tests::netns::run(std::process::Command::new("ip").args(["netns", "exec", self.node_ns()]).args(args))?;
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        };
        Ok(match self.mode {
            Mode::Lb => {
                let c = PinnedMaps::open(self.pin.as_ref().expect("pin"))?.counters()?;
                c[lb_common::CNT_NEW_FLOWS as usize]
            }
            Mode::Iptables => {
                // `-v -x`: exact packet counters of the KUBE-SVC chain's jumps to KUBE-SEP-*.
                let text = out(&["iptables", "-t", "nat", "-L", &common::ipt_svc_chain(measured), "-n", "-v", "-x"])?;
                text.lines()
                    .filter(|l| l.contains("KUBE-SEP-"))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum()
            }
            Mode::Nftables => {
                let text = out(&["nft", "list", "chain", "ip", common::NFT_TABLE, &common::nft_svc_chain(measured)])?;
                text.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
            }
            Mode::Direct => 0,
        })
    }

    /// lb's counters (lb mode only).
    fn lb_counters(&self) -> Option<Vec<u64>> {
        PinnedMaps::open(self.pin.as_ref()?).and_then(|m| m.counters()).ok()
    }

    /// Entries in lb's conntrack map (lb mode only; 0 otherwise).
    fn lb_conntrack_entries(&self) -> usize {
        let Some(Ok(m)) = self.pin.as_ref().map(|p| PinnedMaps::open(p)) else { return 0 };
        let tables = [lb_common::CONNTRACK4_CLIENT, lb_common::CONNTRACK4, lb_common::CONNTRACK];
        m.fill_levels().into_iter().filter(|(name, _, _)| tables.contains(name)).filter_map(|(_, n, _)| n).sum()
    }

    fn targets(&self) -> Vec<SocketAddr> {
        match self.mode {
            Mode::Direct => self.servers.iter().map(|ip| SocketAddr::from((*ip, common::TARGET_PORT))).collect(),
            _ => vec![SocketAddr::from((VIP, common::SERVICE_PORT))],
        }
    }

    /// Whether the ClusterIP has a route in the node namespace (it must not: then only a
    /// translation can deliver the client's packets).
    fn vip_routable(&self) -> bool {
        std::process::Command::new("ip")
            .args(["-n", self.node_ns(), "route", "get", &VIP.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// What one load run measured.
struct Run {
    ok: u64,
    failed: u64,
    secs: f64,
    /// Per-request latency in microseconds.
    lat_us: Vec<f32>,
    pods: BTreeMap<String, u64>,
    first_error: Option<String>,
}

/// One request on a new connection: the pod that answered.
fn request(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .last()
        .and_then(|l| l.strip_prefix("You've hit "))
        .map(str::to_owned)
        .ok_or_else(|| format!("bad answer {text:?}"))
}

/// `threads` clients in the namespace at `ns_path`, each one connection at a time, for `dur`.
fn load(ns_path: &Path, targets: &[SocketAddr], threads: usize, dur: Duration) -> Run {
    let results: Vec<Run> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    let mut r = Run {
                        ok: 0,
                        failed: 0,
                        secs: 0.0,
                        lat_us: Vec::with_capacity(100_000),
                        pods: BTreeMap::new(),
                        first_error: None,
                    };
                    if let Err(e) = lb_userspace::netns::enter(ns_path) {
                        r.first_error = Some(format!("setns: {e}"));
                        return r;
                    }
                    let start = Instant::now();
                    let mut i = t;
                    while start.elapsed() < dur {
                        let addr = targets[i % targets.len()];
                        i += 1;
                        let t0 = Instant::now();
                        match request(addr) {
                            Ok(pod) => {
                                r.lat_us.push(t0.elapsed().as_secs_f32() * 1e6);
                                r.ok += 1;
                                *r.pods.entry(pod).or_default() += 1;
                            }
                            Err(e) => {
                                r.failed += 1;
                                r.first_error.get_or_insert(e);
                            }
                        }
                    }
                    r.secs = start.elapsed().as_secs_f64();
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("load thread")).collect()
    });
    let mut total = Run { ok: 0, failed: 0, secs: 0.0, lat_us: Vec::new(), pods: BTreeMap::new(), first_error: None };
    for r in results {
        total.ok += r.ok;
        total.failed += r.failed;
        total.secs = total.secs.max(r.secs);
        total.lat_us.extend(r.lat_us);
        for (k, v) in r.pods {
            *total.pods.entry(k).or_default() += v;
        }
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total
}

struct Sizes {
    scales: Vec<u32>,
    reps: usize,
    dur: Duration,
    /// Load before the measured runs, per mode and scale: long enough for lb's conntrack map to
    /// fill (a busy node's steady state).
    warmup: Duration,
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse("b2");
    common::require_privileges("b2");
    let threads = std::env::var("LB_BENCH_B2_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let mut sizes = if opts.quick {
        Sizes { scales: vec![10, 1_000], reps: 1, dur: Duration::from_secs(2), warmup: Duration::from_millis(500), threads }
    } else {
        Sizes {
            scales: vec![10, 1_000, 10_000],
            reps: 5,
            dur: Duration::from_millis(2500),
            warmup: Duration::from_secs(2),
            threads,
        }
    };
    // Overrides for exploring (not used by `cargo xtask bench`).
    if let Ok(v) = std::env::var("LB_BENCH_B2_SCALES") {
        sizes.scales = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    }
    if let Some(r) = std::env::var("LB_BENCH_B2_REPS").ok().and_then(|v| v.parse().ok()) {
        sizes.reps = r;
    }
    if let Some(d) = std::env::var("LB_BENCH_B2_SECS").ok().and_then(|v| v.parse().ok()) {
        sizes.dur = Duration::from_secs(d);
    }
    println!(
        "b2: {} client threads, {} s per run, {} interleaved repetitions per mode",
        sizes.threads,
        sizes.dur.as_secs_f64(),
        sizes.reps
    );
    let mut rows = Vec::new();
    let mut setups: Vec<Setup> = Vec::new();
    let mut lb_runs = Vec::new();
    for &n in &sizes.scales {
        // Fresh topologies per scale, so that no conntrack or TIME_WAIT state carries over
        // (the quick mode's few seconds of load per scale fit in one set of tables).
        if !opts.quick || setups.is_empty() {
            setups.clear();
            for m in MODES {
                setups.push(Setup::new(m)?);
            }
        }
        let servers = setups[0].servers.clone();
        anyhow::ensure!(setups.iter().all(|s| s.servers == servers), "every topology has the same pod addresses");
        let measured = Svc::new("measured", VIP, servers.clone());
        // The measured service in the middle of the others (of KUBE-SERVICES for iptables).
        let dummies: Vec<Svc> = (0..n - 1).map(|i| Svc::dummy(i, 3)).collect();
        let half = dummies.len() / 2;
        let mut svcs: Vec<Svc> = dummies[..half].to_vec();
        svcs.push(measured.clone());
        svcs.extend_from_slice(&dummies[half..]);
        for s in &mut setups {
            s.program(&svcs, &measured)?;
            if s.mode != Mode::Direct {
                anyhow::ensure!(!s.vip_routable(), "{}: the ClusterIP is routable in the node namespace", s.mode.name());
            }
            println!("b2: {n} services: {} programmed in {:.2} s", s.mode.name(), s.load_s);
        }
        // Warm-up, not counted: pod servers, ARP, caches, and lb's conntrack map full.
        for s in &setups {
            let ns = PathBuf::from(s.topo.pods[s.client].ns.path());
            let w = load(&ns, &s.targets(), sizes.threads, sizes.warmup);
            anyhow::ensure!(w.ok > 0, "{}: no request succeeded during the warm-up: {:?}", s.mode.name(), w.first_error);
        }
        let mut per_mode: BTreeMap<Mode, Vec<Run>> = BTreeMap::new();
        let mut translated: BTreeMap<Mode, u64> = BTreeMap::new();
        for rep in 0..sizes.reps {
            for s in &setups {
                let ns = PathBuf::from(s.topo.pods[s.client].ns.path());
                let before = s.translated(&measured)?;
                let lb_before = s.lb_counters();
                let r = load(&ns, &s.targets(), sizes.threads, sizes.dur);
                let after = s.translated(&measured)?;
                *translated.entry(s.mode).or_default() += after - before;
                // lb: drops during the run, and how full its conntrack map is.
                let mut lb_note = String::new();
                if let (Some(b), Some(a)) = (lb_before, s.lb_counters()) {
                    let mut drops = serde_json::Map::new();
                    for (i, name) in lb_common::COUNTER_NAMES.iter().enumerate() {
                        if name.starts_with("drop") && a[i] > b[i] {
                            drops.insert((*name).to_owned(), (a[i] - b[i]).into());
                        }
                    }
                    let ct = s.lb_conntrack_entries();
                    lb_note = format!(" (conntrack entries {ct}, drops {})", Value::Object(drops.clone()));
                    lb_runs.push(json!({"services": n, "rep": rep, "conntrack_entries": ct, "drops": drops}));
                }
                println!(
                    "  {n:>6} services  {:<9} rep {rep}: {:>8.0} conn/s  p50 {:>6.0} µs  p99 {:>6.0} µs  failed {}{}{lb_note}",
                    s.mode.name(),
                    r.ok as f64 / r.secs,
                    percentile(&r.lat_us.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), 50.0),
                    percentile(&r.lat_us.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), 99.0),
                    r.failed,
                    r.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
                );
                per_mode.entry(s.mode).or_default().push(r);
            }
        }
        let mut modes = serde_json::Map::new();
        for (mode, runs) in &per_mode {
            let rates: Vec<f64> = runs.iter().map(|r| r.ok as f64 / r.secs).collect();
            let lat: Vec<f64> = runs.iter().flat_map(|r| r.lat_us.iter().map(|v| f64::from(*v))).collect();
            let ok: u64 = runs.iter().map(|r| r.ok).sum();
            let failed: u64 = runs.iter().map(|r| r.failed).sum();
            let mut pods: BTreeMap<String, u64> = BTreeMap::new();
            for r in runs {
                for (k, v) in &r.pods {
                    *pods.entry(k.clone()).or_default() += v;
                }
            }
            let setup = setups.iter().find(|s| s.mode == *mode).expect("setup");
            modes.insert(
                mode.name().into(),
                json!({
                    "conn_per_s_median": median(&rates),
                    "conn_per_s": rates,
                    "latency_us_p50": percentile(&lat, 50.0),
                    "latency_us_p99": percentile(&lat, 99.0),
                    "requests_ok": ok,
                    "requests_failed": failed,
                    "answered_by": pods,
                    "translated": translated.get(mode).copied().unwrap_or(0),
                    "program_s": setup.load_s,
                }),
            );
        }
        rows.push(json!({"services": n, "modes": Value::Object(modes)}));
    }
    let results = json!({
        "threads": sizes.threads,
        "run_s": sizes.dur.as_secs_f64(),
        "warmup_s": sizes.warmup.as_secs_f64(),
        "lb_runs": lb_runs,
        "lb_conntrack_max": lb_common::CONNTRACK_MAX,
        "reps": sizes.reps,
        "endpoints_per_service": 3,
        "rows": rows,
    });
    common::write_results(&opts, "b2", results);
    Ok(())
}
