//! What the unit tests of the API server share: a minimal HTTP/1.1 client (one request per
//! connection; watch bodies checked chunk by chunk) and the Service they write most.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use serde_json::{Value, json};

use super::ApiServer;

/// One connection to the server under test, past the response headers.
pub(super) struct Conn {
    pub(super) reader: BufReader<TcpStream>,
}

impl Conn {
    /// Sends a GET and reads the status line and headers (names lowercased).
    pub(super) fn get(server: &ApiServer, target: &str) -> (Self, u16, Vec<(String, String)>) {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        (Self { reader }, code, headers)
    }

    /// A non-streaming request: status and JSON body.
    pub(super) fn json(server: &ApiServer, target: &str) -> (u16, Value) {
        let (mut c, code, headers) = Self::get(server, target);
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").unwrap().1.parse().unwrap();
        let mut body = vec![0; len];
        c.reader.read_exact(&mut body).unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    /// The next line of a chunked watch body (`None` at the terminating chunk). Checks that
    /// every chunk is exactly one newline-terminated JSON document.
    pub(super) fn event(&mut self) -> Option<Value> {
        let mut size = String::new();
        self.reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            let mut end = String::new();
            self.reader.read_line(&mut end).unwrap();
            assert_eq!(end, "\r\n", "no trailers");
            return None;
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).unwrap();
        assert!(chunk.ends_with(b"\n\r\n"), "{:?}", String::from_utf8_lossy(&chunk));
        let line = &chunk[..size - 1];
        assert!(!line.contains(&b'\n'), "one event per line");
        Some(serde_json::from_slice(line).unwrap())
    }

    /// Next event that is not a bookmark.
    pub(super) fn change(&mut self) -> Value {
        loop {
            let e = self.event().expect("stream ended");
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

/// A Service `name` in `default` with one port and these labels.
pub(super) fn svc(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"ports": [{"port": 80}], "selector": {"app": name}},
    })
}

/// The resourceVersion of an object or list, which must have one.
pub(super) fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}
