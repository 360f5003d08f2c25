//! `rank_sweep.png`: the trade-off the seed article describes — rank against trainable
//! parameters, memory, speed and (with `--eval`) accuracy — as small panels sharing the rank axis.

use std::path::Path;

use plotters::prelude::*;

use super::report::SweepRow;
use crate::error::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// One panel: a quantity against rank (log₂ axis, one point per rank).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    rows: &[SweepRow],
    title: &str,
    value: impl Fn(&SweepRow) -> Option<f64>,
    text: bool,
) -> Result<()> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| value(r).map(|v| ((r.rank as f64).log2(), v)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let x0 = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min) - 0.3;
    let x1 = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max) + 0.3;
    let ymax = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let err = |e: &dyn std::fmt::Display| TrainError::Plot(format!("rank_sweep.png: {e}"));
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .x_label_area_size(if text { 35 } else { 5 })
        .y_label_area_size(if text { 70 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 18));
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, 0f64..ymax)
        .map_err(|e| err(&e))?;
    if text {
        // Ticks at whole powers of two only: the axis is log₂ r.
        chart
            .configure_mesh()
            .x_desc("LoRA rank r")
            .x_labels((x1 - x0).ceil() as usize + 1)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{}", 2f64.powf(x.round()))
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Draws the sweep: trainable parameters, peak memory, tokens/s, and accuracy when measured.
///
/// # Errors
/// When the picture cannot be drawn or written.
pub fn plot_sweep(path: &Path, rows: &[SweepRow], title: &str) -> Result<()> {
    let text = crate::report::register_any_font();
    let err = |e: &dyn std::fmt::Display| TrainError::Plot(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = if text {
        root.titled(title, ("sans-serif", 24))
            .map_err(|e| err(&e))?
    } else {
        root
    };
    let areas = root.split_evenly((2, 2));
    panel(
        &areas[0],
        rows,
        "trainable parameters (millions)",
        |r| Some(r.trainable_params as f64 / 1e6),
        text,
    )?;
    panel(
        &areas[1],
        rows,
        "peak memory (GiB)",
        |r| Some(r.peak_rss_gib),
        text,
    )?;
    panel(
        &areas[2],
        rows,
        "training tokens / s",
        |r| Some(r.tokens_per_s),
        text,
    )?;
    panel(
        &areas[3],
        rows,
        "TREC accuracy after fine-tuning (%)",
        |r| r.accuracy.map(|a| 100.0 * a),
        text,
    )?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
