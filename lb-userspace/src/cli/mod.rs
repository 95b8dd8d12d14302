//! The `lb` command line: `lb agent` runs the agent (`agent.rs`); the other commands read a
//! running agent's pins from another process ([`maps`], [`service`], [`stats`], [`status`]) and
//! print tables or JSON ([`output`]). `src/main.rs` only calls [`main`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::maps::{DEFAULT_PIN_PATH, pinned::PinnedMaps};

mod agent;
pub mod explain;
mod frame;
pub mod maps;
pub mod monitor;
pub mod output;
pub mod service;
pub mod stats;
pub mod status;

use agent::AgentArgs;
use maps::Table;
use output::Output;

#[derive(Parser)]
#[command(
    name = "lb",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LB_GIT_COMMIT"), ")"),
    about = "In-kernel Kubernetes Service load balancer (eBPF datapath + agent)",
    after_help = "Examples:\n  \
        lb agent --source kube --ext-iface eth0 --pod-iface lxc1 --cgroup /sys/fs/cgroup\n  \
        lb agent --source file:/etc/lb/manifests --pod-iface veth-pod1 --node-name node-a\n  \
        lb service list\n  \
        lb maps dump conntrack -o json\n  \
        lb explain tcp 10.244.0.12:40000 -> 10.96.0.10:80\n  \
        lb monitor --type drop,reject\n  \
        lb status\n  \
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
        # A large cluster: maps sized for 100,000 Services, drift repaired every 10 minutes:\n  \
        lb agent --source kube --ext-iface eth0 --services-max 100000 --repair-period 10m\n  \
        # Remove everything a previous agent left pinned and attached:\n  \
        lb agent --cleanup --pin-path /sys/fs/bpf/lb")]
    Agent(Box<AgentArgs>),
    /// Inspect the maps of a running agent.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Services as the datapath holds them: each frontend and its backends.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Per-service and per-backend counters, verdicts and drop reasons.
    #[command(after_help = "Examples:\n  lb stats\n  lb stats -o json")]
    Stats(ReadArgs),
    /// Where the programs are attached, map fill levels, layout and agent versions.
    #[command(after_help = "Examples:\n  lb status\n  lb status --pin-path /sys/fs/bpf/lb -o json")]
    Status(ReadArgs),
    /// What the node's datapath does with a packet, step by step: the real program runs it
    /// against the live maps (BPF_PROG_TEST_RUN), and the live maps are left untouched.
    #[command(after_help = "Examples:\n  \
        # A pod on this node connecting to a ClusterIP:\n  \
        lb explain tcp 10.244.0.12:40000 -> 10.96.0.10:80\n  \
        # A client outside the node reaching a NodePort through eth0:\n  \
        lb explain tcp 203.0.113.7:51000 -> 192.168.1.10:30080 --from external --iface eth0\n  \
        # A UDP datagram to the cluster DNS, as JSON:\n  \
        lb explain udp 10.244.0.12:53000 -> 10.96.0.10:53 -o json")]
    Explain(ExplainArgs),
    /// Live datapath events: drops with their reason, rejects, sampled new flows. Nothing is
    /// written while no monitor runs.
    #[command(after_help = "Examples:\n  \
        lb monitor\n  \
        lb monitor --reason source_range\n  \
        lb monitor --type drop --service default/kubia -o json\n  \
        lb monitor --type flow --flow-sample 100 --addr 10.244.0.12\n  \
        lb monitor --count 10 --duration 30s")]
    Monitor(MonitorArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        lb completion bash > /etc/bash_completion.d/lb\n  \
        lb completion zsh > \"${fpath[1]}/_lb\"\n  \
        lb completion fish > ~/.config/fish/completions/lb.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Every frontend with its Service's type, its kind and its backends and their state (like
    /// `cilium service list`).
    #[command(
        after_help = "Examples:\n  lb service list\n  lb service list --selector app=kubia\n  lb service list --namespace kube-system\n  lb service list --type loadbalancer -o json"
    )]
    List {
        /// Only the Services of this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only Services of this type: clusterip, nodeport or loadbalancer.
        #[arg(long = "type")]
        service_type: Option<String>,
        /// Only Services whose labels match, as `kubectl get -l`: key=value, key!=value, key,
        /// !key, joined by commas.
        #[arg(short = 'l', long)]
        selector: Option<service::Selector>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// One Service: every port and family, each frontend with its backends.
    #[command(after_help = "Examples:\n  lb service get default/kubia\n  lb service get kube-system/kube-dns -o json")]
    Get {
        /// The Service, as NAMESPACE/NAME.
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// `lb explain`'s options.
#[derive(clap::Args)]
struct ExplainArgs {
    /// The packet's protocol: tcp or udp.
    proto: String,
    /// Its source, ADDRESS:PORT (IPv6: [ADDRESS]:PORT).
    src: String,
    /// `->`, then its destination (or the destination alone).
    #[arg(allow_hyphen_values = true, value_name = "->")]
    arrow: String,
    /// Its destination, ADDRESS:PORT.
    dst: Option<String>,
    /// Where the packet enters the node.
    #[arg(long, value_enum, default_value_t = explain::From::Pod)]
    from: explain::From,
    /// The interface it enters through (default: the first with the program of --from).
    #[arg(long)]
    iface: Option<String>,
    /// TCP flags of the segment, comma-separated (syn, ack, fin, rst, psh).
    #[arg(long, default_value = "syn")]
    tcp_flags: String,
    #[command(flatten)]
    read: ReadArgs,
}

/// `lb monitor`'s options.
#[derive(clap::Args)]
struct MonitorArgs {
    /// Which events (comma-separated).
    #[arg(long = "type", value_enum, value_delimiter = ',', default_values_t = [monitor::EventType::Drop, monitor::EventType::Reject])]
    types: Vec<monitor::EventType>,
    /// Only this reason: a counter name, with or without its drop_ or reject_ prefix (`lb stats`
    /// lists them), e.g. source_range, no_local_backend.
    #[arg(long)]
    reason: Option<String>,
    /// Only events of this Service, NAMESPACE/NAME.
    #[arg(long)]
    service: Option<String>,
    /// Only events with this source or destination address.
    #[arg(long)]
    addr: Option<std::net::IpAddr>,
    /// New flows: report one in N.
    #[arg(long, default_value_t = 1)]
    flow_sample: u32,
    /// Most events each CPU writes per second (more are counted as lost).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long, e.g. 30s, 5m.
    #[arg(long, value_parser = agent::parse_duration)]
    duration: Option<std::time::Duration>,
    #[command(flatten)]
    read: ReadArgs,
}

/// Options of the commands that read a running agent's pinned maps.
#[derive(clap::Args)]
struct ReadArgs {
    /// bpffs directory of the agent.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Subcommand)]
enum MapsCommand {
    /// Print one map of a running agent.
    #[command(
        after_help = "Examples:\n  lb maps dump services\n  lb maps dump backends -o json\n  lb maps dump members\n  lb maps dump source-ranges\n  lb maps dump conntrack --service default/kubia\n  lb maps dump conntrack --backend 10.244.1.5:8080 -o json\n  lb maps dump conntrack --addr 10.244.0.12\n  lb maps dump stats --pin-path /sys/fs/bpf/lb"
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
        /// Conntrack filters (with `conntrack` only).
        #[command(flatten)]
        filter: maps::CtFilter,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => agent::run(*args),
        Command::Maps { command: MapsCommand::Dump { table, pin_path, output, filter } } => {
            anyhow::ensure!(
                table == Table::Conntrack || (filter.service.is_none() && filter.backend.is_none() && filter.addr.is_none()),
                "--service, --backend and --addr filter the conntrack dump: lb maps dump conntrack --service NAMESPACE/NAME"
            );
            let maps = open_pins(&pin_path)?;
            print!("{}", maps::dump(&maps, table, output, &filter)?);
            Ok(())
        }
        Command::Service { command: ServiceCommand::List { namespace, service_type, selector, read } } => {
            if let Some(t) = &service_type {
                anyhow::ensure!(
                    ["clusterip", "nodeport", "loadbalancer"].contains(&t.to_ascii_lowercase().as_str()),
                    "--type {t}: the types are clusterip, nodeport, loadbalancer"
                );
            }
            let filter = service::Filter { prefix: None, namespace, service_type, selector };
            print!("{}", service::list(&open_pins(&read.pin_path)?, &filter, read.output)?);
            Ok(())
        }
        Command::Service { command: ServiceCommand::Get { name, read } } => {
            anyhow::ensure!(name.split('/').count() == 2, "{name:?}: give the Service as NAMESPACE/NAME (e.g. default/kubia)");
            match service::get(&open_pins(&read.pin_path)?, &name, read.output)? {
                Some(rows) => {
                    print!("{rows}");
                    Ok(())
                }
                None => anyhow::bail!(
                    "Service {name} is not programmed on this node: check its spelling (`lb service list`), and `lb status` for skipped or left-out Services"
                ),
            }
        }
        Command::Stats(args) => {
            print!("{}", stats::show(&open_pins(&args.pin_path)?, args.output)?);
            Ok(())
        }
        Command::Status(args) => {
            print!("{}", status::show(&open_pins(&args.pin_path)?, args.output)?);
            Ok(())
        }
        Command::Explain(args) => {
            let packet: Vec<String> =
                [Some(args.proto), Some(args.src), Some(args.arrow), args.dst].into_iter().flatten().collect();
            let req = explain::Request::parse(&packet, args.from, args.iface, &args.tcp_flags)?;
            let ex = explain::explain(&open_pins(&args.read.pin_path)?, &req)?;
            print!("{}", explain::render_explanation(&ex, args.read.output));
            Ok(())
        }
        Command::Monitor(args) => {
            let req = monitor::Request {
                types: args.types,
                reason: args.reason,
                service: args.service,
                addr: args.addr,
                flow_sample: args.flow_sample,
                rate_per_cpu: args.rate,
                count: args.count,
                duration: args.duration,
                output: args.read.output,
            };
            monitor::run(&open_pins(&args.read.pin_path)?, &req)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The pinned maps of a running agent, with errors that say what to check.
fn open_pins(pin_path: &Path) -> anyhow::Result<PinnedMaps> {
    require_root("reading pinned maps")?;
    PinnedMaps::open(pin_path)
        .with_context(|| format!("no lb agent maps at {} (is the agent running? is --pin-path right?)", pin_path.display()))
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} needs root (CAP_BPF and CAP_SYS_ADMIN); run with sudo");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Completion scripts name the subcommands and their flags.
    #[test]
    fn completion_scripts_cover_the_commands() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in ["agent", "service", "status", "pin-path", "external-ip-cidrs"] {
                assert!(script.contains(word), "{shell}: {word} missing");
            }
        }
    }

    /// `lb --version` names the commit the binary was built from (as `lb_build_info` does).
    #[test]
    fn the_version_names_the_commit() {
        let v = Cli::command().render_version();
        assert!(v.starts_with(&format!("lb {} (commit ", env!("CARGO_PKG_VERSION"))), "{v}");
        assert!(!env!("LB_GIT_COMMIT").is_empty());
    }
}
