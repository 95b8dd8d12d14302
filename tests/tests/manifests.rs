//! The install manifests in `deploy/`, checked without a cluster (unprivileged).
//!
//! Every YAML document in `deploy/*.yaml` (but `kustomization.yaml`) is parsed into its
//! k8s-openapi type, chosen by `kind`; an unknown kind fails. Each document must also serialize
//! back to exactly what was written: the API server silently drops a field its type does not
//! have, so a misspelled `mountPropogation` would otherwise pass here and be lost in the cluster.
//! Then the properties the agent relies on are asserted: read-only RBAC on exactly Services,
//! EndpointSlices and Nodes; a privileged host-network DaemonSet on every node with the host's
//! bpffs mounted bidirectionally; probes on /healthz; loopback-only listeners.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    serde::{Deserialize as _, Serialize, de::DeserializeOwned},
};
use serde_yaml::Value;

const NAMESPACE: &str = "lb-system";
const NAME: &str = "lb";
const CONFIG_MAP: &str = "lb-config";
const BPFFS: &str = "/sys/fs/bpf";
const HEALTH_PORT: i32 = 10256;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `deploy/*.yaml` and `*.yml`, sorted, with or without `kustomization.yaml`.
fn yaml_files(with_kustomization: bool) -> Vec<PathBuf> {
    let dir = deploy_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("reading deploy/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| with_kustomization || file_name(p) != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// Every object in `deploy/`, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn load() -> Manifests {
    let files = yaml_files(false);
    assert!(!files.is_empty(), "no manifests in {}", deploy_dir().display());
    let mut m = Manifests::default();
    for file in files {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let at = format!("deploy/{}: document {}", file_name(&file), i + 1);
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{at}: {e}"));
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or_else(|| panic!("{at}: no `kind`")).to_owned();
            match kind.as_str() {
                Namespace::KIND => m.namespaces.push(typed(&at, value)),
                ServiceAccount::KIND => m.service_accounts.push(typed(&at, value)),
                ClusterRole::KIND => m.cluster_roles.push(typed(&at, value)),
                ClusterRoleBinding::KIND => m.cluster_role_bindings.push(typed(&at, value)),
                ConfigMap::KIND => m.config_maps.push(typed(&at, value)),
                DaemonSet::KIND => m.daemon_sets.push(typed(&at, value)),
                other => panic!(
                    "{at}: unexpected kind {other:?}; deploy/ holds Namespace, ServiceAccount, \
                     ClusterRole, ClusterRoleBinding, ConfigMap and DaemonSet (teach \
                     tests/tests/manifests.rs the new kind and what must hold for it)"
                ),
            }
        }
    }
    m
}

/// Parses one document into `T`, checking its `apiVersion` and that nothing was dropped.
fn typed<T: Resource + Serialize + DeserializeOwned>(at: &str, value: Value) -> T {
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    assert_eq!(api_version, Some(T::API_VERSION), "{at}: apiVersion of a {}", T::KIND);
    let object: T = serde_yaml::from_value(value.clone()).unwrap_or_else(|e| panic!("{at}: not a valid {}: {e}", T::KIND));
    let back = serde_yaml::to_value(&object).expect("serializing a k8s-openapi object");
    if let Some(difference) = first_difference("", &value, &back) {
        panic!(
            "{at}: {difference}; the {} type has no such field, so the API server would drop it \
             (misspelled or misplaced?)",
            T::KIND
        );
    }
    object
}

