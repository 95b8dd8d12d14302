//! The `Status` objects the API answers failures with (`kind: Status`, a `reason` and a `code`):
//! the body of every error response and the object of a watch stream's `ERROR` event.

use serde_json::{Value, json};

/// A failure `Status` with this HTTP status code, reason (`NotFound`, `Expired`, ...) and message.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// 410 `Expired`: `rv` is below the retained history, which starts after `floor`.
pub(super) fn too_old(rv: u64, floor: u64) -> Value {
    status(410, "Expired", &format!("too old resource version: {rv} ({floor})"))
}

/// 504: the server has not reached `rv` (and gave up waiting for it).
pub(super) fn too_large(rv: u64) -> (u16, Value) {
    let mut st = status(504, "Timeout", &format!("Too large resource version: {rv}, current resource version unknown"));
    st["details"] = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
    (504, st)
}
