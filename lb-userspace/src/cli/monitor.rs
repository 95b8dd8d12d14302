//! `lb monitor`: the datapath's drops (with their reason), rejects and, on request, sampled new
//! flows with the backend chosen, live from the `LB_EVENTS` ring buffer. While it runs it holds
//! a lease in `LB_MONITOR` (renewed every second, cleared on exit): without one the datapath
//! writes no event at all. One line per event for people, one JSON object per line with
//! `-o json`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use lb_common::{
    COUNTER_NAMES, EVENT_DROP, EVENT_NEW_FLOW, EVENT_REJECT, HOOK_EGRESS, HOOK_EXTERNAL, HOOK_POD, MON_F_DROPS, MON_F_FLOWS,
    MON_F_REJECTS, MonitorConfig, MonitorEvent, SVC_F_ADDR_MARKER, ServiceKey,
};
use serde::Serialize;

use super::output::{Output, endpoint, proto_name, service_name};
use crate::maps::{MapState, ip_from16, pinned::PinnedMaps};

/// How long a lease lasts without renewal (renewed every second).
const LEASE: Duration = Duration::from_secs(3);

/// Which events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    /// Drops, with their reason.
    Drop,
    /// Connections refused (TCP RST, ICMP port unreachable).
    Reject,
    /// New flows with the backend chosen (see --flow-sample).
    Flow,
}

/// What to show and for how long.
pub struct Request {
    pub types: Vec<EventType>,
    /// A reason (counter name, with or without its `drop_` or `reject_` prefix).
    pub reason: Option<String>,
    /// `NAMESPACE/NAME` (or a prefix of a ServicePort name).
    pub service: Option<String>,
    /// Source or destination address.
    pub addr: Option<IpAddr>,
    pub flow_sample: u32,
    pub rate_per_cpu: u32,
    /// Stop after this many events shown.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub output: Output,
}

/// One event as printed.
#[derive(Serialize)]
pub struct EventView {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The drop reason or reject kind (a counter name).
    pub reason: Option<&'static str>,
    pub proto: String,
    pub src: String,
    pub dst: String,
    pub service: Option<String>,
    /// New flows: the backend chosen.
    pub backend: Option<String>,
    /// Where the packet entered: `pod`, `external` or `egress`.
    pub hook: &'static str,
    pub interface: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Clears the lease when the monitor ends, however it ends (but a SIGKILL: then the lease runs
/// out by itself).
struct Lease<'a>(&'a PinnedMaps);

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.set_monitor(&MonitorConfig::default()) {
            eprintln!("lb monitor: could not clear its lease ({e}); the datapath stops writing events within {LEASE:?}");
        }
    }
}

/// CLOCK_MONOTONIC_COARSE in ns: the datapath's clock (lb-common's `ClockCalibration`).
fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the monitor until Ctrl-C, `--count` or `--duration`; prints to stdout.
pub fn run(maps: &PinnedMaps, req: &Request) -> anyhow::Result<()> {
    let mut flags = 0;
    for t in &req.types {
        flags |= match t {
            EventType::Drop => MON_F_DROPS,
            EventType::Reject => MON_F_REJECTS,
            EventType::Flow => MON_F_FLOWS,
        };
    }
    let mut ring = maps.events().context("opening the events ring (is the agent of this lb version running?)")?;
    // Whatever an earlier monitor left unread is not news.
    while ring.next().is_some() {}
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let lease =
        |until| MonitorConfig { until_ns: until, active: 1, flags, flow_sample: req.flow_sample, rate_per_cpu: req.rate_per_cpu };
    maps.set_monitor(&lease(monotonic_coarse_ns() + LEASE.as_nanos() as u64))?;
    let _lease = Lease(maps);
    let before = maps.monitor_stats()?;
    let kinds: Vec<String> = req.types.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
    eprintln!(
        "lb monitor: showing {} events of the datapath at {} (Ctrl-C to stop)",
        kinds.join(", "),
        maps.pin_path().display()
    );

    let mut names = Names::read(maps)?;
    let started = Instant::now();
    let mut renewed = Instant::now();
    let mut shown = 0u64;
    let fd = ring.as_fd().as_raw_fd();
    'outer: loop {
        if STOP.load(Ordering::Relaxed) || req.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if renewed.elapsed() >= Duration::from_secs(1) {
            maps.set_monitor(&lease(monotonic_coarse_ns() + LEASE.as_nanos() as u64))?;
            renewed = Instant::now();
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; EINTR (a signal) is handled by the loop.
        unsafe { libc::poll(&mut pfd, 1, 200) };
        while let Some(item) = ring.next() {
            if item.len() < size_of::<MonitorEvent>() {
                continue;
            }
            // SAFETY: the datapath writes whole `MonitorEvent`s; read unaligned from the ring.
            let ev: MonitorEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            let view = names.view(maps, &ev);
            if !req.wants(&ev, &view) {
                continue;
            }
            println!("{}", render_event(&view, req.output));
            shown += 1;
            if req.count.is_some_and(|c| shown >= c) {
                break 'outer;
            }
        }
    }
    let after = maps.monitor_stats()?;
    eprintln!(
        "lb monitor: {shown} events shown; the datapath wrote {} and lost {} (over the rate or a full ring) meanwhile",
        after.written.saturating_sub(before.written),
        after.lost.saturating_sub(before.lost)
    );
    Ok(())
}

