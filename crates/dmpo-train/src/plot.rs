//! Line plots of training runs: mean reward per rollout step (`reward.png`) and held-out accuracy
//! per evaluation generation length (`accuracy.png`), plus the generic [`line_plot`] that
//! `cargo xtask compare` uses.
//!
//! Drawing is done by the `plotters` crate: its bitmap backend for `.png` files and its SVG backend
//! for `.svg` files (the format follows the file's extension). Each chart has a title, axis labels,
//! round tick values, a grid at the ticks, and a legend with one entry per series. Text is laid out and
//! rasterised with `ab_glyph` from a font compiled into the binary (a Latin subset of DejaVu Sans,
//! `assets/DejaVuSans-subset.ttf`, licence beside it), so plotting needs no system fonts,
//! fontconfig or freetype, and renders the same on every machine. SVG files keep their text as
//! `<text>` elements in the generic `sans-serif` family.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// The font all plot text is drawn with, registered with `plotters` as `sans-serif`.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Picture size in pixels (SVG: user units).
const SIZE: (u32, u32) = (800, 500);

/// Series colours (the first six of the Tableau 10 palette); series past six reuse them.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// Tick labels wanted on the x and y axes (plotters picks round values near these counts).
const X_TICKS: usize = 8;
const Y_TICKS: usize = 8;

/// Series with at most this many points get a marker at each point (denser ones are lines only).
const MARKER_LIMIT: usize = 40;

/// Pixel height of one legend row and of the legend's frame, used to keep room above the data.
const LEGEND_ROW_PX: f64 = 22.0;
const LEGEND_FRAME_PX: f64 = 24.0;
/// Approximate pixel height of the plotting area (picture less caption, x labels and margins).
const PLOT_AREA_PX: f64 = 380.0;

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output file's extension names no supported format.
    #[error("{path}: unsupported plot format; the file name must end in .png or .svg")]
    UnsupportedFormat {
        /// The output file.
        path: PathBuf,
    },
    /// No series were given.
    #[error("{path}: nothing to plot (no series)")]
    NoSeries {
        /// The output file.
        path: PathBuf,
    },
    /// A series has no point whose coordinates are both finite.
    #[error("{path}: series `{label}` has no point with finite coordinates")]
    EmptySeries {
        /// The output file.
        path: PathBuf,
        /// The series' legend label.
        label: String,
    },
    /// The embedded font could not be parsed.
    #[error("the embedded plot font is not a valid TrueType font")]
    Font,
    /// The backend failed to draw or to write the file.
    #[error("{path}: drawing the plot failed: {message}")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// The backend's error.
        message: String,
    },
}

/// An output format, chosen by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raster PNG image (`.png`).
    Png,
    /// A vector SVG image (`.svg`).
    Svg,
}

