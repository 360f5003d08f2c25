//! Where an AdaLoRA run put its rank budget: the final rank of every adapted matrix as a
//! layer × module-kind grid, printed as a small table and drawn as a heat map (`ranks.png`),
//! and the end of an AdaLoRA run that produces them ([`finish_adalora`]).

use std::path::Path;

use lora_core::AdaptReport;
use lora_core::adalora::allocator::apply_rank_pattern;
use lora_core::adalora::{RankAllocator, final_ranks};
use lora_core::peft;
use lora_models::Llama;
use plotters::prelude::*;
use serde::Serialize;

use crate::error::TrainError;
use crate::report::register_any_font;

/// Final ranks arranged by layer (columns) and module kind (rows, in model order).
#[derive(Clone, Debug, PartialEq)]
pub struct RankGrid {
    /// Module kinds in the order the model lists them (`q_proj`, `k_proj`, ...).
    pub kinds: Vec<String>,
    /// Layer indices, ascending.
    pub layers: Vec<usize>,
    /// `ranks[kind][layer]`; `None` where that matrix is not adapted.
    pub ranks: Vec<Vec<Option<usize>>>,
    /// The rank every matrix started with (the colour scale's top).
    pub init_r: usize,
}

/// `(layer, kind)` of `model.layers.<i>.<block>.<kind>`; `None` for paths outside the layer
/// stack (e.g. `lm_head`).
fn layer_and_kind(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("model.layers.")?;
    let (index, tail) = rest.split_once('.')?;
    Some((index.parse().ok()?, tail.rsplit('.').next()?))
}

impl RankGrid {
    /// Builds the grid from `(module path, final rank)` pairs in model order. Modules outside
    /// the layer stack appear as kinds of their own in a layer-less column (they are rare: an
    /// adapted `lm_head`), so every rank is shown.
    pub fn new(ranks: &[(String, usize)], init_r: usize) -> Self {
        let mut kinds: Vec<String> = Vec::new();
        let mut layers: Vec<usize> = Vec::new();
        let parsed: Vec<(usize, String, usize)> = ranks
            .iter()
            .map(|(p, r)| match layer_and_kind(p) {
                Some((l, k)) => (l, k.to_string(), *r),
                None => (usize::MAX, p.clone(), *r),
            })
            .collect();
        for (l, k, _) in &parsed {
            if !kinds.contains(k) {
                kinds.push(k.clone());
            }
            if !layers.contains(l) {
                layers.push(*l);
            }
        }
        layers.sort_unstable();
        let mut grid = vec![vec![None; layers.len()]; kinds.len()];
        for (l, k, r) in parsed {
            let (ki, li) = (
                kinds.iter().position(|x| *x == k).unwrap_or(0),
                layers.binary_search(&l).unwrap_or(0),
            );
            grid[ki][li] = Some(r);
        }
        RankGrid {
            kinds,
            layers,
            ranks: grid,
            init_r,
        }
    }

    /// Kept ranks summed over every adapted matrix.
    pub fn total(&self) -> usize {
        self.ranks.iter().flatten().flatten().sum()
    }

    /// Mean final rank per adapted matrix.
    pub fn average(&self) -> f64 {
        let n = self.ranks.iter().flatten().flatten().count();
        self.total() as f64 / n.max(1) as f64
    }

    /// The grid as text: one row per module kind, one column per layer, the kind's mean last.
    pub fn table(&self) -> String {
        let width = self.kinds.iter().map(String::len).max().unwrap_or(5).max(5);
        let label = |l: usize| {
            if l == usize::MAX {
                "-".to_string()
            } else {
                l.to_string()
            }
        };
        let mut out = format!("{:<width$}", "layer");
        for l in &self.layers {
            out += &format!(" {:>2}", label(*l));
        }
        out += "   mean\n";
        for (kind, row) in self.kinds.iter().zip(&self.ranks) {
            out += &format!("{kind:<width$}");
            for r in row {
                out += &r.map_or("  .".to_string(), |r| format!(" {r:>2}"));
            }
            let kept: Vec<usize> = row.iter().flatten().copied().collect();
            let mean = kept.iter().sum::<usize>() as f64 / kept.len().max(1) as f64;
            out += &format!("  {mean:>5.2}\n");
        }
        out
    }
}

