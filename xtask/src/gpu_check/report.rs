//! The GPU check's report: everything its steps left in the output directory —
//! `steps.tsv` (each step's exit status and seconds, written by `scripts/gpu-check.sh`),
//! `env.txt`, `geometry.json`, `parity-f32.json`, `parity-bf16.json`, `ours.json` and
//! `pytorch.json` — gathered into `report.json` and `report.md`, with the ratio ours/PyTorch
//! of every figure. Rewritten after every step, so a run cut short reports what finished.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::geometry::Geometry;
use super::measure::{Measurement, Op};
use super::parity::ParityReport;

/// Our side's measurements (`ours.json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OursFile {
    /// The backend measured.
    pub backend: String,
    /// The device measured on.
    pub device: String,
    /// Each operation's figures, by [`Op::key`].
    pub measurements: BTreeMap<String, Measurement>,
    /// Each failed operation's error, by [`Op::key`].
    pub errors: BTreeMap<String, String>,
}

/// One row of `steps.tsv`.
#[derive(Debug, Clone, Serialize)]
struct Step {
    name: String,
    exit_status: i64,
    seconds: f64,
}

/// One operation's two sides.
#[derive(Debug, Clone, Serialize)]
struct Row {
    op: String,
    title: String,
    ours: Option<Measurement>,
    ours_error: Option<String>,
    pytorch: Option<Value>,
    /// Seconds, ours / PyTorch's (above 1: we are slower).
    time_ratio: Option<f64>,
    /// Peak memory, ours / PyTorch's.
    memory_ratio: Option<f64>,
}

/// What `report.json` holds.
#[derive(Debug, Serialize)]
struct Report {
    environment: String,
    steps: Vec<Step>,
    geometry: Option<Geometry>,
    parity: BTreeMap<String, ParityReport>,
    operations: Vec<Row>,
    pytorch_checks: Value,
    pytorch_errors: Value,
    /// Every step ran and exited 0, every parity comparison and reference check passed.
    complete: bool,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn read_steps(path: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Step {
                name: f.next()?.to_string(),
                exit_status: f.next()?.trim().parse().ok()?,
                seconds: f.next()?.trim().parse().ok()?,
            })
        })
        .collect()
}

/// `a / b` where both are positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Writes `report.json` and `report.md` in `dir` from what its steps left there.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    let environment = std::fs::read_to_string(dir.join("env.txt")).unwrap_or_default();
    let steps = read_steps(&dir.join("steps.tsv"));
    let geometry: Option<Geometry> = read(&dir.join("geometry.json"));
    let mut parity = BTreeMap::new();
    for dtype in ["f32", "bf16"] {
        if let Some(p) = read::<ParityReport>(&dir.join(format!("parity-{dtype}.json"))) {
            parity.insert(dtype.to_string(), p);
        }
    }
    let ours: OursFile = read(&dir.join("ours.json")).unwrap_or_default();
    let pytorch: Value = read(&dir.join("pytorch.json")).unwrap_or(Value::Null);
    let operations: Vec<Row> = Op::ALL
        .iter()
        .map(|&op| {
            let key = op.key();
            let mine = ours.measurements.get(key).cloned();
            let theirs = pytorch["measurements"].get(key).cloned();
            let field = |v: &Option<Value>, name: &str| v.as_ref().and_then(|v| v[name].as_f64());
            Row {
                op: key.to_string(),
                title: geometry.as_ref().map_or(key.to_string(), |g| op.title(g)),
                time_ratio: ratio(mine.as_ref().map(|m| m.seconds), field(&theirs, "seconds")),
                memory_ratio: ratio(
                    mine.as_ref().map(|m| m.peak_bytes as f64),
                    field(&theirs, "peak_bytes"),
                ),
                ours_error: ours.errors.get(key).cloned(),
                ours: mine,
                pytorch: theirs,
            }
        })
        .collect();
    let checks = pytorch["checks"].clone();
    let checks_passed = checks
        .as_array()
        .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["passed"] != Value::Bool(false)));
    let complete = !steps.is_empty()
        && steps.iter().all(|s| s.exit_status == 0)
        && parity.len() == 2
        && parity.values().all(|p| p.passed)
        && checks_passed
        && operations
            .iter()
            .all(|r| r.ours.is_some() && r.pytorch.is_some());
    let report = Report {
        environment,
        steps,
        geometry,
        parity,
        operations,
        pytorch_errors: pytorch["errors"].clone(),
        pytorch_checks: checks,
        complete,
    };
    super::write_json(&dir.join("report.json"), &report)?;
    std::fs::write(dir.join("report.md"), markdown(&report, &ours, &pytorch))?;
    Ok(())
}

fn gb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1e9)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".to_string(), f)
}

