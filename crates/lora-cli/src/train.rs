//! `burn-lora train`: fine-tune the model's LoRA adapters on a task, evaluate before and after,
//! and leave a run directory: `adapter/` (PEFT), `metrics.jsonl`, `summary.json`, `loss.png`,
//! `config.toml`, `checkpoint/`; with `--method adalora` also `ranks.png`.

mod adalora;
mod quant;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::{BackendKind, peft, select_device};
use lora_models::{Llama, cache};
use lora_train::checkpoint::Checkpoint;
use lora_train::config::Method;
use lora_train::eval::evaluate;
use lora_train::report::{MetricsLog, plot_loss, read_metrics};
use lora_train::trainer::{EvalReport, Observer, Outcome, StepMetrics, peak_rss_bytes, train_with};
use lora_train::{TrainConfig, TrainError};
use serde::Serialize;

use crate::task::{Task, load_task};

/// Arguments of `train`; flags override `--config`.
#[derive(ClapArgs, Debug, Default)]
pub struct Args {
    /// A TOML file with any `TrainConfig` fields (flags given here override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `trec` (default) or a JSONL file (`messages`, `prompt`/`completion` or `text` lines).
    #[arg(long)]
    pub data: Option<String>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// LoRA rank r.
    #[arg(long)]
    pub rank: Option<usize>,
    /// lora_alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Target modules: `q_proj,v_proj`, `all-linear` or `re:<regex>`.
    #[arg(long)]
    pub targets: Option<String>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Longest sequence in tokens.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Evaluate every N steps (0 = before and after only).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Use at most N held-out examples (0 = all).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// flex (default), ndarray or wgpu.
    #[arg(long)]
    pub backend: Option<String>,
    /// Base-weight quantization: `none` (default) or `nf4` (QLoRA: 4-bit NormalFloat base).
    #[arg(long)]
    pub quant: Option<String>,
    /// NF4 block size (default 64).
    #[arg(long)]
    pub quant_block_size: Option<usize>,
    /// Keep the NF4 block scales in f32 (no double quantization).
    #[arg(long)]
    pub no_double_quant: bool,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory (default runs/run-<unix time>); must be new or empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// `lora` (default) or `adalora` (PEFT's AdaLoRA: every layer starts at --init-r and the
    /// least important singular directions are pruned to --target-r per matrix on average).
    #[arg(long)]
    pub method: Option<String>,
    /// AdaLoRA: the rank every adapted matrix starts with (PEFT default 12).
    #[arg(long)]
    pub init_r: Option<usize>,
    /// AdaLoRA: the average rank per adapted matrix at the end (PEFT default 8).
    #[arg(long)]
    pub target_r: Option<usize>,
    /// AdaLoRA: steps at the full budget before pruning starts (PEFT default 0).
    #[arg(long)]
    pub tinit: Option<usize>,
    /// AdaLoRA: final steps at the target budget, masks fixed (PEFT default 0).
    #[arg(long)]
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between budget allocations (PEFT `deltaT`, default 1).
    #[arg(long)]
    pub delta_t: Option<usize>,
    /// Machine-readable output: one JSON object per line on stdout, no progress bar.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn effective_config(&self) -> Result<TrainConfig> {
        let mut c = match (&self.resume, &self.config) {
            (Some(dir), _) => {
                if !dir.join("config.toml").exists() {
                    bail!(
                        "{} is not a run directory (no config.toml) — nothing to resume",
                        dir.display()
                    );
                }
                read_toml(&dir.join("config.toml"))?
            }
            (None, Some(path)) => read_toml(path)?,
            (None, None) => TrainConfig::default(),
        };
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            };
        }
        set!(data);
        set!(steps);
        set!(lr);
        set!(batch_size);
        set!(grad_accum);
        set!(seq_len);
        set!(eval_every);
        set!(eval_limit);
        set!(save_every);
        set!(backend);
        set!(seed);
        if self.model.is_some() {
            c.model = self.model.clone();
        }
        if let Some(r) = self.rank {
            c.lora.r = r;
        }
        if let Some(a) = self.alpha {
            c.lora.alpha = a;
        }
        if let Some(p) = self.dropout {
            c.lora.dropout = p;
        }
        if let Some(t) = &self.targets {
            c.lora.targets = t.clone();
        }
        if let Some(m) = &self.method {
            c.method = m.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        }
        let a = &mut c.adalora;
        for (flag, field) in [
            (self.init_r, &mut a.init_r),
            (self.target_r, &mut a.target_r),
            (self.tinit, &mut a.tinit),
            (self.tfinal, &mut a.tfinal),
            (self.delta_t, &mut a.delta_t),
        ] {
            if let Some(v) = flag {
                *field = v;
            }
        }
        if let Some(q) = &self.quant {
            c.quant.method = q.clone();
        }
        if let Some(b) = self.quant_block_size {
            c.quant.block_size = b;
        }
        if self.no_double_quant {
            c.quant.double_quant = false;
        }
        c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c)
    }
}