/// Draws the heat map: layers left to right, module kinds top to bottom, darker = more rank
/// kept, the rank written in each cell when a font is available.
///
/// # Errors
/// [`TrainError::Plot`] if the picture cannot be drawn or written.
pub fn plot_rank_heatmap(path: &Path, grid: &RankGrid, title: &str) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Plot(format!("{}: {e}", path.display()));
    let text = register_any_font();
    let (cols, rows) = (grid.layers.len().max(1), grid.kinds.len().max(1));
    let cell = (900 / cols).clamp(12, 48) as u32;
    let (left, top) = (if text { 110 } else { 10 }, if text { 60 } else { 10 });
    let width = left + cell * cols as u32 + 30;
    let height = top + cell * rows as u32 + if text { 50 } else { 10 };
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let shade = |r: usize| {
        // White (rank 0) to a deep blue (init_r).
        let f = r as f64 / grid.init_r.max(1) as f64;
        let mix = |lo: f64, hi: f64| (lo + (hi - lo) * f).round() as u8;
        RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
    };
    for (ki, row) in grid.ranks.iter().enumerate() {
        for (li, r) in row.iter().enumerate() {
            let (x, y) = (left + li as u32 * cell, top + ki as u32 * cell);
            let corners = [(x as i32, y as i32), ((x + cell) as i32, (y + cell) as i32)];
            let fill = r.map_or(RGBColor(230, 230, 230), shade);
            root.draw(&Rectangle::new(corners, fill.filled()))
                .map_err(|e| err(&e))?;
            root.draw(&Rectangle::new(corners, WHITE.stroke_width(1)))
                .map_err(|e| err(&e))?;
            if let (true, Some(r)) = (text && cell >= 16, r) {
                let ink = if *r * 2 > grid.init_r { WHITE } else { BLACK };
                let style = ("sans-serif", (cell as f64 * 0.5).min(16.0))
                    .into_font()
                    .color(&ink);
                let at = ((x + cell / 4) as i32, (y + cell / 4) as i32);
                root.draw(&Text::new(r.to_string(), at, style))
                    .map_err(|e| err(&e))?;
            }
        }
    }
    if text {
        root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 20)))
            .map_err(|e| err(&e))?;
        let legend = format!(
            "kept rank per matrix: white = 0 … dark blue = {} (grey: not adapted)",
            grid.init_r
        );
        root.draw(&Text::new(legend, (10, 34), ("sans-serif", 13)))
            .map_err(|e| err(&e))?;
        for (ki, kind) in grid.kinds.iter().enumerate() {
            let y = (top + ki as u32 * cell + cell / 3) as i32;
            root.draw(&Text::new(kind.clone(), (10, y), ("sans-serif", 14)))
                .map_err(|e| err(&e))?;
        }
        for (li, l) in grid.layers.iter().enumerate() {
            if li % 5 == 0 || li + 1 == grid.layers.len() {
                let x = (left + li as u32 * cell + cell / 4) as i32;
                let y = (top + rows as u32 * cell + 8) as i32;
                let label = if *l == usize::MAX {
                    "-".into()
                } else {
                    l.to_string()
                };
                root.draw(&Text::new(label, (x, y), ("sans-serif", 13)))
                    .map_err(|e| err(&e))?;
            }
        }
        let y = (top + rows as u32 * cell + 28) as i32;
        root.draw(&Text::new("layer", (left as i32, y), ("sans-serif", 14)))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// What `summary.json` records about an AdaLoRA run.
