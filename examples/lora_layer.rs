//! # lora_layer — the LoRA formula on one linear layer, step by step
//!
//! `cargo xtask example lora_layer`
//!
//! LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a weight `W` and learns `ΔW = B·A` of rank
//! `r`. In burn's layout (`W` is `[d_in, d_out]`) the layer computes
//!
//! ```text
//! y = x·W + (α/r) · (x·A)·B        A: [d_in, r]   B: [r, d_out]
//! ```
//!
//! This program shows, on `lora_core::LoraLinear` itself:
//!
//! 1. **Parameter counts.** A full update of a `d_in × d_out` layer trains `d_in·d_out` values;
//!    LoRA trains `r·(d_in + d_out)`. Look for the last column: a Llama-7B attention projection
//!    (4096 × 4096) at r = 8 trains 0.39 % of what full fine-tuning would.
//! 2. **B = 0 at init.** Attaching a fresh adapter leaves the output bit for bit unchanged;
//!    look for `max |y_lora − y_base| = 0`.
//! 3. **Learning a low-rank change.** A "fine-tuning target" is made by adding a known rank-4
//!    change `ΔW*` (singular values 3, 2, 1, 0.5) to `W`, and adapters are trained with AdamW
//!    on noisy samples of `x → x·(W + ΔW*)`. Look for the singular-value table: the r = 8
//!    adapter's `(α/r)·A·B` has four singular values matching the true ones and four near
//!    zero — it had room for rank 8, but the change has rank 4. The r = 2 adapter is too small:
//!    it keeps the two largest directions (3 and 2), which is the best any rank-2 matrix can do
//!    (Eckart–Young), and its loss stays above the noise floor. `W` itself never moves.
//!
//! Each claim is checked; the program exits non-zero if one does not hold.

use anyhow::Result;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use lora_core::{LoraAdapter, LoraConfig, LoraLinear, TargetModules};
use lora_examples::{
    check, device_from_args, frobenius, host, max_abs, max_abs_diff, singular_values,
};

/// The toy layer: `[D_IN, D_OUT]`.
const D_IN: usize = 64;
const D_OUT: usize = 48;
/// Ranks of the adapters we train: one with room to spare, one too small for the change.
const R: usize = 8;
const R_SMALL: usize = 2;
/// Singular values of the change to find (its rank is their number, 4).
const TRUE_SIGMAS: [f64; 4] = [3.0, 2.0, 1.0, 0.5];
/// α = 2r, a common choice: scaling α/r = 2.
const ALPHA: f64 = 16.0;
const STEPS: usize = 300;
/// Standard deviation of the noise on the regression targets (the loss cannot go below its
/// square, 0.01).
const NOISE: f64 = 0.1;
const BATCH: usize = 256;

fn main() -> Result<()> {
    let device = device_from_args()?;
    device.seed(7);
    parameter_counts(&device)?;
    let w = Tensor::<2>::random(
        [D_IN, D_OUT],
        Distribution::Normal(0.0, 1.0 / (D_IN as f64).sqrt()),
        &device,
    );
    b_zero_means_no_change(w.clone(), &device)?;
    learn_a_low_rank_change(w, &device)?;
    Ok(())
}

/// Part 1: `d_in·d_out` against `r·(d_in + d_out)`, with the count taken from a real adapter.
fn parameter_counts(device: &Device) -> Result<()> {
    println!("\n== 1. trainable parameters: full update d_in·d_out vs LoRA r·(d_in + d_out)");
    println!(
        "{:>30} {:>4} {:>12} {:>10} {:>8}",
        "layer [d_in, d_out]", "r", "full", "LoRA", "LoRA %"
    );
    let layers = [
        ("SmolLM2 q_proj [576, 576]", 576, 576),
        ("Llama-7B q_proj [4096, 4096]", 4096, 4096),
        ("Llama-7B up_proj [4096, 11008]", 4096, 11008),
    ];
    for (name, d_in, d_out) in layers {
        for r in [1, 8, 64] {
            let cfg = LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear);
            let adapter = LoraAdapter::init(d_in, d_out, r, 2.0 * r as f64, &cfg, device)?;
            let lora = adapter.num_trainable();
            check_quiet(
                lora == r * (d_in + d_out),
                "num_trainable = r·(d_in + d_out)",
            )?;
            let full = d_in * d_out;
            println!(
                "{name:>30} {r:>4} {full:>12} {lora:>10} {:>7.2}%",
                100.0 * lora as f64 / full as f64
            );
        }
    }
    check(
        true,
        "each adapter's num_trainable() equals r·(d_in + d_out)",
        "",
    )
}

/// Like [`check`] but silent on success (used inside loops).
fn check_quiet(holds: bool, what: &str) -> Result<()> {
    if holds {
        Ok(())
    } else {
        check(false, what, "")
    }
}

