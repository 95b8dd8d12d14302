//! `cargo xtask bench --only b1|b3 --against REV`: a benchmark of this tree and of an earlier
//! commit in the same run. REV's sources are exported (`git archive`) under `target/against/`.
//!
//! - B1: REV's B1 bench binary is built there with its own embedded datapath (its map layouts may
//!   differ from ours, so nothing of this tree programs it), and the two binaries run in
//!   interleaved windows (new, old; old, new; ...). Each case's ratio is the median over the
//!   windows of (this tree's median / REV's median) from the same window, so drift of the
//!   machine between windows cancels; pooled medians are reported beside it.
//! - B3: REV's `lb` agent is built there, and this tree's B3 bench runs once with it
//!   (`LB_BIN`) right before it runs with this tree's agent: the same API server objects, the
//!   same harness, minutes apart.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{cargo, root};

/// Ratio targets of issue 15, by B1 case: this tree's cost at most this fraction of REV's.
pub const TARGETS: [(&str, f64); 7] = [
    ("pass_non_service", 0.30),
    ("xdp_pass_non_service", 0.30),
    ("ct_hit", 0.30),
    ("reply_revnat", 0.30),
    ("nodeport_snat_ct_hit", 0.35),
    ("new_flow", 0.40),
    ("nodeport_snat_new_flow", 0.40),
];

/// REV's B1 bench, built.
pub struct Old {
    /// What the user named.
    pub rev: String,
    pub sha: String,
    pub exe: PathBuf,
}

/// REV's `lb` agent, built.
pub struct OldAgent {
    pub rev: String,
    pub sha: String,
    pub lb: PathBuf,
}

/// Exports REV and builds its `lb` (release, with its own datapath; reused on a later run).
pub fn build_old_agent(rev: &str, target: &Path) -> anyhow::Result<OldAgent> {
    let (sha, src) = export(rev, target)?;
    let lb = target.join("against").join(format!("lb-{sha}"));
    if !lb.exists() {
        println!("bench: --against {rev}: building its lb agent");
        let target_dir = target.join("against").join("target");
        let status = cargo()
            .args(["build", "--release", "--package", "lb-userspace", "--bin", "lb"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target_dir)
            .status()
            .context("running cargo build for --against")?;
        if !status.success() {
            bail!("building lb at {sha} failed");
        }
        std::fs::copy(target_dir.join("release").join("lb"), &lb).context("copying REV's lb")?;
    }
    Ok(OldAgent { rev: rev.to_owned(), sha, lb })
}

/// Exports REV and builds its B1 bench (the build is reused on a later run).
pub fn build_old(rev: &str, target: &Path) -> anyhow::Result<Old> {
    let (sha, src) = export(rev, target)?;
    println!("bench: --against {rev}: building its B1 bench (its own datapath)");
    let exe = bench_exe(&src, Some(&target.join("against").join("target")))?;
    Ok(Old { rev: rev.to_owned(), sha, exe })
}

/// REV's short sha and the directory its sources are exported to (once).
fn export(rev: &str, target: &Path) -> anyhow::Result<(String, PathBuf)> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", &format!("{rev}^{{commit}}")])
        .current_dir(root())
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!("--against {rev}: not a commit of this repository ({})", String::from_utf8_lossy(&out.stderr).trim());
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let src = target.join("against").join(format!("src-{sha}"));
    if !src.join("Cargo.toml").exists() {
        println!("bench: --against {rev}: exporting {sha} to {}", src.display());
        std::fs::create_dir_all(&src)?;
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; git archive {sha} | tar -x -C '{}'", src.display()))
            .current_dir(root())
            .status()
            .context("running git archive")?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&src);
            bail!("exporting {sha} failed");
        }
    }
    Ok((sha, src))
}

