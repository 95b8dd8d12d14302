//! B3: the control plane. The real agent process (`lb agent --source kube:KUBECONFIG`) against
//! the in-process API server (`lb_tests::apiserver::ApiServer`, real list/watch over HTTP),
//! with N services of 10 endpoints each, every endpoint its own pod (N × 10 distinct addresses,
//! as in a real cluster):
//!
//! - full sync: from spawning the agent to every frontend in the pinned LB_SERVICES map (the
//!   last frontend the agent writes is looked up every millisecond, then the whole map is
//!   counted once); the agent's own log gives the split (datapath loaded, synced);
//! - peak RSS of the agent (`VmHWM`);
//! - event to map: one endpoint of one service replaced in its EndpointSlice on the API
//!   server, timed until the new endpoint's backend id is in that service's Maglev table in
//!   the pinned maps (new connections can select it), repeated over different services;
//! - the file source (`--source file:DIR`, 100 services per file) at up to 100,000 services:
//!   the same full sync and peak RSS, and one endpoint changed in one file until it is in the
//!   maps;
//! - maps growing online under traffic: an agent whose maps were created small is given
//!   thousands of Services with endpoints of their own while a client pod runs a loop of new
//!   HTTP connections and holds one long-lived connection through a Service: the failed
//!   requests, the growths and whether the long-lived connection kept its pod;
//! - the same work for kube-proxy-style baselines in a scratch namespace: `iptables-restore`
//!   of the whole ruleset (empty tables, and `--noflush` over the loaded rules as kube-proxy's
//!   full sync does), kube-proxy's partial sync after one endpoint change
//!   (`iptables-restore --noflush` of KUBE-SERVICES and the changed chains), `nft -f` of the
//!   whole table and of the one-service transaction kube-proxy's nftables mode sends.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use common::{Opts, Svc, median, ms, percentile, summary};
use lb_common::{Backend, ServiceKey, ServiceValue, v4_mapped};
use lb_tests::{
    apiserver::ApiServer,
    bins,
    netns::{Netns, unique_token},
};
use serde_json::{Value, json};

const ENDPOINTS: u32 = 10;

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The agent process, killed and its pins removed on drop.
struct AgentProc {
    child: Child,
    pin: PathBuf,
    log: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if std::env::var("LB_B3_AGENT_WRAP").is_ok_and(|w| !w.trim().is_empty()) {
            // The agent is the wrapper's child (see `start_and_sync`).
            let _ = Command::new("pkill").arg("-TERM").arg("-f").arg(&self.pin).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = lb_userspace::dataplane::cleanup(&self.pin);
        // LB_B3_KEEP_LOGS=1 keeps the agent's log (its `synced` lines split each sync's time);
        // LB_B3_AGENT_LOG sets its filter (default `info`; `info,lb_userspace::agent=debug` adds
        // the planning ahead of the lists and each sync's plan before its writes).
        if std::env::var("LB_B3_KEEP_LOGS").is_ok_and(|v| v == "1") {
            println!("b3: agent log kept: {}", self.log.display());
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}

impl AgentProc {
    fn status_kib(&self, field: &str) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Peak resident set size.
    fn vm_hwm_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// Resident set size now.
    fn vm_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("{st}; log:\n{}", fs::read_to_string(&self.log).unwrap_or_default())),
            _ => None,
        }
    }
}

fn key(vip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey { addr: v4_mapped(vip.octets()), port_be: port.to_be(), proto: lb_common::IPPROTO_TCP, _pad: 0 }
}

fn open<K: aya::Pod, V: aya::Pod>(pin: &Path, name: &str) -> anyhow::Result<AyaHashMap<MapData, K, V>> {
    Ok(AyaHashMap::try_from(Map::from_map_data(MapData::from_pin(pin.join(name))?)?)?)
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm) = (n(11..13)?, n(14..16)?);
    let secs: f64 = s.get(17..)?.trim_end_matches('Z').parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + secs)
}

/// Seconds from `start` (wall clock) to the first log line containing `needle`.
fn log_time(log: &Path, needle: &str, start: SystemTime) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    log_line_time(line, start)
}

/// Seconds from `start` to the last agent log line containing `needle`.
fn last_log_time(log: &Path, needle: &str, start: SystemTime) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().rfind(|l| l.contains(needle))?;
    log_line_time(line, start)
}

fn log_line_time(line: &str, start: SystemTime) -> Option<f64> {
    let t = parse_rfc3339(line.split_whitespace().next()?)?;
    let s = start.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(t - s)
}

struct SyncOut {
    agent: AgentProc,
    sync_s: f64,
    loaded_s: Option<f64>,
    /// The last of the initial lists (Services, EndpointSlices, Nodes) received.
    lists_s: Option<f64>,
    synced_log_s: Option<f64>,
}