impl ImageFormat {
    /// The format named by `path`'s extension (case-insensitive `.png` or `.svg`).
    pub fn from_path(path: &Path) -> std::result::Result<Self, PlotError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(PlotError::UnsupportedFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// A named series of `(x, y)` points, drawn as a line (with a marker at each point when there are
/// few).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A series drawn as its mean line over a shaded band from `lower` to `upper` (e.g. mean ± one
/// standard deviation over seeds).
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// Legend label.
    pub label: String,
    /// `(x, mean, lower, upper)` per point, in drawing order.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// The text around a chart.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// Title above the chart.
    pub title: &'a str,
    /// Label of the horizontal axis.
    pub x: &'a str,
    /// Label of the vertical axis.
    pub y: &'a str,
}

/// Draws `series` as lines with markers, axes with round ticks, `labels` and a legend, into
/// `path` as PNG or SVG by its extension.
///
/// Points with a non-finite coordinate (NaN, ±∞) are left out; a series left with no point, or
/// an empty `series`, is an error. Nothing is written when the format or the data is rejected.
pub fn line_plot(
    path: &Path,
    labels: &Labels<'_>,
    series: &[Series],
) -> std::result::Result<(), PlotError> {
    draw_file(path, labels, series, &[])
}

/// Draws each of `bands` as a shaded area between its lower and upper values with its mean as a
/// line on top, into `path` as PNG or SVG by its extension, with the same axes and legend as
/// [`line_plot`]. Points with a non-finite value are left out.
pub fn band_plot(
    path: &Path,
    labels: &Labels<'_>,
    bands: &[Band],
) -> std::result::Result<(), PlotError> {
    let finite = |p: &&(f64, f64, f64, f64)| {
        p.0.is_finite() && p.1.is_finite() && p.2.is_finite() && p.3.is_finite()
    };
    let series: Vec<Series> = bands
        .iter()
        .map(|b| Series {
            label: b.label.clone(),
            points: b.points.iter().filter(finite).map(|p| (p.0, p.1)).collect(),
        })
        .collect();
    let areas: Vec<Vec<(f64, f64)>> = bands
        .iter()
        .map(|b| {
            let kept: Vec<_> = b.points.iter().filter(finite).collect();
            let upper = kept.iter().map(|p| (p.0, p.3));
            let lower = kept.iter().rev().map(|p| (p.0, p.2));
            upper.chain(lower).collect()
        })
        .collect();
    draw_file(path, labels, &series, &areas)
}

/// Writes the chart of `series` (lines) and `areas` (closed polygons, one per series, shaded in
/// its colour) to `path`.
fn draw_file(
    path: &Path,
    labels: &Labels<'_>,
    series: &[Series],
    areas: &[Vec<(f64, f64)>],
) -> std::result::Result<(), PlotError> {
    let format = ImageFormat::from_path(path)?;
    let finite = finite_series(path, series)?;
    register_font()?;
    let draw_error = |message: String| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    };
    match format {
        ImageFormat::Png => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw_chart(&root, labels, &finite, areas).map_err(|e| draw_error(e.to_string()))?;
            root.present().map_err(|e| draw_error(e.to_string()))
        }
        ImageFormat::Svg => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw_chart(&root, labels, &finite, areas).map_err(|e| draw_error(e.to_string()))?;
            root.present().map_err(|e| draw_error(e.to_string()))
        }
    }
}

/// Registers the embedded font as `sans-serif` once per process.
fn register_font() -> std::result::Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// `series` with their non-finite points dropped; errors when nothing would be drawn.
fn finite_series(path: &Path, series: &[Series]) -> std::result::Result<Vec<Series>, PlotError> {
    if series.is_empty() {
        return Err(PlotError::NoSeries {
            path: path.to_path_buf(),
        });
    }
    series
        .iter()
        .map(|s| {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if points.is_empty() {
                Err(PlotError::EmptySeries {
                    path: path.to_path_buf(),
                    label: s.label.clone(),
                })
            } else {
                Ok(Series {
                    label: s.label.clone(),
                    points,
                })
            }
        })
        .collect()
}

/// Draws the whole chart on `root`; `series` are non-empty and finite, `areas` (shaded under the
/// lines, the i-th in the i-th series' colour) finite.
fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &Labels<'_>,
    series: &[Series],
    areas: &[Vec<(f64, f64)>],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(areas.iter().flatten().copied())
    };
    let x_range = padded_range(points().map(|p| p.0), 0.02, 0.0);
    let legend_px = LEGEND_FRAME_PX + LEGEND_ROW_PX * series.len() as f64;
    let legend_share = (legend_px / PLOT_AREA_PX).min(0.5);
    let y_range = padded_range(points().map(|p| p.1), 0.06, legend_share);
    let x_decimals = tick_decimals(&x_range, X_TICKS);
    let y_decimals = tick_decimals(&y_range, Y_TICKS);
    let x_tick = move |v: &f64| tick_label(*v, x_decimals);
    let y_tick = move |v: &f64| tick_label(*v, y_decimals);

    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, ("sans-serif", 22).into_font())
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .x_desc(labels.x)
        .y_desc(labels.y)
        .label_style(("sans-serif", 14).into_font())
        .axis_desc_style(("sans-serif", 16).into_font())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .axis_style(BLACK.mix(0.8))
        .draw()?;
    for (i, area) in areas.iter().enumerate() {
        if area.len() > 2 {
            let color = COLORS[i % COLORS.len()];
            chart.draw_series(std::iter::once(Polygon::new(area.clone(), color.mix(0.18))))?;
        }
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let marker = if s.points.len() <= MARKER_LIMIT { 3 } else { 0 };
        chart
            .draw_series(
                LineSeries::new(s.points.iter().copied(), color.stroke_width(2)).point_size(marker),
            )?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .margin(10)
        .label_font(("sans-serif", 14).into_font())
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// The span of `values` widened by `pad` of it on each side, plus `headroom` of the final span
/// on top (room for the legend); a single value gets a span of one unit (or 10% of it) around it.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64, headroom: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let half = if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
        (hi - lo) * (0.5 + pad)
    } else {
        (0.1 * lo.abs()).max(1.0)
    };
    let mid = (lo + hi) / 2.0;
    let (lo, hi) = (mid - half, mid + half);
    let top = hi + (hi - lo) * headroom / (1.0 - headroom);
    lo..top
}

