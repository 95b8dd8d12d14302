//! Reliability scenario 2 (issue 7): the parsers of untrusted input, fuzzed and property-tested
//! (unprivileged, no kernel).
//!
//! - `source_file::parse_into` on random and mutated YAML: never panics; every error names the
//!   file and a document of it.
//! - `compile` on generated, often malformed Services and EndpointSlices (ports 0, negative and
//!   above 65535, unknown protocols, invalid IPs and CIDRs, duplicate ports and names, random
//!   label sets, endpoints with random conditions): never panics; every invalid Service ends in
//!   `rejected` with a reason naming a field; every valid one is programmed, and identically
//!   whatever invalid neighbours it has; nothing programmed is out of range.
//! - `plan::map_state` + `plan::diff`: at every prefix of every op sequence (including a restart
//!   that adopts the maps), every frontend resolves: each slot of its selection tables names a
//!   backend that exists, and every member backend exists.
//!
//! Cases per property: proptest's default (256) unless noted; `PROPTEST_CASES` overrides.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Service;

use crate::model::slice::Slice;
use lb_common::{MAGLEV_CHUNK, MaglevKey, MemberKey, SVC_F_ADDR_MARKER, SVC_F_MAGLEV, SVC_F_SOURCE_RANGES, SelectKey};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{
    compile::compile,
    maps::{MapState, Op, diff},
    model::{
        Cidr, DesiredState, Endpoint, EndpointSet, Family, Frontend, FrontendKind, NodeContext, Protocol, Selection,
        ServicePortName, ServicePortState,
    },
    plan::{PlanConfig, PlanMemory, map_state},
    source::{
        ClusterObjects,
        file::{SourceError, parse_into},
    },
};

/// `cases` cases (`PROPTEST_CASES` overrides), no regression files written into the tree.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases);
    // CI runs a fixed seed so that a run is reproducible; PROPTEST_RNG_SEED=random (or a
    // number) explores further, as RELIABILITY.md describes.
    let rng_seed = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(_) => ProptestConfig::default().rng_seed,
        Err(_) => proptest::test_runner::RngSeed::Fixed(0x005e_ed1b),
    };
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..ProptestConfig::default() }
}

// =============================================================================================
// source_file::parse_into
// =============================================================================================

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: kubia
  namespace: default
  labels: {app: kubia}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
    nodePort: 30080
  sessionAffinity: ClientIP
