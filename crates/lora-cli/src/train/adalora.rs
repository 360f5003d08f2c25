//! The AdaLoRA side of `burn-lora train` (`--method adalora`): the adapters and their rank
//! allocator, the pruned PEFT adapter, and where the rank budget went (a table, `ranks.png`).

use std::path::Path;

use anyhow::Result;
use burn::tensor::Device;
use lora_core::adalora::allocator::apply_rank_pattern;
use lora_core::adalora::{RankAllocator, apply_adalora, peft_io};
use lora_core::{AdaptReport, apply_lora};
use lora_models::Llama;
use lora_train::TrainConfig;
use lora_train::config::Method;
use lora_train::rank_report::{RankGrid, plot_rank_heatmap};
use serde::Serialize;

/// Attaches fresh adapters of the run's method; for AdaLoRA also its rank allocator.
pub(super) fn attach(
    model: Llama,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(Llama, Option<RankAllocator>)> {
    Ok(match cfg.method {
        Method::Lora => (
            apply_lora(model, &cfg.lora.to_lora_config(), device)?.0,
            None,
        ),
        Method::Adalora => {
            let (model, _) = apply_adalora(model, &cfg.adalora_config(), device)?;
            let allocator = RankAllocator::new(&model, &cfg.adalora_config())?;
            (model, Some(allocator))
        }
    })
}

/// "LoRA r=8 α=16" or "AdaLoRA r=12→8 α=16", for the console and the loss picture's title.
pub(super) fn describe(cfg: &TrainConfig) -> String {
    match cfg.method {
        Method::Lora => format!("LoRA r={} α={}", cfg.lora.r, cfg.lora.alpha),
        Method::Adalora => format!(
            "AdaLoRA r={}→{} α={}",
            cfg.adalora.init_r, cfg.adalora.target_r, cfg.lora.alpha
        ),
    }
}

/// What `summary.json` records about an AdaLoRA run.
#[derive(Serialize)]
pub(super) struct RankSummary {
    init_r: usize,
    target_r: usize,
    /// Kept triplets over all adapted matrices at the end.
    final_budget: usize,
    /// Mean kept rank per adapted matrix.
    average_rank: f64,
    /// Trainable values of the kept triplets, `Σ r·(d_in + d_out + 1)`: what the saved adapter holds.
    kept_params: usize,
    /// Module path → final rank.
    ranks: Vec<(String, usize)>,
    /// The layer × module table as printed.
    table: String,
}

/// Prunes the model to the last allocation (with `deltaT > 1` the optimizer may have moved
/// pruned `λ` since), so what is evaluated next is what is saved; saves the pruned adapter (only
/// kept triplets, PEFT's `rank_pattern`), draws `ranks.png`, and returns the summary.
pub(super) fn finish(
    model: &mut Llama,
    allocator: &RankAllocator,
    base_name: &str,
    run_dir: &Path,
) -> Result<RankSummary> {
    let config = allocator.config();
    if let Some(pattern) = &config.rank_pattern {
        apply_rank_pattern(model, pattern)?;
    }
    peft_io::save_adapter(model, &config, base_name, &run_dir.join("adapter"))?;
    let ranks = peft_io::final_ranks(model, config.rank_pattern.as_ref());
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
        .map(|((_, d_in, d_out, _, _), (_, r))| r * (d_in + d_out + 1))
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

impl RankSummary {
    /// The console lines after the before/after table.
    pub(super) fn print(&self) {
        println!();
        println!(
            "  AdaLoRA final ranks (init_r {} → average {:.2}, target {}; {} kept parameters):",
            self.init_r, self.average_rank, self.target_r, self.kept_params
        );
        for line in self.table.lines() {
            println!("    {line}");
        }
    }
}
