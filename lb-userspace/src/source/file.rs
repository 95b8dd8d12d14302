//! The file source: Services, EndpointSlices and Nodes read from the YAML manifests in a
//! directory (`lb agent --source file:DIR`). Any number of documents per file; objects of other
//! kinds (Deployments, Pods, ...) are ignored so a directory of real manifests works as is.
//!
//! Each file stands alone ([`FileSource`]): a file that does not parse (or holds an invalid
//! document) keeps its last good objects, and every other file goes on being read, so one bad
//! edit never freezes the rest of the directory.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;

use super::{ClusterObjects, SharedList, keep::Keep};

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
    // The directory entry's type needs no syscall (a symbolic link is followed); names compare
    // as plain strings (one directory): this runs at every poll, over 1,000 files at 100,000
    // Services.
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read)?
        .filter_map(Result::ok)
        .filter(|e| match e.file_type() {
            Ok(t) if t.is_symlink() => e.path().is_file(),
            Ok(t) => t.is_file(),
            Err(_) => false,
        })
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort_unstable_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The objects of one manifest file.
pub fn load_file(path: &Path) -> Result<ClusterObjects, SourceError> {
    let text = fs::read_to_string(path).map_err(|source| SourceError::Read { path: path.to_owned(), source })?;
    let mut objects = ClusterObjects::default();
    parse_into(path, &text, &mut objects)?;
    Ok(objects)
}

/// What a file looked like when it was last read: modification time and length.
type Stamp = (SystemTime, u64);

/// One manifest file: its last good objects, and the error of its current content if it has
/// one.
struct FileState {
    stamp: Stamp,
    objects: ClusterObjects,
    error: Option<Arc<SourceError>>,
}

/// What a [`FileSource::poll`] found.
#[derive(Debug, Default)]
pub struct FilePoll {
    /// Some file's objects changed: the objects of every file now.
    pub objects: Option<ClusterObjects>,
    /// Files whose new content is invalid (their last good objects stay).
    pub failed: Vec<Arc<SourceError>>,
    /// Files that were invalid and now read again.
    pub recovered: Vec<PathBuf>,
}

/// The manifests of a directory, read file by file: only files whose stamp changed are read
/// again, and a file that fails keeps its last good objects (module docs).
pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The directory could not be listed at the last poll (reported once).
    listing_failed: bool,
}

impl FileSource {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), files: BTreeMap::new(), listing_failed: false }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the files that changed since the last poll. Fails only when the directory cannot
    /// be listed, and then only the first time in a row (the objects stay as they were).
    pub fn poll(&mut self) -> Result<FilePoll, SourceError> {
        let listed = match stamps(&self.dir) {
            Ok(l) => {
                self.listing_failed = false;
                l
            }
            Err(e) if std::mem::replace(&mut self.listing_failed, true) => {
                tracing::debug!(error = %e, "the manifest directory is still unreadable");
                return Ok(FilePoll::default());
            }
            Err(e) => return Err(e),
        };
        let mut out = FilePoll::default();
        let before = self.files.len();
        self.files.retain(|path, _| listed.contains_key(path));
        let mut changed = self.files.len() != before;
        let to_read: Vec<(PathBuf, Stamp)> =
            listed.into_iter().filter(|(path, stamp)| self.files.get(path).is_none_or(|f| f.stamp != *stamp)).collect();
        // On every CPU: a directory of 10,000 Services is parsed at start, most of the time
        // before its first sync.
        let loaded = crate::parallel::map_on_cpus(&to_read, |(path, _)| load_file(path));
        for ((path, stamp), result) in to_read.into_iter().zip(loaded) {
            let state = self.files.entry(path.clone()).or_insert_with(|| FileState {
                stamp,
                objects: ClusterObjects::default(),
                error: None,
            });
            state.stamp = stamp;
            match result {
                Ok(mut objects) => {
                    keep_unchanged(&state.objects, &mut objects);
                    if state.error.take().is_some() {
                        out.recovered.push(path);
                    }
                    state.objects = objects;
                    changed = true;
                }
                Err(e) => {
                    let e = Arc::new(e);
                    state.error = Some(e.clone());
                    out.failed.push(e);
                }
            }
        }
        if changed {
            let count = |f: fn(&ClusterObjects) -> usize| self.files.values().map(|s| f(&s.objects)).sum::<usize>();
            let mut all = ClusterObjects {
                services: SharedList::with_capacity(count(|o| o.services.len())),
                slices: SharedList::with_capacity(count(|o| o.slices.len())),
                nodes: SharedList::with_capacity(count(|o| o.nodes.len())),
                changes: None,
            };
            for f in self.files.values() {
                all.extend(&f.objects);
            }
            out.objects = Some(all);
        }
        Ok(out)
    }

    /// The errors of the files that are invalid now, in file order.
    pub fn errors(&self) -> impl Iterator<Item = &SourceError> {
        self.files.values().filter_map(|f| f.error.as_deref())
    }
}

/// Keeps the previous `Arc` of every object of a file read again whose new version is equal
/// to the one at the same place before: an edit of one object in a file of many then shows as
/// that object alone to the later steps (the compile memo recompiles the Services whose objects
/// are new `Arc`s).
fn keep_unchanged(old: &ClusterObjects, new: &mut ClusterObjects) {
    fn keep<T: PartialEq>(old: &[Arc<T>], new: &mut [Arc<T>]) {
        for (o, n) in old.iter().zip(new.iter_mut()) {
            if **o == **n {
                *n = Arc::clone(o);
            }
        }
    }
    keep(&old.services, &mut new.services);
    keep(&old.slices, &mut new.slices);
    keep(&old.nodes, &mut new.nodes);
}

