//! B1: per-packet cost of the real datapath through BPF_PROG_TEST_RUN.
//!
//! The real eBPF object is loaded by `Dataplane::load` and programmed through the agent's own
//! compile → plan → apply path with 3 up to 100,000 services, the maps sized as `lb agent
//! --services-max N` sizes them.
//!
//! # Why a wrapper
//! Non-live BPF_PROG_TEST_RUN runs the program `repeat` times on one buffer and never restores
//! it: after the first DNAT every later iteration would see the translated packet, take the
//! "not a service" path and look several times cheaper than it is. So every measured run goes
//! through a tiny hand-assembled wrapper program (loaded here with raw `bpf()` calls) that, on
//! each iteration, copies template frame `i % K` from an array map over the packet and then
//! tail-calls the real program. The same wrapper tail-calling a one-instruction program is run
//! right after (same K, same templates) and its time subtracted:
//!
//!   ns/packet = T(wrapper → lb) − T(wrapper → no-op) + T(no-op)
//!
//! i.e. the program's cost as BPF_PROG_TEST_RUN would report it if the input were restored for
//! free (the last term keeps the test_run loop overhead in, like the "trivial program" floor).
//! Every run is checked with lb's own counters: e.g. a conntrack-hit run of 200,000 iterations
//! must add exactly 200,000 to `CT_HIT`, a new-flow run exactly `repeat` to `NEW_FLOWS`.
//!
//! New flows: K = repeat templates with distinct source ports, conntrack emptied before each
//! run, so every iteration is a first packet (SYN) of a new flow: service lookup, conntrack
//! miss, Maglev pick, two conntrack inserts, DNAT with checksum updates.
//!
//! Output: `target/bench-out/b1.json` (or `--out`), turned into BENCHMARKS.md by
//! `cargo xtask bench`.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    time::Instant,
};

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use common::{Opts, Svc, median, min, ncpus};
use lb_common::{
    CNT_AFFINITY_HIT, CNT_CT_HIT, CNT_DROP_SNAT_PORTS, CNT_NEW_FLOWS, CNT_PACKETS, CNT_SNAT, CNT_VERDICT_DNAT, CNT_VERDICT_PASS,
    CNT_VERDICT_REVNAT, ServiceKey, v4_mapped,
};
use lb_tests::{
    addresses::{CLIENT, EXT_CLIENT, NODE, VIP},
    netns::unique_token,
    packet::{PROTO_TCP, TCP_ACK, TCP_SYN, parse_flow, tcp_frame},
    verdict::{TC_ACT_OK, XDP_PASS},
};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, cleanup},
    maps::pinned::PinnedMaps,
    maps::sizes::MapSizes,
    plan::{PlanConfig, PlanMemory, map_state},
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Raw bpf(): maps, tiny programs, BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------------------------

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const MAP_ARRAY: u32 = 2;
const MAP_PROG_ARRAY: u32 = 3;
const PROG_SCHED_CLS: u32 = 3;
const PROG_XDP: u32 = 6;
/// `BPF_XDP`: the expected attach type aya loads XDP programs with (tail-call compatibility
/// requires the caller's to match).
const ATTACH_XDP: u32 = 37;

/// A zeroed `union bpf_attr` large enough for the commands used here.
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    fn call(&mut self, cmd: i64) -> std::io::Result<i64> {
        // SAFETY: bpf() with an attr buffer we own, of the size we pass.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len() as u32) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
    }
}

fn fd_from(r: i64) -> OwnedFd {
    // SAFETY: a new fd the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn create_array(map_type: u32, value_size: u32, entries: u32) -> anyhow::Result<OwnedFd> {
    let r = Attr::new().u32(0, map_type).u32(4, 4).u32(8, value_size).u32(12, entries).call(BPF_MAP_CREATE)?;
    Ok(fd_from(r))
}

fn update(map: RawFd, key: u32, value: &[u8]) -> anyhow::Result<()> {
    let k = key.to_ne_bytes();
    Attr::new().u32(0, map as u32).u64(8, k.as_ptr() as u64).u64(16, value.as_ptr() as u64).call(BPF_MAP_UPDATE_ELEM)?;
    Ok(())
}

fn load_prog(prog_type: u32, attach: u32, insns: &[u64], name: &str) -> anyhow::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.u32(0, prog_type)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, attach);
    let n = name.len().min(15);
    a.0[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    match a.call(BPF_PROG_LOAD) {
        Ok(r) => Ok(fd_from(r)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            anyhow::bail!("loading {name}: {e}\n{}", String::from_utf8_lossy(&log[..end]))
        }
    }
}

/// One BPF_PROG_TEST_RUN: (return value, ns per iteration as the kernel reports it).
fn test_run(prog: RawFd, data: &[u8], out: Option<&mut Vec<u8>>, repeat: u32) -> anyhow::Result<(u32, f64)> {
    let mut a = Attr::new();
    a.u32(0, prog as u32).u32(8, data.len() as u32).u64(16, data.as_ptr() as u64).u32(32, repeat);
    let mut out = out;
    if let Some(o) = out.as_deref_mut() {
        o.resize(data.len() + 512, 0);
        a.u32(12, o.len() as u32).u64(24, o.as_mut_ptr() as u64);
    }
    a.call(BPF_PROG_TEST_RUN)?;
    if let Some(o) = out {
        o.truncate(a.get_u32(12) as usize);
    }
    Ok((a.get_u32(4), f64::from(a.get_u32(36))))
}

