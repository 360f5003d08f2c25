//! # custom_model — LoRA on your own burn model: the `LoraModel` trait in 20 lines
//!
//! `cargo xtask example custom_model`
//!
//! Nothing in `lora-core` knows about Llama. A model opts in with two steps:
//!
//! 1. its linear layers are `lora_core::LoraLinear`s — built from the weights of a burn
//!    `nn::Linear` with `LoraLinear::new(weight, bias)`; both store the weight as
//!    `[d_in, d_out]`, so nothing is transposed;
//! 2. it implements `lora_core::LoraModel`: visit each linear layer with its module path
//!    (`"encoder.fc1"`), the name `target_modules` matches against and PEFT files are keyed by.
//!
//! Then the whole PEFT flow works on it: `apply_lora` (freeze + attach), training with burn's
//! optimizer, `peft::lora::save_adapter` / `peft::lora::load_adapter`, and `merge_and_unload`.
//!
//! The model here is a two-layer MLP, `y = fc2(gelu(fc1(x)))`, under an `encoder.` prefix.
//! Look for, in order: its layer paths; a `target_modules` entry that matches nothing being an
//! error (PEFT raises one too); the adapted layers with their
//! shapes and scaling; the loss falling as the adapter learns a changed task while every base
//! weight and bias stays bit for bit; the adapter file's keys in PyTorch layout (`lora_A`
//! `[r, in]`, `lora_B` `[out, r]`, the transpose of the in-memory `[in, r]` / `[r, out]`); the
//! reloaded adapter giving identical outputs; and the merged plain model agreeing to rounding.
//!
//! Every claim is checked; the program exits non-zero if one does not hold.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::{Distribution, Tensor};
use lora_core::tensor_io::read_safetensors;
use lora_core::{
    LinearVisitor, LoraConfig, LoraError, LoraLinear, LoraModel, TargetModules, apply_lora,
    merge_and_unload, peft,
};
use lora_examples::{check, device_from_args, host, max_abs, max_abs_diff, scratch_dir};

const D_IN: usize = 16;
const HIDDEN: usize = 64;
const D_OUT: usize = 8;

/// The two linear layers of the MLP.
#[derive(Module, Debug)]
pub struct Encoder {
    /// `[D_IN, HIDDEN]` weight, `[HIDDEN]` bias.
    pub fc1: LoraLinear,
    /// `[HIDDEN, D_OUT]` weight, `[D_OUT]` bias.
    pub fc2: LoraLinear,
}

/// A user's own small model: `y = fc2(gelu(fc1(x)))`.
#[derive(Module, Debug)]
pub struct TwoLayerMlp {
    /// The layers, at module paths `encoder.fc1` and `encoder.fc2`.
    pub encoder: Encoder,
}

impl TwoLayerMlp {
    /// Wraps two trained burn `Linear`s. `LoraLinear` and `nn::Linear` share the `[d_in, d_out]`
    /// layout, so the tensors move over as they are (and come in frozen).
    pub fn from_burn(fc1: Linear, fc2: Linear) -> Self {
        let wrap = |l: Linear| LoraLinear::new(l.weight.val(), l.bias.map(|b| b.val()));
        TwoLayerMlp {
            encoder: Encoder {
                fc1: wrap(fc1),
                fc2: wrap(fc2),
            },
        }
    }

    /// # Shapes
    /// `x`: `[B, D_IN]` → `[B, D_OUT]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = gelu(self.encoder.fc1.forward(x)); // [B, HIDDEN]
        self.encoder.fc2.forward(h)
    }
}

/// The whole LoRA integration: list the linear layers, with their paths, in a fixed order.
impl LoraModel for TwoLayerMlp {
    fn visit_linears_mut(&mut self, f: &mut LinearVisitor<'_>) -> Result<(), LoraError> {
        f("encoder.fc1", &mut self.encoder.fc1)?;
        f("encoder.fc2", &mut self.encoder.fc2)
    }

    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        f("encoder.fc1", &self.encoder.fc1);
        f("encoder.fc2", &self.encoder.fc2);
    }
}

