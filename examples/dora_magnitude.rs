//! # dora_magnitude — DoRA: a magnitude per output unit on top of LoRA's direction
//!
//! `cargo xtask example dora_magnitude`
//!
//! DoRA (Liu et al. 2024, arXiv:2402.09353) writes the adapted weight as a magnitude times a
//! direction, per output unit (a column of burn's `[d_in, d_out]` weight):
//!
//! ```text
//! W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖      m: [d_out], starts at ‖W‖
//! ```
//!
//! LoRA's `A`, `B` turn the direction; the magnitude `m` trains on its own. This program shows,
//! on `lora_core::LoraLinear` with a `lora_core::DoraAdapter`:
//!
//! 1. **No change at init.** `m = ‖W‖` and `B = 0`: look for `max |y_dora − y_base| = 0`.
//! 2. **What a magnitude buys.** The "fine-tuning target" rescales every output unit of `W` by
//!    its own factor in [0.5, 1.5] (`W* = W·diag(g)`). As a LoRA update that is
//!    `ΔW = W·diag(g − 1)`: full rank, so a rank-1 LoRA can only approximate it. DoRA at the same
//!    rank 1 learns it through `m` alone. Look for the two final losses (DoRA at the noise floor
//!    0.0025, LoRA far above) and for `m / ‖W‖` matching `g`.
//! 3. **Merging.** `W ← (m/‖W + ΔW‖)·(W + ΔW)`: the merged layer gives the same outputs, and
//!    unmerging restores `W` (DoRA keeps the norm it divided by; the merged weight cannot give
//!    it back).
//! 4. **Cost.** A DoRA forward also builds `W + s·A·B` and its column norms every time (the
//!    price PEFT users see as 15 %–2× per step); look for the two times (printed, not checked:
//!    this machine is shared).
//!
//! Each claim in 1–3 is checked; the program exits non-zero if one does not hold.

