//! `burn-lora bench`: LoRA training speed and memory side by side with burn's own `apply_lora`
//! and PyTorch + PEFT, inference speed of base / unmerged / merged models, and a rank sweep.
//!
//! Every configuration runs in a fresh child process (this binary again, with the hidden
//! `--one JOB` flag, or `scripts/bench_peft.py`), so each row's peak resident memory is its own.
//! Results go to `bench.json` in the run directory; tables are printed at the end.

mod job;
mod peft;
mod plot;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use lora_models::cache;
use serde::Serialize;

use job::{
    Implementation, InferenceSettings, Job, JobSpec, RawInference, RawTrain, TargetSet,
    TrainSettings,
};
use report::{InferenceReport, SweepRow, TrainRow};

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
    /// Timed training steps per configuration.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// A short run for a quick look: 1 warm-up and 3 timed steps, 2 inference rounds.
    #[arg(long)]
    pub quick: bool,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// lora_alpha.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Target sets, comma-separated: qv (q_proj, v_proj) and/or all (all-linear).
    #[arg(long, default_value = "qv,all")]
    pub targets: String,
    /// Implementations, comma-separated: ours, burn (burn's apply_lora), peft, and the QLoRA
    /// rows ours-nf4 and peft-nf4 (PEFT on a bitsandbytes NF4 base).
    #[arg(long, default_value = "ours,burn,peft,ours-nf4,peft-nf4")]
    pub impls: String,
    /// What to measure, comma-separated: training, inference.
    #[arg(long, default_value = "training,inference")]
    pub parts: String,
    /// Gradient checkpointing (burn's balanced strategy) for the burn rows: less memory, more
    /// compute.
    #[arg(long)]
    pub checkpointing: bool,
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

/// How and where the numbers were taken, for reading them later.
#[derive(Debug, Serialize)]
struct Meta {
    /// Unix seconds at the start.
    started_unix_s: u64,
    /// `git describe --always --dirty` of the working tree, if git is there.
    commit: Option<String>,
    backend: String,
    threads: usize,
    model: PathBuf,
    cpu: Option<String>,
    cpus_online: usize,
    /// `/proc/loadavg` before and after: a busy machine makes wall times slow and noisy.
    loadavg_start: Option<String>,
    loadavg_end: Option<String>,
    settings: TrainSettings,
}