impl Request {
    fn wants(&self, ev: &MonitorEvent, view: &EventView) -> bool {
        if let Some(r) = &self.reason {
            let r = r.to_ascii_lowercase();
            let matches = view.reason.is_some_and(|name| {
                name == r || name.strip_prefix("drop_").or_else(|| name.strip_prefix("reject_")) == Some(r.as_str())
            });
            if !matches {
                return false;
            }
        }
        if let Some(s) = &self.service {
            let prefix = if s.contains(':') { s.clone() } else { format!("{s}:") };
            if !view.service.as_ref().is_some_and(|n| n.starts_with(&prefix)) {
                return false;
            }
        }
        if let Some(a) = self.addr
            && ip_from16(ev.src) != a
            && ip_from16(ev.dst) != a
        {
            return false;
        }
        true
    }
}

/// Names of ServicePorts, frontends, backends and interfaces, read when an event names one not
/// known yet.
struct Names {
    st: MapState,
    read_at: Instant,
    ifnames: BTreeMap<u32, String>,
    /// Wall clock minus the datapath's clock, to date events.
    offset: (SystemTime, u64),
}

impl Names {
    fn read(maps: &PinnedMaps) -> anyhow::Result<Self> {
        Ok(Self {
            st: maps.state()?,
            read_at: Instant::now(),
            ifnames: BTreeMap::new(),
            offset: (SystemTime::now(), monotonic_coarse_ns()),
        })
    }

    fn view(&mut self, maps: &PinnedMaps, ev: &MonitorEvent) -> EventView {
        let frontend = ServiceKey { addr: ev.dst, port_be: ev.dport_be, proto: ev.proto, _pad: 0 };
        let unknown = (ev.svc_id != 0 && !self.st.names.contains_key(&ev.svc_id))
            || (ev.backend_id != 0 && !self.st.backends.contains_key(&ev.backend_id));
        if unknown && self.read_at.elapsed() > Duration::from_secs(1) {
            if let Ok(st) = maps.state() {
                self.st = st;
            }
            self.read_at = Instant::now();
        }
        let svc_id = if ev.svc_id != 0 {
            Some(ev.svc_id)
        } else {
            self.st.services.get(&frontend).filter(|v| v.flags & SVC_F_ADDR_MARKER == 0).map(|v| v.svc_id)
        };
        let ifname = self.ifnames.entry(ev.ifindex).or_insert_with(|| interface_name(ev.ifindex)).clone();
        let (wall, mono) = self.offset;
        let at = wall - Duration::from_nanos(mono.saturating_sub(ev.ts_ns));
        let time = k8s_openapi::jiff::Timestamp::try_from(at).map(|t| format!("{t:.3}")).unwrap_or_default();
        let reason =
            matches!(ev.kind, EVENT_DROP | EVENT_REJECT).then(|| COUNTER_NAMES.get(ev.reason as usize).copied()).flatten();
        EventView {
            time,
            kind: match ev.kind {
                EVENT_DROP => "drop",
                EVENT_REJECT => "reject",
                EVENT_NEW_FLOW => "flow",
                _ => "unknown",
            },
            reason,
            proto: proto_name(ev.proto).to_lowercase(),
            src: endpoint(ev.src, ev.sport_be),
            dst: endpoint(ev.dst, ev.dport_be),
            service: svc_id.map(|id| service_name(&self.st, id)),
            backend: (ev.backend_id != 0).then(|| {
                self.st
                    .backends
                    .get(&ev.backend_id)
                    .map_or_else(|| format!("backend {}", ev.backend_id), |b| endpoint(b.addr, b.port_be))
            }),
            hook: match ev.hook {
                HOOK_POD => "pod",
                HOOK_EXTERNAL => "external",
                HOOK_EGRESS => "egress",
                _ => "",
            },
            interface: ifname,
        }
    }
}