/// Where `written` and `parsed` (the same document after a trip through its type) differ.
fn first_difference(path: &str, written: &Value, parsed: &Value) -> Option<String> {
    match (written, parsed) {
        (Value::Mapping(w), Value::Mapping(p)) => {
            for (key, wv) in w {
                let key_text = key.as_str().map_or_else(|| format!("{key:?}"), str::to_owned);
                let here = format!("{path}.{key_text}");
                match p.get(key) {
                    None => return Some(format!("`{here}` is lost when parsed")),
                    Some(pv) => {
                        if let Some(d) = first_difference(&here, wv, pv) {
                            return Some(d);
                        }
                    }
                }
            }
            p.keys().find(|k| !w.contains_key(*k)).map(|k| format!("`{path}.{k:?}` appears when parsed"))
        }
        (Value::Sequence(w), Value::Sequence(p)) if w.len() == p.len() => {
            w.iter().zip(p).enumerate().find_map(|(i, (wv, pv))| first_difference(&format!("{path}[{i}]"), wv, pv))
        }
        _ if written == parsed => None,
        _ => Some(format!("`{path}` is {written:?} but parses as {parsed:?}")),
    }
}

fn only<'a, T>(what: &str, items: &'a [T]) -> &'a T {
    assert_eq!(items.len(), 1, "deploy/ must hold exactly one {what}");
    &items[0]
}

fn daemon_set(m: &Manifests) -> &DaemonSet {
    only("DaemonSet", &m.daemon_sets)
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("DaemonSet has a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "the lb pod runs one container, the agent");
    &spec.containers[0]
}

/// The agent's command line as the kubelet runs it: `$(VAR)` replaced from the container's `env`
/// (literal values, the ConfigMap's keys, `fieldRef`s as `<fieldRef:PATH>`). Unlike the kubelet,
/// which leaves an unknown reference as it is, an unresolvable reference fails.
fn resolved_command(m: &Manifests) -> Vec<String> {
    let container = agent_container(daemon_set(m));
    let data = only("ConfigMap", &m.config_maps).data.clone().unwrap_or_default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for env in container.env.iter().flatten() {
        let value = if let Some(v) = &env.value {
            Some(v.clone())
        } else if let Some(from) = &env.value_from {
            if let Some(r) = &from.config_map_key_ref {
                assert_eq!(r.name, CONFIG_MAP, "env {}: ConfigMap name", env.name);
                let v = data.get(&r.key).cloned();
                assert!(
                    v.is_some() || r.optional == Some(true),
                    "env {}: key {:?} is not in the {CONFIG_MAP} ConfigMap (the pod would not start)",
                    env.name,
                    r.key
                );
                v
            } else if let Some(r) = &from.field_ref {
                Some(format!("<fieldRef:{}>", r.field_path))
            } else {
                panic!("env {}: unexpected valueFrom", env.name);
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            vars.insert(env.name.clone(), v);
        }
    }
    let mut argv: Vec<String> = container.command.iter().flatten().cloned().collect();
    argv.extend(container.args.iter().flatten().cloned());
    argv.iter().map(|arg| expand(arg, &vars)).collect()
}

fn expand(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$'); // `$$` is a literal `$`
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            let end = inner.find(')').unwrap_or_else(|| panic!("unclosed $( in {arg:?}"));
            let name = &inner[..end];
            let value = vars.get(name).unwrap_or_else(|| panic!("command argument {arg:?} uses $({name}), not in env"));
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of `--name VALUE` or `--name=VALUE`.
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == name { argv.get(i + 1).map(String::as_str) } else { a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) }
    })
}

fn http_get(what: &str, probe: Option<&Probe>) -> (String, i32, String) {
    let get = probe.and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("the agent needs an httpGet {what}"));
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => panic!("{what}: port {name:?}: use the number"),
    };
    (get.host.clone().unwrap_or_default(), port, get.path.clone().unwrap_or_default())
}

#[test]
fn every_document_parses_into_its_type_by_kind() {
    let m = load();
    only("Namespace", &m.namespaces);
    only("ServiceAccount", &m.service_accounts);
    only("ClusterRole", &m.cluster_roles);
    only("ClusterRoleBinding", &m.cluster_role_bindings);
    only("ConfigMap", &m.config_maps);
    only("DaemonSet", &m.daemon_sets);
}

