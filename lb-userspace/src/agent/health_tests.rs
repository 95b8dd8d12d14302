//! Unit tests of [`super`] (health).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::{agent::metrics::Metrics, model::HealthCheck};

const PERIOD: Duration = Duration::from_secs(30);

#[test]
fn rfc3339_formats_utc_seconds() {
    let at = |s: u64| rfc3339(Some(UNIX_EPOCH + Duration::from_secs(s)));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(rfc3339(Some(UNIX_EPOCH + Duration::from_millis(1_500))), "1970-01-01T00:00:01Z");
    assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
}

#[test]
fn point_50_unhealthy_until_the_first_sync() {
    let h = ProxyHealth::new(PERIOD);
    let t0 = Instant::now();
    assert!(!h.status(t0).healthy);
    h.queued(t0);
    assert!(!h.status(t0).healthy, "a pending change before any sync");
    h.updated(t0, SystemTime::now());
    assert!(h.status(t0).healthy);
}

#[test]
fn point_50_healthy_while_nothing_is_pending_however_old_the_last_update() {
    let h = ProxyHealth::new(PERIOD);
    let t0 = Instant::now();
    h.updated(t0, SystemTime::now());
    assert!(h.status(t0 + Duration::from_secs(3600)).healthy);
}

#[test]
fn point_50_a_change_pending_beyond_twice_the_period_is_unhealthy() {
    let h = ProxyHealth::new(PERIOD);
    let t0 = Instant::now();
    h.updated(t0, SystemTime::now());
    h.queued(t0 + Duration::from_secs(1));
    assert!(h.status(t0 + Duration::from_secs(60)).healthy, "exactly 2 x period: still healthy");
    assert!(!h.status(t0 + Duration::from_secs(61)).healthy);
    // A later change does not make the pending one look younger.
    h.queued(t0 + Duration::from_secs(61));
    assert!(!h.status(t0 + Duration::from_secs(62)).healthy);
    // Synced: healthy again, nothing pending.
    h.updated(t0 + Duration::from_secs(62), SystemTime::now());
    let st = h.status(t0 + Duration::from_secs(500));
    assert!(st.healthy);
    assert!(st.last_updated.is_some());
}

#[test]
fn point_50_confirmations_keep_a_quiet_agent_fresh() {
    // The agent confirms on every poll that finds nothing new, so a change that comes after
    // a long quiet time is measured from the last confirmation, not the last write.
    let h = ProxyHealth::new(PERIOD);
    let t0 = Instant::now();
    h.updated(t0, SystemTime::now());
    h.updated(t0 + Duration::from_secs(3600), SystemTime::now());
    h.queued(t0 + Duration::from_secs(3600));
    assert!(h.status(t0 + Duration::from_secs(3610)).healthy);
}

