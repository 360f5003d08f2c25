//! `burn-lora train`: flags (and `--config FILE.toml`) → [`TrainConfig`], then
//! [`lora_train::run_training`] with a console observer (progress bar, Ctrl-C), then the
//! before/after table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::TargetModules;
use lora_train::config::EvalMetric;
use lora_train::eval::EvalReport;
use lora_train::run::Summary;
use lora_train::trainer::{EvalPoint, Observer, StepMetrics};
use lora_train::{RunDir, TrainConfig, run_training};

use crate::common::{MetricFlag, QuantArgs};

/// Arguments of `train`; flags override `--config`. Each flag sets one config key (in
/// brackets); `--config` files use the same keys.
#[derive(ClapArgs, Debug, Default)]
pub struct Args {
    /// A TOML file with any `TrainConfig` keys (flags given here override it).
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct) [model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `trec` (default), a JSONL file (every 20th example held out) or a folder with
    /// train.jsonl, valid.jsonl and optionally test.jsonl; lines in `messages`,
    /// `conversations` (ShareGPT), `prompt`/`completion`, `instruction`/`output` (Alpaca) or
    /// `text` form [data].
    #[arg(long)]
    pub data: Option<String>,
    /// Evaluate on this JSONL file instead of the held-out split of --data [eval_data].
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// How held-out answers are scored: equal to (`exact`, the default for data with answers)
    /// or containing the reference, both trimmed and lowercased; TREC generates answers only
    /// when this is given [eval_metric].
    #[arg(long, value_enum)]
    pub eval_metric: Option<MetricFlag>,
    /// Most tokens generated per held-out answer (0 = the longest reference + 16)
    /// [eval_max_new_tokens].
    #[arg(long, allow_negative_numbers = true)]
    pub eval_max_new_tokens: Option<usize>,
    /// Optimizer steps [steps].
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// LoRA rank r [lora.r].
    #[arg(long, allow_negative_numbers = true)]
    pub rank: Option<usize>,
    /// lora_alpha [lora.lora_alpha, adalora.lora_alpha].
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// LoRA dropout [lora.lora_dropout, adalora.lora_dropout].
    #[arg(long, allow_negative_numbers = true)]
    pub dropout: Option<f64>,
    /// Target modules: `q_proj,v_proj`, `all-linear` or `re:<regex>` [lora.target_modules,
    /// adalora.target_modules].
    #[arg(long)]
    pub targets: Option<String>,
    /// DoRA (weight-decomposed LoRA, PEFT's use_dora): a trainable magnitude per output unit on
    /// top of LoRA's direction [lora.use_dora].
    #[arg(long)]
    pub use_dora: bool,
    /// Peak learning rate [lr].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// LoRA+: lora_B (and DoRA's magnitude) learn at this many times --lr, as PEFT's
    /// create_loraplus_optimizer (the paper suggests 16) [loraplus_lr_ratio].
    #[arg(long)]
    pub loraplus_lr_ratio: Option<f64>,
    /// Sequences per micro-batch [batch_size].
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [grad_accum].
    #[arg(long, allow_negative_numbers = true)]
    pub grad_accum: Option<usize>,
    /// Longest sequence in tokens [seq_len].
    #[arg(long, allow_negative_numbers = true)]
    pub seq_len: Option<usize>,
    /// Evaluate every N steps (0 = before and after only) [eval_every].
    #[arg(long, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
    /// Use at most N held-out examples (0 = all) [eval_limit].
    #[arg(long, allow_negative_numbers = true)]
    pub eval_limit: Option<usize>,
    /// Checkpoint every N steps [save_every].
    #[arg(long, allow_negative_numbers = true)]
    pub save_every: Option<usize>,
    /// flex (default), ndarray or wgpu [backend].
    #[arg(long)]
    pub backend: Option<String>,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Recompute memory-bound activations in the backward pass instead of keeping them (burn's
    /// gradient checkpointing) [gradient_checkpointing].
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Seed [seed].
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Run directory (default runs/run-<unix time>); must be new or empty.
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// `lora` (default) or `adalora` (PEFT's AdaLoRA: every layer starts at --init-r and the
    /// least important singular directions are pruned to --target-r per matrix on average)
    /// [method].
    #[arg(long)]
    pub method: Option<String>,
    /// AdaLoRA: the rank every adapted matrix starts with (PEFT default 12) [adalora.init_r].
    #[arg(long, allow_negative_numbers = true)]
    pub init_r: Option<usize>,
    /// AdaLoRA: the average rank per adapted matrix at the end (PEFT default 8)
    /// [adalora.target_r].
    #[arg(long, allow_negative_numbers = true)]
    pub target_r: Option<usize>,
    /// AdaLoRA: steps at the full budget before pruning starts (PEFT default 0) [adalora.tinit].
    #[arg(long, allow_negative_numbers = true)]
    pub tinit: Option<usize>,
    /// AdaLoRA: final steps at the target budget, masks fixed (PEFT default 0) [adalora.tfinal].
    #[arg(long, allow_negative_numbers = true)]
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between budget allocations (PEFT default 1) [adalora.deltaT].
    #[arg(long, allow_negative_numbers = true)]
    pub delta_t: Option<usize>,
    /// Machine-readable output: one JSON object per line on stdout, no progress bar.
    #[arg(long)]
    pub json: bool,
}

/// A TOML table built key by key from the flags that were given.
#[derive(Default)]
struct Overrides(toml::Table);

impl Overrides {
    /// Sets `section.key` (or a top-level `key` when `section` is empty) if `value` is given.
    fn set(&mut self, section: &str, key: &str, value: Option<toml::Value>) {
        let Some(value) = value else { return };
        let table = if section.is_empty() {
            &mut self.0
        } else {
            let entry = self
                .0
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => t,
                _ => return,
            }
        };
        table.insert(key.to_string(), value);
    }
}