---
apiVersion: discovery.k8s.io/v1
kind: Slice
metadata:
  name: kubia-abc
  labels:
    kubernetes.io/service-name: kubia
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["10.244.1.2"]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns}
  spec:
    clusterIP: 10.96.0.20
    ports: [{name: dns, port: 53, protocol: UDP}]
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  status:
    addresses: [{type: InternalIP, address: 192.168.77.1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"#;

/// Characters YAML gives meaning to, and some that it does not.
const YAML_CHARS: &[char] = &[
    ':', '-', ' ', ' ', '\n', '\t', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`', ',', '?', '0',
    '9', 'a', 'k', '.', '\\', '~', '\u{feff}', 'é', '\0', '\r',
];

/// Snippets that stress serde_yaml and the typed deserializers.
const SNIPPETS: &[&str] = &[
    "\n---\n",
    "\n...\n",
    "kind: Service\n",
    "kind: List\nitems: [{kind: Service}]\n",
    "kind: EndpointSlice\n",
    "kind: 7\n",
    "&a [*a]",
    "*undefined",
    "!!binary AAAA",
    "!!int x",
    "port: 99999999999999999999",
    "port: -1",
    "port: \"80\"",
    "port: 0x50",
    "port: .inf",
    "clusterIP: null",
    "metadata: []",
    "spec: ~",
    "ports: {}",
    "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    "? complex key\n: value\n",
    "%YAML 1.2\n---\n",
    "<<: *base\n",
    "- - - - - - - - - -\n",
    "\"unterminated",
    "key: 'it''s'\n",
    "items: !!null\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Delete `len` characters at a position (fraction of the text).
    Delete(f64, usize),
    /// Insert characters.
    Insert(f64, String),
    /// Insert a snippet.
    Snippet(f64, usize),
    /// Duplicate or drop a whole line.
    DuplicateLine(f64),
    DropLine(f64),
    /// Swap two lines (breaks indentation).
    SwapLines(f64, f64),
    /// Cut the text.
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = 0.0..1.0f64;
    prop_oneof![
        (pos.clone(), 1..20usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (pos.clone(), prop::collection::vec(prop::sample::select(YAML_CHARS), 1..8))
            .prop_map(|(p, cs)| Mutation::Insert(p, cs.into_iter().collect())),
        (pos.clone(), 0..SNIPPETS.len()).prop_map(|(p, i)| Mutation::Snippet(p, i)),
        pos.clone().prop_map(Mutation::DuplicateLine),
        pos.clone().prop_map(Mutation::DropLine),
        (pos.clone(), pos.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        pos.prop_map(Mutation::Truncate),
    ]
}

/// The char boundary nearest below a fraction of `s`.
fn at(s: &str, frac: f64) -> usize {
    let mut i = ((s.len() as f64) * frac) as usize;
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply_mutation(text: &mut String, m: &Mutation) {
    match m {
        Mutation::Delete(p, n) => {
            let a = at(text, *p);
            let mut b = (a + n).min(text.len());
            while !text.is_char_boundary(b) {
                b += 1;
            }
            text.replace_range(a..b, "");
        }
        Mutation::Insert(p, s) => {
            let a = at(text, *p);
            text.insert_str(a, s);
        }
        Mutation::Snippet(p, i) => {
            let a = at(text, *p);
            text.insert_str(a, SNIPPETS[*i]);
        }
        Mutation::DuplicateLine(p) | Mutation::DropLine(p) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = ((lines.len() as f64) * p) as usize % lines.len();
            if matches!(m, Mutation::DropLine(_)) {
                lines.remove(i);
            } else {
                lines.insert(i, lines[i]);
            }
            *text = lines.join("\n");
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let n = lines.len();
            lines.swap(((n as f64) * a) as usize % n, ((n as f64) * b) as usize % n);
            *text = lines.join("\n");
        }
        Mutation::Truncate(p) => {
            let a = at(text, *p);
            text.truncate(a);
        }
    }
}

/// Upper bound of the documents a text can hold: separators and directives-end markers.
fn max_documents(text: &str) -> usize {
    1 + text.matches("---").count() + text.matches("...").count()
}

/// The checks every parse result must pass: an error names the file, and a document of it.
fn check_parse_result(path: &Path, text: &str, r: Result<(), SourceError>) -> Result<(), TestCaseError> {
    let Err(e) = r else { return Ok(()) };
    let msg = e.to_string();
    match &e {
        SourceError::Invalid { path: p, doc, field, message } => {
            prop_assert_eq!(p.as_path(), path, "the error names another file: {}", msg);
            prop_assert!(*doc >= 1, "document numbers are 1-based: {}", msg);
            prop_assert!(
                *doc <= max_documents(text),
                "document {} of a text with at most {} documents: {}",
                doc,
                max_documents(text),
                msg
            );
            prop_assert!(!field.is_empty(), "the error names no field: {}", msg);
            prop_assert!(!message.is_empty(), "the error has no message: {}", msg);
            let prefix = format!("{}: document {doc}: ", path.display());
            prop_assert!(msg.starts_with(&prefix), "{:?} does not start with {:?}", msg, prefix);
        }
        SourceError::Read { .. } => prop_assert!(false, "parse_into never reads files: {}", msg),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Mutations of a valid multi-document manifest (Service, EndpointSlice, a List, another
    /// kind): parse_into returns, and its errors name the file and a document.
    #[test]
    fn parse_into_never_panics_on_mutated_manifests(muts in prop::collection::vec(mutation(), 1..6)) {
        let mut text = MANIFEST.to_owned();
        for m in &muts {
            apply_mutation(&mut text, m);
        }
        let path = Path::new("manifests/fuzz.yaml");
        let r = parse_into(path, &text, &mut ClusterObjects::default());
        check_parse_result(path, &text, r)?;
    }

    /// Arbitrary text, and text made of YAML's special characters.
    #[test]
    fn parse_into_never_panics_on_arbitrary_text(
        text in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop::sample::select(YAML_CHARS), 0..200).prop_map(|cs| cs.into_iter().collect::<String>()),
            prop::collection::vec(prop::sample::select(SNIPPETS), 0..12).prop_map(|s| s.concat()),
        ]
    ) {
        let path = Path::new("x.yml");
        let r = parse_into(path, &text, &mut ClusterObjects::default());
        check_parse_result(path, &text, r)?;
    }
}

/// Mutated manifests also go through `compile`: whatever parsed must compile without panicking.
#[test]
fn mutated_manifests_that_parse_also_compile() {
    let mut runner = proptest::test_runner::TestRunner::new(config(256));
    runner
        .run(&prop::collection::vec(mutation(), 1..4), |muts| {
            let mut text = MANIFEST.to_owned();
            for m in &muts {
                apply_mutation(&mut text, m);
            }
            let mut o = ClusterObjects::default();
            if parse_into(Path::new("m.yaml"), &text, &mut o).is_ok() {
                let node = NodeContext {
                    external_ip_cidrs: None,
                    lb_ip_cidrs: None,
                    name: "node-a".into(),
                    addresses: vec!["192.168.77.1".parse().unwrap()],
                    zone: None,
                };
                let _ = compile(&o.services, &o.slices, &node, Family::V4);
                let _ = compile(&o.services, &o.slices, &node, Family::V6);
            }
            Ok(())
        })
        .unwrap();
}

/// An invalid object inside a `List` must be reported with the document the List is in (the
/// README: "an error that names the file, the document and the field").
#[test]
fn an_invalid_list_item_names_the_document_of_the_list() {
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n---\n\
                apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec:\n    clusterIP: 10.96.0.1\n    ports: [{port: eighty}]\n";
    let err = parse_into(Path::new("l.yaml"), text, &mut ClusterObjects::default()).unwrap_err().to_string();
    assert!(err.starts_with("l.yaml: document 3: "), "the List is document 3: {err}");
    assert!(err.contains("items[0]"), "the field should say which item: {err}");
}

// =============================================================================================
// compile
// =============================================================================================

/// IP strings: (text, parses as IPv4 the Kubernetes way, parses as IPv6).
const IPS: &[(&str, bool, bool)] = &[
    ("10.96.0.10", true, false),
    ("10.96.0.11", true, false),
    ("010.096.000.012", true, false), // point 61: leading zeros are decimal
    (" 10.96.0.13 ", true, false),
    ("192.168.77.1", true, false),
    ("10.96.0.256", false, false),
    ("10.96.0", false, false),
    ("10.96.0.1.2", false, false),
    ("0x0a.0.0.1", false, false),
    ("1.2.3.-4", false, false),
    ("abc", false, false),
    ("1111.1.1.1", false, false),
    ("fd00::10", false, true),
    // IPv4-mapped IPv6 is IPv4 (Go's `net.IP.To4()` succeeds; in the maps it is the same 16
    // bytes as 10.96.0.1).
    ("::ffff:10.96.0.1", true, false),
    ("fd00::zz", false, false),
    ("", false, false),
];

/// Source range strings: (text, valid, IPv4).
const CIDRS: &[(&str, bool, bool)] = &[
    ("10.0.0.0/8", true, true),
    (" 192.168.77.0/24 ", true, true),
    ("0.0.0.0/0", true, true),
    ("1.2.3.4/32", true, true),
    ("1.2.3.4/33", false, true),
    ("1.2.3.4", false, true),
    ("1.2.3.4/-1", false, true),
    ("1.2.3.4/x", false, true),
    ("fd00::/8", true, false),
    ("fd00::/129", false, false),
    ("/8", false, false),
];

const PORT_NAMES: &[Option<&str>] = &[None, Some(""), Some("http"), Some("dns"), Some("HTTP")];
const PROTOCOLS: &[Option<&str>] = &[None, Some("TCP"), Some("UDP"), Some("SCTP"), Some("tcp"), Some("ICMP"), Some("")];
const TYPES: &[Option<&str>] =
    &[None, Some("ClusterIP"), Some("NodePort"), Some("LoadBalancer"), Some("ExternalName"), Some("Ingress")];
const POLICIES: &[Option<&str>] = &[None, Some("Cluster"), Some("Local"), Some("local")];
const AFFINITIES: &[Option<&str>] = &[None, Some("None"), Some("ClientIP"), Some("Sticky")];
const SELECTIONS: &[Option<&str>] = &[None, Some("maglev"), Some("random"), Some("ring")];
const IP_MODES: &[Option<&str>] = &[None, Some("VIP"), Some("Proxy")];
const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => 1..=65535i32,
        1 => prop::sample::select(vec![0, -1, 1, 53, 80, 65535, 65536, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
}

#[derive(Clone, Debug)]
struct PortGen {
    name: Option<&'static str>,
    protocol: Option<&'static str>,
    port: i32,
    node_port: Option<i32>,
}

fn port_gen() -> impl Strategy<Value = PortGen> {
    (
        prop::sample::select(PORT_NAMES),
        prop::sample::select(PROTOCOLS),
        port_number(),
        prop::option::of(prop_oneof![Just(0), 30000..32768i32, port_number()]),
    )
        .prop_map(|(name, protocol, port, node_port)| PortGen { name, protocol, port, node_port })
}

#[derive(Clone, Debug)]
struct SvcGen {
    name: &'static str,
    namespace: Option<&'static str>,
    /// Bits: 1 = service-proxy-name, 2 = headless, 4 = an unrelated label.
    labels: u8,
    has_spec: bool,
    type_: Option<&'static str>,
    /// Index into IPS, or IPS.len() = "None", IPS.len() + 1 = absent.
    cluster_ip: usize,
    external_ips: Vec<usize>,
    lb_ingress: Vec<(usize, Option<&'static str>)>,
    source_ranges: Vec<usize>,
    etp: Option<&'static str>,
    itp: Option<&'static str>,
    affinity: Option<&'static str>,
    timeout: Option<i32>,
    selection: Option<&'static str>,
    health_check_node_port: Option<i32>,
    ports: Vec<PortGen>,
}

fn svc_gen() -> impl Strategy<Value = SvcGen> {
    let head = (
        prop::sample::select(NAMES),
        prop::sample::select(vec![None, Some("default"), Some("kube-system")]),
        prop_oneof![6 => Just(0u8), 1 => 0u8..8],
        prop::bool::weighted(0.97),
        prop::sample::select(TYPES),
        prop_oneof![8 => 0..5usize, 3 => 0..IPS.len() + 2],
        prop::collection::vec(prop_oneof![3 => 0..5usize, 1 => 0..IPS.len()], 0..3),
        prop::collection::vec((prop_oneof![3 => 0..5usize, 1 => 0..IPS.len()], prop::sample::select(IP_MODES)), 0..3),
    );
    let tail = (
        prop::collection::vec(prop_oneof![3 => 0..4usize, 1 => 0..CIDRS.len()], 0..3),
        prop::sample::select(POLICIES),
        prop::sample::select(POLICIES),
        prop::sample::select(AFFINITIES),
        prop::option::of(prop::sample::select(vec![0, -1, 1, 2, 10_800, 86_400, 86_401, i32::MAX])),
        prop::sample::select(SELECTIONS),
        prop::option::of(prop_oneof![Just(0), 30000..32768i32, port_number()]),
        prop::collection::vec(port_gen(), 0..4),
    );
    (head, tail).prop_map(
        |(
            (name, namespace, labels, has_spec, type_, cluster_ip, external_ips, lb_ingress),
            (source_ranges, etp, itp, affinity, timeout, selection, health_check_node_port, ports),
        )| SvcGen {
            name,
            namespace,
            labels,
            has_spec,
            type_,
            cluster_ip,
            external_ips,
            lb_ingress,
            source_ranges,
            etp,
            itp,
            affinity,
            timeout,
            selection,
            health_check_node_port,
            ports,
        },
    )
}

fn insert_opt(m: &mut serde_json::Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

impl SvcGen {
    fn ns(&self) -> &'static str {
        self.namespace.unwrap_or("default")
    }

    fn to_service(&self) -> Service {
        let mut labels = serde_json::Map::new();
        if self.labels & 1 != 0 {
            labels.insert(crate::model::kubernetes::LABEL_SERVICE_PROXY_NAME.into(), json!("other-proxy"));
        }
        if self.labels & 2 != 0 {
            labels.insert(crate::model::kubernetes::LABEL_HEADLESS.into(), json!(""));
        }
        if self.labels & 4 != 0 {
            labels.insert("app".into(), json!(self.name));
        }
        let mut meta = serde_json::Map::new();
        meta.insert("name".into(), json!(self.name));
        insert_opt(&mut meta, "namespace", self.namespace);
        meta.insert("labels".into(), Value::Object(labels));
        if let Some(s) = self.selection {
            meta.insert("annotations".into(), json!({ crate::model::kubernetes::ANNOTATION_SELECTION: s }));
        }
        let mut obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": meta});
        if !self.has_spec {
            return serde_json::from_value(obj).unwrap();
        }
        let mut spec = serde_json::Map::new();
        insert_opt(&mut spec, "type", self.type_);
        match self.cluster_ip {
            i if i < IPS.len() => {
                spec.insert("clusterIP".into(), json!(IPS[i].0));
            }
            i if i == IPS.len() => {
                spec.insert("clusterIP".into(), json!("None"));
            }
            _ => {}
        }
        if !self.external_ips.is_empty() {
            spec.insert("externalIPs".into(), json!(self.external_ips.iter().map(|i| IPS[*i].0).collect::<Vec<_>>()));
        }
        if !self.source_ranges.is_empty() {
            spec.insert(
                "loadBalancerSourceRanges".into(),
                json!(self.source_ranges.iter().map(|i| CIDRS[*i].0).collect::<Vec<_>>()),
            );
        }
        insert_opt(&mut spec, "externalTrafficPolicy", self.etp);
        insert_opt(&mut spec, "internalTrafficPolicy", self.itp);
        insert_opt(&mut spec, "sessionAffinity", self.affinity);
        if let Some(t) = self.timeout {
            spec.insert("sessionAffinityConfig".into(), json!({"clientIP": {"timeoutSeconds": t}}));
        }
        if let Some(h) = self.health_check_node_port {
            spec.insert("healthCheckNodePort".into(), json!(h));
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut m = serde_json::Map::new();
                insert_opt(&mut m, "name", p.name);
                insert_opt(&mut m, "protocol", p.protocol);
                m.insert("port".into(), json!(p.port));
                m.insert("targetPort".into(), json!(8080));
                if let Some(n) = p.node_port {
                    m.insert("nodePort".into(), json!(n));
                }
                Value::Object(m)
            })
            .collect();
        spec.insert("ports".into(), json!(ports));
        obj["spec"] = Value::Object(spec);
        if !self.lb_ingress.is_empty() {
            let ing: Vec<Value> = self
                .lb_ingress
                .iter()
                .map(|(i, mode)| {
                    let mut m = serde_json::Map::new();
                    m.insert("ip".into(), json!(IPS[*i].0));
                    insert_opt(&mut m, "ipMode", *mode);
                    Value::Object(m)
                })
                .collect();
            obj["status"] = json!({"loadBalancer": {"ingress": ing}});
        }
        serde_json::from_value(obj).expect("generated Service deserializes")
    }

    /// The oracle: what `compile` must do with this Service for IPv4, from the documented rules
    /// (semantics points 1-5, 11, 24, 46-49, 61), written independently of compile.rs.
    fn expect(&self) -> Expect {
        if self.labels & 3 != 0 {
            return Expect::Skip; // point 4
        }
        if !self.has_spec {
            return Expect::Invalid;
        }
        if self.type_ == Some("ExternalName") {
            return Expect::Skip; // point 2
        }
        let cip = match self.cluster_ip {
            i if i >= IPS.len() => return Expect::Skip, // headless (point 1)
            i => IPS[i],
        };
        if cip.0.is_empty() {
            return Expect::Skip;
        }
        if !cip.1 && !cip.2 {
            return Expect::Invalid;
        }
        if !cip.1 {
            return Expect::Skip; // another family (point 5)
        }
        let lb = self.type_ == Some("LoadBalancer");
        if !matches!(self.type_, None | Some("ClusterIP" | "NodePort" | "LoadBalancer")) {
            return Expect::Invalid;
        }
        if self.external_ips.iter().any(|i| !IPS[*i].1 && !IPS[*i].2) {
            return Expect::Invalid;
        }
        if lb
            && self
                .lb_ingress
                .iter()
                .any(|(i, mode)| !IPS[*i].0.is_empty() && matches!(mode, None | Some("VIP")) && !IPS[*i].1 && !IPS[*i].2)
        {
            return Expect::Invalid;
        }
        match self.affinity {
            None | Some("None") => {}
            Some("ClientIP") => {
                if self.timeout.is_some_and(|t| !(1..=86_400).contains(&t)) {
                    return Expect::Invalid;
                }
            }
            Some(_) => return Expect::Invalid,
        }
        if !matches!(self.selection, None | Some("maglev" | "random")) {
            return Expect::Invalid;
        }
        if lb && self.source_ranges.iter().any(|i| !CIDRS[*i].1) {
            return Expect::Invalid;
        }
        // Point 49: only LoadBalancer + externalTrafficPolicy Local has a health check port.
        if lb && self.etp == Some("Local") && self.health_check_node_port.is_some_and(|h| h != 0 && !(1..=65535).contains(&h)) {
            return Expect::Invalid;
        }
        if self.ports.is_empty() {
            return Expect::Invalid;
        }
        let mut seen_ports = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        for p in &self.ports {
            let proto = match p.protocol {
                None | Some("TCP") => "TCP",
                Some("UDP") => "UDP",
                Some("SCTP") => "SCTP",
                _ => return Expect::Invalid,
            };
            if !(1..=65535).contains(&p.port)
                || !seen_ports.insert((p.port, proto))
                || !seen_names.insert((p.name.unwrap_or(""), proto))
            {
                return Expect::Invalid;
            }
            if p.node_port.is_some_and(|n| n != 0 && !(1..=65535).contains(&n)) {
                return Expect::Invalid;
            }
        }
        Expect::Valid
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Not ours by design: neither programmed nor rejected.
    Skip,
    Invalid,
    Valid,
}

#[derive(Clone, Debug)]
struct EpGen {
    /// Indices into EP_ADDRS (addresses[0] is the one used).
    addresses: Vec<usize>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: Option<&'static str>,
    zone: Option<&'static str>,
}

const EP_ADDRS: &[&str] = &["10.244.1.2", "10.244.1.3", "10.244.2.2", "010.244.001.004", "fd00::1", "10.244.1.256", "pod-a", ""];

#[derive(Clone, Debug)]
struct SliceGen {
    service: &'static str,
    namespace: Option<&'static str>,
    /// Bits: 1 = no service-name label, 2 = service-proxy-name, 4 = headless.
    labels: u8,
    address_type: &'static str,
    ports: Vec<(Option<&'static str>, Option<&'static str>, Option<i32>)>,
    endpoints: Vec<EpGen>,
}

fn slice_gen() -> impl Strategy<Value = SliceGen> {
    let ep = (
        prop::collection::vec(0..EP_ADDRS.len(), 0..3),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::sample::select(vec![None, Some("node-a"), Some("node-b")]),
        prop::sample::select(vec![None, Some("zone-a"), Some("zone-b")]),
    )
        .prop_map(|(addresses, ready, serving, terminating, node, zone)| EpGen {
            addresses,
            ready,
            serving,
            terminating,
            node,
            zone,
        });
    (
        prop::sample::select(NAMES),
        prop::sample::select(vec![None, Some("default"), Some("kube-system")]),
        prop_oneof![6 => Just(0u8), 1 => 0u8..8],
        prop::sample::select(vec!["IPv4", "IPv4", "IPv6", "FQDN", "ipv4"]),
        prop::collection::vec(
            (prop::sample::select(PORT_NAMES), prop::sample::select(PROTOCOLS), prop::option::of(port_number())),
            0..3,
        ),
        prop::collection::vec(ep, 0..5),
    )
        .prop_map(|(service, namespace, labels, address_type, ports, endpoints)| SliceGen {
            service,
            namespace,
            labels,
            address_type,
            ports,
            endpoints,
        })
}

impl SliceGen {
    fn to_slice(&self, n: usize) -> Slice {
        let mut labels = serde_json::Map::new();
        if self.labels & 1 == 0 {
            labels.insert(crate::model::kubernetes::LABEL_SERVICE_NAME.into(), json!(self.service));
        }
        if self.labels & 2 != 0 {
            labels.insert(crate::model::kubernetes::LABEL_SERVICE_PROXY_NAME.into(), json!("x"));
        }
        if self.labels & 4 != 0 {
            labels.insert(crate::model::kubernetes::LABEL_HEADLESS.into(), json!(""));
        }
        let mut meta = serde_json::Map::new();
        meta.insert("name".into(), json!(format!("{}-{n}", self.service)));
        insert_opt(&mut meta, "namespace", self.namespace);
        meta.insert("labels".into(), Value::Object(labels));
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, proto, port)| {
                let mut m = serde_json::Map::new();
                insert_opt(&mut m, "name", *name);
                insert_opt(&mut m, "protocol", *proto);
                if let Some(p) = port {
                    m.insert("port".into(), json!(p));
                }
                Value::Object(m)
            })
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut cond = serde_json::Map::new();
                for (k, v) in [("ready", e.ready), ("serving", e.serving), ("terminating", e.terminating)] {
                    if let Some(v) = v {
                        cond.insert(k.into(), json!(v));
                    }
                }
                let mut m = serde_json::Map::new();
                m.insert("addresses".into(), json!(e.addresses.iter().map(|i| EP_ADDRS[*i]).collect::<Vec<_>>()));
                m.insert("conditions".into(), Value::Object(cond));
                insert_opt(&mut m, "nodeName", e.node);
                if let Some(z) = e.zone {
                    m.insert("hints".into(), json!({"forZones": [{"name": z}]}));
                }
                Value::Object(m)
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta, "addressType": self.address_type, "ports": ports, "endpoints": endpoints,
        }))
        .expect("generated EndpointSlice deserializes")
    }
}

fn node() -> NodeContext {
    NodeContext {
        external_ip_cidrs: None,
        lb_ip_cidrs: None,
        name: "node-a".into(),
        addresses: vec!["192.168.77.1".parse().unwrap(), "fd00::77:1".parse().unwrap()],
        zone: Some("zone-a".into()),
    }
}

/// Services with unique (namespace, name): the first of each name wins.
fn unique(svcs: Vec<SvcGen>) -> Vec<SvcGen> {
    let mut seen = BTreeSet::new();
    svcs.into_iter().filter(|s| seen.insert((s.ns(), s.name))).collect()
}

/// The ServicePorts `state` holds for one Service.
fn ports_of<'a>(state: &'a DesiredState, ns: &str, name: &str) -> BTreeMap<&'a ServicePortName, &'a ServicePortState> {
    state.services.iter().filter(|(k, _)| k.namespace == ns && k.name == name).map(|(k, v)| (k, &**v)).collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// Every Service is accounted for: invalid → `rejected` with a reason naming a field, valid →
    /// programmed with its ClusterIP on every port, by-design skips → neither. Never a panic.
    #[test]
    fn compile_accounts_for_every_service(svcs in prop::collection::vec(svc_gen(), 0..8), slices in prop::collection::vec(slice_gen(), 0..8)) {
        let svcs = unique(svcs);
        let services: Vec<Service> = svcs.iter().map(SvcGen::to_service).collect();
        let slices: Vec<Slice> = slices.iter().enumerate().map(|(i, s)| s.to_slice(i)).collect();
        let state = compile(&services, &slices, &node(), Family::V4);
        let state6 = compile(&services, &slices, &node(), Family::V6);
        check_programmed_ranges(&state6)?;
        // Both families (what the agent programs): each ServicePort as its family's compile has
        // it, except that a Service rejected in either family is rejected, and absent, in both.
        let (both, _) = crate::compile::compile_all(&services, &slices, &node());
        check_programmed_ranges(&both)?;
        let rejected_any: BTreeSet<&str> = state.rejected.iter().chain(&state6.rejected).map(|r| r.object.as_str()).collect();
        prop_assert_eq!(&both.rejected.iter().map(|r| r.object.as_str()).collect::<BTreeSet<_>>(), &rejected_any);
        for (k, v) in &both.services {
            let single = if k.family == Family::V4 { &state } else { &state6 };
            prop_assert_eq!(single.services.get(k), Some(v), "{} differs from its family's compile", k);
        }
        for st in [&state, &state6] {
            for k in st.services.keys() {
                let object = format!("Service {}/{}", k.namespace, k.name);
                prop_assert_eq!(both.services.contains_key(k), !rejected_any.contains(object.as_str()), "{}", k);
            }
        }
        for s in &svcs {
            let object = format!("Service {}/{}", s.ns(), s.name);
            let rejected: Vec<_> = state.rejected.iter().filter(|r| r.object == object).collect();
            let programmed = ports_of(&state, s.ns(), s.name);
            match s.expect() {
                Expect::Skip => {
                    prop_assert!(rejected.is_empty(), "{} is skipped by design, not invalid: {:?}", object, rejected);
                    prop_assert!(programmed.is_empty(), "{} must not be programmed", object);
                }
                Expect::Invalid => {
                    prop_assert_eq!(rejected.len(), 1, "{} is invalid and must be rejected once: {:?} (programmed {:?})", &object, &state.rejected, programmed.keys().collect::<Vec<_>>());
                    let reason = rejected[0].reason.to_string();
                    prop_assert!(
                        ["spec", "metadata", "status"].iter().any(|f| reason.starts_with(f)),
                        "the reason must name the field: {:?}", reason
                    );
                    prop_assert!(programmed.is_empty(), "an invalid Service must not be programmed: {}", object);
                }
                Expect::Valid => {
                    prop_assert!(rejected.is_empty(), "{} is valid but was rejected: {:?}", object, rejected);
                    prop_assert_eq!(programmed.len(), s.ports.len(), "{} has {} ports, {} programmed", &object, s.ports.len(), programmed.len());
                    let cip = crate::model::parse_ip_sloppy(IPS[s.cluster_ip].0).unwrap();
                    for p in &s.ports {
                        let proto = Protocol::from_k8s(p.protocol).unwrap();
                        let sp = programmed.iter().find(|(k, _)| k.port_name == p.name.unwrap_or("") && k.protocol == proto).map(|(_, v)| *v);
                        prop_assert!(sp.is_some(), "{}: port {:?} not programmed", object, p.name);
                        let sp = sp.unwrap();
                        prop_assert!(
                            sp.frontends.iter().any(|f| f.addr == cip && i32::from(f.port) == p.port && f.kind == FrontendKind::ClusterIp),
                            "{}: no ClusterIP frontend {}:{}", object, cip, p.port
                        );
                    }
                }
            }
        }
        // No rejection without an invalid Service behind it.
        for r in &state.rejected {
            prop_assert!(
                svcs.iter().any(|s| format!("Service {}/{}", s.ns(), s.name) == r.object && s.expect() == Expect::Invalid),
                "unexpected rejection {:?}", r
            );
        }
        check_programmed_ranges(&state)?;
    }

    /// Valid Services are programmed identically whatever invalid (or skipped) neighbours they
    /// have.
    #[test]
    fn valid_services_are_unaffected_by_invalid_neighbours(svcs in prop::collection::vec(svc_gen(), 1..10), slices in prop::collection::vec(slice_gen(), 0..8)) {
        let svcs = unique(svcs);
        let slices: Vec<Slice> = slices.iter().enumerate().map(|(i, s)| s.to_slice(i)).collect();
        let all: Vec<Service> = svcs.iter().map(SvcGen::to_service).collect();
        let valid: Vec<Service> = svcs.iter().filter(|s| s.expect() == Expect::Valid).map(SvcGen::to_service).collect();
        let alone = compile(&valid, &slices, &node(), Family::V4);
        let together = compile(&all, &slices, &node(), Family::V4);
        for s in svcs.iter().filter(|s| s.expect() == Expect::Valid) {
            prop_assert_eq!(ports_of(&alone, s.ns(), s.name), ports_of(&together, s.ns(), s.name), "{}/{} changed with neighbours", s.ns(), s.name);
        }
        prop_assert!(alone.rejected.is_empty());
    }
}

/// Nothing out of range reaches the maps: ports non-zero, endpoints of the family, sets sorted
/// and without duplicates, affinity within bounds.
fn check_programmed_ranges(state: &DesiredState) -> Result<(), TestCaseError> {
    for (spn, sp) in &state.services {
        prop_assert!(!sp.frontends.is_empty(), "{}: no frontend", spn);
        for f in &sp.frontends {
            prop_assert!(f.port != 0 && spn.family.matches(&f.addr), "{}: frontend {:?}", spn, f);
        }
        for set in [&sp.internal.endpoints, &sp.external.endpoints, &sp.cluster] {
            for e in set.iter() {
                prop_assert!(e.port != 0 && spn.family.matches(&e.addr), "{}: endpoint {:?}", spn, e);
            }
            prop_assert!(set.windows(2).all(|w| w[0] < w[1]), "{}: endpoints unsorted or duplicated: {:?}", spn, set);
            let keys: BTreeSet<_> = set.iter().map(|e| (e.addr, e.port)).collect();
            prop_assert_eq!(keys.len(), set.len(), "{}: an endpoint appears twice: {:?}", spn, set);
        }
        if let Some(t) = sp.affinity_timeout_s {
            prop_assert!((1..=86_400).contains(&t));
        }
    }
    Ok(())
}

// =============================================================================================
// plan: map_state + diff, every prefix resolves
// =============================================================================================

#[derive(Clone, Debug)]
struct SpGen {
    name: u8,
    protocol: Protocol,
    /// (kind, address index, port index).
    frontends: Vec<(u8, u8, u8)>,
    /// Endpoint pool indices with (local, terminating).
    endpoints: Vec<(u8, bool, bool)>,
    itp_local: bool,
    etp_local: bool,
    maglev: bool,
    affinity: Option<u32>,
    ranges: Vec<u8>,
}

fn sp_gen() -> impl Strategy<Value = SpGen> {
    (
        0u8..6,
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
        prop::collection::vec((0u8..4, 0u8..4, 0u8..3), 1..4),
        prop::collection::vec((0u8..10, any::<bool>(), prop::bool::weighted(0.2)), 0..8),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::option::of(1u32..100),
        prop::collection::vec(0u8..3, 0..3),
    )
        .prop_map(|(name, protocol, frontends, endpoints, itp_local, etp_local, maglev, affinity, ranges)| SpGen {
            name,
            protocol,
            frontends,
            endpoints,
            itp_local,
            etp_local,
            maglev,
            affinity,
            ranges,
        })
}

fn build_desired(sps: &[SpGen]) -> DesiredState {
    let mut d = DesiredState::default();
    for g in sps {
        let spn = ServicePortName {
            namespace: "ns".into(),
            name: format!("s{}", g.name),
            port_name: String::new(),
            protocol: g.protocol,
            family: Family::V4,
        };
        let mut frontends: Vec<Frontend> = g
            .frontends
            .iter()
            .map(|(k, a, p)| {
                let port = [80, 443, 53][usize::from(*p)];
                match k % 4 {
                    0 => Frontend {
                        addr: format!("10.96.0.{}", 10 + g.name).parse().unwrap(),
                        port,
                        kind: FrontendKind::ClusterIp,
                    },
                    1 => Frontend {
                        addr: "192.168.77.1".parse().unwrap(),
                        port: 30000 + u16::from(g.name) * 10 + u16::from(*p),
                        kind: FrontendKind::NodePort,
                    },
                    2 => Frontend { addr: format!("203.0.113.{a}").parse().unwrap(), port, kind: FrontendKind::ExternalIp },
                    _ => Frontend { addr: format!("198.51.100.{a}").parse().unwrap(), port, kind: FrontendKind::LoadBalancer },
                }
            })
            .collect();
        frontends.sort();
        frontends.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
        let mut eps: Vec<Endpoint> = g
            .endpoints
            .iter()
            .map(|(i, local, terminating)| Endpoint {
                addr: format!("10.244.{}.{}", i % 3, 10 + i).parse().unwrap(),
                port: if g.protocol == Protocol::Udp { 9000 } else { 8080 },
                local: *local,
                terminating: *terminating,
                host: *local && i % 4 == 0,
            })
            .collect();
        eps.sort();
        eps.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
        // Terminating endpoints are selected only when nothing else is (point 19), but stay
        // serving (point 57): the serving set then differs from every selection table.
        let ready: Vec<Endpoint> = eps.iter().filter(|e| !e.terminating).cloned().collect();
        let cluster = if ready.is_empty() { eps.clone() } else { ready };
        let local: Vec<Endpoint> = cluster.iter().filter(|e| e.local).cloned().collect();
        let has_any = !eps.is_empty();
        let set = |local_only: bool| {
            if local_only {
                EndpointSet { endpoints: local.clone().into(), drop_if_empty: has_any }
            } else {
                EndpointSet { endpoints: cluster.clone().into(), drop_if_empty: false }
            }
        };
        let sp = ServicePortState {
            frontends,
            internal: set(g.itp_local),
            external: set(g.etp_local),
            cluster: cluster.clone().into(),
            serving: eps.clone().into(),
            external_snat: !g.etp_local,
            source_ranges: g
                .ranges
                .iter()
                .map(|r| match r {
                    0 => Cidr { addr: "10.0.0.0".parse().unwrap(), prefix: 8 },
                    1 => Cidr { addr: "192.168.77.0".parse().unwrap(), prefix: 26 },
                    _ => Cidr { addr: "0.0.0.0".parse().unwrap(), prefix: 0 },
                })
                .collect(),
            affinity_timeout_s: g.affinity,
            selection: if g.maglev { Selection::Maglev } else { Selection::Random },
            labels: if g.maglev { "app=x".into() } else { Default::default() },
        };
        d.services.insert(spn, Arc::new(sp));
    }
    d
}

/// What the datapath needs at any instant: every frontend resolves through its selection
/// tables to existing backends; every member backend exists; a frontend that restricts sources
/// has at least one range.
fn resolves(st: &MapState) -> Result<(), String> {
    for (k, v) in &st.services {
        if v.flags & SVC_F_ADDR_MARKER != 0 {
            continue;
        }
        let maglev = v.flags & SVC_F_MAGLEV != 0;
        for (select_id, slots) in [(v.select_id, v.slot_count), (v.cluster_select_id, v.cluster_slot_count)] {
            for slot in 0..slots {
                let id = if maglev {
                    let Some(chunk) = st.maglev.get(&MaglevKey { select_id, chunk: slot / MAGLEV_CHUNK }) else {
                        return Err(format!("frontend {k:?}: Maglev chunk {} of table {select_id} missing", slot / MAGLEV_CHUNK));
                    };
                    chunk.id((slot % MAGLEV_CHUNK) as usize)
                } else {
                    match st.select.get(&SelectKey { select_id, slot }) {
                        Some(id) => *id,
                        None => return Err(format!("frontend {k:?}: slot {slot} of table {select_id} missing")),
                    }
                };
                if !st.backends.contains_key(&id) {
                    return Err(format!("frontend {k:?}: slot {slot} of table {select_id} names missing backend {id}"));
                }
            }
        }
        if v.flags & SVC_F_SOURCE_RANGES != 0 && !st.source_ranges.keys().any(|r| r.data.frontend == k.addr) {
            return Err(format!("frontend {k:?} restricts sources but has no range (everything dropped)"));
        }
    }
    for MemberKey { select_id, backend_id } in st.members.keys() {
        if !st.backends.contains_key(backend_id) {
            return Err(format!("member {backend_id} of table {select_id} is not a backend"));
        }
    }
    Ok(())
}

/// The backends (address, port, protocol) each frontend can select, over both of its tables.
fn routes(st: &MapState) -> BTreeMap<lb_common::ServiceKey, BTreeSet<([u8; 16], u16, u8)>> {
    let mut out = BTreeMap::new();
    for (k, v) in &st.services {
        if v.flags & SVC_F_ADDR_MARKER != 0 {
            continue;
        }
        let maglev = v.flags & SVC_F_MAGLEV != 0;
        let mut set = BTreeSet::new();
        for (select_id, slots) in [(v.select_id, v.slot_count), (v.cluster_select_id, v.cluster_slot_count)] {
            for slot in 0..slots {
                let id = if maglev {
                    st.maglev
                        .get(&MaglevKey { select_id, chunk: slot / MAGLEV_CHUNK })
                        .map(|c| c.id((slot % MAGLEV_CHUNK) as usize))
                } else {
                    st.select.get(&SelectKey { select_id, slot }).copied()
                };
                if let Some(be) = id.and_then(|id| st.backends.get(&id)) {
                    set.insert((be.addr, be.port_be, be.proto));
                }
            }
        }
        out.insert(*k, set);
    }
    out
}

type Routes = BTreeMap<lb_common::ServiceKey, BTreeSet<([u8; 16], u16, u8)>>;

/// The backends of every ServicePort (by `svc_id`), over all its frontends.
fn svc_routes(st: &MapState) -> BTreeMap<u32, BTreeSet<([u8; 16], u16, u8)>> {
    let mut out: BTreeMap<u32, BTreeSet<_>> = BTreeMap::new();
    for (k, set) in routes(st) {
        out.entry(st.services[&k].svc_id).or_default().extend(set);
    }
    out
}

/// At an intermediate state, a frontend selects only backends that it, or its ServicePort,
/// selects before or after the change: never another Service's.
/// What a transition may select: per frontend and per ServicePort, before and after.
struct Allowed {
    rb: Routes,
    ra: Routes,
    sb: BTreeMap<u32, BTreeSet<([u8; 16], u16, u8)>>,
    sa: BTreeMap<u32, BTreeSet<([u8; 16], u16, u8)>>,
    /// ServicePorts (svc ids) between which a contested frontend address changes hands in this
    /// change: while it moves, each one's frontends may briefly select the other's backends
    /// (a misconfiguration the API server allows: two Services claiming one externalIP).
    contested: BTreeMap<u32, BTreeSet<u32>>,
    /// Per ServicePort, the backends its own tables (those its frontends pointed at before)
    /// hold after the change, unless a frontend of another ServicePort points at them then.
    /// A frontend being removed while its ServicePort's endpoints change selects these until
    /// its delete (the upserts come first): its own Service's new endpoints, even when the
    /// ServicePort keeps no frontend of its own after the change (they all went to another
    /// ServicePort claiming the same addresses).
    own_after: BTreeMap<u32, BTreeSet<([u8; 16], u16, u8)>>,
}

impl Allowed {
    fn new(before: &MapState, after: &MapState) -> Self {
        let mut contested: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (k, b) in &before.services {
            if let Some(a) = after.services.get(k).filter(|a| a.svc_id != b.svc_id) {
                contested.entry(b.svc_id).or_default().insert(a.svc_id);
                contested.entry(a.svc_id).or_default().insert(b.svc_id);
            }
        }
        Self {
            rb: routes(before),
            ra: routes(after),
            sb: svc_routes(before),
            sa: svc_routes(after),
            contested,
            own_after: own_tables_after(before, after),
        }
    }
}

/// See [`Allowed::own_after`].
fn own_tables_after(before: &MapState, after: &MapState) -> BTreeMap<u32, BTreeSet<([u8; 16], u16, u8)>> {
    let frontends = |st: &MapState| -> Vec<(u32, u32)> {
        st.services
            .values()
            .filter(|v| v.flags & SVC_F_ADDR_MARKER == 0)
            .flat_map(|v| [(v.svc_id, v.select_id), (v.svc_id, v.cluster_select_id)])
            .collect()
    };
    let owners_after: BTreeMap<u32, BTreeSet<u32>> = frontends(after).into_iter().fold(BTreeMap::new(), |mut m, (svc, t)| {
        m.entry(t).or_default().insert(svc);
        m
    });
    let mut out: BTreeMap<u32, BTreeSet<_>> = BTreeMap::new();
    for (svc, table) in frontends(before) {
        if owners_after.get(&table).is_some_and(|o| o.iter().any(|s| *s != svc)) {
            continue;
        }
        let ids = after
            .select
            .iter()
            .filter(|(k, _)| k.select_id == table)
            .map(|(_, id)| *id)
            .chain(after.maglev.iter().filter(|(k, _)| k.select_id == table).flat_map(|(_, c)| c.ids()));
        let set = out.entry(svc).or_default();
        set.extend(ids.filter_map(|id| after.backends.get(&id)).map(|be| (be.addr, be.port_be, be.proto)));
    }
    out
}

fn routes_within(now: &MapState, a: &Allowed) -> Result<(), String> {
    let Allowed { rb, ra, sb, sa, contested, own_after } = a;
    let empty = BTreeSet::new();
    let no_ids = BTreeSet::new();
    for (k, set) in routes(now) {
        let svc = now.services[&k].svc_id;
        let allowed = |x: &([u8; 16], u16, u8)| {
            [rb.get(&k), ra.get(&k), sb.get(&svc), sa.get(&svc), own_after.get(&svc)]
                .iter()
                .any(|s| s.unwrap_or(&empty).contains(x))
                || contested
                    .get(&svc)
                    .unwrap_or(&no_ids)
                    .iter()
                    .any(|o| [sb.get(o), sa.get(o)].iter().any(|s| s.unwrap_or(&empty).contains(x)))
        };
        if let Some(stray) = set.iter().find(|x| !allowed(x)) {
            return Err(format!(
                "frontend {}:{} selects backend {}:{}, which it selects neither before nor after the change",
                crate::maps::ip_from16(k.addr),
                u16::from_be(k.port_be),
                crate::maps::ip_from16(stray.0),
                u16::from_be(stray.1)
            ));
        }
    }
    Ok(())
}

fn plan_cfg() -> impl Strategy<Value = PlanConfig> {
    prop::sample::select(vec![None, Some(13), Some(67)]).prop_map(|m| PlanConfig { maglev_table_size: m })
}

proptest! {
    #![proptest_config(config(96))]

    /// A sequence of desired states applied as the agent does (one `PlanMemory`, sometimes a restart
    /// that adopts what is programmed): after every single op of every diff the maps resolve,
    /// and the last op leaves exactly the planned state.
    #[test]
    fn every_prefix_of_every_diff_resolves(
        steps in prop::collection::vec((prop::collection::vec(sp_gen(), 0..6), prop::bool::weighted(0.25)), 1..6),
        // Maglev tables of 1, 2 and 4 chunks (the default 1021 slots only makes this slower).
        cfg in prop::sample::select(vec![13u32, 67, 251]).prop_map(|m| PlanConfig { maglev_table_size: Some(m) }),
    ) {
        let mut ids = PlanMemory::default();
        let mut cur = MapState::default();
        let mut writes = 0usize;
        for (i, (sps, restart)) in steps.iter().enumerate() {
            let desired = build_desired(sps);
            if *restart {
                ids = PlanMemory::default();
                ids.adopt(&cur, &desired);
            }
            let next = map_state(&desired, &mut ids, &cfg);
            resolves(&next).map_err(|e| TestCaseError::fail(format!("step {i}: the planned state itself: {e}")))?;
            let ops: Vec<Op> = diff(&cur, &next);
            let allowed = Allowed::new(&cur, &next);
            for (n, op) in ops.iter().enumerate() {
                cur.apply(std::slice::from_ref(op));
                if let Err(e) = resolves(&cur).and_then(|()| routes_within(&cur, &allowed)) {
                    return Err(TestCaseError::fail(format!("step {i}{}: after op {n} of {} ({op:?}): {e}", if *restart { " (restart)" } else { "" }, ops.len())));
                }
            }
            writes += ops.len();
            prop_assert_eq!(&cur, &next, "step {}: the ops do not produce the planned state", i);
            prop_assert!(diff(&cur, &next).is_empty());
        }
        let _ = writes;
    }
}

/// Ids of a Service whose external and internal endpoint sets both differ from its Cluster set
/// (Local/Local with endpoints on other nodes): the third, Cluster, table.
fn three_table_service() -> Vec<SpGen> {
    vec![SpGen {
        name: 1,
        protocol: Protocol::Tcp,
        frontends: vec![(0, 0, 0), (1, 0, 0)],
        endpoints: vec![(1, true, false), (2, false, false)],
        itp_local: true,
        etp_local: true,
        maglev: false,
        affinity: None,
        ranges: vec![],
    }]
}

proptest! {
    #![proptest_config(config(128))]

    /// Plan docs: "a restarted agent re-learns the ids of what is already programmed from the
    /// pinned maps, so adopting a running datapath rewrites nothing that is already right",
    /// including a Service's separate Cluster table (external set Local, and no internal table
    /// equal to the Cluster set).
    #[test]
    fn adopting_a_programmed_state_rewrites_nothing(sps in prop::collection::vec(sp_gen(), 0..6), cfg in plan_cfg()) {
        let mut desired = build_desired(&sps);
        // Two ServicePorts claiming one frontend is a conflict the planner resolves one way on
        // the first run and possibly another after adoption; the API server never allows it.
        let mut claimed = BTreeSet::new();
        for (spn, sp) in desired.services.iter_mut() {
            Arc::make_mut(sp).frontends.retain(|f| claimed.insert((f.addr, f.port, spn.protocol)));
        }
        desired.services.retain(|_, sp| !sp.frontends.is_empty());
        let programmed = map_state(&desired, &mut PlanMemory::default(), &cfg);
        let mut ids = PlanMemory::default();
        ids.adopt(&programmed, &desired);
        let again = map_state(&desired, &mut ids, &cfg);
        let ops = diff(&programmed, &again);
        prop_assert!(ops.is_empty(), "a restart would rewrite {} entries: {:?}", ops.len(), ops.iter().take(6).collect::<Vec<_>>());
    }
}

/// The fixture of `restart_never_reuses_a_pinned_cluster_table_id` really plans a separate
/// Cluster table.
#[test]
fn sanity_three_table_service_plans_three_tables() {
    let desired = build_desired(&three_table_service());
    let st = map_state(&desired, &mut PlanMemory::default(), &PlanConfig::default());
    let tables: BTreeSet<u32> = st
        .services
        .values()
        .filter(|v| v.flags & SVC_F_ADDR_MARKER == 0)
        .flat_map(|v| [v.select_id, v.cluster_select_id])
        .collect();
    assert_eq!(tables.len(), 3, "internal (local), external (local) and Cluster tables: {st:?}");
    resolves(&st).unwrap();
}

/// A restart that adds a Service must never point an existing frontend at the new Service's
/// backends, not even between two writes.
#[test]
fn restart_never_reuses_a_pinned_cluster_table_id() {
    let a = three_table_service().remove(0); // s1: internal 1, external 2, Cluster 3
    let b = SpGen {
        name: 0,
        protocol: Protocol::Tcp,
        frontends: vec![(0, 0, 0)],
        endpoints: vec![(7, false, false)],
        itp_local: false,
        etp_local: false,
        maglev: false,
        affinity: None,
        ranges: vec![],
    };
    let cfg = PlanConfig::default();
    let first = build_desired(std::slice::from_ref(&a));
    let programmed = map_state(&first, &mut PlanMemory::default(), &cfg);
    // The agent restarts; meanwhile Service s0 was created.
    let second = build_desired(&[b, a]);
    let mut ids = PlanMemory::default();
    ids.adopt(&programmed, &second);
    let next = map_state(&second, &mut ids, &cfg);
    let mut cur = programmed.clone();
    let allowed = Allowed::new(&programmed, &next);
    for (n, op) in diff(&programmed, &next).iter().enumerate() {
        cur.apply(std::slice::from_ref(op));
        resolves(&cur).unwrap();
        if let Err(e) = routes_within(&cur, &allowed) {
            panic!("after op {n} ({op:?}): {e}");
        }
    }
}

// =============================================================================================
// planner: the incremental plan equals the full plan, and its touched keys cover the diff
// =============================================================================================

/// One step of a cluster's life: replace, add or remove a ServicePort; then the agent either
/// applies (the maps catch up) or fails to (they keep the last applied state), and sometimes
/// restarts (a new planner adopts what the maps hold).
#[derive(Clone, Debug)]
struct Edit {
    at: usize,
    sp: Option<SpGen>,
    applied: bool,
    restart: bool,
}

fn edit_gen() -> impl Strategy<Value = Edit> {
    (0usize..8, prop::option::weighted(0.8, sp_gen()), prop::bool::weighted(0.85), prop::bool::weighted(0.1))
        .prop_map(|(at, sp, applied, restart)| Edit { at, sp, applied, restart })
}

proptest! {
    #![proptest_config(config(256))]

    /// planner module docs: after every edit the incremental planner's state is exactly the full
    /// plan of the same desired state (same ids: the full plan runs with its own `PlanMemory` through
    /// the same sequence), and the writes computed from its touched keys are exactly the full
    /// diff from what the maps hold, including after failed applies and restarts.
    #[test]
    fn the_incremental_plan_is_the_full_plan_and_its_touched_keys_cover_the_diff(
        base in prop::collection::vec(sp_gen(), 0..8),
        edits in prop::collection::vec(edit_gen(), 1..10),
        cfg in prop::sample::select(vec![13u32, 67]).prop_map(|m| PlanConfig { maglev_table_size: Some(m) }),
    ) {
        use crate::{compile::memo::Changed, maps::touched::diff_touched, plan::Planner};
        let mut sps = base;
        let mut planner = Planner::new(cfg);
        // The same, told which ServicePorts changed (as the agent's compile memo tells it).
        let mut hinted = Planner::new(cfg);
        let mut last = DesiredState::default();
        let mut ids = PlanMemory::default();
        let mut maps = MapState::default();
        for (i, e) in std::iter::once(None).chain(edits.iter().map(Some)).enumerate() {
            if let Some(e) = e {
                match &e.sp {
                    Some(g) if e.at < sps.len() => sps[e.at] = g.clone(),
                    Some(g) => sps.push(g.clone()),
                    None if !sps.is_empty() => { let n = e.at % sps.len(); sps.remove(n); }
                    None => {}
                }
            }
            let desired = build_desired(&sps);
            if e.is_some_and(|e| e.restart) {
                planner = Planner::new(cfg);
                planner.adopt(&maps, &desired);
                hinted = Planner::new(cfg);
                hinted.adopt(&maps, &desired);
                last = DesiredState::default();
                ids = PlanMemory::default();
                ids.adopt(&maps, &desired);
            }
            planner.plan(&desired);
            let changed: BTreeSet<ServicePortName> = last.services.keys().chain(desired.services.keys())
                .filter(|k| last.services.get(*k) != desired.services.get(*k)).cloned().collect();
            hinted.plan_changed(&desired, &Changed::Only(changed));
            prop_assert_eq!(hinted.state(), planner.state(), "step {}: the hinted plan differs", i);
            last = desired.clone();
            let full = map_state(&desired, &mut ids, &cfg);
            prop_assert_eq!(planner.state(), &full, "step {}: the incremental plan differs from the full plan", i);
            let frontends = full.services.keys().filter(|k| k.proto != 0).count();
            prop_assert_eq!(planner.frontends(), frontends, "step {}: the frontend count drifted", i);
            prop_assert_eq!(hinted.frontends(), frontends, "step {}: the hinted plan's frontend count drifted", i);
            let ops = diff_touched(&maps, planner.state(), planner.pending());
            prop_assert_eq!(&ops, &diff(&maps, &full), "step {}: the touched keys miss writes", i);
            if e.is_none_or(|e| e.applied) {
                maps.apply(&ops);
                planner.applied();
                hinted.applied();
            }
        }
    }
}
