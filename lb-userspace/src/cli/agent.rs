//! `lb agent`: its flags, and the agent they configure.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;

use super::require_root;
use crate::{
    agent::{AgentConfig, Source},
    dataplane::{self, DataplaneConfig, ExternalMode},
    maps::{DEFAULT_PIN_PATH, sizes::MapSizes},
    plan::PlanConfig,
};

#[derive(clap::Args)]
pub(super) struct AgentArgs {
    /// Where Services, EndpointSlices and Nodes come from: `file:DIR` (YAML manifests, watched),
    /// `kube` (in-cluster config or $KUBECONFIG) or `kube:PATH` (that kubeconfig).
    #[arg(long, default_value = "kube")]
    source: Source,
    /// bpffs directory for this agent's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Host-side pod interface to attach the pod TC program to (repeatable).
    #[arg(long = "pod-iface", visible_alias = "attach", value_name = "IFACE")]
    pod_iface: Vec<String>,
    /// External interface for NodePort, LoadBalancer and externalIP traffic (repeatable).
    #[arg(long = "ext-iface", value_name = "IFACE")]
    ext_iface: Vec<String>,
    /// How external interfaces are attached: auto (native XDP, else generic), native, generic,
    /// or tc (TC ingress, for devices where XDP cannot attach).
    #[arg(long, value_enum, default_value_t = ExternalMode::Auto)]
    xdp_mode: ExternalMode,
    /// cgroup v2 directory whose processes get socket-level translation (the node's own
    /// processes reaching ClusterIPs and NodePorts), e.g. /sys/fs/cgroup.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Source address given to a pod reaching itself through an IPv4 service (hairpin).
    #[arg(long, default_value = "169.254.42.1")]
    hairpin_ip: Ipv4Addr,
    /// Source address given to a pod reaching itself through an IPv6 service (hairpin). The
    /// default is a unique local address (fd00:6c62::/32, "lb"); the node must own it (e.g. on
    /// lo) so that the pod's replies come back to the node to be translated.
    #[arg(long = "hairpin-ip6", default_value = "fd00:6c62::1")]
    hairpin_ip6: Ipv6Addr,
    /// Source ports for SNAT of external traffic, MIN-MAX (keep them out of the node's
    /// ip_local_port_range).
    #[arg(long, default_value = "61000-65000", value_parser = parse_port_range)]
    snat_ports: (u16, u16),
    /// Maglev table size (a prime up to 65521) for every service; default: per service, the
    /// smallest of 1021, 4093, 16381 and 65521 at least 100 x its backends.
    #[arg(long, value_parser = parse_maglev_size)]
    maglev_table_size: Option<u32>,
    /// This node's name (endpoints with this `nodeName` are local).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// An address NodePorts are served on (repeatable; added to the Node object's addresses).
    #[arg(long = "node-ip", value_name = "IP")]
    node_ip: Vec<IpAddr>,
    /// Network namespace of the interfaces to attach to (e.g. /run/netns/node-a); the agent
    /// itself stays in its own namespace.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Capacity of each conntrack map (IPv4 flows, IPv6 flows) when it is created (one entry
    /// per flow without source NAT, two per source-NATed flow; an LRU, so its memory is taken
    /// up front).
    #[arg(long, value_name = "ENTRIES", default_value_t = lb_common::CONNTRACK_MAX,
          value_parser = clap::value_parser!(u32).range(2..))]
    conntrack_max: u32,
    /// The prefixes a Service's `spec.externalIPs` may use, comma-separated, or `any`.
    /// externalIPs capture traffic to those addresses from every pod and from outside
    /// (CVE-2020-8554: a Service with `externalIPs: [8.8.8.8]` takes over 8.8.8.8), so by
    /// default none is allowed: a Service with one is skipped, logged and counted
    /// (`lb_objects_rejected_total{reason="spec.externalIPs"}`) and listed by `lb status`.
    /// `any` is kube-proxy's behaviour (leave the policing to an admission controller).
    /// Example: --external-ip-cidrs 203.0.113.0/24,2001:db8:1::/48.
    #[arg(long, value_name = "CIDR,...|any", default_value = "", value_parser = parse_external_ip_cidrs)]
    external_ip_cidrs: ExternalIpCidrs,
    /// The prefixes `status.loadBalancer.ingress` IPs may use, comma-separated, or `any` (the
    /// default: writing them takes `services/status` permission, which only controllers such
    /// as the cloud's or MetalLB hold). A Service with one outside is skipped and reported.
    /// Example: --loadbalancer-ip-cidrs 198.51.100.0/24.
    #[arg(long, value_name = "CIDR,...|any", default_value = "any", value_parser = parse_external_ip_cidrs)]
    loadbalancer_ip_cidrs: ExternalIpCidrs,
    /// Size the service maps for this many Services (ServicePorts) of up to 10 endpoints each:
    /// LB_SERVICES 4N, LB_MAGLEV 4N chunks, LB_SELECT and LB_MEMBERS 10N, LB_SVC_STATS and
    /// LB_SVC_NAMES 2N, never below the defaults (which hold about 16,000). Their memory is taken
    /// as they fill. Applies when the maps are created: pinned maps keep their size until
    /// `--cleanup`. Example: --services-max 100000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    services_max: Option<u32>,
    /// The most map MAP grows to, in entries (repeatable). A state that does not fit a map
    /// grows it online (new map, entries copied, programs swapped through their pinned links:
    /// no packet dropped, conntrack kept); up to this ceiling. Services that would need more
    /// are left out, reported by name and retried. Defaults: LB_BACKENDS 2,097,152,
    /// LB_SERVICES 16,777,216, LB_SVC_STATS and LB_SVC_NAMES 1,048,576.
    /// Example: --map-max LB_BACKENDS=500000.
    #[arg(long = "map-max", value_name = "MAP=ENTRIES", value_parser = parse_map_entries)]
    map_max: Vec<(&'static str, u32)>,
    /// The capacity map MAP is created with, in entries (repeatable; after --services-max).
    /// Rarely needed: maps grow online as the cluster does. Example: --map-size LB_BACKENDS=16.
    #[arg(long = "map-size", value_name = "MAP=ENTRIES", value_parser = parse_map_entries)]
    map_size: Vec<(&'static str, u32)>,
    /// How often the file source is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Prometheus metrics listener (`GET /metrics`), IP:PORT or `none`. It is opened in the
    /// agent's own network namespace; keep it on loopback unless the port is firewalled.
    #[arg(long, value_name = "IP:PORT|none", default_value = "127.0.0.1:9964", value_parser = parse_listen_addr)]
    metrics_addr: Listen,
    /// Also export a packet and a byte series per backend (`lb_backend_packets_total`,
    /// `lb_backend_bytes_total`): two series per endpoint of the cluster, so off by default.
    #[arg(long)]
    metrics_backends: bool,
    /// kube-proxy-compatible `/healthz` and `/livez` listener, IP:PORT or `none`.
    #[arg(long, value_name = "IP:PORT|none", default_value = "127.0.0.1:10256", value_parser = parse_listen_addr)]
    health_addr: Listen,
    /// `/healthz` (and the health-check node ports) report unhealthy once a change has waited
    /// longer than twice this to reach the maps, e.g. `30s`, `1m`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sync_period: Duration,
    /// How often the maps are read back from the kernel and entries changed or deleted outside
    /// the agent rewritten (counted in `lb_map_repairs_total`), e.g. `5m`. The maps are read in
    /// batches, but every entry is compared (3.9 million at 100,000 Services): keep it in
    /// minutes there.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    repair_period: Duration,
    /// Detach everything and remove the pinned maps and links, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Log filter (also RUST_LOG). The kube client's own connection errors are left to the
    /// source, which reports them once per outage.
    #[arg(long, env = "RUST_LOG", default_value = "info,kube_client::client::builder=off")]
    log: String,
    /// Log lines as text (default) or as one JSON object per line (for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl AgentArgs {
    /// The map capacities asked for by `--services-max` and `--conntrack-max`.
    fn map_sizes(&self) -> MapSizes {
        let scaled = self.services_max.map_or_else(MapSizes::default, MapSizes::for_services);
        let mut sizes = MapSizes { conntrack: self.conntrack_max, ..scaled };
        for (name, n) in &self.map_size {
            sizes.set(name, *n);
        }
        // A ceiling below the size asked for wins (e.g. --map-max alone, below a default).
        for (name, max) in &self.map_max {
            if sizes.of(name).is_some_and(|n| n > *max) {
                sizes.set(name, *max);
            }
        }
        sizes
    }

    /// The growth ceilings: the defaults with `--map-max` applied.
    fn max_sizes(&self) -> MapSizes {
        let mut max = MapSizes::ceilings();
        for (name, n) in &self.map_max {
            max.set(name, *n);
        }
        max
    }
}

/// `--external-ip-cidrs`: `None` for `any`.
#[derive(Clone, Debug)]
struct ExternalIpCidrs(Option<Vec<crate::model::Cidr>>);

fn parse_external_ip_cidrs(s: &str) -> Result<ExternalIpCidrs, String> {
    if s.trim() == "any" {
        return Ok(ExternalIpCidrs(None));
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CIDR (e.g. 203.0.113.0/24 or 2001:db8::/32), nor `any`");
        let (addr, prefix) = part.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        out.push(crate::model::Cidr { addr, prefix });
    }
    Ok(ExternalIpCidrs(Some(out)))
}

/// `--map-max` and `--map-size` (`MAP=ENTRIES`): a map that grows, and at least 1 entry.
fn parse_map_entries(s: &str) -> Result<(&'static str, u32), String> {
    let growable: Vec<&'static str> =
        MapSizes::ceilings().by_name().into_iter().map(|(n, _)| n).filter(|n| *n != lb_common::CONNTRACK).collect();
    let (name, n) = s.split_once('=').ok_or_else(|| format!("expected MAP=ENTRIES, e.g. LB_BACKENDS=500000, got {s:?}"))?;
    let name = growable
        .iter()
        .copied()
        .find(|g| *g == name)
        .ok_or_else(|| format!("{name:?} is not a map that grows; one of {}", growable.join(", ")))?;
    let n: u32 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| format!("{n:?} is not a number of entries above 0"))?;
    Ok((name, n))
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}

