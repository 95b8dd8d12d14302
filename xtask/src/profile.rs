//! `cargo xtask profile`: where a B1 case's time goes, as a sampled profile of the JIT image.
//!
//! The B1 bench runs under `perf record -e cpu-clock -g` (a timer, so it works on machines
//! without a hardware PMU). While it runs, this reads the line table of every loaded lb program
//! (`BPF_OBJ_GET_INFO_BY_FD`: each source line's address in the JIT image, and the BTF strings
//! that name it). Each sample whose stack passes through an lb program is then charged to its
//! innermost frame: a source line of the datapath, or the kernel function it called (a map
//! lookup's hash, an LRU insert, a helper). The bench prints each case's lines when the case
//! is done, so a sample belongs to the case whose lines came next: an earlier commit's bench,
//! which cannot select cases, is profiled whole and split the same way.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::root;

#[derive(clap::Args)]
pub struct Args {
    /// B1 cases to profile, comma-separated.
    #[arg(long, default_value = "pass_non_service,ct_hit,reply_revnat,nodeport_snat_ct_hit,new_flow,nodeport_snat_new_flow")]
    cases: String,
    /// Also profile commit REV's datapath (its own B1 bench, built from an export of REV).
    #[arg(long, value_name = "REV")]
    against: Option<String>,
    /// Samples per second.
    #[arg(long, default_value_t = 10_000)]
    freq: u32,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    if !Command::new("perf").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        println!("profile: installing perf (apt package linux-perf)");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "linux-perf"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("perf is missing and `apt-get install linux-perf` failed");
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let out_dir = target.join("bench-out").join("profile");
    std::fs::create_dir_all(&out_dir)?;
    let cases: Vec<String> = args.cases.split(',').map(str::to_owned).collect();
    let mut builds = vec![("this tree".to_owned(), crate::against::bench_exe(&root(), None)?)];
    if let Some(rev) = &args.against {
        let old = crate::against::build_old(rev, &target)?;
        builds.push((format!("{} ({})", old.rev, old.sha), old.exe));
    }
    let mut report = String::new();
    let mut command = format!("cargo xtask profile --cases {}", args.cases);
    if let Some(rev) = &args.against {
        let _ = write!(command, " --against {rev}");
    }
    let _ = writeln!(report, "# B1 profiles\n\nCommand: `{command}` · {}\n", crate::bench::now_utc());
    let _ = writeln!(
        report,
        "Each table: the samples whose stack passes through an lb program while the case ran (`perf record -e cpu-clock -F {} -g`), \
         charged to their innermost frame; ns is the share times the case's median over its service counts. \
         Sampling skids: a few percent move to the next instruction or out of a function that re-enables interrupts.\n",
        args.freq
    );
    let mut profiles = Vec::new();
    for (i, (who, exe)) in builds.iter().enumerate() {
        println!("profile: {who}: {}", exe.display());
        profiles.push(profile_one(exe, &cases, args.freq, &out_dir.join(format!("b1-{i}")))?);
    }
    for case in &cases {
        let _ = writeln!(report, "## {case}\n");
        for ((who, _), p) in builds.iter().zip(&profiles) {
            let Some(c) = p.get(case) else {
                let _ = writeln!(report, "{who}: no samples (the case did not run)\n");
                continue;
            };
            let _ = writeln!(report, "{who}: {:.0} ns per packet, {} samples in lb\n", c.ns, c.total);
            let mut files: HashMap<String, u64> = HashMap::new();
            for (place, n) in &c.by_place {
                *files.entry(file_of(place)).or_default() += n;
            }
            let mut files: Vec<(String, u64)> = files.into_iter().collect();
            files.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let _ = writeln!(report, "| by file or kernel function | share | ns |\n| --- | ---: | ---: |");
            for (file, n) in &files {
                let share = *n as f64 / c.total.max(1) as f64;
                let _ = writeln!(report, "| {file} | {:.1} % | {:.1} |", 100.0 * share, share * c.ns);
            }
            let _ = writeln!(report);
            let _ = writeln!(report, "| by source line | share | ns |\n| --- | ---: | ---: |");
            let mut rows: Vec<(&String, &u64)> = c.by_place.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (place, n) in rows.iter().take(14) {
                let share = **n as f64 / c.total.max(1) as f64;
                let _ = writeln!(report, "| {place} | {:.1} % | {:.1} |", 100.0 * share, share * c.ns);
            }
            let rest: u64 = rows.iter().skip(14).map(|r| *r.1).sum();
            if rest > 0 {
                let share = rest as f64 / c.total.max(1) as f64;
                let _ =
                    writeln!(report, "| the rest ({} places) | {:.1} % | {:.1} |", rows.len() - 14, 100.0 * share, share * c.ns);
            }
            let _ = writeln!(report);
        }
    }
    let path = root().join("bench-results").join("b1-profile.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    println!("profile: written to {}", path.display());
    Ok(())
}

/// One case's samples.
#[derive(Default)]
struct CaseProfile {
    total: u64,
    by_place: HashMap<String, u64>,
    /// The case's median ns per packet, averaged over its service counts.
    ns: f64,
}

/// The time a case ran (CLOCK_MONOTONIC seconds) and the ns of its result lines.
struct Window {
    case: String,
    from: f64,
    to: f64,
    ns: Vec<f64>,
}

/// Runs one B1 bench under perf; per case, where its lb samples are.
fn profile_one(exe: &Path, cases: &[String], freq: u32, stem: &Path) -> anyhow::Result<HashMap<String, CaseProfile>> {
    let data = stem.with_extension("perf");
    let mut child = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-g", "-k", "CLOCK_MONOTONIC"])
        .arg("-F")
        .arg(freq.to_string())
        .arg("-o")
        .arg(&data)
        .arg("--")
        .arg(exe)
        .arg("--bench")
        .arg("--out")
        .arg(stem.with_extension("json"))
        .env("LB_B1_CASES", cases.join(","))
        .stdout(Stdio::piped())
        .spawn()
        .context("running perf record")?;
    let stdout = child.stdout.take().context("perf's stdout")?;
    // The line tables of the lb programs, gathered while the bench runs (a thread polls: the
    // bench loads its programs one datapath after another).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut tables = JitTables::default();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tables.read_loaded();
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            tables
        })
    };
    // Each case line with the time it arrived (the clock perf stamps samples with).
    let mut lines: Vec<(f64, String, f64)> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((case, ns)) = case_line(&line) {
            lines.push((monotonic_s(), case, ns));
        }
    }
    let status = child.wait()?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let tables = poller.join().map_err(|_| anyhow::anyhow!("the line-table reader panicked"))?;
    if !status.success() {
        bail!("the profiled bench failed");
    }
    if tables.funcs.is_empty() {
        bail!("no lb program was found loaded while the bench ran");
    }
    // Case windows: from the previous case's last line to this case's last line.
    let mut windows: Vec<Window> = Vec::new();
    for (t, case, ns) in lines {
        match windows.last_mut() {
            Some(w) if w.case == case => {
                w.to = t;
                w.ns.push(ns);
            }
            _ => {
                let from = windows.last().map_or(0.0, |w| w.to);
                windows.push(Window { case, from, to: t, ns: vec![ns] });
            }
        }
    }
    let script =
        Command::new("perf").args(["script", "-i"]).arg(&data).stderr(Stdio::null()).output().context("running perf script")?;
    if !script.status.success() {
        bail!("perf script failed");
    }
    let mut out: HashMap<String, CaseProfile> = HashMap::new();
    for w in windows.iter().filter(|w| cases.contains(&w.case)) {
        out.entry(w.case.clone()).or_default().ns = w.ns.iter().sum::<f64>() / w.ns.len() as f64;
    }
    for sample in String::from_utf8_lossy(&script.stdout).split("\n\n") {
        let mut it = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(time) = it.next().and_then(sample_time) else { continue };
        let frames: Vec<(&str, u64)> = it.filter_map(frame).collect();
        if !frames.iter().any(|(sym, _)| is_lb_entry(sym)) {
            continue;
        }
        let Some(w) = windows.iter().find(|w| time > w.from && time <= w.to) else { continue };
        let Some(p) = out.get_mut(&w.case) else { continue };
        p.total += 1;
        *p.by_place.entry(place(&frames, &tables)).or_default() += 1;
    }
    Ok(out)
}

