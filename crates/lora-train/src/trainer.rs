//! The training loop, in one function: batch → forward → masked cross-entropy → backward →
//! clip → AdamW step → schedule, with logging, evaluation and checkpoints on intervals behind a
//! small [`Observer`]. Only the LoRA factors train; the base model is frozen.
//!
//! AdaLoRA runs ([`train_with`] given a [`RankAllocator`]) add three small steps, in PEFT's
//! order (`AdaLoraModel.forward`, `update_and_allocate`): the orthogonality penalty joins the
//! loss, the clipped gradients are kept for the importance scores, and after the optimizer step
//! the allocator updates the scores and prunes singular values to the budget.
//!
//! Source: the shape of nanoGPT's `train.py` and burn's `custom-training-loop` example; global
//! gradient-norm clipping as PyTorch's `clip_grad_norm_` (burn's own clipping works per tensor).

use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use lora_core::LoraModel;
use lora_core::adalora::RankAllocator;
use lora_models::Llama;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, TrainerState};
use crate::config::TrainConfig;
use crate::data::{BatchSampler, Encoded};
use crate::error::TrainError;
use crate::eval::padded;
use crate::loss::{AnswerPositions, answer_loss};
use crate::schedule::warmup_cosine;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Mean answer-token loss of this step's batches (nats/token).
    pub loss: f64,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Global L2 norm of the adapter gradients before clipping.
    pub grad_norm: f64,
    /// Tokens (prompt + answer, no padding) per second over this step.
    pub tokens_per_s: f64,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

/// Numbers from an evaluation pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean answer-token loss (nats/token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Classification accuracy in [0, 1], for labelled tasks.
    pub accuracy: Option<f64>,
    /// Examples evaluated.
    pub examples: usize,
}

/// Hooks the loop calls; logging, progress bars and Ctrl-C handling live behind it.
pub trait Observer {
    /// After every optimizer step.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// After an evaluation at `step`.
    fn on_eval(&mut self, _step: usize, _e: &EvalReport) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _step: usize) {}
    /// Whether the user asked to stop (Ctrl-C); the loop then checkpoints and returns.
    fn interrupted(&self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done.
    Finished,
    /// Stopped early by [`Observer::interrupted`], after saving a checkpoint.
    Interrupted,
}

/// The adapter parameters, by id, in a fixed order.
pub fn adapter_param_ids(model: &Llama) -> Vec<(String, ParamId, ParamId)> {
    let mut ids = Vec::new();
    model.visit_linears(&mut |path, lin| {
        if let Some(a) = &lin.adapter {
            ids.push((path.to_string(), a.lora_a.id, a.lora_b.id));
        }
    });
    ids
}

