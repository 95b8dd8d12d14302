//! API defaulting (the API server's defaulting of Services and EndpointSlices): what the real API server fills in
//! before it stores a Service (type, sessionAffinity and its timeout, protocols, targetPort,
//! traffic policies, ClusterIP and NodePort allocation, clusterIPs, ipFamilies, status) or an
//! EndpointSlice (`endpoints`/`ports` served as null when absent, port protocol and name).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Where the next ClusterIP and NodePort are allocated from.
#[derive(Debug)]
pub(super) struct Allocator {
    next_cluster_ip: u32,
    next_node_port: u16,
}

impl Default for Allocator {
    /// ClusterIPs from 10.96.0.10 up, NodePorts from the start of 30000–32767.
    fn default() -> Self {
        Self { next_cluster_ip: u32::from(Ipv4Addr::new(10, 96, 0, 10)), next_node_port: 30_000 }
    }
}

impl Allocator {
    /// The next NodePort not in `used`, wrapping around in 30000–32767.
    fn node_port(&mut self, used: &[u64]) -> u16 {
        loop {
            let p = self.next_node_port;
            self.next_node_port = if p >= 32_767 { 30_000 } else { p + 1 };
            if !used.contains(&u64::from(p)) {
                return p;
            }
        }
    }

    /// The next ClusterIP not in `used`.
    fn cluster_ip(&mut self, used: &[String]) -> String {
        loop {
            let ip = Ipv4Addr::from(self.next_cluster_ip).to_string();
            self.next_cluster_ip += 1;
            if !used.contains(&ip) {
                return ip;
            }
        }
    }
}

/// Defaults a Service being written over `old` (its stored version, if any, whose ClusterIP and
/// NodePorts it keeps). `services` are the stored Services, whose addresses and ports are taken.
pub(super) fn default_service<'a>(
    obj: &mut Value,
    old: Option<&Value>,
    services: impl Iterator<Item = &'a Value>,
    alloc: &mut Allocator,
) {
    let old_spec = old.and_then(|o| o.get("spec"));
    // What the stored Services hold, gathered only when something is to be allocated (a walk
    // over every Service per write made filling 100,000 of them quadratic).
    let mut services = Some(services);
    let (mut used_ips, mut used_ports) = (Vec::new(), Vec::new());
    let mut gather = |used_ips: &mut Vec<String>, used_ports: &mut Vec<u64>| {
        for v in services.take().into_iter().flatten() {
            used_ips.extend(v["spec"]["clusterIP"].as_str().map(str::to_owned));
            used_ports.extend(v["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["nodePort"].as_u64()));
            used_ports.extend(v["spec"]["healthCheckNodePort"].as_u64());
        }
    };
    let Some(o) = obj.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    let ty = s.entry("type").or_insert_with(|| "ClusterIP".into()).as_str().unwrap_or("ClusterIP").to_owned();
    let affinity = s.entry("sessionAffinity").or_insert_with(|| "None".into()).as_str().unwrap_or("None").to_owned();
    if affinity == "ClientIP" {
        let cfg = s.entry("sessionAffinityConfig").or_insert_with(|| json!({}));
        if cfg["clientIP"]["timeoutSeconds"].is_null() {
            cfg["clientIP"]["timeoutSeconds"] = 10_800.into();
        }
    } else {
        s.remove("sessionAffinityConfig");
    }
    let node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer")
        && !(ty == "LoadBalancer" && s.get("allocateLoadBalancerNodePorts") == Some(&Value::Bool(false)));
    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("protocol").is_none_or(Value::is_null) {
                p.insert("protocol".into(), "TCP".into());
            }
            if p.get("targetPort").is_none_or(Value::is_null)
                && let Some(port) = p.get("port").cloned()
            {
                p.insert("targetPort".into(), port);
            }
            if node_ports && p.get("nodePort").is_none_or(|n| n.is_null() || n == 0) {
                let same = |q: &&Value| q["port"] == p["port"] && q["protocol"] == p["protocol"];
                let previous = old_spec
                    .and_then(|os| os["ports"].as_array())
                    .and_then(|ps| ps.iter().find(same))
                    .and_then(|q| q["nodePort"].as_u64());
                let np = previous.unwrap_or_else(|| {
                    gather(&mut used_ips, &mut used_ports);
                    u64::from(alloc.node_port(&used_ports))
                });
                p.insert("nodePort".into(), np.into());
            }
        }
    }
    if ty == "ExternalName" {
        return;
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        s.entry("externalTrafficPolicy").or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        s.entry("allocateLoadBalancerNodePorts").or_insert_with(|| true.into());
        if s.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
            && s.get("healthCheckNodePort").is_none_or(|n| n.is_null() || n == 0)
        {
            let np = old_spec.and_then(|os| os["healthCheckNodePort"].as_u64()).unwrap_or_else(|| {
                gather(&mut used_ips, &mut used_ports);
                u64::from(alloc.node_port(&used_ports))
            });
            s.insert("healthCheckNodePort".into(), np.into());
        }
    }
    s.entry("internalTrafficPolicy").or_insert_with(|| "Cluster".into());
    if s.get("clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
        let ip = match old_spec.and_then(|os| os["clusterIP"].as_str()) {
            Some(ip) if !ip.is_empty() => ip.to_owned(),
            _ => {
                gather(&mut used_ips, &mut used_ports);
                alloc.cluster_ip(&used_ips)
            }
        };
        s.insert("clusterIP".into(), ip.into());
    }
    let cluster_ip = s["clusterIP"].as_str().unwrap_or_default().to_owned();
    if s.get("clusterIPs").is_none_or(Value::is_null) {
        s.insert("clusterIPs".into(), json!([cluster_ip]));
    }
    if s.get("ipFamilies").is_none_or(Value::is_null) {
        let family = if cluster_ip.contains(':') { "IPv6" } else { "IPv4" };
        s.insert("ipFamilies".into(), json!([family]));
    }
    s.entry("ipFamilyPolicy").or_insert_with(|| "SingleStack".into());
    o.entry("status").or_insert_with(|| json!({"loadBalancer": {}}));
}

