//! The agent's account of itself that `lb status` shows: kept up to date by the loop and
//! written to the pinned record only when it changed.

use std::time::SystemTime;

use tracing::warn;

use crate::{
    dataplane::Dataplane,
    maps::agent_record::{AgentReport, unix_ms},
};

/// The report and what the record holds.
pub(super) struct StatusRecord {
    report: AgentReport,
    written: Option<lb_common::AgentStatus>,
}

impl StatusRecord {
    /// A report for this process, started now.
    pub(super) fn new() -> Self {
        Self { report: AgentReport::new(), written: None }
    }

    pub(super) fn synced(&mut self) {
        self.report.last_sync_unix_ms = Some(unix_ms(SystemTime::now()));
    }

    pub(super) fn failed(&mut self, error: &anyhow::Error) {
        self.report.last_error = Some((unix_ms(SystemTime::now()), format!("{error:#}")));
    }

    /// Maps were grown online.
    pub(super) fn grew(&mut self, maps: usize) {
        self.report.map_resizes = self.report.map_resizes.saturating_add(maps as u32);
    }

    /// What is wrong now, one line each.
    pub(super) fn set_problems(&mut self, problems: Vec<String>) {
        self.report.problems_total = problems.len();
        self.report.problems = problems;
    }

    /// Writes the record if it changed; a failure is logged and retried at the next call.
    pub(super) fn write(&mut self, dp: &mut Dataplane) {
        let status = self.report.encode();
        if self.written.as_ref() == Some(&status) {
            return;
        }
        match dp.set_agent_status(&status) {
            Ok(()) => self.written = Some(status),
            Err(e) => warn!(
                error = format!("{e:#}"),
                "writing the agent status for `lb status` failed: restart the agent if it persists (its pins may have been removed by hand); the datapath is not affected"
            ),
        }
    }
}
