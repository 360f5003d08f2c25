//! # merge_for_inference — fold B·A into W: the same outputs at the base model's cost
//!
//! `cargo xtask example merge_for_inference`
//!
//! While training, a LoRA layer computes `x·W + (α/r)·(x·A)·B`: two extra small matmuls per
//! adapted layer. Once training is done the update can be folded into the weight,
//! `W' = W + (α/r)·A·B`, and the layer is an ordinary linear layer again (Hu et al. 2021, §4.1:
//! "no additional inference latency"). This program, on a small random Llama with adapters on
//! every linear layer (`all-linear`):
//!
//! 1. trains the adapters briefly with the project's training loop (`lora_train::trainer::train`),
//! 2. merges them (`lora_core::merge_all`) and compares the logits with the unmerged model's —
//!    look for `max |merged − unmerged|`, a rounding-level number,
//! 3. unmerges (`unmerge_all`) and compares every weight with the original — look for how many
//!    of them come back **bit for bit** and the largest error of the rest, which stays within
//!    one rounding of `W + ΔW` (floating-point addition is not exactly invertible),
//! 4. `merge_and_unload` leaves a plain model with no adapters and the merged model's logits,
//! 5. times a forward pass of the base model, the unmerged LoRA model and the merged model.
//!    Look for merged ≈ base and unmerged slower. Timings are printed, never checked (this
//!    machine is shared), and on a model this small they are noisy.
//!
//! Each claim in 2–4 is checked; the program exits non-zero if one does not hold.

use std::collections::BTreeMap;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use lora_core::{
    AdaptReport, AdapterConfig, LoraConfig, LoraModel, TargetModules, apply_lora, merge_all,
    merge_and_unload, unmerge_all,
};
use lora_examples::{
    SplitMix64, check, device_from_args, host, max_abs, max_abs_diff, median_ms, scratch_dir,
};
use lora_models::{Llama, LlamaConfig};
use lora_train::TrainConfig;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::data::Encoded;
use lora_train::eval::EvalReport;
use lora_train::trainer::{Observer, StepMetrics, TrainLoop, train};

/// A small Llama: big enough that a forward pass takes measurable time, small enough to train
/// in seconds on two cores.
fn model_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 512,
        d_model: 256,
        n_layers: 4,
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 32,
        d_ff: 688,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        max_seq_len: 256,
        tie_word_embeddings: false,
        ..LlamaConfig::tiny()
    }
}

/// Prints the loss every few steps.
struct PrintLoss;

impl Observer for PrintLoss {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.step == 1 || m.step.is_multiple_of(10) {
            println!("  step {:>3}  loss {:.4}", m.step, m.loss);
        }
    }
}

/// Every linear weight of `model` by module path, on the host.
fn weights(model: &Llama) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    let mut failure = None;
    model.visit_linears(&mut |path, lin| match host(lin.weight.val()) {
        Ok(w) => {
            out.insert(path.to_string(), w);
        }
        Err(e) => failure = Some(e),
    });
    failure.map_or(Ok(out), Err)
}

fn logits(model: &Llama, tokens: &Tensor<2, Int>) -> Result<Vec<f32>> {
    host(model.forward(tokens.clone(), None))
}