/// Builds the B1 bench of the workspace at `dir` and returns its executable.
pub fn bench_exe(dir: &Path, target_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["bench", "--package", "lb-tests", "--bench", "b1_datapath", "--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit());
    if let Some(t) = target_dir {
        c.env("CARGO_TARGET_DIR", t);
    }
    let out = c.output().context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the B1 bench in {} failed", dir.display());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "b1_datapath")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no b1_datapath executable")
}

/// Runs `exe` once, writing its results to `out`.
fn run_once(exe: &Path, out: &Path, quick: bool) -> anyhow::Result<Value> {
    let mut c = Command::new(exe);
    c.arg("--bench");
    if quick {
        c.arg("--quick");
    }
    let status = c.arg("--out").arg(out).status().with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!("{} failed", exe.display());
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(out)?)?)
}

/// Runs this tree's and REV's benches in `windows` interleaved windows; returns the results of
/// this tree's first window with an `against` object (see [`compare`]).
pub fn run_windows(new_exe: &Path, old: &Old, windows: usize, quick: bool, out_dir: &Path) -> anyhow::Result<Value> {
    let mut news = Vec::new();
    let mut olds = Vec::new();
    for w in 0..windows {
        let order: [bool; 2] = if w % 2 == 0 { [true, false] } else { [false, true] };
        for is_new in order {
            let (exe, who) = if is_new { (new_exe, "new") } else { (old.exe.as_path(), "old") };
            println!("bench: b1 window {}/{windows}: {}", w + 1, if is_new { "this tree" } else { old.rev.as_str() });
            let v = run_once(exe, &out_dir.join(format!("b1-{who}-{w}.json")), quick)?;
            if is_new { news.push(v) } else { olds.push(v) }
        }
    }
    let mut first = news[0].clone();
    first["against"] = compare(&news, &olds, old);
    Ok(first)
}

/// Per case and service count: both medians pooled over the windows, and the median of the
/// per-window ratios.
fn compare(news: &[Value], olds: &[Value], old: &Old) -> Value {
    let mut cases = Vec::new();
    let rows = |v: &Value| v["results"]["rows"].as_array().cloned().unwrap_or_default();
    for row in rows(&news[0]) {
        let services = row["services"].as_u64().unwrap_or(0);
        for c in row["cases"].as_array().into_iter().flatten() {
            let name = c["case"].as_str().unwrap_or_default().to_owned();
            let ns_of = |results: &[Value]| -> Vec<Vec<f64>> {
                results
                    .iter()
                    .map(|r| {
                        rows(r)
                            .iter()
                            .filter(|row| row["services"].as_u64() == Some(services))
                            .flat_map(|row| row["cases"].as_array().cloned().unwrap_or_default())
                            .filter(|c| c["case"] == name.as_str())
                            .flat_map(|c| c["ns"].as_array().cloned().unwrap_or_default())
                            .filter_map(|x| x.as_f64())
                            .collect()
                    })
                    .collect()
            };
            let (new_ns, old_ns) = (ns_of(news), ns_of(olds));
            if old_ns.iter().all(Vec::is_empty) {
                continue; // a case REV does not have
            }
            let ratios: Vec<f64> = new_ns
                .iter()
                .zip(&old_ns)
                .filter(|(n, o)| !n.is_empty() && !o.is_empty())
                .map(|(n, o)| median(n) / median(o))
                .collect();
            let pooled = |v: &[Vec<f64>]| median(&v.concat());
            let target = TARGETS.iter().find(|(c, _)| *c == name).map(|(_, t)| *t);
            let ratio = median(&ratios);
            cases.push(json!({
                "case": name,
                "services": services,
                "ns": pooled(&new_ns),
                "against_ns": pooled(&old_ns),
                "ratio": ratio,
                "window_ratios": ratios,
                "target": target,
                "met": target.map(|t| ratio <= t),
            }));
        }
    }
    json!({ "rev": old.rev, "sha": old.sha, "windows": news.len(), "cases": cases })
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) { (s[m - 1] + s[m]) / 2.0 } else { s[m] }
}