/// The file part of a place ("lb parse.rs:143 `...`" → "lb parse.rs"; library lines together).
fn file_of(place: &str) -> String {
    if place.starts_with("lb, inlined from ") {
        return "lb, inlined library code (core, aya)".to_owned();
    }
    match place.strip_prefix("lb ") {
        Some(rest) => format!("lb {}", rest.split(':').next().unwrap_or_default()),
        None => place.to_owned(),
    }
}

/// `(case, ns)` of a bench result line ("  ct_hit   3 services   61.0 ns/pkt (median, ...").
fn case_line(line: &str) -> Option<(String, f64)> {
    let (head, _) = line.split_once(" ns/pkt")?;
    let case = head.split_whitespace().next()?.to_owned();
    let ns = head.split_whitespace().last()?.parse().ok()?;
    Some((case, ns))
}

/// The time of a `perf script` sample header ("comm pid [cpu] 123.456789: 250000 cpu-clock:").
fn sample_time(header: &str) -> Option<f64> {
    header.split_whitespace().find_map(|t| t.strip_suffix(':').and_then(|t| t.parse().ok()))
}

/// A call-chain line ("ffffffffc0026d9c bpf_prog_<tag>_<name>+0x1c (...)"): symbol and offset.
fn frame(line: &str) -> Option<(&str, u64)> {
    let mut t = line.split_whitespace();
    let _addr = t.next()?;
    let sym = t.next()?;
    Some(match sym.split_once("+0x") {
        Some((s, off)) => (s, u64::from_str_radix(off, 16).unwrap_or(0)),
        None => (sym, 0),
    })
}

