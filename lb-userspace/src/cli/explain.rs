//! `lb explain`: what the node's datapath does with one packet, step by step. The packet goes
//! through the real program (the embedded object, checked against the attached one by tag) with
//! BPF_PROG_TEST_RUN, against the live configuration maps and private copies of the state maps
//! (`dataplane::probe`), seeded with the live entries that concern the packet. The counters the
//! run counted, the conntrack and affinity entries it wrote (privately) and the packet it left
//! say what happened; the live maps are not written.

use std::net::SocketAddr;

use anyhow::Context as _;
use lb_common::{
    AffinityKey, CNT_AFFINITY_HIT, CNT_CT_HIT, CNT_CT_RESELECT, CNT_DROP_SOURCE_RANGE, CNT_HAIRPIN, CNT_NEW_FLOWS,
    CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_SNAT, CNT_VERDICT_DNAT, CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT,
    CNT_VERDICT_REVNAT, COUNTER_NAMES, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, CtKey, CtValue, MAGLEV_CHUNK, MaglevKey,
    SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SOURCE_RANGES, ServiceKey,
    ServiceValue, addr_words, maglev_flow_hash,
};
use serde::Serialize;

use super::{
    frame::{self, PROTO_TCP, PROTO_UDP},
    output::{Output, endpoint, flag_names, proto_name, render, service_name},
};
use crate::{
    dataplane::probe::{Probe, ProbeRun, attached_tag},
    maps::{MapState, addr16, pinned::PinnedMaps},
};

/// Where the packet enters the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum From {
    /// From a pod on this node (the TC program on its interface).
    Pod,
    /// From outside the node (the XDP program, or its TC fallback, on an external interface).
    External,
}

/// One packet to explain.
pub struct Request {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub from: From,
    pub iface: Option<String>,
    pub tcp_flags: u8,
}

impl Request {
    /// Parses `PROTO SRC [->] DST` (`tcp 10.244.0.12:40000 -> 10.96.0.10:80`).
    pub fn parse(words: &[String], from: From, iface: Option<String>, tcp_flags: &str) -> anyhow::Result<Self> {
        let words: Vec<&str> = words.iter().map(String::as_str).filter(|w| *w != "->").collect();
        let [proto, src, dst] = words[..] else {
            anyhow::bail!("give the packet as PROTO SRC -> DST, e.g. `lb explain tcp 10.244.0.12:40000 -> 10.96.0.10:80`");
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            other => anyhow::bail!("{other:?}: lb explain takes tcp or udp packets"),
        };
        let addr = |s: &str| s.parse::<SocketAddr>().with_context(|| format!("{s:?}: give ADDRESS:PORT (IPv6: [ADDRESS]:PORT)"));
        let (src, dst) = (addr(src)?, addr(dst)?);
        anyhow::ensure!(src.is_ipv4() == dst.is_ipv4(), "{src} and {dst} are of different families");
        let mut flags = 0;
        for f in tcp_flags.split(',').filter(|f| !f.is_empty()) {
            flags |= match f.to_ascii_lowercase().as_str() {
                "syn" => frame::TCP_SYN,
                "ack" => frame::TCP_ACK,
                "fin" => frame::TCP_FIN,
                "rst" => frame::TCP_RST,
                "psh" => frame::TCP_PSH,
                other => anyhow::bail!("{other:?}: TCP flags are syn, ack, fin, rst, psh (comma-separated)"),
            };
        }
        Ok(Self { proto, src, dst, from, iface, tcp_flags: flags })
    }
}

/// One step of the explanation.
#[derive(Serialize)]
pub struct Step {
    pub step: &'static str,
    pub result: String,
}

/// What the datapath did with the packet.
#[derive(Serialize)]
pub struct Explanation {
    /// The packet as it went in.
    pub packet: String,
    pub from: From,
    /// The program that ran.
    pub program: &'static str,
    /// Where that program is attached (`IFACE (KIND)`), if anywhere.
    pub attached: Option<String>,
    /// The program that ran is the code attached there (equal program tags); `None` when
    /// nothing is attached to compare with.
    pub same_code_as_attached: Option<bool>,
    /// The ServicePort of the frontend, when the packet was for one.
    pub service: Option<String>,
    /// `hit`, `reply`, `new` (entries written), `reselect` or `none`.
    pub conntrack: &'static str,
    /// `hit`, `miss` or `none` (the Service has no session affinity or none was looked at).
    pub affinity: &'static str,
    /// The Maglev slot the flow hashed to, for a new flow of a Maglev frontend.
    pub maglev_slot: Option<u32>,
    /// The backend the packet goes to (`ADDRESS:PORT`).
    pub backend: Option<String>,
    /// The source address and port the backend sees, when source-NATed.
    pub snat: Option<String>,
    /// `dnat`, `revnat`, `pass`, `drop` or `reject`.
    pub verdict: &'static str,
    /// The drop reason (a counter name, `drop_*`).
    pub drop_reason: Option<&'static str>,
    /// The program's return code (`XDP_PASS`, `TC_ACT_OK`, ...).
    pub return_code: String,
    /// The packet as the program left it.
    pub packet_out: Option<String>,
    /// Its checksums are valid.
    pub checksums_ok: Option<bool>,
    pub steps: Vec<Step>,
}

