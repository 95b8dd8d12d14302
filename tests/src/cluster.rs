//! The two-node cluster of the end-to-end tests: the dual-stack netns topology with three kubia
//! pods (kubia-a and kubia-a2 on node-0, kubia-b on node-1) serving the test workload, a client
//! pod on node-0, two hosts outside ("outside" and "stranger"), a test cgroup for node-0's
//! socket-level translation, and one `lb` agent per node (pod interfaces, XDP on `u0`, both node
//! addresses) reading the given manifests. Everything goes on drop.

use anyhow::Context as _;

use crate::{
    agent::{Agent, AgentOptions},
    bins,
    cgroup::Cgroup,
    topology::{CurlOutcome, Topology, curl_outcome},
};

pub struct TwoNodeCluster {
    // Agents first: they stop before the namespaces go.
    pub agents: Vec<Agent>,
    pub cgroup: Cgroup,
    pub topo: Topology,
}

impl TwoNodeCluster {
    /// Builds the cluster; `routes` are (destination, via) routes added on the outside hosts
    /// (e.g. a LoadBalancer IP routed to node-0); `manifests` gets the topology (for pod
    /// addresses) and returns (file name, YAML) pairs; the agents are ready when their services
    /// table has `ready_frontend`.
    pub fn start(
        routes: &[(&str, &str)],
        manifests: impl Fn(&Topology) -> Vec<(String, String)>,
        ready_frontend: &str,
    ) -> anyhow::Result<Self> {
        let mut topo = Topology::new(2)?;
        for (node, name) in [(0, "kubia-a"), (0, "kubia-a2"), (1, "kubia-b")] {
            let i = topo.add_pod(node, name)?;
            topo.start_workload(i, &bins::testpod())?;
        }
        topo.add_pod(0, "client")?;
        topo.add_client("outside")?;
        topo.add_client("stranger")?;
        for c in &topo.clients {
            for (dest, via) in routes {
                let family = if dest.contains(':') { "-6" } else { "-4" };
                c.ns.ip(&[family, "route", "add", dest, "via", via]).context("route on an outside host")?;
            }
        }
        let cgroup = Cgroup::new()?;
        let files = manifests(&topo);
        let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (n.as_str(), y.as_str())).collect();
        let mut agents = Vec::new();
        for k in 0..2 {
            let node = &topo.nodes[k];
            let opts = AgentOptions {
                node_ns: &node.ns,
                node_name: &node.name,
                node_ips: vec![node.underlay_ip.to_string(), node.underlay_ip6.to_string()],
                interfaces: topo.pod_interfaces(k),
                external: vec!["u0".to_owned()],
                cgroup: (k == 0).then(|| cgroup.path().to_owned()),
                // The documentation prefixes the tests use as externalIPs (none by default).
                extra_args: vec!["--external-ip-cidrs".into(), "203.0.113.0/24,2001:db8::/32".into()],
                source: None,
            };
            let mut agent = Agent::start(&bins::lb(), &opts, &files)?;
            agent.wait_services("the services to be programmed", |rows| rows.iter().any(|r| r["frontend"] == ready_frontend))?;
            agents.push(agent);
        }
        Ok(Self { agents, cgroup, topo })
    }

    /// Agent logs and datapath counters of both nodes, for failure messages.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("{}\ncounters: {}", a.log_text(), a.dump("stats").map(|v| v.to_string()).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// curl from outside host `i`.
    pub fn from_client(&self, i: usize, url: &str) -> CurlOutcome {
        curl_outcome(&self.topo.clients[i].ns, url, 3).expect("curl")
    }

    /// curl from pod `name`.
    pub fn from_pod(&self, name: &str, url: &str) -> CurlOutcome {
        curl_outcome(&self.topo.pod(name).ns, url, 3).expect("curl")
    }

    /// The answer, or a panic with both agents' logs and counters.
    pub fn body(&self, outcome: CurlOutcome) -> String {
        match outcome {
            CurlOutcome::Body(b) => b.trim().to_owned(),
            other => panic!("expected an answer, got {other:?}\nagent logs:\n{}", self.logs()),
        }
    }
}

/// An IPv4 EndpointSlice of Service `service` (namespace default) in YAML, ending in `---`: one
/// TCP port `port` (named `port_name`, or unnamed), and `endpoints` as (address, node name),
/// each ready.
pub fn slice_yaml(service: &str, port_name: Option<&str>, port: u16, endpoints: &[(&str, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, node)| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: {node}\n"))
        .collect();
    let name = port_name.map(|n| format!("name: {n}, ")).unwrap_or_default();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{{name}port: {port}, protocol: TCP}}]\nendpoints:\n{eps}---\n"
    )
}