#[test]
fn kustomization_lists_every_manifest() {
    let path = deploy_dir().join("kustomization.yaml");
    let text = fs::read_to_string(&path).expect("reading deploy/kustomization.yaml");
    let k: Value = serde_yaml::from_str(&text).expect("deploy/kustomization.yaml is YAML");
    assert_eq!(k.get("kind").and_then(Value::as_str), Some("Kustomization"));
    let listed: BTreeSet<String> = k
        .get("resources")
        .and_then(Value::as_sequence)
        .expect("kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path").to_owned())
        .collect();
    let present: BTreeSet<String> = yaml_files(false).iter().map(|p| file_name(p)).collect();
    assert_eq!(listed, present, "`kubectl apply -k deploy/` must apply every manifest in deploy/ and nothing else");
}

/// Every image the DaemonSet runs is pinned by digest through the kustomization (a tag can be
/// moved; a digest cannot), except the agent's own `lb`, which has no published digest until a
/// release pins it with `kustomize edit set image lb=REGISTRY/lb@sha256:...`.
#[test]
fn kustomization_pins_every_third_party_image_by_digest() {
    let text = fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("reading deploy/kustomization.yaml");
    let k: Value = serde_yaml::from_str(&text).expect("deploy/kustomization.yaml is YAML");
    let pinned: BTreeMap<String, String> = k
        .get("images")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i.get("name")?.as_str()?.to_owned(), i.get("digest")?.as_str()?.to_owned())))
        .collect();
    let m = load();
    let spec = pod_spec(daemon_set(&m));
    let images: Vec<String> =
        spec.init_containers.iter().flatten().chain(&spec.containers).filter_map(|c| c.image.clone()).collect();
    assert!(images.len() >= 2, "{images:?}");
    for image in images {
        let name = image.split(['@', ':']).next().unwrap_or_default().to_owned();
        if name == "lb" {
            continue;
        }
        let digest = pinned.get(&name).unwrap_or_else(|| panic!("{image}: not pinned by digest in kustomization.yaml"));
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{name}: {digest} is not a sha256 digest"));
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{name}: {digest}");
    }
}

#[test]
fn namespaced_objects_are_in_lb_system() {
    let m = load();
    let ns = only("Namespace", &m.namespaces);
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("privileged"),
        "the agent is privileged: its namespace must allow it under Pod Security Admission"
    );
    for (kind, meta) in [
        ("ServiceAccount", &only("ServiceAccount", &m.service_accounts).metadata),
        ("ConfigMap", &only("ConfigMap", &m.config_maps).metadata),
        ("DaemonSet", &daemon_set(&m).metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{kind} namespace");
    }
    assert_eq!(only("ConfigMap", &m.config_maps).metadata.name.as_deref(), Some(CONFIG_MAP));
}

#[test]
fn cluster_role_grants_exactly_the_calls_the_agent_makes() {
    let m = load();
    let role = only("ClusterRole", &m.cluster_roles);
    assert_eq!(role.metadata.name.as_deref(), Some(NAME));
    assert!(role.aggregation_rule.is_none(), "an aggregated role can grow: no aggregationRule");
    let mut granted = BTreeSet::new();
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "rule {i}: only apiGroups/resources/verbs");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for s in [group, resource, verb] {
                        assert!(!s.contains('*'), "rule {i}: no wildcards ({s:?})");
                    }
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> =
        lb_tests::agent::AGENT_API_CALLS.iter().map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned())).collect();
    assert_eq!(
        granted, expected,
        "the agent may list/watch services, nodes and endpointslices and create events.k8s.io events, and nothing else"
    );
}

#[test]
fn binding_grants_the_role_to_the_agent_service_account() {
    let m = load();
    let sa = only("ServiceAccount", &m.service_accounts);
    assert_eq!(sa.metadata.name.as_deref(), Some(NAME));
    let binding = only("ClusterRoleBinding", &m.cluster_role_bindings);
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, NAME);
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "the role is bound to the agent only");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, NAME);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        pod_spec(daemon_set(&m)).service_account_name.as_deref(),
        Some(NAME),
        "the DaemonSet runs as that service account"
    );
}