/// Starts the agent on `source` (`kube:KUBECONFIG` or `file:DIR`) and waits until all `svcs`
/// are in its maps.
fn start_and_sync(lb: &Path, source: &str, svcs: &[Svc], listen_flags: bool) -> anyhow::Result<SyncOut> {
    let token = unique_token();
    let pin = PathBuf::from(format!("/sys/fs/bpf/lbbench-b3-{token}"));
    let log = std::env::temp_dir().join(format!("lbbench-b3-{token}.log"));
    // LB_B3_AGENT_WRAP runs the agent under a profiler (`heaptrack -o /tmp/ht-{token}`, the
    // token naming each start): the child is then the wrapper, so the RSS columns are the
    // wrapper's; the agent is stopped by its pin path.
    let mut cmd = match std::env::var("LB_B3_AGENT_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let wrap = wrap.replace("{token}", &token);
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().expect("a word"));
            c.args(words).arg(lb);
            c
        }
        _ => Command::new(lb),
    };
    cmd.args(["agent", "--source", source]).arg("--pin-path").arg(&pin).args(["--node-name", common::NODE_NAME]);
    if listen_flags {
        cmd.args(["--metrics-addr", "none", "--health-addr", "none"]);
    }
    let start_wall = SystemTime::now();
    let t0 = Instant::now();
    let child = cmd
        .env("RUST_LOG", std::env::var("LB_B3_AGENT_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()?;
    let mut agent = AgentProc { child, pin: pin.clone(), log: log.clone() };
    let last = svcs.iter().map(|s| key(s.vip, s.port)).max().expect("services");
    let deadline = Instant::now() + Duration::from_secs(300);
    let sync_s = loop {
        if let Some(why) = agent.exited() {
            anyhow::bail!("the agent exited: {why}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not sync in time; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        if let Ok(m) = open::<ServiceKey, ServiceValue>(&pin, lb_common::SERVICES)
            && m.get(&last, 0).is_ok()
        {
            let at = t0.elapsed().as_secs_f64();
            let frontends = m.keys().filter_map(Result::ok).filter(|k| k.proto != 0).count();
            if frontends >= svcs.len() {
                break at;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let loaded_s = log_time(&log, "datapath loaded", start_wall);
    // The log line is written after the maps.
    std::thread::sleep(Duration::from_millis(50));
    let synced_log_s = log_time(&log, " synced", start_wall);
    let lists_s = last_log_time(&log, "initial list received", start_wall);
    Ok(SyncOut { agent, sync_s, loaded_s, lists_s, synced_log_s })
}

/// Full syncs timed at up to this many Services are started [`SYNC_RUNS`] times (one start is
/// one sample of a machine whose single runs spread ±20 %); larger ones once (minutes each).
const SYNC_RUNS_UP_TO: usize = 10_000;
const SYNC_RUNS: usize = 3;

/// Sync times for the log: `0.489, 0.396, 0.460 s`.
fn runs_text(runs: &[f64]) -> String {
    let each: Vec<String> = runs.iter().map(|s| format!("{s:.3}")).collect();
    format!("{} s", each.join(", "))
}

/// [`start_and_sync`] `runs` times on the same objects, each agent stopped (its pins removed)
/// before the next starts: the medians of the times and of the peak RSS after the sync, every
/// sync time, and the last agent, kept running.
fn start_and_sync_runs(
    lb: &Path,
    source: &str,
    svcs: &[Svc],
    listen_flags: bool,
) -> anyhow::Result<(SyncOut, Option<u64>, Vec<f64>)> {
    let runs = if svcs.len() <= SYNC_RUNS_UP_TO { SYNC_RUNS } else { 1 };
    let (mut sync, mut loaded, mut lists, mut logged, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last: Option<SyncOut> = None;
    for _ in 0..runs {
        drop(last.take());
        let out = start_and_sync(lb, source, svcs, listen_flags)?;
        sync.push(out.sync_s);
        loaded.extend(out.loaded_s);
        lists.extend(out.lists_s);
        logged.extend(out.synced_log_s);
        rss.extend(out.agent.vm_hwm_kib());
        last = Some(out);
    }
    let mut out = last.expect("at least one run");
    let mid = |v: &[f64]| (!v.is_empty()).then(|| median(v));
    out.sync_s = median(&sync);
    (out.loaded_s, out.lists_s, out.synced_log_s) = (mid(&loaded), mid(&lists), mid(&logged));
    rss.sort_unstable();
    let rss = rss.get(rss.len() / 2).copied();
    Ok((out, rss, sync))
}

/// Backend ids in a service's Maglev table of `slot_count` slots, read whatever the agent's
/// chunk size (an earlier build's agent may be measured in the same run): raw lookups of the
/// chunks, each `value size / 4` ids.
fn table_ids(maglev: &MapData, select_id: u32, slot_count: u32) -> BTreeSet<u32> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Ok(info) = maglev.info() else { return BTreeSet::new() };
    let value_size = info.value_size() as usize;
    let per_chunk = (value_size / 4).max(1) as u32;
    let mut ids = BTreeSet::new();
    let mut value = vec![0u8; value_size];
    for chunk in 0..slot_count.div_ceil(per_chunk) {
        let key = [select_id.to_ne_bytes(), chunk.to_ne_bytes()].concat();
        // `union bpf_attr` for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key, value, flags.
        let attr: [u64; 4] =
            [u64::from(maglev.fd().as_fd().as_raw_fd() as u32), key.as_ptr() as u64, value.as_mut_ptr() as u64, 0];
        // SAFETY: BPF_MAP_LOOKUP_ELEM (1) reads the key and writes `value_size` bytes into
        // `value`, both outliving the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 1, attr.as_ptr(), size_of_val(&attr)) };
        if r == 0 {
            ids.extend(value.chunks_exact(4).map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]])).filter(|id| *id != 0));
        }
    }
    ids
}

/// Timestamps (seconds since the epoch) of the agent's `synced` log lines so far.
fn synced_lines(log: &Path) -> Vec<f64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" synced"))
        .filter_map(|l| parse_rfc3339(l.split_whitespace().next()?))
        .collect()
}