fn main() -> Result<()> {
    let device = device_from_args()?;
    let ad = device.clone().autodiff();
    ad.seed(3);
    let cfg = model_config();
    let base = cfg.init(&ad); // random weights stand in for a pretrained model, frozen
    println!(
        "model: {} layers, d_model {}, {} parameters (frozen)",
        cfg.n_layers,
        cfg.d_model,
        cfg.num_params()
    );

    // 1. Attach r = 8 adapters to every linear layer but the head, and train them briefly on
    //    a synthetic "prompt → answer" task (the answer is a fixed function of the prompt).
    let train_cfg = TrainConfig {
        steps: 30,
        batch_size: 4,
        lr: 3e-3,
        warmup_steps: 3,
        save_every: 0,
        lora: LoraConfig {
            lora_dropout: 0.05,
            ..LoraConfig::new(8, 16.0, TargetModules::AllLinear)
        },
        ..TrainConfig::default()
    };
    let lora = train_cfg.lora.clone();
    let (model, report) = apply_lora(base.clone(), &lora, &ad)?;
    println!(
        "adapters on {} layers ({} trainable values)",
        report.modules.len(),
        report.trainable_params
    );
    let mut rng = SplitMix64(11);
    let data: Vec<Encoded> = (0..16)
        .map(|_| {
            let prompt: Vec<u32> = (0..12).map(|_| rng.range(3, 512)).collect();
            let answer: Vec<u32> = prompt[..4].iter().map(|t| (t * 7 + 1) % 512).collect();
            Encoded {
                ids: [prompt, answer].concat(),
                prompt_len: 12,
                earlier_answers: Vec::new(),
            }
        })
        .collect();
    let run_dir = scratch_dir("merge")?;
    let checkpoint = RunCheckpoint::new(&run_dir, AdapterConfig::Lora(lora), "random-small-llama");
    println!("\n== 1. training the adapters ({} steps)", train_cfg.steps);
    let job = TrainLoop {
        data: &data,
        pad_id: 0,
        config: &train_cfg,
        checkpoint: &checkpoint,
        resume: None,
        allocator: None,
    };
    let (model, _) = train(model, job, &mut PrintLoss, &mut |_| {
        Ok(EvalReport::default())
    })?;
    std::fs::remove_dir_all(&run_dir).ok();

    // Inference views: no autodiff, dropout off.
    let base = base.valid();
    let unmerged = model.valid();
    let mut rng = SplitMix64(5);
    let ids: Vec<i64> = (0..8 * 64).map(|_| i64::from(rng.range(0, 512))).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [8, 64]), &device);

    let y_base = logits(&base, &tokens)?;
    let y_unmerged = logits(&unmerged, &tokens)?;
    let moved = max_abs_diff(&y_unmerged, &y_base);
    println!("\nmax |LoRA − base| logits = {moved:.4e} (the adapters changed the model)");
    check(moved > 1e-3, "training moved the model's outputs", moved)?;

    // 2. Merge: W ← W + (α/r)·A·B in every adapted layer.
    println!("\n== 2. merge");
    let w_original = weights(&unmerged)?;
    let mut merged = unmerged.clone();
    let n = merge_all(&mut merged)?;
    let y_merged = logits(&merged, &tokens)?;
    let diff = max_abs_diff(&y_merged, &y_unmerged);
    let scale = max_abs(&y_unmerged);
    println!(
        "merged {n} layers; max |merged − unmerged| logits = {diff:.3e} (logits up to {scale:.3})"
    );
    check(
        diff <= 1e-4 * scale,
        "merged and unmerged outputs agree to rounding (≤ 1e-4 of the largest logit)",
        format!("{diff:e} vs {scale}"),
    )?;
    check(
        merge_all(&mut merged).is_err(),
        "merging twice is an error, not a second ΔW",
        "merge_all accepted an already merged model",
    )?;

    // 3. Unmerge: W ← (W + ΔW) − ΔW. Floating-point addition rounds, so this is exact only
    //    where no bits were lost; the error elsewhere is at most one rounding of |W| + |ΔW|.
    println!("\n== 3. unmerge");
    let mut deltas = BTreeMap::new();
    let mut failure = None;
    merged.visit_linears(&mut |path, lin| {
        if let Some(a) = &lin.adapter {
            match host(a.delta_weight()) {
                Ok(d) => {
                    deltas.insert(path.to_string(), d);
                }
                Err(e) => failure = Some(e),
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let mut restored = merged.clone();
    unmerge_all(&mut restored)?;
    let (mut total, mut exact, mut worst, mut within) = (0usize, 0usize, 0f32, true);
    for (path, w1) in weights(&restored)? {
        let w0 = &w_original[&path];
        // Layers without an adapter (the head) were never touched; count the adapted ones.
        let Some(delta) = deltas.get(&path) else {
            within &= *w0 == w1;
            continue;
        };
        for ((a, b), d) in w0.iter().zip(&w1).zip(delta) {
            total += 1;
            exact += usize::from(a.to_bits() == b.to_bits());
            let err = (a - b).abs();
            worst = worst.max(err);
            within &= err <= f32::EPSILON * (a.abs() + d.abs());
        }
    }
    println!(
        "{exact} of {total} adapted weights ({:.1} %) come back bit for bit; the largest error is {worst:.2e}",
        100.0 * exact as f64 / total as f64
    );
    check(
        within,
        "unmerge restores every weight within one rounding (|error| ≤ ε·(|W| + |ΔW|), ε = 2⁻²³)",
        worst,
    )?;
    check(
        exact * 2 > total,
        "most weights come back bit for bit",
        format!("{exact} of {total}"),
    )?;

    // 4. merge_and_unload: bake the adapters in and drop them — what you ship for inference.
    println!("\n== 4. merge_and_unload");
    let mut plain = unmerged.clone();
    merge_and_unload(&mut plain)?;
    let left = AdaptReport::of(&plain).modules.len();
    let y_plain = logits(&plain, &tokens)?;
    check(
        left == 0,
        "merge_and_unload leaves no adapter behind",
        format!("{left} left"),
    )?;
    check(
        y_plain == y_merged,
        "the unloaded model's logits equal the merged model's bit for bit",
        max_abs_diff(&y_plain, &y_merged),
    )?;

    // 5. Timing (printed only): a forward pass over [8, 64] tokens.
    println!(
        "\n== 5. forward time, batch [8, 64] tokens (median of 15 rounds; printed, not checked)"
    );
    // The three models take turns, round after round, so a busy moment on the machine slows
    // all of them rather than one.
    let models = [&base, &unmerged, &merged];
    let forward = |m: &Llama| drop(m.forward(tokens.clone(), None).into_data());
    for m in models {
        let _warm_up = median_ms(2, 1, || forward(m));
    }
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _round in 0..15 {
        for (t, m) in times.iter_mut().zip(models) {
            t.push(median_ms(0, 1, || forward(m)));
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let [mut a, mut b, mut c] = times;
    let (t_base, t_unmerged, t_merged) = (median(&mut a), median(&mut b), median(&mut c));
    println!("  base model              {t_base:>8.2} ms");
    println!(
        "  LoRA, unmerged          {t_unmerged:>8.2} ms   ({:+.0} % vs base)",
        100.0 * (t_unmerged / t_base - 1.0)
    );
    println!(
        "  LoRA, merged            {t_merged:>8.2} ms   ({:+.0} % vs base)",
        100.0 * (t_merged / t_base - 1.0)
    );
    Ok(())
}
