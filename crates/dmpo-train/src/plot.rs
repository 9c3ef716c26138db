//! PNG plots of a run (reward and evaluation accuracy), drawn with a small built-in rasteriser
//! and a 5×7 bitmap font so no system fonts or plotting stack are needed.

use std::path::Path;

use crate::error::{Result, TrainError};

const W: usize = 640;
const H: usize = 400;
const MARGIN_L: usize = 60;
const MARGIN_B: usize = 40;
const MARGIN_T: usize = 30;
const MARGIN_R: usize = 20;

/// An RGB canvas.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.set(x.round() as i64, y.round() as i64, c);
            self.set(x.round() as i64, y.round() as i64 + 1, c);
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        self.set((x + k * 6 + col) as i64, (y + r) as i64, c);
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let io = |e: png::EncodingError| TrainError::io(path, std::io::Error::other(e.to_string()));
        let mut w = enc.write_header().map_err(io)?;
        w.write_image_data(&self.px).map_err(io)
    }
}

/// 5×7 glyphs for digits, a few symbols and lower-case letters (unknown characters are blank).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 15, 1, 17, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        _ => [0; 7],
    }
}

/// A named series of `(x, y)` points.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [127, 127, 127],
];

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws line series with axes, ticks, title and legend into a PNG.
pub fn line_plot(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let mut c = Canvas::new();
    let (x0, y0, x1, y1) = (
        MARGIN_L as f64,
        (H - MARGIN_B) as f64,
        (W - MARGIN_R) as f64,
        MARGIN_T as f64,
    );
    c.line((x0, y0), (x1, y0), [0, 0, 0]);
    c.line((x0, y0), (x0, y1), [0, 0, 0]);
    c.text(MARGIN_L, 8, title, [0, 0, 0]);
    c.text(W / 2 - x_label.len() * 3, H - 14, x_label, [0, 0, 0]);
    if !pts.is_empty() {
        let (mut xmin, mut xmax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut ymin, mut ymax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if xmax <= xmin {
            xmax = xmin + 1.0;
            xmin -= 0.0;
        }
        if ymax <= ymin {
            ymax = ymin + 1.0;
            ymin -= 1.0;
        }
        let sx = |x: f64| x0 + (x - xmin) / (xmax - xmin) * (x1 - x0);
        let sy = |y: f64| y0 - (y - ymin) / (ymax - ymin) * (y0 - y1);
        for k in 0..=4 {
            let v = ymin + (ymax - ymin) * k as f64 / 4.0;
            let y = sy(v);
            c.line((x0 - 4.0, y), (x0, y), [0, 0, 0]);
            c.text(4, (y as usize).saturating_sub(3), &fmt_tick(v), [0, 0, 0]);
            let xv = xmin + (xmax - xmin) * k as f64 / 4.0;
            let x = sx(xv);
            c.line((x, y0), (x, y0 + 4.0), [0, 0, 0]);
            c.text(
                (x as usize).saturating_sub(6),
                (y0 as usize) + 8,
                &fmt_tick(xv),
                [0, 0, 0],
            );
        }
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let p: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            for w in p.windows(2) {
                c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), color);
            }
            for q in &p {
                let (x, y) = (sx(q.0) as i64, sy(q.1) as i64);
                for dx in -1..=1 {
                    for dy in -1..=1 {
                        c.set(x + dx, y + dy, color);
                    }
                }
            }
            let ly = MARGIN_T + 6 + i * 12;
            c.line(
                ((W - 170) as f64, ly as f64 + 3.0),
                ((W - 150) as f64, ly as f64 + 3.0),
                color,
            );
            c.text(W - 144, ly, &s.label, [0, 0, 0]);
        }
    }
    c.save(path)
}

/// Writes `reward.png` (mean reward per step) and, when evaluations exist, `accuracy.png`.
pub fn plot_run(run_dir: &Path) -> Result<()> {
    let metrics = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    let mut reward = Vec::new();
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            if let (Some(s), Some(r)) = (v["step"].as_f64(), v["reward_mean"].as_f64()) {
                reward.push((s + 1.0, r));
            }
        }
    }
    line_plot(
        &run_dir.join("reward.png"),
        "mean reward per rollout step",
        "step",
        &[Series {
            label: "reward".into(),
            points: reward,
        }],
    )?;
    let summary: Option<serde_json::Value> = std::fs::read_to_string(run_dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut acc: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    let mut push = |step: f64, list: &serde_json::Value| {
        for r in list.as_array().into_iter().flatten() {
            if let (Some(len), Some(a)) = (r["gen_length"].as_u64(), r["accuracy_pct"].as_f64()) {
                acc.entry(format!("len {len}")).or_default().push((step, a));
            }
        }
    };
    if let Some(s) = &summary {
        push(0.0, &s["before"]);
    }
    for l in std::fs::read_to_string(run_dir.join("eval.jsonl"))
        .unwrap_or_default()
        .lines()
    {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            push(v["step"].as_f64().unwrap_or(0.0), &v["eval"]);
        }
    }
    if let Some(s) = &summary {
        push(s["steps"].as_f64().unwrap_or(0.0), &s["after"]);
    }
    if !acc.is_empty() {
        let series: Vec<Series> = acc
            .into_iter()
            .map(|(label, points)| Series { label, points })
            .collect();
        line_plot(
            &run_dir.join("accuracy.png"),
            "held-out accuracy (%)",
            "step",
            &series,
        )?;
    }
    Ok(())
}
