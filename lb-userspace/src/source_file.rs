//! The file source: Services, EndpointSlices and Nodes read from the YAML manifests in a
//! directory (`lb agent --source file:DIR`). Any number of documents per file; objects of other
//! kinds (Deployments, Pods, ...) are ignored so a directory of real manifests works as is.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;

/// The objects the agent consumes, shared (a snapshot of the watch caches copies pointers,
/// not objects).
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        /// 1-based index of the YAML document in the file.
        doc: usize,
        /// Dotted path of the offending field (`spec.ports[0].port`), or `(document)`.
        field: String,
        message: String,
    },
}

/// Every `*.yaml`/`*.yml`/`*.json` file of `dir`, sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let read = |source| SourceError::Read { path: dir.to_owned(), source };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every manifest in `dir`. The first invalid document fails the whole read, so a
/// half-edited directory never replaces the last good state.
pub fn load_dir(dir: &Path) -> Result<ClusterObjects, SourceError> {
    let mut objects = ClusterObjects::default();
    for path in manifest_files(dir)? {
        let text = fs::read_to_string(&path).map_err(|source| SourceError::Read { path: path.clone(), source })?;
        parse_into(&path, &text, &mut objects)?;
    }
    Ok(objects)
}

/// Parses the documents of one file into `objects`.
pub fn parse_into(path: &Path, text: &str, objects: &mut ClusterObjects) -> Result<(), SourceError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |field: String, message: String| SourceError::Invalid { path: path.to_owned(), doc: i + 1, field, message };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid("(document)".into(), e.to_string()))?;
        add_object(value, "", objects).map_err(|(f, m)| invalid(f, m))?;
    }
    Ok(())
}

/// Adds one object (a document, or an item of a `List`) to `objects`. `at` is where the
/// object sits in its document (`""` for the document itself, `items[2]` for an item of a
/// List): errors name the field from the document's root, so with the document number of
/// the caller they point at the offending line.
fn add_object(value: serde_yaml::Value, at: &str, objects: &mut ClusterObjects) -> Result<(), (String, String)> {
    let within = |(field, message): (String, String)| (field_at(at, &field), message);
    if value.is_null() {
        return Ok(()); // empty document (a trailing `---`) or empty item
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).ok_or_else(|| within(("kind".into(), "missing".into())))?;
    match kind {
        "Service" => {
            let svc: Service = typed(value).map_err(within)?;
            check_service(&svc).map_err(within)?;
            objects.services.push(Arc::new(svc));
        }
        "EndpointSlice" => objects.slices.push(Arc::new(typed(value).map_err(within)?)),
        "Node" => objects.nodes.push(Arc::new(typed(value).map_err(within)?)),
        "List" => {
            let items = value.get("items").and_then(|v| v.as_sequence()).cloned().unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                add_object(item, &field_at(at, &format!("items[{j}]")), objects)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `field` (relative to an object) as seen from its document's root, the object being at
/// `at` (`""` for the document itself).
fn field_at(at: &str, field: &str) -> String {
    match (at, field) {
        ("", _) => field.to_owned(),
        (_, "(document)") => at.to_owned(),
        _ => format!("{at}.{field}"),
    }
}

/// Deserializes with the path of the failing field.
fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        (if field == "." { "(document)".into() } else { field }, e.into_inner().to_string())
    })
}

/// What a file must say that the API server would otherwise fill in.
fn check_service(svc: &Service) -> Result<(), (String, String)> {
    if svc.metadata.name.as_deref().unwrap_or("").is_empty() {
        return Err(("metadata.name".into(), "missing".into()));
    }
    let Some(spec) = &svc.spec else {
        return Err(("spec".into(), "missing".into()));
    };
    if spec.type_.as_deref() != Some("ExternalName") && spec.cluster_ip.is_none() {
        return Err((
            "spec.clusterIP".into(),
            "missing: in a cluster the API server assigns it, in a file it must be written (or \"None\" for a headless service)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBIA: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubia-abc
  labels:
    kubernetes.io/service-name: kubia
addressType: IPv4
ports:
- port: 8080
  protocol: TCP
endpoints:
- addresses: [10.244.1.2]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored
";

    #[test]
    fn reads_services_and_slices_and_ignores_other_kinds() {
        let mut o = ClusterObjects::default();
        parse_into(Path::new("kubia.yaml"), KUBIA, &mut o).unwrap();
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.slices.len(), 1);
        assert_eq!(o.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 80);
    }

    #[test]
    fn a_bad_field_is_named_with_file_and_document() {
        let bad = KUBIA.replace("  - port: 80\n", "  - port: eighty\n");
        let err = parse_into(Path::new("dir/kubia.yaml"), &bad, &mut ClusterObjects::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("dir/kubia.yaml: document 1: spec.ports[0].port:"), "{msg}");
    }

    #[test]
    fn missing_cluster_ip_is_an_error_naming_the_field() {
        let bad = KUBIA.replace("  clusterIP: 10.96.0.10\n", "");
        let err = parse_into(Path::new("k.yaml"), &bad, &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().contains("spec.clusterIP"), "{err}");
    }

    #[test]
    fn missing_kind_is_an_error() {
        let err = parse_into(Path::new("k.yaml"), "apiVersion: v1\nmetadata: {}\n", &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().contains("k.yaml: document 1: kind: missing"), "{err}");
    }

    /// README: an error names the file, the document and the field; for an item of a `List`
    /// that is the List's document and the item's path in it.
    #[test]
    fn a_bad_list_item_is_named_with_the_document_of_the_list_and_its_index() {
        let text = format!(
            "{KUBIA}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {{name: a}}\n\
             - apiVersion: v1\n  kind: Service\n  metadata: {{name: s}}\n  spec:\n    clusterIP: 10.96.0.1\n    ports: [{{port: eighty}}]\n"
        );
        let err = parse_into(Path::new("l.yaml"), &text, &mut ClusterObjects::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("l.yaml: document 4: items[1].spec.ports[0].port:"), "{msg}");
    }

    #[test]
    fn list_items_are_checked_like_documents_and_nested_lists_keep_their_path() {
        let nested = "kind: List\nitems:\n- kind: List\n  items:\n  - kind: Deployment\n  - kind: Service\n    metadata: {name: s}\n    spec: {}\n";
        let err = parse_into(Path::new("n.yaml"), nested, &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().starts_with("n.yaml: document 1: items[0].items[1].spec.clusterIP: missing"), "{err}");
        let no_kind = "kind: List\nitems:\n- kind: Node\n  metadata: {name: a}\n- apiVersion: v1\n";
        let err = parse_into(Path::new("k.yaml"), no_kind, &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().contains("k.yaml: document 1: items[1].kind: missing"), "{err}");
        let not_a_map = "kind: List\nitems:\n- 7\n";
        let err = parse_into(Path::new("k.yaml"), not_a_map, &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().contains("document 1: items[0].kind: missing"), "{err}");
    }

    #[test]
    fn list_items_are_read() {
        let text = "kind: Deployment\n---\nkind: List\nitems:\n- kind: Node\n  metadata: {name: a}\n- null\n\
                    - kind: Service\n  metadata: {name: s}\n  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
        let mut o = ClusterObjects::default();
        parse_into(Path::new("l.yaml"), text, &mut o).unwrap();
        assert_eq!((o.nodes.len(), o.services.len()), (1, 1));
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_file() {
        let err = parse_into(Path::new("k.yaml"), "kind: [", &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().starts_with("k.yaml: document 1:"), "{err}");
    }
}
