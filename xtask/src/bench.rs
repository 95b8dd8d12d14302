//! `cargo xtask bench [--quick] [--only b1|b2|b3]`: set up, build the release binaries, run the
//! benchmark binaries of `tests/benches/` (each writes a JSON file under `target/bench-out/`),
//! then write BENCHMARKS.md (tables, targets, method) and `bench-results/*.svg` from those
//! files and print a summary. `--quick` (the CI smoke run) writes its report under
//! `target/bench-out/quick/` instead, so that a smoke run never replaces the published figures.
//! (Longer than 600 lines: most of it is the report's prose and tables, kept next to the code
//! that fills them.)
//!
//! A section whose bench was not run this time (`--only`) is rendered from its last JSON file,
//! with that run's own date and command. The hand-written analysis between the
//! `<!-- analysis:begin -->` and `<!-- analysis:end -->` markers of an existing BENCHMARKS.md is
//! kept.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{cargo, root};

#[derive(clap::Args)]
pub struct Args {
    /// CI smoke mode: fewer sizes, repetitions and seconds (under two minutes once built).
    #[arg(long)]
    quick: bool,
    /// Run only one benchmark (the report keeps the others' last results).
    #[arg(long, value_parser = ["b1", "b2", "b3"])]
    only: Option<String>,
    /// Only write BENCHMARKS.md and the plots again from the last results (no set-up, no runs).
    #[arg(long)]
    report_only: bool,
    /// With `--only b1`: also measure commit REV's datapath in the same run (its own bench,
    /// built from an export of REV), in interleaved windows, and report each case's ratio.
    /// With `--only b3`: also run B3 with REV's agent, right before this tree's.
    #[arg(long, value_name = "REV", requires = "only")]
    against: Option<String>,
    /// Interleaved windows of `--against` (each runs both benches once).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    windows: u32,
}

const BENCHES: [(&str, &str); 3] = [("b1", "b1_datapath"), ("b2", "b2_e2e"), ("b3", "b3_control")];

const ANALYSIS_BEGIN: &str = "<!-- analysis:begin -->";
const ANALYSIS_END: &str = "<!-- analysis:end -->";

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let out_dir = if args.quick { target.join("bench-out").join("quick") } else { target.join("bench-out") };
    // Where the report goes: the repository for a full run, beside the results for a smoke run.
    let report_dir = if args.quick { out_dir.clone() } else { root() };
    if args.report_only {
        return report(&out_dir, &report_dir, started);
    }
    if args.against.is_some() && !matches!(args.only.as_deref(), Some("b1" | "b3")) {
        bail!("--against compares with an earlier commit: use it with --only b1 or --only b3");
    }
    crate::setup::run()?;
    println!("bench: build: lb and lb-testpod (release, with the eBPF datapath)");
    let status = cargo()
        .args(["build", "--release", "--package", "lb-userspace", "--package", "lb-tests", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    // The bench binaries too, so that the runs below time only themselves.
    let mut build = cargo();
    build.args(["bench", "--package", "lb-tests", "--no-run"]);
    for (short, name) in BENCHES {
        if args.only.as_deref().is_none_or(|o| o == short) {
            build.args(["--bench", name]);
        }
    }
    if !build.status().context("running cargo bench --no-run")?.success() {
        bail!("building the benchmarks failed");
    }
    println!("bench: built in {:.0} s", started.elapsed().as_secs_f64());
    let runs_started = Instant::now();
    let lb = target.join("release").join("lb");
    let testpod = target.join("release").join("lb-testpod");
    std::fs::create_dir_all(&out_dir)?;
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    }
    if let Some(o) = &args.only {
        let _ = write!(command, " --only {o}");
    }
    if let Some(rev) = args.against.as_ref().filter(|_| args.only.as_deref() == Some("b1")) {
        let _ = write!(command, " --against {rev} --windows {}", args.windows);
        let old = crate::against::build_old(rev, &target)?;
        let new_exe = crate::against::bench_exe(&root(), None)?;
        let out = out_dir.join("b1.json");
        let t = Instant::now();
        let results = crate::against::run_windows(&new_exe, &old, args.windows as usize, args.quick, &out_dir)?;
        std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
        annotate(&out, &command, t.elapsed().as_secs_f64())?;
        println!("bench: benchmarks ran in {:.0} s", runs_started.elapsed().as_secs_f64());
        return report(&out_dir, &report_dir, started);
    }
    let old_agent = match &args.against {
        Some(rev) => {
            let _ = write!(command, " --against {rev}");
            Some(crate::against::build_old_agent(rev, &target)?)
        }
        None => None,
    };
    for (short, name) in BENCHES {
        if args.only.as_deref().is_some_and(|o| o != short) {
            continue;
        }
        let out = out_dir.join(format!("{short}.json"));
        let _ = std::fs::remove_file(&out);
        // B3 against REV: the same bench with REV's agent first, then with this tree's.
        let old_out = out_dir.join(format!("{short}-against.json"));
        if let Some(old) = &old_agent {
            println!("bench: {short}: with {}'s agent ({})", old.rev, old.sha);
            run_bench(name, args.quick, &old_out, &old.lb, &testpod)
                .with_context(|| format!("benchmark {name} with {}'s agent", old.rev))?;
            println!("bench: {short}: with this tree's agent");
        }
        println!("bench: {short}: cargo bench -p lb-tests --bench {name}{}", if args.quick { " -- --quick" } else { "" });
        let t = Instant::now();
        run_bench(name, args.quick, &out, &lb, &testpod)?;
        if let Some(old) = &old_agent {
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
            let o: Value = serde_json::from_str(&std::fs::read_to_string(&old_out)?)?;
            v["results"]["against"] = serde_json::json!({ "rev": old.rev, "sha": old.sha, "results": o["results"] });
            std::fs::write(&out, serde_json::to_string_pretty(&v)?)?;
        }
        annotate(&out, &command, t.elapsed().as_secs_f64())?;
    }
    println!("bench: benchmarks ran in {:.0} s", runs_started.elapsed().as_secs_f64());
    report(&out_dir, &report_dir, started)
}

/// Writes BENCHMARKS.md and the plots (in `bench-results/`) under `report_dir` from the results
/// in `out_dir`; prints the targets.
fn report(out_dir: &Path, report_dir: &Path, started: Instant) -> anyhow::Result<()> {
    let report = Report::load(out_dir)?;
    let results_dir = report_dir.join("bench-results");
    std::fs::create_dir_all(&results_dir)?;
    for (file, svg) in report.charts() {
        std::fs::write(results_dir.join(file), svg)?;
    }
    let md_path = report_dir.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, report.markdown(&old))?;
    println!(
        "\nbench: wrote {} and {}/*.svg in {:.0} s",
        md_path.display(),
        results_dir.display(),
        started.elapsed().as_secs_f64()
    );
    for line in report.targets() {
        println!("  {}", line.summary());
    }
    Ok(())
}

/// Adds the command and the bench's wall time to its results file.
/// Runs bench `name` with the agent `lb` (and `testpod`), writing its results to `out`.
fn run_bench(name: &str, quick: bool, out: &Path, lb: &Path, testpod: &Path) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["bench", "--package", "lb-tests", "--bench", name, "--"]);
    if quick {
        c.arg("--quick");
    }
    let status = c
        .arg("--out")
        .arg(out)
        .env("LB_BIN", lb)
        .env("LB_TESTPOD_BIN", testpod)
        .status()
        .with_context(|| format!("running cargo bench --bench {name}"))?;
    if !status.success() {
        bail!("benchmark {name} failed");
    }
    Ok(())
}