fn read_toml(path: &Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid training config", path.display()))
}

/// The run directory: `--resume`, `--out` (must be new or empty), or `runs/<timestamp>`.
fn run_dir(args: &Args) -> Result<PathBuf> {
    if let Some(dir) = &args.resume {
        return Ok(dir.clone());
    }
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => crate::common::timestamped_run_dir("run"),
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already holds files (another run?); nothing was overwritten. Choose a new --out, or continue it with --resume {}",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Progress bar, metrics file, Ctrl-C flag.
struct Console {
    bar: Option<ProgressBar>,
    json: bool,
    log: MetricsLog,
    evals: Vec<(usize, EvalReport)>,
    stop: Arc<AtomicBool>,
    last_tokens_per_s: Vec<f64>,
}

impl Observer for Console {
    fn on_step(&mut self, m: &StepMetrics) {
        if let Err(e) = self.log.write(m) {
            eprintln!("warning: {e}");
        }
        self.last_tokens_per_s.push(m.tokens_per_s);
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "step", "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm, "tokens_per_s": m.tokens_per_s})
            );
        } else if let Some(bar) = &self.bar {
            bar.set_position(m.step as u64);
            let status = format!(
                "loss {:.4} · {:.0} tok/s · lr {:.2e} · |g| {:.2}",
                m.loss, m.tokens_per_s, m.lr, m.grad_norm
            );
            // With stderr piped or redirected indicatif draws nothing: a plain line every 10
            // steps (and at the last) keeps the progress, rate and ETA visible in a log.
            let last = bar.length() == Some(m.step as u64);
            if bar.is_hidden() && (m.step % 10 == 0 || last) {
                eprintln!(
                    "step {}/{} · {status} · ETA {}s",
                    m.step,
                    bar.length().unwrap_or(0),
                    bar.eta().as_secs()
                );
            }
            bar.set_message(status);
        }
    }

    fn on_eval(&mut self, step: usize, e: &EvalReport) {
        self.evals.push((step, e.clone()));
        let _ = self.log.write(&serde_json::json!({"event": "eval", "step": step, "loss": e.loss, "accuracy": e.accuracy}));
        let line = format!(
            "eval @ step {step}: loss {:.4}{}",
            e.loss,
            e.accuracy
                .map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a))
        );
        match (&self.bar, self.json) {
            (_, true) => println!(
                "{}",
                serde_json::json!({"event": "eval", "step": step, "loss": e.loss, "accuracy": e.accuracy})
            ),
            // `println` on a hidden bar (stderr not a terminal) prints nothing.
            (Some(bar), _) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    config: &'a TrainConfig,
    model: String,
    task: String,
    train_examples: usize,
    heldout_examples: usize,
    skipped_examples: usize,
    trainable_params: usize,
    adapted_modules: usize,
    before: &'a EvalReport,
    after: &'a EvalReport,
    accuracy_rule: &'static str,
    tokens_per_s: f64,
    peak_rss_bytes: Option<u64>,
    wall_time_s: f64,
    backend: String,
    outcome: &'static str,
    /// QLoRA only: how the base weights are stored.
    quant: Option<quant::QuantSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adalora: Option<adalora::RankSummary>,
}

