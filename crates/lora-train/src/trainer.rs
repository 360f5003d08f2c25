//! The training loop, in one function: batch → forward → masked cross-entropy → backward →
//! clip → AdamW step → schedule, with logging, evaluation and checkpoints on intervals behind a
//! small [`Observer`]. Only the adapters train; the base model is frozen.
//!
//! AdaLoRA runs ([`TrainLoop::allocator`] set) add three small steps, in PEFT's order
//! (`AdaLoraModel.forward`, `update_and_allocate`): the orthogonality penalty joins the loss,
//! the clipped gradients are kept for the importance scores, and after the optimizer step the
//! allocator updates the scores and prunes singular values to the budget.
//!
//! Source: the shape of nanoGPT's `train.py` and burn's `custom-training-loop` example; global
//! gradient-norm clipping as PyTorch's `clip_grad_norm_` (burn's own clipping works per tensor).

use std::time::Instant;

use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::ParamId;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use lora_core::LoraModel;
use lora_core::adalora::RankAllocator;
use lora_models::Llama;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{RunCheckpoint, TrainerState};
use crate::config::TrainConfig;
use crate::data::{BatchSampler, Encoded, make_batch};
use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::loss::answer_loss;
use crate::schedule::{warmup_cosine, warmup_cosine_scaled};

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

/// When an evaluation happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalPoint {
    /// The base model, before the first step.
    Before,
    /// After optimizer step `n` (`--eval-every`).
    Step(usize),
    /// The fine-tuned model at the end.
    After,
}

/// Hooks the run calls; logging, progress bars and Ctrl-C handling live behind it.
pub trait Observer {
    /// A message for people (what was loaded, quantized, adapted).
    fn on_message(&mut self, _text: &str) {}
    /// An evaluation starts on `examples` held-out examples.
    fn on_eval_start(&mut self, _at: EvalPoint, _examples: usize) {}
    /// An evaluation finished.
    fn on_eval(&mut self, _at: EvalPoint, _e: &EvalReport) {}
    /// Training starts (or resumes) at optimizer step `start` of `total`.
    fn on_train_start(&mut self, _start: usize, _total: usize) {}
    /// After every optimizer step.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _step: usize) {}
    /// Whether the user asked to stop (Ctrl-C); the loop then checkpoints and returns.
    fn interrupted(&self) -> bool {
        false
    }
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Observer for Silent {}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done.
    Finished,
    /// Stopped early by [`Observer::interrupted`], after saving a checkpoint.
    Interrupted,
}

/// What the loop works on besides the model.
pub struct TrainLoop<'a> {
    /// The tokenized training examples.
    pub data: &'a [Encoded],
    /// Token id used for right padding.
    pub pad_id: u32,
    /// Steps, batch, optimizer, schedule, intervals and seed.
    pub config: &'a TrainConfig,
    /// Where checkpoints go (every `save_every` steps, at the end, and on interruption).
    pub checkpoint: &'a RunCheckpoint,
    /// The saved state to continue from (with the model's adapters and ids already restored).
    pub resume: Option<TrainerState>,
    /// AdaLoRA's rank allocator; `None` for LoRA.
    pub allocator: Option<&'a mut RankAllocator>,
}

/// Every trainable adapter tensor, by id.
fn trainable_param_ids(model: &Llama) -> Vec<ParamId> {
    let mut ids = Vec::new();
    model.visit_adapters(&mut |_, a| ids.extend(a.param_ids()));
    ids
}