#[test]
fn daemon_set_runs_a_privileged_host_network_agent_on_every_node() {
    let m = load();
    let ds = daemon_set(&m);
    assert_eq!(ds.metadata.name.as_deref(), Some(NAME));
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert!(!selector.is_empty(), "selector.matchLabels");
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "the pod template carries selector label {k}");
    }

    let pod = pod_spec(ds);
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert!(pod.termination_grace_period_seconds.is_some(), "terminationGracePeriodSeconds");
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "a toleration `operator: Exists` (no key, no effect) so it runs on every node"
    );

    let update = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.as_ref().expect("updateStrategy.rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)), "maxUnavailable: 1");
    assert!(
        matches!(rolling.max_surge, None | Some(IntOrString::Int(0))),
        "no surge: two agents on one node would share its pins and health port"
    );

    let agent = agent_container(ds);
    let security = agent.security_context.as_ref().expect("securityContext");
    assert_eq!(security.privileged, Some(true), "privileged");
    let caps: BTreeSet<&str> =
        security.capabilities.as_ref().and_then(|c| c.add.as_ref()).into_iter().flatten().map(String::as_str).collect();
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"] {
        assert!(caps.contains(cap), "capabilities.add lists {cap}");
    }

    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"), "NODE_NAME from the downward API");

    let resources = agent.resources.as_ref().expect("resources");
    let requests = resources.requests.clone().unwrap_or_default();
    for r in ["cpu", "memory"] {
        assert!(requests.contains_key(r), "resources.requests.{r}");
    }
    let limits = resources.limits.clone().unwrap_or_default();
    assert!(limits.contains_key("memory"), "resources.limits.memory");
}

#[test]
fn agent_command_reads_the_api_server() {
    let m = load();
    let argv = resolved_command(&m);
    assert!(
        argv.first().is_some_and(|c| c == "lb" || c.ends_with("/lb")) && argv.get(1).is_some_and(|a| a == "agent"),
        "the container runs `lb agent`: {argv:?}"
    );
    assert_eq!(flag(&argv, "--source"), Some("kube"), "--source kube: {argv:?}");
}

#[test]
fn daemon_set_uses_the_host_bpffs_bidirectionally_and_the_host_cgroup() {
    let m = load();
    let pod = pod_spec(daemon_set(&m));
    let host_path_volume = |path: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == path))
            .map(|v| v.name.clone())
            .unwrap_or_else(|| panic!("a hostPath volume for {path}"))
    };
    let mounts = agent_container(daemon_set(&m)).volume_mounts.clone().unwrap_or_default();
    let bpffs = host_path_volume(BPFFS);
    let mount = mounts.iter().find(|v| v.name == bpffs).expect("the bpffs volume is mounted");
    assert_eq!(mount.mount_propagation.as_deref(), Some("Bidirectional"), "bpffs mountPropagation");
    let argv = resolved_command(&m);
    let pin_path = flag(&argv, "--pin-path").expect("--pin-path");
    assert!(
        Path::new(pin_path).starts_with(&mount.mount_path) && pin_path != mount.mount_path,
        "--pin-path {pin_path} must be a directory inside the host bpffs mount {}",
        mount.mount_path
    );
    let cgroup = host_path_volume("/sys/fs/cgroup");
    let cgroup_mount = mounts.iter().find(|v| v.name == cgroup).expect("the host cgroup volume is mounted");
    assert_eq!(
        flag(&argv, "--cgroup"),
        Some(cgroup_mount.mount_path.as_str()),
        "--cgroup is the host's cgroup hierarchy (the container's own is only its cgroup)"
    );
}

