//! The `burn-lora bench` suite: LoRA training speed and memory side by side with burn's own
//! `apply_lora` and PyTorch + PEFT, inference speed of base / unmerged / merged models, and a
//! rank sweep.
//!
//! Every configuration runs in a fresh child process ([`ChildCommand`]: the `burn-lora` binary
//! again, running one [`JobSpec`] with [`run_one`](super::run_one), or `scripts/bench_peft.py`),
//! so each row's peak resident memory is its own. Results go to `bench.json` in the output
//! directory; [`run_bench`] returns them with the printed tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use super::gemm::{GemmRow, GemmRun, GemmShape, gemm_table, run_gemm_rows};
use super::job::{
    Implementation, InferenceSettings, Job, JobSpec, RawInference, RawTrain, TargetSet,
    TrainSettings,
};
use super::report::{self, InferenceReport, ScaleImpl, ScaleRow, SweepRow, TrainRow};
use super::scale::{ScaleBase, ScaleShape, does_not_fit, mem_available_bytes};
use super::{peft, plot};
use crate::bench::machine::{cpu_model, git_commit, loadavg};
use crate::error::TrainError;
use crate::run::timestamped_dir;

type Result<T> = std::result::Result<T, TrainError>;

fn fail(message: String) -> TrainError {
    TrainError::Bench(message)
}

/// What to measure (`burn-lora bench`'s flags, resolved).
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Backend: flex, ndarray or wgpu.
    pub backend: String,
    /// GGUF file or Hugging Face directory.
    pub model: PathBuf,
    /// Shapes, rank and optimizer of every training row (and of the sweep).
    pub settings: TrainSettings,
    /// Target sets of the training rows.
    pub targets: Vec<TargetSet>,
    /// Implementations of the training rows.
    pub impls: Vec<Implementation>,
    /// Measure training rows.
    pub training: bool,
    /// Measure inference rows.
    pub inference: bool,
    /// Time the training step's matrix products alone, ours and PyTorch's.
    pub gemm: bool,
    /// Threads for every implementation (rayon for burn, intra-op threads for PyTorch).
    pub threads: usize,
    /// Python with torch, transformers and peft for the PEFT rows.
    pub python: PathBuf,
    /// Prompt tokens for the inference rows (prefill).
    pub prompt_len: usize,
    /// Decoded tokens per inference round.
    pub decode_tokens: usize,
    /// Timed inference rounds.
    pub rounds: usize,
    /// Instead of the tables: sweep these LoRA ranks (ours), with `lora_alpha = 2·r`.
    pub sweep_rank: Option<Vec<usize>>,
    /// Target set of the rank sweep.
    pub sweep_targets: TargetSet,
    /// With the sweep: also fine-tune each rank on TREC and record held-out accuracy.
    pub sweep_eval: Option<SweepEval>,
    /// Instead of the tables: the real-size shapes of `--scale` (random weights), each on
    /// every base of `scale_bases`, ours and PEFT (when `impls` has `peft`).
    pub scale: Option<Vec<ScaleShape>>,
    /// The bases of the scale rows.
    pub scale_bases: Vec<ScaleBase>,
    /// Where `bench.json` (and `rank_sweep.png`) go; default `runs/bench-<unix time>`.
    pub out: Option<PathBuf>,
}

/// The TREC runs of a rank sweep with accuracy.
#[derive(Clone, Copy, Debug)]
pub struct SweepEval {
    /// Optimizer steps of each run.
    pub steps: usize,
    /// Held-out questions each run is scored on.
    pub limit: usize,
}

/// How to start a child: the program and the arguments before the job (for `burn-lora`, its own
/// path and `bench --one`; for a TREC run of the sweep, its own path and `train`).
#[derive(Clone, Debug)]
pub struct ChildCommand {
    /// The `burn-lora` binary.
    pub program: PathBuf,
}

impl ChildCommand {
    fn command(&self, threads: usize) -> Command {
        let mut cmd = Command::new(&self.program);
        // rayon's global pool (flex's matmuls and elementwise kernels) takes its size from here.
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
        cmd
    }
}

/// How and where the numbers were taken, for reading them later.
#[derive(Debug, Serialize)]
pub struct Meta {
    /// Unix seconds at the start.
    pub started_unix_s: u64,
    /// `git describe --always --dirty` of the working tree, if git is there.
    pub commit: Option<String>,
    /// Backend name.
    pub backend: String,
    /// Threads per implementation.
    pub threads: usize,
    /// The model measured.
    pub model: PathBuf,
    /// CPU model name.
    pub cpu: Option<String>,
    /// CPUs online.
    pub cpus_online: usize,
    /// `/proc/loadavg` before and after: a busy machine makes wall times slow and noisy.
    pub loadavg_start: Option<String>,
    /// `/proc/loadavg` at the end.
    pub loadavg_end: Option<String>,
    /// The training rows' settings.
    pub settings: TrainSettings,
}