use anyhow::{Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use lora_core::{DoraAdapter, LoraAdapter, LoraConfig, LoraLinear, TargetModules};
use lora_examples::{check, device_from_args, host, max_abs, max_abs_diff, median_ms};

const D_IN: usize = 64;
const D_OUT: usize = 48;
/// One rank for both adapters: the target is out of reach for LoRA at this rank.
const R: usize = 1;
const ALPHA: f64 = 2.0;
const STEPS: usize = 400;
const BATCH: usize = 256;
/// Standard deviation of the noise on the targets (the loss cannot go below its square).
const NOISE: f64 = 0.05;

fn main() -> Result<()> {
    let device = device_from_args()?;
    device.seed(11);
    let w = Tensor::<2>::random(
        [D_IN, D_OUT],
        Distribution::Normal(0.0, 1.0 / (D_IN as f64).sqrt()),
        &device,
    );
    no_change_at_init(&w, &device)?;
    let layer = what_a_magnitude_buys(&w, &device)?;
    merging(layer, &device)?;
    cost(&w, &device)
}

fn config() -> LoraConfig {
    LoraConfig::new(R, ALPHA, TargetModules::AllLinear)
}

/// A layer on `w` with a fresh LoRA (or DoRA) adapter of rank `R`.
fn layer(w: &Tensor<2>, dora: bool, device: &Device) -> Result<LoraLinear> {
    let mut layer = LoraLinear::new(w.clone(), None);
    let lora = LoraAdapter::init(D_IN, D_OUT, R, ALPHA, &config(), device)?;
    if dora {
        layer.attach(DoraAdapter::init(lora, w), "layer")?;
    } else {
        layer.attach(lora, "layer")?;
    }
    Ok(layer)
}

/// ‖W‖ of every output unit (column), `[1, d_out]`.
fn column_norms(w: &Tensor<2>) -> Tensor<2> {
    w.clone().square().sum_dim(0).sqrt()
}

/// Part 1: `m = ‖W‖`, `B = 0` — the layer is the base layer, bit for bit.
fn no_change_at_init(w: &Tensor<2>, device: &Device) -> Result<()> {
    println!("\n== 1. a fresh DoRA adapter: m = ‖W‖ per output unit, B = 0");
    let layer = layer(w, true, device)?;
    let Some(dora) = layer.adapter.as_ref().and_then(|a| a.as_dora()) else {
        bail!("no DoRA adapter attached");
    };
    let m = host(dora.magnitude.val())?;
    let norms = host(column_norms(w))?;
    println!("  m[0..4] = {:?}, ‖W‖[0..4] = {:?}", &m[..4], &norms[..4]);
    check(
        m == norms,
        "the magnitude starts at the column norms of W",
        "",
    )?;
    let x = Tensor::<2>::random([8, D_IN], Distribution::Normal(0.0, 1.0), device);
    let base = host(x.clone().matmul(w.clone()))?;
    let diff = max_abs_diff(&host(layer.forward(x))?, &base);
    println!("  max |y_dora − y_base| = {diff}");
    check(
        diff == 0.0,
        "a fresh DoRA adapter leaves the output unchanged",
        diff,
    )
}

/// Trains a rank-`R` adapter (DoRA or LoRA) on noisy samples of `x → x·W*`; returns the layer
/// and the final loss.
fn train(
    w: &Tensor<2>,
    target: &Tensor<2>,
    dora: bool,
    device: &Device,
) -> Result<(LoraLinear, f64)> {
    let ad = device.clone().autodiff();
    let w = Tensor::<2>::from_data(w.clone().into_data(), &ad);
    let target = Tensor::<2>::from_data(target.clone().into_data(), &ad);
    let mut layer = layer(&w, dora, &ad)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut last = f64::NAN;
    let name = if dora { "DoRA" } else { "LoRA" };
    for step in 1..=STEPS {
        let x = Tensor::<2>::random([BATCH, D_IN], Distribution::Normal(0.0, 1.0), &ad);
        let noise = Tensor::<2>::random([BATCH, D_OUT], Distribution::Normal(0.0, NOISE), &ad);
        let y = (x.clone().matmul(target.clone()) + noise).detach();
        let loss = (layer.forward(x) - y).square().mean();
        last = loss.clone().into_scalar::<f32>() as f64;
        if step == 1 || step % 100 == 0 {
            println!("  {name} r = {R}  step {step:>4}  loss {last:.6}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        let lr = 2e-2 * (1.0 - (step - 1) as f64 / STEPS as f64) + 1e-4;
        layer = optim.step(lr, layer, grads);
    }
    Ok((layer, last))
}

/// Part 2: a per-unit rescaling of `W` — full rank as a LoRA update, one vector for DoRA.
fn what_a_magnitude_buys(w: &Tensor<2>, device: &Device) -> Result<LoraLinear> {
    println!(
        "\n== 2. target W* = W·diag(g), g ∈ [0.5, 1.5] per output unit ({STEPS} steps of {BATCH} noisy samples)"
    );
    let g: Vec<f32> = (0..D_OUT)
        .map(|o| 0.5 + o as f32 / (D_OUT - 1) as f32)
        .collect();
    let g_row = Tensor::<2>::from_data(TensorData::new(g.clone(), [1, D_OUT]), device);
    let target = w.clone() * g_row;
    let (dora, dora_loss) = train(w, &target, true, device)?;
    let (_, lora_loss) = train(w, &target, false, device)?;
    let floor = NOISE * NOISE;
    println!("  final loss: DoRA {dora_loss:.5}, LoRA {lora_loss:.5} (noise floor {floor:.5})");
    check(
        dora_loss < 2.0 * floor,
        "DoRA at rank 1 reaches the noise floor",
        dora_loss,
    )?;
    check(
        lora_loss > 4.0 * dora_loss,
        "LoRA at rank 1 stays far above it",
        lora_loss,
    )?;
    let Some(a) = dora.adapter.as_ref().and_then(|a| a.as_dora()) else {
        bail!("no DoRA adapter after training");
    };
    let m = host(a.magnitude.val())?;
    let norms = host(column_norms(w))?;
    let ratio: Vec<f32> = m.iter().zip(&norms).map(|(m, n)| m / n).collect();
    let err = max_abs_diff(&ratio, &g);
    println!(
        "  m/‖W‖ for units 0, 24, 47: {:.3} {:.3} {:.3}; g: {:.3} {:.3} {:.3}; max |m/‖W‖ − g| = {err:.3}",
        ratio[0], ratio[24], ratio[47], g[0], g[24], g[47]
    );
    check(
        err < 0.05,
        "the learned magnitudes are the target's factors",
        err,
    )?;
    Ok(dora)
}

/// Part 3: merged outputs equal unmerged ones; unmerging restores `W`.
fn merging(mut layer: LoraLinear, device: &Device) -> Result<()> {
    println!("\n== 3. merging: W ← (m/‖W + ΔW‖)·(W + ΔW)");
    let ad = device.clone().autodiff();
    let x = Tensor::<2>::random([16, D_IN], Distribution::Normal(0.0, 1.0), &ad);
    let w = host(layer.weight.val())?;
    let unmerged = host(layer.forward(x.clone()))?;
    layer.merge("layer")?;
    let merged = host(layer.forward(x))?;
    let diff = max_abs_diff(&merged, &unmerged);
    println!(
        "  max |merged − unmerged| = {diff:.2e} (outputs up to {:.2})",
        max_abs(&unmerged)
    );
    check(
        diff < 1e-4,
        "the merged layer gives the unmerged outputs",
        diff,
    )?;
    layer.unmerge("layer")?;
    let back = max_abs_diff(&host(layer.weight.val())?, &w);
    println!("  max |unmerged W − W| = {back:.2e}");
    check(back < 1e-5, "unmerging restores W", back)
}

/// Part 4: the time of a training forward + backward, LoRA vs DoRA (printed only).
fn cost(w: &Tensor<2>, device: &Device) -> Result<()> {
    println!("\n== 4. cost of a forward + backward on [{BATCH}, {D_IN}] (median of 20)");
    let ad = device.clone().autodiff();
    let w = Tensor::<2>::from_data(w.clone().into_data(), &ad);
    for dora in [false, true] {
        let layer = layer(&w, dora, &ad)?;
        let x = Tensor::<2>::random([BATCH, D_IN], Distribution::Normal(0.0, 1.0), &ad);
        let ms = median_ms(3, 20, || {
            let loss = layer.forward(x.clone()).square().mean();
            let _ = loss.backward();
        });
        println!("  {}: {ms:.3} ms", if dora { "DoRA" } else { "LoRA" });
    }
    Ok(())
}