#[test]
fn point_50_healthz_body_and_status() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let st =
        ProxyStatus { healthy: true, last_updated: Some(UNIX_EPOCH + Duration::from_secs(1_699_999_990)), node_eligible: true };
    let r = healthz_response(&st, now);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"lastUpdated": "2023-11-14T22:13:10Z", "currentTime": "2023-11-14T22:13:20Z", "nodeEligible": true}"#);
    assert_eq!(r.header_value("content-type"), Some("application/json"));
    assert_eq!(r.header_value("X-Content-Type-Options"), Some("nosniff"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["nodeEligible"], true);

    let never = ProxyStatus { healthy: false, last_updated: None, node_eligible: true };
    let r = healthz_response(&never, now);
    assert_eq!(r.status, 503);
    assert!(r.body.contains(r#""lastUpdated": "0001-01-01T00:00:00Z""#), "{}", r.body);
}

#[test]
fn point_50_a_node_being_deleted_fails_healthz_not_livez() {
    let now = SystemTime::now();
    let st = ProxyStatus { healthy: true, last_updated: Some(now), node_eligible: false };
    let r = healthz_response(&st, now);
    assert_eq!(r.status, 503);
    assert!(r.body.ends_with(r#""nodeEligible": false}"#), "{}", r.body);
    let r = livez_response(&st, now);
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("nodeEligible"));
    assert!(r.body.contains("lastUpdated"));
}

#[test]
fn point_49_health_check_answer() {
    let r = health_check_response("default", "web", 2, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#);
    assert_eq!(r.header_value("Content-Type"), Some("application/json"));
    assert_eq!(r.header_value("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header_value("X-Load-Balancing-Endpoint-Weight"), Some("2"));

    let r = health_check_response("default", "web", 0, true);
    assert_eq!(r.status, 503);
    assert_eq!(r.header_value("X-Load-Balancing-Endpoint-Weight"), Some("0"));
    assert!(r.body.contains(r#""localEndpoints":0"#));

    // Local endpoints but the proxy is stale: 503, and the body says why.
    let r = health_check_response("default", "web", 3, false);
    assert_eq!(r.status, 503);
    assert_eq!(r.header_value("X-Load-Balancing-Endpoint-Weight"), Some("3"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["serviceProxyHealthy"], false);
    assert_eq!(v["service"]["namespace"], "default");
}

#[test]
fn request_heads_parse() {
    let p = |s: &str| http::parse_head(s.as_bytes());
    assert_eq!(
        p("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
        http::Request { method: "GET".into(), path: "/healthz".into() }
    );
    assert_eq!(p("GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap().path, "/metrics");
    assert_eq!(p("HEAD http://node:10256/livez HTTP/1.1\r\n\r\n").unwrap().path, "/livez");
    assert_eq!(p("GET http://node:10256 HTTP/1.1\r\n\r\n").unwrap().path, "/");
    assert!(p("GET /\r\n\r\n").is_err());
    assert!(p("GET / SPDY/3\r\n\r\n").is_err());
    assert!(p("GET / HTTP/1.1 extra\r\n\r\n").is_err());
    assert!(p("").is_err());
}

#[test]
fn responses_on_the_wire() {
    let r = Response::new(200, "text/plain", "hi").header("X-A", "1");
    assert_eq!(
        String::from_utf8(r.to_bytes(true)).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    assert!(String::from_utf8(r.to_bytes(false)).unwrap().ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"));
}

/// A parsed HTTP response: status, headers (lower-case names), body.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn request(addr: SocketAddr, raw: &str) -> io::Result<Got> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    let got = Got { status, headers, body: body.to_owned() };
    if !raw.starts_with("HEAD ") {
        let len = got.header("content-length").map(|n| n.parse::<usize>().unwrap());
        assert_eq!(len, Some(got.body.len()));
    }
    Ok(got)
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: t\r\n\r\n")).await.expect("GET")
}

async fn spawn_server(handler: Handler) -> (SocketAddr, JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, tokio::spawn(http::serve(l, handler)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn servers_answer_over_tcp() {
    let health = Arc::new(ProxyHealth::new(PERIOD));
    let (haddr, _h) = spawn_server(health_handler(health.clone())).await;
    let metrics = Arc::new(Metrics::new(None));
    let (maddr, _m) = spawn_server(crate::agent::metrics::metrics_handler(metrics.clone())).await;

    // Before the first sync.
    let r = get(haddr, "/healthz").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("\"lastUpdated\": \"0001-01-01T00:00:00Z\""), "{}", r.body);
    assert_eq!(get(haddr, "/livez").await.status, 503);

    health.updated(Instant::now(), SystemTime::now());
    let r = get(haddr, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("connection"), Some("close"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["nodeEligible"], true);
    assert_eq!(get(haddr, "/livez?verbose").await.status, 200);
    assert_eq!(get(haddr, "/other").await.status, 404);

    // HEAD: headers only. Garbage: 400. An oversized head: 431.
    let r = request(haddr, "HEAD /healthz HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(r.header("content-length").is_some_and(|n| n != "0"));
    assert_eq!(request(haddr, "hello\r\n\r\n").await.unwrap().status, 400);
    let big = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(request(haddr, &big).await.unwrap().status, 431);

    // Metrics.
    metrics.sync_ok(Duration::from_millis(2), Duration::from_millis(1), SystemTime::now());
    let r = get(maddr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(crate::agent::metrics::CONTENT_TYPE));
    assert!(r.body.contains("lb_sync_total{result=\"ok\"} 1\n"), "{}", r.body);
    assert_eq!(get(maddr, "/").await.status, 404);

    // A health-check node port on 127.0.0.1.
    let mut hcs = HealthCheckServers::new(None, health.clone());
    let port = free_port();
    let key = ("default".to_owned(), "web".to_owned());
    let local = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let mut wanted: HealthChecks = [(key.clone(), HealthCheck { node_port: port, local_ready: 2 })].into();
    hcs.reconcile(&wanted, &local).await;
    assert_eq!(hcs.listening(), vec![(key.clone(), port, local[0])]);
    let hc = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let r = get(hc, "/any/path").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("2"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.body, r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#);

    // The count changes in place; the proxy going stale fails the check too.
    wanted.get_mut(&key).unwrap().local_ready = 0;
    hcs.reconcile(&wanted, &local).await;
    let r = get(hc, "/").await;
    assert_eq!((r.status, r.header("x-load-balancing-endpoint-weight")), (503, Some("0")));
    wanted.get_mut(&key).unwrap().local_ready = 1;
    hcs.reconcile(&wanted, &local).await;
    assert_eq!(get(hc, "/").await.status, 200);
    let stale = Arc::new(ProxyHealth::new(Duration::ZERO));
    let mut stale_hcs = HealthCheckServers::new(None, stale.clone());
    stale.updated(Instant::now() - Duration::from_secs(1), SystemTime::now());
    stale.queued(Instant::now());
    let port2 = free_port();
    let other = ("default".to_owned(), "other".to_owned());
    stale_hcs.reconcile(&[(other, HealthCheck { node_port: port2, local_ready: 1 })].into(), &local).await;
    let r = get(SocketAddr::from((Ipv4Addr::LOCALHOST, port2)), "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains(r#""serviceProxyHealthy":false"#), "{}", r.body);

    // Moved to another port: the old one stops answering, the new one serves.
    let port3 = free_port();
    wanted.get_mut(&key).unwrap().node_port = port3;
    hcs.reconcile(&wanted, &local).await;
    assert!(request(hc, "GET / HTTP/1.1\r\n\r\n").await.is_err(), "old port closed");
    assert_eq!(get(SocketAddr::from((Ipv4Addr::LOCALHOST, port3)), "/").await.status, 200);

    // Gone (ETP back to Cluster, Service deleted): nothing listens.
    hcs.reconcile(&HealthChecks::new(), &local).await;
    assert!(hcs.listening().is_empty());
    assert!(request(SocketAddr::from((Ipv4Addr::LOCALHOST, port3)), "GET / HTTP/1.1\r\n\r\n").await.is_err());
    // And the port can be served again right away.
    wanted.get_mut(&key).unwrap().node_port = port3;
    hcs.reconcile(&wanted, &local).await;
    assert_eq!(get(SocketAddr::from((Ipv4Addr::LOCALHOST, port3)), "/").await.status, 200);
}

#[tokio::test]
async fn a_failed_bind_is_retried_later() {
    let health = Arc::new(ProxyHealth::new(PERIOD));
    let mut hcs = HealthCheckServers::new(None, health);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let wanted: HealthChecks = [(("ns".to_owned(), "web".to_owned()), HealthCheck { node_port: port, local_ready: 1 })].into();
    let local = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    hcs.reconcile(&wanted, &local).await;
    assert!(hcs.listening().is_empty());
    drop(taken);
    // Within the retry delay nothing is tried again.
    hcs.reconcile(&wanted, &local).await;
    assert!(hcs.listening().is_empty());
    // After it, the bind succeeds.
    for s in hcs.served.values_mut() {
        for t in s.failed.values_mut() {
            *t -= BIND_RETRY;
        }
    }
    hcs.reconcile(&wanted, &local).await;
    assert_eq!(hcs.listening().len(), 1);
}
