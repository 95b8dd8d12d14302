//! Reliability scenarios 3-7 (issue 7); results and commands in RELIABILITY.md.
//!
//! - Full maps: a state beyond a map's capacity is refused with `DataplaneError::MapFull` naming
//!   the map and its limit, before any write (pinned maps compared before and after).
//! - Conntrack pressure: a datapath with a small LRU conntrack filled with many flows; what
//!   happens to an active and to an idle long-lived flow, in numbers.
//! - Version mismatch: pins whose `LB_META` layout version differs are refused (the library and
//!   the `lb agent` binary) with the clear message, and nothing pinned changes.
//! - Endpoint churn under load (netns): a long-lived TCP connection to a surviving backend is
//!   never reset while endpoints churn 5 → 1 → 5; after each update no new connection goes to a
//!   removed backend; a backend gone mid-connection: UDP moves (point 57), TCP stays pinned.
//! - The API server away for 10 s under load: zero failed requests; a change after it is back
//!   is picked up.
//! - `soak` (ignored; `cargo xtask soak --minutes N` runs it): mixed load, endpoint churn, agent
//!   restarts and kills, API server outages for N minutes; the books must balance with zero
//!   failures.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtValue, LAYOUT_VERSION, MAGLEV_CHUNK, MaglevKey, Meta, PROG_TC_POD, SVC_F_ADDR_MARKER,
    SVC_F_MAGLEV, SelectKey, ServiceKey, ServiceValue, v4_mapped,
};
use lb_tests::{
    addresses::{self, CLIENT, POD1, POD2, POD3, UDP_VIP},
    agent::{Agent, AgentOptions},
    apiserver::ApiServer,
    bins,
    netns::{Netns, unique_token},
    packet::{PROTO_TCP, TCP_ACK, TCP_SYN, parse_flow, tcp_frame},
    privilege,
    topology::{ECHO_PORT, HTTP_PORT, Topology, UDP_PORT},
    verdict::TC_ACT_OK,
};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, DataplaneError, cleanup},
    maps::pinned::PinnedMaps,
    maps::sizes::MapSizes,
    maps::{MapError, MapState},
    model::{DesiredState, Endpoint, Protocol, Selection},
    plan::{PlanConfig, PlanMemory, map_state},
};

mod common;

use common::{ConntrackPins, clusterip_service, conntrack_key, desired_state, endpoint};

// =============================================================================================
// Shared: a loaded datapath with its own pins
// =============================================================================================

struct Fixture {
    dp: Option<Dataplane>,
    pin_path: PathBuf,
    ids: PlanMemory,
}

impl Fixture {
    fn new(test: &str, conntrack_max: u32) -> Option<Self> {
        Self::with_sizes(test, MapSizes { conntrack: conntrack_max, ..MapSizes::default() })
    }

    fn with_sizes(test: &str, sizes: MapSizes) -> Option<Self> {
        if !privilege::require(test) {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let pin_path: PathBuf = format!("/sys/fs/bpf/lbt-rel-{}-{}", unique_token(), N.fetch_add(1, Ordering::Relaxed)).into();
        let dp = Dataplane::load(&DataplaneConfig { pin_path: pin_path.clone(), sizes, ..DataplaneConfig::default() })
            .expect("loading the datapath");
        Some(Self { dp: Some(dp), pin_path, ids: PlanMemory::default() })
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("loaded")
    }

    fn program(&mut self, d: &DesiredState) -> MapState {
        let st = map_state(d, &mut self.ids, &PlanConfig::default());
        self.dp.as_mut().expect("loaded").apply(&st).expect("programming the maps");
        st
    }

    fn pinned(&self) -> MapState {
        PinnedMaps::open(&self.pin_path).expect("open pins").state().expect("read pins")
    }

    fn run(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.as_ref().expect("loaded").classifier(PROG_TC_POD).expect("program");
        let res = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: 1, ..TestRunOptions::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value as i32, out)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.dp = None;
        let _ = cleanup(&self.pin_path);
    }
}

/// An endpoint on this node.
fn ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    endpoint(ip, port, true)
}

/// A few real services: what must survive a refused apply untouched.
fn base_state() -> DesiredState {
    desired_state([
        clusterip_service("kubia", addresses::VIP, 80, Protocol::Tcp, vec![ep(POD1, 8080), ep(POD2, 8080), ep(POD3, 8080)]),
        clusterip_service("dns", UDP_VIP, 53, Protocol::Udp, vec![ep(POD1, 9000)]),
    ])
}

// =============================================================================================
// Scenario 3: full maps
// =============================================================================================