/// The link pins' kinds of each entry point.
const POD_KINDS: [&str; 1] = ["tc-pod"];
const EXTERNAL_KINDS: [&str; 3] = ["xdp-native", "xdp-generic", "tc-ext"];

/// Explains `req` against the agent whose pins `maps` opened.
pub fn explain(maps: &PinnedMaps, req: &Request) -> anyhow::Result<Explanation> {
    let attachments = maps.attachments();
    let kinds: &[&str] = if req.from == From::Pod { &POD_KINDS } else { &EXTERNAL_KINDS };
    let attachment = attachments
        .iter()
        .find(|(what, kind)| kinds.contains(&kind.as_str()) && req.iface.as_ref().is_none_or(|i| i == what))
        .cloned();
    if let (Some(iface), None) = (&req.iface, &attachment) {
        let here: Vec<String> = attachments.iter().filter(|(w, _)| w == iface).map(|(_, k)| k.clone()).collect();
        anyhow::bail!(
            "interface {iface} has no {} attachment of the agent (it has: {}); `lb status` lists the attachments",
            if req.from == From::Pod { "pod" } else { "external" },
            if here.is_empty() { "none".to_owned() } else { here.join(", ") }
        );
    }
    let program = match (req.from, attachment.as_ref().map(|(_, k)| k.as_str())) {
        (From::Pod, _) => lb_common::PROG_TC_POD,
        (From::External, Some("tc-ext")) => lb_common::PROG_TC_EXT,
        (From::External, _) => lb_common::PROG_XDP_EXT,
    };

    let st = maps.state()?;
    let (src, dst) = (addr16(req.src.ip()), addr16(req.dst.ip()));
    let (sport_be, dport_be) = (req.src.port().to_be(), req.dst.port().to_be());
    let key = |s: [u8; 16], sp: u16, d: [u8; 16], dp: u16, dir: u8| CtKey {
        src: s,
        dst: d,
        sport_be: sp,
        dport_be: dp,
        proto: req.proto,
        dir,
        _pad: [0; 2],
    };
    let fwd_key = key(src, sport_be, dst, dport_be, CT_DIR_FORWARD);
    let reply_key = key(src, sport_be, dst, dport_be, CT_DIR_REPLY);

    // The live entries that concern the packet: its forward entry (and that flow's reply entry,
    // which a SYN checks), a reply entry when it is a backend's reply, its client's affinity
    // record for the frontend.
    let mut seeds: Vec<(CtKey, CtValue)> = Vec::new();
    let fwd_live = maps.conntrack_entry(&fwd_key)?;
    if let Some(v) = fwd_live {
        seeds.push((fwd_key, v));
        let snat = v.flags & CT_F_SNAT != 0;
        let (peer, peer_port) = if snat { (v.snat_addr, v.snat_port_be) } else { (src, sport_be) };
        let k = key(v.nat_addr, v.nat_port_be, peer, peer_port, CT_DIR_REPLY);
        if let Some(r) = maps.conntrack_entry(&k)? {
            seeds.push((k, r));
        }
    }
    if let Some(v) = maps.conntrack_entry(&reply_key)? {
        seeds.push((reply_key, v));
    }
    let frontend = st
        .services
        .get(&ServiceKey { addr: dst, port_be: dport_be, proto: req.proto, _pad: 0 })
        .filter(|v| v.flags & SVC_F_ADDR_MARKER == 0)
        .copied();
    let mut affinity_seed = Vec::new();
    if let Some(f) = frontend.filter(|f| f.flags & SVC_F_AFFINITY != 0) {
        let k = AffinityKey { client: src, svc_id: f.svc_id };
        if let Some(v) = maps.affinity_record(&k)? {
            affinity_seed.push((k, v));
        }
    }

    let mut probe = Probe::load(maps.pin_path(), program).context("loading the datapath privately for the explanation")?;
    probe.seed_conntrack(&seeds)?;
    probe.seed_affinity(&affinity_seed)?;
    let tag = probe.tag()?;
    let attached_tag =
        attachment.as_ref().and_then(|(what, kind)| attached_tag(&maps.pin_path().join(format!("link_{what}_{kind}"))));
    let frame = frame::build(req.proto, req.src, req.dst, req.tcp_flags);
    let run = probe.run(&frame)?;
    drop(probe);

    let ctx = Context { req, program, frame: &frame, st: &st, frontend, seeds: &seeds, fwd_key, run: &run };
    let mut ex = ctx.interpret();
    ex.attached = attachment.as_ref().map(|(what, kind)| format!("{what} ({kind})"));
    ex.same_code_as_attached = attached_tag.map(|t| t == tag);
    let program_step = match (&ex.attached, ex.same_code_as_attached) {
        (Some(at), Some(true)) => format!("{program}, the code attached at {at} (tag {tag:016x})"),
        (Some(at), _) => format!(
            "{program} of this lb build (tag {tag:016x}); the program attached at {at} is other code: run the lb binary the agent runs"
        ),
        (None, _) => format!("{program} (tag {tag:016x}); not attached anywhere on this node"),
    };
    ex.steps.insert(0, Step { step: "program", result: program_step });
    Ok(ex)
}