fn int(v: Option<usize>) -> Option<toml::Value> {
    v.map(|v| toml::Value::Integer(v as i64))
}
fn float(v: Option<f64>) -> Option<toml::Value> {
    v.map(toml::Value::Float)
}
fn text(v: &Option<String>) -> Option<toml::Value> {
    v.clone().map(toml::Value::String)
}

impl Args {
    /// The flags that were given, as config keys.
    fn overrides(&self) -> Result<toml::Table> {
        let mut o = Overrides::default();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string().into());
        o.set("", "model", path(&self.model));
        o.set("", "data", text(&self.data));
        o.set("", "eval_data", path(&self.eval_data));
        o.set("", "eval_metric", self.eval_metric.map(MetricFlag::toml));
        o.set("", "eval_max_new_tokens", int(self.eval_max_new_tokens));
        o.set("", "steps", int(self.steps));
        o.set("", "lr", float(self.lr));
        o.set("", "loraplus_lr_ratio", float(self.loraplus_lr_ratio));
        o.set("", "batch_size", int(self.batch_size));
        o.set("", "grad_accum", int(self.grad_accum));
        o.set("", "seq_len", int(self.seq_len));
        o.set("", "eval_every", int(self.eval_every));
        o.set("", "eval_limit", int(self.eval_limit));
        o.set("", "save_every", int(self.save_every));
        o.set("", "backend", text(&self.backend));
        o.set(
            "",
            "seed",
            self.seed.map(|s| toml::Value::Integer(s as i64)),
        );
        o.set(
            "",
            "method",
            text(&self.method.as_ref().map(|m| m.to_ascii_lowercase())),
        );
        o.set("lora", "r", int(self.rank));
        o.set("lora", "use_dora", self.use_dora.then_some(true.into()));
        let targets = match &self.targets {
            Some(t) => Some(toml::Value::try_from(TargetModules::parse_cli(t))?),
            None => None,
        };
        // alpha, dropout and targets are shared by both methods, as in PEFT's configs.
        for section in ["lora", "adalora"] {
            o.set(section, "lora_alpha", float(self.alpha));
            o.set(section, "lora_dropout", float(self.dropout));
            o.set(section, "target_modules", targets.clone());
        }
        o.set("adalora", "init_r", int(self.init_r));
        o.set("adalora", "target_r", int(self.target_r));
        o.set("adalora", "tinit", int(self.tinit));
        o.set("adalora", "tfinal", int(self.tfinal));
        o.set("adalora", "deltaT", int(self.delta_t));
        o.set(
            "",
            "base_dtype",
            self.quant.base_dtype.map(|d| d.name().into()),
        );
        if self.gradient_checkpointing {
            o.set("", "gradient_checkpointing", Some(true.into()));
        }
        let quant = self.quant.table();
        if !quant.is_empty() {
            o.0.insert("quant".into(), toml::Value::Table(quant));
        }
        Ok(o.0)
    }
}

/// Progress bar (or plain lines when stderr is not a terminal), JSON events, Ctrl-C flag.
struct Console {
    bar: Option<ProgressBar>,
    spinner: Option<ProgressBar>,
    json: bool,
    stop: Arc<AtomicBool>,
}

impl Console {
    fn new(json: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
        }
        Console {
            bar: None,
            spinner: None,
            json,
            stop,
        }
    }
}