/// An lb entry program's frame (the tail-called program of the bench's wrapper).
fn is_lb_entry(sym: &str) -> bool {
    sym.starts_with("bpf_prog_") && (sym.contains("_lb_tc_") || sym.contains("_lb_xdp_"))
}

/// Where a sample goes: the innermost frame's source line in the datapath, or its kernel
/// function's group.
fn place(frames: &[(&str, u64)], tables: &JitTables) -> String {
    let Some(&(sym, off)) = frames.first() else { return "?".to_owned() };
    if let Some(rest) = sym.strip_prefix("bpf_prog_") {
        let tag = rest.split('_').next().unwrap_or_default();
        return match tables.line(tag, off) {
            Some(l) if l.file.contains("lb-ebpf/src/") => {
                format!("lb {}:{} `{}`", l.file.rsplit('/').next().unwrap_or_default(), l.line, l.text.replace('|', "\\|"))
            }
            Some(l) => format!(
                "lb, inlined from {}:{} `{}`",
                l.file.rsplit('/').next().unwrap_or_default(),
                l.line,
                l.text.replace('|', "\\|")
            ),
            None => format!("{sym} (no line table)"),
        };
    }
    let group = match sym {
        "htab_map_hash" | "lookup_nulls_elem_raw" | "lookup_elem_raw" | "__htab_map_lookup_elem" | "memcmp" => {
            "kernel: hash map lookup (hash, bucket walk, key compare)"
        }
        s if s.starts_with("htab_lru_") || s.contains("bpf_lru") || s.contains("lru_pop") || s.contains("htab_lock_bucket") => {
            "kernel: LRU map insert or delete (free list, bucket lock)"
        }
        s if s.contains("spin_") || s.contains("htab_unlock_bucket") => {
            "kernel: LRU map insert or delete (free list, bucket lock)"
        }
        "__pi_memcpy" | "memcpy" | "__memcpy" => "kernel: memcpy (map value and key copies)",
        s if s.contains("return_thunk") || s.contains("indirect_thunk") => "kernel: return and call thunks (CPU mitigations)",
        s if s.contains("prandom") || s.contains("rnd_u32") => "kernel: bpf_get_prandom_u32",
        s => return format!("kernel: {s}"),
    };
    group.to_owned()
}

