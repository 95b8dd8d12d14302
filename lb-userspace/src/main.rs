//! `lb`: the eBPF Kubernetes Service load balancer's agent and CLI (see `lb --help`).

fn main() -> anyhow::Result<()> {
    lb_userspace::heap::configure();
    lb_userspace::cli::main()
}