/// What the interpretation of a run needs.
struct Context<'a> {
    req: &'a Request,
    program: &'static str,
    /// The packet as it went in.
    frame: &'a [u8],
    st: &'a MapState,
    frontend: Option<ServiceValue>,
    seeds: &'a [(CtKey, CtValue)],
    fwd_key: CtKey,
    run: &'a ProbeRun,
}

impl Context<'_> {
    fn has(&self, counter: u32) -> bool {
        self.run.counters.get(counter as usize).is_some_and(|c| *c > 0)
    }

    fn backend_text(&self, id: u32) -> String {
        self.st
            .backends
            .get(&id)
            .map_or_else(|| format!("backend {id}"), |b| format!("{} (backend {id})", endpoint(b.addr, b.port_be)))
    }

    fn interpret(&self) -> Explanation {
        let req = self.req;
        let from = if req.from == From::Pod { "from a pod on this node" } else { "from outside the node" };
        let packet = frame::read(self.frame).map(|s| s.describe()).unwrap_or_default();
        let mut steps = vec![Step { step: "packet", result: format!("{packet}, {from}") }];
        let mut ex = Explanation {
            packet,
            from: req.from,
            program: self.program,
            attached: None,
            same_code_as_attached: None,
            service: None,
            conntrack: "none",
            affinity: "none",
            maglev_slot: None,
            backend: None,
            snat: None,
            verdict: "pass",
            drop_reason: None,
            return_code: String::new(),
            packet_out: None,
            checksums_ok: None,
            steps: Vec::new(),
        };
        let fwd_seed = self.seeds.iter().find(|(k, _)| *k == self.fwd_key).map(|(_, v)| *v);
        // The forward entry the run wrote (a new flow), if any.
        let written = self.run.conntrack.iter().find(|(k, v)| *k == self.fwd_key && Some(*v) != fwd_seed).map(|(_, v)| *v);

        // Conntrack.
        let reverse = self.has(CNT_VERDICT_REVNAT) && !self.has(CNT_CT_HIT);
        if self.has(CNT_CT_HIT) {
            ex.conntrack = "hit";
            if let Some(v) = fwd_seed {
                ex.backend = Some(endpoint(v.nat_addr, v.nat_port_be));
                ex.service = Some(service_name(self.st, v.svc_id));
                ex.snat = (v.flags & CT_F_SNAT != 0).then(|| endpoint(v.snat_addr, v.snat_port_be));
                steps.push(Step {
                    step: "conntrack",
                    result: format!(
                        "hit: an established flow of {} keeps its backend {}{} (frontend and selection are not looked at)",
                        service_name(self.st, v.svc_id),
                        self.backend_text(v.backend_id),
                        ex.snat.as_ref().map(|s| format!(", source NAT to {s}")).unwrap_or_default()
                    ),
                });
            }
        } else if reverse {
            ex.conntrack = "reply";
            let v = self.seeds.iter().find(|(k, _)| k.dir == CT_DIR_REPLY && k.src == addr16(req.src.ip())).map(|(_, v)| *v);
            steps.push(Step {
                step: "conntrack",
                result: match v {
                    Some(v) => format!(
                        "the reply of a translated flow of {}: translated back to come from {}",
                        service_name(self.st, v.svc_id),
                        endpoint(v.nat_addr, v.nat_port_be)
                    ),
                    None => "the reply of a translated flow: translated back".to_owned(),
                },
            });
        } else if self.has(CNT_CT_RESELECT) {
            ex.conntrack = "reselect";
            steps.push(Step {
                step: "conntrack",
                result: "the flow's entry no longer holds (its backend left the ServicePort, point 57, or a SYN finds its reply entry gone): a backend is selected anew".to_owned(),
            });
        } else if fwd_seed.is_some() {
            steps.push(Step {
                step: "conntrack",
                result: "the flow's entry has expired, or is closing and a SYN reuses its 4-tuple: a new flow".to_owned(),
            });
        } else {
            steps.push(Step { step: "conntrack", result: "no entry for this 4-tuple: a new flow".to_owned() });
        }

        if !self.has(CNT_CT_HIT) && !reverse {
            self.new_flow(&mut ex, &mut steps, written);
        }
        self.verdict(&mut ex, &mut steps);
        steps.push(Step {
            step: "live maps",
            result: "untouched: conntrack, affinity and counters were written only in the explanation's private copies"
                .to_owned(),
        });
        ex.steps = steps;
        ex
    }

    /// Frontend, source ranges, endpoint set, affinity, selection, entries, SNAT.
    fn new_flow(&self, ex: &mut Explanation, steps: &mut Vec<Step>, written: Option<CtValue>) {
        let req = self.req;
        let Some(f) = self.frontend else {
            let marker = self.st.services.contains_key(&ServiceKey { addr: addr16(req.dst.ip()), port_be: 0, proto: 0, _pad: 0 });
            steps.push(Step {
                step: "frontend",
                result: if marker {
                    format!(
                        "none on {}/{}, an address of a Service: dropped, never passed untranslated",
                        req.dst,
                        proto_name(req.proto)
                    )
                } else {
                    format!("none: {}/{} is no Service's frontend on this node", req.dst, proto_name(req.proto))
                },
            });
            return;
        };
        let name = service_name(self.st, f.svc_id);
        ex.service = Some(name.clone());
        let flags = flag_names(f.flags);
        steps.push(Step {
            step: "frontend",
            result: format!(
                "{}/{} → {name} (svc {}{})",
                req.dst,
                proto_name(req.proto),
                f.svc_id,
                if flags.is_empty() { String::new() } else { format!("; {}", flags.join(", ")) }
            ),
        });
        if f.flags & SVC_F_SOURCE_RANGES != 0 {
            let denied = self.has(CNT_DROP_SOURCE_RANGE);
            steps.push(Step {
                step: "source ranges",
                result: if denied {
                    format!("{} is outside loadBalancerSourceRanges: dropped (point 48)", req.src.ip())
                } else {
                    format!("{} is inside loadBalancerSourceRanges (point 48)", req.src.ip())
                },
            });
            if denied {
                return;
            }
        }

        // The endpoint set (the datapath's `select::endpoint_set`).
        let cluster_for_node = req.from == From::Pod && f.flags & SVC_F_EXTERNAL != 0;
        let (select_id, slots, why) = if cluster_for_node {
            (
                f.cluster_select_id,
                f.cluster_slot_count,
                "the Cluster set: traffic from this node gets it whatever the external policy (point 34)",
            )
        } else if f.flags & SVC_F_EXTERNAL != 0 {
            (f.select_id, f.slot_count, "the set of the externalTrafficPolicy (points 30, 32, 33)")
        } else {
            (f.select_id, f.slot_count, "the set of the internalTrafficPolicy (points 30, 35)")
        };
        let members: Vec<_> = self.st.table_backends(select_id).into_iter().filter_map(|id| self.st.backends.get(&id)).collect();
        let local = members.iter().filter(|b| b.flags & lb_common::BACKEND_F_LOCAL != 0).count();
        let terminating = members.iter().filter(|b| b.flags & lb_common::BACKEND_F_TERMINATING != 0).count();
        let mut set = format!("{why}: {} endpoint(s), {local} on this node", members.len());
        if terminating > 0 && terminating == members.len() {
            set.push_str(", all terminating: the serving-terminating fallback (point 19)");
        } else if terminating > 0 {
            set.push_str(&format!(", {terminating} terminating"));
        }
        if slots == 0 {
            let drop = f.flags & SVC_F_DROP_IF_EMPTY != 0 && !cluster_for_node;
            set.push_str(if drop {
                "; none usable under a Local policy: dropped (point 38)"
            } else {
                "; none usable anywhere: refused with a TCP RST or ICMP port unreachable (point 37)"
            });
        }
        steps.push(Step { step: "endpoints", result: set });
        if slots == 0 {
            return;
        }

        let affinity_hit = self.has(CNT_AFFINITY_HIT);
        if f.flags & SVC_F_AFFINITY != 0 {
            ex.affinity = if affinity_hit { "hit" } else { "miss" };
            steps.push(Step {
                step: "affinity",
                result: if affinity_hit {
                    format!(
                        "hit: {} is remembered on {} (sliding expiry {} s, points 24-27)",
                        req.src.ip(),
                        written.map(|w| self.backend_text(w.backend_id)).unwrap_or_default(),
                        f.affinity_timeout_s
                    )
                } else {
                    format!(
                        "miss: no fresh record for {} in this set; the backend chosen now is remembered for {} s",
                        req.src.ip(),
                        f.affinity_timeout_s
                    )
                },
            });
        }
        let Some(w) = written else {
            return;
        };
        ex.backend = Some(endpoint(w.nat_addr, w.nat_port_be));
        if !affinity_hit {
            if f.flags & SVC_F_MAGLEV != 0 {
                let (s, d) = (addr_words(&addr16(req.src.ip())), addr_words(&addr16(req.dst.ip())));
                let hash = maglev_flow_hash(s, d, req.src.port().to_be(), req.dst.port().to_be(), req.proto);
                let slot = hash % slots;
                ex.maglev_slot = Some(slot);
                let table = self
                    .st
                    .maglev
                    .get(&MaglevKey { select_id, chunk: slot / MAGLEV_CHUNK })
                    .map(|c| c.id((slot % MAGLEV_CHUNK) as usize));
                let check = if table == Some(w.backend_id) { "" } else { " (the table changed meanwhile?)" };
                steps.push(Step {
                    step: "selection",
                    result: format!(
                        "Maglev: flow hash {hash:#010x}, slot {slot} of {slots} → {}{check}",
                        self.backend_text(w.backend_id)
                    ),
                });
            } else {
                steps.push(Step {
                    step: "selection",
                    result: format!("random slot of {slots} → {} (each new flow draws again)", self.backend_text(w.backend_id)),
                });
            }
        }
        if self.has(CNT_NEW_FLOWS) {
            steps.push(Step { step: "conntrack", result: "forward and reply entries written (in the private copy)".to_owned() });
            ex.conntrack = "new";
        }
        let snat = w.flags & CT_F_SNAT != 0;
        if snat {
            ex.snat = Some(endpoint(w.snat_addr, w.snat_port_be));
        }
        let snat_step = if self.has(CNT_SNAT) {
            format!(
                "source NAT to {} (traffic from outside to a frontend of policy Cluster, or to a ClusterIP: points 31, 32); the port is the flow's hash in the SNAT range (IPv4), or drawn from it",
                endpoint(w.snat_addr, w.snat_port_be)
            )
        } else if self.has(CNT_HAIRPIN) {
            format!("hairpin: source NAT to {} (a pod reaching itself, point 51)", endpoint(w.snat_addr, w.snat_port_be))
        } else {
            "none: the backend sees the client's own address (points 31, 33)".to_owned()
        };
        steps.push(Step { step: "snat", result: snat_step });
    }

    fn verdict(&self, ex: &mut Explanation, steps: &mut Vec<Step>) {
        let run = self.run;
        let out = frame::read(&run.packet);
        ex.return_code = return_code(run.ret, self.program == lb_common::PROG_XDP_EXT);
        let reason = (0..COUNTER_NAMES.len())
            .find(|&i| self.has(i as u32) && COUNTER_NAMES[i].starts_with("drop_"))
            .map(|i| COUNTER_NAMES[i]);
        let (verdict, text) = if self.has(CNT_VERDICT_DNAT) {
            ("dnat", "translated to the backend".to_owned())
        } else if self.has(CNT_VERDICT_REVNAT) {
            ("revnat", "translated back (reverse NAT)".to_owned())
        } else if self.has(CNT_VERDICT_REJECT) {
            let how = if self.has(CNT_REJECT_TCP) {
                "a TCP RST"
            } else if self.has(CNT_REJECT_ICMP) {
                "an ICMP port unreachable"
            } else {
                "an answer"
            };
            ("reject", format!("refused: {how} goes back to the client"))
        } else if self.has(CNT_VERDICT_DROP) {
            ex.drop_reason = reason;
            ("drop", format!("dropped ({})", reason.unwrap_or("no reason counted")))
        } else if self.has(CNT_VERDICT_PASS) {
            let why = (0..COUNTER_NAMES.len())
                .find(|&i| self.has(i as u32) && COUNTER_NAMES[i].starts_with("pass_"))
                .map(|i| format!(" ({})", COUNTER_NAMES[i]))
                .unwrap_or_default();
            ("pass", format!("passed untouched{why}"))
        } else {
            ("pass", "no verdict counted".to_owned())
        };
        ex.verdict = verdict;
        let mut result = format!("{text}, {}", ex.return_code);
        if verdict != "drop"
            && let Some(o) = &out
        {
            result.push_str(&format!(
                "; leaves as {} (checksums {})",
                o.describe(),
                if o.checksums_ok { "valid" } else { "INVALID" }
            ));
            ex.packet_out = Some(o.describe());
            ex.checksums_ok = Some(o.checksums_ok);
        }
        steps.push(Step { step: "verdict", result });
    }
}