/// A source line of the JIT image.
struct Line {
    off: u64,
    file: String,
    line: u32,
    text: String,
}

/// Per function (by the tag in its symbol name), its lines ordered by offset.
#[derive(Default)]
struct JitTables {
    funcs: HashMap<String, Vec<Line>>,
}

impl JitTables {
    fn line(&self, tag: &str, off: u64) -> Option<&Line> {
        let v = self.funcs.get(tag)?;
        let i = v.partition_point(|l| l.off <= off);
        i.checked_sub(1).map(|i| &v[i])
    }

    /// Adds the line tables of every loaded program named `lb_tc_*` or `lb_xdp_*` whose tag is
    /// not known yet.
    fn read_loaded(&mut self) {
        let mut id = 0u32;
        loop {
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&id.to_ne_bytes());
            if bpf(BPF_PROG_GET_NEXT_ID, &mut attr).is_err() {
                break;
            }
            id = u32::from_ne_bytes(attr[4..8].try_into().unwrap_or_default());
            let Ok(fd) = Fd::prog(id) else { continue };
            let Ok(info) = prog_info(&fd) else { continue };
            let name = String::from_utf8_lossy(&info[64..80]).trim_end_matches('\0').to_owned();
            let tag: String = info[8..16].iter().map(|b| format!("{b:02x}")).collect();
            if !(name.starts_with("lb_tc_") || name.starts_with("lb_xdp_")) || self.funcs.contains_key(&tag) {
                continue;
            }
            if let Ok(funcs) = line_table(&fd, &info) {
                self.funcs.extend(funcs);
            }
        }
    }
}

const BPF_PROG_GET_NEXT_ID: u32 = 11;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_BTF_GET_FD_BY_ID: u32 = 19;
/// `sizeof(struct bpf_prog_info)` in the uapi of kernel 6.x.
const PROG_INFO_LEN: usize = 232;

fn bpf(cmd: u32, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: the bpf syscall reads and writes at most the 128 bytes of `attr`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as i32) }
}

/// An owned file descriptor of a BPF object.
struct Fd(std::os::fd::OwnedFd);

