//! The BPF_PROG_TEST_RUN fixture shared by the datapath tests (and the benches): the real eBPF
//! object loaded into the real kernel with its own pins (removed on drop), programmed through the
//! agent's own planner and `Dataplane`, each program run on single frames; the modelled node's
//! config; conntrack keys; and builders of the desired state the tests program.
#![allow(dead_code, reason = "each test file and bench uses part of the fixture")]

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array as BpfArray, HashMap as BpfHashMap, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{
    CFG_F_HAIRPIN_READY, CFG_F_HAIRPIN6_READY, CFG_F_SNAT_READY, CFG_F_SNAT6_READY, CT_DIR_REPLY, Config, CtClientKey4, CtKey,
    CtKey4, CtTableKey, CtValue, PROG_TC_EXT, PROG_TC_POD, SNAT_SLOTS_MAX, ServiceKey, SnatSlot4,
};
use lb_tests::{
    addresses::{HAIRPIN, HAIRPIN6, NODE, NODE6, SNAT_PORTS},
    netns::unique_token,
    privilege,
    verdict::{TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, cleanup},
    maps::addr16,
    maps::pinned::PinnedMaps,
    maps::sizes::MapSizes,
    model::{
        DesiredState, Endpoint, EndpointSet, Family, Frontend, FrontendKind, Protocol, Selection, ServicePortName,
        ServicePortState,
    },
    plan::{PlanConfig, PlanMemory, map_state},
};

/// The external entry points of a node: XDP, or its TC fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    Xdp,
    Tc,
}

impl Ext {
    pub fn pass(self) -> i32 {
        match self {
            Self::Xdp => XDP_PASS,
            Self::Tc => TC_ACT_OK,
        }
    }

    pub fn drop(self) -> i32 {
        match self {
            Self::Xdp => XDP_DROP,
            Self::Tc => TC_ACT_SHOT,
        }
    }
}

/// The config the agent writes for the modelled node ([`lb_tests::addresses`]), both families:
/// SNAT to the node's addresses from the default SNAT ports, the default hairpin sources.
pub fn node_config() -> Config {
    Config {
        snat_addr: addr16(NODE.into()),
        hairpin_addr: addr16(HAIRPIN.into()),
        snat6_addr: NODE6.octets(),
        hairpin6_addr: HAIRPIN6.octets(),
        snat_port_min: *SNAT_PORTS.start(),
        snat_port_max: *SNAT_PORTS.end(),
        flags: CFG_F_SNAT_READY | CFG_F_HAIRPIN_READY | CFG_F_SNAT6_READY | CFG_F_HAIRPIN6_READY,
    }
}

/// A loaded datapath with its own pins, removed on drop.
pub struct Fixture {
    pub dp: Dataplane,
    pub ids: PlanMemory,
}

impl Fixture {
    /// A datapath without node config (no SNAT, no hairpin) and a 4096-entry conntrack.
    pub fn new(test: &str) -> Option<Self> {
        Self::with_sizes(test, MapSizes { conntrack: 4096, ..MapSizes::default() })
    }