/// `n` ClusterIP services with one endpoint each (each is a frontend plus an address marker:
/// two LB_SERVICES entries).
fn many_services(n: u32, first_octet: u8) -> DesiredState {
    let mut d = base_state();
    for i in 0..n {
        let vip = Ipv4Addr::new(first_octet, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let be = Ipv4Addr::new(10, 250 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let (spn, sp) = clusterip_service(&format!("s{i}"), vip, 80, Protocol::Tcp, vec![ep(be, 8080)]);
        d.services.insert(spn, std::sync::Arc::new(sp));
    }
    d
}

fn assert_map_full(err: &DataplaneError, map: &str, limit: u32) {
    match err {
        DataplaneError::Map(MapError::Full { name, wanted, limit: l }) => {
            assert_eq!((*name, *l), (map, limit), "{err}");
            assert!(*wanted > limit as usize, "{err}");
        }
        other => panic!("expected MapFull for {map}, got {other:?}: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(map) && msg.contains(&limit.to_string()), "the message names the map and its limit: {msg}");
}

#[test]
fn full_maps_are_refused_before_any_write_naming_the_map_and_its_limit() {
    let Some(mut f) = Fixture::new("full_maps_are_refused_before_any_write_naming_the_map_and_its_limit", 4096) else {
        return;
    };
    let programmed = f.program(&base_state());
    let before = f.pinned();
    assert_eq!(before, programmed);
    let started = Instant::now();

    // Through the planner, as the agent does: 32,768 services = 65,536 frontends + markers,
    // plus the base state's 4 entries: 4 over the limit of LB_SERVICES.
    let too_many = map_state(&many_services(32_768, 11), &mut f.ids.clone(), &PlanConfig::default());
    let err = f.dp().apply(&too_many).unwrap_err();
    assert_map_full(&err, lb_common::SERVICES, lb_common::SERVICES_MAX);
    assert_eq!(f.pinned(), before, "a refused apply must leave the pinned maps as they were");
    assert_eq!(f.dp().state(), &before, "and the shadow copy too");
    let mut books = vec![format!("LB_SERVICES: {} entries wanted, refused: {err}", too_many.services.len())];

    // Every other agent-written map, one at a time, with a raw state one entry over.
    let over = |cap: u32| cap as usize + 1;
    let mut cases: Vec<(&str, u32, MapState)> = Vec::new();
    let mut st = before.clone();
    for id in 0..over(lb_common::BACKENDS_MAX) as u32 {
        st.backends.insert(
            1000 + id,
            lb_common::Backend {
                addr: v4_mapped([10, 251, (id >> 8) as u8, id as u8]),
                port_be: 8080u16.to_be(),
                proto: 6,
                flags: 0,
            },
        );
    }
    cases.push((lb_common::BACKENDS, lb_common::BACKENDS_MAX, st));
    let mut st = before.clone();
    for slot in 0..over(lb_common::SELECT_MAX) as u32 {
        st.select.insert(SelectKey { select_id: 900, slot }, 1);
    }
    cases.push((lb_common::SELECT, lb_common::SELECT_MAX, st));
    let mut st = before.clone();
    for chunk in 0..over(lb_common::MAGLEV_CHUNKS_MAX) as u32 {
        st.maglev.insert(MaglevKey { select_id: 900, chunk }, Default::default());
    }
    cases.push((lb_common::MAGLEV, lb_common::MAGLEV_CHUNKS_MAX, st));
    let mut st = before.clone();
    for backend_id in 0..over(lb_common::MEMBERS_MAX) as u32 {
        st.members.insert(lb_common::MemberKey { select_id: 900, backend_id }, ());
    }
    cases.push((lb_common::MEMBERS, lb_common::MEMBERS_MAX, st));
    let mut st = before.clone();
    for i in 0..over(lb_common::SOURCE_RANGES_MAX) as u32 {
        let data = lb_common::SourceRangeData {
            frontend: v4_mapped([198, 51, 100, 7]),
            source: v4_mapped([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        };
        st.source_ranges.insert(lb_common::SourceRangeKey { prefix_len: 256, data }, ());
    }
    cases.push((lb_common::SOURCE_RANGES, lb_common::SOURCE_RANGES_MAX, st));
    for (name, limit, st) in cases {
        let err = f.dp().apply(&st).unwrap_err();
        assert_map_full(&err, name, limit);
        assert_eq!(f.pinned(), before, "{name}: nothing half-written");
        books.push(format!("{name}: refused: {err}"));
    }
    // The datapath still serves the base state, and a state that fits still applies.
    let (verdict, out) = f.run(&tcp_frame((CLIENT, 40000), (addresses::VIP, 80), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst.port(), 8080, "the base state is still served");
    let fits = map_state(&many_services(1000, 11), &mut f.ids, &PlanConfig::default());
    f.dp().apply(&fits).expect("a state that fits applies");
    assert_eq!(f.pinned(), fits);
    eprintln!("full maps ({:.1} s):\n  {}", started.elapsed().as_secs_f64(), books.join("\n  "));
}

/// A change that fits the capacity, but not alongside the state it replaces: upserts come
/// before deletes (the safe order), so for a moment both are in the map.
/// `--services-max`: maps sized for 40,000 services hold a state the defaults refuse (80,000
/// frontends and markers, 640,000 Maglev chunks), serve it, and keep their size when an agent
/// with default sizes adopts the pins (a restart never shrinks a map under its entries).
#[test]
fn maps_sized_for_more_services_hold_them_and_keep_their_size_across_a_restart() {
    let n = 40_000;
    let sizes = MapSizes::for_services(n);
    let Some(mut f) = Fixture::with_sizes("maps_sized_for_more_services_hold_them_and_keep_their_size_across_a_restart", sizes)
    else {
        return;
    };
    assert_eq!(f.dp().limits(), &sizes, "fresh maps get the requested sizes");
    let mut d = many_services(n - 10, 11); // and the base state's few
    for sp in d.services.values_mut() {
        std::sync::Arc::make_mut(sp).selection = Selection::Maglev; // the default for Services without the random annotation
    }
    let big = map_state(&d, &mut f.ids.clone(), &PlanConfig::default());
    let fill = (big.services.len(), big.maglev.len());
    assert!(fill.0 > lb_common::SERVICES_MAX as usize && fill.1 > lb_common::MAGLEV_CHUNKS_MAX as usize, "{fill:?}");
    f.dp().apply(&big).expect("a state over the default capacities applies to maps sized for it");

    // An agent started without --services-max adopts the pins: same sizes, same state.
    f.dp = None;
    let dp = Dataplane::load(&DataplaneConfig { pin_path: f.pin_path.clone(), ..DataplaneConfig::default() }).expect("adopting");
    assert_eq!(dp.limits(), &sizes, "adopted maps report the size they were created with");
    assert_eq!(dp.state(), &big, "and keep every entry");
    f.dp = Some(dp);
    // The last service (ClusterIP 11.0.156.53, one endpoint 10.250.156.53:8080) is served.
    let last = n - 11;
    let vip = Ipv4Addr::new(11, (last >> 16) as u8, (last >> 8) as u8, last as u8);
    let (verdict, out) = f.run(&tcp_frame((CLIENT, 40000), (vip, 80), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst, (Ipv4Addr::new(10, 250, (last >> 8) as u8, last as u8), 8080).into());
}

#[test]
fn a_replacement_that_fits_only_without_the_old_state_applies_or_changes_nothing() {
    let Some(mut f) = Fixture::new("a_replacement_that_fits_only_without_the_old_state_applies_or_changes_nothing", 4096) else {
        return;
    };
    let old = f.program(&many_services(20_000, 11));
    let before = f.pinned();
    assert_eq!(before, old);
    // The same 20,000 services on new ClusterIPs: 40,004 entries, well under 65,536.
    let renumbered = map_state(&many_services(20_000, 12), &mut f.ids, &PlanConfig::default());
    assert!(renumbered.services.len() <= lb_common::SERVICES_MAX as usize);
    match f.dp().apply(&renumbered) {
        Ok(_) => assert_eq!(f.pinned(), renumbered, "applied: the maps hold the new state"),
        Err(e) => {
            let now = f.pinned();
            let new_in = now.services.keys().filter(|k| !before.services.contains_key(k)).count();
            let old_out = before.services.keys().filter(|k| !now.services.contains_key(k)).count();
            // The agent retries every tick: does it ever get there?
            let retries: Vec<String> =
                (0..3).map(|_| format!("{:?}", f.dp().apply(&renumbered).map_err(|e| e.to_string()))).collect();
            panic!(
                "apply failed ({e:?}: {e}) with {new_in} new frontends written and {old_out} old ones removed; nothing may be half-written. Three retries: {retries:?}"
            );
        }
    }
}

// =============================================================================================
// Scenario 3: conntrack pressure
// =============================================================================================

fn ct_entry(map: &ConntrackPins, src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, dir: u8) -> Option<CtValue> {
    map.get(&conntrack_key(src, dst, PROTO_TCP, dir))
}

/// One long-lived flow under conntrack pressure: (forward entry kept, reply entry kept, packets
/// of the flow that went to another backend, replies that left untranslated).
#[derive(Debug, Default)]
struct FlowFate {
    forward_kept: bool,
    reply_kept: bool,
    moved: u32,
    replies_untranslated: u32,
    checks: u32,
}

#[test]
fn conntrack_pressure_keeps_active_flows_and_evicts_idle_ones() {
    const CT_MAX: u32 = 1024;
    let Some(mut f) = Fixture::new("conntrack_pressure_keeps_active_flows_and_evicts_idle_ones", CT_MAX) else { return };
    let vip = addresses::VIP;
    f.program(&base_state());
    let ct = ConntrackPins::open(&f.pin_path);
    let started = Instant::now();
    // Long-lived flows: active in both directions every `every` new flows (0 = idle), or active
    // in the forward direction only.
    let clients: Vec<(&str, u32, bool)> = vec![
        ("active both ways, every 64 new flows", 64, true),
        ("active both ways, every 256 new flows", 256, true),
        ("active both ways, every 1024 new flows", 1024, true),
        ("active forward only, every 64 new flows", 64, false),
        ("idle", 0, true),
    ];
    let mut fates = Vec::new();
    let mut flows = Vec::new();
    for (i, _) in clients.iter().enumerate() {
        let client = (Ipv4Addr::new(10, 244, 0, 50 + i as u8), 40000);
        let (v, out) = f.run(&tcp_frame(client, (vip, 80), 1000, 0, TCP_SYN));
        assert_eq!(v, TC_ACT_OK);
        flows.push((client, parse_flow(&out).dst));
        fates.push(FlowFate::default());
    }
    const NEW_FLOWS: u32 = 16 * CT_MAX;
    for n in 1..=NEW_FLOWS {
        let src = (Ipv4Addr::new(10, 245, (n >> 8) as u8, n as u8), 1024 + (n % 60000) as u16);
        let (v, _) = f.run(&tcp_frame(src, (vip, 80), 1000, 0, TCP_SYN));
        assert_eq!(v, TC_ACT_OK, "new flow {n}: every new flow is translated even with the table full");
        for (i, (_, every, both)) in clients.iter().enumerate() {
            if *every == 0 || n % every != 0 {
                continue;
            }
            let (client, backend) = flows[i];
            let (_, out) = f.run(&tcp_frame(client, (vip, 80), 1000, 0, TCP_ACK));
            fates[i].checks += 1;
            if parse_flow(&out).dst != backend {
                fates[i].moved += 1;
            }
            if *both {
                let (_, back) = f.run(&tcp_frame(backend, client, 1000, 0, TCP_ACK));
                if parse_flow(&back).src != (vip, 80).into() {
                    fates[i].replies_untranslated += 1;
                }
            }
        }
    }
    let entries = ct.len();
    let mut report = Vec::new();
    for (i, (what, ..)) in clients.iter().enumerate() {
        let (client, backend) = flows[i];
        fates[i].forward_kept = ct_entry(&ct, client, (vip, 80), CT_DIR_FORWARD).is_some();
        fates[i].reply_kept = ct_entry(&ct, backend, client, CT_DIR_REPLY).is_some();
        report.push(format!("{what}: {:?}", fates[i]));
    }
    // The idle flow's next packets: a reply from its backend, then a client packet.
    let (idle_client, idle_backend) = flows[4];
    let (_, back) = f.run(&tcp_frame(idle_backend, idle_client, 1000, 0, TCP_ACK));
    let idle_reply_translated = parse_flow(&back).src == (vip, 80).into();
    let (_, out) = f.run(&tcp_frame(idle_client, (vip, 80), 1000, 0, TCP_ACK));
    let idle_same_backend = parse_flow(&out).dst == idle_backend;
    eprintln!(
        "conntrack pressure: LB_CONNTRACK max {CT_MAX}, {NEW_FLOWS} new flows (one entry each) in {:.1} s, {entries} entries at the end\n  {}\n  idle flow afterwards: reply translated = {idle_reply_translated}, next client packet to the same backend = {idle_same_backend}",
        started.elapsed().as_secs_f64(),
        report.join("\n  ")
    );
    assert!(entries <= CT_MAX as usize, "the LRU never holds more than its capacity");
    // What the datapath promises: an active flow keeps its entries and its backend.
    for i in 0..2 {
        let fate = &fates[i];
        assert!(
            fate.forward_kept && fate.reply_kept && fate.moved == 0 && fate.replies_untranslated == 0,
            "{}: {fate:?}",
            clients[i].0
        );
    }
    // An idle flow is evicted; its next packet selects again.
    assert!(!fates[4].forward_kept && !fates[4].reply_kept, "the idle flow was evicted: {:?}", fates[4]);
    assert!(!idle_reply_translated, "a reply of an evicted flow is no longer translated");
}

// =============================================================================================
// Scenario 6: version mismatch
// =============================================================================================

/// What the maps under a pin directory hold, read without the layout check.
fn raw_pins(pin: &Path) -> (BTreeMap<ServiceKey, ServiceValue>, BTreeSet<String>, Meta) {
    let open = |name: &str| Map::from_map_data(MapData::from_pin(pin.join(name)).expect("pin")).expect("map");
    let services: BpfHashMap<MapData, ServiceKey, ServiceValue> = BpfHashMap::try_from(open(lb_common::SERVICES)).unwrap();
    let services = services.iter().map(Result::unwrap).collect();
    let files = std::fs::read_dir(pin).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let meta: Array<MapData, Meta> = Array::try_from(open(lb_common::META)).unwrap();
    (services, files, meta.get(&0, 0).unwrap())
}

/// Drift repair (`Dataplane::repair`, run by the agent every `--repair-period`): entries
/// deleted, changed or added in the pinned maps by someone else are put back as planned, and a
/// second repair finds nothing to do.
#[test]
fn maps_changed_outside_the_agent_are_repaired_to_the_plan() {
    let Some(mut f) = Fixture::new("maps_changed_outside_the_agent_are_repaired_to_the_plan", 4096) else { return };
    let programmed = f.program(&base_state());
    let mut services: BpfHashMap<MapData, ServiceKey, ServiceValue> = BpfHashMap::try_from(
        Map::from_map_data(MapData::from_pin(f.pin_path.join(lb_common::SERVICES)).expect("pin")).expect("map"),
    )
    .expect("hash map");
    let (first, value) = programmed.services.iter().find(|(k, _)| k.proto != 0).map(|(k, v)| (*k, *v)).expect("a frontend");
    let (second, _) = programmed.services.iter().filter(|(k, _)| k.proto != 0).nth(1).map(|(k, v)| (*k, *v)).expect("two");
    services.remove(&first).expect("delete");
    services.insert(second, ServiceValue { slot_count: 0, ..value }, 0).expect("change");
    let stray = ServiceKey { addr: v4_mapped([10, 96, 9, 9]), port_be: 80u16.to_be(), proto: 6, _pad: 0 };
    services.insert(stray, value, 0).expect("add");
    assert_ne!(f.pinned(), programmed);

    assert_eq!(f.dp().repair(&programmed).expect("repair"), 3, "one rewrite, one put back, one stray removed");
    assert_eq!(f.pinned(), programmed, "the maps hold the plan again");
    assert_eq!(f.dp().repair(&programmed).expect("repair"), 0, "nothing drifted since");
}

/// Drift repair of Maglev tables: a chunk changed outside the agent is rewritten, and chunks the
/// kernel holds as planned are found equal to the plan (no write), read back in place of the
/// agent's own copy.
#[test]
fn a_maglev_chunk_changed_outside_the_agent_is_repaired() {
    let Some(mut f) = Fixture::new("a_maglev_chunk_changed_outside_the_agent_is_repaired", 4096) else { return };
    let (spn, mut sp) =
        clusterip_service("kubia", addresses::VIP, 80, Protocol::Tcp, vec![ep(POD1, 8080), ep(POD2, 8080), ep(POD3, 8080)]);
    sp.selection = Selection::Maglev;
    let programmed = f.program(&desired_state([(spn, sp)]));
    assert!(programmed.maglev.len() >= 4, "a 1021-slot table: {} chunks", programmed.maglev.len());
    assert_eq!(f.dp().repair(&programmed).expect("repair"), 0, "nothing drifted: every chunk read back equals the plan");
    let mut chunks: BpfHashMap<MapData, MaglevKey, lb_common::MaglevChunk> = BpfHashMap::try_from(
        Map::from_map_data(MapData::from_pin(f.pin_path.join(lb_common::MAGLEV)).expect("pin")).expect("map"),
    )
    .expect("hash map");
    let key = *programmed.maglev.keys().nth(3).expect("a chunk");
    let mut changed = chunks.get(&key, 0).expect("chunk");
    changed.ids[7] = changed.ids[7].wrapping_add(1);
    chunks.insert(key, changed, 0).expect("change");
    assert_ne!(f.pinned(), programmed);
    assert_eq!(f.dp().repair(&programmed).expect("repair"), 1, "the changed chunk is rewritten, nothing else");
    assert_eq!(f.pinned(), programmed, "the maps hold the plan again");
    assert_eq!(f.dp().repair(&programmed).expect("repair"), 0, "nothing drifted since");
}

/// Reading the maps back (adoption at a restart, drift repair, `lb`): thousands of entries per
/// map, more than one batch lookup returns, an array with zeroed slots between its entries
/// (released backend ids) and an LPM trie (no batch lookups: its keys are walked) all read
/// back entry for entry.
#[test]
fn a_large_state_with_released_ids_reads_back_entry_for_entry() {
    let Some(mut f) = Fixture::new("a_large_state_with_released_ids_reads_back_entry_for_entry", 4096) else { return };
    let all = many_services(9000, 12);
    let mut st = f.program(&all);
    assert!(st.backends.len() > 9000 && st.select.len() > 9000, "more entries than one batch: {:?}", st.counts());
    // A first sync's upserts of a map this large are written in two halves on two CPUs.
    assert_eq!(f.pinned(), st, "the first sync, read back");
    // Every third Service gone: its backend's slot in the LB_BACKENDS array is zeroed.
    let mut fewer = all.clone();
    let gone: Vec<_> = fewer
        .services
        .keys()
        .filter(|spn| spn.name.trim_start_matches('s').parse::<u32>().is_ok_and(|i| i % 3 == 0))
        .cloned()
        .collect();
    for spn in &gone {
        fewer.services.remove(spn);
    }
    let mut next = map_state(&fewer, &mut f.ids, &PlanConfig::default());
    for i in 0..5000u32 {
        let data = lb_common::SourceRangeData {
            frontend: v4_mapped([198, 51, 100, 7]),
            source: v4_mapped([10, 77, (i >> 8) as u8, i as u8]),
        };
        next.source_ranges.insert(lb_common::SourceRangeKey { prefix_len: 256, data }, ());
    }
    f.dp().apply(&next).expect("the smaller state with source ranges");
    st.clone_from(&next);
    assert!(st.backends.len() < all.services.len(), "backends were released: {}", st.backends.len());
    assert_eq!(f.pinned(), st, "what the maps hold, read back");
    assert_eq!(f.dp().repair(&st).expect("repair"), 0, "the agent's own read finds the plan, nothing to rewrite");
}

#[test]
fn pins_of_another_layout_version_are_refused_and_left_unchanged() {
    let Some(mut f) = Fixture::new("pins_of_another_layout_version_are_refused_and_left_unchanged", 4096) else { return };
    f.program(&base_state());
    f.dp = None; // the agent exits; its maps stay pinned
    let pin = f.pin_path.clone();
    // A build with another layout wrote these pins.
    {
        let map = Map::from_map_data(MapData::from_pin(pin.join(lb_common::META)).unwrap()).unwrap();
        let mut meta: Array<MapData, Meta> = Array::try_from(map).unwrap();
        let m = meta.get(&0, 0).unwrap();
        assert_eq!(m.layout_version, LAYOUT_VERSION);
        meta.set(0, Meta { layout_version: LAYOUT_VERSION + 1, ..m }, 0).unwrap();
    }
    let before = raw_pins(&pin);
    assert!(!before.0.is_empty());

    let err = match Dataplane::load(&DataplaneConfig { pin_path: pin.clone(), ..DataplaneConfig::default() }) {
        Err(e) => e,
        Ok(_) => panic!("pins of layout {} were adopted by a build of layout {LAYOUT_VERSION}", LAYOUT_VERSION + 1),
    };
    match &err {
        DataplaneError::Map(MapError::LayoutVersion { found, expected, .. }) => {
            assert_eq!((*found, *expected), (LAYOUT_VERSION + 1, LAYOUT_VERSION))
        }
        other => panic!("expected LayoutMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("layout version") && msg.contains(&format!("lb agent --cleanup --pin-path {}", pin.display())), "{msg}");
    assert_eq!(raw_pins(&pin), before, "the refused load changed the pins");
    assert!(matches!(PinnedMaps::open(&pin), Err(MapError::LayoutVersion { .. })), "the CLI refuses them too");

    // The agent binary: exits with the message, changes nothing.
    let dir = std::env::temp_dir().join(format!("lbt-{}-layout", unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(bins::lb())
        .args([
            "agent",
            "--source",
            &format!("file:{}", dir.display()),
            "--pin-path",
            &pin.display().to_string(),
            "--node-name",
            "n",
        ])
        .args(["--metrics-addr", "none", "--health-addr", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lb agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lb agent kept running on pins of another layout");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "lb agent must fail: {stderr}");
    assert!(stderr.contains("layout version") && stderr.contains("--cleanup"), "the agent says why and what to do: {stderr}");
    assert_eq!(raw_pins(&pin), before, "the refusing agent changed the pins");
    eprintln!(
        "version mismatch: refused with `{msg}`; agent exit {status}; pins unchanged ({} files, {} LB_SERVICES entries)",
        before.1.len(),
        before.0.len()
    );
}

// =============================================================================================
// Netns scenarios: helpers
// =============================================================================================

const VIP: &str = "10.96.7.10";

/// The kubia service on three ports: HTTP, the line echo and UDP echo.
fn service_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kubia, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n  - {{name: echo, port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}\n"
    )
}

fn slice_yaml(ips: &[Ipv4Addr]) -> String {
    let eps: String =
        ips.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: node-0\n")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: kubia-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: kubia}}\naddressType: IPv4\nports:\n- {{name: http, port: {HTTP_PORT}, protocol: TCP}}\n- {{name: echo, port: {ECHO_PORT}, protocol: TCP}}\n- {{name: dns, port: {UDP_PORT}, protocol: UDP}}\nendpoints:\n{}",
        if eps.is_empty() { "[]\n".to_owned() } else { eps }
    )
}

fn slice_json(ips: &[Ipv4Addr]) -> serde_json::Value {
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&slice_yaml(ips)).unwrap()).unwrap()
}

fn service_json() -> serde_json::Value {
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&service_yaml()).unwrap()).unwrap()
}

/// The backend addresses a frontend selects in the pinned maps.
fn selected(pin: &Path, port: u16, proto: u8) -> Option<BTreeSet<Ipv4Addr>> {
    let st = PinnedMaps::open(pin).ok()?.state().ok()?;
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let key = ServiceKey { addr: v4_mapped(vip.octets()), port_be: port.to_be(), proto, _pad: 0 };
    let v = st.services.get(&key)?;
    if v.flags & SVC_F_ADDR_MARKER != 0 {
        return None;
    }
    let mut out = BTreeSet::new();
    for slot in 0..v.slot_count {
        let id = if v.flags & SVC_F_MAGLEV != 0 {
            st.maglev.get(&MaglevKey { select_id: v.select_id, chunk: slot / MAGLEV_CHUNK })?.id((slot % MAGLEV_CHUNK) as usize)
        } else {
            *st.select.get(&SelectKey { select_id: v.select_id, slot })?
        };
        let be = st.backends.get(&id)?;
        out.insert(Ipv4Addr::new(be.addr[12], be.addr[13], be.addr[14], be.addr[15]));
    }
    Some(out)
}

/// Waits until all three frontends select exactly `ips`; returns when that was seen.
fn wait_applied(pin: &Path, ips: &[Ipv4Addr], within: Duration) -> Result<Instant, String> {
    let want: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    let deadline = Instant::now() + within;
    loop {
        let all = [(80, 6), (ECHO_PORT, 6), (53, 17)].iter().all(|(p, pr)| selected(pin, *p, *pr).as_ref() == Some(&want));
        if all {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("the maps did not reach {want:?} in {within:?}: http={:?}", selected(pin, 80, 6)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP request on a new connection from inside `ns`: the pod that answered.
fn hit(ns: &Netns) -> Result<String, String> {
    ns.run_in(|| -> Result<String, String> {
        let addr: SocketAddr = format!("{VIP}:80").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\n\r\n").map_err(|e| format!("write: {e}"))?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| format!("read: {e}"))?;
        body.lines().last().and_then(|l| l.strip_prefix("You've hit ")).map(str::to_owned).ok_or(body)
    })
    .map_err(|e| e.to_string())?
}

/// A line-echo connection to the service's echo port, opened inside `ns`.
struct Echo {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Echo {
    fn open(ns: &Netns) -> Result<Self, String> {
        let s = ns
            .run_in(|| TcpStream::connect_timeout(&format!("{VIP}:{ECHO_PORT}").parse().unwrap(), Duration::from_secs(3)))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Self { w: s, r })
    }

    /// Sends a line; the pod name that answered.
    fn ping(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.w, "{line}").map_err(|e| format!("write: {e}"))?;
        let mut got = String::new();
        match self.r.read_line(&mut got) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(got.trim().to_owned()),
            Err(e) => Err(format!("read: {e} ({:?})", e.kind())),
        }
    }

    fn local_port(&self) -> u16 {
        self.w.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Requests sent, answered, failed, and who answered when.
#[derive(Default)]
struct Books {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<(Instant, String)>>,
    /// Keep `log` (the churn test judges every request; the soak only counts).
    keep_log: bool,
    /// (start of the request, pod that answered).
    log: Mutex<Vec<(Instant, String)>>,
}

impl Books {
    fn record(&self, started: Instant, r: Result<String, String>) {
        match r {
            Ok(pod) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                if self.keep_log {
                    self.log.lock().unwrap().push((started, pod));
                }
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = self.errors.lock().unwrap();
                if errs.len() < 20 {
                    errs.push((started, e));
                }
            }
        }
    }

    fn line(&self, what: &str) -> String {
        let (s, a, f) =
            (self.sent.load(Ordering::Relaxed), self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        format!("{what}: sent {s}, answered {a}, failed {f}{}", if s == a + f { "" } else { "  (BOOKS DO NOT BALANCE)" })
    }

    fn balanced_without_failures(&self) -> bool {
        let (s, a, f) =
            (self.sent.load(Ordering::Relaxed), self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        s == a + f && f == 0
    }
}

/// New-connection HTTP load from `ns` until `stop`.
fn http_load(ns: &Netns, stop: &AtomicBool, books: &Books) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        books.sent.fetch_add(1, Ordering::Relaxed);
        books.record(started, hit(ns));
        // Two shared cores: leave room for the agent and the other tests.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// UDP request/answer load on new sockets from `ns` until `stop` (a lost datagram is retried
/// twice on the same socket before it counts as failed: UDP is allowed to lose, the service is
/// not allowed to stop answering).
fn udp_load(ns: &Netns, stop: &AtomicBool, books: &Books) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        books.sent.fetch_add(1, Ordering::Relaxed);
        let r = ns
            .run_in(move || -> Result<String, String> {
                let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
                s.connect(format!("{VIP}:53")).map_err(|e| e.to_string())?;
                let msg = format!("q{n}");
                let mut last = String::new();
                for _ in 0..3 {
                    s.send(msg.as_bytes()).map_err(|e| e.to_string())?;
                    let mut buf = [0u8; 256];
                    match s.recv(&mut buf) {
                        Ok(len) => {
                            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                            return text.strip_suffix(&format!(": {msg}")).map(str::to_owned).ok_or(text);
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(format!("udp: {last}"))
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        books.record(started, r);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A long-lived echo connection pinged until `stop`: every answer must come from `pod`.
fn echo_pinger(mut echo: Echo, pod: &str, stop: &AtomicBool, books: &Books) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        books.sent.fetch_add(1, Ordering::Relaxed);
        let r = echo
            .ping(&format!("ping {n}"))
            .and_then(|who| if who == pod { Ok(who) } else { Err(format!("answered by {who}, not {pod}")) });
        let broken = r.is_err();
        books.record(started, r);
        if broken {
            return; // a broken connection stays broken
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Cluster {
    agent: Agent,
    topo: Topology,
    client: usize,
    ips: Vec<Ipv4Addr>,
    names: Vec<String>,
}

impl Cluster {
    fn client_ns(&self) -> &Netns {
        &self.topo.pods[self.client].ns
    }

    fn ip_of(&self, pod: &str) -> Ipv4Addr {
        self.topo.pod(pod).ip
    }
}

/// One node, `n` kubia pods and a client pod, the agent on the file source with every pod.
fn file_cluster(test: &str, n: usize) -> Option<Cluster> {
    if !privilege::require(test) {
        return None;
    }
    let mut topo = Topology::new(1).expect("topology");
    let mut names = Vec::new();
    for k in 1..=n {
        let name = format!("kubia-{k}");
        let i = topo.add_pod(0, &name).expect("pod");
        topo.start_workload(i, &bins::testpod()).expect("workload");
        names.push(name);
    }
    let client = topo.add_pod(0, "client").expect("client");
    let ips: Vec<Ipv4Addr> = names.iter().map(|p| topo.pod(p).ip).collect();
    let opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    let agent =
        Agent::start(&bins::lb(), &opts, &[("service.yaml", &service_yaml()), ("slice.yaml", &slice_yaml(&ips))]).expect("agent");
    wait_applied(&agent.pin_path, &ips, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    Some(Cluster { agent, topo, client, ips, names })
}

// =============================================================================================
// Scenario 4: endpoint churn under load
// =============================================================================================

#[test]
fn endpoint_churn_5_1_5_under_load_never_resets_a_surviving_connection() {
    let Some(c) = file_cluster("endpoint_churn_5_1_5_under_load_never_resets_a_surviving_connection", 5) else { return };
    let ns = c.client_ns();
    let mut echo = Echo::open(ns).expect("echo connection");
    let survivor = echo.ping("hello").expect("first echo");
    let survivor_ip = c.ip_of(&survivor);
    let started = Instant::now();
    const CYCLES: usize = 10;
    let (load, pings) = (Books { keep_log: true, ..Books::default() }, Books::default());
    let stop = AtomicBool::new(false);
    // (written at, applied at, allowed pods): a connection started between an update's apply
    // and the next write may reach only those pods (between a write and its apply, either set).
    let mut epochs: Vec<(Instant, Instant, BTreeSet<String>)> = Vec::new();
    let mut probes = (0u32, 0u32); // (new connections after an update, to a removed backend)
    std::thread::scope(|s| {
        s.spawn(|| http_load(ns, &stop, &load));
        s.spawn(|| echo_pinger(echo, &survivor, &stop, &pings));
        std::thread::sleep(Duration::from_millis(300));
        for cycle in 0..CYCLES {
            for ips in [vec![survivor_ip], c.ips.clone()] {
                let written = Instant::now();
                c.agent.write_manifest("slice.yaml", &slice_yaml(&ips)).unwrap();
                let at = wait_applied(&c.agent.pin_path, &ips, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
                let allowed: BTreeSet<String> = c.names.iter().filter(|n| ips.contains(&c.ip_of(n))).cloned().collect();
                epochs.push((written, at, allowed.clone()));
                // Right after the update: new connections, HTTP and echo, only to what is left.
                for _ in 0..10 {
                    probes.0 += 2;
                    match hit(ns) {
                        Ok(p) if allowed.contains(&p) => {}
                        other => {
                            probes.1 += 1;
                            eprintln!("cycle {cycle}: new HTTP connection after the update: {other:?}, allowed {allowed:?}");
                        }
                    }
                    match Echo::open(ns).and_then(|mut e| e.ping("x")) {
                        Ok(p) if allowed.contains(&p) => {}
                        other => {
                            probes.1 += 1;
                            eprintln!("cycle {cycle}: new echo connection after the update: {other:?}, allowed {allowed:?}");
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Load requests started after an update was applied went only to what it left.
    let (mut late, mut judged) = (0, 0);
    let mut late_examples = Vec::new();
    for (t, pod) in load.log.lock().unwrap().iter() {
        let Some(k) = epochs.iter().rposition(|(_, at, _)| at <= t) else { continue };
        if epochs.get(k + 1).is_some_and(|(written, ..)| written <= t) {
            continue; // the next update was on its way
        }
        judged += 1;
        if !epochs[k].2.contains(pod) {
            late += 1;
            if late_examples.len() < 10 {
                late_examples.push(format!("{pod} started {:?} after the update", t.duration_since(epochs[k].1)));
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "endpoint churn 5 -> 1 -> 5 x{CYCLES} in {:.1} s, survivor {survivor}:\n  {}\n  {}\n  new connections right after an update: {} probed, {} to a removed backend; load requests started after an update was applied (and before the next): {judged}, to a removed backend: {late} {late_examples:?}",
        elapsed.as_secs_f64(),
        load.line("HTTP load (new connections)"),
        pings.line("long-lived echo connection (pings)"),
        probes.0,
        probes.1
    );
    assert!(
        pings.balanced_without_failures(),
        "the surviving connection broke: {:?}\n{}",
        pings.errors.lock().unwrap(),
        c.agent.log_text()
    );
    assert!(load.balanced_without_failures(), "load failures: {:?}", load.errors.lock().unwrap());
    assert_eq!(probes.1, 0, "new connections reached removed backends");
    assert_eq!(late, 0, "load requests reached removed backends after the update");
    assert!(load.answered.load(Ordering::Relaxed) > 20 && pings.answered.load(Ordering::Relaxed) > 20);
}

#[test]
fn a_backend_gone_mid_connection_udp_flows_move_tcp_stays_pinned() {
    let Some(c) = file_cluster("a_backend_gone_mid_connection_udp_flows_move_tcp_stays_pinned", 3) else { return };
    let ns = c.client_ns();
    let mut echo = Echo::open(ns).expect("echo");
    let victim = echo.ping("hello").expect("echo answer");
    let victim_ip = c.ip_of(&victim);
    // A UDP flow (one socket, one source port) on the same pod.
    let udp = (0..40)
        .find_map(|_| {
            let s = ns.run_in(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s.connect(format!("{VIP}:53")).unwrap();
            s.send(b"hi").unwrap();
            let mut buf = [0u8; 128];
            let len = s.recv(&mut buf).ok()?;
            String::from_utf8_lossy(&buf[..len]).starts_with(&format!("{victim}:")).then_some(s)
        })
        .expect("a UDP flow to the victim");
    let udp_port = udp.local_addr().unwrap().port();
    let client_ip = c.topo.pods[c.client].ip;

    // The pod goes away (its interface down: it answers nothing, like a dead node's pod) and
    // leaves the EndpointSlice.
    c.topo.pod(&victim).ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let rest: Vec<Ipv4Addr> = c.ips.iter().copied().filter(|ip| *ip != victim_ip).collect();
    let written = Instant::now();
    c.agent.write_manifest("slice.yaml", &slice_yaml(&rest)).unwrap();
    let applied = wait_applied(&c.agent.pin_path, &rest, Duration::from_secs(10)).unwrap().duration_since(written);

    // UDP (point 57): the same socket's next datagrams are answered by a live pod.
    let t0 = Instant::now();
    let mut udp_tries = 0;
    let moved_to = loop {
        udp_tries += 1;
        udp.send(b"again").unwrap();
        let mut buf = [0u8; 128];
        if let Ok(len) = udp.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..len]).split(':').next().unwrap().to_owned();
        }
        assert!(udp_tries < 5, "the UDP flow never moved to a live backend");
    };
    let udp_took = t0.elapsed();
    assert_ne!(moved_to, victim);

    // TCP: the connection stays pinned to the gone pod: no answer (a timeout), no reset.
    let t1 = Instant::now();
    let tcp = echo.ping("are you there");
    let tcp_took = t1.elapsed();
    let pins = PinnedMaps::open(&c.agent.pin_path).unwrap();
    let ct = pins.conntrack().unwrap();
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let pinned_to = ct
        .iter()
        .find(|(k, _)| {
            k.dir == CT_DIR_FORWARD
                && k.src == v4_mapped(client_ip.octets())
                && k.sport_be == echo.local_port().to_be()
                && k.dst == v4_mapped(vip.octets())
        })
        .map(|(_, v)| Ipv4Addr::new(v.nat_addr[12], v.nat_addr[13], v.nat_addr[14], v.nat_addr[15]));
    let udp_entry = ct
        .iter()
        .find(|(k, _)| k.dir == CT_DIR_FORWARD && k.sport_be == udp_port.to_be() && k.proto == 17)
        .map(|(_, v)| Ipv4Addr::new(v.nat_addr[12], v.nat_addr[13], v.nat_addr[14], v.nat_addr[15]));
    // New connections only reach live pods.
    let fresh: Vec<_> = (0..10).map(|_| hit(ns)).collect();
    eprintln!(
        "backend gone mid-connection ({victim} {victim_ip}; update applied {:.0} ms after the write):\n  UDP flow (port {udp_port}): answered by {moved_to} after {udp_tries} datagram(s), {:.0} ms; its conntrack entry now -> {udp_entry:?}\n  TCP echo connection: {tcp:?} after {:.1} s; its conntrack entry still -> {pinned_to:?}\n  10 new HTTP connections: {fresh:?}",
        applied.as_secs_f64() * 1000.0,
        udp_took.as_secs_f64() * 1000.0,
        tcp_took.as_secs_f64()
    );
    assert!(
        matches!(&tcp, Err(e) if e.contains("TimedOut") || e.contains("WouldBlock")),
        "the pinned TCP connection gets no answer (timeout), not {tcp:?}"
    );
    assert_eq!(pinned_to, Some(victim_ip), "the TCP flow stays pinned to its backend (kube-proxy conntrack semantics)");
    assert!(fresh.iter().all(|r| matches!(r, Ok(p) if p != &victim)), "{fresh:?}");
}

// =============================================================================================
// Scenario 5: the API server away
// =============================================================================================

struct KubeCluster {
    agent: Agent,
    api: ApiServer,
    topo: Topology,
    client: usize,
    kubeconfig: PathBuf,
    ips: Vec<Ipv4Addr>,
    names: Vec<String>,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kube_cluster(test: &str, n: usize) -> Option<KubeCluster> {
    if !privilege::require(test) {
        return None;
    }
    let api = ApiServer::start().expect("api server");
    let kubeconfig = std::env::temp_dir().join(format!("lbt-{}-kubeconfig", unique_token()));
    api.kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut topo = Topology::new(1).expect("topology");
    let mut names = Vec::new();
    for k in 1..=n {
        let name = format!("kubia-{k}");
        let i = topo.add_pod(0, &name).expect("pod");
        topo.start_workload(i, &bins::testpod()).expect("workload");
        names.push(name);
    }
    let client = topo.add_pod(0, "client").expect("client");
    let ips: Vec<Ipv4Addr> = names.iter().map(|p| topo.pod(p).ip).collect();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.source = Some(format!("kube:{}", kubeconfig.display()));
    api.apply(service_json()).unwrap();
    api.apply(slice_json(&ips)).unwrap();
    let agent = Agent::start(&bins::lb(), &opts, &[]).expect("agent");
    wait_applied(&agent.pin_path, &ips, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    Some(KubeCluster { agent, api, topo, client, kubeconfig, ips, names })
}

#[test]
fn api_server_away_10s_under_load_fails_zero_requests_and_a_change_is_picked_up_after() {
    let Some(mut c) = kube_cluster("api_server_away_10s_under_load_fails_zero_requests_and_a_change_is_picked_up_after", 3)
    else {
        return;
    };
    let outage = Duration::from_secs(std::env::var("LB_API_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(10));
    let ns = &c.topo.pods[c.client].ns;
    let books = Books::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut picked_up = Duration::ZERO;
    let (api, agent, ips) = (&mut c.api, &c.agent, &c.ips);
    std::thread::scope(|s| {
        s.spawn(|| http_load(ns, &stop, &books));
        std::thread::sleep(Duration::from_millis(500));
        api.stop();
        std::thread::sleep(outage);
        api.restart().expect("restart the API server");
        // A change made once it is back: kubia-3 leaves.
        let t = Instant::now();
        api.apply(slice_json(&ips[..2])).unwrap();
        wait_applied(&agent.pin_path, &ips[..2], Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
        picked_up = t.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let after: Vec<_> = (0..10).map(|_| hit(ns)).collect();
    eprintln!(
        "API server away {:?} under load ({:.1} s in all):\n  {}\n  change after restart picked up in {:.2} s; 10 new connections after: {after:?}",
        outage,
        started.elapsed().as_secs_f64(),
        books.line("HTTP load (new connections)"),
        picked_up.as_secs_f64()
    );
    assert!(books.balanced_without_failures(), "{:?}\n{}", books.errors.lock().unwrap(), c.agent.log_text());
    assert!(books.answered.load(Ordering::Relaxed) > 50);
    assert!(after.iter().all(|r| matches!(r, Ok(p) if p != &c.names[2])), "{after:?}");
}

// =============================================================================================
// Scenario 7: the soak
// =============================================================================================

/// `cargo xtask soak --minutes N` (or `LB_SOAK_MINUTES=N cargo test -p lb-tests --test
/// reliability soak -- --ignored --nocapture`).
#[test]
#[ignore = "long: run by `cargo xtask soak`"]
fn soak() {
    let Some(mut c) = kube_cluster("soak", 5) else { return };
    let minutes: f64 = std::env::var("LB_SOAK_MINUTES").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let outage = Duration::from_secs(std::env::var("LB_SOAK_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let ns = &c.topo.pods[c.client].ns;
    let mut echo = Echo::open(ns).expect("echo");
    let survivor = echo.ping("hello").expect("echo");
    let survivor_ip = c.topo.pod(&survivor).ip;
    let (http, udp, pings) = (Books::default(), Books::default(), Books::default());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut events: BTreeMap<&str, u32> = BTreeMap::new();
    let mut timeline: Vec<(Instant, &str)> = Vec::new();
    let mut last_event = String::new();
    let (api, agent, ips) = (&mut c.api, &mut c.agent, c.ips.clone());
    std::thread::scope(|s| {
        s.spawn(|| http_load(ns, &stop, &http));
        s.spawn(|| udp_load(ns, &stop, &udp));
        s.spawn(|| echo_pinger(echo, &survivor, &stop, &pings));
        let mut step = 0usize;
        // The survivor is always in the slice: its long-lived connection must live throughout.
        let sets: Vec<Vec<Ipv4Addr>> = vec![
            ips.clone(),
            vec![survivor_ip],
            ips.iter().copied().take(3).chain([survivor_ip]).collect::<BTreeSet<_>>().into_iter().collect(),
            ips.clone(),
        ];
        while started.elapsed() < duration {
            step += 1;
            let at = Instant::now();
            let event = match step % 8 {
                0 => {
                    api.stop();
                    std::thread::sleep(outage.min(duration.saturating_sub(started.elapsed())));
                    api.restart().expect("api restart");
                    "API server outage"
                }
                3 => {
                    agent.restart().expect("agent restart");
                    "agent restart (SIGTERM)"
                }
                6 => {
                    agent.kill().expect("agent kill");
                    // A change while the agent is down.
                    api.apply(slice_json(&sets[step % sets.len()])).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                    agent.start_again().expect("agent start");
                    "agent kill -9 + change while down + start"
                }
                _ => {
                    api.apply(slice_json(&sets[step % sets.len()])).unwrap();
                    "endpoint churn"
                }
            };
            *events.entry(event).or_default() += 1;
            timeline.push((at, event));
            last_event = event.to_owned();
            std::thread::sleep(Duration::from_secs(2));
            if pings.failed.load(Ordering::Relaxed) > 0 {
                break; // the long-lived connection broke: stop early, the books say so
            }
        }
        // End with everything up and a final change that must be picked up.
        api.restart().expect("api up");
        api.apply(slice_json(&ips)).unwrap();
        if let Err(e) = wait_applied(&agent.pin_path, &ips, Duration::from_secs(90)) {
            eprintln!("soak: final change not picked up: {e}");
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    });
    let counters = PinnedMaps::open(&c.agent.pin_path).and_then(|p| p.counters()).unwrap_or_default();
    let verdicts: u64 = [1usize, 2, 3, 4, 5].iter().map(|i| counters.get(*i).copied().unwrap_or(0)).sum();
    let packets = counters.first().copied().unwrap_or(0);
    let final_ok = wait_applied(&c.agent.pin_path, &c.ips, Duration::from_secs(1)).is_ok();
    let nonzero: Vec<String> = counters
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
        .map(|(i, v)| format!("{}={v}", lb_common::COUNTER_NAMES[i]))
        .collect();
    println!("== soak: {:.1} min (asked {minutes} min), last event: {last_event}", started.elapsed().as_secs_f64() / 60.0);
    println!("   events: {events:?}");
    println!("   {}", http.line("HTTP, new connection per request"));
    println!("   {}", udp.line("UDP, new socket per request"));
    println!("   {}", pings.line(&format!("long-lived TCP echo connection to {survivor}")));
    println!(
        "   datapath books: packets {packets} = pass + dnat + revnat + drop + reject {verdicts}: {}",
        if packets == verdicts { "balanced" } else { "NOT BALANCED" }
    );
    println!("   datapath counters: {}", nonzero.join(" "));
    println!("   final change picked up: {final_ok}");
    let errors: Vec<String> = [&http, &udp, &pings]
        .iter()
        .flat_map(|b| b.errors.lock().unwrap().clone())
        .map(|(t, e)| {
            let before = timeline.iter().rev().find(|(at, _)| *at <= t).map_or_else(
                || "before any event".to_owned(),
                |(at, ev)| format!("{:.1} s into {ev}", t.duration_since(*at).as_secs_f64()),
            );
            format!("at {:.1} s ({before}): {e}", t.duration_since(started).as_secs_f64())
        })
        .collect();
    for e in &errors {
        println!("   failure {e}");
    }
    assert!(
        http.balanced_without_failures()
            && udp.balanced_without_failures()
            && pings.balanced_without_failures()
            && packets == verdicts
            && final_ok,
        "soak failed: {errors:?}\nagent log:\n{}",
        c.agent.log_text()
    );
}

// =============================================================================================
// The conntrack sweep against live traffic
// =============================================================================================

/// The agent's sweep (every 30 s) collects the keys of idle entries, then deletes them. A client
/// that reuses the source port of a flow that ended more than 10 s ago (ports come round every
/// few tens of seconds under load) re-creates the same keys in between: the sweep must not
/// delete the new, live entries.
#[test]
fn the_conntrack_sweep_never_deletes_entries_of_live_flows() {
    let Some(f) = Fixture::new("the_conntrack_sweep_never_deletes_entries_of_live_flows", 262_144) else { return };
    let mut f = f;
    f.program(&base_state());
    let (vip, client) = (addresses::VIP, CLIENT);
    let mut ct = ConntrackPins::open(&f.pin_path);
    // 60,000 flows of this client that ended long ago (closing, last packet at boot time).
    const PORTS: u16 = 60_000;
    for port in 1..=PORTS {
        let fwd = conntrack_key((client, port), (vip, 80), PROTO_TCP, CT_DIR_FORWARD);
        let rev = conntrack_key((POD1, 8080), (client, port), PROTO_TCP, CT_DIR_REPLY);
        let v = CtValue { last_seen_ns: 1, flags: lb_common::CT_F_CLOSING, ..CtValue::default() };
        ct.insert(&fwd, v);
        ct.insert(&rev, v);
    }
    // A second handle on the same pins sweeps while new connections reuse the ports.
    let mut sweeper = Dataplane::load(&DataplaneConfig { pin_path: f.pin_path.clone(), ..DataplaneConfig::default() }).unwrap();
    let stop = AtomicBool::new(false);
    let (mut created, mut lost, mut swept) = (0u32, 0u32, 0usize);
    let mut flows = Vec::new();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += sweeper.sweep_conntrack().unwrap().removed;
            }
            n
        });
        let started = Instant::now();
        let mut port = 1u16;
        while started.elapsed() < Duration::from_secs(5) && port < PORTS {
            let (v, out) = f.run(&tcp_frame((client, port), (vip, 80), 1000, 0, TCP_SYN));
            assert_eq!(v, TC_ACT_OK);
            created += 1;
            let be = parse_flow(&out).dst;
            std::thread::sleep(Duration::from_micros(200));
            let fwd = ct_entry(&ct, (client, port), (vip, 80), CT_DIR_FORWARD);
            let rev = ct_entry(&ct, be, (client, port), CT_DIR_REPLY);
            if fwd.is_none() || rev.is_none() {
                lost += 1;
            }
            flows.push((port, be));
            port += 1;
        }
        stop.store(true, Ordering::Relaxed);
        swept = h.join().unwrap();
    });
    // Live flows (seconds old at most) must all still have both entries.
    let gone = flows
        .iter()
        .filter(|(port, be)| {
            ct_entry(&ct, (client, *port), (vip, 80), CT_DIR_FORWARD).is_none()
                || ct_entry(&ct, *be, (client, *port), CT_DIR_REPLY).is_none()
        })
        .count();
    eprintln!(
        "conntrack sweep vs live flows: {created} new flows on reused ports; {lost} had lost an entry 0.2 ms after their SYN, {gone} at the end; {swept} entries swept"
    );
    assert_eq!(gone, 0, "{gone} of {created} live flows lost their conntrack entries to the sweep");
    // Once nothing races it, a sweep leaves exactly the live flows' entries (one each: no SNAT),
    // and the count it reports (exported as lb_conntrack_entries) is the table's real fill.
    let last = sweeper.sweep_conntrack().unwrap();
    let left = ct.len();
    assert_eq!(last.remaining, left, "the sweep's count of what is left");
    assert_eq!(left, created as usize, "only the {created} live flows' entries are left");
}