/// A minimal eBPF assembler: what the wrapper and the no-op programs need.
mod asm {
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R5: u8 = 5;
    pub const R6: u8 = 6;
    pub const R7: u8 = 7;
    pub const R8: u8 = 8;
    pub const R10: u8 = 10;

    pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(code)
            | u64::from(dst & 0xf) << 8
            | u64::from(src & 0xf) << 12
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    }
    pub fn mov_reg(d: u8, s: u8) -> u64 {
        insn(0xbf, d, s, 0, 0)
    }
    pub fn mov_imm(d: u8, imm: i32) -> u64 {
        insn(0xb7, d, 0, 0, imm)
    }
    pub fn add_imm(d: u8, imm: i32) -> u64 {
        insn(0x07, d, 0, 0, imm)
    }
    pub fn mod_imm(d: u8, imm: i32) -> u64 {
        insn(0x97, d, 0, 0, imm)
    }
    /// `d = *(size *)(s + off)`; size 8, 4, 2 or 1 bytes.
    pub fn ldx(size: usize, d: u8, s: u8, off: i16) -> u64 {
        insn(0x61 | sz(size), d, s, off, 0)
    }
    /// `*(size *)(d + off) = s`.
    pub fn stx(size: usize, d: u8, s: u8, off: i16) -> u64 {
        insn(0x63 | sz(size), d, s, off, 0)
    }
    /// `*(size *)(d + off) = imm`.
    pub fn st(size: usize, d: u8, off: i16, imm: i32) -> u64 {
        insn(0x62 | sz(size), d, 0, off, imm)
    }
    fn sz(size: usize) -> u8 {
        match size {
            4 => 0x00,
            2 => 0x08,
            1 => 0x10,
            _ => 0x18,
        }
    }
    /// `ld_imm64 d, map_fd` (two instruction slots).
    pub fn ld_map(d: u8, fd: i32) -> [u64; 2] {
        [insn(0x18, d, 1, 0, fd), 0]
    }
    pub fn jeq_imm(d: u8, imm: i32, off: i16) -> u64 {
        insn(0x15, d, 0, off, imm)
    }
    pub fn jgt_reg(d: u8, s: u8, off: i16) -> u64 {
        insn(0x2d, d, s, off, 0)
    }
    pub fn call(helper: i32) -> u64 {
        insn(0x85, 0, 0, 0, helper)
    }
    pub fn exit() -> u64 {
        insn(0x95, 0, 0, 0, 0)
    }
}

/// Which hook a program runs at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    Tc,
    Xdp,
}

impl Hook {
    fn prog_type(self) -> u32 {
        match self {
            Self::Tc => PROG_SCHED_CLS,
            Self::Xdp => PROG_XDP,
        }
    }
    fn attach(self) -> u32 {
        match self {
            Self::Tc => 0,
            Self::Xdp => ATTACH_XDP,
        }
    }
    /// (ctx offset of data, of data_end).
    fn data_offsets(self) -> (i16, i16) {
        match self {
            Self::Tc => (76, 80),
            Self::Xdp => (0, 4),
        }
    }
    /// The verdict of a translated or passed packet.
    fn pass(self) -> u32 {
        match self {
            Self::Tc => TC_ACT_OK as u32,
            Self::Xdp => XDP_PASS as u32,
        }
    }
}

/// What the wrapper returns when it could not tail-call (never a real verdict).
const WRAPPER_FAILED: i32 = 99;

/// The wrapper: restore template `counter++ % k` over the packet, tail-call `prog_array[slot]`.
fn wrapper_insns(hook: Hook, state: RawFd, templates: RawFd, prog_array: RawFd, k: u32, len: usize, slot: i32) -> Vec<u64> {
    use asm::*;
    let (data_off, end_off) = hook.data_offsets();
    let mut p: Vec<u64> = Vec::new();
    let mut fails = Vec::new();
    p.push(mov_reg(R6, R1));
    p.push(st(4, R10, -4, 0));
    p.push(mov_reg(R2, R10));
    p.push(add_imm(R2, -4));
    p.extend(ld_map(R1, state));
    p.push(call(1)); // map_lookup_elem
    fails.push(p.len());
    p.push(jeq_imm(R0, 0, 0));
    p.push(ldx(8, R7, R0, 0));
    p.push(mov_reg(R8, R7));
    p.push(add_imm(R8, 1));
    p.push(stx(8, R0, R8, 0));
    p.push(mod_imm(R7, k as i32));
    p.push(stx(4, R10, R7, -8));
    p.push(mov_reg(R2, R10));
    p.push(add_imm(R2, -8));
    p.extend(ld_map(R1, templates));
    p.push(call(1));
    fails.push(p.len());
    p.push(jeq_imm(R0, 0, 0));
    p.push(mov_reg(R7, R0));
    p.push(ldx(4, R2, R6, data_off));
    p.push(ldx(4, R3, R6, end_off));
    p.push(mov_reg(R4, R2));
    p.push(add_imm(R4, len as i32));
    fails.push(p.len());
    p.push(jgt_reg(R4, R3, 0));
    let mut off = 0usize;
    for size in [8usize, 4, 2, 1] {
        while len - off >= size {
            p.push(ldx(size, R5, R7, off as i16));
            p.push(stx(size, R2, R5, off as i16));
            off += size;
        }
    }
    p.push(mov_reg(R1, R6));
    p.extend(ld_map(R2, prog_array));
    p.push(mov_imm(R3, slot));
    p.push(call(12)); // tail_call
    let fail_at = p.len();
    p.push(mov_imm(R0, WRAPPER_FAILED));
    p.push(exit());
    for at in fails {
        let rel = (fail_at - at - 1) as i16;
        p[at] = (p[at] & !(0xffff << 16)) | u64::from(rel as u16) << 16;
    }
    p
}