/// The stamp of every manifest in `dir`.
fn stamps(dir: &Path) -> Result<BTreeMap<PathBuf, Stamp>, SourceError> {
    let mut out = BTreeMap::new();
    for path in manifest_files(dir)? {
        // A file removed between the listing and here is simply not listed.
        if let Ok(m) = fs::metadata(&path) {
            out.insert(path, (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        }
    }
    Ok(out)
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
            objects.services.push(Arc::new(svc.keep()));
        }
        // Kept as the kube source's caches keep them (`keep.rs`).
        "EndpointSlice" => objects.slices.push(Arc::new(typed::<EndpointSlice>(value).map_err(within)?.keep())),
        "Node" => objects.nodes.push(Arc::new(typed::<Node>(value).map_err(within)?.keep())),
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
/// The object `value` describes, compact: a clone, whose lists are allocated to their length
/// (a deserialized one's grew by doubling; see the kube source's caches).
fn typed<T: serde::de::DeserializeOwned + Clone>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        (if field == "." { "(document)".into() } else { field }, e.into_inner().to_string())
    })?;
    Ok(parsed.clone())
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

    /// A scratch manifest directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("lb-source-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        /// Writes a file with a new modification time (a stamp the poll must see as new).
        fn write(&self, name: &str, text: &str) {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            let later = SystemTime::now() + std::time::Duration::from_secs(fs::read_dir(&self.0).unwrap().count() as u64 * 3600);
            fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service_doc(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n")
    }

    fn names(o: &ClusterObjects) -> Vec<String> {
        let mut n: Vec<String> = o.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    /// An edit of one object in a file of several: the others keep their `Arc`s (the compile
    /// memo then recompiles only the edited one's Service).
    #[test]
    fn an_edited_file_keeps_the_objects_it_did_not_change() {
        let dir = Dir::new("keep");
        dir.write("a.yaml", &format!("{}---\n{}", service_doc("a", "10.96.0.1"), service_doc("b", "10.96.0.2")));
        let mut src = FileSource::new(&dir.0);
        let before = src.poll().unwrap().objects.unwrap();
        dir.write("a.yaml", &format!("{}---\n{}", service_doc("a", "10.96.0.1"), service_doc("b", "10.96.0.9")));
        let after = src.poll().unwrap().objects.unwrap();
        assert!(Arc::ptr_eq(&before.services[0], &after.services[0]), "a is unchanged: the same object");
        assert!(!Arc::ptr_eq(&before.services[1], &after.services[1]), "b changed: a new object");
        assert_eq!(after.services[1].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.9"));
    }

    /// Issue 13: a broken file keeps its last good objects and never holds back the others.
    #[test]
    fn a_broken_file_keeps_its_last_good_objects_and_the_others_go_on() {
        let dir = Dir::new("broken");
        dir.write("a.yaml", &service_doc("a", "10.96.0.1"));
        dir.write("b.yaml", &service_doc("b", "10.96.0.2"));
        let mut src = FileSource::new(&dir.0);
        let first = src.poll().unwrap();
        assert_eq!(names(first.objects.as_ref().unwrap()), ["a", "b"]);
        assert!(src.poll().unwrap().objects.is_none(), "nothing changed");

        // b breaks: reported once, b's last good Service stays.
        dir.write("b.yaml", "kind: [");
        let broken = src.poll().unwrap();
        assert_eq!(broken.failed.len(), 1);
        assert!(broken.failed[0].to_string().contains("b.yaml: document 1"), "{}", broken.failed[0]);
        assert!(broken.objects.is_none(), "b's objects did not change");
        assert!(src.poll().unwrap().failed.is_empty(), "reported once");
        assert_eq!(src.errors().count(), 1);

        // a changes meanwhile: applied at once, with b's last good objects.
        dir.write("a.yaml", &format!("{}---\n{}", service_doc("a", "10.96.0.1"), service_doc("c", "10.96.0.3")));
        assert_eq!(names(src.poll().unwrap().objects.as_ref().unwrap()), ["a", "b", "c"]);
        // A Service without clusterIP in b is an invalid document: b still keeps its last good.
        dir.write("b.yaml", "kind: Service\nmetadata: {name: b2}\nspec: {ports: [{port: 80}]}\n");
        let p = src.poll().unwrap();
        assert!(p.failed[0].to_string().contains("spec.clusterIP"), "{}", p.failed[0]);

        // b is fixed: recovered, and its new content is used.
        dir.write("b.yaml", &service_doc("b2", "10.96.0.4"));
        let fixed = src.poll().unwrap();
        assert_eq!(fixed.recovered, vec![dir.0.join("b.yaml")]);
        assert_eq!(names(fixed.objects.as_ref().unwrap()), ["a", "b2", "c"]);
        assert_eq!(src.errors().count(), 0);

        // A new file that is broken from the start contributes nothing; a deleted file's objects go.
        dir.write("d.yaml", "kind: Service\nmetadata: {}\n");
        assert_eq!(src.poll().unwrap().failed.len(), 1);
        fs::remove_file(dir.0.join("a.yaml")).unwrap();
        assert_eq!(names(src.poll().unwrap().objects.as_ref().unwrap()), ["b2"]);
    }

    #[test]
    fn an_unreadable_directory_is_reported_once() {
        let mut src = FileSource::new(Path::new("/nonexistent/lb-manifests"));
        let err = src.poll().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lb-manifests"), "{err}");
        assert!(src.poll().is_ok(), "not again while it stays unreadable");
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_file() {
        let err = parse_into(Path::new("k.yaml"), "kind: [", &mut ClusterObjects::default()).unwrap_err();
        assert!(err.to_string().starts_with("k.yaml: document 1:"), "{err}");
    }
}
