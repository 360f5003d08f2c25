//! What a run leaves behind for people: `metrics.jsonl` (one line per step), `summary.json`,
//! and `loss.png` — the training loss curve with the evaluation points, drawn with `plotters`.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::trainer::StepMetrics;

/// Appends one JSON line per step to `metrics.jsonl` (flushed every line, so a crash loses
/// nothing already logged).
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens (appending) `dir/metrics.jsonl`.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(MetricsLog { path, file })
    }

    /// Writes one record (any serializable value) as a line.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn write<T: serde::Serialize>(&mut self, record: &T) -> Result<(), TrainError> {
        let line =
            serde_json::to_string(record).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads back the step lines of a `metrics.jsonl` (other lines are skipped). A resumed run keeps
/// only the lines up to `upto` steps, so the curve has no duplicates.
///
/// # Errors
/// [`TrainError::Io`] if the file cannot be read.
pub fn read_metrics(path: &Path, upto: usize) -> Result<Vec<StepMetrics>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<StepMetrics>(l).ok())
        .filter(|m| m.step <= upto)
        .collect())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Registers a TrueType font for chart text, searching the usual system folders; returns
/// whether one was found (without one the chart is drawn without text).
pub fn register_any_font() -> bool {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "/Library/Fonts/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws `loss.png`: training loss per step (line) and held-out loss at evaluation steps
/// (points).
///
/// # Errors
/// [`TrainError::Plot`] if the picture cannot be drawn or written.
pub fn plot_loss(
    path: &Path,
    steps: &[StepMetrics],
    evals: &[(usize, EvalReport)],
    title: &str,
) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Plot(format!("{}: {e}", path.display()));
    let text = register_any_font();
    let max_step = steps
        .iter()
        .map(|m| m.step)
        .chain(evals.iter().map(|e| e.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let values = steps
        .iter()
        .map(|m| m.loss)
        .chain(evals.iter().map(|e| e.1.loss))
        .filter(|v| v.is_finite());
    let max_loss = values.fold(0.0f64, f64::max).max(1e-3) * 1.05;

    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(if text { 60 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder
        .build_cartesian_2d(0usize..max_step, 0f64..max_loss)
        .map_err(|e| err(&e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss (nats / answer token)")
            .draw()
            .map_err(|e| err(&e))?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .draw()
            .map_err(|e| err(&e))?;
    }
    let train = chart
        .draw_series(LineSeries::new(
            steps.iter().map(|m| (m.step, m.loss)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    if text {
        train
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    let eval = chart
        .draw_series(
            evals
                .iter()
                .map(|(s, e)| Circle::new((*s, e.loss), 6, RED.filled())),
        )
        .map_err(|e| err(&e))?;
    if text {
        eval.label("held-out loss")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
