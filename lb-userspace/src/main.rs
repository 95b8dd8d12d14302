//! `lb`: the eBPF Kubernetes Service load balancer's agent and CLI.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    agent::{self, AgentConfig, Source},
    dataplane::{self, DEFAULT_PIN_PATH, DataplaneConfig, ExternalMode},
    dump::{self, Output, Table},
    pinned::PinnedMaps,
    plan::PlanConfig,
};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "In-kernel Kubernetes Service load balancer (eBPF datapath + agent)",
    after_help = "Examples:\n  \
        lb agent --source kube --ext-iface eth0 --pod-iface lxc1 --cgroup /sys/fs/cgroup\n  \
        lb agent --source file:/etc/lb/manifests --pod-iface veth-pod1 --node-name node-a\n  \
        lb maps dump services\n  \
        lb maps dump conntrack -o json\n  \
        lb agent --cleanup"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the datapath, attach it, and program it from Kubernetes objects.
    #[command(after_help = "Examples:\n  \
        # Program the datapath from the manifests in a directory, watching it for changes:\n  \
        lb agent --source file:./manifests --pod-iface lxc1 --pod-iface lxc2 --node-name node-a --node-ip 192.168.1.10\n  \
        # In a cluster, with NodePorts on eth0 over XDP and the node's own processes translated:\n  \
        lb agent --source kube --ext-iface eth0 --cgroup /sys/fs/cgroup --pod-iface lxc1\n  \
        # Remove everything a previous agent left pinned and attached:\n  \
        lb agent --cleanup --pin-path /sys/fs/bpf/lb")]
    Agent(AgentArgs),
    /// Inspect the maps of a running agent.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
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
    /// Source address given to a pod reaching itself through a service (hairpin).
    #[arg(long, default_value = "169.254.42.1")]
    hairpin_ip: Ipv4Addr,
    /// Source ports for SNAT of external traffic, MIN-MAX (keep them out of the node's
    /// ip_local_port_range).
    #[arg(long, default_value = "61000-65000", value_parser = parse_port_range)]
    snat_ports: (u16, u16),
    /// Maglev table size (a prime up to 65521) for every service; default: per service, the
    /// smallest of 251, 509, 1021, ... at least 100 x its backends.
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
    /// Capacity of the conntrack map when it is created.
    #[arg(long)]
    conntrack_max: Option<u32>,
    /// How often the file source is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Detach everything and remove the pinned maps and links, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Log filter (also RUST_LOG). The kube client's own connection errors are left to the
    /// source, which reports them once per outage.
    #[arg(long, env = "RUST_LOG", default_value = "info,kube_client::client::builder=off")]
    log: String,
}

#[derive(Subcommand)]
enum MapsCommand {
    /// Print one map of a running agent.
    #[command(
        after_help = "Examples:\n  lb maps dump services\n  lb maps dump backends -o json\n  lb maps dump stats --pin-path /sys/fs/bpf/lb"
    )]
    Dump {
        /// The map to print.
        table: Table,
        /// bpffs directory of the agent.
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Maps {
            command:
                MapsCommand::Dump {
                    table,
                    pin_path,
                    output,
                },
        } => {
            require_root("reading pinned maps")?;
            let maps = PinnedMaps::open(&pin_path).with_context(|| {
                format!(
                    "no lb agent maps at {} (is the agent running? is --pin-path right?)",
                    pin_path.display()
                )
            })?;
            print!("{}", dump::dump(&maps, table, output)?);
            Ok(())
        }
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} needs root (CAP_BPF and CAP_SYS_ADMIN); run with sudo");
    }
    Ok(())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    require_root("the agent")?;
    if args.cleanup {
        dataplane::cleanup(&args.pin_path)?;
        tracing::info!(pin_path = %args.pin_path.display(), "removed pinned maps and links");
        return Ok(());
    }
    let cfg = AgentConfig {
        source: args.source,
        dataplane: DataplaneConfig {
            pin_path: args.pin_path,
            conntrack_max: args.conntrack_max,
        },
        pod_interfaces: args.pod_iface,
        external_interfaces: args.ext_iface,
        external_mode: args.xdp_mode,
        cgroup: args.cgroup,
        netns: args.netns,
        node_name: args.node_name,
        node_addresses: args.node_ip,
        hairpin_addr: args.hairpin_ip,
        snat_ports: args.snat_ports,
        plan: PlanConfig { maglev_table_size: args.maglev_table_size },
        poll_interval: Duration::from_millis(args.poll_ms),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(agent::run(cfg))
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
    if !lb_userspace::maglev::valid_table_size(m) {
        return Err(format!("{m} is not a prime between 2 and {}", lb_common::MAGLEV_MAX_SIZE));
    }
    Ok(m)
}
