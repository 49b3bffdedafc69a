//! Loss curves: `metrics.jsonl` → `loss.png` (plotters, bitmap backend, 800 × 480 px).
//! One line per metric found (`loss`, `eval_loss`, …) against `step`; x in optimizer
//! steps, y in nats per target token (SFT) or per pair (DPO). Text is drawn with the
//! bundled DejaVu Sans (assets/, its licence beside it), so no system fonts are needed.
use crate::error::{io, Result, TrainError};
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registration fails only for bytes that are not a font; the bundled file is one.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draw `keys` of every line of `metrics` (JSONL with a `step` field) into a PNG at `out`
/// (written to a temp file and renamed). Lines without a key are skipped. Errors: unreadable
/// metrics, drawing failures (named by file).
pub fn plot_metrics(metrics: &Path, out: &Path, title: &str, keys: &[&str]) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(io(metrics))?;
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = keys.iter().map(|k| (*k, Vec::new())).collect();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else { continue };
        for (k, pts) in series.iter_mut() {
            if let Some(y) = v.get(*k).and_then(|y| y.as_f64()).filter(|y| y.is_finite()) {
                pts.push((step, y));
            }
        }
    }
    series.retain(|(_, p)| !p.is_empty());
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() {
        // Nothing logged (e.g. --logging-steps 0, no eval): no plot, and none from before.
        let _ = std::fs::remove_file(out);
        return Ok(());
    }
    let (x_max, y_min, y_max) = all.iter().fold((1.0f64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), &(a, b)| (x.max(a), lo.min(b), hi.max(b)));
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    // The temp keeps the `.png` extension: plotters picks the image format from it.
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = bagel_core::atomic::AtomicPath::with_temp_name(out, &format!(".tmp-{}-{name}", std::process::id()));
    register_font();
    let bad = |e: &dyn std::fmt::Display| TrainError::BadFile { path: out.to_path_buf(), message: e.to_string() };
    {
        let root = BitMapBackend::new(tmp.path(), (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| bad(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| bad(&e))?;
        chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| bad(&e))?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, (k, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(|e| bad(&e))?
                .label(*k)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| bad(&e))?;
        root.present().map_err(|e| bad(&e))?;
    }
    tmp.commit().map_err(io(out))
}
