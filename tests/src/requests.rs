//! Client traffic for the tests and the benches: one HTTP request to a Service, and a loop of
//! new connections run from a pod's namespace until told to stop, counting what succeeded and
//! what failed.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::netns::Netns;

/// One HTTP request to `addr` on a new connection: whether a test pod answered it.
pub fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: kubia\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    s.read_to_string(&mut body).is_ok() && body.contains("You've hit")
}

/// Requests to `addr` from `ns`, one new connection every `pause`, until `stop` is set:
/// (answered, failed). Blocks: run it on a thread of its own.
pub fn http_loop(ns: &Netns, addr: SocketAddr, pause: Duration, stop: Arc<AtomicBool>) -> anyhow::Result<(u32, u32)> {
    ns.run_in(move || {
        let (mut ok, mut failed) = (0u32, 0u32);
        while !stop.load(Ordering::Relaxed) {
            if http_ok(addr) {
                ok += 1;
            } else {
                failed += 1;
            }
            std::thread::sleep(pause);
        }
        (ok, failed)
    })
}