/// Every trainable (2-D) adapter parameter: LoRA's `A`, `B` and AdaLoRA's `Q`, `λ`, `P`.
fn trainable_param_ids(model: &Llama) -> Vec<ParamId> {
    let mut ids = Vec::new();
    model.visit_linears(&mut |_, lin| {
        if let Some(a) = &lin.adapter {
            ids.extend([a.lora_a.id, a.lora_b.id]);
        }
        if let Some(a) = &lin.adalora {
            ids.extend([a.lora_a.id, a.lora_e.id, a.lora_b.id]);
        }
    });
    ids
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (0 = no clipping).
/// Returns the norm before clipping.
fn clip_global_norm(grads: &mut GradientsParams, ids: &[ParamId], max_norm: f64) -> f64 {
    let mut sq = 0.0f64;
    for id in ids {
        if let Some(g) = grads.get::<2>(*id) {
            sq += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for id in ids {
            if let Some(g) = grads.remove::<2>(*id) {
                grads.register(*id, g.mul_scalar(scale));
            }
        }
    }
    norm
}

/// Runs (or resumes) training of `model`'s LoRA adapters on `train`: [`train_with`] without a
/// rank allocator.
///
/// # Errors
/// As [`train_with`].
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: Llama,
    train: &[Encoded],
    pad_id: u32,
    cfg: &TrainConfig,
    resume: Option<TrainerState>,
    checkpoint: &Checkpoint,
    observer: &mut dyn Observer,
    evaluate: &mut dyn FnMut(&Llama) -> Result<EvalReport, TrainError>,
) -> Result<(Llama, Outcome), TrainError> {
    train_with(
        model, train, pad_id, cfg, resume, checkpoint, observer, evaluate, None,
    )
}

/// Runs (or resumes) training of `model`'s adapters on `train`; with `adalora`, the model's
/// AdaLoRA adapters are trained and pruned by that allocator (the logged loss stays the answer
/// cross-entropy; the orthogonality penalty is added to what is differentiated).
///
/// `model` must carry its adapters and live on an autodiff device. `evaluate` is called every
/// `eval_every` steps; `checkpoint` is written every `save_every` steps, at the end, and on
/// interruption. A non-finite loss stops the run with [`TrainError::NonFinite`], leaving the
/// last good checkpoint in place.
///
/// # Errors
/// [`TrainError`] for bad settings, a non-finite loss, or a checkpoint that cannot be written.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    mut model: Llama,
    train: &[Encoded],
    pad_id: u32,
    cfg: &TrainConfig,
    resume: Option<TrainerState>,
    checkpoint: &Checkpoint,
    observer: &mut dyn Observer,
    evaluate: &mut dyn FnMut(&Llama) -> Result<EvalReport, TrainError>,
    mut adalora: Option<&mut RankAllocator>,
) -> Result<(Llama, Outcome), TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    if train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let device = model.lm_head.weight.val().device();
    let ids = trainable_param_ids(&model);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let mut schedule = warmup_cosine(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        .map_err(TrainError::Config)?;
    let mut sampler = BatchSampler::new(train.len(), cfg.batch_size, cfg.seed)?;
    let mut start = 0;
    if let Some(state) = resume {
        optim = checkpoint.load_optimizer(optim)?;
        sampler = BatchSampler::from_state(train.len(), cfg.batch_size, cfg.seed, state.sampler)?;
        for _ in 0..state.step {
            schedule.step(); // the schedule is a pure function of the step
        }
        start = state.step;
    }

    let t0 = Instant::now();
    for step in start..cfg.steps {
        let t_step = Instant::now();
        // Dropout masks depend only on (seed, step), so a resumed run draws the same ones.
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let mut accum = GradientsAccumulator::<Llama>::new();
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for _ in 0..cfg.grad_accum {
            let batch: Vec<&Encoded> = sampler
                .next_batch()
                .into_iter()
                .map(|i| &train[i])
                .collect();
            let seqs: Vec<&[u32]> = batch.iter().map(|e| &e.ids[..]).collect();
            let (input, t) = padded(&seqs, pad_id, &device);
            let pos = AnswerPositions::new(batch.iter().map(|e| (&e.ids[..], e.prompt_len)), t);
            tokens += batch.iter().map(|e| e.ids.len()).sum::<usize>();
            // Average over micro-batches: each contributes 1/grad_accum of the step's loss.
            let loss = answer_loss(&model, input, &pos, &device).div_scalar(cfg.grad_accum as f64);
            let value = loss.clone().into_scalar::<f32>() as f64;
            loss_sum += value;
            // AdaLoRA: PEFT adds the orthogonality penalty to every forward's loss.
            let penalty = adalora.as_deref().and_then(|a| a.orth_penalty(&model));
            let loss = match penalty {
                Some(p) => loss + p.div_scalar(cfg.grad_accum as f64),
                None => loss,
            };
            accum.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss: loss_sum,
            });
        }
        let mut grads = accum.grads();
        let grad_norm = clip_global_norm(&mut grads, &ids, cfg.max_grad_norm);
        // AdaLoRA: the importance scores use the clipped gradients (PEFT reads `p.grad`).
        let importance_grads = adalora.as_deref().map(|a| a.gradients(&model, &grads));
        let lr = schedule.step();
        let lr_value = lr.base();
        model = optim.step(lr, model, grads);
        // AdaLoRA: update the scores from the new weights, prune λ to this step's budget.
        if let (Some(allocator), Some(g)) = (adalora.as_deref_mut(), importance_grads) {
            allocator.update_and_allocate(&mut model, step, g)?;
        }

        let secs = t_step.elapsed().as_secs_f64();
        observer.on_step(&StepMetrics {
            step: step + 1,
            loss: loss_sum,
            lr: lr_value,
            grad_norm,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            elapsed_s: t0.elapsed().as_secs_f64(),
        });

        let done = step + 1;
        if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done < cfg.steps {
            let report = evaluate(&model)?;
            observer.on_eval(done, &report);
        }
        let interrupted = observer.interrupted();
        if (cfg.save_every > 0 && done % cfg.save_every == 0) || done == cfg.steps || interrupted {
            checkpoint.save(
                &model,
                &optim,
                &TrainerState {
                    step: done,
                    sampler: sampler.position(),
                },
                cfg,
            )?;
            observer.on_checkpoint(done);
        }
        if interrupted {
            return Ok((model, Outcome::Interrupted));
        }
    }
    Ok((model, Outcome::Finished))
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Keeps `model` off the autodiff graph for evaluation: dropout off, no gradients.
pub fn eval_view(model: &Llama) -> Llama {
    model.valid()
}