/// The name of interface `ifindex` in this network namespace (`if N` when it has none here: the
/// monitor runs in another namespace than the agent).
fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if {ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// One line: a JSON object, or for people
/// `12:00:01.123Z drop drop_source_range tcp 192.0.2.9:40000 -> 198.51.100.7:80 default/lb:80/TCP (external, u0)`.
pub fn render_event(v: &EventView, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string(v).unwrap_or_default(),
        Output::Table => {
            let time = v.time.split_once('T').map_or(v.time.as_str(), |(_, t)| t);
            let mut line = format!("{time}  {:<6}", v.kind);
            if let Some(r) = v.reason {
                line.push_str(&format!("  {r}"));
            }
            line.push_str(&format!("  {} {} -> {}", v.proto, v.src, v.dst));
            if let Some(s) = &v.service {
                line.push_str(&format!("  {s}"));
            }
            if let Some(b) = &v.backend {
                line.push_str(&format!(" → {b}"));
            }
            line.push_str(&format!("  ({}, {})", v.hook, v.interface));
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> EventView {
        EventView {
            time: "2026-12-04T12:00:01.123Z".into(),
            kind: "drop",
            reason: Some("drop_source_range"),
            proto: "tcp".into(),
            src: "192.0.2.9:40000".into(),
            dst: "198.51.100.7:80".into(),
            service: Some("default/lb:http/TCP".into()),
            backend: None,
            hook: "external",
            interface: "eth0".into(),
        }
    }

    #[test]
    fn human_lines_read_left_to_right() {
        assert_eq!(
            render_event(&view(), Output::Table),
            "12:00:01.123Z  drop    drop_source_range  tcp 192.0.2.9:40000 -> 198.51.100.7:80  default/lb:http/TCP  (external, eth0)"
        );
        let j: serde_json::Value = serde_json::from_str(&render_event(&view(), Output::Json)).unwrap();
        assert_eq!((&j["type"], &j["reason"]), (&"drop".into(), &"drop_source_range".into()));
    }

    #[test]
    fn filters_take_reasons_with_or_without_prefix_and_services_by_name() {
        let ev = MonitorEvent { src: lb_common::v4_mapped([192, 0, 2, 9]), ..MonitorEvent::default() };
        let req = |reason: Option<&str>, service: Option<&str>, addr: Option<&str>| Request {
            types: vec![EventType::Drop],
            reason: reason.map(Into::into),
            service: service.map(Into::into),
            addr: addr.map(|a| a.parse().unwrap()),
            flow_sample: 1,
            rate_per_cpu: 1000,
            count: None,
            duration: None,
            output: Output::Table,
        };
        let v = view();
        assert!(req(Some("source_range"), None, None).wants(&ev, &v));
        assert!(req(Some("drop_source_range"), Some("default/lb"), Some("192.0.2.9")).wants(&ev, &v));
        assert!(!req(Some("no_backend"), None, None).wants(&ev, &v));
        assert!(!req(None, Some("default/l"), None).wants(&ev, &v), "a Service name, not any prefix");
        assert!(!req(None, None, Some("192.0.2.10")).wants(&ev, &v));
    }
}
