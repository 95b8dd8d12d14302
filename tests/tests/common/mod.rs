//! The BPF_PROG_TEST_RUN fixture shared by the IPv4 and IPv6 datapath tests: the real eBPF
//! object loaded into the real kernel with its own pins (removed on drop), programmed through
//! the agent's own planner and `Dataplane`, and each program run on single frames.
#![allow(dead_code, reason = "each test file uses part of the fixture")]

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{PROG_TC_EXT, PROG_TC_POD, ServiceKey};
use lb_tests::{netns::unique_token, privilege};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, cleanup},
    maps::addr16,
    maps::pinned::PinnedMaps,
    maps::sizes::MapSizes,
    model::DesiredState,
    plan::{PlanConfig, PlanMemory, map_state},
};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

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

/// A loaded datapath with its own pins, removed on drop.
pub struct Fixture {
    pub dp: Dataplane,
    pub ids: PlanMemory,
}

impl Fixture {
    pub fn new(test: &str) -> Option<Self> {
        if !privilege::require(test) {
            return None;
        }
        // A per-process counter on top of the token keeps every pin directory of this process
        // distinct however many fixtures the tests create.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let cfg = DataplaneConfig {
            pin_path: format!("/sys/fs/bpf/lbt-{}-{n}", unique_token()).into(),
            sizes: MapSizes { conntrack: 4096, ..MapSizes::default() },
        };
        // A failed load must not leave pins behind.
        let dp = Dataplane::load(&cfg).unwrap_or_else(|e| {
            let _ = cleanup(&cfg.pin_path);
            panic!("loading the datapath: {e:?}")
        });
        Some(Self { dp, ids: PlanMemory::default() })
    }

    /// A fixture whose node settings (SNAT and hairpin addresses, SNAT ports) are `cfg`.
    pub fn with_config(test: &str, cfg: &lb_common::Config) -> Option<Self> {
        let mut f = Self::new(test)?;
        f.dp.set_config(cfg).expect("writing the node config");
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
