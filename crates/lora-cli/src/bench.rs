//! `burn-lora bench`: flags → [`BenchConfig`], then [`lora_train::bench::run_bench`]; prints
//! the tables. With the hidden `--one JOB` it is the child process that runs one configuration
//! ([`lora_train::bench::run_one`]) and prints its result as one JSON line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::BaseDtype;
use lora_models::cache;
use lora_train::bench::peft::default_python;
use lora_train::bench::scale::{ScaleBase, ScaleShape};
use lora_train::bench::{
    BenchConfig, ChildCommand, JobSpec, Progress, SweepEval, TargetSet, TrainSettings, parse_impl,
    parse_list, run_bench, run_one,
};

/// Arguments of `bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Backend: flex (CPU, default), ndarray (CPU) or wgpu.
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct from the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print bench.json on stdout (tables go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Timed training steps per configuration (default 10; 3 with --scale).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Untimed warm-up steps before them (default 3; 1 with --scale).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// A short run for a quick look: 1 warm-up and 3 timed steps, 2 inference rounds.
    #[arg(long)]
    pub quick: bool,
    /// Sequences per step (default 4; 1 with --scale).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// LoRA rank (default 8; 16 with --scale).
    #[arg(long)]
    pub rank: Option<usize>,
    /// lora_alpha (default 2·rank).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Target sets, comma-separated: qv (q_proj, v_proj) and/or all (all-linear).
    #[arg(long, default_value = "qv,all")]
    pub targets: String,
    /// Implementations, comma-separated: ours, burn (burn's apply_lora), peft, and the QLoRA
    /// rows ours-nf4 and peft-nf4 (PEFT on a bitsandbytes NF4 base).
    #[arg(long, default_value = "ours,burn,peft,ours-nf4,peft-nf4")]
    pub impls: String,
    /// What to measure, comma-separated: training, inference, gemm (the training step's matrix
    /// products alone, ours and PyTorch's GFLOP/s).
    #[arg(long, default_value = "training,inference,gemm")]
    pub parts: String,
    /// Gradient checkpointing (burn's balanced strategy) for the burn rows: less memory, more
    /// compute (always on with --scale, for PEFT too).
    #[arg(long)]
    pub checkpointing: bool,
    /// The type our rows' frozen base is stored and multiplied in: f32 (default), bf16, f16
    /// (PEFT rows load with the same torch_dtype for bf16).
    #[arg(long)]
    pub base_dtype: Option<BaseDtype>,
    /// Instead of the tables: random-weight Llama shapes, comma-separated 1b, 3b, 8b
    /// (Llama-3.2-1B, 3.2-3B, 3.1-8B), trained at batch 1 × 256, r 16, all-linear, gradient
    /// checkpointing on, on every base of --scale-bases, next to PEFT.
    #[arg(long)]
    pub scale: Option<String>,
    /// The bases of the --scale rows, comma-separated: f32, bf16, nf4.
    #[arg(long, default_value = "f32,bf16,nf4")]
    pub scale_bases: String,
    /// Threads for every implementation (rayon for burn, intra-op threads for PyTorch).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python with torch, transformers and peft (default ~/.cache/burn-lora/venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Prompt tokens for the inference rows (prefill).
    #[arg(long, default_value_t = 256)]
    pub prompt_len: usize,
    /// Decoded tokens per inference round.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Timed inference rounds (each runs every variant once, on fresh copies of its weights).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Instead of the tables: sweep these LoRA ranks (ours), e.g. 4,8,16,32,64.
    #[arg(long, value_delimiter = ',')]
    pub sweep_rank: Option<Vec<usize>>,
    /// Target set of the rank sweep (qv or all); lora_alpha is 2·r there.
    #[arg(long, default_value = "all")]
    pub sweep_targets: String,
    /// With --sweep-rank: also fine-tune each rank on TREC (`burn-lora train`, its defaults
    /// otherwise) and record the held-out accuracy.
    #[arg(long)]
    pub eval: bool,
    /// Optimizer steps of each --eval run.
    #[arg(long, default_value_t = 60)]
    pub eval_steps: usize,
    /// Held-out TREC examples each --eval run is scored on.
    #[arg(long, default_value_t = 200)]
    pub eval_limit: usize,
    /// Directory for bench.json (and rank_sweep.png); default runs/bench-<unix time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: run one configuration (JSON) in this process and print its result.
    #[arg(long, hide = true)]
    pub one: Option<String>,
}