#[derive(Clone, Debug, Serialize)]
pub struct RankSummary {
    /// The rank every matrix started with.
    pub init_r: usize,
    /// The average rank asked for at the end.
    pub target_r: usize,
    /// Kept triplets over all adapted matrices at the end.
    pub final_budget: usize,
    /// Mean kept rank per adapted matrix.
    pub average_rank: f64,
    /// Trainable values of the kept triplets, `Σ r·(d_in + d_out + 1)`: what the saved adapter
    /// holds.
    pub kept_params: usize,
    /// Module path → final rank.
    pub ranks: Vec<(String, usize)>,
    /// The layer × module table as printed.
    pub table: String,
}

impl std::fmt::Display for RankSummary {
    /// The lines printed after a run's before/after table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  AdaLoRA final ranks (init_r {} → average {:.2}, target {}; {} kept parameters):",
            self.init_r, self.average_rank, self.target_r, self.kept_params
        )?;
        for line in self.table.lines() {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// Ends an AdaLoRA run: prunes the model to the last allocation (with `deltaT > 1` the optimizer
/// may have moved pruned `λ` since), so what is evaluated next is what is saved; saves the pruned
/// adapter (only kept triplets, PEFT's `rank_pattern`) into `run_dir/adapter`, draws
/// `run_dir/ranks.png`, and returns the summary.
///
/// # Errors
/// [`TrainError`] if the adapter cannot be saved or the picture drawn.
pub fn finish_adalora(
    model: &mut Llama,
    allocator: &RankAllocator,
    base_name: &str,
    run_dir: &Path,
) -> Result<RankSummary, TrainError> {
    let config = allocator.config();
    if let Some(pattern) = &config.rank_pattern {
        apply_rank_pattern(model, pattern)?;
    }
    peft::adalora::save_adapter(model, &config, base_name, &run_dir.join("adapter"))?;
    let ranks = final_ranks(model, config.rank_pattern.as_ref());
    let grid = RankGrid::new(&ranks, config.init_r);
    let title = format!(
        "AdaLoRA final rank per layer and module (init_r {} → target_r {} on average: {:.2})",
        config.init_r,
        config.target_r,
        grid.average()
    );
    plot_rank_heatmap(&run_dir.join("ranks.png"), &grid, &title)?;
    let report = AdaptReport::of(model);
    let kept_params = report
        .modules
        .iter()
        .zip(&ranks)
        .map(|(m, (_, r))| r * (m.d_in + m.d_out + 1))
        .sum();
    Ok(RankSummary {
        init_r: config.init_r,
        target_r: config.target_r,
        final_budget: grid.total(),
        average_rank: grid.average(),
        kept_params,
        ranks,
        table: grid.table(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranks() -> Vec<(String, usize)> {
        vec![
            ("model.layers.0.self_attn.q_proj".into(), 3),
            ("model.layers.0.self_attn.v_proj".into(), 1),
            ("model.layers.1.self_attn.q_proj".into(), 4),
            ("model.layers.1.self_attn.v_proj".into(), 0),
        ]
    }

    #[test]
    fn grid_places_each_rank_at_its_layer_and_kind() {
        let g = RankGrid::new(&ranks(), 4);
        assert_eq!(g.kinds, vec!["q_proj", "v_proj"]);
        assert_eq!(g.layers, vec![0, 1]);
        assert_eq!(
            g.ranks,
            vec![vec![Some(3), Some(4)], vec![Some(1), Some(0)]]
        );
        assert_eq!(g.total(), 8);
        assert_eq!(g.average(), 2.0);
        let table = g.table();
        assert!(table.contains("q_proj  3  4   3.50"), "{table}");
        assert!(table.contains("v_proj  1  0   0.50"), "{table}");
    }

    #[test]
    fn heat_map_is_written_as_a_png() {
        let path = std::env::temp_dir().join(format!("burn-lora-ranks-{}.png", std::process::id()));
        plot_rank_heatmap(&path, &RankGrid::new(&ranks(), 4), "ranks").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let _ = std::fs::remove_file(&path);
    }
}