/// `took_ms` of the agent's `synced` log lines so far: how long each sync itself took, from the
/// snapshot to the log line.
fn synced_took_ms(log: &Path) -> Vec<f64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" synced"))
        .filter_map(|l| l.split("took_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// One endpoint change, written by `publish` (to the API server, or into a manifest file):
/// seconds until the new backend is selectable, and seconds until the agent logged the sync
/// that wrote it (its log line follows the map writes).
fn change_latency(
    agent: &AgentProc,
    svc: &mut Svc,
    new_ip: Ipv4Addr,
    publish: impl FnOnce(&Svc) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let pin = &agent.pin;
    let services: AyaHashMap<MapData, ServiceKey, ServiceValue> = open(pin, lb_common::SERVICES)?;
    let maglev = MapData::from_pin(pin.join(lb_common::MAGLEV))?;
    // An array by dense id (an unused slot is all zeros).
    let backends: aya::maps::Array<MapData, Backend> =
        aya::maps::Array::try_from(Map::from_map_data(MapData::from_pin(pin.join(lb_common::BACKENDS))?)?)?;
    let v = services.get(&key(svc.vip, svc.port), 0)?;
    let old_ids = table_ids(&maglev, v.select_id, v.slot_count);
    svc.endpoints[0] = new_ip;
    let want = v4_mapped(new_ip.octets());
    let logged_before = synced_lines(&agent.log).len();
    let wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let t0 = Instant::now();
    publish(svc)?;
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let ids = table_ids(&maglev, v.select_id, v.slot_count);
        if ids.difference(&old_ids).any(|id| backends.get(id, 0).is_ok_and(|b| b.addr == want)) {
            let seen = t0.elapsed().as_secs_f64();
            // The agent's own line for this sync (written right after the maps).
            let mut logged = None;
            for _ in 0..50 {
                if let Some(t) = synced_lines(&agent.log).get(logged_before) {
                    logged = Some(t - wall);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            return Ok((seen, logged));
        }
        anyhow::ensure!(Instant::now() < deadline, "the change to {} did not reach the maps in 30 s", svc.name);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The agent's per-sync work measured in this process with the same library, as the agent
/// does it: the snapshot of the watch caches (their shared lists), compile of both
/// families through the agent's memo (the changed Service only; a full compile is timed too),
/// the incremental plan and the diff of its touched keys after one endpoint change (the full
/// plan and diff are timed too). Medians of 3, in milliseconds.
fn pipeline(svcs: &[Svc]) -> anyhow::Result<Value> {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;
    use lb_userspace::model::slice::Slice;
    use lb_userspace::{
        compile::compile_all,
        compile::memo::Changed,
        compile::memo::CompileMemo,
        maps::diff,
        maps::touched::diff_touched,
        model::NodeContext,
        plan::Planner,
        plan::{PlanConfig, PlanMemory, map_state},
    };
    let services: Vec<Arc<Service>> =
        svcs.iter().map(|s| serde_json::from_value(s.service_json()).map(Arc::new)).collect::<Result<_, _>>()?;
    let mut slices: Vec<Arc<Slice>> =
        svcs.iter().map(|s| serde_json::from_value(s.slice_json()).map(Arc::new)).collect::<Result<_, _>>()?;
    let node = NodeContext { name: common::NODE_NAME.into(), ..Default::default() };
    let time = |f: &mut dyn FnMut()| -> f64 {
        let mut v: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                ms(t.elapsed())
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[1]
    };
    // The watch caches keep their lists sorted as events arrive; a snapshot shares them.
    let cached = lb_userspace::source::ClusterObjects {
        services: services.clone().into(),
        slices: slices.clone().into(),
        nodes: Default::default(),
        changes: None,
    };
    let snapshot_ms = time(&mut || {
        std::hint::black_box(cached.clone());
    });
    // One endpoint replaced in one slice.
    let mut changed = svcs[svcs.len() / 2].clone();
    changed.endpoints[0] = Ipv4Addr::new(10, 202, 0, 1);
    let old_slice = slices[svcs.len() / 2].clone();
    let new_slice: Arc<Slice> = Arc::new(serde_json::from_value(changed.slice_json())?);
    // The agent compiles through its memo: only the Service whose objects changed, read from
    // the watch caches' change log (one entry: the slice replaced). Each repetition flips the
    // one slice between its two versions.
    use lb_userspace::model::changes::{Changes, ObjectChanges};
    let log = |version: u64, entry: Option<(Arc<Slice>, Arc<Slice>)>| ObjectChanges {
        services: Changes { epoch: 1, from: 0, version: 0, entries: vec![] },
        slices: Changes {
            epoch: 2,
            from: version - u64::from(entry.is_some()),
            version,
            entries: entry.map(|(a, b)| (Some(a), Some(b))).into_iter().collect(),
        },
    };
    let mut memo = CompileMemo::default();
    memo.compile_logged(&services, &slices, Some(&log(0, None)), &node);
    let mut version = 0;
    let compile_ms = time(&mut || {
        version += 1;
        let (from, to) = if version % 2 == 1 { (&old_slice, &new_slice) } else { (&new_slice, &old_slice) };
        slices[svcs.len() / 2] = to.clone();
        let changes = log(version, Some((from.clone(), to.clone())));
        std::hint::black_box(memo.compile_logged(&services, &slices, Some(&changes), &node));
    });
    anyhow::ensure!(memo.logged_calls() > 0, "the memo read no change log");
    let full_compile_ms = time(&mut || {
        std::hint::black_box(compile_all(&services, &slices, &node));
    });
    slices[svcs.len() / 2] = old_slice;
    let (desired, _) = compile_all(&services, &slices, &node);
    slices[svcs.len() / 2] = new_slice;
    let (desired2, _) = compile_all(&services, &slices, &node);
    // The full plan, for comparison: every table planned from the ids and Maglev tables of
    // the state before the change.
    let mut ids = PlanMemory::default();
    let before = map_state(&desired, &mut ids, &PlanConfig::default());
    let full_plan_ms = time(&mut || {
        std::hint::black_box(map_state(&desired2, &mut ids.clone(), &PlanConfig::default()));
    });
    let after = map_state(&desired2, &mut ids, &PlanConfig::default());
    let full_diff_ms = time(&mut || {
        std::hint::black_box(diff(&before, &after));
    });
    // The agent's incremental planner: each repetition flips the changed Service between its
    // two versions, plans (that ServicePort again, the rest compared) and diffs its touched
    // keys against what the maps hold.
    // The memo reports which ServicePorts its compile changed: only those are compared.
    let changed = Changed::Only(
        desired2.services.keys().filter(|k| desired.services.get(*k) != desired2.services.get(*k)).cloned().collect(),
    );
    let mut planner = Planner::new(PlanConfig::default());
    planner.plan(&desired);
    let mut maps = planner.state().clone();
    planner.applied();
    let (mut flip, mut ops) = (false, 0);
    let (mut plan_t, mut diff_t) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        flip = !flip;
        let t = Instant::now();
        std::hint::black_box(planner.plan_changed(if flip { &desired2 } else { &desired }, &changed));
        plan_t.push(ms(t.elapsed()));
        let t = Instant::now();
        let d = std::hint::black_box(diff_touched(&maps, planner.state(), planner.pending()));
        diff_t.push(ms(t.elapsed()));
        ops = d.len();
        maps.apply(&d);
        planner.applied();
    }
    anyhow::ensure!(&maps == planner.state(), "the incremental plan's writes give its state");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    Ok(json!({
        "snapshot_ms": snapshot_ms, "compile_ms": compile_ms, "full_compile_ms": full_compile_ms,
        "plan_ms": median(plan_t), "diff_ms": median(diff_t), "diff_ops": ops,
        "full_plan_ms": full_plan_ms, "full_diff_ms": full_diff_ms,
        "coalesce_window_ms": ms(lb_userspace::source::kube::COALESCE_WINDOW),
    }))
}

struct Sizes {
    scales: Vec<u32>,
    change_scale: u32,
    changes: usize,
    baseline_changes: usize,
    /// Largest N for the `--noflush` full iptables resync (minutes at 10,000 services).
    noflush_max: u32,
    /// Service counts of the file-source runs, and the edited files timed at each.
    file_scales: Vec<u32>,
    file_changes: usize,
    /// Services added at once to an agent with small maps, under traffic.
    growth_services: u32,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse("b3");
    common::require_privileges("b3");
    let sizes = if opts.quick {
        Sizes {
            scales: vec![1_000],
            change_scale: 1_000,
            changes: 10,
            baseline_changes: 3,
            noflush_max: 1_000,
            file_scales: vec![1_000],
            file_changes: 3,
            growth_services: 100,
        }
    } else {
        Sizes {
            scales: vec![1_000, 10_000, 100_000],
            change_scale: 10_000,
            changes: 30,
            baseline_changes: 3,
            noflush_max: 1_000,
            file_scales: vec![1_000, 10_000, 100_000],
            file_changes: 10,
            growth_services: 2_000,
        }
    };
    // LB_B3_SCALES=100000 runs only those service counts, kube and file sources (for a quick
    // look while working on one scale; the report then lacks the other rows).
    let mut sizes = sizes;
    if let Ok(only) = std::env::var("LB_B3_SCALES") {
        let only: Vec<u32> = only.split(',').filter_map(|n| n.trim().parse().ok()).collect();
        sizes.scales.retain(|n| only.contains(n));
        sizes.file_scales.retain(|n| only.contains(n));
    }
    let lb = bins::lb();
    let help = Command::new(&lb).args(["agent", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let listen_flags = help.contains("--metrics-addr") && help.contains("--health-addr");
    println!("b3: agent {} ({} endpoints per service)", lb.display(), ENDPOINTS);

    let mut lb_rows = Vec::new();
    let mut change = Value::Null;
    for &n in &sizes.scales {
        let api = ApiServer::start()?;
        let mut svcs: Vec<Svc> = (0..n).map(|i| Svc::dummy_own(i, ENDPOINTS)).collect();
        let t = Instant::now();
        for s in &svcs {
            api.apply(s.service_json())?;
            api.apply(s.slice_json())?;
        }
        let fill_s = t.elapsed().as_secs_f64();
        let kubeconfig = std::env::temp_dir().join(format!("lbbench-b3-{}-kubeconfig", unique_token()));
        api.kubeconfig(&kubeconfig)?;
        let (mut out, rss_sync, sync_runs) =
            start_and_sync_runs(&lb, &format!("kube:{}", kubeconfig.display()), &svcs, listen_flags)?;
        println!(
            "b3: {n} services: synced {:.3} s after the agent started (median of {}; log: datapath loaded at {:.3} s, initial lists in at {:.3} s, synced at {:.3} s); peak RSS {:.1} MiB",
            out.sync_s,
            runs_text(&sync_runs),
            out.loaded_s.unwrap_or(f64::NAN),
            out.lists_s.unwrap_or(f64::NAN),
            out.synced_log_s.unwrap_or(f64::NAN),
            rss_sync.unwrap_or(0) as f64 / 1024.0
        );
        let mut large_change = Value::Null;
        if n == sizes.change_scale || n >= 100_000 {
            let count = if n == sizes.change_scale { sizes.changes } else { 10 };
            let (mut lat, mut logged) = (Vec::new(), Vec::new());
            for c in 0..count {
                let i = (c * 7919) % svcs.len();
                let new_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + c as u32);
                let (l, log_s) = change_latency(&out.agent, &mut svcs[i], new_ip, |s| api.apply(s.slice_json()).map(drop))?;
                lat.push(l * 1e3);
                if let Some(x) = log_s {
                    logged.push(x * 1e3);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(why) = out.agent.exited() {
                anyhow::bail!("the agent exited: {why}");
            }
            println!(
                "b3: {n} services: one endpoint change in the maps: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} changes)",
                median(&lat),
                percentile(&lat, 99.0),
                common::max(&lat),
                lat.len()
            );
            // The agent's own time per sync (snapshot → compile → plan → writes), for the same changes.
            let took: Vec<f64> = synced_took_ms(&out.agent.log).into_iter().rev().take(lat.len()).collect();
            println!(
                "b3: (the agent logged each sync {:.1} ms after the write, median; the sync itself took {:.1} ms, median)",
                median(&logged),
                median(&took)
            );
            let measured = json!({"services": n, "latency_ms": summary(&lat), "agent_logged_ms": summary(&logged), "agent_sync_ms": summary(&took)});
            if n == sizes.change_scale {
                change = measured;
            } else {
                large_change = measured;
            }
        }
        let rss_end = out.agent.vm_hwm_kib();
        let rss_now = out.agent.vm_rss_kib();
        let (sync_s, loaded_s, lists_s, synced_log_s) = (out.sync_s, out.loaded_s, out.lists_s, out.synced_log_s);
        drop(out);
        // The in-process breakdown and the baselines stop at 10,000 (minutes beyond).
        let pipe = if n <= 10_000 { pipeline(&svcs)? } else { Value::Null };
        if !pipe.is_null() {
            println!(
                "b3: {n} services: one sync's work in-process: snapshot {:.1} ms, compile {:.1} ms, plan {:.1} ms, diff {:.1} ms ({} map writes); syncs at most every {:.0} ms",
                f64_of(&pipe["snapshot_ms"]),
                f64_of(&pipe["compile_ms"]),
                f64_of(&pipe["plan_ms"]),
                f64_of(&pipe["diff_ms"]),
                pipe["diff_ops"],
                f64_of(&pipe["coalesce_window_ms"])
            );
        }
        lb_rows.push(json!({
            "services": n, "endpoints_per_service": ENDPOINTS, "api_fill_s": fill_s,
            "sync_s": sync_s, "sync_s_runs": sync_runs, "log_datapath_loaded_s": loaded_s, "log_lists_s": lists_s, "log_synced_s": synced_log_s,
            "vm_hwm_kib_after_sync": rss_sync, "vm_hwm_kib_end": rss_end, "vm_rss_kib_end": rss_now, "pipeline": pipe,
            "change": large_change,
        }));
        let _ = fs::remove_file(&kubeconfig);
    }

    let file_rows = file_source(&lb, &sizes, listen_flags)?;
    // LB_B3_LB_ONLY=1 stops after lb's own sync rows (a quick look: no growth run, no baselines).
    if std::env::var("LB_B3_LB_ONLY").is_ok_and(|v| v == "1") {
        common::write_results(&opts, "b3", json!({"lb": lb_rows, "lb_change": change, "lb_file": file_rows}));
        return Ok(());
    }
    let growth = growth_under_traffic(&lb, sizes.growth_services)?;

    // Baselines, in a namespace of their own.
    let ns = Netns::new(&format!("lbb3{}", unique_token()))?;
    let mut base_rows = Vec::new();
    let mut base_change = Value::Null;
    for &n in sizes.scales.iter().filter(|n| **n <= 10_000) {
        let mut svcs: Vec<Svc> = (0..n).map(|i| Svc::dummy_own(i, ENDPOINTS)).collect();
        let ipt = common::iptables_ruleset(&svcs);
        let ipt_full = common::run_with_stdin(ns.name(), &["iptables-restore"], &ipt)?;
        let ipt_noflush = if n <= sizes.noflush_max {
            Some(common::run_with_stdin(ns.name(), &["iptables-restore", "--noflush"], &ipt)?)
        } else {
            None
        };
        let nft = common::nft_ruleset(&svcs, None);
        let nft_full = common::run_with_stdin(ns.name(), &["nft", "-f", "-"], &nft)?;
        println!(
            "b3: {n} services: iptables-restore {:.2} s{}, nft -f {:.2} s",
            ipt_full.as_secs_f64(),
            ipt_noflush.map(|d| format!(" (--noflush over the loaded rules: {:.2} s)", d.as_secs_f64())).unwrap_or_default(),
            nft_full.as_secs_f64()
        );
        let mut row = json!({
            "services": n, "iptables_restore_s": ipt_full.as_secs_f64(),
            "iptables_restore_noflush_s": ipt_noflush.map(|d| d.as_secs_f64()),
            "nft_full_s": nft_full.as_secs_f64(),
            "iptables_rules_lines": ipt.lines().count(), "nft_lines": nft.lines().count(),
        });
        if n == sizes.change_scale {
            let (mut ipt_ms, mut nft_ms) = (Vec::new(), Vec::new());
            for c in 0..sizes.baseline_changes {
                let i = (c * 7919) % svcs.len();
                let old = svcs[i].endpoints[0];
                svcs[i].endpoints[0] = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + c as u32);
                let partial = common::iptables_partial(&svcs, &svcs[i]);
                ipt_ms.push(ms(common::run_with_stdin(ns.name(), &["iptables-restore", "--noflush"], &partial)?));
                nft_ms.push(ms(common::run_with_stdin(ns.name(), &["nft", "-f", "-"], &common::nft_partial(&svcs[i], old))?));
            }
            // The last change really is in the rules.
            let last = &svcs[(sizes.baseline_changes - 1) * 7919 % svcs.len()];
            let sep = common::ipt_sep_chain(last, last.endpoints[0]);
            lb_tests::netns::run(ns.command("iptables").args(["-t", "nat", "-S", &sep]))?;
            lb_tests::netns::run(ns.command("nft").args([
                "list",
                "chain",
                "ip",
                common::NFT_TABLE,
                &common::nft_ep_chain(last, last.endpoints[0]),
            ]))?;
            println!(
                "b3: {n} services: one endpoint change: iptables partial sync p50 {:.0} ms, nft transaction p50 {:.0} ms",
                median(&ipt_ms),
                median(&nft_ms)
            );
            row["change_iptables_partial_ms"] = summary(&ipt_ms);
            row["change_nft_ms"] = summary(&nft_ms);
            base_change = json!({"services": n, "iptables_partial_ms": summary(&ipt_ms), "nft_ms": summary(&nft_ms)});
        }
        base_rows.push(row);
    }
    drop(ns);
    let results = json!({
        "endpoints_per_service": ENDPOINTS,
        "distinct_endpoints": true,
        "agent_listen_flags": listen_flags,
        "lb": lb_rows,
        "lb_change": change,
        "lb_file": file_rows,
        "lb_growth": growth,
        "baselines": base_rows,
        "baseline_change": base_change,
    });
    common::write_results(&opts, "b3", results);
    Ok(())
}

/// Services per manifest file of the file-source runs.
const PER_FILE: usize = 100;

/// Writes file `k` of the file-source directory: the Services `PER_FILE * k ..` and their
/// EndpointSlices as YAML documents (JSON is YAML), with `changed` (index, new version) in place
/// of that Service.
fn write_manifest_file(dir: &Path, k: usize, svcs: &[Svc], changed: Option<(usize, &Svc)>) -> anyhow::Result<()> {
    let range = k * PER_FILE..((k + 1) * PER_FILE).min(svcs.len());
    let docs: Vec<String> = range
        .map(|i| match changed {
            Some((j, s)) if j == i => s,
            _ => &svcs[i],
        })
        .flat_map(|s| [s.service_json().to_string(), s.slice_json().to_string()])
        .collect();
    let tmp = dir.join(format!("f{k:05}.tmp"));
    fs::write(&tmp, docs.join("\n---\n"))?;
    // Renamed into place: the agent never reads a half-written file.
    fs::rename(&tmp, dir.join(format!("f{k:05}.yaml")))?;
    Ok(())
}

/// The same agent on `--source file:DIR` (issue 16, item 5): N services in files of
/// `PER_FILE`, the time until all are in the maps and the peak RSS, and one endpoint changed in
/// one file until the new backend is in the maps. The agent polls the directory (every 200 ms
/// by default), so that latency includes up to one poll interval; the agent's own `took_ms`
/// is the sync itself.
fn file_source(lb: &Path, sizes: &Sizes, listen_flags: bool) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &n in &sizes.file_scales {
        let dir = std::env::temp_dir().join(format!("lbbench-b3-files-{}", unique_token()));
        fs::create_dir_all(&dir)?;
        let mut svcs: Vec<Svc> = (0..n).map(|i| Svc::dummy_own(i, ENDPOINTS)).collect();
        for k in 0..svcs.len().div_ceil(PER_FILE) {
            write_manifest_file(&dir, k, &svcs, None)?;
        }
        let (out, rss, sync_runs) = start_and_sync_runs(lb, &format!("file:{}", dir.display()), &svcs, listen_flags)?;
        println!(
            "b3: file source, {n} services: synced {:.3} s after the agent started (median of {}; datapath loaded at {:.3} s); peak RSS {:.1} MiB",
            out.sync_s,
            runs_text(&sync_runs),
            out.loaded_s.unwrap_or(f64::NAN),
            rss.unwrap_or(0) as f64 / 1024.0
        );
        let mut lat = Vec::new();
        for c in 0..sizes.file_changes {
            let i = (c * 7919 + 13) % svcs.len();
            let new_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 202, 0, 0)) + c as u32);
            let mut one = svcs[i].clone();
            let (l, _) =
                change_latency(&out.agent, &mut one, new_ip, |s| write_manifest_file(&dir, i / PER_FILE, &svcs, Some((i, s))))?;
            svcs[i] = one;
            lat.push(l * 1e3);
            // Past the next poll, so that each change is picked up by a poll of its own.
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut agent = out.agent;
        if let Some(why) = agent.exited() {
            anyhow::bail!("the agent exited: {why}");
        }
        let took: Vec<f64> = synced_took_ms(&agent.log).into_iter().rev().take(lat.len()).collect();
        println!(
            "b3: file source, {n} services: one edited file in the maps: p50 {:.1} ms, p99 {:.1} ms (the sync itself {:.1} ms, median)",
            median(&lat),
            percentile(&lat, 99.0),
            median(&took)
        );
        rows.push(json!({
            "services": n, "sync_s": out.sync_s, "sync_s_runs": sync_runs, "log_datapath_loaded_s": out.loaded_s, "vm_hwm_kib": rss,
            "edit_latency_ms": summary(&lat), "edit_sync_ms": summary(&took),
        }));
        drop(agent);
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(rows)
}

/// The Services of the growth run: `grow-1` .. `grow-n` at 10.97.0.0 + i, port 80, each with
/// [`ENDPOINTS`] endpoints of its own, alternately in 10.245.0.0/17 (kubia-1 answers there) and
/// 10.245.128.0/17 (kubia-2).
fn growth_manifest(n: u32) -> String {
    use lb_tests::topology::HTTP_PORT;
    let mut yaml = String::new();
    for i in 1..=n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
        let eps: String = (0..ENDPOINTS)
            .map(|j| {
                let k = i * ENDPOINTS + j;
                let base = if k.is_multiple_of(2) { Ipv4Addr::new(10, 245, 0, 0) } else { Ipv4Addr::new(10, 245, 128, 0) };
                format!("- addresses: [\"{}\"]\n", Ipv4Addr::from(u32::from(base) + 1 + k / 2))
            })
            .collect();
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: grow-{i}, namespace: bench}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: grow-{i}, namespace: bench, labels: {{kubernetes.io/service-name: grow-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: {HTTP_PORT}}}]\nendpoints:\n{eps}---\n"
        ));
    }
    yaml
}