fn eval_with_progress(model: &Llama, task: &Task, pad: u32, what: &str, json: bool) -> EvalReport {
    let spinner = (!json).then(|| {
        let s = ProgressBar::new_spinner();
        s.set_message(format!(
            "evaluating {what} on {} held-out examples ...",
            task.test.len()
        ));
        s.enable_steady_tick(std::time::Duration::from_millis(200));
        s
    });
    let view = model.valid();
    let device = view.lm_head.weight.val().device();
    let choices = task
        .choices
        .as_ref()
        .map(|(items, cands)| (&items[..], &cands[..]));
    let report = evaluate(&view, &task.test, choices, 32, pad, &device);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    report
}

/// Runs `train`.
pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    let cfg = args.effective_config()?;
    let dir = run_dir(&args)?;
    let resuming = args.resume.is_some();
    if !resuming {
        std::fs::write(dir.join("config.toml"), toml::to_string_pretty(&cfg)?)?;
    }
    let kind: BackendKind = cfg.backend.parse()?;
    let device = select_device(kind)?.autodiff();
    let model_path = match &cfg.model {
        Some(p) => cache::resolve_model(p)?,
        None => cache::ensure_default_model()?,
    };
    let mut pretrained = lora_models::load(&model_path, &device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let quant = quant::quantize_if_asked(&mut pretrained.model, &cfg, args.json)?;
    let tok = pretrained.tokenizer.clone();
    let base_name = pretrained.name();
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    // Sequences never exceed the context the model's RoPE tables cover.
    let seq_len = cfg.seq_len.min(pretrained.model.config.max_seq_len);
    let task = load_task(&cfg.data, &tok, seq_len, cfg.eval_limit)?;
    let lora_cfg = cfg.lora.to_lora_config();
    let mut checkpoint = Checkpoint::new(&dir, lora_cfg.clone(), &base_name);
    if cfg.method == Method::Adalora {
        checkpoint = checkpoint.with_adalora(cfg.adalora_config());
    }

    let (model, resume, mut allocator) = if resuming {
        if cfg.method == Method::Adalora {
            bail!(
                "resuming an AdaLoRA run is not supported yet (its importance scores are not checkpointed); start a new run"
            );
        }
        let state = checkpoint.load_state()?;
        let (mut model, _, _) =
            peft::load_adapter(pretrained.model, &checkpoint.adapter_dir()?, &device)?;
        checkpoint.restore_param_ids(&mut model)?;
        (model, Some(state), None)
    } else {
        device.seed(cfg.seed);
        let (model, allocator) = adalora::attach(pretrained.model, &cfg, &device)?;
        (model, None, allocator)
    };
    let report = lora_core::AdaptReport::of(&model);
    if !args.json {
        eprintln!(
            "{} · task {} ({} train / {} held-out, {} skipped) · {} on {} modules · {} trainable parameters ({:.3}% of {})",
            base_name,
            task.name,
            task.train.len(),
            task.test.len(),
            task.skipped,
            adalora::describe(&cfg),
            report.modules.len(),
            report.trainable_params,
            100.0 * report.trainable_params as f64 / model.config.num_params() as f64,
            model.config.num_params()
        );
    }

    // Before: the base model (B = 0, so the adapter changes nothing yet).
    let before_path = dir.join("eval_before.json");
    let before = if resuming && before_path.exists() {
        serde_json::from_str(&std::fs::read_to_string(&before_path)?)?
    } else {
        let b = eval_with_progress(&model, &task, pad, "the base model", args.json);
        std::fs::write(&before_path, serde_json::to_string_pretty(&b)?)?;
        b
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let start_step = resume.as_ref().map_or(0, |s| s.step);
    let bar = (!args.json).then(|| {
        let b = ProgressBar::new(cfg.steps as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(start_step as u64);
        b
    });
    let mut console = Console {
        bar,
        json: args.json,
        log: MetricsLog::open(&dir)?,
        evals: vec![(0, before.clone())],
        stop,
        last_tokens_per_s: Vec::new(),
    };
    let t_train = Instant::now();
    let mut eval_fn = |m: &Llama| -> Result<EvalReport, TrainError> {
        Ok(eval_with_progress(m, &task, pad, "", true))
    };
    let (mut model, outcome) = train_with(
        model,
        &task.train,
        pad,
        &cfg,
        resume,
        &checkpoint,
        &mut console,
        &mut eval_fn,
        allocator.as_mut(),
    )?;
    let train_secs = t_train.elapsed().as_secs_f64();
    if let Some(bar) = &console.bar {
        bar.finish();
    }

    let ranks = match &allocator {
        Some(a) => Some(adalora::finish(&mut model, a, &base_name, &dir)?),
        None => {
            peft::save_adapter(&model, &lora_cfg, &base_name, &dir.join("adapter"))?;
            None
        }
    };
    let after = eval_with_progress(&model, &task, pad, "the fine-tuned model", args.json);
    let done_steps = if outcome == Outcome::Finished {
        cfg.steps
    } else {
        checkpoint.load_state()?.step
    };
    console.evals.push((done_steps, after.clone()));
    let steps = read_metrics(&dir.join("metrics.jsonl"), done_steps)?;
    let title = match cfg.method {
        Method::Lora => format!("LoRA r={} on {} — {}", cfg.lora.r, base_name, task.name),
        Method::Adalora => format!(
            "{} on {} — {}",
            adalora::describe(&cfg),
            base_name,
            task.name
        ),
    };
    plot_loss(&dir.join("loss.png"), &steps, &console.evals, &title)?;

    let tps = {
        let mut v = console.last_tokens_per_s.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let wall = t0.elapsed().as_secs_f64();
    let summary = Summary {
        config: &cfg,
        model: model_path.display().to_string(),
        task: task.name.clone(),
        train_examples: task.train.len(),
        heldout_examples: task.test.len(),
        skipped_examples: task.skipped,
        trainable_params: report.trainable_params,
        adapted_modules: report.modules.len(),
        before: &before,
        after: &after,
        accuracy_rule: "the class whose answer tokens score highest after the prompt (first answer token when the classes' first tokens differ)",
        tokens_per_s: tps,
        peak_rss_bytes: peak_rss_bytes(),
        wall_time_s: wall,
        backend: cfg.backend.clone(),
        outcome: if outcome == Outcome::Finished {
            "finished"
        } else {
            "interrupted"
        },
        adalora: ranks,
        quant,
    };
    let summary_json = serde_json::to_string_pretty(&summary)?;
    lora_core::tensor_io::write_atomic(&dir.join("summary.json"), summary_json.as_bytes())?;

    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "summary", "summary": summary, "run_dir": dir})
        );
        return Ok(());
    }
    let acc = |e: &EvalReport| {
        e.accuracy
            .map_or("—".to_string(), |a| format!("{:.1}%", 100.0 * a))
    };
    let rss = summary.peak_rss_bytes.map_or("—".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    });
    println!();
    println!("                      before      after");
    println!(
        "  held-out accuracy   {:>8}   {:>8}",
        acc(&before),
        acc(&after)
    );
    println!(
        "  held-out loss       {:>8.4}   {:>8.4}",
        before.loss, after.loss
    );
    println!("  tokens/s (train)    {tps:>8.0}");
    println!("  peak memory (RSS)   {rss:>8}");
    if let Some(q) = &summary.quant {
        println!(
            "  base weights (NF4)  {:>8.3} bits/weight",
            q.bits_per_weight
        );
    }
    println!(
        "  wall time           {:>7.0}s   (training {:.0}s)",
        wall, train_secs
    );
    if let Some(r) = &summary.adalora {
        r.print();
    }
    println!();
    println!(
        "run directory: {}  (adapter/, metrics.jsonl, summary.json, loss.png{})",
        dir.display(),
        if summary.adalora.is_some() {
            ", ranks.png"
        } else {
            ""
        }
    );
    if outcome == Outcome::Interrupted {
        println!(
            "interrupted at step {done_steps}; continue with: cargo xtask train --resume {}",
            dir.display()
        );
    }
    Ok(())
}
