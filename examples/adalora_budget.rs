//! # adalora_budget — AdaLoRA: watch the rank budget fall on schedule and see where it goes
//!
//! `cargo xtask example adalora_budget`
//!
//! AdaLoRA (Zhang et al. 2023, arXiv:2303.10512, as Hugging Face PEFT implements it) learns
//! each update in SVD form, `ΔW = P·diag(λ)·Q`, with `init_r` singular triplets per adapted
//! matrix. While training, the rank allocator scores every triplet by the smoothed importance
//! `|w · ∂L/∂w|` of its entries and sets the `λ` of the least important ones to zero until the
//! whole model keeps a budget `b(t)` of triplets — a total, not a per-layer quota, so the layers
//! that matter keep more.
//!
//! This program loads the tiny Llama in `fixtures/tiny-llama` (2 layers, d_model 64, random
//! weights), gives it a small synthetic task — memorise the answers to 96 random prompts — and
//! trains AdaLoRA on all 14 projection matrices (q/k/v/o, gate/up/down of both layers) with
//! `init_r` 12 → `target_r` 4 over 60 steps, through the project's own training loop
//! (`lora_train::trainer::train`) and rank allocator (`lora_core::adalora::RankAllocator`).
//! Look for:
//!
//! 1. **The budget schedule.** `b(t)` for each 0-based step `t` (PEFT's `global_step`): 14 × 12
//!    = 168 triplets up to `t = tinit` = 10, then PEFT's cubic fall
//!    `b(t) = ⌊(b₀ − b_T)·(1 − (t − tinit)/(T − tfinal − tinit))³ + b_T⌋` (`T` = `total_step` =
//!    60) down to 14 × 4 = 56 at `t = T − tfinal` = 50, then flat for the last `tfinal` steps. The allocator prunes
//!    every `deltaT` = 5 steps up to `t` = 50 (`prune`), keeping exactly `b(t)` triplets; the
//!    `kept` column is what the last pruning left. From `t` = 51 on, the pattern fixed at 50 is
//!    re-applied every step (between prunings the optimizer may move a pruned `λ` off zero
//!    again; PEFT's loop does the same). The example computes the formula itself and checks it
//!    against the allocator at every step.
//! 2. **Where the budget went.** The final rank of every matrix as a layer × module table (the
//!    one `cargo xtask train --method adalora` prints): ranks differ between matrices — some
//!    keep most of their 12, some are pruned to 0 — summing to exactly the target 56, and every
//!    `λ` the allocator pruned is zero in the model. Which matrices win depends on the task and
//!    the random model; in this run layer 0's `down_proj` keeps 11 and layer 1's `q_proj` and
//!    `k_proj` keep none: the MLP and `v_proj` hold most of the budget, `q_proj` / `k_proj` little.
//! 3. **The loss falling** while the budget falls — the training loss every 10 steps next to
//!    `b(t)`, and the mean answer-token cross-entropy (nats) on the whole task before training
//!    and after it (pruned to the target): ≈ 6.1 → ≈ 2.0.
//! 4. **The pruned PEFT adapter.** Saved as PEFT saves it (only kept triplets, with PEFT's
//!    `rank_pattern`), reloaded at those ranks with the ORIGINAL scale `α / (init_r + 1e-5)`, it
//!    gives the trained model's loss.
//!
//! Each claim is checked; the program exits non-zero if one does not hold.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use lora_core::adalora::{AdaLoraConfig, RankAllocator, apply_adalora, final_ranks};
use lora_core::tensor_io::read_safetensors;
use lora_core::{AdapterConfig, LoraModel, TargetModules, peft};
use lora_examples::{SplitMix64, check, device_from_args, fixtures, scratch_dir};
use lora_models::pretrained::load_hf_model;
use lora_train::TrainConfig;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::config::Method;
use lora_train::data::Encoded;
use lora_train::eval::{EvalReport, mean_answer_loss};
use lora_train::rank_report::RankGrid;
use lora_train::trainer::{Observer, StepMetrics, TrainLoop, train};

const EXAMPLES: usize = 96;
const PROMPT_LEN: usize = 6;
const ANSWER_LEN: usize = 3;
const STEPS: usize = 60;
const INIT_R: usize = 12;
const TARGET_R: usize = 4;
const TINIT: usize = 10;
const TFINAL: usize = 10;
const DELTA_T: usize = 5;
const ALPHA: f64 = 24.0;

/// Collects the training loss of every step.
#[derive(Default)]
struct Losses(Vec<f64>);

impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
}

/// PEFT's cubic budget schedule, written out here from the formula (not taken from the
/// allocator), to check the allocator against.
fn cubic_budget(t: usize, init: usize, target: usize) -> usize {
    if t <= TINIT {
        return init;
    }
    if t >= STEPS - TFINAL {
        return target;
    }
    let progress = (t - TINIT) as f64 / (STEPS - TFINAL - TINIT) as f64;
    ((init - target) as f64 * (1.0 - progress).powi(3) + target as f64).floor() as usize
}