    /// A datapath whose maps have `sizes`.
    pub fn with_sizes(test: &str, sizes: MapSizes) -> Option<Self> {
        if !privilege::require(test) {
            return None;
        }
        // A per-process counter on top of the token keeps every pin directory of this process
        // distinct however many fixtures the tests create.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let cfg = DataplaneConfig {
            pin_path: format!("/sys/fs/bpf/lbt-{}-{n}", unique_token()).into(),
            sizes,
            ..DataplaneConfig::default()
        };
        // A failed load must not leave pins behind.
        let dp = Dataplane::load(&cfg).unwrap_or_else(|e| {
            let _ = cleanup(&cfg.pin_path);
            panic!("loading the datapath: {e:?}")
        });
        Some(Self { dp, ids: PlanMemory::default() })
    }

    /// A fixture of the modelled node: [`node_config`].
    pub fn node(test: &str) -> Option<Self> {
        let mut f = Self::new(test)?;
        f.dp.set_config(&node_config()).expect("writing the node config");
        Some(f)
    }

    pub fn program(&mut self, desired: &DesiredState) {
        let st = map_state(desired, &mut self.ids, &PlanConfig::default());
        self.dp.apply(&st).expect("programming the maps");
    }

    /// Runs one frame through the pod-ingress program: (verdict, frame out).
    pub fn run(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        self.run_tc(PROG_TC_POD, frame)
    }

    pub fn run_tc(&self, name: &'static str, frame: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.classifier(name).expect("program");
        let res = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value as i32, out)
    }

    /// Runs one frame through the external XDP program: (XDP verdict, frame out).
    pub fn run_xdp(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.xdp_program().expect("program");
        let res = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value as i32, out)
    }

    /// Runs one frame through an external entry point.
    pub fn run_ext(&self, ext: Ext, frame: &[u8]) -> (i32, Vec<u8>) {
        match ext {
            Ext::Xdp => self.run_xdp(frame),
            Ext::Tc => self.run_tc(PROG_TC_EXT, frame),
        }
    }

    pub fn counter(&self, index: u32) -> u64 {
        PinnedMaps::open(self.dp.pin_path()).expect("open pins").counters().expect("counters")[index as usize]
    }

    /// The `svc_id` programmed for a frontend.
    pub fn svc_id(&self, addr: impl Into<IpAddr>, port: u16, proto: u8) -> u32 {
        let key = ServiceKey { addr: addr16(addr.into()), port_be: port.to_be(), proto, _pad: 0 };
        self.dp.state().services.get(&key).expect("frontend programmed").svc_id
    }

    /// The backend id programmed for an endpoint.
    pub fn backend_id(&self, addr: impl Into<IpAddr>, port: u16, proto: u8) -> u32 {
        let a = addr16(addr.into());
        let (id, _) = self
            .dp
            .state()
            .backends
            .iter()
            .find(|(_, b)| b.addr == a && b.port_be == port.to_be() && b.proto == proto)
            .expect("backend programmed");
        *id
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = cleanup(self.dp.pin_path());
    }
}