/// Decimals that tell apart ticks about `range / ticks` apart.
fn tick_decimals(range: &Range<f64>, ticks: usize) -> usize {
    let step = (range.end - range.start) / ticks.max(1) as f64;
    (1.0 - step.log10().floor()).clamp(0.0, 12.0) as usize
}

/// `v` with `decimals` decimals, trailing zeros (and a bare point) removed, `-0` as `0`.
fn tick_label(v: f64, decimals: usize) -> String {
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.truncate(s.trim_end_matches('0').trim_end_matches('.').len());
    }
    if s == "-0" {
        s.remove(0);
    }
    s
}

/// The text of `path`, or `None` when the file does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// `(step, mean reward)` of each `metrics.jsonl` row, steps counted from 1.
fn reward_points(run_dir: &Path) -> Result<Vec<(f64, f64)>> {
    let text = read_optional(&run_dir.join("metrics.jsonl"))?.unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()? + 1.0, v["reward_mean"].as_f64()?)))
        .collect())
}

/// Accuracy (%) against step, one series per evaluated generation length (ascending): the
/// `before` evaluation of `summary.json` at step 0, each `eval.jsonl` row at its step, and the
/// `after` evaluation at the final step.
fn accuracy_series(run_dir: &Path) -> Result<Vec<Series>> {
    let summary: Option<serde_json::Value> =
        read_optional(&run_dir.join("summary.json"))?.and_then(|t| serde_json::from_str(&t).ok());
    let mut by_length: std::collections::BTreeMap<u64, Vec<(f64, f64)>> = Default::default();
    let mut push = |step: f64, list: &serde_json::Value| {
        for r in list.as_array().into_iter().flatten() {
            if let (Some(len), Some(a)) = (r["gen_length"].as_u64(), r["accuracy_pct"].as_f64()) {
                by_length.entry(len).or_default().push((step, a));
            }
        }
    };
    if let Some(s) = &summary {
        push(0.0, &s["before"]);
    }
    let evals = read_optional(&run_dir.join("eval.jsonl"))?.unwrap_or_default();
    for v in evals
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        push(v["step"].as_f64().unwrap_or(0.0), &v["eval"]);
    }
    if let Some(s) = &summary {
        push(s["steps"].as_f64().unwrap_or(0.0), &s["after"]);
    }
    Ok(by_length
        .into_iter()
        .map(|(len, points)| Series {
            label: format!("gen length {len}"),
            points,
        })
        .collect())
}