/// `return verdict`: the floor.
fn noop_insns(verdict: u32) -> Vec<u64> {
    vec![asm::mov_imm(asm::R0, verdict as i32), asm::exit()]
}

/// A loaded wrapper pair for one template set: slot 0 tail-calls lb, slot 1 the no-op.
struct Harness {
    hook: Hook,
    state: OwnedFd,
    _templates: OwnedFd,
    _prog_array: OwnedFd,
    to_lb: OwnedFd,
    to_noop: OwnedFd,
    noop: RawFd,
    input: Vec<u8>,
    k: u32,
}

impl Harness {
    fn new(hook: Hook, lb_prog: RawFd, noop: RawFd, frames: &[Vec<u8>]) -> anyhow::Result<Self> {
        let len = frames[0].len();
        assert!(frames.iter().all(|f| f.len() == len), "templates of one harness have one length");
        let vsize = len.div_ceil(8) * 8;
        let state = create_array(MAP_ARRAY, 8, 1)?;
        let templates = create_array(MAP_ARRAY, vsize as u32, frames.len() as u32)?;
        for (i, f) in frames.iter().enumerate() {
            let mut v = f.clone();
            v.resize(vsize, 0);
            update(templates.as_raw_fd(), i as u32, &v)?;
        }
        let prog_array = create_array(MAP_PROG_ARRAY, 4, 2)?;
        let k = frames.len() as u32;
        let ins = |slot| wrapper_insns(hook, state.as_raw_fd(), templates.as_raw_fd(), prog_array.as_raw_fd(), k, len, slot);
        let to_lb = load_prog(hook.prog_type(), hook.attach(), &ins(0), "bench_wrap_lb")?;
        let to_noop = load_prog(hook.prog_type(), hook.attach(), &ins(1), "bench_wrap_nop")?;
        update(prog_array.as_raw_fd(), 0, &(lb_prog as u32).to_ne_bytes())?;
        update(prog_array.as_raw_fd(), 1, &(noop as u32).to_ne_bytes())?;
        Ok(Self {
            hook,
            state,
            _templates: templates,
            _prog_array: prog_array,
            to_lb,
            to_noop,
            noop,
            input: frames[0].clone(),
            k,
        })
    }

    fn reset(&self) -> anyhow::Result<()> {
        update(self.state.as_raw_fd(), 0, &0u64.to_ne_bytes())
    }

    /// One run through lb: (return value, raw ns/iteration).
    fn run_lb(&self, repeat: u32) -> anyhow::Result<(u32, f64)> {
        self.reset()?;
        test_run(self.to_lb.as_raw_fd(), &self.input, None, repeat)
    }

    /// (wrapper → no-op ns, no-op alone ns).
    fn run_floor(&self, repeat: u32) -> anyhow::Result<(f64, f64)> {
        self.reset()?;
        let (rv, wrapped) = test_run(self.to_noop.as_raw_fd(), &self.input, None, repeat)?;
        anyhow::ensure!(rv == self.hook.pass(), "the no-op wrapper returned {rv}");
        let (_, alone) = test_run(self.noop, &self.input, None, repeat)?;
        Ok((wrapped, alone))
    }
}

// ---------------------------------------------------------------------------------------------
// The measured cluster
// ---------------------------------------------------------------------------------------------

const AFF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const NP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const BIG_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
/// A Service whose port is its target port (80 → 80): a translation of the address only.
const SAME_PORT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const NODE_PORT: u16 = 30080;
/// A NodePort Service with `externalTrafficPolicy: Local`: external flows keep their client
/// address (no SNAT, one conntrack entry).
const NPL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
const NODE_PORT_LOCAL: u16 = 30081;

fn pods(base: [u8; 3], n: u32) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(base[0], base[1], base[2], 10 + i as u8)).collect()
}

fn measured_services() -> Vec<Svc> {
    let mut aff = Svc::new("bench-affinity", AFF_VIP, pods([10, 244, 0], 3));
    aff.affinity = true;
    let mut np = Svc::new("bench-nodeport", NP_VIP, pods([10, 244, 1], 3));
    np.node_port = Some(NODE_PORT);
    let mut same_port = Svc::new("bench-same-port", SAME_PORT_VIP, pods([10, 244, 2], 3));
    same_port.target_port = same_port.port;
    let mut np_local = Svc::new("bench-nodeport-local", NPL_VIP, pods([10, 244, 3], 3));
    np_local.node_port = Some(NODE_PORT_LOCAL);
    np_local.local_policy = true;
    vec![Svc::new("bench-clusterip", VIP, pods([10, 244, 0], 3)), aff, np, same_port, np_local]
}

fn big_service() -> Svc {
    let eps = (0..1000u32).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 10)) + i)).collect();
    Svc::new("bench-1000-backends", BIG_VIP, eps)
}

// ---------------------------------------------------------------------------------------------
// Labs (one loaded datapath per service count) and cases
// ---------------------------------------------------------------------------------------------