/// Runs the agent (or `--cleanup`) as the flags say.
pub(super) fn run(args: AgentArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).map_err(|e| {
        anyhow::anyhow!("--log {:?} (or RUST_LOG): {e}; e.g. --log info or --log info,lb_userspace=debug", args.log)
    })?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    require_root("the agent")?;
    if args.cleanup {
        // Never the pins of a running agent: the lock it holds refuses us (`dataplane::lock`).
        let _lock = match dataplane::lock::PinLock::acquire(&args.pin_path) {
            Err(dataplane::DataplaneError::PinDir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            held => Some(held?),
        };
        dataplane::cleanup(&args.pin_path)?;
        tracing::info!(pin_path = %args.pin_path.display(), "removed pinned maps and links");
        return Ok(());
    }
    let (sizes, max_sizes) = (args.map_sizes(), args.max_sizes());
    let cfg = AgentConfig {
        source: args.source,
        dataplane: DataplaneConfig { pin_path: args.pin_path, sizes, max_sizes },
        pod_interfaces: args.pod_iface,
        external_interfaces: args.ext_iface,
        external_mode: args.xdp_mode,
        cgroup: args.cgroup,
        netns: args.netns,
        node_name: args.node_name,
        node_addresses: args.node_ip,
        hairpin_addr: args.hairpin_ip,
        hairpin6_addr: args.hairpin_ip6,
        snat_ports: args.snat_ports,
        external_ip_cidrs: args.external_ip_cidrs.0,
        lb_ip_cidrs: args.loadbalancer_ip_cidrs.0,
        plan: PlanConfig { maglev_table_size: args.maglev_table_size },
        poll_interval: Duration::from_millis(args.poll_ms),
        metrics_addr: args.metrics_addr.0,
        metrics_backends: args.metrics_backends,
        health_addr: args.health_addr.0,
        sync_period: args.sync_period,
        repair_period: args.repair_period,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(crate::agent::run(cfg))
}

/// A listener address, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listen(Option<SocketAddr>);

fn parse_listen_addr(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse().map(|a| Listen(Some(a))).map_err(|_| format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:9964, [::1]:9964) or none"))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 1m, 500ms)");
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("{s}: must be more than 0"));
    }
    Ok(d)
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX, e.g. 61000-65000")?;
    let a: u16 = a.parse().map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b.parse().map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s}: need 0 < MIN <= MAX"));
    }
    Ok((a, b))
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !crate::plan::maglev::valid_table_size(m) {
        return Err(format!("{m} is not a prime between 2 and {}", lb_common::MAGLEV_MAX_SIZE));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr("none"), Ok(Listen(None)));
        assert_eq!(parse_listen_addr("127.0.0.1:9964"), Ok(Listen(Some("127.0.0.1:9964".parse().unwrap()))));
        assert_eq!(parse_listen_addr("[::1]:10256"), Ok(Listen(Some("[::1]:10256".parse().unwrap()))));
        assert!(parse_listen_addr("127.0.0.1").is_err());
        assert!(parse_listen_addr("localhost:9964").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn agent_defaults_listen_on_loopback() {
        let cli = Cli::try_parse_from(["lb", "agent"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.metrics_addr, Listen(Some("127.0.0.1:9964".parse().unwrap())));
        assert_eq!(a.health_addr, Listen(Some("127.0.0.1:10256".parse().unwrap())));
        assert_eq!(a.sync_period, Duration::from_secs(30));
        let cli = Cli::try_parse_from(["lb", "agent", "--metrics-addr", "none", "--health-addr", "none"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!((a.metrics_addr, a.health_addr), (Listen(None), Listen(None)));
    }

    #[test]
    fn hairpin_addresses_default_per_family() {
        let cli = Cli::try_parse_from(["lb", "agent"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.hairpin_ip, Ipv4Addr::new(169, 254, 42, 1));
        assert_eq!(a.hairpin_ip6, crate::agent::DEFAULT_HAIRPIN6_ADDR);
        let cli = Cli::try_parse_from(["lb", "agent", "--hairpin-ip6", "fd00:1::7"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.hairpin_ip6, "fd00:1::7".parse::<Ipv6Addr>().unwrap());
        assert!(Cli::try_parse_from(["lb", "agent", "--hairpin-ip6", "169.254.42.1"]).is_err());
    }

    #[test]
    fn map_sizes_scale_with_services_max_and_default_otherwise() {
        let agent = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["lb", "agent"], args].concat()).unwrap();
            let Command::Agent(a) = cli.command else { panic!() };
            a.map_sizes()
        };
        assert_eq!(agent(&[]), MapSizes::default());
        let big = agent(&["--services-max", "100000", "--conntrack-max", "262144"]);
        assert_eq!(big, MapSizes { conntrack: 262_144, ..MapSizes::for_services(100_000) });
        assert!(big.maglev > lb_common::MAGLEV_CHUNKS_MAX);
        assert!(Cli::try_parse_from(["lb", "agent", "--services-max", "0"]).is_err());
        assert!(Cli::try_parse_from(["lb", "agent", "--services-max", "2000000"]).is_err());
        assert!(Cli::try_parse_from(["lb", "agent", "--conntrack-max", "1"]).is_err());
    }

    #[test]
    fn map_max_sets_growth_ceilings_of_maps_that_grow_only() {
        let cli = Cli::try_parse_from(["lb", "agent", "--map-max", "LB_BACKENDS=500", "--map-max", "LB_SERVICES=9000"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        let max = a.max_sizes();
        assert_eq!((max.backends, max.services), (500, 9000));
        assert_eq!(max.maglev, MapSizes::ceilings().maglev);
        let cli = Cli::try_parse_from(["lb", "agent", "--services-max", "100000", "--map-size", "LB_BACKENDS=16"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.map_sizes(), MapSizes { backends: 16, ..MapSizes::for_services(100_000) });
        let cli = Cli::try_parse_from(["lb", "agent", "--map-max", "LB_BACKENDS=40"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.map_sizes().backends, 40, "created no larger than its ceiling");
        for bad in ["LB_BACKENDS", "LB_CONNTRACK=5", "LB_NOSUCH=5", "LB_BACKENDS=0", "LB_BACKENDS=x"] {
            assert!(Cli::try_parse_from(["lb", "agent", "--map-max", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn external_ips_are_allowed_only_in_the_given_prefixes_and_none_by_default() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["lb", "agent"], args].concat()).unwrap();
            let Command::Agent(a) = cli.command else { panic!() };
            a.external_ip_cidrs.0
        };
        assert_eq!(parse(&[]), Some(vec![]), "none allowed by default");
        let cli = Cli::try_parse_from(["lb", "agent"]).unwrap();
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.loadbalancer_ip_cidrs.0, None, "LoadBalancer IPs: any by default");
        assert_eq!(parse(&["--external-ip-cidrs", "any"]), None);
        let two = parse(&["--external-ip-cidrs", "203.0.113.0/24, 2001:db8::/32"]).unwrap();
        assert_eq!(two.len(), 2);
        assert!(two[0].contains("203.0.113.7".parse().unwrap()) && !two[0].contains("8.8.8.8".parse().unwrap()));
        assert!(two[1].contains("2001:db8::1".parse().unwrap()) && !two[1].contains("203.0.113.7".parse().unwrap()));
        for bad in ["8.8.8.8", "10.0.0.0/33", "nope/8", "::/129"] {
            assert!(Cli::try_parse_from(["lb", "agent", "--external-ip-cidrs", bad]).is_err(), "{bad}");
        }
    }
}