/// Writes the plots of the run in `run_dir`: `reward.png` (mean reward per rollout step, from
/// `metrics.jsonl`) and `accuracy.png` (held-out accuracy per generation length, from
/// `summary.json` and `eval.jsonl`).
///
/// Missing files count as empty and lines that are not JSON rows with the expected fields are
/// skipped; a plot with no data is not written (no `reward.png` before the first step, no
/// `accuracy.png` without evaluations).
pub fn plot_run(run_dir: &Path) -> Result<()> {
    let reward = reward_points(run_dir)?;
    if !reward.is_empty() {
        line_plot(
            &run_dir.join("reward.png"),
            &Labels {
                title: "Mean reward per rollout step",
                x: "step",
                y: "mean reward",
            },
            &[Series {
                label: "reward".into(),
                points: reward,
            }],
        )?;
    }
    let accuracy = accuracy_series(run_dir)?;
    if !accuracy.is_empty() {
        line_plot(
            &run_dir.join("accuracy.png"),
            &Labels {
                title: "Held-out accuracy",
                x: "step",
                y: "accuracy (%)",
            },
            &accuracy,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory with 40 rollout steps and evaluations at lengths 128 and 256 every 10
    /// steps (before, steps 10/20/30 in `eval.jsonl`, after at 40).
    fn synthetic_run(dir: &Path) {
        let mut metrics = String::new();
        for step in 0..40 {
            let reward = 0.2 + 0.5 * (1.0 - (-(step as f64) / 12.0).exp());
            metrics.push_str(&format!(
                "{{\"step\":{step},\"reward_mean\":{reward},\"loss\":0.1}}\n"
            ));
        }
        std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
        let eval = |a128: f64, a256: f64| {
            serde_json::json!([
                {"gen_length": 128, "correct": 1, "total": 2, "accuracy_pct": a128, "items": 2},
                {"gen_length": 256, "correct": 1, "total": 2, "accuracy_pct": a256, "items": 2},
            ])
        };
        let mut evals = String::new();
        for (step, a, b) in [(10, 41.0, 52.5), (20, 47.5, 58.0), (30, 50.0, 61.25)] {
            evals.push_str(&serde_json::json!({"step": step, "eval": eval(a, b)}).to_string());
            evals.push('\n');
        }
        std::fs::write(dir.join("eval.jsonl"), evals).unwrap();
        let summary = serde_json::json!({
            "before": eval(30.0, 44.0), "after": eval(52.0, 63.5), "steps": 40,
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }

    /// Width, height and RGB pixels of the PNG at `path`.
    fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        let pixels = img.pixels().map(|p| p.0).collect();
        (img.width(), img.height(), pixels)
    }

    /// The contents of every `<text>` element of the SVG at `path` (which must parse as XML).
    fn svg_texts(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    fn labels() -> Labels<'static> {
        Labels {
            title: "Held-out accuracy",
            x: "step",
            y: "accuracy (%)",
        }
    }

    #[test]
    fn plot_run_writes_reward_and_accuracy_pngs() {
        let dir = tempfile::tempdir().unwrap();
        synthetic_run(dir.path());
        plot_run(dir.path()).unwrap();
        for name in ["reward.png", "accuracy.png"] {
            let (w, h, pixels) = decode_png(&dir.path().join(name));
            assert_eq!((w, h), SIZE, "{name}");
            assert!(
                pixels.contains(&[31, 119, 180]),
                "{name}: first series colour"
            );
            assert!(pixels.contains(&[0, 0, 0]), "{name}: black text");
        }
        let (_, _, pixels) = decode_png(&dir.path().join("accuracy.png"));
        assert!(pixels.contains(&[214, 39, 40]), "second series (len 256)");
    }

    #[test]
    fn accuracy_has_one_series_per_gen_length() {
        let dir = tempfile::tempdir().unwrap();
        synthetic_run(dir.path());
        let series = accuracy_series(dir.path()).unwrap();
        let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["gen length 128", "gen length 256"]);
        assert_eq!(
            series[0].points,
            [
                (0.0, 30.0),
                (10.0, 41.0),
                (20.0, 47.5),
                (30.0, 50.0),
                (40.0, 52.0)
            ]
        );
        assert_eq!(series[1].points.len(), 5);
        assert_eq!(reward_points(dir.path()).unwrap()[0].0, 1.0);
    }

    #[test]
    fn svg_has_title_axis_labels_legend_and_round_ticks() {
        let dir = tempfile::tempdir().unwrap();
        synthetic_run(dir.path());
        let path = dir.path().join("accuracy.svg");
        line_plot(&path, &labels(), &accuracy_series(dir.path()).unwrap()).unwrap();
        let texts = svg_texts(&path);
        for want in [
            "Held-out accuracy",
            "step",
            "accuracy (%)",
            "gen length 128",
            "gen length 256",
        ] {
            assert!(texts.iter().any(|t| t == want), "`{want}` in {texts:?}");
        }
        let ticks: Vec<f64> = texts.iter().filter_map(|t| t.parse().ok()).collect();
        for want in [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0] {
            assert!(ticks.contains(&want), "tick {want} in {texts:?}");
        }
        for t in &ticks {
            assert_eq!(t % 5.0, 0.0, "round tick {t} in {texts:?}");
        }
    }

    #[test]
    fn svg_extension_is_case_insensitive_and_small_ranges_get_decimal_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reward.SVG");
        let series = [Series {
            label: "reward".into(),
            points: vec![(1.0, 0.21), (2.0, 0.25), (3.0, f64::NAN), (4.0, 0.32)],
        }];
        line_plot(&path, &labels(), &series).unwrap();
        let texts = svg_texts(&path);
        assert!(texts.iter().any(|t| t == "reward"), "{texts:?}");
        let y_ticks: Vec<&String> = texts.iter().filter(|t| t.starts_with("0.")).collect();
        assert!(y_ticks.len() >= 3, "decimal y ticks in {texts:?}");
        for t in y_ticks {
            assert!(t.len() <= 4, "round tick `{t}`");
        }
    }

    #[test]
    fn a_single_point_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        let series = [Series {
            label: "only".into(),
            points: vec![(0.0, 50.0)],
        }];
        line_plot(&path, &labels(), &series).unwrap();
        assert_eq!(decode_png(&path).0, SIZE.0);
    }

    #[test]
    fn bad_input_is_a_clear_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ok = [Series {
            label: "a".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0)],
        }];
        let jpg = dir.path().join("out.jpg");
        let err = line_plot(&jpg, &labels(), &ok).unwrap_err();
        assert!(matches!(err, PlotError::UnsupportedFormat { .. }));
        assert!(err.to_string().contains("out.jpg"), "{err}");
        assert!(err.to_string().contains(".png or .svg"), "{err}");
        let bare = dir.path().join("out");
        assert!(matches!(
            line_plot(&bare, &labels(), &ok),
            Err(PlotError::UnsupportedFormat { .. })
        ));

        let png = dir.path().join("out.png");
        assert!(matches!(
            line_plot(&png, &labels(), &[]),
            Err(PlotError::NoSeries { .. })
        ));
        let nan = [Series {
            label: "broken".into(),
            points: vec![(0.0, f64::NAN), (f64::INFINITY, 1.0)],
        }];
        let err = line_plot(&png, &labels(), &nan).unwrap_err();
        assert!(err.to_string().contains("`broken`"), "{err}");
        let empty = [Series {
            label: "empty".into(),
            points: vec![],
        }];
        assert!(matches!(
            line_plot(&png, &labels(), &empty),
            Err(PlotError::EmptySeries { .. })
        ));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

        let missing_dir = dir.path().join("no/such/dir/out.png");
        assert!(matches!(
            line_plot(&missing_dir, &labels(), &ok),
            Err(PlotError::Draw { .. })
        ));
    }

    #[test]
    fn plot_run_skips_plots_without_data() {
        let dir = tempfile::tempdir().unwrap();
        plot_run(dir.path()).unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

        // Rewards but no evaluations: only the reward plot.
        synthetic_run(dir.path());
        std::fs::remove_file(dir.path().join("eval.jsonl")).unwrap();
        std::fs::remove_file(dir.path().join("summary.json")).unwrap();
        plot_run(dir.path()).unwrap();
        assert!(dir.path().join("reward.png").exists());
        assert!(!dir.path().join("accuracy.png").exists());

        // A missing eval.jsonl still plots the before/after points of summary.json.
        synthetic_run(dir.path());
        std::fs::remove_file(dir.path().join("eval.jsonl")).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "not json\n").unwrap();
        let series = accuracy_series(dir.path()).unwrap();
        assert_eq!(series[0].points, [(0.0, 30.0), (40.0, 52.0)]);
        assert!(reward_points(dir.path()).unwrap().is_empty());
        plot_run(dir.path()).unwrap();
        assert!(dir.path().join("accuracy.png").exists());
    }

    #[test]
    fn tick_labels_are_trimmed() {
        assert_eq!(tick_label(40.0, 1), "40");
        assert_eq!(tick_label(0.25, 3), "0.25");
        assert_eq!(tick_label(-0.0001, 2), "0");
        assert_eq!(tick_label(1920.0, 0), "1920");
        assert_eq!(tick_decimals(&(0.0..60.0), 6), 0);
        assert_eq!(tick_decimals(&(0.2..0.35), 6), 3);
    }
}
