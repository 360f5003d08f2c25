//! The whole training run as one library call, [`run_training`]: load the model (optionally in
//! NF4), load and split the task, attach adapters (or restore them from the run's checkpoint),
//! evaluate the base model, train, save the adapter, evaluate again, and leave a run directory
//! behind: `adapter/` (PEFT), `metrics.jsonl`, `eval_before.json`, `summary.json`, `loss.png`,
//! `config.toml`, `checkpoint/`, `samples.md` and `answers.jsonl` (the held-out answers before
//! and after; `answers_before.json` keeps the base model's for a resumed run), and `ranks.png`
//! for AdaLoRA.
//!
//! ```no_run
//! use lora_train::{RunDir, Silent, TrainConfig, run_training};
//!
//! # fn main() -> Result<(), lora_train::TrainError> {
//! // SmolLM2-135M-Instruct on TREC with the README's defaults; change any field first.
//! let config = TrainConfig::default();
//! let run = RunDir::create(None)?; // runs/run-<unix time>
//! let summary = run_training(&config, &run, &mut Silent)?;
//! if let (Some(before), Some(after)) = (&summary.before, &summary.after) {
//!     println!("held-out accuracy {:?} → {:?}", before.accuracy, after.accuracy);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use lora_core::adalora::{RankAllocator, apply_adalora};
use lora_core::peft::{self, AdapterConfig};
use lora_core::quant::QuantReport;
use lora_core::tensor_io::write_atomic;
use lora_core::{AdaptReport, BackendKind, BaseDtype, apply_lora, select_device};
use lora_models::checkpoint::Storage;
use lora_models::tokenizer::TextTokenizer;
use lora_models::{Llama, cache};
use serde::Serialize;

use crate::checkpoint::RunCheckpoint;
use crate::config::{Method, TrainConfig};
use crate::data::DatasetSummary;
use crate::error::TrainError;
use crate::eval::{AnswerSettings, EVAL_BATCH, EvalReport, evaluate, evaluate_task};
use crate::exact_match::Answer;
use crate::rank_report::{RankSummary, finish_adalora};
use crate::report::{MetricsLog, peak_rss_bytes, plot_loss, read_metrics};
use crate::run_dir::io;
pub use crate::run_dir::{RunDir, timestamped_dir};
use crate::samples::write_samples;
use crate::task::{Task, load_task};
use crate::trainer::{EvalPoint, Observer, Outcome, StepMetrics, TrainLoop, train};

/// How the base weights were stored, for `summary.json` (QLoRA runs).
#[derive(Clone, Debug, Serialize)]
pub struct QuantSummary {
    /// `nf4`.
    pub method: &'static str,
    /// Weights per block.
    pub block_size: usize,
    /// Whether the block scales are quantized again.
    pub double_quant: bool,
    /// Linear layers stored in NF4.
    pub quantized_modules: usize,
    /// Weights stored in NF4.
    pub quantized_weights: usize,
    /// Bytes those weights take on the device.
    pub base_bytes_on_device: usize,
    /// `8 · base_bytes_on_device / quantized_weights`.
    pub bits_per_weight: f64,
    /// Bytes the same weights took before, in f32.
    pub f32_bytes_before: usize,
}

/// What a run did and measured: `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The effective config.
    pub config: TrainConfig,
    /// The model file or directory.
    pub model: String,
    /// The task's name.
    pub task: String,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub heldout_examples: usize,
    /// Examples dropped because their answer did not fit in `seq_len`.
    pub skipped_examples: usize,
    /// Examples per split, tokens per example, truncation, loss share.
    pub dataset: DatasetSummary,
    /// Trainable adapter values.
    pub trainable_params: usize,
    /// Adapted linear layers.
    pub adapted_modules: usize,
    /// The base model's held-out numbers; `None` when there is no held-out example (nothing
    /// was measured, so no number is reported).
    pub before: Option<EvalReport>,
    /// The fine-tuned model's held-out numbers; `None` as for `before`.
    pub after: Option<EvalReport>,
    /// How accuracy is decided.
    pub accuracy_rule: &'static str,
    /// Median training tokens/s over this process's steps.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Seconds from the start of the call to the end.
    pub wall_time_s: f64,
    /// Seconds in the training loop.
    pub train_time_s: f64,
    /// The backend's name.
    pub backend: String,
    /// `finished` or `interrupted`.
    pub outcome: &'static str,
    /// Optimizer steps done by the end of the run.
    pub steps_done: usize,
    /// The run directory.
    pub run_dir: PathBuf,
    /// QLoRA only: how the base weights are stored.
    pub quant: Option<QuantSummary>,
    /// Memory while loading the model.
    pub load_memory: LoadMemory,
    /// AdaLoRA only: where the rank budget went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora: Option<RankSummary>,
}

