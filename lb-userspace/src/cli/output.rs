//! How the CLI prints: left-aligned tables for people, JSON for scripts (`-o json`), and the
//! shared spellings of what the maps hold (addresses with ports, protocols, service flags,
//! ages).

use std::{fmt::Write as _, net::IpAddr};

use lb_common::{SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SNAT, SVC_F_SOURCE_RANGES};
use serde::Serialize;

use crate::{
    maps::{MapState, ip_from16},
    model::Protocol,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

pub(super) fn proto_name(n: u8) -> String {
    Protocol::from_number(n).map_or_else(|| n.to_string(), |p| p.as_str().to_owned())
}

/// `a.b.c.d:port` for an IPv4(-mapped) address, `[v6]:port` for IPv6.
pub(super) fn endpoint(addr: [u8; 16], port_be: u16) -> String {
    match ip_from16(addr) {
        IpAddr::V4(a) => format!("{a}:{}", u16::from_be(port_be)),
        IpAddr::V6(a) => format!("[{a}]:{}", u16::from_be(port_be)),
    }
}

pub(super) fn flag_names(flags: u32) -> Vec<&'static str> {
    [
        (SVC_F_EXTERNAL, "external"),
        (SVC_F_SNAT, "snat"),
        (SVC_F_AFFINITY, "affinity"),
        (SVC_F_MAGLEV, "maglev"),
        (SVC_F_DROP_IF_EMPTY, "drop-if-empty"),
        (SVC_F_SOURCE_RANGES, "source-ranges"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

pub(super) fn service_name(st: &MapState, svc_id: u32) -> String {
    st.names.get(&svc_id).map_or_else(|| format!("svc-{svc_id}"), |n| n.as_str().to_owned())
}

pub(super) fn out<T: Serialize>(output: Output, rows: &[T], header: &[&str], cells: impl Fn(&T) -> Vec<String>) -> String {
    match output {
        Output::Json => {
            // Serializing plain rows of strings and numbers cannot fail.
            let mut s = serde_json::to_string_pretty(rows).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => render(header, rows.iter().map(cells)),
    }
}

pub fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// How long ago `unix_ms` was, from `now`, for people: `4s`, `3m12s`, `2h5m`, `3d4h`.
pub fn ago(unix_ms: u64, now: std::time::SystemTime) -> String {
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let s = now.duration_since(then).unwrap_or_default().as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SNAT};

    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = render(&["A", "LONGER"], vec![vec!["xxxx".into(), "1".into()], vec!["y".into(), "22".into()]].into_iter());
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn flags_are_named() {
        assert_eq!(flag_names(SVC_F_EXTERNAL | SVC_F_SNAT | SVC_F_MAGLEV), ["external", "snat", "maglev"]);
        assert!(flag_names(0).is_empty());
    }

    #[test]
    fn ipv6_endpoints_print_bracketed_ipv4_plain() {
        let v6: std::net::Ipv6Addr = "fd00:96::10".parse().unwrap();
        assert_eq!(endpoint(v6.octets(), 80u16.to_be()), "[fd00:96::10]:80");
        assert_eq!(endpoint(lb_common::v4_mapped([10, 96, 0, 10]), 80u16.to_be()), "10.96.0.10:80");
    }

    #[test]
    fn ages_read_like_durations() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |s: u64| (1_000_000 - s) * 1000;
        assert_eq!(ago(ms(4), now), "4s");
        assert_eq!(ago(ms(192), now), "3m12s");
        assert_eq!(ago(ms(7500), now), "2h5m");
        assert_eq!(ago(ms(3 * 86400 + 4 * 3600), now), "3d4h");
    }
}