#[test]
fn probes_hit_the_agent_health_listener_readiness_on_healthz_liveness_on_livez() {
    let m = load();
    let agent = agent_container(daemon_set(&m));
    let argv = resolved_command(&m);
    let health: SocketAddr = flag(&argv, "--health-addr").expect("--health-addr").parse().expect("--health-addr is IP:PORT");
    // Liveness on /livez: /healthz is 503 on a node being deleted (point 50), and restarting
    // the agent there would loop.
    for (what, probe, want) in [
        ("readinessProbe", agent.readiness_probe.as_ref(), "/healthz"),
        ("livenessProbe", agent.liveness_probe.as_ref(), "/livez"),
    ] {
        let (host, port, path) = http_get(what, probe);
        assert_eq!(path, want, "{what} path");
        assert_eq!(port, HEALTH_PORT, "{what} port");
        assert_eq!(host, "127.0.0.1", "{what} host: the listener is on the node's loopback");
        assert_eq!(
            format!("{host}:{port}").parse::<SocketAddr>().ok(),
            Some(health),
            "{what} must reach the agent's --health-addr"
        );
    }
}

#[test]
fn no_listener_binds_every_address() {
    let m = load();
    let argv = resolved_command(&m);
    for name in ["--metrics-addr", "--health-addr"] {
        let addr: SocketAddr = flag(&argv, name)
            .unwrap_or_else(|| panic!("{name} is set"))
            .parse()
            .unwrap_or_else(|e| panic!("{name} is IP:PORT: {e}"));
        assert!(
            addr.ip().is_loopback(),
            "{name} {addr}: the pod shares the node's network namespace, so anything but loopback \
             is exposed on the node"
        );
    }
    let data = only("ConfigMap", &m.config_maps).data.clone().unwrap_or_default();
    let agent = agent_container(daemon_set(&m));
    let probe_hosts = [agent.readiness_probe.as_ref(), agent.liveness_probe.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.http_get.as_ref().and_then(|g| g.host.clone()));
    for value in argv.iter().cloned().chain(data.into_values()).chain(probe_hosts) {
        assert!(!value.contains("0.0.0.0") && !value.contains("[::]"), "{value:?}: nothing listens on every address");
    }
}

/// Kubernetes versions the manifests are validated against: the oldest we support and the
/// newest the validator knows.
const SCHEMA_VERSIONS: [&str; 3] = ["1.30", "1.33", "1.37"];

/// `python3 -m kubernetes_validate --strict -k VERSION FILES...` (installed by `cargo xtask
/// setup`): `Some((passed, output))`, or `None` when it is not installed.
fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Option<(bool, String)> {
    let out = std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .args(files)
        .output()
        .ok()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if text.contains("No module named kubernetes_validate") {
        return None;
    }
    Some((out.status.success(), text))
}

/// Every manifest is valid for the API server of three Kubernetes versions, checked by a real
/// schema validator in strict mode (unknown fields are errors), and a manifest with a misspelled
/// field is caught by the same check.
#[test]
fn manifests_validate_against_the_kubernetes_schemas_of_three_versions() {
    let files = yaml_files(false);
    for version in SCHEMA_VERSIONS {
        let Some((ok, out)) = kubernetes_validate(version, &files) else {
            assert!(std::env::var("CI").is_err(), "kubernetes-validate is missing (cargo xtask setup installs it)");
            eprintln!("SKIPPED: kubernetes-validate is not installed; run cargo xtask setup");
            return;
        };
        assert!(ok, "the manifests are invalid for Kubernetes {version}:\n{out}");
        assert!(out.contains("daemonset/lb") && out.contains("clusterrole/lb"), "{out}");
    }
    // The check can fail: a misspelled field in a copy of the DaemonSet.
    let daemonset = fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    let broken = daemonset.replacen("mountPropagation:", "mountPropogation:", 1);
    assert_ne!(broken, daemonset);
    let path = std::env::temp_dir().join(format!("lb-manifest-check-{}.yaml", std::process::id()));
    fs::write(&path, broken).unwrap();
    let (ok, out) = kubernetes_validate(SCHEMA_VERSIONS[0], std::slice::from_ref(&path)).unwrap();
    let _ = fs::remove_file(&path);
    assert!(!ok, "a misspelled field passed:\n{out}");
}