/// `bench.json`.
#[derive(Debug, Serialize)]
pub struct BenchJson {
    /// How and where.
    pub meta: Meta,
    /// Training rows.
    pub training: Vec<TrainRow>,
    /// Inference rows.
    pub inference: Option<InferenceReport>,
    /// Rank sweep rows.
    pub sweep: Vec<SweepRow>,
    /// `--scale` rows: `{shape, base, impl, tokens_per_s, peak_rss_gib, bits_per_weight, …}`.
    pub scale: Vec<ScaleRow>,
    /// `--parts gemm` rows: each product of a training step, ours and PyTorch's GFLOP/s.
    pub gemm: Vec<GemmRow>,
}

/// What [`run_bench`] produced.
#[derive(Debug)]
pub struct BenchOutcome {
    /// Everything measured (also written to `json_path`).
    pub results: BenchJson,
    /// The tables, as printed.
    pub tables: String,
    /// Where `bench.json` was written.
    pub json_path: PathBuf,
}

/// Runs `spec` in a child process; the child's progress shows on stderr.
fn run_child<T: serde::de::DeserializeOwned>(
    child: &ChildCommand,
    spec: &JobSpec,
    threads: usize,
) -> Result<T> {
    let job = serde_json::to_string(spec).map_err(|e| fail(format!("bench job: {e}")))?;
    let output = child
        .command(threads)
        .args(["bench", "--one", &job])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            fail(format!(
                "starting a bench child ({}): {e}",
                child.program.display()
            ))
        })?;
    if !output.status.success() {
        return Err(fail(format!(
            "the child failed ({}); its messages are above",
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| fail(format!("reading the child's result: {e}")))
}

/// Runs the suite `cfg` describes: every row in its own child process, `bench.json` written into
/// the output directory. `status` receives a line per row as it starts (and the reason a row is
/// missing).
///
/// # Errors
/// [`TrainError`] for bad settings, an output directory that cannot be created, or results that
/// cannot be written. A row that fails is reported as missing, not as an error.
pub fn run_bench(
    cfg: &BenchConfig,
    child: &ChildCommand,
    status: &mut dyn FnMut(&str),
) -> Result<BenchOutcome> {
    let s = &cfg.settings;
    if s.steps == 0 || s.batch == 0 || s.seq_len < 2 {
        return Err(TrainError::Config(
            "--steps and --batch must be at least 1 and --seq-len at least 2".into(),
        ));
    }
    let dir = cfg.out.clone().unwrap_or_else(|| timestamped_dir("bench"));
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut meta = Meta {
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        commit: git_commit(),
        backend: cfg.backend.clone(),
        threads: cfg.threads,
        model: cfg.model.clone(),
        cpu: cpu_model(),
        cpus_online: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg_start: loadavg(),
        loadavg_end: None,
        settings: s.clone(),
    };
    status(&format!(
        "bench: {} on {}, {} threads; load average {} (numbers taken on a busy machine are slow and noisy)",
        cfg.model.display(),
        cfg.backend,
        cfg.threads,
        meta.loadavg_start.as_deref().unwrap_or("?")
    ));
    let mut training: Vec<TrainRow> = Vec::new();
    let mut inference: Option<InferenceReport> = None;
    let mut sweep: Vec<SweepRow> = Vec::new();
    let mut scale: Vec<ScaleRow> = Vec::new();
    let mut gemm: Vec<GemmRow> = Vec::new();
    let mut tables = String::new();
    let spec = |job: Job| JobSpec {
        job,
        backend: cfg.backend.clone(),
        model: cfg.model.clone(),
    };

    if let Some(shapes) = &cfg.scale {
        scale = run_scale_rows(cfg, shapes, child, status);
        tables.push_str(&report::scale_table(&scale, s));
    } else if let Some(ranks) = &cfg.sweep_rank {
        let targets = cfg.sweep_targets;
        for (k, &rank) in ranks.iter().enumerate() {
            status(&format!(
                "[{}/{}] rank {rank} ({})",
                k + 1,
                ranks.len(),
                targets.label()
            ));
            let settings = TrainSettings {
                rank,
                alpha: 2.0 * rank as f64,
                ..s.clone()
            };
            let job = Job::Train {
                implementation: Implementation::Ours,
                targets,
                settings: settings.clone(),
            };
            let raw = match run_child::<RawTrain>(child, &spec(job), cfg.threads) {
                Ok(raw) => raw,
                Err(e) => {
                    status(&format!("  rank {rank}: {e}"));
                    continue;
                }
            };
            let row = TrainRow::from_raw(Implementation::Ours, targets, &settings, raw);
            let Some(m) = row.summary.as_ref() else {
                continue;
            };
            let accuracy = match cfg.sweep_eval {
                Some(eval) => {
                    status(&format!(
                        "  TREC: {} steps at rank {rank}, accuracy on {} held-out questions ...",
                        eval.steps, eval.limit
                    ));
                    trec_accuracy(cfg, child, eval, targets, rank, &dir)
                        .inspect_err(|e| status(&format!("  rank {rank}: TREC run failed: {e}")))
                        .ok()
                        .flatten()
                }
                None => None,
            };
            sweep.push(SweepRow {
                rank,
                trainable_params: m.trainable_params,
                peak_rss_gib: m.peak_rss_gib,
                tokens_per_s: m.tokens_per_s.median,
                accuracy,
            });
        }
        tables.push_str(&report::sweep_table(&sweep, targets));
        let png = dir.join("rank_sweep.png");
        plot::plot_sweep(
            &png,
            &sweep,
            &format!(
                "LoRA rank trade-off: SmolLM2-135M, {}, batch {} × {}",
                targets.label(),
                s.batch,
                s.seq_len
            ),
        )?;
        tables.push_str(&format!("\npicture: {}\n", png.display()));
    } else {
        if cfg.training {
            training = run_training_rows(cfg, child, status);
            tables.push_str(&report::training_table(
                &training,
                s,
                &format!(
                    "Training: {} (f32), backend {}, {} threads",
                    cfg.model.file_name().map_or_else(
                        || cfg.model.display().to_string(),
                        |n| n.to_string_lossy().into_owned()
                    ),
                    cfg.backend,
                    cfg.threads
                ),
            ));
        }
        if cfg.inference {
            let targets = TargetSet::AllLinear;
            status(&format!(
                "[inference] base, base + adapter ({}), merged",
                targets.label()
            ));
            let job = Job::Inference(InferenceSettings {
                targets,
                rank: s.rank,
                prompt_len: cfg.prompt_len,
                decode_tokens: cfg.decode_tokens,
                rounds: cfg.rounds,
                seed: s.seed,
            });
            match run_child::<RawInference>(child, &spec(job), cfg.threads) {
                Ok(raw) => {
                    let r = InferenceReport::from_raw(&raw);
                    tables.push('\n');
                    tables.push_str(&report::inference_table(
                        &r,
                        &format!("{} r {}", targets.label(), s.rank),
                    ));
                    inference = Some(r);
                }
                Err(e) => status(&format!("  inference: {e}")),
            }
        }
        if cfg.gemm {
            let run = GemmRun {
                model: &cfg.model,
                batch: s.batch,
                seq_len: s.seq_len,
                python: &cfg.python,
                threads: cfg.threads,
            };
            let mut ours = |shapes: &[GemmShape], reps| {
                let job = Job::Gemm {
                    shapes: shapes.to_vec(),
                    reps,
                };
                run_child::<Vec<f64>>(child, &spec(job), cfg.threads).map_err(|e| e.to_string())
            };
            gemm = run_gemm_rows(&run, &mut ours, status);
            tables.push_str(&gemm_table(&gemm, cfg.threads));
        }
    }

    meta.loadavg_end = loadavg();
    let results = BenchJson {
        meta,
        training,
        inference,
        sweep,
        scale,
        gemm,
    };
    let json_path = dir.join("bench.json");
    let text =
        serde_json::to_string_pretty(&results).map_err(|e| fail(format!("bench.json: {e}")))?;
    lora_core::tensor_io::write_atomic(&json_path, text.as_bytes())?;
    tables.push_str(&format!(
        "\nload average: {} at the start, {} at the end; results: {}\n",
        results.meta.loadavg_start.as_deref().unwrap_or("?"),
        results.meta.loadavg_end.as_deref().unwrap_or("?"),
        json_path.display()
    ));
    Ok(BenchOutcome {
        results,
        tables,
        json_path,
    })
}

/// Fine-tunes rank `rank` on TREC with `burn-lora train` (a child process, its own defaults
/// except rank, alpha = 2·r, targets and steps) and returns the held-out accuracy after it.
fn trec_accuracy(
    cfg: &BenchConfig,
    child: &ChildCommand,
    eval: SweepEval,
    targets: TargetSet,
    rank: usize,
    dir: &Path,
) -> Result<Option<f64>> {
    let run = dir.join(format!("trec-rank-{rank}"));
    let status = child
        .command(cfg.threads)
        .arg("train")
        .arg("--model")
        .arg(&cfg.model)
        .args(["--rank", &rank.to_string()])
        .args(["--alpha", &(2 * rank).to_string()])
        .args(["--targets", targets.modules()])
        .args(["--steps", &eval.steps.to_string()])
        .args(["--eval-limit", &eval.limit.to_string()])
        .args(["--backend", &cfg.backend])
        .arg("--out")
        .arg(&run)
        .arg("--json")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| fail(format!("starting burn-lora train: {e}")))?;
    if !status.success() {
        return Err(fail(format!("burn-lora train exited with {status}")));
    }
    let path = run.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let summary: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(summary["after"]["accuracy"].as_f64())
}

/// The training rows: every target set × implementation, each in a fresh process. A row that
/// cannot run is kept, marked missing with the reason.
fn run_training_rows(
    cfg: &BenchConfig,
    child: &ChildCommand,
    status: &mut dyn FnMut(&str),
) -> Vec<TrainRow> {
    let script = peft::default_script();
    let peft_missing = cfg
        .impls
        .iter()
        .any(|i| i.is_python())
        .then(|| peft::unavailable(&cfg.python, &script))
        .flatten();
    let total = cfg.targets.len() * cfg.impls.len();
    let mut rows = Vec::with_capacity(total);
    let mut k = 0;
    for &t in &cfg.targets {
        for &i in &cfg.impls {
            k += 1;
            status(&format!("[{k}/{total}] {} {}", i.label(), t.label()));
            let result = match i {
                Implementation::Peft | Implementation::PeftNf4 => match &peft_missing {
                    Some(why) => Err(why.clone()),
                    None => peft::run(
                        &cfg.python,
                        &script,
                        &peft::PeftModel::File {
                            path: &cfg.model,
                            nf4: i.is_nf4(),
                            base_dtype: cfg.settings.base_dtype,
                        },
                        t,
                        &cfg.settings,
                        cfg.threads,
                    ),
                },
                _ => {
                    let spec = JobSpec {
                        job: Job::Train {
                            implementation: i,
                            targets: t,
                            settings: cfg.settings.clone(),
                        },
                        backend: cfg.backend.clone(),
                        model: cfg.model.clone(),
                    };
                    run_child::<RawTrain>(child, &spec, cfg.threads).map_err(|e| e.to_string())
                }
            };
            rows.push(match result {
                Ok(raw) => TrainRow::from_raw(i, t, &cfg.settings, raw),
                Err(why) => {
                    status(&format!("  {}: {why}", i.label()));
                    TrainRow::missing(i, t, &cfg.settings, why)
                }
            });
        }
    }
    rows
}

/// The `--scale` rows: every shape × base, ours then PEFT, each in a fresh process. A row whose
/// weights do not fit in the memory available when it would start is reported as such and not
/// attempted; one that fails is kept, marked missing with the reason.
fn run_scale_rows(
    cfg: &BenchConfig,
    shapes: &[ScaleShape],
    child: &ChildCommand,
    status: &mut dyn FnMut(&str),
) -> Vec<ScaleRow> {
    let script = peft::default_script();
    let with_peft = cfg.impls.iter().any(|i| i.is_python());
    let peft_missing = with_peft
        .then(|| peft::unavailable(&cfg.python, &script))
        .flatten();
    let s = &cfg.settings;
    let tokens = s.batch * s.seq_len;
    let mut impls = vec![ScaleImpl::Ours];
    if with_peft {
        impls.push(ScaleImpl::Peft);
    }
    let total = shapes.len() * cfg.scale_bases.len() * impls.len();
    let mut rows = Vec::with_capacity(total);
    for &shape in shapes {
        for &base in &cfg.scale_bases {
            for &imp in &impls {
                status(&format!(
                    "[{}/{total}] {} {} {}",
                    rows.len() + 1,
                    shape.name(),
                    base.name(),
                    imp.label()
                ));
                if let Some(why) = does_not_fit(shape, base, mem_available_bytes()) {
                    status(&format!("  {why}"));
                    rows.push(ScaleRow::missing(shape, base, imp, why));
                    continue;
                }
                let result = match imp {
                    ScaleImpl::Ours => {
                        let spec = JobSpec {
                            job: Job::Scale {
                                shape,
                                base,
                                settings: s.clone(),
                            },
                            backend: cfg.backend.clone(),
                            model: cfg.model.clone(),
                        };
                        run_child::<RawTrain>(child, &spec, cfg.threads).map_err(|e| e.to_string())
                    }
                    ScaleImpl::Peft => match &peft_missing {
                        Some(why) => Err(why.clone()),
                        None => peft::run(
                            &cfg.python,
                            &script,
                            &peft::PeftModel::Scale { shape, base },
                            TargetSet::AllLinear,
                            s,
                            cfg.threads,
                        ),
                    },
                };
                rows.push(match result {
                    Ok(raw) => ScaleRow::from_raw(shape, base, imp, tokens, raw),
                    Err(why) => {
                        status(&format!("  {}: {why}", imp.label()));
                        ScaleRow::missing(shape, base, imp, why)
                    }
                });
            }
        }
    }
    rows
}