/// The conntrack key of a `proto` packet `src → dst` seen in direction `dir` (`CT_DIR_*`).
pub fn conntrack_key(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, proto: u8, dir: u8) -> CtKey {
    let (src, dst) = (src.into(), dst.into());
    CtKey {
        src: addr16(src.ip()),
        dst: addr16(dst.ip()),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// The conntrack tables under a pin directory, addressed by [`CtKey`]: an IPv4 client key goes to
/// `LB_CT4_CLIENT` in its 8-byte form, any other IPv4 key to `LB_CONNTRACK4` in its 16-byte form
/// (a reply key to the SNAT address is also looked up in its slot of `LB_SNAT4_SLOTS`), any other
/// to `LB_CONNTRACK`.
pub struct ConntrackPins {
    client4: BpfHashMap<MapData, CtClientKey4, CtValue>,
    v4: BpfHashMap<MapData, CtKey4, CtValue>,
    v6: BpfHashMap<MapData, CtKey, CtValue>,
    slots: BpfArray<MapData, SnatSlot4>,
    config: BpfArray<MapData, Config>,
}

impl ConntrackPins {
    pub fn open(pin_path: &Path) -> Self {
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(pin_path.join(name)).unwrap_or_else(|e| panic!("{name} pin: {e}"))).unwrap()
        };
        Self {
            client4: BpfHashMap::try_from(open(lb_common::CONNTRACK4_CLIENT)).unwrap(),
            v4: BpfHashMap::try_from(open(lb_common::CONNTRACK4)).unwrap(),
            v6: BpfHashMap::try_from(open(lb_common::CONNTRACK)).unwrap(),
            slots: BpfArray::try_from(open(lb_common::SNAT4_SLOTS)).unwrap(),
            config: BpfArray::try_from(open(lb_common::CONFIG)).unwrap(),
        }
    }

    /// The slot holding the flow of reply or forward key `k`, found as the datapath finds it, and
    /// the entry it holds under `k`.
    fn slot_entry(&self, k: &CtKey) -> Option<(u32, CtValue)> {
        let cfg = self.config.get(&0, 0).ok()?;
        let read = |i: u32| self.slots.get(&i, 0);
        lb_common::snat_slot_entry(k, &cfg, lb_userspace::maps::snat_seed(), read).ok().flatten()
    }

    fn slot_of(&self, k: &CtKey) -> Option<u32> {
        self.slot_entry(k).map(|(i, _)| i)
    }

    /// The entry of reply or forward key `k` held in a slot, when one holds its flow.
    pub fn slot(&self, k: &CtKey) -> Option<CtValue> {
        self.slot_entry(k).map(|(_, v)| v)
    }

    /// Rewrites the entry of the slot holding key `k`'s flow: the whole reply entry for a reply
    /// key; its time, flags and ids for a forward key (the rest is the flow's).
    pub fn set_slot(&mut self, k: &CtKey, v: CtValue) {
        let i = self.slot_of(k).expect("a slot holding the flow");
        let s = self.slots.get(&i, 0).expect("slot read");
        let ct = if k.dir == CT_DIR_REPLY {
            v
        } else {
            let flags = v.flags & !lb_common::CT_F_SNAT_SLOT;
            CtValue { last_seen_ns: v.last_seen_ns, flags, backend_id: v.backend_id, svc_id: v.svc_id, ..s.ct }
        };
        self.slots.set(i, SnatSlot4 { ct, ..s }, 0).expect("slot write");
    }

    /// Source-NATed flows whose reply entry is in a slot.
    pub fn slots_in_use(&self) -> usize {
        (0..SNAT_SLOTS_MAX).filter(|i| self.slots.get(i, 0).is_ok_and(|s| s.in_use())).count()
    }

    /// The entry of `k`; for a forward or reply key of a one-entry flow, the view of it that
    /// its client's entry holds (`lb_common::client_entry_views`).
    pub fn get(&self, k: &CtKey) -> Option<CtValue> {
        self.raw(k).or_else(|| self.view(k))
    }

    /// Forward or reply key `k` as the view of its client's one entry, when that entry stands
    /// for `k`'s flow.
    pub fn view(&self, k: &CtKey) -> Option<CtValue> {
        let (client, view) = lb_common::client_key_of(k)?;
        let views = lb_common::client_entry_views(&client, &self.raw(&client)?)?;
        (views[view].0 == *k).then_some(views[view].1)
    }

    /// The entry stored under `k` itself.
    pub fn raw(&self, k: &CtKey) -> Option<CtValue> {
        match k.table_key() {
            CtTableKey::Client4(c) => self.client4.get(&c, 0).ok(),
            CtTableKey::Flow4(k4) => self.v4.get(&k4, 0).ok().or_else(|| self.slot(k)),
            CtTableKey::V6(_) => self.v6.get(k, 0).ok(),
        }
    }

    /// Writes the entry of `k` where the datapath keeps it: the slot holding its flow, if one
    /// does (see `set_slot`), else its table.
    pub fn insert(&mut self, k: &CtKey, v: CtValue) {
        if matches!(k.table_key(), CtTableKey::Flow4(_)) && self.slot_of(k).is_some() {
            return self.set_slot(k, v);
        }
        match k.table_key() {
            CtTableKey::Client4(c) => self.client4.insert(c, v, 0),
            CtTableKey::Flow4(k4) => self.v4.insert(k4, v, 0),
            CtTableKey::V6(_) => self.v6.insert(k, v, 0),
        }
        .expect("conntrack insert")
    }

    /// Writes IPv4 key `k` (any direction, a client key too) in its 16-byte form into
    /// `LB_CONNTRACK4`: where builds before `LB_CT4_CLIENT` kept client entries.
    pub fn insert_as_16_byte_key(&mut self, k: &CtKey, v: CtValue) {
        let k4 = CtKey4::from_key(k).expect("an IPv4 key");
        self.v4.insert(k4, v, 0).expect("conntrack insert");
    }

    /// The entry of IPv4 key `k` in its 16-byte form in `LB_CONNTRACK4`.
    pub fn get_16_byte_key(&self, k: &CtKey) -> Option<CtValue> {
        self.v4.get(&CtKey4::from_key(k)?, 0).ok()
    }

    /// Whether there was an entry to remove.
    pub fn remove(&mut self, k: &CtKey) -> bool {
        match k.table_key() {
            CtTableKey::Client4(c) => self.client4.remove(&c).is_ok(),
            CtTableKey::Flow4(k4) => self.v4.remove(&k4).is_ok() || self.free_slot(k),
            CtTableKey::V6(_) => self.v6.remove(k).is_ok(),
        }
    }

    /// Frees the slot holding key `k`'s flow (both its entries); false when none does.
    fn free_slot(&mut self, k: &CtKey) -> bool {
        let Some(i) = self.slot_of(k) else {
            return false;
        };
        self.slots.set(i, SnatSlot4::default(), 0).expect("slot write");
        true
    }

    /// Deletes every entry of every table, SNAT port slots included.
    pub fn clear(&mut self) {
        for i in 0..SNAT_SLOTS_MAX {
            if self.slots.get(&i, 0).is_ok_and(|s| s != SnatSlot4::default()) {
                self.slots.set(i, SnatSlot4::default(), 0).expect("slot write");
            }
        }
        self.clear_tables();
    }

    /// Deletes every entry of the hash tables (not the SNAT port slots, which only the external
    /// hooks write: reading all of them costs the caches a megabyte).
    pub fn clear_tables(&mut self) {
        let client4: Vec<CtClientKey4> = self.client4.keys().filter_map(Result::ok).collect();
        for k in client4 {
            let _ = self.client4.remove(&k);
        }
        let v4: Vec<CtKey4> = self.v4.keys().filter_map(Result::ok).collect();
        for k in v4 {
            let _ = self.v4.remove(&k);
        }
        let v6: Vec<CtKey> = self.v6.keys().filter_map(Result::ok).collect();
        for k in v6 {
            let _ = self.v6.remove(&k);
        }
    }

    /// Entries in every table.
    pub fn len(&self) -> usize {
        self.client4.keys().filter(Result::is_ok).count()
            + self.v4.keys().filter(Result::is_ok).count()
            + self.v6.keys().filter(Result::is_ok).count()
            + self.slots_in_use()
    }
}