impl Fd {
    fn by_id(cmd: u32, id: u32) -> std::io::Result<Self> {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(cmd, &mut attr)?;
        // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn prog(id: u32) -> std::io::Result<Self> {
        Self::by_id(BPF_PROG_GET_FD_BY_ID, id)
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (pointer fields filled in by the caller).
fn obj_info(fd: &Fd, info: &mut [u8]) -> std::io::Result<()> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd.0) as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// The fixed part of a program's `struct bpf_prog_info` (counts and sizes, no arrays).
fn prog_info(fd: &Fd) -> std::io::Result<Vec<u8>> {
    let mut info = vec![0u8; PROG_INFO_LEN];
    obj_info(fd, &mut info)?;
    Ok(info)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A program's lines per function tag: `struct bpf_prog_info`'s function addresses and lengths,
/// tags, line records with their JIT addresses, and the BTF string table they point into.
fn line_table(fd: &Fd, first: &[u8]) -> std::io::Result<HashMap<String, Vec<Line>>> {
    let nfuncs = u32_at(first, 104) as usize;
    let nlines = u32_at(first, 148) as usize;
    let njlines = u32_at(first, 168) as usize;
    let (line_rec, jline_rec) = (u32_at(first, 172) as usize, u32_at(first, 176) as usize);
    let ntags = u32_at(first, 180) as usize;
    let btf_id = u32_at(first, 128);
    if nlines == 0 || nlines != njlines || line_rec < 16 || jline_rec != 8 {
        return Err(std::io::Error::other("no line info"));
    }
    let mut ksyms = vec![0u8; nfuncs * 8];
    let mut lens = vec![0u8; nfuncs * 4];
    let mut lines = vec![0u8; nlines * line_rec];
    let mut jlines = vec![0u8; njlines * jline_rec];
    let mut tags = vec![0u8; ntags * 8];
    let mut info = vec![0u8; PROG_INFO_LEN];
    put_u32(&mut info, 104, nfuncs as u32);
    put_u32(&mut info, 108, nfuncs as u32);
    put_u64(&mut info, 112, ksyms.as_mut_ptr() as u64);
    put_u64(&mut info, 120, lens.as_mut_ptr() as u64);
    put_u32(&mut info, 148, nlines as u32);
    put_u64(&mut info, 152, lines.as_mut_ptr() as u64);
    put_u64(&mut info, 160, jlines.as_mut_ptr() as u64);
    put_u32(&mut info, 168, njlines as u32);
    put_u32(&mut info, 172, line_rec as u32);
    put_u32(&mut info, 176, jline_rec as u32);
    put_u32(&mut info, 180, ntags as u32);
    put_u64(&mut info, 184, tags.as_mut_ptr() as u64);
    obj_info(fd, &mut info)?;
    let strings = btf_strings(btf_id)?;
    let string = |off: u32| -> String {
        let s = strings.get(off as usize..).unwrap_or_default();
        String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]).into_owned()
    };
    let funcs: Vec<(u64, u64, String)> = (0..nfuncs.min(ntags))
        .map(|i| {
            let tag: String = tags[i * 8..i * 8 + 8].iter().map(|b| format!("{b:02x}")).collect();
            (u64_at(&ksyms, i * 8), u64::from(u32_at(&lens, i * 4)), tag)
        })
        .collect();
    let mut out: HashMap<String, Vec<Line>> = HashMap::new();
    for i in 0..nlines {
        let rec = &lines[i * line_rec..];
        let addr = u64_at(&jlines, i * 8);
        let Some((start, _, tag)) = funcs.iter().find(|(s, len, _)| *s <= addr && addr < s + len) else { continue };
        out.entry(tag.clone()).or_default().push(Line {
            off: addr - start,
            file: string(u32_at(rec, 4)),
            line: u32_at(rec, 12) >> 10,
            text: string(u32_at(rec, 8)).trim().chars().take(90).collect(),
        });
    }
    for v in out.values_mut() {
        v.sort_by_key(|l| l.off);
    }
    // The main function's symbol carries the program's tag, not its own function tag.
    if let Some((_, _, main_tag)) = funcs.first() {
        let prog_tag: String = first[8..16].iter().map(|b| format!("{b:02x}")).collect();
        if let Some(v) = out.remove(main_tag) {
            out.insert(prog_tag, v);
        }
    }
    Ok(out)
}

/// The string section of BTF object `id`.
fn btf_strings(id: u32) -> std::io::Result<Vec<u8>> {
    let fd = Fd::by_id(BPF_BTF_GET_FD_BY_ID, id)?;
    let mut info = [0u8; 32];
    obj_info(&fd, &mut info)?;
    let size = u32_at(&info, 8) as usize;
    let mut blob = vec![0u8; size];
    let mut info = [0u8; 32];
    put_u64(&mut info, 0, blob.as_mut_ptr() as u64);
    put_u32(&mut info, 8, size as u32);
    obj_info(&fd, &mut info)?;
    // struct btf_header: magic u16, version u8, flags u8, hdr_len, type_off, type_len, str_off, str_len.
    let (hdr_len, str_off, str_len) = (u32_at(&blob, 4) as usize, u32_at(&blob, 16) as usize, u32_at(&blob, 20) as usize);
    Ok(blob.get(hdr_len + str_off..hdr_len + str_off + str_len).map(<[u8]>::to_vec).unwrap_or_default())
}

/// CLOCK_MONOTONIC in seconds (perf's `-k CLOCK_MONOTONIC` sample times).
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
