//! The agent's account of itself for `lb status` in another process: when it started, its last
//! successful and failed syncs, and what is wrong now (an invalid manifest, a rejected object),
//! and its encoding in the pinned `LB_AGENT` record ([`lb_common::AgentStatus`]). The agent
//! writes it whenever it changes; the CLI reads it back; the datapath never reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use lb_common::{AGENT_ERROR_LEN, AGENT_PROBLEMS_LEN, AgentStatus};
use serde::Serialize;

/// The agent's account, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentReport {
    pub pid: u32,
    /// Milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The last successful sync (milliseconds since the Unix epoch).
    pub last_sync_unix_ms: Option<u64>,
    /// The last failed sync: when, and its error.
    pub last_error: Option<(u64, String)>,
    /// What is wrong now, one line each (as many as fit the record).
    pub problems: Vec<String>,
    /// How many problems there are in all (more than `problems.len()` when they did not fit).
    pub problems_total: usize,
    /// Maps grown online since the agent started.
    pub map_resizes: u32,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The longest prefix of `s` that fits `max` bytes, cut at a character boundary.
fn fit(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AgentReport {
    /// A report for this process, started now.
    pub fn new() -> Self {
        Self { pid: std::process::id(), started_unix_ms: unix_ms(SystemTime::now()), ..Self::default() }
    }

    /// The record written to the map: problems that do not fit are counted, not listed.
    pub fn encode(&self) -> AgentStatus {
        let mut st = AgentStatus {
            pid: self.pid,
            problems_total: self.problems_total.max(self.problems.len()) as u32,
            map_resizes: self.map_resizes,
            started_unix_ms: self.started_unix_ms,
            last_sync_unix_ms: self.last_sync_unix_ms.unwrap_or(0),
            ..AgentStatus::default()
        };
        if let Some((at, text)) = &self.last_error {
            let text = fit(text, AGENT_ERROR_LEN);
            st.last_error_unix_ms = *at;
            st.last_error[..text.len()].copy_from_slice(text.as_bytes());
            st.last_error_len = text.len() as u32;
        }
        let mut used = 0;
        for p in &self.problems {
            // One line per problem, each cut to a fair share of the record.
            let line = fit(p.lines().next().unwrap_or(""), 512);
            let need = line.len() + usize::from(used > 0);
            if used + need > AGENT_PROBLEMS_LEN {
                break;
            }
            if used > 0 {
                st.problems[used] = b'\n';
                used += 1;
            }
            st.problems[used..used + line.len()].copy_from_slice(line.as_bytes());
            used += line.len();
            st.problems_shown += 1;
        }
        st.problems_len = used as u32;
        st
    }

    /// The report in a record; `None` when no agent ever wrote one.
    pub fn decode(st: &AgentStatus) -> Option<Self> {
        if st.pid == 0 {
            return None;
        }
        let text = |bytes: &[u8], len: u32| String::from_utf8_lossy(&bytes[..(len as usize).min(bytes.len())]).into_owned();
        let problems = text(&st.problems, st.problems_len);
        Some(Self {
            pid: st.pid,
            started_unix_ms: st.started_unix_ms,
            last_sync_unix_ms: (st.last_sync_unix_ms != 0).then_some(st.last_sync_unix_ms),
            last_error: (st.last_error_unix_ms != 0).then(|| (st.last_error_unix_ms, text(&st.last_error, st.last_error_len))),
            problems: if problems.is_empty() { Vec::new() } else { problems.split('\n').map(str::to_owned).collect() },
            problems_total: st.problems_total as usize,
            map_resizes: st.map_resizes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_through_the_record() {
        let r = AgentReport {
            pid: 42,
            started_unix_ms: 1_000,
            last_sync_unix_ms: Some(2_000),
            last_error: Some((3_000, "map LB_BACKENDS is full: 10 entries needed, its limit is 8".into())),
            problems: vec!["invalid manifest: a.yaml: document 2: kind: missing".into(), "rejected Service ns/x: spec".into()],
            problems_total: 2,
            map_resizes: 3,
        };
        assert_eq!(AgentReport::decode(&r.encode()), Some(r));
        assert_eq!(AgentReport::decode(&AgentStatus::default()), None, "never written");
    }

    #[test]
    fn problems_that_do_not_fit_are_counted_and_text_is_cut_at_a_character() {
        let problems: Vec<String> = (0..100).map(|i| format!("problem {i}: {}", "é".repeat(40))).collect();
        let st = AgentReport { pid: 1, problems: problems.clone(), problems_total: 100, ..AgentReport::default() }.encode();
        let back = AgentReport::decode(&st).unwrap();
        assert_eq!(back.problems_total, 100);
        assert!(back.problems.len() < 100 && !back.problems.is_empty());
        assert_eq!(back.problems[..], problems[..back.problems.len()]);
        let long = AgentReport { pid: 1, last_error: Some((1, "ü".repeat(400))), ..AgentReport::default() }.encode();
        let text = AgentReport::decode(&long).unwrap().last_error.unwrap().1;
        assert!(text.len() <= AGENT_ERROR_LEN && text.chars().all(|c| c == 'ü'));
    }
}