// ---------------------------------------------------------------------------------------------
// The desired state the tests program
// ---------------------------------------------------------------------------------------------

/// An endpoint `ip:port` on this node (`local`) or another, ready.
pub fn endpoint(ip: impl Into<IpAddr>, port: u16, local: bool) -> Endpoint {
    Endpoint { addr: ip.into(), port, local, terminating: false, host: false }
}

/// A ServicePort of namespace `default` in the family of its first frontend, whose endpoints
/// serve every class of traffic (externalTrafficPolicy and internalTrafficPolicy Cluster, no
/// affinity, no source ranges, external traffic source-NATed).
pub fn service_port(
    name: &str,
    proto: Protocol,
    frontends: Vec<Frontend>,
    endpoints: Vec<Endpoint>,
    selection: Selection,
) -> (ServicePortName, ServicePortState) {
    let set = EndpointSet { endpoints: endpoints.into(), drop_if_empty: false };
    let family = Family::of(&frontends.first().expect("a ServicePort has a frontend").addr);
    (
        ServicePortName { namespace: "default".into(), name: name.into(), port_name: String::new(), protocol: proto, family },
        ServicePortState {
            frontends,
            internal: set.clone(),
            cluster: set.endpoints.clone(),
            serving: set.endpoints.clone(),
            external: set,
            external_snat: true,
            source_ranges: Vec::new(),
            affinity_timeout_s: None,
            selection,
            labels: Default::default(),
        },
    )
}

/// A ClusterIP ServicePort `vip:port` selecting at random (see [`service_port`]).
pub fn clusterip_service(
    name: &str,
    vip: impl Into<IpAddr>,
    port: u16,
    proto: Protocol,
    endpoints: Vec<Endpoint>,
) -> (ServicePortName, ServicePortState) {
    let frontend = Frontend { addr: vip.into(), port, kind: FrontendKind::ClusterIp };
    service_port(name, proto, vec![frontend], endpoints, Selection::Random)
}

/// The desired state of these ServicePorts.
pub fn desired_state(services: impl IntoIterator<Item = (ServicePortName, ServicePortState)>) -> DesiredState {
    let mut d = DesiredState::default();
    d.services.extend(services.into_iter().map(|(k, v)| (k, std::sync::Arc::new(v))));
    d
}

/// Creates a map of BPF map type `map_type` and pins it at `path` (standing in for a map an
/// earlier build created, of a layout this build no longer declares).
pub fn create_pinned_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapData {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // The first five words of `union bpf_attr` for BPF_MAP_CREATE; the rest zero.
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[map_type, key_size, value_size, max_entries, 0]);
    // SAFETY: BPF_MAP_CREATE (0) reads `attr`, which outlives the call, of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor this function owns.
    let data = MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).expect("wrapping the map");
    data.pin(path).expect("pinning the map");
    data
}