struct Sizes {
    runs: usize,
    hit_repeat: u32,
    new_repeat: u32,
    np_new_repeat: u32,
    /// Total services programmed per row (the 3 measured ones included).
    scales: Vec<u32>,
}

/// One loaded and programmed datapath with its own pins (removed on drop).
struct Lab {
    /// `None` for the 1,000-backend configuration.
    services: Option<u32>,
    dummies: Vec<Svc>,
    dp: Dataplane,
    pin: PathBuf,
    fill: usize,
    program_s: f64,
    /// Kernel memory of all maps once programmed, bytes.
    map_bytes: u64,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = cleanup(&self.pin);
    }
}

impl Lab {
    fn new(services: Option<u32>, svcs: &[Svc], dummies: Vec<Svc>) -> anyhow::Result<Self> {
        let pin = PathBuf::from(format!("/sys/fs/bpf/lbbench-b1-{}", unique_token()));
        Self::load(services, svcs, dummies, &pin).inspect_err(|_| {
            let _ = cleanup(&pin);
        })
    }

    fn load(services: Option<u32>, svcs: &[Svc], dummies: Vec<Svc>, pin: &std::path::Path) -> anyhow::Result<Self> {
        let pin = pin.to_owned();
        // Sized as `lb agent --services-max N` would (the defaults hold about 16,000 services),
        // with headroom for the measured services' own tables.
        let sizes = MapSizes::for_services(services.unwrap_or(0) + 1_000);
        let mut dp = Dataplane::load(&DataplaneConfig { pin_path: pin.clone(), sizes, ..DataplaneConfig::default() })?;
        dp.set_config(&common::fixture::node_config())?;
        let t = Instant::now();
        let d = common::desired(svcs);
        let st = map_state(&d, &mut PlanMemory::default(), &PlanConfig::default());
        dp.apply(&st)?;
        let program_s = t.elapsed().as_secs_f64();
        let fill = dp.state().services.len();
        let map_bytes = map_memory(&pin);
        Ok(Self { services, dummies, dp, pin, fill, program_s, map_bytes })
    }

    fn label(&self) -> String {
        match self.services {
            Some(n) => format!("{n} services"),
            None => "1 service × 1,000 backends".into(),
        }
    }

    fn prog_fd(&self, hook: Hook) -> RawFd {
        match hook {
            Hook::Tc => self.dp.tc_program().expect("tc program").fd().expect("fd").as_fd().as_raw_fd(),
            Hook::Xdp => self.dp.xdp_program().expect("xdp program").fd().expect("fd").as_fd().as_raw_fd(),
        }
    }

    fn counters(&self) -> Vec<u64> {
        PinnedMaps::open(&self.pin).and_then(|m| m.counters()).expect("reading lb's counters")
    }

    /// Deletes every conntrack entry (and, with `affinity`, every affinity record). The SNAT
    /// port slots only with `slots`: only the external hook writes them, and reading them all
    /// would leave the cases of the other hooks colder caches than their earlier builds' benches.
    fn clear_state(&self, affinity: bool, slots: bool) -> anyhow::Result<()> {
        let mut ct = common::fixture::ConntrackPins::open(&self.pin);
        if slots {
            ct.clear()
        } else {
            ct.clear_tables()
        }
        if affinity {
            let map = Map::from_map_data(MapData::from_pin(self.pin.join(lb_common::AFFINITY))?)?;
            let mut m: AyaHashMap<MapData, lb_common::AffinityKey, lb_common::AffinityValue> = AyaHashMap::try_from(map)?;
            let keys: Vec<_> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
        Ok(())
    }

    /// Runs one frame once, directly (no wrapper): the verdict and the frame out.
    fn once(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let (rv, _) = test_run(self.prog_fd(hook), frame, Some(&mut out), 1)?;
        Ok((rv, out))
    }

    /// An fd of one of this lab's pinned maps.
    fn map_fd(&self, name: &str) -> anyhow::Result<OwnedFd> {
        let path = std::ffi::CString::new(self.pin.join(name).to_string_lossy().into_owned())?;
        let r = Attr::new().u64(0, path.as_ptr() as u64).call(BPF_OBJ_GET)?;
        Ok(fd_from(r))
    }
}

const BPF_OBJ_GET: i64 = 7;

/// A program doing one lookup of `key` in `map` and returning `verdict`: the cost of one map
/// lookup in lb's own maps, for reference.
fn lookup_insns(map: RawFd, key: &[u8], verdict: u32) -> Vec<u64> {
    use asm::*;
    let n = key.len();
    assert!(n.is_multiple_of(4));
    let mut p = Vec::new();
    for (i, w) in key.chunks(4).enumerate() {
        p.push(st(4, R10, (i * 4) as i16 - n as i16, i32::from_ne_bytes(w.try_into().expect("4 bytes"))));
    }
    p.extend(ld_map(R1, map));
    p.push(mov_reg(R2, R10));
    p.push(add_imm(R2, -(n as i32)));
    p.push(call(1));
    p.push(mov_imm(R0, verdict as i32));
    p.push(exit());
    p
}

fn pod_bytes<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: `T` is a plain-old-data map key (`repr(C)`, no padding holes the kernel reads).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// What to do before each run of a case.
#[derive(Clone)]
enum Prep {
    Nothing,
    /// Empty conntrack (and affinity), then run these frames once each (directly).
    Reset {
        affinity: bool,
        prime: Vec<(Hook, Vec<u8>)>,
    },
    /// Empty conntrack, then establish the flows of these SYN templates through a wrapper.
    ResetAndEstablish(Vec<Vec<u8>>),
}

/// A case ready to run on one lab.
struct Prepared<'a> {
    lab: &'a Lab,
    hook: Hook,
    harness: Option<Harness>,
    /// Direct program (lookup reference), when there is no wrapper.
    direct: Option<OwnedFd>,
    repeat: u32,
    expect: &'static [u32],
    prep: Prep,
    out: CaseOut,
}

