//! Label and field selectors (the API server's watch rules): parsing the
//! `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `k`, `!k`, comma = AND) and `fieldSelector`
//! (`metadata.name`, `metadata.namespace` and the kind's own fields; `=`, `==`, `!=`) query
//! parameters, and the [`Filter`] that decides which objects of a collection a request sees.

use serde_json::{Map, Value};

use super::kinds::KindInfo;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            Self::Eq(k, v) => get(k) == Some(v),
            Self::NotEq(k, v) => get(k) != Some(v),
            Self::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Self::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Self::Exists(k) => get(k).is_some(),
            Self::NotExists(k) => get(k).is_none(),
        }
    }
}

fn label_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    let ok =
        !k.is_empty() && k.len() <= 317 && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok { Ok(k.to_owned()) } else { Err(format!("invalid label key {k:?}")) }
}

fn label_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(v.to_owned()) } else { Err(format!("invalid label value {v:?}")) }
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in {s:?}"));
                }
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {s:?}"));
    }
    terms.push(&s[start..]);
    terms.into_iter().map(parse_label_term).collect()
}

fn parse_label_term(t: &str) -> Result<LabelReq, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err("empty label requirement".into());
    }
    if let Some(k) = t.strip_prefix('!') {
        return Ok(LabelReq::NotExists(label_key(k)?));
    }
    if let Some(open) = t.find('(') {
        let inner = t[open + 1..].strip_suffix(')').ok_or_else(|| format!("expected ')' at the end of {t:?}"))?;
        let head = t[..open].trim();
        let (k, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("expected 'key in (...)' or 'key notin (...)', got {t:?}"))?;
        let values = inner.split(',').map(label_value).collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(LabelReq::In(label_key(k)?, values)),
            "notin" => Ok(LabelReq::NotIn(label_key(k)?, values)),
            _ => Err(format!("unknown set operator {op:?} in {t:?}")),
        };
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(LabelReq::NotEq(label_key(k)?, label_value(v)?));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(LabelReq::Eq(label_key(k)?, label_value(v)?));
    }
    Ok(LabelReq::Exists(label_key(t)?))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldReq {
    path: String,
    value: String,
    negate: bool,
}

fn parse_field_selector(s: &str, info: &KindInfo) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim) {
        if t.is_empty() {
            if s.trim().is_empty() {
                break;
            }
            return Err("empty field requirement".into());
        }
        let (path, value, negate) = if let Some((p, v)) = t.split_once("!=") {
            (p, v, true)
        } else if let Some((p, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            (p, v, false)
        } else {
            return Err(format!("invalid field selector {t:?}: expected field=value"));
        };
        let path = path.trim();
        if !matches!(path, "metadata.name" | "metadata.namespace") && !info.fields.contains(&path) {
            return Err(format!("field label not supported: {path} (for {})", info.plural));
        }
        out.push(FieldReq { path: path.to_owned(), value: value.trim().to_owned(), negate });
    }
    Ok(out)
}

/// Which objects of a collection a request sees.
#[derive(Clone, Debug, Default)]
pub(super) struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    /// The filter of a request on a collection of `info` (all namespaces when `namespace` is
    /// `None`). An invalid selector is the message of a 400, the label selector's first.
    pub(super) fn new(
        info: &KindInfo,
        namespace: Option<String>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, String> {
        let labels = parse_label_selector(label_selector.unwrap_or(""))?;
        let fields = parse_field_selector(field_selector.unwrap_or(""), info)?;
        Ok(Self { namespace, labels, fields })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let labels = meta["labels"].as_object();
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|f| {
                let mut v = obj;
                for seg in f.path.split('.') {
                    v = &v[seg];
                }
                let actual = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (actual == f.value) != f.negate
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::{ApiServer, client::Conn};

    #[test]
    fn label_selector_syntax() {
        use LabelReq::*;
        let p = |s| parse_label_selector(s).unwrap();
        assert_eq!(p(""), vec![]);
        assert_eq!(
            p("a=1,b==2, c!=3,d,!e"),
            vec![
                Eq("a".into(), "1".into()),
                Eq("b".into(), "2".into()),
                NotEq("c".into(), "3".into()),
                Exists("d".into()),
                NotExists("e".into())
            ]
        );
        assert_eq!(
            p("env in (prod, dev),tier notin (x),k8s.io/x"),
            vec![
                In("env".into(), vec!["prod".into(), "dev".into()]),
                NotIn("tier".into(), vec!["x".into()]),
                Exists("k8s.io/x".into())
            ]
        );
        for bad in ["a=(", "a in b", "=x", "a,,b", "a b", "x in (a", "a=b c"] {
            assert!(parse_label_selector(bad).is_err(), "{bad}");
        }
        let labels = json!({"env": "prod", "k": "v"});
        let m = |s: &str| parse_label_selector(s).unwrap().iter().all(|r| r.matches(labels.as_object()));
        assert!(m("env=prod,k"));
        assert!(m("env in (dev,prod),missing notin (a),gone!=x,!gone"));
        assert!(!m("env!=prod"));
        assert!(!m("env notin (prod)"));
        assert!(!m("!k"));
        assert!(!m("missing in (a)"));
    }

    #[test]
    fn field_selector_on_node_name_and_errors_are_400() {
        let server = ApiServer::start().unwrap();
        for n in ["node-a", "node-b"] {
            server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})).unwrap();
        }
        let (_, list) = Conn::json(&server, "/api/v1/nodes?&fieldSelector=metadata.name%3Dnode-b&limit=500");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "node-b");
        let (_, list) = Conn::json(&server, "/api/v1/nodes?fieldSelector=metadata.name!%3Dnode-b");
        assert_eq!(list["items"][0]["metadata"]["name"], "node-a");
        let (mut w, _, _) = Conn::get(&server, "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3Dnode-b");
        assert_eq!(w.change()["object"]["metadata"]["name"], "node-b");
        server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"x": "1"}}})).unwrap();
        server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b", "labels": {"x": "1"}}})).unwrap();
        let e = w.change();
        assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("MODIFIED"), Some("node-b")));
        let (code, st) = Conn::json(&server, "/api/v1/nodes?fieldSelector=spec.nope%3D1");
        assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")));
        let (code, _) = Conn::json(&server, "/api/v1/services?labelSelector=a%20in%20b");
        assert_eq!(code, 400);
    }
}
