//! `lb-testpod`: the workload of test and demo pods. Serves, until killed:
//! - HTTP on `--http PORT` (repeatable: the same answers on every such port, e.g. 8080 and a
//!   plain-HTTP 8443 for a multi-port Service): every request gets `You've hit NAME` (like the
//!   kubia image), except `GET /clientip`, which gets the address the connection came from (like
//!   agnhost netexec);
//! - a line echo on `--echo PORT`: every line gets `NAME` back, on the same connection;
//! - UDP echo on `--udp PORT`: every datagram gets `NAME: <datagram>` back.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

fn main() {
    let mut name = String::from("pod");
    let mut http = Vec::new();
    let (mut echo, mut udp) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--name" => name = val(),
            "--http" => http.push(val()),
            "--echo" => echo = Some(val()),
            "--udp" => udp = Some(val()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mut handles = Vec::new();
    for port in http {
        let l = TcpListener::bind(format!("[::]:{port}")).expect("bind http");
        let n = name.clone();
        handles.push(thread::spawn(move || serve_tcp(l, n, http_conn)));
    }
    if let Some(port) = echo {
        let l = TcpListener::bind(format!("[::]:{port}")).expect("bind echo");
        let n = name.clone();
        handles.push(thread::spawn(move || serve_tcp(l, n, echo_conn)));
    }
    if let Some(port) = udp {
        let s = UdpSocket::bind(format!("[::]:{port}")).expect("bind udp");
        let n = name.clone();
        handles.push(thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((len, peer)) = s.recv_from(&mut buf) {
                let mut reply = format!("{n}: ").into_bytes();
                reply.extend_from_slice(&buf[..len]);
                let _ = s.send_to(&reply, peer);
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("lb-testpod: {err}");
    }
    eprintln!("usage: lb-testpod --name NAME [--http PORT]... [--echo PORT] [--udp PORT]");
    std::process::exit(2);
}

fn serve_tcp(l: TcpListener, name: String, handler: fn(TcpStream, &str)) {
    for conn in l.incoming().flatten() {
        let n = name.clone();
        thread::spawn(move || handler(conn, &n));
    }
}

fn http_conn(mut conn: TcpStream, name: &str) {
    // Read the request head; the answer does not depend on it.
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let clientip = head.starts_with(b"GET /clientip ");
    let body = if clientip {
        // Dual-stack socket: IPv4 peers appear IPv4-mapped; show them as IPv4.
        conn.peer_addr().map(|a| format!("{}\n", a.ip().to_canonical())).unwrap_or_default()
    } else {
        format!("You've hit {name}\n")
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

fn echo_conn(conn: TcpStream, name: &str) {
    let Ok(mut w) = conn.try_clone() else { return };
    for line in BufReader::new(conn).lines() {
        if line.is_err() || writeln!(w, "{name}").is_err() {
            return;
        }
    }
}