#[derive(Debug, Serialize)]
struct BenchJson {
    meta: Meta,
    training: Vec<TrainRow>,
    inference: Option<InferenceReport>,
    sweep: Vec<SweepRow>,
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split(':').nth(1)?.trim().to_string())
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn out_dir(args: &Args) -> Result<PathBuf> {
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => crate::common::timestamped_run_dir("bench"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `spec` in a child process of this binary; the child's progress shows on stderr.
fn run_child<T: serde::de::DeserializeOwned>(spec: &JobSpec, threads: usize) -> Result<T> {
    let exe = std::env::current_exe().context("finding this binary to run a child")?;
    let output = Command::new(exe)
        .args(["bench", "--one", &serde_json::to_string(spec)?])
        // rayon's global pool (flex's matmuls and elementwise kernels) takes its size from here.
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a bench child process")?;
    if !output.status.success() {
        bail!(
            "the child failed ({}); its messages are above",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).context("reading the child's result")
}

fn parse_list<T>(s: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(parse)
        .collect()
}

fn parse_impl(s: &str) -> Result<Implementation> {
    match s {
        "ours" | "burn-lora" => Ok(Implementation::Ours),
        "burn" => Ok(Implementation::Burn),
        "peft" | "pytorch" => Ok(Implementation::Peft),
        "ours-nf4" | "qlora" => Ok(Implementation::OursNf4),
        "peft-nf4" | "qlora-peft" => Ok(Implementation::PeftNf4),
        other => {
            bail!("unknown implementation {other:?}; use ours, burn, peft, ours-nf4 or peft-nf4")
        }
    }
}

/// Runs `bench`.
pub fn run(mut args: Args) -> Result<()> {
    if let Some(one) = &args.one {
        let spec: JobSpec = serde_json::from_str(one).context("--one: not a bench job")?;
        return job::run_one(&spec);
    }
    if args.quick {
        (args.warmup, args.steps, args.rounds) = (1, 3, 2);
    }
    if args.steps == 0 || args.batch == 0 || args.seq_len < 2 {
        bail!("--steps and --batch must be at least 1 and --seq-len at least 2");
    }
    let model = match &args.model {
        Some(p) => p.clone(),
        None => cache::ensure_default_model()?,
    };
    let dir = out_dir(&args)?;
    let settings = TrainSettings {
        batch: args.batch,
        seq_len: args.seq_len,
        rank: args.rank,
        alpha: args.alpha,
        warmup: args.warmup,
        steps: args.steps,
        lr: 2e-4,
        weight_decay: 0.01,
        seed: 20240607,
        checkpointing: args.checkpointing,
    };
    let mut meta = Meta {
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        commit: git_commit(),
        backend: args.backend.clone(),
        threads: args.threads,
        model: model.clone(),
        cpu: cpu_model(),
        cpus_online: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg_start: loadavg(),
        loadavg_end: None,
        settings: settings.clone(),
    };
    eprintln!(
        "bench: {} on {}, {} threads; load average {} (numbers taken on a busy machine are slow and noisy)",
        model.display(),
        args.backend,
        args.threads,
        meta.loadavg_start.as_deref().unwrap_or("?")
    );
    let mut training: Vec<TrainRow> = Vec::new();
    let mut inference: Option<InferenceReport> = None;
    let mut sweep: Vec<SweepRow> = Vec::new();
    let mut tables = String::new();
    let spec = |job: Job| JobSpec {
        job,
        backend: args.backend.clone(),
        model: model.clone(),
    };

    if let Some(ranks) = &args.sweep_rank {
        let targets = TargetSet::parse(&args.sweep_targets)?;
        for (k, &rank) in ranks.iter().enumerate() {
            eprintln!(
                "[{}/{}] rank {rank} ({})",
                k + 1,
                ranks.len(),
                targets.label()
            );
            let s = TrainSettings {
                rank,
                alpha: 2.0 * rank as f64,
                ..settings.clone()
            };
            let job = Job::Train {
                implementation: Implementation::Ours,
                targets,
                settings: s.clone(),
            };
            match run_child::<RawTrain>(&spec(job), args.threads) {
                Ok(raw) => {
                    let row = TrainRow::from_raw(Implementation::Ours, targets, &s, raw);
                    let m = row.summary.as_ref().expect("from_raw has a summary");
                    let accuracy = if args.eval {
                        trec_accuracy(&args, &model, targets, rank, &dir)
                            .inspect_err(|e| eprintln!("  rank {rank}: TREC run failed: {e:#}"))
                            .ok()
                            .flatten()
                    } else {
                        None
                    };
                    sweep.push(SweepRow {
                        rank,
                        trainable_params: m.trainable_params,
                        peak_rss_gib: m.peak_rss_gib,
                        tokens_per_s: m.tokens_per_s.median,
                        accuracy,
                    });
                }
                Err(e) => eprintln!("  rank {rank}: {e:#}"),
            }
        }
        tables.push_str(&report::sweep_table(&sweep, targets));
        let png = dir.join("rank_sweep.png");
        plot::plot_sweep(
            &png,
            &sweep,
            &format!(
                "LoRA rank trade-off: SmolLM2-135M, {}, batch {} × {}",
                targets.label(),
                args.batch,
                args.seq_len
            ),
        )?;
        tables.push_str(&format!("\npicture: {}\n", png.display()));
    } else {
        let parts: Vec<String> = parse_list(&args.parts, |s| Ok(s.to_string()))?;
        if parts.iter().any(|p| p == "training") {
            run_training(&args, &settings, &model, &mut training)?;
            tables.push_str(&report::training_table(
                &training,
                &settings,
                &format!(
                    "Training: {} (f32), backend {}, {} threads",
                    model.file_name().map_or_else(
                        || model.display().to_string(),
                        |n| n.to_string_lossy().into_owned()
                    ),
                    args.backend,
                    args.threads
                ),
            ));
        }
        if parts.iter().any(|p| p == "inference") {
            let targets = TargetSet::AllLinear;
            eprintln!(
                "[inference] base, base + adapter ({}), merged",
                targets.label()
            );
            let job = Job::Inference(InferenceSettings {
                targets,
                rank: args.rank,
                prompt_len: args.prompt_len,
                decode_tokens: args.decode_tokens,
                rounds: args.rounds,
                seed: settings.seed,
            });
            match run_child::<RawInference>(&spec(job), args.threads) {
                Ok(raw) => {
                    let r = InferenceReport::from_raw(&raw);
                    tables.push('\n');
                    tables.push_str(&report::inference_table(
                        &r,
                        &format!("{} r {}", targets.label(), args.rank),
                    ));
                    inference = Some(r);
                }
                Err(e) => eprintln!("  inference: {e:#}"),
            }
        }
    }

    meta.loadavg_end = loadavg();
    let out = BenchJson {
        meta,
        training,
        inference,
        sweep,
    };
    let json_path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&out)?;
    std::fs::write(&json_path, &text)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let footer = format!(
        "\nload average: {} at the start, {} at the end; results: {}\n",
        out.meta.loadavg_start.as_deref().unwrap_or("?"),
        out.meta.loadavg_end.as_deref().unwrap_or("?"),
        json_path.display()
    );
    if args.json {
        eprintln!("{tables}{footer}");
        println!("{text}");
    } else {
        println!("\n{tables}{footer}");
    }
    Ok(())
}

/// Fine-tunes rank `rank` on TREC with `burn-lora train` (a child process, its own defaults
/// except rank, alpha = 2·r, targets and steps) and returns the held-out accuracy after it.
fn trec_accuracy(
    args: &Args,
    model: &Path,
    targets: TargetSet,
    rank: usize,
    dir: &Path,
) -> Result<Option<f64>> {
    let run = dir.join(format!("trec-rank-{rank}"));
    let exe = std::env::current_exe().context("finding this binary")?;
    eprintln!(
        "  TREC: {} steps at rank {rank}, accuracy on {} held-out questions ...",
        args.eval_steps, args.eval_limit
    );
    let status = Command::new(exe)
        .arg("train")
        .arg("--model")
        .arg(model)
        .args(["--rank", &rank.to_string()])
        .args(["--alpha", &(2 * rank).to_string()])
        .args(["--targets", targets.modules()])
        .args(["--steps", &args.eval_steps.to_string()])
        .args(["--eval-limit", &args.eval_limit.to_string()])
        .args(["--backend", &args.backend])
        .arg("--out")
        .arg(&run)
        .arg("--json")
        .env("RAYON_NUM_THREADS", args.threads.to_string())
        .stdout(Stdio::null())
        .status()
        .context("starting burn-lora train")?;
    if !status.success() {
        bail!("burn-lora train exited with {status}");
    }
    let path = run.join("summary.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&text)?;
    Ok(summary["after"]["accuracy"].as_f64())
}

/// The training rows: every target set × implementation, each in a fresh process.
fn run_training(
    args: &Args,
    settings: &TrainSettings,
    model: &Path,
    rows: &mut Vec<TrainRow>,
) -> Result<()> {
    let targets = parse_list(&args.targets, TargetSet::parse)?;
    let impls = parse_list(&args.impls, parse_impl)?;
    let python = args.python.clone().unwrap_or_else(peft::default_python);
    let script = peft::default_script();
    let peft_missing = impls
        .iter()
        .any(|i| i.is_python())
        .then(|| peft::unavailable(&python, &script))
        .flatten();
    let total = targets.len() * impls.len();
    let mut k = 0;
    for &t in &targets {
        for &i in &impls {
            k += 1;
            eprintln!("[{k}/{total}] {} {}", i.label(), t.label());
            let result = match i {
                Implementation::Peft | Implementation::PeftNf4 => match &peft_missing {
                    Some(why) => Err(why.clone()),
                    None => peft::run(
                        &python,
                        &script,
                        model,
                        t,
                        settings,
                        args.threads,
                        i.is_nf4(),
                    ),
                },
                _ => {
                    let spec = JobSpec {
                        job: Job::Train {
                            implementation: i,
                            targets: t,
                            settings: settings.clone(),
                        },
                        backend: args.backend.clone(),
                        model: model.to_path_buf(),
                    };
                    run_child::<RawTrain>(&spec, args.threads).map_err(|e| format!("{e:#}"))
                }
            };
            rows.push(match result {
                Ok(raw) => TrainRow::from_raw(i, t, settings, raw),
                Err(why) => {
                    eprintln!("  {}: {why}", i.label());
                    TrainRow::missing(i, t, settings, why)
                }
            });
        }
    }
    Ok(())
}