fn annotate(path: &Path, command: &str, secs: f64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Value = serde_json::from_str(&text)?;
    v["command"] = command.into();
    v["wall_s"] = secs.into();
    std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------------------------

struct Report {
    b1: Option<Value>,
    b2: Option<Value>,
    b3: Option<Value>,
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn num(x: f64, digits: usize) -> String {
    if x.is_nan() {
        return "–".into();
    }
    let s = format!("{x:.digits$}");
    // Thousands separators for the integer part.
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits_str) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits_str.chars().enumerate() {
        if i > 0 && (digits_str.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(fr) => format!("{sign}{grouped}.{fr}"),
        None => format!("{sign}{grouped}"),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        return "–".into();
    }
    format!("{:.2}×", a / b)
}

/// `YYYY-MM-DD HH:MM UTC` of now.
pub fn now_utc() -> String {
    date(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// `YYYY-MM-DD HH:MM UTC` of a unix time.
fn date(unix: u64) -> String {
    let u = lb_common::utc_time(unix);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", u.year, u.month, u.day, u.hour, u.minute)
}

fn case<'a>(cases: &'a Value, name: &str) -> Option<&'a Value> {
    cases.as_array()?.iter().find(|c| c["case"] == name)
}

/// A target's outcome.
struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
    by: String,
}

impl Verdict {
    fn summary(&self) -> String {
        let v = match self.met {
            Some(true) => "met".to_owned(),
            Some(false) => format!("MISSED ({})", self.by),
            None => "not judged (fewer services than the target names)".to_owned(),
        };
        format!("{:<58} {:<48} {v}", self.target, self.measured)
    }
}

const B1_LABELS: [(&str, &str); 16] = [
    ("pass_non_service", "non-service packet, pass (TC) — the floor of the program"),
    ("xdp_pass_non_service", "non-service packet, pass (XDP)"),
    ("new_flow", "new ClusterIP flow (SYN: misses, Maglev pick, 1 CT insert since bf773be, 2 before; DNAT)"),
    ("new_flow_conntrack_full", "new ClusterIP flow, conntrack map full (every insert evicts)"),
    ("ct_hit", "conntrack hit (established ClusterIP flow, DNAT)"),
    ("ct_hit_same_port", "conntrack hit, port = target port (DNAT of the address only)"),
    ("reply_revnat", "reply, reverse NAT (backend → client)"),
    ("affinity_hit_new_flow", "new flow with ClientIP affinity hit"),
    ("nodeport_snat_ct_hit", "NodePort + SNAT, established (XDP)"),
    (
        "nodeport_snat_new_flow",
        "NodePort + SNAT, new flow (XDP, SNAT port by hash; both entries in its slot since c4cd021, 2 CT inserts before)",
    ),
    ("nodeport_local_ct_hit", "NodePort, policy Local (no SNAT), established (XDP)"),
    ("nodeport_local_cycling_ct_hit", "NodePort, policy Local, established, each packet another of 20,000 flows (XDP)"),
    ("new_flow_cycling_services", "new flow, each packet to a different service"),
    ("ct_hit_cycling_services", "conntrack hit, cycling over flows to different services"),
    ("lookup_services_map", "reference: one LB_SERVICES lookup (hit), in a no-op program"),
    ("lookup_conntrack_map", "reference: one conntrack lookup (IPv4 table; a hit since one-entry flows), in a no-op program"),
];

/// Cases whose cost the "flat within 15 %" target covers.
const HIT_CASES: [&str; 6] =
    ["ct_hit", "reply_revnat", "affinity_hit_new_flow", "nodeport_snat_ct_hit", "nodeport_local_ct_hit", "pass_non_service"];

impl Report {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |n: &str| -> Option<Value> {
            let text = std::fs::read_to_string(dir.join(format!("{n}.json"))).ok()?;
            serde_json::from_str(&text).ok()
        };
        let r = Self { b1: read("b1"), b2: read("b2"), b3: read("b3") };
        if r.b1.is_none() && r.b2.is_none() && r.b3.is_none() {
            bail!("no benchmark results in {}", dir.display());
        }
        Ok(r)
    }

    fn b1_rows(&self) -> Vec<&Value> {
        self.b1.as_ref().and_then(|b| b["results"]["rows"].as_array()).map(|r| r.iter().collect()).unwrap_or_default()
    }

    fn b1_ns(row: &Value, name: &str) -> f64 {
        case(&row["cases"], name).map_or(f64::NAN, |c| f(&c["ns_median"]))
    }

    /// Median of the per-run ratios to the same run on the fewest-services datapath.
    fn b1_ratio(row: &Value, name: &str) -> f64 {
        case(&row["cases"], name).map_or(f64::NAN, |c| f(&c["ratio_to_first_median"]))
    }

    fn targets(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        // B1: hit paths flat.
        let rows = self.b1_rows();
        if rows.len() >= 2 {
            let last = rows[rows.len() - 1];
            // Paired per-run ratios to the fewest-services row (drift between runs cancels).
            let mut worst: (f64, &str) = (0.0, "");
            let mut growth: (f64, &str) = (f64::NEG_INFINITY, "");
            for c in HIT_CASES {
                for row in &rows[1..] {
                    let r = Self::b1_ratio(row, c) - 1.0;
                    if r.is_finite() && r.abs() > worst.0 {
                        worst = (r.abs(), c);
                    }
                    if r.is_finite() && r > growth.0 {
                        growth = (r, c);
                    }
                }
            }
            let n_last = f(&last["services"]);
            out.push(Verdict {
                target: format!("B1 hit paths flat within 15 % (3 → {} services)", num(n_last, 0)),
                measured: format!(
                    "largest deviation {:.1} % ({}); largest increase {:+.1} % ({})",
                    worst.0 * 100.0,
                    worst.1,
                    growth.0 * 100.0,
                    growth.1
                ),
                met: Some(worst.0 <= 0.15),
                by: format!("{:.1} points over", (worst.0 - 0.15) * 100.0),
            });
            let nf: Vec<f64> = rows.iter().map(|r| Self::b1_ns(r, "new_flow")).collect();
            let worst_nf = nf.iter().copied().fold(f64::NAN, f64::max);
            out.push(Verdict {
                target: "B1 new ClusterIP flow ≤ ~100 ns".into(),
                measured: format!("{} – {} ns", num(nf.iter().copied().fold(f64::NAN, f64::min), 0), num(worst_nf, 0)),
                met: Some(worst_nf <= 100.0),
                by: format!("{:.1}× the target", worst_nf / 100.0),
            });
        }
        // B2.
        let b2rows: Vec<&Value> =
            self.b2.as_ref().and_then(|b| b["results"]["rows"].as_array()).map(|r| r.iter().collect()).unwrap_or_default();
        for row in &b2rows {
            let n = f(&row["services"]);
            let rate = |m: &str| f(&row["modes"][m]["conn_per_s_median"]);
            let (lb, ipt, nft) = (rate("lb"), rate("iptables"), rate("nftables"));
            let (need_ipt, label) = if n >= 10_000.0 { (1.5, "≥ 1.5× iptables") } else { (1.0, "≥ iptables") };
            if n >= 10_000.0 || n <= 10.0 {
                out.push(Verdict {
                    target: format!("B2 {} services: lb {label}", num(n, 0)),
                    measured: format!("{} of iptables", ratio(lb, ipt)),
                    met: Some(lb >= need_ipt * ipt),
                    by: format!("{:.0} % short", (1.0 - lb / (need_ipt * ipt)) * 100.0),
                });
                out.push(Verdict {
                    target: format!("B2 {} services: lb not below nftables", num(n, 0)),
                    measured: format!("{} of nftables", ratio(lb, nft)),
                    met: Some(lb >= nft),
                    by: format!("{:.0} % short", (1.0 - lb / nft) * 100.0),
                });
            }
        }
        // B3.
        if let Some(b3) = &self.b3 {
            let r = &b3["results"];
            // Issue 16: 1 s and 100 MiB at 10,000 services, 10 s and 1 GiB at 100,000 (the quick
            // run's largest row stands in for the first).
            let rows: Vec<&Value> = r["lb"].as_array().into_iter().flatten().collect();
            let first = rows.iter().filter(|x| f(&x["services"]) <= 10_000.0).max_by_key(|x| x["services"].as_u64());
            let large = rows.iter().find(|x| f(&x["services"]) >= 100_000.0);
            for (row, secs, mib) in [(first, 1.0, 100.0), (large, 10.0, 1024.0)] {
                let Some(row) = row else { continue };
                let n = f(&row["services"]);
                let s = f(&row["sync_s"]);
                out.push(Verdict {
                    target: format!("B3 {} services synced < {secs} s", num(n, 0)),
                    measured: format!("{s:.2} s"),
                    met: (n >= 10_000.0).then_some(s < secs),
                    by: format!("{:.1}× the target", s / secs),
                });
                let rss = f(&row["vm_hwm_kib_end"]) / 1024.0;
                let limit = if mib >= 1024.0 { "1 GiB".to_owned() } else { format!("{mib:.0} MiB") };
                out.push(Verdict {
                    target: format!("B3 agent peak RSS < {limit} ({} services)", num(n, 0)),
                    measured: format!("{rss:.1} MiB"),
                    met: Some(rss < mib),
                    by: format!("{:.0} MiB over", rss - mib),
                });
            }
            if let Some(row) = r["lb_file"].as_array().and_then(|a| a.iter().find(|x| x["services"] == 10_000)) {
                let s = f(&row["sync_s"]);
                out.push(Verdict {
                    target: "B3 file source, 10,000 services programmed ≤ 2 s".into(),
                    measured: format!("{s:.2} s"),
                    met: Some(s <= 2.0),
                    by: format!("{:.1}× the target", s / 2.0),
                });
                // Beyond the poll interval: the worst case waits one whole interval (200 ms).
                let p99 = f(&row["edit_latency_ms"]["p99"]);
                let beyond = p99 - 200.0;
                out.push(Verdict {
                    target: "B3 file source, one edited file in the maps ≤ 50 ms beyond the 200 ms poll (10,000 services)".into(),
                    measured: if beyond <= 0.0 {
                        format!(
                            "p99 {p99:.0} ms: within one poll interval (the sync itself {:.1} ms)",
                            f(&row["edit_sync_ms"]["median"])
                        )
                    } else {
                        format!(
                            "p99 {p99:.0} ms: {beyond:.0} ms beyond one poll interval (the sync itself {:.1} ms)",
                            f(&row["edit_sync_ms"]["median"])
                        )
                    },
                    met: Some(beyond <= 50.0),
                    by: format!("{:.0} ms over", beyond - 50.0),
                });
            }
            if r["lb_growth"].is_object() {
                let g = &r["lb_growth"];
                let failed = g["requests_failed"].as_u64().unwrap_or(u64::MAX);
                out.push(Verdict {
                    target: "B3 maps grow online under traffic with 0 failed requests".into(),
                    measured: format!(
                        "{failed} failed of {} while {} services were added ({} growths)",
                        g["requests_ok"].as_u64().unwrap_or(0) + failed,
                        num(f(&g["services"]), 0),
                        g["growths"].as_array().map_or(0, Vec::len)
                    ),
                    met: Some(failed == 0 && g["long_lived_kept"] == true),
                    by: format!("{failed} failed"),
                });
            }
            if let Some(c) = large.map(|row| &row["change"]).filter(|c| c.is_object()) {
                let p99 = f(&c["latency_ms"]["p99"]);
                out.push(Verdict {
                    target: format!("B3 one change in the maps, p99 ≤ 20 ms ({} services)", num(f(&c["services"]), 0)),
                    measured: format!("p99 {p99:.1} ms (p50 {:.1} ms)", f(&c["latency_ms"]["median"])),
                    met: Some(p99 <= 20.0),
                    by: format!("{:.1}× the target", p99 / 20.0),
                });
            }
            let c = &r["lb_change"];
            if c.is_object() {
                let p99 = f(&c["latency_ms"]["p99"]);
                out.push(Verdict {
                    target: format!("B3 one change in the maps, p99 ≤ 15 ms ({} services)", num(f(&c["services"]), 0)),
                    measured: format!("p99 {p99:.1} ms (p50 {:.1} ms)", f(&c["latency_ms"]["median"])),
                    met: Some(p99 <= 15.0),
                    by: format!("{:.1}× the target", p99 / 15.0),
                });
            }
        }
        out
    }

    fn header(v: &Value) -> String {
        let env = &v["environment"];
        format!(
            "Command: `{}` ({}) · {} · {} cores ({}) · kernel {} · BPF JIT {} · clocksource {} · load average at start {} · took {:.0} s",
            v["command"].as_str().unwrap_or("cargo xtask bench"),
            if v["quick"].as_bool() == Some(true) { "quick mode" } else { "default mode" },
            date(env["unix_time"].as_u64().unwrap_or(0)),
            env["cpus"],
            env["cpu_model"].as_str().unwrap_or("?"),
            env["kernel"].as_str().unwrap_or("?"),
            if env["bpf_jit_enable"] == "1" { "on" } else { "off" },
            env["clocksource"].as_str().unwrap_or("?"),
            env["loadavg_at_start"].as_str().unwrap_or("?").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            if v["run_s"].is_number() { f(&v["run_s"]) } else { f(&v["wall_s"]) },
        )
    }

    fn markdown(&self, old: &str) -> String {
        let mut md = String::new();
        md.push_str("# Benchmarks\n\n");
        md.push_str(
            "Generated by `cargo xtask bench` (default mode, about ten minutes; `--quick` is the CI smoke run, \
             `--only b1|b2|b3` runs one part). Every figure below comes from the run whose command, date and \
             machine head its section; compare figures only within a section, as ratios. These are 2-vCPU \
             virtual machines shared with other work: absolute numbers are local, steal time moves single runs \
             by 10–40 %, so modes are interleaved and medians reported.\n\n",
        );
        md.push_str("## Targets\n\n| target | measured | verdict |\n| --- | --- | --- |\n");
        for t in self.targets() {
            let v = match t.met {
                Some(true) => "met".to_owned(),
                Some(false) => format!("**missed** ({})", t.by),
                None => "not judged (the target names 10,000 services)".to_owned(),
            };
            let _ = writeln!(md, "| {} | {} | {v} |", t.target, t.measured);
        }
        md.push('\n');
        // The analysis is written by hand and kept across runs.
        let analysis = old
            .split_once(ANALYSIS_BEGIN)
            .and_then(|(_, rest)| rest.split_once(ANALYSIS_END))
            .map(|(a, _)| a.trim().to_owned())
            .unwrap_or_else(|| "## Analysis\n\n(Not written yet.)".to_owned());
        let _ = write!(md, "{ANALYSIS_BEGIN}\n{analysis}\n{ANALYSIS_END}\n\n");
        self.b1_md(&mut md);
        self.b2_md(&mut md);
        self.b3_md(&mut md);
        md.push_str(METHOD);
        md
    }

    fn b1_md(&self, md: &mut String) {
        let Some(b1) = &self.b1 else { return };
        let r = &b1["results"];
        md.push_str("## B1: per-packet cost (BPF_PROG_TEST_RUN)\n\n");
        let _ = writeln!(md, "{}\n", Self::header(b1));
        Self::b1_against_md(b1, md);
        let _ = writeln!(
            md,
            "ns per packet, median (and minimum) of {} runs (each run: {} iterations for hit paths, {} new flows, {} NodePort new flows); \
             the real program through the restoring wrapper, wrapper cost subtracted (see Method). The last column is the \
             last row over the first, as the median of per-run ratios (both measured in the same run, so drift \
             between runs cancels). Every run was checked against lb's own counters (✗ = a counter did not grow by \
             exactly the repeat count).\n",
            r["runs"],
            num(f(&r["hit_repeat"]), 0),
            num(f(&r["new_repeat"]), 0),
            num(f(&r["nodeport_new_repeat"]), 0)
        );
        let rows = self.b1_rows();
        md.push_str("| case |");
        for row in &rows {
            let _ = write!(md, " {} services |", num(f(&row["services"]), 0));
        }
        md.push_str(" last / first |\n| --- |");
        for _ in &rows {
            md.push_str(" ---: |");
        }
        md.push_str(" ---: |\n");
        for (name, label) in B1_LABELS.iter().filter(|(n, _)| !n.is_empty()) {
            if rows.iter().all(|row| case(&row["cases"], name).is_none()) {
                continue;
            }
            let _ = write!(md, "| {label} |");
            for row in &rows {
                match case(&row["cases"], name) {
                    Some(c) => {
                        let ok = if c["counters_ok"].as_bool() == Some(true) { "" } else { " ✗" };
                        let _ = write!(md, " {} ({}){ok} |", num(f(&c["ns_median"]), 0), num(f(&c["ns_min"]), 0));
                    }
                    None => md.push_str(" – |"),
                }
            }
            let last = rows.last().map_or(f64::NAN, |row| Self::b1_ratio(row, name));
            let _ = writeln!(md, " {} |", if last.is_finite() && rows.len() >= 2 { format!("{last:.2}×") } else { "–".into() });
        }
        let drops: u64 = rows
            .iter()
            .filter_map(|row| case(&row["cases"], "nodeport_snat_new_flow"))
            .filter_map(|c| c["snat_port_drops"].as_u64())
            .sum();
        if drops > 0 {
            let _ = writeln!(
                md,
                "\nNodePort new flows: {drops} flow(s) over all runs were dropped because the datapath's 4 random SNAT port \
                 picks all hit ports in use (counted as `DROP_SNAT_PORTS`; the runs count them as handled)."
            );
        }
        // Floors.
        if let Some(row) = rows.first() {
            let noop = |name: &str| case(&row["cases"], name).map_or(f64::NAN, |c| f(&c["noop_median"]));
            let wrap = |name: &str| case(&row["cases"], name).map_or(f64::NAN, |c| f(&c["raw_wrapper_noop_median"]));
            let pass = Self::b1_ns(row, "pass_non_service");
            let _ = writeln!(
                md,
                "\nFloors, same run: a one-instruction program (`return TC_ACT_OK` / `return XDP_PASS`, hand-assembled and \
                 loaded beside lb) costs {} ns (TC) / {} ns (XDP) per iteration; the restoring wrapper tail-calling it \
                 {} ns (TC, one template). lb's cheapest path, a packet that is not for a service, costs {} ns: {} the \
                 no-op floor.\n",
                num(noop("pass_non_service"), 1),
                num(noop("xdp_pass_non_service"), 1),
                num(wrap("pass_non_service"), 1),
                num(pass, 1),
                ratio(pass, noop("pass_non_service")),
            );
        }
        if let Some(big) = r["big"]["cases"].as_array() {
            md.push_str("One service with 1,000 backends (Maglev table of 65,521 slots), same run, median (min):\n\n| case | ns/packet | vs 3 services |\n| --- | ---: | ---: |\n");
            for c in big {
                let name = c["case"].as_str().unwrap_or("");
                let base = name.trim_end_matches("_1000_backends");
                let vs_first = f(&c["ratio_to_first_median"]);
                let label = B1_LABELS.iter().find(|(n, _)| *n == base).map_or(base, |(_, l)| l);
                let ok = if c["counters_ok"].as_bool() == Some(true) { "" } else { " ✗" };
                let _ = writeln!(
                    md,
                    "| {label} | {} ({}){ok} | {} |",
                    num(f(&c["ns_median"]), 0),
                    num(f(&c["ns_min"]), 0),
                    if vs_first.is_finite() { format!("{vs_first:.2}×") } else { "–".into() }
                );
            }
            md.push('\n');
        }
        // Map sizes and kernel memory per row.
        md.push_str("Maps per row, sized as `lb agent --services-max N` sizes them (never below the defaults):\n\n");
        md.push_str("| services | LB_SERVICES entries / capacity | LB_MAGLEV chunks / capacity | kernel memory of all maps | programmed in |\n| ---: | ---: | ---: | ---: | ---: |\n");
        for row in &rows {
            let sizes = &row["map_sizes"];
            let _ = writeln!(
                md,
                "| {} | {} / {} | {} / {} | {} MiB | {:.1} s |",
                num(f(&row["services"]), 0),
                num(f(&row["services_map_entries"]), 0),
                num(f(&sizes["services"]), 0),
                num(f(&row["maglev_map_entries"]), 0),
                num(f(&sizes["maglev"]), 0),
                num(f(&row["map_bytes"]) / f64::from(1u32 << 20), 0),
                f(&row["program_s"]),
            );
        }
        let d = &r["default_sizes"];
        let _ = writeln!(
            md,
            "\nEvery ClusterIP service takes 2 LB_SERVICES entries (its frontend and its address marker) and a Maglev table \
             of {} slots for up to 10 endpoints, {} LB_MAGLEV chunks of 256 slots. The default sizes ({} LB_SERVICES \
             entries, {} LB_MAGLEV chunks) hold about 16,000 such services; `--services-max` raises them. The service maps \
             are created with `BPF_F_NO_PREALLOC`, so kernel memory grows with the entries written, not with the \
             capacity (memory is the `memlock` the kernel reports per map, conntrack's preallocated LRU included). \
             All {} datapaths were loaded and programmed side by side first ({:.1} s), so that each case's runs \
             interleave over the service counts.\n",
            num(f(&r["maglev_table_size_3_endpoints"]), 0),
            num((f(&r["maglev_table_size_3_endpoints"]) / 64.0).ceil(), 0),
            num(f(&d["services"]), 0),
            num(f(&d["maglev"]), 0),
            rows.len() + 1,
            f(&r["setup_s"]),
        );
        md.push_str("![B1 per-packet cost](bench-results/b1-per-packet.svg)\n\n");
    }

    /// The same-run comparison with an earlier commit (`--against`), when the run made one.
    fn b1_against_md(b1: &Value, md: &mut String) {
        let a = &b1["against"];
        let Some(cases) = a["cases"].as_array() else { return };
        let _ = writeln!(
            md,
            "**Against {} ({}), same run.** Both datapaths' benches ran in {} interleaved windows; ns are the medians \
             pooled over the windows, the ratio is the median over the windows of this tree's median over {}'s from the \
             same window. Targets (issue 15) are ratios.\n",
            a["rev"].as_str().unwrap_or("?"),
            a["sha"].as_str().unwrap_or("?"),
            a["windows"],
            a["rev"].as_str().unwrap_or("?"),
        );
        md.push_str(
            "| case | services | ns | ns before | ratio | target | |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        );
        for c in cases {
            let name = c["case"].as_str().unwrap_or_default();
            let label = B1_LABELS.iter().find(|(n, _)| *n == name).map_or(name, |(_, l)| l);
            let (target, met) = match c["target"].as_f64() {
                Some(t) => (format!("≤ {t:.2}×"), if c["met"].as_bool() == Some(true) { "met" } else { "**missed**" }),
                None => ("–".to_owned(), ""),
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {target} | {met} |",
                num(f(&c["services"]), 0),
                num(f(&c["ns"]), 0),
                num(f(&c["against_ns"]), 0),
                if f(&c["ratio"]).is_finite() { format!("{:.2}×", f(&c["ratio"])) } else { "–".to_owned() },
            );
        }
        md.push('\n');
    }

    fn b2_md(&self, md: &mut String) {
        let Some(b2) = &self.b2 else { return };
        let r = &b2["results"];
        md.push_str("## B2: new connections end to end through a node\n\n");
        let _ = writeln!(md, "{}\n", Self::header(b2));
        let _ = writeln!(
            md,
            "{} client threads in a client pod, one new TCP connection per request (GET, read to the end, close) to a \
             ClusterIP with {} endpoints (pods running `lb-testpod`), {} s per run after {} s of warm-up per mode (enough \
             to fill lb's conntrack map, the steady state of a busy node), {} interleaved repetitions per mode, medians. Latency percentiles over every request of a mode. \"translated\" is what each mode's own counters \
             saw for the measured service (lb: new flows; iptables: packets through the KUBE-SVC chain; nftables: the \
             counter on the service chain): about one per connection.\n",
            r["threads"], r["endpoints_per_service"], r["run_s"], r["warmup_s"], r["reps"]
        );
        md.push_str("| services | mode | conn/s (median) | runs min – max | lb / mode | p50 µs | p99 µs | failed | translated | rules loaded in |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in r["rows"].as_array().into_iter().flatten() {
            let lb = f(&row["modes"]["lb"]["conn_per_s_median"]);
            for m in ["lb", "iptables", "nftables", "direct"] {
                let x = &row["modes"][m];
                if x.is_null() {
                    continue;
                }
                let rate = f(&x["conn_per_s_median"]);
                let _ = writeln!(
                    md,
                    "| {} | {m} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    num(f(&row["services"]), 0),
                    num(rate, 0),
                    {
                        let runs: Vec<f64> = x["conn_per_s"].as_array().into_iter().flatten().map(f).collect();
                        let lo = runs.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if runs.len() > 1 { format!("{} – {}", num(lo, 0), num(hi, 0)) } else { "–".into() }
                    },
                    if m == "lb" { "–".into() } else { ratio(lb, rate) },
                    num(f(&x["latency_us_p50"]), 0),
                    num(f(&x["latency_us_p99"]), 0),
                    x["requests_failed"],
                    if m == "direct" { "–".into() } else { num(f(&x["translated"]), 0) },
                    if m == "direct" { "–".into() } else { format!("{:.2} s", f(&x["program_s"])) },
                );
            }
        }
        md.push_str("\n![B2 connections per second](bench-results/b2-connections.svg)\n\n");
    }

    /// B3's file-source rows (`lb agent --source file:DIR`).
    fn b3_file_md(r: &Value, md: &mut String) {
        let Some(rows) = r["lb_file"].as_array().filter(|a| !a.is_empty()) else { return };
        md.push_str(
            "\nThe same agent on `--source file:DIR` (issue 16, item 5): the same Services and EndpointSlices as YAML files of 100 \
             Services each. Programmed = agent start → every frontend in the pinned maps; one edited file = one endpoint \
             replaced in one file (written aside and renamed in) → the new backend in the service's Maglev table. The agent \
             polls the directory every 200 ms (`--poll-ms`), so that latency includes up to one poll interval; the sync \
             itself is the agent's own `took_ms`. Targets: 10,000 services programmed in ≤ 2 s, an edited file synced in ≤ 50 ms \
             beyond the poll interval.\n\n\
             | services | programmed | of which: datapath loaded at | lb peak RSS (VmHWM) | one edited file in the maps, p50 / p99 | the sync itself, median |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for row in rows {
            let _ = writeln!(
                md,
                "| {} | {:.3} s | {:.3} s | {:.1} MiB | {:.1} ms / {:.1} ms | {:.1} ms |",
                num(f(&row["services"]), 0),
                f(&row["sync_s"]),
                f(&row["log_datapath_loaded_s"]),
                f(&row["vm_hwm_kib"]) / 1024.0,
                f(&row["edit_latency_ms"]["median"]),
                f(&row["edit_latency_ms"]["p99"]),
                f(&row["edit_sync_ms"]["median"]),
            );
        }
    }

    /// B3's growth-under-traffic row (issue 16, item 6).
    fn b3_growth_md(r: &Value, md: &mut String) {
        let g = &r["lb_growth"];
        if !g.is_object() {
            return;
        }
        let sizes: Vec<&str> = g["initial_sizes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let growths: Vec<&str> = g["growths"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut grown: Vec<(&str, usize)> = Vec::new();
        for m in &growths {
            match grown.iter_mut().find(|(n, _)| n == m) {
                Some((_, c)) => *c += 1,
                None => grown.push((m, 1)),
            }
        }
        let grown: Vec<String> = grown.iter().map(|(m, c)| if *c > 1 { format!("{m} ×{c}") } else { (*m).to_owned() }).collect();
        let _ = write!(
            md,
            "\nMaps growing online under traffic (issue 16, item 6): one node, the file source, an agent started with \
             `--map-size {}` (room for kubia and hardly more). A client pod runs a loop of new HTTP connections to kubia \
             and holds one long-lived connection through it, while {} Services of {} endpoints each (every endpoint its \
             own address) are added at once.\n\n\
             | services added | every one listed after | maps grown online | requests meanwhile | failed | long-lived connection kept its pod | a new Service answers |\n\
             | ---: | ---: | --- | ---: | ---: | --- | --- |\n\
             | {} | {:.2} s | {} | {} | **{}** | {} | {} |\n",
            sizes.join(" "),
            num(f(&g["services"]), 0),
            g["endpoints_per_service"],
            num(f(&g["services"]), 0),
            f(&g["programmed_s"]),
            grown.join(", "),
            g["requests_ok"].as_u64().unwrap_or(0) + g["requests_failed"].as_u64().unwrap_or(0),
            g["requests_failed"],
            if g["long_lived_kept"] == true { "yes" } else { "**no**" },
            if g["new_service_answers"] == true { "yes" } else { "**no**" },
        );
    }

    /// B3 with an earlier commit's agent in the same run (`--only b3 --against REV`).
    fn b3_against_md(r: &Value, md: &mut String) {
        let a = &r["against"];
        if !a.is_object() {
            return;
        }
        let old = &a["results"];
        let _ = writeln!(
            md,
            "\nAgainst {} ({}), same run: this bench ran with {}'s `lb` agent, then with this tree's, on the same objects \
             (ratio = this tree / {}; below 1 is better):\n",
            a["rev"].as_str().unwrap_or("?"),
            a["sha"].as_str().unwrap_or("?"),
            a["rev"].as_str().unwrap_or("?"),
            a["rev"].as_str().unwrap_or("?"),
        );
        md.push_str("| | this tree | earlier commit | ratio |\n| --- | ---: | ---: | ---: |\n");
        let ratio = |new: f64, old: f64| if old > 0.0 { format!("{:.2}×", new / old) } else { "–".into() };
        for row in r["lb"].as_array().into_iter().flatten() {
            let n = &row["services"];
            let Some(o) = old["lb"].as_array().and_then(|rows| rows.iter().find(|x| x["services"] == *n)) else { continue };
            let (sn, so) = (f(&row["sync_s"]), f(&o["sync_s"]));
            let _ = writeln!(md, "| {} services: full sync | {sn:.3} s | {so:.3} s | {} |", num(f(n), 0), ratio(sn, so));
            let (mn, mo) = (f(&row["vm_hwm_kib_end"]) / 1024.0, f(&o["vm_hwm_kib_end"]) / 1024.0);
            let _ = writeln!(md, "| {} services: peak RSS | {mn:.1} MiB | {mo:.1} MiB | {} |", num(f(n), 0), ratio(mn, mo));
        }
        // One change at the change scale, and at 100,000 where measured.
        let mut changes = vec![(&r["lb_change"], &old["lb_change"])];
        for row in r["lb"].as_array().into_iter().flatten().filter(|x| x["change"].is_object()) {
            let o = old["lb"].as_array().and_then(|rows| rows.iter().find(|x| x["services"] == row["services"]));
            changes.extend(o.map(|o| (&row["change"], &o["change"])));
        }
        for (c, oc) in changes {
            if !(c["latency_ms"].is_object() && oc["latency_ms"].is_object()) {
                continue;
            }
            for (label, k) in [("p50", "median"), ("p99", "p99")] {
                let (x, y) = (f(&c["latency_ms"][k]), f(&oc["latency_ms"][k]));
                let _ = writeln!(
                    md,
                    "| one change, {label} ({} services) | {x:.1} ms | {y:.1} ms | {} |",
                    num(f(&c["services"]), 0),
                    ratio(x, y)
                );
            }
        }
        // The file source: programmed, and one edited file's sync.
        for row in r["lb_file"].as_array().into_iter().flatten() {
            let n = &row["services"];
            let Some(o) = old["lb_file"].as_array().and_then(|rows| rows.iter().find(|x| x["services"] == *n)) else { continue };
            let (sn, so) = (f(&row["sync_s"]), f(&o["sync_s"]));
            let _ = writeln!(
                md,
                "| file source, {} services: programmed | {sn:.3} s | {so:.3} s | {} |",
                num(f(n), 0),
                ratio(sn, so)
            );
            let (en, eo) = (f(&row["edit_sync_ms"]["median"]), f(&o["edit_sync_ms"]["median"]));
            let _ = writeln!(
                md,
                "| file source, {} services: an edited file's sync (median) | {en:.1} ms | {eo:.1} ms | {} |",
                num(f(n), 0),
                ratio(en, eo)
            );
        }
    }

    fn b3_md(&self, md: &mut String) {
        let Some(b3) = &self.b3 else { return };
        let r = &b3["results"];
        md.push_str("## B3: control plane\n\n");
        let _ = writeln!(md, "{}\n", Self::header(b3));
        let _ = writeln!(
            md,
            "The real `lb agent --source kube:KUBECONFIG` process against the in-process API server (list/watch over HTTP), \
             {} endpoints per service, {}. Full sync = agent start → every frontend in the \
             pinned maps (includes loading the datapath through the verifier, the initial lists and growing the maps \
             from their defaults); up to 10,000 services the agent is started three times on the same objects and \
             the medians are shown (time, and peak RSS after the sync). Peak RSS = `VmHWM`.\n",
            r["endpoints_per_service"],
            if r["distinct_endpoints"] == true {
                "each its own pod (N × 10 distinct backends, as in a real cluster)".to_owned()
            } else {
                format!("drawn from a pool of {} pod IPs", num(f(&r["pool"]), 0))
            }
        );
        md.push_str("| services | lb full sync | of which: datapath loaded at | initial lists in at | lb peak RSS (VmHWM) | lb RSS at the end | iptables-restore (empty tables) | iptables-restore --noflush (full resync) | nft -f (whole table) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let bases = r["baselines"].as_array().cloned().unwrap_or_default();
        let secs = |x: f64| if x.is_nan() { "not run (minutes)".to_owned() } else { format!("{x:.2} s") };
        for row in r["lb"].as_array().into_iter().flatten() {
            let n = &row["services"];
            let b = bases.iter().find(|b| b["services"] == *n);
            let g = |k: &str| b.map_or(f64::NAN, |b| f(&b[k]));
            let _ = writeln!(
                md,
                "| {} | {:.3} s | {:.3} s | {} | {:.1} MiB | {:.1} MiB | {} | {} | {} |",
                num(f(n), 0),
                f(&row["sync_s"]),
                f(&row["log_datapath_loaded_s"]),
                if row["log_lists_s"].is_null() { "–".to_owned() } else { format!("{:.3} s", f(&row["log_lists_s"])) },
                f(&row["vm_hwm_kib_end"]) / 1024.0,
                f(&row["vm_rss_kib_end"]) / 1024.0,
                secs(g("iptables_restore_s")),
                if g("iptables_restore_noflush_s").is_nan() {
                    "not run (minutes)".into()
                } else {
                    format!("{:.2} s", g("iptables_restore_noflush_s"))
                },
                secs(g("nft_full_s")),
            );
        }
        Self::b3_file_md(r, md);
        Self::b3_growth_md(r, md);
        Self::b3_against_md(r, md);
        let c = &r["lb_change"];
        let bc = &r["baseline_change"];
        if c.is_object() {
            let _ = writeln!(
                md,
                "\nOne endpoint change with {} services (a different service each time; lb: API server write → the new \
                 backend in the service's Maglev table in the pinned maps; baselines: the rules kube-proxy would write \
                 for the same change, timed from process start to exit):\n",
                num(f(&c["services"]), 0)
            );
            md.push_str("| | p50 | p99 | max | samples |\n| --- | ---: | ---: | ---: | ---: |\n");
            let row = |md: &mut String, label: &str, s: &Value| {
                if s.is_object() {
                    let _ = writeln!(
                        md,
                        "| {label} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                        f(&s["median"]),
                        f(&s["p99"]),
                        f(&s["max"]),
                        s["n"]
                    );
                }
            };
            row(md, "lb (agent, through the API server watch)", &c["latency_ms"]);
            for big in r["lb"].as_array().into_iter().flatten().map(|x| &x["change"]).filter(|x| x.is_object()) {
                let label = format!(
                    "lb at {} services (the sync itself: {:.1} ms, median)",
                    num(f(&big["services"]), 0),
                    f(&big["agent_sync_ms"]["median"])
                );
                row(md, &label, &big["latency_ms"]);
            }
            row(md, "iptables-restore --noflush, kube-proxy partial sync", &bc["iptables_partial_ms"]);
            row(md, "nft -f, kube-proxy nftables transaction", &bc["nft_ms"]);
            let logged = &c["agent_logged_ms"];
            if logged.is_object() {
                let _ = writeln!(
                    md,
                    "\nThe agent's own `synced` log line (written right after its map writes) came {:.1} ms (median) after the \
                     API server write, so the latency is the agent's, not the polling's.",
                    f(&logged["median"])
                );
                let took = &c["agent_sync_ms"];
                if took.is_object() {
                    let _ = writeln!(
                        md,
                        "The sync itself (snapshot, compile, plan, map writes; the `took_ms` of that line) took {:.1} ms \
                         (median, p99 {:.1} ms); the rest is the watch delivery (an isolated change is synced at once; \
                         changes within the coalescing window of the last sync wait for its end).",
                        f(&took["median"]),
                        f(&took["p99"])
                    );
                }
            }
        }
        let pipes: Vec<&Value> = r["lb"].as_array().into_iter().flatten().filter(|x| x["pipeline"].is_object()).collect();
        if !pipes.is_empty() {
            md.push_str(
                "\nWhere one sync's time goes: the agent's per-sync steps timed in the bench process with the same library \
                 (medians of 3). The agent compiles only the Services whose objects changed (the memo reads \
                 them from the watch caches' change log), plans again only the ServicePorts that \
                 compile reports as changed, and diffs only the keys that plan touched. The full compile, plan \
                 and diff of the whole state are shown beside them:\n\n\
                 | services | coalescing window (min. time between syncs) | snapshot (the caches' shared lists) | compile (memo; full) | plan (incremental; full) | diff (touched keys; full) | map writes for one endpoint change |\n\
                 | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            for x in pipes {
                let p = &x["pipeline"];
                let _ = writeln!(
                    md,
                    "| {} | {:.0} ms | {:.1} ms | {:.1} ms; {:.1} ms | {:.1} ms; {:.1} ms | {:.2} ms; {:.1} ms | {} |",
                    num(f(&x["services"]), 0),
                    f(&p["coalesce_window_ms"]),
                    f(&p["snapshot_ms"]),
                    f(&p["compile_ms"]),
                    f(&p["full_compile_ms"]),
                    f(&p["plan_ms"]),
                    f(&p["full_plan_ms"]),
                    f(&p["diff_ms"]),
                    f(&p["full_diff_ms"]),
                    p["diff_ops"]
                );
            }
        }
        md.push_str("\n![B3 control plane](bench-results/b3-control-plane.svg)\n\n");
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let rows = self.b1_rows();
        if !rows.is_empty() {
            let cases: Vec<&str> = B1_LABELS
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !n.is_empty() && rows.iter().any(|r| case(&r["cases"], n).is_some()))
                .collect();
            let series: Vec<(String, Vec<f64>)> = rows
                .iter()
                .map(|row| {
                    (format!("{} services", num(f(&row["services"]), 0)), cases.iter().map(|c| Self::b1_ns(row, c)).collect())
                })
                .collect();
            out.push((
                "b1-per-packet.svg",
                bar_chart_with(
                    "B1: ns per packet (BPF_PROG_TEST_RUN), by service count",
                    "ns/packet",
                    &cases,
                    &series,
                    false,
                    &[("new-flow target ~100 ns", 100.0)],
                ),
            ));
        }
        if let Some(b2) = &self.b2 {
            let rows = b2["results"]["rows"].as_array().cloned().unwrap_or_default();
            let cats: Vec<String> = rows.iter().map(|r| format!("{} services", num(f(&r["services"]), 0))).collect();
            let series: Vec<(String, Vec<f64>)> = ["lb", "iptables", "nftables", "direct"]
                .iter()
                .map(|m| ((*m).to_owned(), rows.iter().map(|r| f(&r["modes"][*m]["conn_per_s_median"])).collect()))
                .collect();
            let cats: Vec<&str> = cats.iter().map(String::as_str).collect();
            out.push((
                "b2-connections.svg",
                bar_chart("B2: new connections per second through the node", "conn/s", &cats, &series, false),
            ));
        }
        if let Some(b3) = &self.b3 {
            let r = &b3["results"];
            let lb = r["lb"].as_array().cloned().unwrap_or_default();
            let bases = r["baselines"].as_array().cloned().unwrap_or_default();
            let mut cats = Vec::new();
            let (mut s_lb, mut s_ipt, mut s_nft) = (Vec::new(), Vec::new(), Vec::new());
            for row in &lb {
                let n = &row["services"];
                let b = bases.iter().find(|b| b["services"] == *n);
                cats.push(format!("full sync, {} services", num(f(n), 0)));
                s_lb.push(f(&row["sync_s"]) * 1e3);
                s_ipt.push(b.map_or(f64::NAN, |b| f(&b["iptables_restore_s"]) * 1e3));
                s_nft.push(b.map_or(f64::NAN, |b| f(&b["nft_full_s"]) * 1e3));
            }
            let c = &r["lb_change"];
            let bc = &r["baseline_change"];
            if c.is_object() {
                cats.push(format!("one change p50, {} services", num(f(&c["services"]), 0)));
                s_lb.push(f(&c["latency_ms"]["median"]));
                s_ipt.push(f(&bc["iptables_partial_ms"]["median"]));
                s_nft.push(f(&bc["nft_ms"]["median"]));
                cats.push(format!("one change p99, {} services", num(f(&c["services"]), 0)));
                s_lb.push(f(&c["latency_ms"]["p99"]));
                s_ipt.push(f(&bc["iptables_partial_ms"]["p99"]));
                s_nft.push(f(&bc["nft_ms"]["p99"]));
            }
            let series = vec![("lb".to_owned(), s_lb), ("iptables".to_owned(), s_ipt), ("nftables".to_owned(), s_nft)];
            let cats: Vec<&str> = cats.iter().map(String::as_str).collect();
            out.push((
                "b3-control-plane.svg",
                bar_chart_with(
                    "B3: time to program (ms, log scale)",
                    "ms",
                    &cats,
                    &series,
                    true,
                    &[("sync target 1 s", 1000.0), ("change target 20 ms", 20.0)],
                ),
            ));
        }
        out
    }
}

/// A grouped bar chart: one group per category, one bar per series.
fn bar_chart(title: &str, unit: &str, cats: &[&str], series: &[(String, Vec<f64>)], log: bool) -> String {
    bar_chart_with(title, unit, cats, series, log, &[])
}

/// [`bar_chart`] with dashed horizontal reference lines (label, value), e.g. targets.
fn bar_chart_with(
    title: &str,
    unit: &str,
    cats: &[&str],
    series: &[(String, Vec<f64>)],
    log: bool,
    refs: &[(&str, f64)],
) -> String {
    const COLORS: [&str; 6] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"];
    let (w, h) = (960.0, 420.0);
    let (left, right, top, bottom) = (80.0, 20.0, 50.0, 110.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(refs.iter().map(|r| r.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let vmax = vals.iter().copied().fold(0.0, f64::max).max(1e-9);
    let vmin = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let (lo, hi) =
        if log { (vmin.log10().floor(), vmax.log10().ceil().max(vmin.log10().floor() + 1.0)) } else { (0.0, nice_max(vmax)) };
    let y = |v: f64| -> f64 {
        let frac = if log { (v.max(1e-12).log10() - lo) / (hi - lo) } else { v / hi };
        top + plot_h * (1.0 - frac.clamp(0.0, 1.0))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, esc(title));
    // Grid and y labels.
    let ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| hi * f64::from(i) / 5.0).collect()
    };
    for t in ticks {
        let yy = y(t);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/>"##, w - right);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, yy + 4.0, esc(&short(t)));
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(unit)
    );
    let group_w = plot_w / cats.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (ci, cat) in cats.iter().enumerate() {
        let gx = left + group_w * ci as f64 + group_w * 0.1;
        for (si, (name, v)) in series.iter().enumerate() {
            let Some(val) = v.get(ci).copied().filter(|x| x.is_finite() && *x > 0.0) else { continue };
            let x = gx + bar_w * si as f64;
            let yy = y(val);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                (bar_w - 1.0).max(1.0),
                (top + plot_h - yy).max(0.0),
                COLORS[si % COLORS.len()],
                esc(name),
                esc(&short(val))
            );
        }
        let cx = gx + group_w * 0.4;
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-30 {cx:.1} {:.1})">{}</text>"#,
            top + plot_h + 14.0,
            top + plot_h + 14.0,
            esc(cat)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        w - right,
        top + plot_h
    );
    for (label, v) in refs {
        let yy = y(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#c00" stroke-dasharray="6 4"/>"##,
            w - right
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#c00">{}</text>"##,
            w - right - 4.0,
            yy - 4.0,
            esc(label)
        );
    }
    // Value labels when there are few bars.
    if cats.len() * series.len() <= 16 {
        for (ci, _) in cats.iter().enumerate() {
            let gx = left + group_w * ci as f64 + group_w * 0.1;
            for (si, (_, v)) in series.iter().enumerate() {
                let Some(val) = v.get(ci).copied().filter(|x| x.is_finite() && *x > 0.0) else { continue };
                let x = gx + bar_w * si as f64 + bar_w / 2.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    y(val) - 3.0,
                    esc(&short(val))
                );
            }
        }
    }
    // Legend, top right.
    let total: f64 = series.iter().map(|(n, _)| 24.0 + 7.0 * n.len() as f64).sum();
    let mut lx = w - right - total;
    for (si, (name, _)) in series.iter().enumerate() {
        let _ = writeln!(s, r#"<rect x="{lx:.1}" y="32" width="12" height="12" fill="{}"/>"#, COLORS[si % COLORS.len()]);
        let _ = writeln!(s, r#"<text x="{:.1}" y="43">{}</text>"#, lx + 16.0, esc(name));
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    s.push_str("</svg>\n");
    s
}

fn nice_max(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn short(v: f64) -> String {
    if v == v.round() && v.abs() < 1e4 {
        format!("{v:.0}")
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const METHOD: &str = r#"## Method

**B1** (`tests/benches/b1_datapath.rs`). The embedded eBPF object is loaded by `Dataplane::load`
(the agent's loader) and programmed through the agent's compile → plan → apply path from Service
and EndpointSlice objects. Non-live `BPF_PROG_TEST_RUN` runs a program `repeat` times on one
buffer without restoring it, so after the first DNAT every later iteration would see its own
output. Every measured run therefore goes through a hand-assembled wrapper (loaded with raw
`bpf()` calls) that copies template frame `i mod K` from an array map over the packet and
tail-calls lb's program; the same wrapper tail-calling a one-instruction program runs right after,
and ns/packet = T(wrapper → lb) − T(wrapper → no-op) + T(no-op). Each run's counters must grow by
exactly `repeat` (CT hits, new flows, affinity hits, SNATs, reverse NATs, passes), or the cell is
marked ✗. *New flow*: K = repeat SYNs from distinct source ports, conntrack emptied before each
run, so every iteration misses conntrack, picks a backend with Maglev and inserts its conntrack
entries into a non-full LRU map (one for a flow without source NAT, two for a source-NATed one). *Hit* paths repeat one established flow, so its map buckets stay
in cache; the *cycling* rows spread the same work over up to 20,000 services (new flows) or flows
to different services (hits) and show what a cold cache costs. The test_run CPU is pinned.
Caveat: test_run measures the program only (no driver, no skb allocation, no stack).

**B1 profiles** (`cargo xtask profile [--against REV]`, `bench-results/b1-profile.md`). The B1
bench runs under `perf record -e cpu-clock -g` (a timer, so no hardware PMU is needed); while it
runs, the loaded lb programs' JIT line tables are read with `BPF_OBJ_GET_INFO_BY_FD` (each BTF
source line's address in the JIT image). A sample whose stack passes through an lb program is
charged to its innermost frame: a datapath source line, code inlined from `core` or aya, or the
kernel function called (map lookup, LRU insert, helper); samples go to the case whose result
lines the bench printed next. Shares are of lb's samples; ns is the share times the case's
median in that (sampled, so slower) run. Timer sampling skids: some samples land on the
instruction after a slow one or right after interrupts are enabled again.

**B2** (`tests/benches/b2_e2e.rs`). One topology per mode from `lb_tests::topology` (a node
namespace routing /32 pod addresses over veths, three pods running `lb-testpod`, a client pod),
built fresh for every service count. lb: `Dataplane` loaded and programmed from the bench, TC
programs attached to every pod interface (no agent process). iptables: the ruleset kube-proxy's
iptables mode writes (filter KUBE-FORWARD and firewall chains, nat KUBE-SERVICES → KUBE-SVC-* with
`-m statistic --mode random --probability 1/k …` → KUBE-SEP-* with MASQ marking and DNAT,
KUBE-POSTROUTING masquerade), loaded with `iptables-restore` (the nf_tables backend Debian
ships); the measured service is in the middle of KUBE-SERVICES. nftables: kube-proxy's nftables
layout (service-ips verdict map, per-service `numgen random mod k vmap`, per-endpoint dnat chains,
masquerade marking, filter hooks with the no-endpoint and cluster-ip checks) loaded with
`nft -f`. direct: the client connects to the pod addresses round robin. The other services are
dummies with their own ClusterIPs and 3 endpoints from a pool of 50,000 unused pod addresses.
Every mode's load is checked: no request may fail, the ClusterIP has no route in the node (only a
translation delivers), and each mode's counters count the measured service's connections. The
`lb-testpod` server spawns a thread per connection, which costs every mode the same and compresses
the ratios. CPU per connection is not reported: the machine is shared.

**B3** (`tests/benches/b3_control.rs`). `lb agent --source kube:KUBECONFIG --pin-path …
--metrics-addr none --health-addr none` (release build) against `lb_tests::apiserver::ApiServer`.
Sync completion is polled in the pinned maps every millisecond (the last frontend written, then a
count of all frontends); the agent log's timestamps give when the datapath was loaded. Change
latency: the EndpointSlice of one service gets one endpoint replaced; the clock stops when the new
endpoint's backend id appears in that service's Maglev table (so a new connection can select it).
Baselines run in a namespace of their own with the same services and endpoints; the partial
iptables sync is what kube-proxy's `MinimizeIPTablesRestore` writes (all of KUBE-SERVICES plus the
changed service's chains; stale chains are deleted by kube-proxy later), the nft change is the
transaction kube-proxy's nftables mode sends (the service's chains rewritten, the stale endpoint
chain flushed). Process start-up of `iptables-restore`/`nft` is included, as it is for kube-proxy.
"#;
