//! A minimal HTTP/1.1 responder for the agent's tiny GET endpoints: one request per
//! connection (`Connection: close`), the request head only (bodies are ignored), bounded in
//! size, time and concurrent connections since health-check node ports face the network.

use std::{future::Future, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::debug;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once per listener; more are closed right away.
const MAX_CONNECTIONS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers besides `Content-Length` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<String>) -> Self {
        Self { status, headers: vec![("Content-Type", content_type.to_owned())], body: body.into() }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn not_found() -> Self {
        Self::new(404, "text/plain; charset=utf-8", "404 page not found\n")
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The response on the wire; without the body for `HEAD`.
    pub fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        if with_body {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// A [`Handler`] from an async function.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Parses a request head (request line and headers).
pub fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let line = text.lines().next().ok_or("empty request")?;
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    // Absolute form (`GET http://host/path`) too.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    Ok(Request { method: method.to_owned(), path: path.to_owned() })
}

/// How long a listener that could not bind waits before trying again.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// Serves `handler` on `addr` from a background task. A bind failure (the port taken, the
/// address not there yet) does not stop the agent: it is logged and retried every few
/// seconds, as kube-proxy does for its health and metrics servers.
pub fn spawn_listener(what: &'static str, addr: std::net::SocketAddr, handler: Handler) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u64;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let local = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
                    tracing::info!(what, addr = %local, "listening");
                    serve(listener, handler).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(what, %addr, error = %e, "cannot listen: another process holds the address (`ss -ltnp`): free it or choose another address; retrying every {}s", LISTEN_RETRY.as_secs());
                    } else {
                        debug!(what, %addr, error = %e, failures, "cannot listen");
                    }
                    tokio::time::sleep(LISTEN_RETRY).await;
                }
            }
        }
    })
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue; // Too many at once: closed by the drop.
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, handler).await {
                        debug!(error = %e, "http connection");
                    }
                    drop(permit);
                });
            }
            // Out of file descriptors and the like: wait instead of spinning.
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()), // closed before a full head
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timed out"));
        }
    };
    let (resp, with_body) = match head {
        Head::TooLarge => (Response::new(431, "text/plain; charset=utf-8", "request head too large\n"), true),
        Head::Complete(bytes) => match parse_head(&bytes) {
            Ok(req) => {
                let with_body = req.method != "HEAD";
                (handler(req).await, with_body)
            }
            Err(why) => (Response::new(400, "text/plain; charset=utf-8", format!("{why}\n")), true),
        },
    };
    let write = async {
        stream.write_all(&resp.to_bytes(with_body)).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(IO_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response write timed out"))?
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// Reads up to the blank line that ends the head; `None` when the peer closed before.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Some(Head::Complete(buf)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(Head::TooLarge));
        }
    }
}

/// Index just past the first `\r\n\r\n` (or bare `\n\n`).
fn find_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}