/// Every base weight and bias, on the host, to show they never change.
fn base_values(model: &TwoLayerMlp) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for lin in [&model.encoder.fc1, &model.encoder.fc2] {
        out.push(host(lin.weight.val())?);
        if let Some(b) = &lin.bias {
            out.push(host(b.val())?);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let device = device_from_args()?;
    let ad = device.clone().autodiff();
    ad.seed(42);

    // A "pretrained" model, as a user would have it: burn's own Linear layers.
    let fc1 = LinearConfig::new(D_IN, HIDDEN).init(&ad);
    let fc2 = LinearConfig::new(HIDDEN, D_OUT).init(&ad);
    let x_probe = Tensor::<2>::random([4, D_IN], Distribution::Normal(0.0, 1.0), &ad);
    let y_burn = host(fc1.forward(x_probe.clone()))?;
    let base = TwoLayerMlp::from_burn(fc1, fc2);
    println!("\n== 1. the model and its linear layers");
    println!("layer paths: {:?}", base.linear_paths());
    check(
        host(base.encoder.fc1.forward(x_probe))? == y_burn,
        "LoraLinear built from nn::Linear's tensors computes exactly what nn::Linear did",
        "outputs differ",
    )?;

    // A target that names no layer of this model is an error, not a silent no-op.
    println!("\n== 2. choosing targets");
    let wrong = LoraConfig::new(4, 8.0, TargetModules::names(&["q_proj"]));
    match apply_lora(base.clone(), &wrong, &ad) {
        Err(e @ LoraError::TargetMatchesNothing { .. }) => println!("[\"q_proj\"] → error: {e}"),
        Err(e) => bail!("CLAIM FAILED: expected TargetMatchesNothing, got {e}"),
        Ok(_) => bail!("CLAIM FAILED: a target that matches nothing was accepted"),
    }
    check(true, "a target matching no layer is an error", "")?;

    // Names match a whole path or its last components: "fc1" selects "encoder.fc1".
    let lora = LoraConfig::new(4, 8.0, TargetModules::names(&["fc1", "fc2"]));
    let (mut model, report) = apply_lora(base.clone(), &lora, &ad)?;
    for m in &report.modules {
        println!(
            "adapted {}: [{}, {}], r = {}, scaling α/r = {}",
            m.path, m.d_in, m.d_out, m.r, m.scaling
        );
    }
    println!(
        "trainable values: {} (the base has {})",
        report.trainable_params,
        D_IN * HIDDEN + HIDDEN + HIDDEN * D_OUT + D_OUT
    );

    // 3. Adapt to a changed task: the same network with a rank-2 change in fc1.
    println!("\n== 3. training the adapters (AdamW) on a changed task");
    let delta = Tensor::<2>::random([D_IN, 2], Distribution::Normal(0.0, 0.5), &ad).matmul(
        Tensor::random([2, HIDDEN], Distribution::Normal(0.0, 0.5), &ad),
    );
    let mut teacher = base.clone();
    teacher.encoder.fc1 = LoraLinear::new(
        base.encoder.fc1.weight.val() + delta,
        base.encoder.fc1.bias.as_ref().map(|b| b.val()),
    );
    let before = base_values(&model)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 1..=300 {
        let x = Tensor::<2>::random([128, D_IN], Distribution::Normal(0.0, 1.0), &ad);
        let y = teacher.forward(x.clone()).detach();
        let loss = (model.forward(x) - y).square().mean();
        last = loss.clone().into_scalar::<f32>() as f64;
        if step == 1 {
            first = last;
        }
        if step == 1 || step % 75 == 0 {
            println!("  step {step:>3}  loss {last:.6}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    check(
        last < 0.05 * first,
        "the adapters learn the changed task (loss below 5 % of its start)",
        format!("{first:.5} → {last:.5}"),
    )?;
    check(
        base_values(&model)? == before,
        "every base weight and bias is bit for bit unchanged (apply_lora froze them)",
        "a base tensor moved",
    )?;

    // 4. Save in PEFT's format and look inside.
    println!("\n== 4. the PEFT adapter files");
    let dir = scratch_dir("custom-model")?;
    let n = peft::lora::save_adapter(&model, &lora, "two-layer-mlp", &dir)?;
    let file = dir.join(peft::WEIGHTS_FILE);
    let tensors = read_safetensors(&file)?;
    for (key, t) in &tensors {
        println!("  {key}: {:?}", t.shape);
    }
    let fc1_a = tensors.get("base_model.model.encoder.fc1.lora_A.weight");
    check(
        n == 2 && fc1_a.is_some_and(|t| t.shape == [4, D_IN]),
        "keys are base_model.model.<path>.lora_A/B.weight, lora_A stored as [r, in] (PyTorch)",
        format!("{:?}", tensors.keys().collect::<Vec<_>>()),
    )?;

    // 5. Load it onto a fresh copy of the base model: the same function of x.
    println!("\n== 5. loading the adapter onto a fresh base model");
    let (reloaded, loaded_cfg, _) = peft::lora::load_adapter(base.clone(), &dir, &ad)?;
    std::fs::remove_dir_all(&dir).ok();
    let x = Tensor::<2>::random([32, D_IN], Distribution::Normal(0.0, 1.0), &device);
    let (trained, reloaded) = (model.valid(), reloaded.valid());
    let y_trained = host(trained.forward(x.clone()))?;
    check(
        loaded_cfg.r == 4 && host(reloaded.forward(x.clone()))? == y_trained,
        "the reloaded adapter gives the trained model's outputs bit for bit",
        "outputs differ",
    )?;

    // 6. Merge for inference: a plain MLP again, same outputs up to rounding.
    let mut plain = trained.clone();
    merge_and_unload(&mut plain)?;
    let diff = max_abs_diff(&host(plain.forward(x))?, &y_trained);
    println!("\n== 6. merge_and_unload: max |merged − adapter| = {diff:.2e}");
    check(
        diff <= 1e-5 * max_abs(&y_trained).max(1.0) && plain.encoder.fc1.adapter.is_none(),
        "the merged plain model matches the adapted one to rounding",
        diff,
    )?;
    Ok(())
}