impl Summary {
    /// Whether the run stopped early (Ctrl-C); it continues with `--resume`.
    pub fn interrupted(&self) -> bool {
        self.outcome == "interrupted"
    }
}

/// Passes every event on, and keeps what the run directory needs: `metrics.jsonl`, the
/// intermediate evaluations for `loss.png`, the step rates for the summary.
struct Recorder<'a> {
    inner: &'a mut dyn Observer,
    log: MetricsLog,
    evals: Vec<(usize, EvalReport)>,
    rates: Vec<f64>,
}

impl Observer for Recorder<'_> {
    fn on_message(&mut self, text: &str) {
        self.inner.on_message(text);
    }
    fn on_eval_start(&mut self, at: EvalPoint, examples: usize) {
        self.inner.on_eval_start(at, examples);
    }
    fn on_eval(&mut self, at: EvalPoint, e: &EvalReport) {
        if let EvalPoint::Step(step) = at {
            self.evals.push((step, e.clone()));
            let line = serde_json::json!({"event": "eval", "step": step, "loss": e.loss, "accuracy": e.accuracy});
            if let Err(err) = self.log.write(&line) {
                self.inner.on_message(&format!("warning: {err}"));
            }
        }
        self.inner.on_eval(at, e);
    }
    fn on_train_start(&mut self, start: usize, total: usize) {
        self.inner.on_train_start(start, total);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        if let Err(err) = self.log.write(m) {
            self.inner.on_message(&format!("warning: {err}"));
        }
        self.rates.push(m.tokens_per_s);
        self.inner.on_step(m);
    }
    fn on_checkpoint(&mut self, step: usize) {
        self.inner.on_checkpoint(step);
    }
    fn interrupted(&self) -> bool {
        self.inner.interrupted()
    }
}

/// Held-out loss, perplexity, accuracy and exact match of `model` (dropout off, no autodiff),
/// announced to `observer`, with the generated answers.
fn evaluate_at(
    model: &Llama,
    tok: &TextTokenizer,
    task: &Task,
    cfg: &TrainConfig,
    pad: u32,
    at: EvalPoint,
    observer: &mut dyn Observer,
) -> Result<(Option<EvalReport>, Vec<Answer>), TrainError> {
    if task.test.is_empty() {
        return Ok((None, Vec::new()));
    }
    observer.on_eval_start(at, task.test.len());
    let settings = AnswerSettings {
        metric: cfg.eval_metric,
        max_new_tokens: cfg.eval_max_new_tokens,
    };
    let t = Instant::now();
    let (report, answers) = evaluate_task(&model.valid(), tok, task, settings, pad)?;
    observer.on_eval(at, &report);
    observer.on_message(&format!(
        "held-out evaluation ({}): {} examples, {} answers generated, in {:.1}s",
        if at == EvalPoint::Before {
            "base model"
        } else {
            "fine-tuned"
        },
        report.examples,
        answers.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok((Some(report), answers))
}

/// Reads a JSON file the run wrote earlier (a resumed run's `eval_before.json`).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: {e} (delete the file to evaluate the base model again)",
            path.display()
        ))
    })
}

/// Writes `value` as pretty JSON, atomically.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Memory while loading: the process's peak before the first step, what it holds once the
/// model is loaded, and the largest single weight in f32. Streaming loads keep the first at
/// most the sum of the other two.
#[derive(Clone, Debug, Serialize)]
pub struct LoadMemory {
    /// `VmHWM` right after loading, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// `VmRSS` right after loading, bytes.
    pub rss_after_bytes: Option<u64>,
    /// The largest weight of the model, in f32 bytes.
    pub largest_tensor_f32_bytes: u64,
    /// Seconds to load.
    pub seconds: f64,
}

