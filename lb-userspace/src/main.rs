//! `lb`: the eBPF Kubernetes Service load balancer's agent and CLI.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    agent::{self, AgentConfig, Source},
    dataplane::{self, DEFAULT_PIN_PATH, DataplaneConfig, PinnedMaps},
    dump::{self, Output, Table},
    netns,
};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "In-kernel Kubernetes Service load balancer (eBPF datapath + agent)",
    after_help = "Examples:\n  \
        lb agent --source file:/etc/lb/manifests --attach veth-pod1 --attach veth-pod2 --node-name node-a\n  \
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
        lb agent --source file:./manifests --attach lxc1 --attach lxc2 --node-name node-a --node-ip 192.168.1.10\n  \
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
    /// Where Services, EndpointSlices and Nodes come from: `file:DIR` (YAML manifests, watched).
    #[arg(long, default_value = "file:/etc/lb/manifests")]
    source: Source,
    /// bpffs directory for this agent's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Host-side pod interface to attach the TC program to (repeatable).
    #[arg(long = "attach", value_name = "IFACE")]
    attach: Vec<String>,
    /// This node's name (endpoints with this `nodeName` are local).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// An address NodePorts are served on (repeatable; added to the Node object's addresses).
    #[arg(long = "node-ip", value_name = "IP")]
    node_ip: Vec<IpAddr>,
    /// Enter this network namespace first (e.g. /run/netns/node-a).
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
    /// Log filter (also RUST_LOG).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
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
    // Before the runtime starts any thread: every thread inherits this namespace.
    if let Some(ns) = &args.netns {
        netns::enter(ns).with_context(|| format!("entering network namespace {}", ns.display()))?;
    }
    let cfg = AgentConfig {
        source: args.source,
        dataplane: DataplaneConfig {
            pin_path: args.pin_path,
            conntrack_max: args.conntrack_max,
        },
        pod_interfaces: args.attach,
        node_name: args.node_name,
        node_addresses: args.node_ip,
        poll_interval: Duration::from_millis(args.poll_ms),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(agent::run(cfg))
}