impl Observer for Console {
    fn on_message(&mut self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    fn on_eval_start(&mut self, at: EvalPoint, examples: usize) {
        let what = match at {
            EvalPoint::Before => "the base model",
            EvalPoint::After => "the fine-tuned model",
            EvalPoint::Step(_) => return,
        };
        if !self.json {
            let s = ProgressBar::new_spinner();
            s.set_message(format!(
                "evaluating {what} on {examples} held-out examples ..."
            ));
            s.enable_steady_tick(std::time::Duration::from_millis(200));
            self.spinner = Some(s);
        }
    }

    fn on_eval(&mut self, at: EvalPoint, e: &EvalReport) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
        let EvalPoint::Step(step) = at else { return };
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

    fn on_train_start(&mut self, start: usize, total: usize) {
        if self.json {
            return;
        }
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(start as u64);
        self.bar = Some(b);
    }

    fn on_step(&mut self, m: &StepMetrics) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "step", "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm, "tokens_per_s": m.tokens_per_s})
            );
            return;
        }
        let Some(bar) = &self.bar else { return };
        bar.set_position(m.step as u64);
        let status = format!(
            "loss {:.4} · {:.0} tok/s · lr {:.2e} · |g| {:.2}",
            m.loss, m.tokens_per_s, m.lr, m.grad_norm
        );
        // With stderr piped or redirected indicatif draws nothing: a plain line every 10
        // steps (and at the last) keeps the progress, rate and ETA visible in a log.
        let last = bar.length() == Some(m.step as u64);
        if bar.is_hidden() && (m.step.is_multiple_of(10) || last) {
            eprintln!(
                "step {}/{} · {status} · ETA {}s",
                m.step,
                bar.length().unwrap_or(0),
                bar.eta().as_secs()
            );
        }
        bar.set_message(status);
        if last {
            bar.finish();
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The before/after rows of the held-out numbers.
fn print_heldout(s: &Summary, before: &EvalReport, after: &EvalReport) {
    let acc = |e: &EvalReport| {
        e.accuracy
            .map_or("—".to_string(), |a| format!("{:.1}%", 100.0 * a))
    };
    println!("                      before      after");
    if before.accuracy.is_some() || after.accuracy.is_some() {
        println!(
            "  held-out accuracy   {:>8}   {:>8}",
            acc(before),
            acc(after)
        );
    }
    if after.exact_match.is_some() {
        let rate = |e: &EvalReport| {
            e.exact_match
                .map_or("—".to_string(), |a| format!("{:.1}%", 100.0 * a))
        };
        let name = match s.config.eval_metric {
            Some(EvalMetric::Contains) => "contains   ",
            _ => "exact match",
        };
        println!(
            "  held-out {name}{:>8}   {:>8}   ({} questions)",
            rate(before),
            rate(after),
            after.exact_match_examples
        );
    }
    println!(
        "  held-out loss       {:>8.4}   {:>8.4}",
        before.loss, after.loss
    );
}

/// The before/after table and where the files are.
fn print_summary(s: &Summary) {
    let rss = s.peak_rss_bytes.map_or("—".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    });
    println!();
    match (&s.before, &s.after) {
        (Some(before), Some(after)) => print_heldout(s, before, after),
        _ => println!(
            "  no held-out examples: nothing was evaluated, so no held-out number is reported"
        ),
    }
    println!("  tokens/s (train)    {:>8.0}", s.tokens_per_s);
    println!("  peak memory (RSS)   {rss:>8}");
    if let Some(q) = &s.quant {
        println!(
            "  base weights (NF4)  {:>8.3} bits/weight",
            q.bits_per_weight
        );
    }
    println!(
        "  wall time           {:>7.0}s   (training {:.0}s)",
        s.wall_time_s, s.train_time_s
    );
    if let Some(r) = &s.adalora {
        println!();
        print!("{r}");
    }
    println!();
    println!(
        "run directory: {}  (adapter/, metrics.jsonl, summary.json, loss.png{}{})",
        s.run_dir.display(),
        if s.after.as_ref().is_some_and(|a| a.exact_match.is_some()) {
            ", samples.md, answers.jsonl"
        } else {
            ""
        },
        if s.adalora.is_some() {
            ", ranks.png"
        } else {
            ""
        }
    );
    if s.interrupted() {
        println!(
            "interrupted at step {}; continue with: cargo xtask train --resume {}",
            s.steps_done,
            s.run_dir.display()
        );
    }
}

/// Runs `train`.
pub fn run(args: Args) -> Result<()> {
    let (run, base) = match &args.resume {
        Some(dir) => {
            let run = RunDir::resume(dir)?;
            let saved = run.saved_config()?;
            (Some(run), Some(("the run's config.toml", saved)))
        }
        None => (
            None,
            match &args.config {
                Some(path) => Some(("--config", TrainConfig::read_table(path)?)),
                None => None,
            },
        ),
    };
    let mut layers: Vec<(&str, toml::Table)> = base.into_iter().collect();
    layers.push(("flags", args.overrides()?));
    let cfg = TrainConfig::layered(&layers)?;
    let run = match run {
        Some(run) => run,
        None => RunDir::create(args.out.as_deref())?,
    };
    let mut console = Console::new(args.json);
    let summary = run_training(&cfg, &run, &mut console)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "summary", "summary": summary, "run_dir": summary.run_dir})
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}
