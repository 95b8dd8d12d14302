//! `cargo xtask demo`: the seed's kubia walk-through on a network-namespace mini-cluster. A node
//! namespace, three kubia pods serving HTTP on 8080 (`You've hit kubia-N`), a client pod; the
//! agent programs the kubia Service from real manifests; the client curls the ClusterIP.
//! Everything is removed on exit, Ctrl-C included.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};
use lb_tests::{
    agent::{Agent, AgentOptions},
    topology::Topology,
};

use crate::Bins;

const KUBIA: &str = include_str!("../demo/kubia.yaml");
const VIP: &str = "10.96.0.10";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

pub fn run(bins: &Bins, requests: u32) -> anyhow::Result<()> {
    // Ctrl-C and SIGTERM only set a flag: the demo stops at the next step and every guard
    // (agent, pods, namespaces, pins) is dropped on the way out.
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = walk_through(bins, requests);
    println!("demo: removed the namespaces, the agent and its pinned maps");
    result
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn walk_through(bins: &Bins, requests: u32) -> anyhow::Result<()> {
    step("Building the mini-cluster: node-0, three kubia pods, one client pod (network namespaces)");
    let mut topo = Topology::new(1)?;
    for name in ["kubia-1", "kubia-2", "kubia-3"] {
        let i = topo.add_pod(0, name)?;
        topo.start_workload(i, &bins.testpod)?;
        println!("   pod {name:<8} {} (serves `You've hit {name}` on :8080)", topo.pods[i].ip);
        interrupted()?;
    }
    let client = topo.add_pod(0, "client")?;
    println!("   pod client   {}", topo.pods[client].ip);

    step("Starting the lb agent on node-0 with the kubia Service (port 80 -> targetPort 8080) and its EndpointSlice");
    let opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    let mut agent = Agent::start(&bins.lb, &opts, &[("kubia.yaml", KUBIA)])?;
    agent.wait_services("the kubia Service to be programmed", |rows| {
        rows.iter().any(|r| r["frontend"] == format!("{VIP}:80") && r["slots"].as_u64() > Some(0))
    })?;
    interrupted()?;
    let out = Command::new(&bins.lb)
        .args(["maps", "dump", "services", "--pin-path"])
        .arg(&agent.pin_path)
        .output()
        .context("lb maps dump services")?;
    println!("   $ lb maps dump services");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }

    step(&format!("kubectl exec client -- curl -s http://{VIP}   ({requests} times)"));
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=requests {
        interrupted()?;
        let body = topo.curl(client, &format!("http://{VIP}/"), 5)?;
        let body = body.trim().to_owned();
        println!("   {n:>3}: {body}");
        let pod = body.strip_prefix("You've hit ").unwrap_or(&body).to_owned();
        *hits.entry(pod).or_default() += 1;
    }

    step("Which pods answered");
    for (pod, n) in &hits {
        println!("   {pod}: {n} of {requests}");
    }
    if hits.len() < 3 && requests >= 12 {
        println!("   (not all three pods answered this time: selection is random per connection)");
    }
    Ok(())
}