/// The name of a program's return code.
fn return_code(ret: u32, xdp: bool) -> String {
    let name = if xdp {
        match ret {
            0 => "XDP_ABORTED",
            1 => "XDP_DROP",
            2 => "XDP_PASS",
            3 => "XDP_TX",
            4 => "XDP_REDIRECT",
            _ => "",
        }
    } else {
        match ret as i32 {
            0 => "TC_ACT_OK",
            2 => "TC_ACT_SHOT",
            7 => "TC_ACT_REDIRECT",
            -1 => "TC_ACT_UNSPEC",
            _ => "",
        }
    };
    if name.is_empty() { ret.to_string() } else { name.to_owned() }
}

/// Prints an explanation.
pub fn render_explanation(ex: &Explanation, output: Output) -> String {
    match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(ex).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => {
            render(&["STEP", "WHAT THE DATAPATH DID"], ex.steps.iter().map(|s| vec![s.step.to_owned(), s.result.clone()]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn packets_parse_with_or_without_the_arrow() {
        let r = Request::parse(&words("tcp 10.244.0.12:40000 -> 10.96.0.10:80"), From::Pod, None, "syn").unwrap();
        assert_eq!(
            (r.proto, r.src.port(), r.dst.to_string(), r.tcp_flags),
            (PROTO_TCP, 40000, "10.96.0.10:80".into(), frame::TCP_SYN)
        );
        let r = Request::parse(&words("UDP [fd00::1]:5353 [fd00:96::a]:53"), From::External, None, "").unwrap();
        assert_eq!((r.proto, r.dst.port()), (PROTO_UDP, 53));
        let r = Request::parse(&words("tcp 10.0.0.1:1 -> 10.0.0.2:2"), From::Pod, None, "ack,psh").unwrap();
        assert_eq!(r.tcp_flags, frame::TCP_ACK | frame::TCP_PSH);
    }

    /// Bad input is refused with what to give instead.
    #[test]
    fn bad_packets_say_what_is_expected() {
        let err = |s: &str, flags: &str| Request::parse(&words(s), From::Pod, None, flags).err().unwrap().to_string();
        assert!(err("icmp 10.0.0.1:1 -> 10.0.0.2:2", "syn").contains("tcp or udp"));
        assert!(err("tcp 10.0.0.1 -> 10.0.0.2:2", "syn").contains("ADDRESS:PORT"));
        assert!(err("tcp 10.0.0.1:1 -> [fd00::1]:2", "syn").contains("different families"));
        assert!(err("tcp 10.0.0.1:1 ->", "syn").contains("PROTO SRC -> DST"));
        assert!(err("tcp 10.0.0.1:1 -> 10.0.0.2:2", "syn,urg").contains("syn, ack, fin, rst, psh"));
    }

    #[test]
    fn return_codes_are_named_for_their_hook() {
        assert_eq!(return_code(2, true), "XDP_PASS");
        assert_eq!(return_code(3, true), "XDP_TX");
        assert_eq!(return_code(0, false), "TC_ACT_OK");
        assert_eq!(return_code(7, false), "TC_ACT_REDIRECT");
        assert_eq!(return_code(42, false), "42");
    }
}