struct CaseOut {
    name: &'static str,
    hook: Hook,
    ns: Vec<f64>,
    raw_lb: Vec<f64>,
    raw_floor: Vec<f64>,
    noop: Vec<f64>,
    repeat: u32,
    k: u32,
    valid: bool,
    note: String,
    /// New flows dropped because no SNAT port was found (NodePort new flows).
    snat_drops: u64,
    /// Median over runs of this run's ns over the same run's ns with the fewest services.
    ratio_to_first: Option<f64>,
    /// Conntrack entries after the flows a run establishes first (cases that establish some).
    ct_entries_before: Option<usize>,
}

impl CaseOut {
    fn json(&self) -> Value {
        json!({
            "case": self.name, "hook": format!("{:?}", self.hook), "repeat": self.repeat, "templates": self.k,
            "ns_median": median(&self.ns), "ns_min": min(&self.ns), "ns": self.ns,
            "raw_wrapper_lb_median": median(&self.raw_lb), "raw_wrapper_noop_median": median(&self.raw_floor),
            "noop_median": median(&self.noop), "counters_ok": self.valid, "note": self.note, "snat_port_drops": self.snat_drops,
            "ratio_to_first_median": self.ratio_to_first, "conntrack_entries_before": self.ct_entries_before,
        })
    }
}

impl Prepared<'_> {
    fn prepare(&self) -> anyhow::Result<()> {
        match &self.prep {
            Prep::Nothing => {}
            Prep::Reset { affinity, prime } => {
                self.lab.clear_state(*affinity, self.hook == Hook::Xdp)?;
                for (hook, f) in prime {
                    let (rv, _) = self.lab.once(*hook, f)?;
                    anyhow::ensure!(rv == hook.pass(), "priming packet not translated (verdict {rv})");
                }
            }
            Prep::ResetAndEstablish(syns) => {
                self.lab.clear_state(false, self.hook == Hook::Xdp)?;
                // Through the case's own hook (its harness's no-op is of that hook).
                let h = Harness::new(self.hook, self.lab.prog_fd(self.hook), self.harness.as_ref().expect("harness").noop, syns)?;
                h.run_lb(syns.len() as u32)?;
            }
        }
        Ok(())
    }

    fn run_once(&mut self) -> anyhow::Result<()> {
        self.prepare()?;
        if matches!(self.prep, Prep::ResetAndEstablish(_)) && self.out.ct_entries_before.is_none() {
            // How full the established flows left the conntrack map (LRU: it evicts before it is full).
            let m = PinnedMaps::open(&self.lab.pin)?;
            let tables = [lb_common::CONNTRACK4_CLIENT, lb_common::CONNTRACK4, lb_common::CONNTRACK];
            self.out.ct_entries_before =
                Some(m.fill_levels().into_iter().filter(|(n, _, _)| tables.contains(n)).filter_map(|(_, used, _)| used).sum());
        }
        if let Some(fd) = &self.direct {
            let (_, ns) = test_run(fd.as_raw_fd(), &syn((CLIENT, 1), (VIP, 80)), None, self.repeat)?;
            self.out.ns.push(ns);
            return Ok(());
        }
        let h = self.harness.as_ref().expect("harness");
        let before = self.lab.counters();
        let (rv, lb) = h.run_lb(self.repeat)?;
        let after = self.lab.counters();
        if rv != self.hook.pass() {
            self.out.valid = false;
            self.out.note = format!("verdict {rv}, expected {}", self.hook.pass());
        }
        // A new NodePort flow whose 4 random SNAT port picks all collide is dropped (counted):
        // with 1,000 flows over 4,001 ports a run sees one now and then.
        let snat_drops = after[CNT_DROP_SNAT_PORTS as usize] - before[CNT_DROP_SNAT_PORTS as usize];
        if snat_drops > 0 {
            self.out.snat_drops += snat_drops;
        }
        for &c in self.expect.iter().chain(&[CNT_PACKETS]) {
            let mut delta = after[c as usize] - before[c as usize];
            // A flow dropped for want of a port was counted as source-NATed (the count comes
            // before the pick), but not as a new flow.
            if c == CNT_NEW_FLOWS {
                delta += snat_drops;
            }
            if delta != u64::from(self.repeat) {
                self.out.valid = false;
                self.out.note =
                    format!("counter {} grew by {delta}, expected {}", lb_common::COUNTER_NAMES[c as usize], self.repeat);
            }
        }
        let (floor, noop) = h.run_floor(self.repeat)?;
        self.out.raw_lb.push(lb);
        self.out.raw_floor.push(floor);
        self.out.noop.push(noop);
        self.out.ns.push(lb - floor + noop);
        Ok(())
    }
}

fn syn(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    tcp_frame(src, dst, 1000, 0, TCP_SYN)
}

fn ack(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    tcp_frame(src, dst, 1000, 0, TCP_ACK)
}

/// Source ports for `n` distinct flows from one client.
fn sports(n: u32) -> impl Iterator<Item = u16> {
    (0..n).map(|i| 1024 + (i % 64_000) as u16)
}

