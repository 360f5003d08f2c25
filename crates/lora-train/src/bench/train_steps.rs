//! Timed LoRA training steps: forward + causal-LM loss, backward, AdamW step, each phase timed
//! on its own.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use lora_models::Llama;
use serde::{Deserialize, Serialize};

use super::{ids_tensor, process_cpu_seconds};
use crate::error::TrainError;
use crate::loss::causal_lm_loss;

/// Per-step measurements of the timed steps (warm-up steps are not recorded).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainTimings {
    /// Wall seconds of each whole step.
    pub step_s: Vec<f64>,
    /// Forward pass and loss (until the loss value is on the host).
    pub forward_s: Vec<f64>,
    /// `backward()` and collecting the parameter gradients.
    pub backward_s: Vec<f64>,
    /// The AdamW update.
    pub optimizer_s: Vec<f64>,
    /// CPU seconds (all threads) of each step; empty where the OS does not tell.
    pub cpu_s: Vec<f64>,
    /// Loss of each timed step (nats/token), to show the steps really train.
    pub losses: Vec<f64>,
    /// Number of parameter tensors that received a gradient (2 per adapted weight).
    pub grad_tensors: usize,
}

fn sync(device: &Device) -> Result<(), TrainError> {
    // Eager CPU backends have nothing pending; wgpu returns before the GPU finishes.
    device
        .sync()
        .map_err(|e| TrainError::Config(format!("device sync failed: {e:?}")))
}

/// Runs `warmup + steps` training steps of `model` (which carries trainable adapters and lives
/// on an autodiff device) on the fixed batch `ids` and times the last `steps`. The loss is the
/// causal-LM cross-entropy over every position (labels = inputs), as `transformers` computes it
/// for `model(input_ids, labels=input_ids)`. `on_step(i, n, seconds, loss)` is called after each
/// step, for progress.
///
/// # Shapes
/// `ids`: `B` rows of `T` token ids
///
/// # Errors
/// [`TrainError::NonFinite`] if the loss is not finite; [`TrainError::Config`] if the device
/// fails to synchronise.
pub fn time_training(
    mut model: Llama,
    ids: &[Vec<u32>],
    warmup: usize,
    steps: usize,
    lr: f64,
    weight_decay: f64,
    on_step: &mut dyn FnMut(usize, usize, f64, f64),
) -> Result<(Llama, TrainTimings), TrainError> {
    let device = model.device();
    let input = ids_tensor(ids, &device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let mut out = TrainTimings::default();
    let n = warmup + steps;
    for i in 0..n {
        let cpu0 = process_cpu_seconds();
        let t0 = Instant::now();
        let logits = model.forward(input.clone(), None); // [B, T, V]
        let loss = causal_lm_loss(logits, input.clone());
        let value = loss.clone().into_scalar::<f32>() as f64;
        let t1 = Instant::now();
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: i + 1,
                loss: value,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        out.grad_tensors = grads.len();
        sync(&device)?;
        let t2 = Instant::now();
        model = optim.step(lr, model, grads);
        sync(&device)?;
        let t3 = Instant::now();
        let total = (t3 - t0).as_secs_f64();
        on_step(i + 1, n, total, value);
        if i < warmup {
            continue;
        }
        out.step_s.push(total);
        out.forward_s.push((t1 - t0).as_secs_f64());
        out.backward_s.push((t2 - t1).as_secs_f64());
        out.optimizer_s.push((t3 - t2).as_secs_f64());
        out.losses.push(value);
        if let (Some(c0), Some(c1)) = (cpu0, process_cpu_seconds()) {
            out.cpu_s.push(c1 - c0);
        }
    }
    Ok((model, out))
}

/// Trainable values of `model`: the elements of every parameter that requires a gradient
/// (burn's own adapters as well as ours).
pub fn trainable_params(model: &Llama) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}
