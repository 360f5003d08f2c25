//! # qlora_memory — QLoRA's 4-bit NF4 base: bytes per weight, rounding error, a LoRA trained on top
//!
//! `cargo xtask example qlora_memory`
//!
//! QLoRA (Dettmers et al. 2023, arXiv:2305.14314) stores the frozen base weight in 4-bit
//! NormalFloat (NF4): each block of 64 weights keeps one scale `absmax`, and each weight the
//! index of the nearest of 16 levels `NF4[i] · absmax` (quantiles of a normal distribution).
//! Double quantization stores the scales themselves in 8 bits. The LoRA adapter trains in f32
//! on top; the base is dequantized in every forward and never gets a gradient.
//!
//! This program takes one layer the size of SmolLM2-135M's MLP `up_proj` (`[576, 1536]` in
//! burn's `[d_in, d_out]` layout, weights N(0, 0.02)) and shows, on `lora_core` itself:
//!
//! 1. **Bytes on the device.** Look for the bits-per-weight column: 32 for f32, ≈ 4.127 with
//!    double quantization, 4.5 without (≈ 7.75× and 7.1× smaller), counted from the stored
//!    tensors (`Nf4Weight::storage_bytes`) and equal to `Nf4Config::bits_per_weight`.
//! 2. **Rounding error.** `mean |w − ŵ| / mean |w|` ≈ 9 % for both; double quantization adds
//!    almost nothing to it.
//! 3. **A LoRA (r = 8) trained on the NF4 layer.** The target is the ORIGINAL f32 layer plus a
//!    rank-4 change. Look for the loss falling towards its floor — the 4-bit rounding of `W`
//!    itself, which a rank-8 adapter cannot undo — and for the NF4 codes and scales coming out
//!    of training bit for bit as they went in.
//! 4. **Merging.** Merged into the dequantized f32 weight the learned ΔW is kept whole (survival
//!    1, error ~1e-7, the adapter's loss). Re-quantized to NF4 after merging
//!    (`lora_core::quant::requantize_report`), each weight snaps to a level of its block: look
//!    for the survival (ΔW's component along itself — near 1 here, since rounding keeps the
//!    update's direction on average), the error (about half of ΔW's size: each weight moved by
//!    whole code steps or not at all), the third of the 4-bit codes that changed, and the loss:
//!    about a third of the adapter's improvement is gone. The last table scales ΔW: an update
//!    well below half a code step (printed) changes no code and vanishes; a large one survives.
//!    That is why `merge` never re-quantizes (REFERENCE §3).
//!
//! Each claim is checked; the program exits non-zero if one does not hold.