fn markdown(r: &Report, ours: &OursFile, pytorch: &Value) -> String {
    let mut s = String::new();
    let scale = r.geometry.as_ref().map_or("?", |g| g.scale.as_str());
    let _ = writeln!(
        s,
        "# dmpo-rs GPU check: scale {scale}, backend {}\n",
        if ours.backend.is_empty() {
            "?"
        } else {
            &ours.backend
        }
    );
    let _ = writeln!(
        s,
        "Status: **{}**\n",
        if r.complete {
            "complete, every check passed"
        } else {
            "incomplete or failed (see the steps and checks below)"
        }
    );
    let _ = writeln!(s, "```\n{}\n```\n", r.environment.trim_end());

    let _ = writeln!(
        s,
        "## Steps\n\n| step | exit status | seconds |\n|---|---|---|"
    );
    for step in &r.steps {
        let status = match step.exit_status {
            0 => "0".to_string(),
            124 | 137 => format!("{} (timed out)", step.exit_status),
            e => format!("**{e}**"),
        };
        let _ = writeln!(s, "| {} | {status} | {:.1} |", step.name, step.seconds);
    }

    let _ = writeln!(
        s,
        "\n## 1. Parity against flex (golden tiny model)\n\nf32: within 1e-4 and token-exact. bf16: within three times bf16's own rounding error, measured as flex's bf16 result against its f32 result (docs/gpu.md).\n"
    );
    for (dtype, p) in &r.parity {
        let _ = writeln!(
            s,
            "### {dtype} ({} against flex, {:.1} s): {}\n\n| quantity | difference | tolerance | |\n|---|---|---|---|",
            p.backend,
            p.seconds,
            if p.passed { "passed" } else { "**FAILED**" }
        );
        for c in &p.comparisons {
            let _ = writeln!(
                s,
                "| {} | {:.3e} | {:.3e} | {} |",
                c.name,
                c.difference,
                c.tolerance,
                if c.passed { "ok" } else { "**fail**" }
            );
        }
        s.push('\n');
    }

    let device = pytorch["device"].as_str().unwrap_or("?");
    let _ = writeln!(
        s,
        "## 2–3. Ours ({} on {}) beside PyTorch {} ({device}), bf16\n",
        ours.backend,
        ours.device,
        pytorch["torch"].as_str().unwrap_or("?")
    );
    if let Some(g) = &r.geometry {
        let _ = writeln!(
            s,
            "Model: `{}`, random {} weights made on the device. Update micro_batch from `dmpo plan` for {} GB: {} with gradient checkpointing (planned peak {} GB), {} without (planned {} GB).\n",
            g.config.display(),
            g.dtype,
            gb(g.device_memory_bytes as f64),
            g.update.micro_batch,
            gb(g.update.planned_peak_bytes as f64),
            g.update.micro_batch_plain,
            gb(g.update.planned_peak_plain_bytes as f64)
        );
    }
    let _ = writeln!(
        s,
        "| operation | ours s | PyTorch s | time ours/PyTorch | ours tokens/s | PyTorch tokens/s | ours peak GB | PyTorch peak GB | memory ours/PyTorch |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &r.operations {
        let theirs = |name: &str| row.pytorch.as_ref().and_then(|v| v[name].as_f64());
        let mine_s = match (&row.ours, &row.ours_error) {
            (Some(m), _) => format!("{:.3}", m.seconds),
            (None, Some(_)) => "error".to_string(),
            (None, None) => "—".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {mine_s} | {} | {} | {} | {} | {} | {} | {} |",
            row.title,
            opt(theirs("seconds"), |v| format!("{v:.3}")),
            opt(row.time_ratio, |v| format!("{v:.2}")),
            opt(row.ours.as_ref().and_then(|m| m.tokens_per_s), |v| format!(
                "{v:.0}"
            )),
            opt(theirs("tokens_per_s"), |v| format!("{v:.0}")),
            opt(row.ours.as_ref().map(|m| m.peak_bytes as f64), gb),
            opt(theirs("peak_bytes"), gb),
            opt(row.memory_ratio, |v| format!("{v:.2}")),
        );
    }
    let _ = writeln!(
        s,
        "\nMemory, ours: {}; PyTorch: {}.\n",
        ours_memory(ours),
        pytorch_memory(pytorch)
    );
    let _ = writeln!(s, "Details:\n");
    for row in &r.operations {
        if let Some(m) = &row.ours {
            let _ = writeln!(s, "- ours, {}: {}", row.op, m.detail);
        }
        if let Some(e) = &row.ours_error {
            let _ = writeln!(s, "- ours, {}: **error**: {e}", row.op);
        }
        if let Some(d) = row.pytorch.as_ref().and_then(|v| v["detail"].as_str()) {
            let _ = writeln!(s, "- PyTorch, {}: {d}", row.op);
        }
    }

    let _ = writeln!(s, "\n## PyTorch reference checks (before timing)\n\n| check | passed | detail |\n|---|---|---|");
    for c in r.pytorch_checks.as_array().into_iter().flatten() {
        let passed = match &c["passed"] {
            Value::Bool(true) => "ok",
            Value::Bool(false) => "**fail**",
            _ => "not run",
        };
        let _ = writeln!(
            s,
            "| {} | {passed} | {} |",
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        );
    }
    for e in r.pytorch_errors.as_array().into_iter().flatten() {
        let _ = writeln!(s, "\nPyTorch error: {}", e.as_str().unwrap_or("?"));
    }
    s
}

fn ours_memory(ours: &OursFile) -> String {
    ours.measurements
        .values()
        .next()
        .map_or("—".to_string(), |m| m.memory.clone())
}

fn pytorch_memory(pytorch: &Value) -> String {
    pytorch["measurements"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|m| m["memory"].as_str())
        .unwrap_or("—")
        .to_string()
}