/// Issue 16, item 6: maps that grow online under traffic. One node, two kubia pods (each also
/// answering on a /17 of endpoint addresses) and a client pod; the agent (file source) starts
/// with its service maps sized for kubia and hardly more. While the client runs a loop of new
/// HTTP connections to kubia and holds one long-lived echo connection through it, `services`
/// Services of ten endpoints each are added at once: the maps grow online (several times). The
/// row: time until every Service is listed, the growths, requests made and failed meanwhile,
/// and whether the long-lived connection still reaches the same pod.
fn growth_under_traffic(lb: &Path, services: u32) -> anyhow::Result<Value> {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        net::{SocketAddr, TcpStream},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };

    use lb_tests::{
        agent::{Agent, AgentOptions},
        requests::{http_loop, http_ok},
        topology::{ECHO_PORT, HTTP_PORT, Topology},
    };

    let mut topo = Topology::new(1)?;
    for (k, name) in ["kubia-1", "kubia-2"].into_iter().enumerate() {
        let i = topo.add_pod(0, name)?;
        topo.start_workload(i, &bins::testpod())?;
        let net = format!("10.245.{}.0/17", k * 128);
        topo.pods[i].ns.ip(&["route", "add", "local", &net, "dev", "lo"])?;
        let host_if = topo.pods[i].host_if.clone();
        topo.nodes[0].ns.ip(&["route", "add", &net, "dev", &host_if])?;
    }
    let client = topo.add_pod(0, "client")?;
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    let small = ["LB_BACKENDS=16", "LB_SERVICES=16", "LB_MEMBERS=16", "LB_SELECT=16", "LB_SVC_STATS=8", "LB_SVC_NAMES=8"];
    for size in small {
        opts.extra_args.extend(["--map-size".to_owned(), size.to_owned()]);
    }
    let (a, b) = (topo.pod("kubia-1").ip.to_string(), topo.pod("kubia-2").ip.to_string());
    let kubia = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kubia, namespace: bench}}\nspec:\n  clusterIP: 10.96.3.3\n  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}, {{name: echo, port: 7000, targetPort: {ECHO_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kubia-1, namespace: bench, labels: {{kubernetes.io/service-name: kubia}}}}\naddressType: IPv4\nports: [{{name: http, port: {HTTP_PORT}}}, {{name: echo, port: {ECHO_PORT}}}]\nendpoints:\n- addresses: [\"{a}\"]\n- addresses: [\"{b}\"]\n"
    );
    let mut agent = Agent::start(lb, &opts, &[("kubia.yaml", &kubia)])?;
    agent.wait_services("kubia", |rows| rows.iter().any(|r| r["frontend"] == "10.96.3.3:80"))?;

    let echo = topo.pods[client]
        .ns
        .run_in(|| TcpStream::connect_timeout(&"10.96.3.3:7000".parse().unwrap(), Duration::from_secs(2)))??;
    echo.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut echo_lines = BufReader::new(echo.try_clone()?);
    let mut round_trip = |what: &str| -> String {
        let mut line = String::new();
        if (&echo).write_all(format!("{what}\n").as_bytes()).is_ok() {
            let _ = echo_lines.read_line(&mut line);
        }
        line.trim_end().to_owned()
    };
    let pod_before = round_trip("before");

    let stop = Arc::new(AtomicBool::new(false));
    let manifest = growth_manifest(services);
    let (programmed_s, (ok, failed)) = std::thread::scope(|s| -> anyhow::Result<(f64, (u32, u32))> {
        let stop_loop = stop.clone();
        let client_ns = &topo.pods[client].ns;
        let looping = s.spawn(move || http_loop(client_ns, "10.96.3.3:80".parse().unwrap(), Duration::from_millis(2), stop_loop));
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let waited = agent.write_manifest("many.yaml", &manifest).and_then(|()| {
            agent.wait_services("every grow-i Service", |rows| {
                rows.iter().filter(|r| r["frontend"].as_str().is_some_and(|f| f.starts_with("10.97."))).count()
                    == services as usize
            })
        });
        let programmed_s = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let counts = looping.join().map_err(|_| anyhow::anyhow!("the client loop panicked"))??;
        waited?;
        Ok((programmed_s, counts))
    })?;
    let pod_after = round_trip("after");
    let kept = !pod_before.is_empty() && pod_after == pod_before;
    // One Service of the new ones answers (each of its endpoints is one of the pods' addresses).
    let last: SocketAddr = (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + services), 80).into();
    let new_answers = topo.pods[client].ns.run_in(move || (0..3).all(|_| http_ok(last)))?;
    let log = agent.log_text();
    let growths: Vec<String> = log
        .lines()
        .filter(|l| l.contains("grew a map online"))
        .filter_map(|l| lb_common::ALL_MAPS.iter().find(|m| l.contains(&format!("\"{m}\""))).map(|m| (*m).to_owned()))
        .collect();
    let st = agent.status()?;
    let capacity =
        |map: &str| st["maps"].as_array().and_then(|a| a.iter().find(|m| m["map"] == map)).map(|m| m["capacity"].clone());
    println!(
        "b3: growth under traffic: {services} services × {ENDPOINTS} endpoints added to an agent with small maps: listed after {programmed_s:.2} s, {} growths ({}), {ok} requests, {failed} failed; long-lived connection kept its pod: {kept}; the last new service answers: {new_answers}",
        growths.len(),
        growths.join(", ")
    );
    Ok(json!({
        "services": services,
        "endpoints_per_service": ENDPOINTS,
        "initial_sizes": small,
        "programmed_s": programmed_s,
        "growths": growths,
        "map_resizes": st["agent"]["map_resizes"],
        "requests_ok": ok,
        "requests_failed": failed,
        "long_lived_kept": kept,
        "new_service_answers": new_answers,
        "capacity_after": { "LB_BACKENDS": capacity("LB_BACKENDS"), "LB_SERVICES": capacity("LB_SERVICES"), "LB_MAGLEV": capacity("LB_MAGLEV") },
    }))
}
