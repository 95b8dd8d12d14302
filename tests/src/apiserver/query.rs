//! The parameters of list and watch requests (`watch`, `resourceVersion`,
//! `resourceVersionMatch`, `timeoutSeconds`, `allowWatchBookmarks`, `sendInitialEvents`,
//! `labelSelector`, `fieldSelector`, `limit`, `continue`), decoded from the URL query string.

#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) watch: bool,
    pub(super) resource_version: Option<String>,
    pub(super) resource_version_match: Option<String>,
    pub(super) timeout_seconds: Option<u64>,
    pub(super) bookmarks: bool,
    pub(super) send_initial_events: bool,
    pub(super) label_selector: Option<String>,
    pub(super) field_selector: Option<String>,
    pub(super) limit: Option<usize>,
    pub(super) continue_token: Option<String>,
}

fn truthy(v: &str) -> bool {
    v == "true" || v == "1"
}

impl Query {
    /// Unknown parameters are ignored; a malformed number is the message of a 400.
    pub(super) fn parse(q: &str) -> Result<Self, String> {
        let mut out = Self::default();
        // kube-rs sends `?&watch=true&...`: empty segments are ignored.
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            let number = |v: &str| v.parse::<u64>().map_err(|_| format!("invalid {k}: {v:?}"));
            match k.as_str() {
                "watch" => out.watch = truthy(&v),
                "resourceVersion" => out.resource_version = Some(v),
                "resourceVersionMatch" => out.resource_version_match = Some(v),
                "timeoutSeconds" => out.timeout_seconds = Some(number(&v)?),
                "allowWatchBookmarks" => out.bookmarks = truthy(&v),
                "sendInitialEvents" => out.send_initial_events = truthy(&v),
                "labelSelector" => out.label_selector = Some(v),
                "fieldSelector" => out.field_selector = Some(v),
                "limit" => out.limit = Some(usize::try_from(number(&v)?).unwrap_or(usize::MAX)),
                "continue" => out.continue_token = Some(v).filter(|t| !t.is_empty()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The requested resourceVersion (`None` when unset or empty); not a number is the message
    /// of a 400.
    pub(super) fn requested_rv(&self) -> Result<Option<u64>, String> {
        match self.resource_version.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => s.parse::<u64>().map(Some).map_err(|_| format!("invalid resourceVersion {s:?}")),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c%3d%zz%"), "a,b c=%zz%");
    }
}