impl Args {
    fn config(&self) -> Result<BenchConfig> {
        let scale = match &self.scale {
            Some(list) => Some(parse_list(list, ScaleShape::parse)?),
            None => None,
        };
        let at_scale = scale.is_some();
        let (warmup, steps, rounds) = match (self.quick, at_scale) {
            (true, _) => (1, 3, 2),
            (false, true) => (
                self.warmup.unwrap_or(1),
                self.steps.unwrap_or(3),
                self.rounds,
            ),
            (false, false) => (
                self.warmup.unwrap_or(3),
                self.steps.unwrap_or(10),
                self.rounds,
            ),
        };
        let rank = self.rank.unwrap_or(if at_scale { 16 } else { 8 });
        if let Ok(kind) = self.backend.parse::<lora_core::BackendKind>() {
            self.base_dtype.unwrap_or_default().check_backend(kind)?;
            if at_scale && self.scale_bases.contains("bf16") {
                BaseDtype::Bf16.check_backend(kind)?;
            }
        }
        let parts: Vec<String> = parse_list(&self.parts, |s| Ok(s.to_string()))?;
        Ok(BenchConfig {
            backend: self.backend.clone(),
            model: match (&self.model, at_scale) {
                (Some(p), _) => cache::resolve_model(p)?,
                // The scale rows build their own random models.
                (None, true) => PathBuf::from("random-weights"),
                (None, false) => cache::ensure_default_model()?,
            },
            settings: TrainSettings {
                batch: self.batch.unwrap_or(if at_scale { 1 } else { 4 }),
                seq_len: self.seq_len,
                rank,
                alpha: self.alpha.unwrap_or(2.0 * rank as f64),
                warmup,
                steps,
                lr: 2e-4,
                weight_decay: 0.01,
                seed: 20240607,
                checkpointing: self.checkpointing || at_scale,
                base_dtype: self.base_dtype.unwrap_or_default(),
            },
            targets: parse_list(&self.targets, TargetSet::parse)?,
            impls: parse_list(&self.impls, parse_impl)?,
            training: parts.iter().any(|p| p == "training"),
            inference: parts.iter().any(|p| p == "inference"),
            gemm: parts.iter().any(|p| p == "gemm"),
            threads: self.threads,
            python: self.python.clone().unwrap_or_else(default_python),
            prompt_len: self.prompt_len,
            decode_tokens: self.decode_tokens,
            rounds,
            sweep_rank: self.sweep_rank.clone(),
            sweep_targets: TargetSet::parse(&self.sweep_targets)?,
            sweep_eval: self.eval.then_some(SweepEval {
                steps: self.eval_steps,
                limit: self.eval_limit,
            }),
            scale,
            scale_bases: parse_list(&self.scale_bases, ScaleBase::parse)?,
            out: self.out.clone(),
        })
    }
}

/// Draws a child job's [`Progress`] as a bar on stderr.
fn progress_bar() -> impl FnMut(Progress<'_>) {
    let mut bar: Option<ProgressBar> = None;
    move |event| match event {
        Progress::Start { label, total } => {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("  {prefix} [{bar:30}] {pos}/{len} steps {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(label.to_string());
            bar = Some(b);
        }
        Progress::Step { done, message } => {
            if let Some(b) = &bar {
                b.set_position(done as u64);
                b.set_message(message);
            }
        }
        Progress::Done => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }
}

/// Runs `bench`.
pub fn run(args: Args) -> Result<()> {
    if let Some(one) = &args.one {
        let spec: JobSpec = serde_json::from_str(one).context("--one: not a bench job")?;
        println!("{}", run_one(&spec, &mut progress_bar())?);
        return Ok(());
    }
    let config = args.config()?;
    let child = ChildCommand {
        program: std::env::current_exe().context("finding this binary to run a child")?,
    };
    let outcome = run_bench(&config, &child, &mut |line| eprintln!("{line}"))?;
    if args.json {
        eprintln!("{}", outcome.tables);
        println!("{}", serde_json::to_string_pretty(&outcome.results)?);
    } else {
        println!("\n{}", outcome.tables);
    }
    Ok(())
}