/// Defaults an EndpointSlice.
pub(super) fn default_endpoint_slice(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    // `endpoints` and `ports` have no omitempty: a nil slice is served as null.
    o.entry("endpoints").or_insert(Value::Null);
    let ports = o.entry("ports").or_insert(Value::Null);
    for p in ports.as_array_mut().into_iter().flatten().filter_map(Value::as_object_mut) {
        if p.get("protocol").is_none_or(Value::is_null) {
            p.insert("protocol".into(), "TCP".into());
        }
        if p.get("name").is_none_or(Value::is_null) {
            p.insert("name".into(), "".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::apiserver::{ApiServer, client::svc};

    #[test]
    fn apply_defaults_like_the_api_server_and_no_op_updates_keep_the_version() {
        let server = ApiServer::start().unwrap();
        let rv = server.apply(svc("a", json!({}))).unwrap();
        let a = server.get("Service", "default", "a").unwrap();
        let spec = &a["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert_eq!(spec["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        let ip = spec["clusterIP"].as_str().unwrap().to_owned();
        assert!(ip.starts_with("10.96."), "{ip}");
        assert_eq!(spec["clusterIPs"], json!([ip]));
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(a["status"], json!({"loadBalancer": {}}));
        assert!(a["metadata"]["uid"].is_string() && a["metadata"]["creationTimestamp"].is_string());
        assert_eq!(server.apply(svc("a", json!({}))).unwrap(), rv, "no-op update");
        // An update keeps the allocated ClusterIP and NodePorts.
        let mut lb = svc("a", json!({}));
        lb["spec"]["type"] = "LoadBalancer".into();
        lb["spec"]["externalTrafficPolicy"] = "Local".into();
        lb["spec"]["sessionAffinity"] = "ClientIP".into();
        server.apply(lb.clone()).unwrap();
        let a = server.get("Service", "default", "a").unwrap();
        assert_eq!(a["spec"]["clusterIP"], ip.as_str());
        let np = a["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30_000..=32_767).contains(&np));
        assert!(a["spec"]["healthCheckNodePort"].as_u64().is_some());
        assert_eq!(a["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10_800);
        assert_eq!(a["spec"]["allocateLoadBalancerNodePorts"], true);
        lb["metadata"]["labels"] = json!({"new": "label"});
        server.apply(lb).unwrap();
        let a = server.get("Service", "default", "a").unwrap();
        assert_eq!(a["spec"]["ports"][0]["nodePort"].as_u64(), Some(np));
        let mut headless = svc("h", json!({}));
        headless["spec"]["clusterIP"] = "None".into();
        server.apply(headless).unwrap();
        assert_eq!(server.get("Service", "default", "h").unwrap()["spec"]["clusterIPs"], json!(["None"]));
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "a"}},
            "addressType": "IPv4", "ports": [{"port": 8080}]});
        server.apply(slice).unwrap();
        let s = server.get("EndpointSlice", "default", "s").unwrap();
        assert_eq!(s["ports"], json!([{"port": 8080, "protocol": "TCP", "name": ""}]));
        assert_eq!(s["endpoints"], Value::Null);
        assert!(server.apply(json!({"kind": "Pod", "metadata": {"name": "p"}})).is_err());
        assert!(server.delete("Service", "default", "nope").is_err());
    }
}