/// The cases, in the order they are reported.
const CASES: [&str; 16] = [
    "pass_non_service",
    "xdp_pass_non_service",
    "new_flow",
    "new_flow_conntrack_full",
    "ct_hit",
    "ct_hit_same_port",
    "reply_revnat",
    "affinity_hit_new_flow",
    "nodeport_snat_ct_hit",
    "nodeport_snat_new_flow",
    "nodeport_local_ct_hit",
    "nodeport_local_cycling_ct_hit",
    "new_flow_cycling_services",
    "ct_hit_cycling_services",
    "lookup_services_map",
    "lookup_conntrack_map",
];

/// Flows that fill the conntrack map past its capacity (one entry each; two each with builds
/// before one-entry flows).
const CT_FILL_FLOWS: u32 = lb_common::CONNTRACK_MAX + 4_096;

/// Case `name` on `lab`, or `None` when it does not apply there.
fn prepare<'a>(
    lab: &'a Lab,
    name: &'static str,
    s: &Sizes,
    noop_tc: RawFd,
    noop_xdp: RawFd,
) -> anyhow::Result<Option<Prepared<'a>>> {
    let big = lab.services.is_none();
    let vip = if big { BIG_VIP } else { VIP };
    let noop = |h: Hook| if h == Hook::Tc { noop_tc } else { noop_xdp };
    let reset = |prime: Vec<(Hook, Vec<u8>)>| Prep::Reset { affinity: false, prime };
    let prime_syn = vec![(Hook::Tc, syn((CLIENT, 40000), (vip, 80)))];
    let (hook, frames, repeat, expect, prep): (Hook, Vec<Vec<u8>>, u32, &'static [u32], Prep) = match name {
        "pass_non_service" | "xdp_pass_non_service" if !big => {
            let hook = if name == "pass_non_service" { Hook::Tc } else { Hook::Xdp };
            (
                hook,
                vec![ack((CLIENT, 40000), (Ipv4Addr::new(10, 244, 0, 99), 8080))],
                s.hit_repeat,
                &[CNT_VERDICT_PASS],
                Prep::Nothing,
            )
        }
        "new_flow" => {
            let frames = sports(s.new_repeat).map(|p| syn((CLIENT, p), (vip, 80))).collect();
            (Hook::Tc, frames, s.new_repeat, &[CNT_NEW_FLOWS, CNT_VERDICT_DNAT], reset(vec![]))
        }
        "new_flow_conntrack_full" if !big && lab.dummies.is_empty() => {
            // Conntrack filled to capacity by other flows first (as on a node that opens
            // connections faster than their entries expire): every insert evicts.
            let fill: Vec<Vec<u8>> = (0..CT_FILL_FLOWS)
                .map(|i| syn((Ipv4Addr::new(10, 244, 2, 1 + (i / 60_000) as u8), 1024 + (i % 60_000) as u16), (vip, 80)))
                .collect();
            let frames = sports(s.new_repeat).map(|p| syn((CLIENT, p), (vip, 80))).collect();
            (Hook::Tc, frames, s.new_repeat, &[CNT_NEW_FLOWS, CNT_VERDICT_DNAT], Prep::ResetAndEstablish(fill))
        }
        "ct_hit" => {
            (Hook::Tc, vec![ack((CLIENT, 40000), (vip, 80))], s.hit_repeat, &[CNT_CT_HIT, CNT_VERDICT_DNAT], reset(prime_syn))
        }
        "ct_hit_same_port" if !big => {
            let prime = vec![(Hook::Tc, syn((CLIENT, 40000), (SAME_PORT_VIP, 80)))];
            (
                Hook::Tc,
                vec![ack((CLIENT, 40000), (SAME_PORT_VIP, 80))],
                s.hit_repeat,
                &[CNT_CT_HIT, CNT_VERDICT_DNAT],
                reset(prime),
            )
        }
        "reply_revnat" => {
            // The backend Maglev picks for this flow (the same on every run).
            lab.clear_state(false, false)?;
            let (rv, out) = lab.once(Hook::Tc, &prime_syn[0].1)?;
            anyhow::ensure!(rv == Hook::Tc.pass(), "the SYN was not translated (verdict {rv})");
            let backend = parse_flow(&out).dst;
            (Hook::Tc, vec![ack(backend, (CLIENT, 40000))], s.hit_repeat, &[CNT_VERDICT_REVNAT], reset(prime_syn))
        }
        "affinity_hit_new_flow" if !big => {
            let frames = sports(s.new_repeat).map(|p| syn((CLIENT, p), (AFF_VIP, 80))).collect();
            let prep = Prep::Reset { affinity: true, prime: vec![(Hook::Tc, syn((CLIENT, 65000), (AFF_VIP, 80)))] };
            (Hook::Tc, frames, s.new_repeat, &[CNT_AFFINITY_HIT, CNT_NEW_FLOWS], prep)
        }
        "nodeport_snat_ct_hit" | "nodeport_local_ct_hit" if !big => {
            let port = if name == "nodeport_snat_ct_hit" { NODE_PORT } else { NODE_PORT_LOCAL };
            let prime = vec![(Hook::Xdp, syn((EXT_CLIENT, 40000), (NODE, port)))];
            (Hook::Xdp, vec![ack((EXT_CLIENT, 40000), (NODE, port))], s.hit_repeat, &[CNT_CT_HIT, CNT_VERDICT_DNAT], reset(prime))
        }
        "nodeport_local_cycling_ct_hit" if !big && lab.dummies.is_empty() => {
            // Established policy-Local flows from outside, each packet another (what a busy
            // node's external interface sees): their conntrack entries, and whatever else a
            // lookup touches, do not stay in cache as one flow's do.
            let k = s.new_repeat;
            let to = |p: u16| ((EXT_CLIENT, p), (NODE, NODE_PORT_LOCAL));
            let syns = sports(k).map(|p| syn(to(p).0, to(p).1)).collect();
            let acks = sports(k).map(|p| ack(to(p).0, to(p).1)).collect();
            let reps = (s.hit_repeat / k).max(1) * k;
            (Hook::Xdp, acks, reps, &[CNT_CT_HIT, CNT_VERDICT_DNAT], Prep::ResetAndEstablish(syns))
        }
        "nodeport_snat_new_flow" if !big => {
            let frames = sports(s.np_new_repeat).map(|p| syn((EXT_CLIENT, p), (NODE, NODE_PORT))).collect();
            (Hook::Xdp, frames, s.np_new_repeat, &[CNT_NEW_FLOWS, CNT_SNAT], reset(vec![]))
        }
        "new_flow_cycling_services" | "ct_hit_cycling_services" if !lab.dummies.is_empty() => {
            let k = (lab.dummies.len() as u32).min(s.new_repeat);
            let stride = lab.dummies.len() / k as usize;
            let targets: Vec<Ipv4Addr> = (0..k as usize).map(|i| lab.dummies[i * stride].vip).collect();
            let syns: Vec<Vec<u8>> = targets.iter().zip(sports(k)).map(|(v, p)| syn((CLIENT, p), (*v, 80))).collect();
            if name == "new_flow_cycling_services" {
                (Hook::Tc, syns, k, &[CNT_NEW_FLOWS], reset(vec![]))
            } else {
                let acks = targets.iter().zip(sports(k)).map(|(v, p)| ack((CLIENT, p), (*v, 80))).collect();
                let reps = (s.hit_repeat / k).max(1) * k;
                (Hook::Tc, acks, reps, &[CNT_CT_HIT], Prep::ResetAndEstablish(syns))
            }
        }
        "lookup_services_map" | "lookup_conntrack_map" if !big => {
            let (map, key, prep) = if name == "lookup_services_map" {
                let k =
                    ServiceKey { addr: v4_mapped(VIP.octets()), port_be: 80u16.to_be(), proto: lb_common::IPPROTO_TCP, _pad: 0 };
                (lab.map_fd(lb_common::SERVICES)?, pod_bytes(&k), Prep::Nothing)
            } else {
                // The IPv4 client table, where the flow is (8-byte keys), under its client's key:
                // the one entry of a flow without SNAT. (Builds before it held the entry in the
                // 16-byte table, and builds before one-entry flows under its forward key, which
                // their own bench looks up: a hit in each.)
                let k = lb_common::CtKey::client(v4_mapped(CLIENT.octets()), 40000u16.to_be(), PROTO_TCP);
                let k4 = lb_common::CtClientKey4::from_key(&k).expect("an IPv4 client key");
                (lab.map_fd(lb_common::CONNTRACK4_CLIENT)?, pod_bytes(&k4), reset(prime_syn))
            };
            let prog = load_prog(PROG_SCHED_CLS, 0, &lookup_insns(map.as_raw_fd(), &key, 0), "bench_lookup")?;
            let out = CaseOut {
                name,
                hook: Hook::Tc,
                ns: vec![],
                raw_lb: vec![],
                raw_floor: vec![],
                noop: vec![],
                repeat: s.hit_repeat,
                k: 1,
                valid: true,
                note: String::new(),
                snat_drops: 0,
                ratio_to_first: None,
                ct_entries_before: None,
            };
            return Ok(Some(Prepared {
                lab,
                hook: Hook::Tc,
                harness: None,
                direct: Some(prog),
                repeat: s.hit_repeat,
                expect: &[],
                prep,
                out,
            }));
        }
        _ => return Ok(None),
    };
    let harness = Harness::new(hook, lab.prog_fd(hook), noop(hook), &frames)?;
    let out = CaseOut {
        name,
        hook,
        ns: vec![],
        raw_lb: vec![],
        raw_floor: vec![],
        noop: vec![],
        repeat,
        k: harness.k,
        valid: true,
        note: String::new(),
        snat_drops: 0,
        ratio_to_first: None,
        ct_entries_before: None,
    };
    // The cycling-hit case establishes its flows through a wrapper with the no-op of its hook.
    Ok(Some(Prepared { lab, hook, harness: Some(harness), direct: None, repeat, expect, prep, out }))
}