fn main() -> Result<()> {
    let device = device_from_args()?;
    let ad = device.clone().autodiff();
    let model_dir = fixtures().join("tiny-llama");

    // The task: random prompts over the vocabulary, each with its own random answer.
    let mut rng = SplitMix64(2024);
    let data: Vec<Encoded> = (0..EXAMPLES)
        .map(|_| Encoded {
            ids: (0..PROMPT_LEN + ANSWER_LEN)
                .map(|_| rng.range(3, 300))
                .collect(),
            prompt_len: PROMPT_LEN,
            earlier_answers: Vec::new(),
        })
        .collect();

    let cfg = TrainConfig {
        method: Method::Adalora,
        steps: STEPS,
        batch_size: 16,
        lr: 3e-2,
        warmup_steps: 5,
        save_every: 0,
        seed: 1,
        adalora: AdaLoraConfig {
            init_r: INIT_R,
            target_r: TARGET_R,
            tinit: TINIT,
            tfinal: TFINAL,
            delta_t: DELTA_T,
            lora_alpha: ALPHA,
            lora_dropout: 0.0,
            target_modules: TargetModules::Regex(".*_proj".into()),
            ..AdaLoraConfig::default()
        },
        ..TrainConfig::default()
    };
    // What `cargo xtask train --method adalora` builds from these settings: PEFT's AdaLoraConfig
    // with total_step = steps.
    let ada_cfg = cfg.adalora_config();
    ad.seed(cfg.seed);
    let base = load_hf_model(&model_dir, &ad)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let (model, report) = apply_adalora(base, &ada_cfg, &ad)?;
    let mut allocator = RankAllocator::new(&model, &ada_cfg)?;
    let schedule = allocator.schedule().clone();
    let matrices = report.modules.len();
    println!(
        "model: fixtures/tiny-llama; AdaLoRA on {matrices} matrices, init_r {INIT_R} → target_r {TARGET_R}, \
         α = {ALPHA} (scale α/(init_r + 1e-5) = {:.5}); {STEPS} steps of 16, tinit {TINIT}, tfinal {TFINAL}, deltaT {DELTA_T}",
        ada_cfg.scaling()
    );
    println!("task: {EXAMPLES} random prompts ({PROMPT_LEN} tokens) → {ANSWER_LEN}-token answers");
    check(
        schedule.init_budget == INIT_R * matrices && schedule.target_budget == TARGET_R * matrices,
        &format!(
            "the budget starts at init_r × matrices = {} and aims at target_r × matrices = {}",
            INIT_R * matrices,
            TARGET_R * matrices
        ),
        format!("{schedule:?}"),
    )?;

    let loss_before = mean_answer_loss(&model.valid(), &data, 32, 0)?.0;
    let run_dir = scratch_dir("adalora-budget")?;
    let checkpoint = RunCheckpoint::new(
        &run_dir,
        AdapterConfig::AdaLora(ada_cfg.clone()),
        "tiny-llama",
    );
    let mut losses = Losses::default();
    let started = Instant::now();
    let job = TrainLoop {
        data: &data,
        pad_id: 0,
        config: &cfg,
        checkpoint: &checkpoint,
        resume: None,
        allocator: Some(&mut allocator),
    };
    let (model, _) = train(model, job, &mut losses, &mut |_| Ok(EvalReport::default()))?;
    let seconds = started.elapsed().as_secs_f64();

    // == 1. the budget schedule, step by step, from the allocator's record.
    println!(
        "\n== 1. the rank budget b(t) (0-based step t; '#' = 4 triplets; 'prune' = this step masked λ)"
    );
    println!(
        "{:>4} {:>7} {:>8} {:>6} {:>5}  budget bar",
        "t", "budget", "formula", "prune", "kept"
    );
    let history = allocator.history();
    let mut kept_now = schedule.init_budget;
    let mut mismatches = Vec::new();
    let mut kept_not_budget = Vec::new();
    for a in history {
        let formula = cubic_budget(a.step, schedule.init_budget, schedule.target_budget);
        if formula != a.budget {
            mismatches.push((a.step, a.budget, formula));
        }
        if let Some(p) = &a.rank_pattern {
            kept_now = p.values().flatten().filter(|k| **k).count();
            if kept_now != a.budget {
                kept_not_budget.push((a.step, a.budget, kept_now));
            }
        }
        let landmark = a.step % DELTA_T == 0 || a.step == TINIT + 1 || a.step + 1 == STEPS;
        if landmark {
            println!(
                "{:>4} {:>7} {:>8} {:>6} {:>5}  {}",
                a.step,
                a.budget,
                formula,
                if a.rank_pattern.is_some() { "yes" } else { "" },
                kept_now,
                "#".repeat(a.budget.div_ceil(4))
            );
        }
    }
    check(
        history.len() == STEPS,
        "the allocator ran once per step",
        history.len(),
    )?;
    check(
        mismatches.is_empty(),
        "the budget equals PEFT's cubic formula at every step",
        format!("(step, allocator, formula): {mismatches:?}"),
    )?;
    let mid = TINIT + (STEPS - TFINAL - TINIT) / 2;
    check(
        history[mid].budget
            == schedule.target_budget + (schedule.init_budget - schedule.target_budget) / 8,
        &format!(
            "halfway through the fall (t = {mid}) the budget is target + (init − target)/8 (the cube of 1/2)"
        ),
        history[mid].budget,
    )?;
    check(
        kept_not_budget.is_empty(),
        "every pruning keeps exactly the budget",
        format!("(step, budget, kept): {kept_not_budget:?}"),
    )?;

    // == 2. where the budget went.
    let pattern = allocator
        .rank_pattern()
        .context("the allocator never pruned")?
        .clone();
    let ranks = final_ranks(&model, Some(&pattern));
    let grid = RankGrid::new(&ranks, INIT_R);
    println!(
        "\n== 2. final rank per layer (columns) and module kind (rows), from init_r {INIT_R}:"
    );
    print!("{}", grid.table());
    let (lo, hi) = ranks
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
    let mut by_layer = [0usize; 2];
    for (path, r) in &ranks {
        if path.starts_with("model.layers.0.") {
            by_layer[0] += r;
        } else {
            by_layer[1] += r;
        }
    }
    let emptied = ranks.iter().filter(|(_, r)| *r == 0).count();
    println!(
        "total {} = {:.2} per matrix on average; ranks from {lo} to {hi}; layer 0 keeps {}, layer 1 keeps {}; \
         {emptied} matrices pruned to rank 0 (PEFT saves them as empty tensors)",
        grid.total(),
        grid.average(),
        by_layer[0],
        by_layer[1]
    );
    check(
        grid.total() == schedule.target_budget,
        &format!(
            "the total kept rank at the end equals the target budget {}",
            schedule.target_budget
        ),
        grid.total(),
    )?;
    let mut nonzero_lambda = 0;
    model.visit_adapters(&mut |_, adapter| {
        if let Some(a) = adapter.as_adalora() {
            nonzero_lambda += a.active_rank();
        }
    });
    check(
        nonzero_lambda == schedule.target_budget,
        "the model itself has exactly that many non-zero singular values λ",
        nonzero_lambda,
    )?;
    check(
        lo < hi,
        "the budget is not spread evenly: some matrices keep more rank than others",
        format!("{lo}..{hi}"),
    )?;

    // == 3. the loss.
    let loss_after = mean_answer_loss(&model.valid(), &data, 32, 0)?.0;
    println!("\n== 3. training loss (mean answer-token cross-entropy, nats)");
    for (t, l) in losses.0.iter().enumerate() {
        if t % 10 == 0 || t + 1 == STEPS {
            println!("  t {t:>3}  loss {l:.4}  budget {}", history[t].budget);
        }
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses.0[..5]), mean(&losses.0[STEPS - 5..]));
    println!(
        "on the whole task: {loss_before:.4} before training, {loss_after:.4} after (chance level, ln 300, is {:.4}); {seconds:.1} s of training",
        300f64.ln()
    );
    check(
        last < first,
        "the training loss falls: last 5 steps below the first 5",
        format!("{first:.4} → {last:.4}"),
    )?;
    check(
        loss_after < loss_before - 0.5,
        "the pruned model fits the task: its loss is more than 0.5 nats below the start",
        format!("{loss_before:.4} → {loss_after:.4}"),
    )?;

    // == 4. the pruned PEFT adapter.
    let adapter_dir = run_dir.join("adapter");
    peft::adalora::save_adapter(&model, &allocator.config(), "tiny-llama", &adapter_dir)?;
    let tensors = read_safetensors(&adapter_dir.join(peft::WEIGHTS_FILE))?;
    let saved_rank: usize = tensors
        .iter()
        .filter(|(k, _)| k.ends_with(".lora_E"))
        .map(|(_, t)| t.shape[0])
        .sum();
    let (reloaded, _, reloaded_report) =
        peft::adalora::load_adapter(load_hf_model(&model_dir, &device)?, &adapter_dir, &device)?;
    let loss_reloaded = mean_answer_loss(&reloaded, &data, 32, 0)?.0;
    let scales_kept = reloaded_report
        .modules
        .iter()
        .all(|m| m.scaling == ada_cfg.scaling());
    println!(
        "\n== 4. the pruned adapter as PEFT saves it: {saved_rank} triplets in the file (of {}), reloaded loss {loss_reloaded:.4}",
        schedule.init_budget
    );
    check(
        saved_rank == schedule.target_budget,
        "the saved adapter holds only the kept triplets",
        saved_rank,
    )?;
    check(
        scales_kept,
        "reloaded at the kept ranks, every layer keeps the scale α/(init_r + 1e-5)",
        format!("{:?}", reloaded_report.modules),
    )?;
    check(
        (loss_reloaded - loss_after).abs() < 1e-4,
        "the reloaded pruned adapter gives the trained model's loss",
        format!("{loss_reloaded} vs {loss_after}"),
    )?;
    std::fs::remove_dir_all(&run_dir).ok();
    Ok(())
}
