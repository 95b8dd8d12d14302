//! Unit tests of [`super`] (metrics).

use std::time::SystemTime;

use super::*;
use crate::model::{Family, Protocol};

fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName { namespace: ns.into(), name: name.into(), port_name: port.into(), protocol, family: Family::V4 }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn a_fresh_agent_exports_zeroes_and_every_error_reason() {
    let out = render(&State::default(), None);
    for want in [
        "lb_service_ports_programmed 0",
        "lb_frontends_programmed 0",
        "lb_backends_programmed 0",
        "lb_sync_duration_seconds_bucket{le=\"+Inf\"} 0",
        "lb_sync_duration_seconds_count 0",
        "lb_sync_total{result=\"ok\"} 0",
        "lb_sync_total{result=\"error\"} 0",
        "lb_sync_errors_total{reason=\"map_full\"} 0",
        "lb_sync_errors_total{reason=\"source\"} 0",
        "lb_objects_invalid 0",
    ] {
        assert!(lines(&out).contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("lb_datapath_packets_total"), "no datapath without pins");
    // Every sample has a TYPE line before it, exactly once per family.
    assert_eq!(out.matches("# TYPE lb_sync_total counter").count(), 1);
    assert!(out.contains("# TYPE lb_sync_duration_seconds histogram"));
    assert!(out.ends_with('\n'));
}

#[test]
fn conntrack_fill_is_exported_once_a_sweep_counted_it() {
    let m = Metrics::new(None);
    let out = render(&m.snapshot(), None);
    assert!(lines(&out).contains(&"lb_conntrack_capacity{family=\"ipv4\"} 131072"), "{out}");
    assert!(lines(&out).contains(&"lb_conntrack_capacity{family=\"ipv6\"} 131072"), "{out}");
    assert!(lines(&out).contains(&"lb_map_capacity{map=\"LB_MAGLEV\"} 65536"), "{out}");
    m.set_map_sizes(MapSizes::for_services(100_000));
    let out = render(&m.snapshot(), None);
    assert!(lines(&out).contains(&"lb_map_capacity{map=\"LB_MAGLEV\"} 400000"), "{out}");
    assert!(!out.contains("lb_conntrack_entries"), "no count before the first sweep:\n{out}");
    m.set_conntrack_entries([4_242, 12]);
    let out = render(&m.snapshot(), None);
    assert!(lines(&out).contains(&"lb_conntrack_entries{family=\"ipv4\"} 4242"), "{out}");
    assert!(lines(&out).contains(&"lb_conntrack_entries{family=\"ipv6\"} 12"), "{out}");
    assert_eq!(out.matches("# TYPE lb_conntrack_entries gauge").count(), 1);
    assert!(!out.contains("lb_snat_slots_in_use"), "no slot count before the first sweep:\n{out}");
    m.set_snat_slots(37);
    assert!(lines(&render(&m.snapshot(), None)).contains(&"lb_snat_slots_in_use 37"));
}

#[test]
fn the_histogram_is_cumulative_with_sum_and_count() {
    let m = Metrics::new(None);
    m.sync_ok(Duration::from_micros(500), Duration::from_millis(1), SystemTime::now()); // <= 0.001
    m.sync_ok(Duration::from_millis(20), Duration::from_millis(1), SystemTime::now()); // <= 0.025
    m.sync_ok(Duration::from_millis(20), Duration::from_millis(1), SystemTime::now());
    m.sync_ok(Duration::from_secs(120), Duration::from_millis(1), SystemTime::now()); // +Inf only
    let out = render(&m.snapshot(), None);
    let l = lines(&out);
    for want in [
        "lb_sync_duration_seconds_bucket{le=\"0.001\"} 1",
        "lb_sync_duration_seconds_bucket{le=\"0.01\"} 1",
        "lb_sync_duration_seconds_bucket{le=\"0.025\"} 3",
        "lb_sync_duration_seconds_bucket{le=\"60\"} 3",
        "lb_sync_duration_seconds_bucket{le=\"+Inf\"} 4",
        "lb_sync_duration_seconds_count 4",
        "lb_sync_total{result=\"ok\"} 4",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{out}");
    }
    let sum: f64 = l.iter().find_map(|l| l.strip_prefix("lb_sync_duration_seconds_sum ")).unwrap().parse().unwrap();
    assert!((sum - 120.0405).abs() < 1e-9, "{sum}");
    assert!(!l.iter().filter(|l| !l.starts_with('#')).any(|l| l.contains("e-")), "no exponent notation: {out}");
}

#[test]
fn sync_errors_count_by_reason_and_in_the_total() {
    let m = Metrics::new(None);
    m.sync_failed("map_full");
    m.sync_failed("map_full");
    m.sync_failed("source");
    let out = render(&m.snapshot(), None);
    let l = lines(&out);
    assert!(l.contains(&"lb_sync_errors_total{reason=\"map_full\"} 2"), "{out}");
    assert!(l.contains(&"lb_sync_errors_total{reason=\"source\"} 1"), "{out}");
    assert!(l.contains(&"lb_sync_errors_total{reason=\"map_write\"} 0"), "{out}");
    assert!(l.contains(&"lb_sync_total{result=\"error\"} 3"), "{out}");
}

#[test]
fn sync_error_reasons_come_from_the_dataplane_error() {
    use crate::{agent::sync::SyncError, dataplane::DataplaneError, maps::MapError};
    let full = SyncError::Apply(DataplaneError::Map(MapError::Full { name: "LB_SERVICES", wanted: 10, limit: 5 }));
    assert_eq!(full.reason(), "map_full");
    let write = MapError::Write { name: "LB_CONFIG", source: std::io::Error::from_raw_os_error(libc::EPERM) };
    assert_eq!(SyncError::NodeSettings(DataplaneError::Map(write)).reason(), "map_write");
    assert_eq!(SyncError::Apply(DataplaneError::NoObject).reason(), "other");
}

#[test]
fn a_rejected_object_counts_once_while_it_stays_rejected() {
    let m = Metrics::new(None);
    let bad = |object: &str, at: &str, what: &str| Skipped {
        object: object.into(),
        reason: crate::model::Rejection::new(crate::model::RejectedField::PortNumber, at, what),
    };
    let a = bad("Service ns/a", "spec.ports[0].port", "0 is not a port number (1-65535)");
    let b = bad("Service ns/b", "spec.ports[2].port", "70000 is not a port number (1-65535)");
    m.set_rejected(std::slice::from_ref(&a));
    m.set_rejected(std::slice::from_ref(&a));
    m.set_rejected(&[a.clone(), b.clone()]);
    let out = render(&m.snapshot(), None);
    assert!(lines(&out).contains(&"lb_objects_rejected_total{reason=\"spec.ports.port\"} 2"), "{out}");
    assert!(lines(&out).contains(&"lb_objects_invalid 2"), "{out}");
    // Fixed, then broken again: counted again.
    m.set_rejected(&[]);
    assert!(lines(&render(&m.snapshot(), None)).contains(&"lb_objects_invalid 0"));
    m.set_rejected(&[a]);
    let out = render(&m.snapshot(), None);
    assert!(lines(&out).contains(&"lb_objects_rejected_total{reason=\"spec.ports.port\"} 3"), "{out}");
}

#[test]
fn datapath_counters_are_named_and_services_labelled() {
    let m = Metrics::new(None);
    m.set_programmed(Programmed {
        service_ports: 2,
        frontends: 3,
        backends: 4,
        names: [
            (7, Arc::new(spn("default", "kubia", "", Protocol::Tcp))),
            (3, Arc::new(spn("kube-system", "dns", "dns\"udp", Protocol::Udp))),
        ]
        .into(),
    });
    let mut global = vec![0u64; lb_common::CNT_MAX as usize];
    global[lb_common::CNT_PACKETS as usize] = 100;
    global[lb_common::CNT_VERDICT_DNAT as usize] = 42;
    let dp = DatapathCounters {
        global,
        services: vec![
            (7, FlowCounters { packets: 10, bytes: 1000, new_flows: 2 }),
            (3, FlowCounters { packets: 5, bytes: 500, new_flows: 5 }),
            (99, FlowCounters { packets: 1, bytes: 1, new_flows: 1 }), // no longer programmed
        ],
        backends: vec![],
        monitor: lb_common::MonitorStats { written: 4, lost: 1 },
    };
    let out = render(&m.snapshot(), Some(&dp));
    let l = lines(&out);
    for want in [
        "lb_service_ports_programmed 2",
        "lb_frontends_programmed 3",
        "lb_backends_programmed 4",
        "lb_datapath_packets_total 100",
        "lb_datapath_verdicts_total{verdict=\"dnat\"} 42",
        "lb_datapath_verdicts_total{verdict=\"reject\"} 0",
        "lb_datapath_drops_total{reason=\"no_backend\"} 0",
        "lb_datapath_pass_reasons_total{reason=\"not_ip\"} 0",
        "lb_datapath_events_total{event=\"sock_translated\"} 0",
        "lb_datapath_events_total{event=\"conntrack_hits\"} 0",
        "lb_monitor_events_total{result=\"written\"} 4",
        "lb_monitor_events_total{result=\"lost\"} 1",
        "lb_service_packets_total{namespace=\"default\",service=\"kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 10",
        "lb_service_bytes_total{namespace=\"default\",service=\"kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 1000",
        "lb_service_new_flows_total{namespace=\"default\",service=\"kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 2",
        "lb_service_packets_total{namespace=\"kube-system\",service=\"dns\",port=\"dns\\\"udp\",protocol=\"UDP\",ip_family=\"IPv4\"} 5",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{out}");
    }
    // Every counter in exactly one family, and the families apart.
    let datapath = l.iter().filter(|l| l.starts_with("lb_datapath_")).count();
    assert_eq!(datapath, lb_common::COUNTER_NAMES.len());
    assert_eq!(l.iter().filter(|l| l.starts_with("lb_datapath_verdicts_total")).count(), 5);
    assert_eq!(l.iter().filter(|l| l.starts_with("lb_service_packets_total")).count(), 2);
    // Sorted by labels: default/kubia before kube-system/dns.
    let kubia = out.find("lb_service_packets_total{namespace=\"default\",service=\"kubia\"").unwrap();
    let dns = out.find("lb_service_packets_total{namespace=\"kube-system\",service=\"dns\"").unwrap();
    assert!(kubia < dns);
}

/// Point 55: the two families of a dual-stack Service's port are two series, told apart by
/// `ip_family` (without it they would be one series exported twice).
#[test]
fn dual_stack_service_ports_are_separate_series() {
    let m = Metrics::new(None);
    let v6 = ServicePortName { family: Family::V6, ..spn("default", "kubia", "http", Protocol::Tcp) };
    m.set_programmed(Programmed {
        names: [(1, Arc::new(spn("default", "kubia", "http", Protocol::Tcp))), (2, Arc::new(v6))].into(),
        ..Programmed::default()
    });
    let stats = |packets| FlowCounters { packets, bytes: 0, new_flows: 0 };
    let dp = DatapathCounters {
        global: vec![0; lb_common::CNT_MAX as usize],
        services: vec![(1, stats(3)), (2, stats(4))],
        backends: vec![],
        monitor: Default::default(),
    };
    let out = render(&m.snapshot(), Some(&dp));
    let l = lines(&out);
    for want in [
        "lb_service_packets_total{namespace=\"default\",service=\"kubia\",port=\"http\",protocol=\"TCP\",ip_family=\"IPv4\"} 3",
        "lb_service_packets_total{namespace=\"default\",service=\"kubia\",port=\"http\",protocol=\"TCP\",ip_family=\"IPv6\"} 4",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn every_sample_line_is_well_formed() {
    let m = Metrics::new(None);
    m.sync_ok(Duration::from_millis(3), Duration::from_millis(1), SystemTime::now());
    let reason = crate::model::Rejection::of(crate::model::RejectedField::Spec, "missing");
    m.set_rejected(&[Skipped { object: "Service a/b".into(), reason }]);
    let dp = DatapathCounters {
        global: vec![1; lb_common::CNT_MAX as usize],
        services: vec![],
        backends: vec![],
        monitor: Default::default(),
    };
    let out = render(&m.snapshot(), Some(&dp));
    let mut typed = BTreeSet::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            assert!(typed.insert(rest.split(' ').next().unwrap().to_owned()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
    }
}

/// Issue 16: online growths by map and the Services left out by the map they do not fit, each
/// exported for every map that grows (zero until it happens), never for conntrack.
#[test]
fn map_growths_and_left_out_services_are_counted_by_map() {
    let m = Metrics::new(None);
    let out = render(&m.snapshot(), None);
    assert!(out.contains("lb_map_resizes_total{map=\"LB_BACKENDS\"} 0"), "{out}");
    assert!(out.contains("lb_services_left_out{map=\"LB_BACKENDS\"} 0"), "{out}");
    assert!(!out.contains("lb_map_resizes_total{map=\"LB_CONNTRACK\"}"), "conntrack does not grow");
    m.map_resized(lb_common::BACKENDS);
    m.map_resized(lb_common::BACKENDS);
    m.map_resized(lb_common::SERVICES);
    m.set_left_out([(lb_common::BACKENDS, 3)].into_iter().collect());
    let out = render(&m.snapshot(), None);
    assert!(out.contains("lb_map_resizes_total{map=\"LB_BACKENDS\"} 2"), "{out}");
    assert!(out.contains("lb_map_resizes_total{map=\"LB_SERVICES\"} 1"), "{out}");
    assert!(out.contains("lb_services_left_out{map=\"LB_BACKENDS\"} 3"), "{out}");
    assert!(out.contains("# TYPE lb_map_resizes_total counter") && out.contains("# TYPE lb_services_left_out gauge"));
}

/// kube-proxy's names, for the dashboards built on them, and the build and process metrics.
#[test]
fn kube_proxy_names_build_info_and_process_metrics_are_exported() {
    let m = Metrics::new(None);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_800_000);
    m.sync_ok(Duration::from_millis(30), Duration::from_millis(3), now);
    m.programmed(&[Duration::from_millis(700), Duration::from_secs(2)]);
    m.set_changes(5, 12);
    let out = render(&m.snapshot(), None);
    let l = lines(&out);
    for want in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1764800000",
        "kubeproxy_network_programming_duration_seconds_bucket{le=\"1\"} 1",
        "kubeproxy_network_programming_duration_seconds_bucket{le=\"2\"} 2",
        "kubeproxy_network_programming_duration_seconds_count 2",
        "kubeproxy_network_programming_duration_seconds_sum 2.7",
        "kubeproxy_sync_proxy_rules_service_changes_total 5",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 12",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(out.contains("# TYPE kubeproxy_network_programming_duration_seconds histogram\n"), "{out}");
    let build = l.iter().find(|l| l.starts_with("lb_build_info{")).expect("lb_build_info");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.ends_with("} 1"), "{build}");
    let rss: f64 = l.iter().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).expect("rss").parse().unwrap();
    assert!(rss > 1e6, "this test process holds more than a megabyte: {rss}");
    for name in ["process_cpu_seconds_total ", "process_open_fds ", "process_max_fds ", "process_start_time_seconds "] {
        assert!(l.iter().any(|l| l.starts_with(name)), "missing {name} in\n{out}");
    }
}

/// `--metrics-backends`: a packet and a byte series per backend, by endpoint and protocol;
/// without it, none.
#[test]
fn backend_series_are_labelled_by_endpoint_and_protocol() {
    let m = Metrics::new(None);
    let be = |addr: [u8; 16], port: u16, proto| lb_common::Backend { addr, port_be: port.to_be(), proto, ..Default::default() };
    let v6: [u8; 16] = "fd00:1::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let backends = vec![
        (
            be(lb_common::v4_mapped([10, 244, 0, 5]), 8080, lb_common::IPPROTO_TCP),
            FlowCounters { packets: 7, bytes: 700, new_flows: 1 },
        ),
        (be(v6, 53, lb_common::IPPROTO_UDP), FlowCounters { packets: 2, bytes: 90, new_flows: 2 }),
    ];
    let dp = DatapathCounters {
        global: vec![0; lb_common::CNT_MAX as usize],
        services: vec![],
        backends,
        monitor: Default::default(),
    };
    let out = render(&m.snapshot(), Some(&dp));
    let l = lines(&out);
    for want in [
        "lb_backend_packets_total{backend=\"10.244.0.5:8080\",protocol=\"TCP\"} 7",
        "lb_backend_bytes_total{backend=\"10.244.0.5:8080\",protocol=\"TCP\"} 700",
        "lb_backend_packets_total{backend=\"[fd00:1::1]:53\",protocol=\"UDP\"} 2",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{out}");
    }
    let none = DatapathCounters { backends: vec![], ..dp };
    assert!(!render(&m.snapshot(), Some(&none)).contains("lb_backend_"));
}