/// The run's optimizer: AdamW (β = 0.9, 0.999, ε = 1e-8) with `weight_decay`, as PyTorch's
/// `torch.optim.AdamW`; the learning rate comes from [`lr_schedule`] at every step.
pub fn adamw(cfg: &TrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

/// The run's learning rate per parameter: warm-up + cosine ([`warmup_cosine`]); with LoRA+
/// (`loraplus_lr_ratio = λ`) the tensors PEFT's `create_loraplus_optimizer` puts in its B group
/// ([`lora_core::Adapter::loraplus_ids`]: `lora_B`, DoRA's magnitude) follow the same schedule
/// at λ × the rate. Adam's step does not change when the gradient is scaled, so LoRA+ needs
/// these per-parameter rates; scaling gradients would do nothing.
///
/// # Errors
/// [`TrainError::Config`] for a rate burn's schedulers refuse (e.g. `λ · lr > 1`).
pub fn lr_schedule(cfg: &TrainConfig, model: &Llama) -> Result<ModuleLrScheduler, TrainError> {
    let (lr, warmup, total, min) = (cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio);
    match cfg.loraplus_lr_ratio {
        None => warmup_cosine(lr, warmup, total, min),
        Some(ratio) => {
            let mut ids = Vec::new();
            model.visit_adapters(&mut |_, a| ids.extend(a.loraplus_ids()));
            warmup_cosine_scaled(lr, warmup, total, min, ids, ratio)
        }
    }
    .map_err(TrainError::Config)
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

/// Runs (or resumes) training of `model`'s adapters on `job.data`; with `job.allocator`, the
/// model's AdaLoRA adapters are trained and pruned by it (the logged loss stays the answer
/// cross-entropy; the orthogonality penalty is added to what is differentiated).
///
/// `model` must carry its adapters and live on an autodiff device. `evaluate` is called every
/// `eval_every` steps; the checkpoint is written every `save_every` steps, at the end, and on
/// interruption. A non-finite loss stops the run with [`TrainError::NonFinite`], leaving the
/// last good checkpoint in place.
///
/// # Errors
/// [`TrainError`] for bad settings, a non-finite loss, or a checkpoint that cannot be written.
pub fn train(
    mut model: Llama,
    job: TrainLoop<'_>,
    observer: &mut dyn Observer,
    evaluate: &mut dyn FnMut(&Llama) -> Result<EvalReport, TrainError>,
) -> Result<(Llama, Outcome), TrainError> {
    let TrainLoop {
        data: train,
        pad_id,
        config: cfg,
        checkpoint,
        resume,
        mut allocator,
    } = job;
    cfg.validate().map_err(TrainError::Config)?;
    if train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let device = model.device();
    let ids = trainable_param_ids(&model);
    let mut optim = adamw(cfg);
    let mut schedule = lr_schedule(cfg, &model)?;
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
    observer.on_train_start(start, cfg.steps);

    let t0 = Instant::now();
    for step in start..cfg.steps {
        let t_step = Instant::now();
        // Dropout masks depend only on (seed, step), so a resumed run draws the same ones.
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let mut accum = GradientsAccumulator::<Llama>::new();
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for _ in 0..cfg.grad_accum {
            let examples: Vec<&Encoded> = sampler
                .next_batch()
                .into_iter()
                .map(|i| &train[i])
                .collect();
            let batch = make_batch(&examples, pad_id, &device);
            tokens += batch.n_tokens;
            // Average over micro-batches: each contributes 1/grad_accum of the step's loss.
            let loss = answer_loss(&model, &batch).div_scalar(cfg.grad_accum as f64);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            // AdaLoRA: PEFT adds the orthogonality penalty to every forward's loss.
            let penalty = allocator.as_deref().and_then(|a| a.orth_penalty(&model));
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
        let importance_grads = allocator.as_deref().map(|a| a.gradients(&model, &grads));
        let lr = schedule.step();
        let lr_value = lr.base();
        model = optim.step(lr, model, grads);
        // AdaLoRA: update the scores from the new weights, prune λ to this step's budget.
        if let (Some(allocator), Some(g)) = (allocator.as_deref_mut(), importance_grads) {
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
            observer.on_eval(EvalPoint::Step(done), &report);
        }
        let interrupted = observer.interrupted();
        if (cfg.save_every > 0 && done % cfg.save_every == 0) || done == cfg.steps || interrupted {
            let state = TrainerState {
                step: done,
                sampler: sampler.position(),
            };
            checkpoint.save(&model, &optim, &state, cfg)?;
            observer.on_checkpoint(done);
        }
        if interrupted {
            return Ok((model, Outcome::Interrupted));
        }
    }
    Ok((model, Outcome::Finished))
}
