//! Point 50, a stale sync: when changes stop reaching the maps, `/healthz` (and `/livez`) turn
//! 503 once a change has waited longer than twice `--sync-period`, as kube-proxy's do, and `lb
//! status` shows the error. Writes are made to fail from outside: the test freezes the pinned
//! `LB_SERVICES` map (`BPF_MAP_FREEZE`), after which every write to it from user space is
//! refused.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    bins, privilege,
    topology::{HTTP_PORT, Topology},
};

/// `bpf()` commands (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_FREEZE: libc::c_long = 22;

/// Freezes the map pinned at `path`: user space can no longer write it.
fn freeze(path: &str) {
    let path = CString::new(path).unwrap();
    // `union bpf_attr` for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut get = [0u64; 2];
    get[0] = path.as_ptr() as u64;
    // SAFETY: BPF_OBJ_GET reads the path through the pointer, valid for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, get.as_mut_ptr(), 16u32) };
    assert!(fd >= 0, "opening the pinned map: {}", std::io::Error::last_os_error());
    // `union bpf_attr` for BPF_MAP_FREEZE: map_fd.
    let mut attr = [0u64; 1];
    attr[0] = fd as u64;
    // SAFETY: a freeze of a map descriptor we own.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_FREEZE, attr.as_mut_ptr(), 8u32) };
    assert_eq!(r, 0, "freezing the map: {}", std::io::Error::last_os_error());
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd as i32) };
}

/// The status code of `GET path` on `addr`.
fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lb\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn service(name: &str, ip: &str, pod: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, targetPort: {HTTP_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{port: {HTTP_PORT}}}]\nendpoints:\n- addresses: [\"{pod}\"]\n"
    )
}

#[test]
fn point_50_healthz_turns_503_when_changes_stop_reaching_the_maps() {
    if !privilege::require("point_50_healthz_turns_503_when_changes_stop_reaching_the_maps") {
        return;
    }
    let mut topo = Topology::new(1).unwrap();
    let pod = topo.add_pod(0, "kubia-1").unwrap();
    topo.start_workload(pod, &bins::testpod()).unwrap();
    let ip = topo.pods[pod].ip.to_string();
    let health: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.extra_args.extend(["--health-addr".into(), health.to_string(), "--sync-period".into(), "1s".into()]);
    let mut agent = Agent::start(&bins::lb(), &opts, &[("a.yaml", &service("a", "10.96.8.1", &ip))]).unwrap();
    agent.wait_services("a", |rows| rows.iter().any(|r| r["frontend"] == "10.96.8.1:80")).unwrap();
    let wait_for = |what: &str, want: u16| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = (status_of(health, "/healthz"), status_of(health, "/livez"));
            if got == (Some(want), Some(want)) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: /healthz and /livez answered {got:?}\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("in sync", 200);

    freeze(&agent.pin_path.join("LB_SERVICES").display().to_string());
    let changed_at = Instant::now();
    agent.write_manifest("b.yaml", &service("b", "10.96.8.2", &ip)).unwrap();
    wait_for("a change that cannot be written", 503);
    assert!(changed_at.elapsed() >= Duration::from_secs(2), "503 only after twice --sync-period");
    let st = agent.status().unwrap();
    let error = st["agent"]["last_error"].to_string();
    assert!(error.contains("LB_SERVICES"), "lb status shows the failing write: {st:#}");
    // The log line's first words say what to do, before the error chain.
    assert!(
        agent.log_text().lines().any(|l| l.contains("sync failed: the kernel refuses writes to a map (frozen")),
        "{}",
        agent.log_text()
    );
}