/// Kernel memory of the pinned maps under `pin`, in bytes: the `memlock` the kernel reports for
/// each map (for the hash maps created with `BPF_F_NO_PREALLOC`, the entries in use plus the
/// bucket array).
fn map_memory(pin: &std::path::Path) -> u64 {
    lb_common::ALL_MAPS
        .iter()
        .filter_map(|name| MapData::from_pin(pin.join(name)).ok())
        .filter_map(|data| {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse("b1");
    common::require_privileges("b1");
    let sizes = if opts.quick {
        Sizes { runs: 5, hit_repeat: 50_000, new_repeat: 5_000, np_new_repeat: 1_000, scales: vec![3, 10_000] }
    } else {
        Sizes { runs: 7, hit_repeat: 200_000, new_repeat: 20_000, np_new_repeat: 1_000, scales: vec![3, 1_000, 10_000, 100_000] }
    };
    // The kernel runs test_run on the caller's CPU: one CPU for every run.
    let cpu = ncpus() - 1;
    common::pin_to_cpu(cpu);
    let noop_tc = load_prog(PROG_SCHED_CLS, 0, &noop_insns(Hook::Tc.pass()), "bench_noop_tc")?;
    let noop_xdp = load_prog(PROG_XDP, ATTACH_XDP, &noop_insns(Hook::Xdp.pass()), "bench_noop_xdp")?;

    // One datapath per service count (and one for the 1,000-backend service), all loaded at
    // once so that every case's runs interleave over them.
    let measured = measured_services();
    let mut labs = Vec::new();
    let t0 = Instant::now();
    for &n in &sizes.scales {
        let dummies: Vec<Svc> = (0..n.saturating_sub(measured.len() as u32)).map(|i| Svc::dummy(i, 3)).collect();
        let mut all = measured.clone();
        all.extend(dummies.iter().cloned());
        let lab = Lab::new(Some(n), &all, dummies)?;
        println!(
            "b1: {}: {} of {} LB_SERVICES entries, programmed in {:.2} s, maps take {} MiB of kernel memory",
            lab.label(),
            lab.fill,
            lab.dp.limits().services,
            lab.program_s,
            lab.map_bytes >> 20
        );
        labs.push(lab);
    }
    let big = Lab::new(None, &[big_service()], vec![])?;
    println!("b1: {}: programmed in {:.2} s", big.label(), big.program_s);
    labs.push(big);
    let setup_s = t0.elapsed().as_secs_f64();
    println!(
        "b1: {} datapaths loaded and programmed in {setup_s:.1} s; test_run on CPU {cpu}; {} interleaved runs per case",
        labs.len(),
        sizes.runs
    );

    let mut by_lab: Vec<Vec<CaseOut>> = labs.iter().map(|_| Vec::new()).collect();
    // LB_B1_CASES=ct_hit,reply_revnat runs only those cases (for a quick look while working on
    // one path; the report then lacks the others).
    let only: Option<Vec<String>> = std::env::var("LB_B1_CASES").ok().map(|v| v.split(',').map(str::to_owned).collect());
    for name in CASES.into_iter().filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|x| x == c))) {
        let mut prepared = Vec::new();
        for (i, lab) in labs.iter().enumerate() {
            if let Some(p) = prepare(lab, name, &sizes, noop_tc.as_raw_fd(), noop_xdp.as_raw_fd())? {
                prepared.push((i, p));
            }
        }
        // Every run visits every lab; odd runs in reverse order, so no lab always goes first.
        for run in 0..sizes.runs {
            if run % 2 == 0 {
                for (_, p) in &mut prepared {
                    p.run_once()?;
                }
            } else {
                for (_, p) in prepared.iter_mut().rev() {
                    p.run_once()?;
                }
            }
        }
        // Paired ratios: each run's figure over the same run's figure on the first lab (the
        // fewest services), which cancels drift between runs.
        let firsts: Option<Vec<f64>> = prepared.iter().find(|(i, _)| *i == 0).map(|(_, p)| p.out.ns.clone());
        for (_, p) in &mut prepared {
            if let Some(f) = &firsts {
                let r: Vec<f64> = p.out.ns.iter().zip(f).map(|(a, b)| a / b).collect();
                p.out.ratio_to_first = Some(median(&r));
            }
        }
        for (i, p) in prepared {
            let o = &p.out;
            let status = if o.valid { "ok".to_owned() } else { format!("INVALID: {}", o.note) };
            println!(
                "  {name:<26} {:<28} {:>7.1} ns/pkt (median, min {:.1}; wrapper→lb {:.1}, wrapper→no-op {:.1}, no-op {:.1}; K={}, repeat={}) {status}",
                p.lab.label(),
                median(&o.ns),
                min(&o.ns),
                median(&o.raw_lb),
                median(&o.raw_floor),
                median(&o.noop),
                o.k,
                o.repeat
            );
            by_lab[i].push(p.out);
        }
    }
    let mut rows = Vec::new();
    let mut big_row = Value::Null;
    for (lab, cases) in labs.iter().zip(&by_lab) {
        let cases: Vec<Value> = cases.iter().map(CaseOut::json).collect();
        match lab.services {
            Some(n) => rows.push(json!({
                "services": n,
                "services_map_entries": lab.fill,
                "maglev_map_entries": lab.dp.state().maglev.len(),
                "map_sizes": lab.dp.limits(),
                "map_bytes": lab.map_bytes,
                "program_s": lab.program_s,
                "cases": cases,
            })),
            None => big_row = json!({"services": 1, "backends": 1000, "program_s": lab.program_s, "cases": cases}),
        }
    }
    let results = json!({
        "cpu": cpu,
        "runs": sizes.runs,
        "hit_repeat": sizes.hit_repeat,
        "new_repeat": sizes.new_repeat,
        "nodeport_new_repeat": sizes.np_new_repeat,
        "setup_s": setup_s,
        "rows": rows,
        "big": big_row,
        "default_sizes": MapSizes::default(),
        "maglev_table_size_3_endpoints": lb_userspace::plan::maglev::table_size(3, None),
    });
    drop(labs);
    common::write_results(&opts, "b1", results);
    Ok(())
}