/// Part 2: a freshly attached adapter changes nothing, because `B` starts at zero.
fn b_zero_means_no_change(w: Tensor<2>, device: &Device) -> Result<()> {
    println!("\n== 2. at initialisation B = 0, so the adapted layer is the base layer");
    let x = Tensor::<2>::random([16, D_IN], Distribution::Normal(0.0, 1.0), device);
    let mut layer = LoraLinear::new(w, None);
    let y_base = host(layer.forward(x.clone()))?;

    let cfg = LoraConfig::new(R, ALPHA, TargetModules::AllLinear);
    layer.attach(
        LoraAdapter::init(D_IN, D_OUT, R, ALPHA, &cfg, device)?,
        "layer",
    )?;
    let Some(adapter) = layer.adapter.as_ref().and_then(|a| a.as_lora()) else {
        anyhow::bail!("attach() left no LoRA adapter");
    };
    let (a, b) = (host(adapter.lora_a.val())?, host(adapter.lora_b.val())?);
    println!(
        "A {:?}: random, max |A| = {:.4} (kaiming-uniform bound 1/√d_in = {:.4})",
        adapter.lora_a.shape().dims::<2>(),
        max_abs(&a),
        1.0 / (D_IN as f64).sqrt()
    );
    println!(
        "B {:?}: max |B| = {}; scaling α/r = {ALPHA}/{R} = {}",
        adapter.lora_b.shape().dims::<2>(),
        max_abs(&b),
        adapter.scaling
    );
    let y_lora = host(layer.forward(x))?;
    let diff = max_abs_diff(&y_lora, &y_base);
    println!("max |y_lora − y_base| = {diff}");
    check(
        y_lora == y_base,
        "the output with a fresh adapter equals the base output bit for bit",
        format!("max difference {diff}"),
    )
}