/// `VmRSS` of this process, bytes.
fn rss_now_bytes() -> Option<u64> {
    crate::bench::rss_now_bytes()
}

/// Loads the model with each tensor converted as it is read: NF4 for every linear layer but
/// `lm_head` when the config asks (QLoRA; transformers keeps `lm_head` in full precision too),
/// the rest in `base_dtype`; says what was loaded.
fn load_base(
    path: &Path,
    cfg: &TrainConfig,
    device: &burn::tensor::Device,
    observer: &mut dyn Observer,
) -> Result<(lora_models::Pretrained, Option<QuantSummary>, LoadMemory), TrainError> {
    let nf4 = cfg.quant.to_nf4().map_err(TrainError::Config)?;
    let storage = Storage {
        dtype: cfg.base_dtype,
        nf4,
    };
    let t = Instant::now();
    let pretrained = lora_models::load_stored(path, &storage, device)?;
    let c = &pretrained.model.config;
    let memory = LoadMemory {
        peak_rss_bytes: peak_rss_bytes(),
        rss_after_bytes: rss_now_bytes(),
        largest_tensor_f32_bytes: 4
            * (c.vocab_size * c.d_model)
                .max(c.d_model * c.d_ff)
                .max(c.d_model * c.n_heads * c.head_dim) as u64,
        seconds: t.elapsed().as_secs_f64(),
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    observer.on_message(&format!(
        "loaded {} in {:.1}s: {:.0} MiB resident, peak {:.0} MiB while loading (largest weight in f32: {:.0} MiB)",
        path.display(),
        memory.seconds,
        mib(memory.rss_after_bytes.unwrap_or(0)),
        mib(memory.peak_rss_bytes.unwrap_or(0)),
        mib(memory.largest_tensor_f32_bytes)
    ));
    if cfg.base_dtype != BaseDtype::F32 {
        observer.on_message(&format!(
            "base weights in {} (the embedding, and every linear layer not in NF4); adapters, gradients and optimizer state in f32",
            cfg.base_dtype
        ));
    }
    let Some(nf4) = nf4 else {
        return Ok((pretrained, None, memory));
    };
    let r = QuantReport::of(&pretrained.model);
    observer.on_message(&format!(
        "QLoRA: {} linear layers in NF4 (block {}, double quantization {}): {} weights in {:.1} MiB on the device, {:.3} bits/weight (f32: {:.1} MiB)",
        r.modules.len(),
        nf4.block_size,
        if nf4.double_quant { "on" } else { "off" },
        r.weights,
        mib(r.storage_bytes as u64),
        r.bits_per_weight(),
        mib(r.dense_bytes as u64),
    ));
    let quant = QuantSummary {
        method: "nf4",
        block_size: nf4.block_size,
        double_quant: nf4.double_quant,
        quantized_modules: r.modules.len(),
        quantized_weights: r.weights,
        base_bytes_on_device: r.storage_bytes,
        bits_per_weight: r.bits_per_weight(),
        f32_bytes_before: r.dense_bytes,
    };
    Ok((pretrained, Some(quant), memory))
}

/// The adapter kind the run trains and saves.
fn adapter_config(cfg: &TrainConfig) -> AdapterConfig {
    match cfg.method {
        Method::Lora => AdapterConfig::Lora(cfg.lora.clone()),
        Method::Adalora => AdapterConfig::AdaLora(cfg.adalora_config()),
    }
}

/// `LoRA r=8 α=16`, `DoRA r=8 α=16`, `AdaLoRA r=12→8 α=16`, with `, LoRA+ λ=16` when set.
fn method_label(cfg: &TrainConfig, adapter: &AdapterConfig) -> String {
    match cfg.loraplus_lr_ratio {
        Some(ratio) => format!("{}, LoRA+ λ={ratio}", adapter.describe()),
        None => adapter.describe(),
    }
}

/// Fresh adapters of the run's method on `model`; for AdaLoRA also its rank allocator.
fn attach_fresh(
    model: Llama,
    cfg: &TrainConfig,
    device: &burn::tensor::Device,
) -> Result<(Llama, Option<RankAllocator>), TrainError> {
    Ok(match cfg.method {
        Method::Lora => (apply_lora(model, &cfg.lora, device)?.0, None),
        Method::Adalora => {
            let adalora = cfg.adalora_config();
            let (model, _) = apply_adalora(model, &adalora, device)?;
            let allocator = RankAllocator::new(&model, &adalora)?;
            (model, Some(allocator))
        }
    })
}

/// Runs (or, for a [`RunDir::resume`] directory, continues) the training job `cfg` describes,
/// writing into `run`. See the module docs for what it does and leaves behind.
///
/// # Errors
/// [`TrainError`] naming the file, key, line or step: a model or data file that cannot be read,
/// a bad config, a non-finite loss (the last good checkpoint is kept), a file that cannot be
/// written.
pub fn run_training(
    cfg: &TrainConfig,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<Summary, TrainError> {
    let t0 = Instant::now();
    cfg.validate().map_err(TrainError::Config)?;
    let dir = run.path();
    if run.is_resume() {
        run.check_same_run(cfg)?;
    } else {
        write_atomic(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    }
    let kind: BackendKind = cfg
        .backend
        .parse()
        .map_err(|e: lora_core::LoraError| TrainError::Config(e.to_string()))?;
    // The model lives on the device the steps run on: with checkpointing, one whose autodiff
    // recomputes memory-bound activations in the backward pass.
    let device = if cfg.gradient_checkpointing {
        select_device(kind)?.autodiff().gradient_checkpointing()
    } else {
        select_device(kind)?.autodiff()
    };
    let model_path = match &cfg.model {
        Some(p) => cache::resolve_model(p)?,
        None => cache::ensure_default_model()?,
    };
    let (pretrained, quant, load_memory) = load_base(&model_path, cfg, &device, observer)?;
    let tok = pretrained.tokenizer.clone();
    let base_name = pretrained.name();
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    // Sequences never exceed the context the model's RoPE tables cover.
    let seq_len = cfg.seq_len.min(pretrained.model.config.max_seq_len);
    let task = load_task(
        &cfg.data,
        cfg.eval_data.as_deref().map(Path::new),
        &tok,
        seq_len,
        cfg.eval_limit,
    )?;
    observer.on_message(&task.summary.to_string());
    if task.test.is_empty() {
        observer.on_message(
            "no held-out examples: training goes on, but nothing is evaluated and no held-out number is reported (add valid.jsonl to the data folder, or give --eval-data FILE)",
        );
    }
    // The batch must fit the data: refused here, before the model is evaluated, not at step 1.
    crate::data::BatchSampler::new(task.train.len(), cfg.batch_size, cfg.seed)?;
    let adapter = adapter_config(cfg);
    let checkpoint = RunCheckpoint::new(dir, adapter.clone(), &base_name);

    let (model, resume, mut allocator) = if run.is_resume() {
        if cfg.method == Method::Adalora {
            return Err(TrainError::Config(
                "resuming an AdaLoRA run is not supported yet (its importance scores are not checkpointed); start a new run".into(),
            ));
        }
        let state = checkpoint.load_state()?;
        if state.step > cfg.steps {
            return Err(TrainError::Checkpoint(format!(
                "{}: the checkpoint is at step {}, past the run's {} steps; resume with --steps {} or more",
                checkpoint.dir.display(),
                state.step,
                cfg.steps,
                state.step
            )));
        }
        let (mut model, _, _) =
            peft::load_adapter(pretrained.model, &checkpoint.adapter_dir()?, &device)?;
        checkpoint.restore_param_ids(&mut model)?;
        (model, Some(state), None)
    } else {
        device.seed(cfg.seed);
        let (model, allocator) = attach_fresh(pretrained.model, cfg, &device)?;
        (model, None, allocator)
    };
    let report = AdaptReport::of(&model);
    let total = model.config.num_params();
    observer.on_message(&format!(
        "{} · task {} ({} train / {} held-out, {} skipped) · {} on {} modules · {} trainable parameters ({:.3}% of {})",
        base_name,
        task.name,
        task.train.len(),
        task.test.len(),
        task.skipped,
        method_label(cfg, &adapter),
        report.modules.len(),
        report.trainable_params,
        100.0 * report.trainable_params as f64 / total as f64,
        total
    ));

    // Before: the base model (B = 0, so the adapter changes nothing yet).
    let before_path = dir.join("eval_before.json");
    let answers_path = dir.join("answers_before.json");
    let (before, base_answers): (Option<EvalReport>, Option<Vec<Answer>>) = if run.is_resume()
        && before_path.exists()
    {
        let answers = answers_path
            .exists()
            .then(|| read_json(&answers_path))
            .transpose()?;
        (Some(read_json(&before_path)?), answers)
    } else {
        let (b, answers) = evaluate_at(&model, &tok, &task, cfg, pad, EvalPoint::Before, observer)?;
        if let Some(b) = &b {
            write_json(&before_path, b)?;
            write_json(&answers_path, &answers)?;
        }
        (b, Some(answers))
    };

    let mut recorder = Recorder {
        inner: observer,
        log: MetricsLog::open(dir)?,
        evals: before.iter().map(|b| (0, b.clone())).collect(),
        rates: Vec::new(),
    };
    let t_train = Instant::now();
    // With no held-out example there is nothing to evaluate at intervals either.
    let loop_cfg = TrainConfig {
        eval_every: if task.test.is_empty() {
            0
        } else {
            cfg.eval_every
        },
        ..cfg.clone()
    };
    let job = TrainLoop {
        data: &task.train,
        pad_id: pad,
        config: &loop_cfg,
        checkpoint: &checkpoint,
        resume,
        allocator: allocator.as_mut(),
    };
    let mut eval_fn = |m: &Llama| evaluate(&m.valid(), &task.test, task.choices(), EVAL_BATCH, pad);
    let (mut model, outcome) = train(model, job, &mut recorder, &mut eval_fn)?;
    let train_time_s = t_train.elapsed().as_secs_f64();
    let Recorder {
        inner: observer,
        mut evals,
        mut rates,
        ..
    } = recorder;

    let adalora = match &allocator {
        Some(a) => Some(finish_adalora(&mut model, a, &base_name, dir)?),
        None => {
            peft::save_adapter(&model, &adapter, &base_name, &dir.join("adapter"))?;
            None
        }
    };
    let (after, tuned_answers) =
        evaluate_at(&model, &tok, &task, cfg, pad, EvalPoint::After, observer)?;
    if let Some(metric) = task.answer_metric(cfg.eval_metric) {
        write_samples(
            dir,
            &task.name,
            metric,
            &task.questions,
            base_answers.as_deref(),
            &tuned_answers,
        )?;
    }
    let steps_done = match outcome {
        Outcome::Finished => cfg.steps,
        Outcome::Interrupted => checkpoint.load_state()?.step,
    };
    evals.extend(after.iter().map(|a| (steps_done, a.clone())));
    let steps = read_metrics(&dir.join("metrics.jsonl"), steps_done)?;
    let title = format!(
        "{} on {} — {}",
        method_label(cfg, &adapter),
        base_name,
        task.name
    );
    plot_loss(&dir.join("loss.png"), &steps, &evals, &title)?;

    rates.sort_by(f64::total_cmp);
    let summary = Summary {
        config: cfg.clone(),
        model: model_path.display().to_string(),
        task: task.name.clone(),
        train_examples: task.train.len(),
        heldout_examples: task.test.len(),
        skipped_examples: task.skipped,
        dataset: task.summary.clone(),
        trainable_params: report.trainable_params,
        adapted_modules: report.modules.len(),
        before,
        after,
        accuracy_rule: "the class whose answer tokens score highest after the prompt (first answer token when the classes' first tokens differ)",
        tokens_per_s: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        peak_rss_bytes: peak_rss_bytes(),
        wall_time_s: t0.elapsed().as_secs_f64(),
        train_time_s,
        backend: cfg.backend.clone(),
        outcome: match outcome {
            Outcome::Finished => "finished",
            Outcome::Interrupted => "interrupted",
        },
        steps_done,
        run_dir: dir.to_path_buf(),
        quant,
        load_memory,
        adalora,
    };
    write_json(&dir.join("summary.json"), &summary)?;
    Ok(summary)
}