use anyhow::{Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use lora_core::quant::{NF4_CODE, Nf4Config, Nf4Weight, requantize_report};
use lora_core::{BaseWeight, LoraAdapter, LoraConfig, LoraLinear, TargetModules};
use lora_examples::{check, device_from_args, frobenius, host};

/// The layer, burn layout `[D_IN, D_OUT]` (PyTorch `[1536, 576]`): SmolLM2-135M's `up_proj`.
const D_IN: usize = 576;
const D_OUT: usize = 1536;
/// Standard deviation of the base weights (SmolLM2's initializer range).
const W_STD: f64 = 0.02;
/// Rank of the change to learn, and of the adapter that learns it.
const TRUE_RANK: usize = 4;
const R: usize = 8;
const ALPHA: f64 = 16.0;
/// Size of each entry of the true change, root mean square: about a fifth of a weight's.
const DELTA_RMS: f64 = 0.003;
const STEPS: usize = 60;
const BATCH: usize = 128;

fn main() -> Result<()> {
    let device = device_from_args()?;
    device.seed(11);
    println!(
        "NF4 code book (16 levels in [−1, 1], an exact 0 at index 7): {:?}",
        NF4_CODE.map(|c| (c * 1e4).round() / 1e4)
    );
    let w = Tensor::<2>::random([D_IN, D_OUT], Distribution::Normal(0.0, W_STD), &device);
    storage_and_error(w.clone())?;
    train_on_nf4(w, &device)
}

/// Parts 1 and 2: bytes on the device and the rounding error, with and without double
/// quantization.
fn storage_and_error(w: Tensor<2>) -> Result<()> {
    let n = D_IN * D_OUT;
    println!("\n== 1. bytes on the device for one [{D_IN}, {D_OUT}] layer ({n} weights)");
    let f32_bytes = BaseWeight::dense(w.clone()).storage_bytes();
    let w_host = host(w.clone())?;
    let mean_abs = w_host.iter().map(|x| x.abs() as f64).sum::<f64>() / n as f64;
    println!(
        "{:>26} {:>12} {:>14} {:>10} {:>16}",
        "storage", "bytes", "bits / weight", "vs f32", "mean|w−ŵ|/mean|w|"
    );
    println!(
        "{:>26} {f32_bytes:>12} {:>14.3} {:>9.2}× {:>16}",
        "f32",
        8.0 * f32_bytes as f64 / n as f64,
        1.0,
        "0"
    );
    let mut errors = Vec::new();
    for (name, double_quant, bound) in [
        ("NF4 + double quantization", true, 4.13),
        ("NF4, f32 scales", false, 4.51),
    ] {
        let cfg = Nf4Config {
            block_size: 64,
            double_quant,
        };
        let q = Nf4Weight::quantize(w.clone(), &cfg)?;
        let bytes = q.storage_bytes();
        let bits = q.bits_per_weight();
        let deq = host(q.dequantize())?;
        let err = w_host
            .iter()
            .zip(&deq)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / n as f64
            / mean_abs;
        println!(
            "{name:>26} {bytes:>12} {bits:>14.3} {:>9.2}× {:>15.2}%",
            f32_bytes as f64 / bytes as f64,
            100.0 * err
        );
        check(
            bits <= bound,
            &format!("{name}: at most {bound} bits per weight on the device"),
            format!("{bits:.4}"),
        )?;
        check(
            (bits - cfg.bits_per_weight(n)).abs() < 1e-9,
            &format!("{name}: the stored bytes are exactly what Nf4Config::bits_per_weight counts"),
            format!("{bits} vs {}", cfg.bits_per_weight(n)),
        )?;
        errors.push(err);
    }
    println!("(each NF4 layer also holds the 16- and 256-entry code tables: 1,088 bytes)");
    println!("\n== 2. rounding error: mean |w − ŵ| / mean |w|");
    check(
        errors.iter().all(|e| (0.06..0.12).contains(e)),
        "NF4 rounds N(0, σ) weights to within about 9 % of their mean magnitude",
        format!("{errors:?}"),
    )?;
    check(
        (errors[0] - errors[1]).abs() < 0.02 * errors[1],
        "double quantization adds less than 2 % to the rounding error",
        format!("{:.5} vs {:.5}", errors[0], errors[1]),
    )
}

/// Mean squared error of `layer` against `x·target_w` on the fixed batch `x`.
fn mse(layer: &LoraLinear, x: &Tensor<2>, target_w: &Tensor<2>) -> f64 {
    let y = x.clone().matmul(target_w.clone());
    (layer.forward(x.clone()) - y)
        .square()
        .mean()
        .into_scalar::<f32>() as f64
}

/// Parts 3 and 4: train a LoRA on the NF4 layer, then merge it two ways.
fn train_on_nf4(w: Tensor<2>, device: &Device) -> Result<()> {
    let ad = device.clone().autodiff();
    let w = Tensor::<2>::from_data(w.into_data(), &ad);
    // The fine-tuning target: the original f32 weight plus a rank-4 change U·V.
    let u = Tensor::<2>::random([D_IN, TRUE_RANK], Distribution::Normal(0.0, 1.0), &ad);
    let v = Tensor::<2>::random([TRUE_RANK, D_OUT], Distribution::Normal(0.0, 1.0), &ad);
    let true_delta = u
        .matmul(v)
        .mul_scalar(DELTA_RMS / (TRUE_RANK as f64).sqrt());
    let target_w = (w.clone() + true_delta.clone()).detach();

    let cfg = Nf4Config::default();
    let mut layer = LoraLinear::new(w.clone(), None);
    layer.quantize_nf4(&cfg, "mlp.up_proj")?;
    let BaseWeight::Nf4(q) = &layer.weight else {
        bail!("quantize_nf4 left a dense weight");
    };
    let stored_before = q.to_host()?;
    let w_hat = host(layer.weight.val())?; // dequant(W), burn layout
    let w_f32 = host(w)?;
    // With x ~ N(0, I), E[(x·M)²] per output is Σ_i M_io²: the loss is ‖M‖²_F / d_out.
    let rounding: Vec<f32> = w_f32.iter().zip(&w_hat).map(|(a, b)| a - b).collect();
    let floor = frobenius(&rounding).powi(2) / D_OUT as f64;

    let lcfg = LoraConfig::new(R, ALPHA, TargetModules::AllLinear);
    layer.attach(
        LoraAdapter::init(D_IN, D_OUT, R, ALPHA, &lcfg, &ad)?,
        "mlp.up_proj",
    )?;
    let x_eval = Tensor::<2>::random([512, D_IN], Distribution::Normal(0.0, 1.0), &ad);
    let loss_base = mse(&layer, &x_eval, &target_w); // B = 0: the NF4 base alone
    println!(
        "\n== 3. training a LoRA (r = {R}, α = {ALPHA}) on the NF4 layer: AdamW, {STEPS} steps of {BATCH}"
    );
    println!(
        "target: x·(W_f32 + ΔW*), ΔW* of rank {TRUE_RANK} (‖ΔW*‖ / ‖W‖ = {:.3}); the 4-bit rounding of W alone gives a loss of {floor:.6} (the floor)",
        frobenius(&host(true_delta.clone())?) / frobenius(&w_f32)
    );
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 1..=STEPS {
        let x = Tensor::<2>::random([BATCH, D_IN], Distribution::Normal(0.0, 1.0), &ad);
        let y = x.clone().matmul(target_w.clone());
        let loss = (layer.forward(x) - y).square().mean();
        let value = loss.clone().into_scalar::<f32>() as f64;
        if step == 1 {
            first = value;
        }
        last = value;
        if step == 1 || step % 10 == 0 {
            println!("  step {step:>3}  loss {value:.6}");
        }
        // Only A and B require a gradient; the NF4 tensors are not even float parameters.
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        let lr = 1e-2 * (1.0 - (step - 1) as f64 / STEPS as f64) + 1e-4;
        layer = optim.step(lr, layer, grads);
    }
    let loss_adapter = mse(&layer, &x_eval, &target_w);
    check(
        last < 0.5 * first,
        "the loss falls by more than half while the base stays in 4 bits",
        format!("{first:.6} → {last:.6}"),
    )?;
    let BaseWeight::Nf4(q) = &layer.weight else {
        bail!("training left a dense weight");
    };
    check(
        q.to_host()? == stored_before,
        "the NF4 codes, 8-bit scales and offset are bit for bit unchanged after training",
        "the stored base changed",
    )?;

    merge_two_ways(layer, &cfg, &x_eval, &target_w, loss_base, loss_adapter)
}

/// Part 4: what merging keeps of the learned update, into f32 and re-quantized to NF4.
fn merge_two_ways(
    mut layer: LoraLinear,
    cfg: &Nf4Config,
    x_eval: &Tensor<2>,
    target_w: &Tensor<2>,
    loss_base: f64,
    loss_adapter: f64,
) -> Result<()> {
    println!("\n== 4. merging the learned ΔW = (α/r)·A·B");
    let (BaseWeight::Nf4(q), Some(adapter)) = (&layer.weight, layer.adapter.as_ref()) else {
        bail!("expected an NF4 base with an adapter");
    };
    let base = q.to_host()?;
    let delta = adapter.delta_weight(); // [D_IN, D_OUT]
    let delta_host = host(delta.clone())?;
    let delta_pt = host(delta.transpose())?; // PyTorch order, as the NF4 data
    let w_hat = host(layer.weight.val())?;

    // Re-quantizing: measured first (changes nothing), then done, to see the loss it costs.
    let requant = layer.requantize_report(cfg, "mlp.up_proj")?;
    layer.merge("mlp.up_proj")?;
    check(
        !layer.weight.is_quantized(),
        "merge stores dequant(W) + ΔW densely: it never re-quantizes",
        "still NF4",
    )?;
    let merged = host(layer.weight.val())?;
    let loss_merged = mse(&layer, x_eval, target_w);
    let kept: Vec<f32> = merged.iter().zip(&w_hat).map(|(m, w)| m - w).collect();
    let dd = frobenius(&delta_host).powi(2);
    let survival_f32 = kept
        .iter()
        .zip(&delta_host)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum::<f64>()
        / dd;
    let err_f32 = frobenius(
        &kept
            .iter()
            .zip(&delta_host)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
    ) / dd.sqrt();
    let requantized = Nf4Weight::quantize(layer.weight.val(), cfg)?;
    let requant_layer = LoraLinear::new(requantized.dequantize(), None);
    let loss_requant = mse(&requant_layer, x_eval, target_w);

    println!(
        "{:>34} {:>10} {:>16} {:>14} {:>12}",
        "", "survival", "‖W'−Ŵ−ΔW‖/‖ΔW‖", "codes changed", "eval loss"
    );
    println!(
        "{:>34} {:>10} {:>16} {:>14} {loss_base:>12.6}",
        "NF4 base, no adapter", "", "", ""
    );
    println!(
        "{:>34} {:>10} {:>16} {:>14} {loss_adapter:>12.6}",
        "NF4 base + adapter (unmerged)", "", "", ""
    );
    println!(
        "{:>34} {survival_f32:>10.4} {err_f32:>16.2e} {:>14} {loss_merged:>12.6}",
        "merged into dequant(W), f32", "—"
    );
    println!(
        "{:>34} {:>10.4} {:>16.4} {:>13.1}% {loss_requant:>12.6}",
        "merged, then re-quantized to NF4",
        requant.survival,
        requant.relative_error,
        100.0 * requant.codes_changed
    );
    check(
        (survival_f32 - 1.0).abs() < 1e-4 && err_f32 < 1e-4,
        "merged into the dequantized f32 weight, ΔW is kept whole (to f32 rounding)",
        format!("survival {survival_f32}, error {err_f32:.2e}"),
    )?;
    check(
        (loss_merged - loss_adapter).abs() < 1e-3 * loss_adapter,
        "the f32-merged layer has the adapter's loss",
        format!("{loss_merged} vs {loss_adapter}"),
    )?;
    check(
        requant.relative_error > 0.3,
        "re-quantized after merging, ΔW comes back with an error of more than 30 % of its size",
        format!("{requant:?}"),
    )?;
    // How much of the adapter's improvement over the bare NF4 base is left, on the eval batch.
    let gain_kept = (loss_base - loss_requant) / (loss_base - loss_adapter);
    println!(
        "re-quantized, the layer keeps {:.0} % of the adapter's loss improvement ({loss_base:.6} → {loss_adapter:.6})",
        100.0 * gain_kept
    );
    check(
        gain_kept < 0.9,
        "re-quantizing costs loss: more than 10 % of the adapter's improvement is gone",
        format!("{:.1} % kept", 100.0 * gain_kept),
    )?;

    let absmax = base.absmax.values();
    let mean_absmax = absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64;
    println!(
        "\nthe same re-quantization for ΔW scaled by s (host computation on the stored W); half the \
         smallest NF4 step is (NF4[8] − NF4[7]) / 2 · mean absmax = {:.5}",
        (NF4_CODE[8] - NF4_CODE[7]) as f64 / 2.0 * mean_absmax
    );
    println!(
        "{:>6} {:>12} {:>10} {:>16} {:>14}",
        "s", "rms(s·ΔW)", "survival", "‖W'−Ŵ−ΔW‖/‖ΔW‖", "codes changed"
    );
    let n = delta_pt.len() as f64;
    let mut survivals = Vec::new();
    for s in [0.1f32, 0.3, 1.0, 3.0, 10.0] {
        let scaled: Vec<f32> = delta_pt.iter().map(|d| d * s).collect();
        let r = requantize_report(&base, &scaled, cfg)?;
        println!(
            "{s:>6} {:>12.5} {:>10.4} {:>16.4} {:>13.1}%",
            r.delta_norm / n.sqrt(),
            r.survival,
            r.relative_error,
            100.0 * r.codes_changed
        );
        survivals.push(r.survival);
    }
    check(
        survivals[0] < 0.3 && survivals[4] > 0.9,
        "a ΔW well below a code step mostly vanishes; one of many steps mostly survives",
        format!("{survivals:?}"),
    )
}