/// `k` orthonormal columns of length `n` (Gram–Schmidt on random vectors), row-major `[n, k]`.
fn orthonormal_columns(n: usize, k: usize, device: &Device) -> Result<Vec<f64>> {
    let g = host(Tensor::<2>::random(
        [n, k],
        Distribution::Normal(0.0, 1.0),
        device,
    ))?;
    let mut q = vec![0.0f64; n * k];
    for j in 0..k {
        let mut v: Vec<f64> = (0..n).map(|i| g[i * k + j] as f64).collect();
        for p in 0..j {
            let dot: f64 = (0..n).map(|i| v[i] * q[i * k + p]).sum();
            (0..n).for_each(|i| v[i] -= dot * q[i * k + p]);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        (0..n).for_each(|i| q[i * k + j] = v[i] / norm);
    }
    Ok(q)
}

/// What one training run produced.
struct Trained {
    /// The learned update `(α/r)·A·B`, row-major `[D_IN, D_OUT]`.
    delta: Vec<f32>,
    /// Loss at the first and the last step.
    losses: (f64, f64),
    /// Whether `W` came out bit for bit as it went in.
    w_unchanged: bool,
}

/// Trains a rank-`r` adapter on `W` to map `x → x·(W + ΔW*) + noise` with AdamW.
fn train_adapter(w: &Tensor<2>, true_delta: &[f32], r: usize, device: &Device) -> Result<Trained> {
    // Training needs the autodiff device; the base weight stays frozen (no gradient).
    let ad = device.clone().autodiff();
    let w = Tensor::<2>::from_data(w.clone().into_data(), &ad);
    let w_before = host(w.clone())?;
    let target_w =
        w.clone() + Tensor::from_data(TensorData::new(true_delta.to_vec(), [D_IN, D_OUT]), &ad);
    let alpha = 2.0 * r as f64; // α = 2r: the same scaling, 2, for every rank
    let mut layer = LoraLinear::new(w, None);
    let cfg = LoraConfig::new(r, alpha, TargetModules::AllLinear);
    layer.attach(
        LoraAdapter::init(D_IN, D_OUT, r, alpha, &cfg, &ad)?,
        "layer",
    )?;

    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = (f64::NAN, f64::NAN);
    for step in 1..=STEPS {
        let x = Tensor::<2>::random([BATCH, D_IN], Distribution::Normal(0.0, 1.0), &ad);
        // What the fine-tuned layer should give, plus measurement noise (std NOISE): the
        // adapter has to find ΔW* from noisy data, as real fine-tuning does.
        let noise = Tensor::<2>::random([BATCH, D_OUT], Distribution::Normal(0.0, NOISE), &ad);
        let y = (x.clone().matmul(target_w.clone()) + noise).detach();
        let loss = (layer.forward(x) - y).square().mean(); // mean squared error
        let value = loss.clone().into_scalar::<f32>() as f64;
        if step == 1 {
            losses.0 = value;
        }
        losses.1 = value;
        if step == 1 || step % 100 == 0 {
            println!("  r = {r}  step {step:>4}  loss {value:.6}");
        }
        // Only A and B require gradients, so only they are in `grads` and only they move.
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        // A step of 1e-2 that decays linearly: fast at first, precise at the end.
        let lr = 1e-2 * (1.0 - (step - 1) as f64 / STEPS as f64) + 1e-4;
        layer = optim.step(lr, layer, grads);
    }
    let Some(adapter) = layer.adapter.as_ref() else {
        anyhow::bail!("the adapter disappeared during training");
    };
    Ok(Trained {
        delta: host(adapter.delta_weight())?,
        losses,
        w_unchanged: host(layer.weight.val())? == w_before,
    })
}

/// `‖a − b‖_F / ‖b‖_F`.
fn rel_frobenius_err(a: &[f32], b: &[f32]) -> f64 {
    frobenius(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>()) / frobenius(b)
}

/// Part 3: train adapters to reproduce a known rank-4 change of `W`: one with room to spare
/// (r = 8), one too small for it (r = 2).
fn learn_a_low_rank_change(w: Tensor<2>, device: &Device) -> Result<()> {
    let k = TRUE_SIGMAS.len();
    println!(
        "\n== 3. learning a rank-{k} change ΔW* (AdamW, {STEPS} steps of {BATCH} noisy samples)"
    );
    // ΔW* = U·diag(σ)·Vᵀ in burn layout [d_in, d_out]; U, V have orthonormal columns, so its
    // singular values are exactly σ.
    let (u, v) = (
        orthonormal_columns(D_IN, k, device)?,
        orthonormal_columns(D_OUT, k, device)?,
    );
    let mut true_delta = vec![0.0f32; D_IN * D_OUT];
    for i in 0..D_IN {
        for o in 0..D_OUT {
            let s: f64 = (0..k)
                .map(|j| u[i * k + j] * TRUE_SIGMAS[j] * v[o * k + j])
                .sum();
            true_delta[i * D_OUT + o] = s as f32;
        }
    }

    let big = train_adapter(&w, &true_delta, R, device)?;
    let small = train_adapter(&w, &true_delta, R_SMALL, device)?;

    let as_f64 = |m: &[f32]| m.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let s_true = singular_values(&as_f64(&true_delta), D_IN, D_OUT);
    let s_big = singular_values(&as_f64(&big.delta), D_IN, D_OUT);
    let s_small = singular_values(&as_f64(&small.delta), D_IN, D_OUT);
    println!("\nsingular values of ΔW    true ΔW*   learned, r = {R}   learned, r = {R_SMALL}");
    for i in 0..R {
        println!(
            "  σ{:<2}               {:>9.4}   {:>14.4}   {:>14.4}",
            i + 1,
            s_true[i],
            s_big[i],
            s_small[i]
        );
    }
    let (err_big, err_small) = (
        rel_frobenius_err(&big.delta, &true_delta),
        rel_frobenius_err(&small.delta, &true_delta),
    );
    // Eckart–Young: the best rank-2 approximation misses exactly the σ3 and σ4 directions.
    let best_rank2: f64 = (TRUE_SIGMAS[R_SMALL..].iter().map(|s| s * s).sum::<f64>()
        / TRUE_SIGMAS.iter().map(|s| s * s).sum::<f64>())
    .sqrt();
    println!(
        "‖ΔW_learned − ΔW*‖ / ‖ΔW*‖:  r = {R}: {err_big:.4}   r = {R_SMALL}: {err_small:.4} (best possible at rank {R_SMALL}: {best_rank2:.4})"
    );
    println!(
        "final loss:  r = {R}: {:.4}   r = {R_SMALL}: {:.4}   (start {:.4}; the noise alone gives {:.4})",
        big.losses.1,
        small.losses.1,
        big.losses.0,
        NOISE * NOISE
    );

    check(
        big.w_unchanged && small.w_unchanged,
        "the frozen base weight W is bit for bit unchanged after training",
        "W moved",
    )?;
    let top_ok = (0..k).all(|i| (s_big[i] - TRUE_SIGMAS[i]).abs() < 0.03 * TRUE_SIGMAS[i]);
    check(
        top_ok,
        "r = 8: the learned update's singular values match the true ones (within 3 %)",
        format!("{:?} vs {TRUE_SIGMAS:?}", &s_big[..k]),
    )?;
    let tail = s_big[k..R].iter().fold(0f64, |m, s| m.max(*s));
    check(
        tail < 0.05 * TRUE_SIGMAS[k - 1],
        "r = 8: the spare ranks stay near zero (the learned change has rank 4, like ΔW*)",
        format!("largest spare singular value {tail:.4}"),
    )?;
    check(
        err_big < 0.03,
        "r = 8: the learned update recovers ΔW* (relative error < 3 %)",
        format!("{err_big:.4}"),
    )?;
    let keeps_top =
        (0..R_SMALL).all(|i| (s_small[i] - TRUE_SIGMAS[i]).abs() < 0.05 * TRUE_SIGMAS[i]);
    check(
        keeps_top && (err_small - best_rank2).abs() < 0.03,
        "r = 2: the adapter learns the two largest directions, the best rank-2 approximation",
        format!(
            "σ {:?}, error {err_small:.4} vs {best_rank2:.4}",
            &s_small[..R_SMALL]
        ),
    )
}
