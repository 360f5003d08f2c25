//! One benchmark configuration, run in its own process (`burn-lora bench --one JOB`) so that the
//! peak resident memory the OS reports belongs to that configuration alone. The parent passes the
//! job as JSON and reads the result back as the last line of the child's stdout.

use std::path::PathBuf;

use burn::module::{Lora, Module, ParamGroup};
use burn::tensor::{Distribution, Tensor};
use lora_core::quant::{Nf4Config, QuantReport, quantize_base};
use lora_core::targets::TargetMatcher;
use lora_core::{
    Adapter, BackendKind, BaseDtype, LoraConfig, LoraModel, TargetModules, apply_lora,
    select_device,
};
use lora_models::Llama;
use lora_models::checkpoint::Storage;
use serde::{Deserialize, Serialize};

use super::scale::{ScaleBase, ScaleShape, base_bits_per_weight};
use super::{
    Progress, bench_token_ids, rss_now_bytes, time_generation, time_training, trainable_params,
};
use crate::error::TrainError;
use crate::report::peak_rss_bytes;

type Result<T> = std::result::Result<T, TrainError>;

fn fail(message: String) -> TrainError {
    TrainError::Bench(message)
}

/// Which LoRA implementation a training row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Implementation {
    /// Ours: `LoraLinear`'s low-rank path on the activations.
    Ours,
    /// burn 0.22's `Module::apply_lora` (dense `W + s·A·B` composed at every forward).
    Burn,
    /// PyTorch + PEFT through `scripts/bench_peft.py`.
    Peft,
    /// Ours on an NF4 base (QLoRA: every linear layer but `lm_head` quantized, block size 64,
    /// double quantization), adapters in f32.
    #[serde(rename = "ours-nf4")]
    OursNf4,
    /// PyTorch + PEFT on a bitsandbytes NF4 base (`BitsAndBytesConfig(load_in_4bit=True,
    /// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`, f32 compute).
    #[serde(rename = "peft-nf4")]
    PeftNf4,
}

impl Implementation {
    /// How this implementation's rows store the frozen base, streamed in at load: ours in
    /// `--base-dtype`, QLoRA's with every linear layer but `lm_head` in NF4 (as `burn-lora train
    /// --quant nf4`), burn's `apply_lora` on the f32 weights.
    fn storage(self, s: &TrainSettings) -> Storage {
        match self {
            Implementation::Ours => Storage {
                dtype: s.base_dtype,
                nf4: None,
            },
            Implementation::OursNf4 => Storage {
                dtype: s.base_dtype,
                nf4: Some(Nf4Config::default()),
            },
            _ => Storage::default(),
        }
    }

    /// How the table names it.
    pub fn label(self) -> &'static str {
        match self {
            Implementation::Ours => "burn-lora (ours)",
            Implementation::Burn => "burn apply_lora",
            Implementation::Peft => "PyTorch + PEFT",
            Implementation::OursNf4 => "ours, NF4 base",
            Implementation::PeftNf4 => "PEFT + bnb NF4",
        }
    }

    /// Whether the frozen base is quantized to NF4 (a QLoRA row).
    pub fn is_nf4(self) -> bool {
        matches!(self, Implementation::OursNf4 | Implementation::PeftNf4)
    }

    /// Whether the row runs in Python (`scripts/bench_peft.py`).
    pub fn is_python(self) -> bool {
        matches!(self, Implementation::Peft | Implementation::PeftNf4)
    }

    /// The PyTorch row this one is compared with: PEFT on the same kind of base.
    pub fn reference(self) -> Implementation {
        if self.is_nf4() {
            Implementation::PeftNf4
        } else {
            Implementation::Peft
        }
    }
}

/// The layers that get adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSet {
    /// `q_proj, v_proj` (PEFT's default for Llama).
    Qv,
    /// Every linear layer but the output head (PEFT's `all-linear`).
    AllLinear,
}

impl TargetSet {
    /// Short name for the table.
    pub fn label(self) -> &'static str {
        match self {
            TargetSet::Qv => "q,v",
            TargetSet::AllLinear => "all-linear",
        }
    }

    /// The `target_modules` value, as PEFT and our CLI both spell it.
    pub fn modules(self) -> &'static str {
        match self {
            TargetSet::Qv => "q_proj,v_proj",
            TargetSet::AllLinear => "all-linear",
        }
    }

    /// Parses `qv` / `q,v` / `q_proj,v_proj` and `all` / `all-linear`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "qv" | "q,v" | "q_proj,v_proj" => Ok(TargetSet::Qv),
            "all" | "all-linear" => Ok(TargetSet::AllLinear),
            other => Err(fail(format!("unknown target set {other:?}; use qv or all"))),
        }
    }
}

/// The shared settings of every training row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Sequences per step `B`.
    pub batch: usize,
    /// Tokens per sequence `T`.
    pub seq_len: usize,
    /// LoRA rank `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay (PyTorch's default, 0.01, on both sides).
    pub weight_decay: f64,
    /// Seed of the token ids and the adapter initialisation.
    pub seed: u64,
    /// burn's gradient checkpointing (recompute memory-bound activations in the backward pass)
    /// for the burn rows (ours and `apply_lora`).
    #[serde(default)]
    pub checkpointing: bool,
    /// The type the frozen base is stored and multiplied in, for our rows (`--base-dtype`).
    #[serde(default)]
    pub base_dtype: BaseDtype,
}

/// What a child process does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "lowercase")]
pub enum Job {
    /// Time training steps of one implementation on one target set.
    Train {
        /// Ours or burn's (PEFT runs in Python, not here).
        implementation: Implementation,
        /// The adapted layers.
        targets: TargetSet,
        /// Shapes and optimizer.
        settings: TrainSettings,
    },
    /// Time prefill and decode of the base, base + unmerged adapter, merged and NF4 models.
    Inference(InferenceSettings),
    /// Time training steps of ours on a random-weight real-size shape (`bench --scale`).
    Scale {
        /// The Llama shape.
        shape: ScaleShape,
        /// How its frozen base is stored.
        base: ScaleBase,
        /// Shapes and optimizer (`targets` is all-linear).
        settings: TrainSettings,
    },
    /// GFLOP/s of each matrix product (`bench --parts gemm`), in order.
    Gemm {
        /// The products.
        shapes: Vec<super::gemm::GemmShape>,
        /// Timed repetitions of each.
        reps: usize,
    },
}

/// What an inference job measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferenceSettings {
    /// The adapted layers of the unmerged/merged variants.
    pub targets: TargetSet,
    /// LoRA rank of the adapter.
    pub rank: usize,
    /// Prompt length (prefill tokens).
    pub prompt_len: usize,
    /// Decoded tokens per round.
    pub decode_tokens: usize,
    /// Timed rounds (each runs every variant once, interleaved).
    pub rounds: usize,
    /// Seed of the prompt ids and the adapter.
    pub seed: u64,
}

/// A job plus where it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// The work.
    pub job: Job,
    /// `flex`, `ndarray` or `wgpu`.
    pub backend: String,
    /// GGUF file or Hugging Face directory.
    pub model: PathBuf,
}

/// The raw result of a training job; `scripts/bench_peft.py` prints the same fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RawTrain {
    /// Wall seconds per timed step.
    pub step_s: Vec<f64>,
    /// Forward + loss.
    pub forward_s: Vec<f64>,
    /// Backward (+ collecting gradients).
    pub backward_s: Vec<f64>,
    /// Optimizer step.
    pub optimizer_s: Vec<f64>,
    /// CPU seconds per step (all threads).
    #[serde(default)]
    pub cpu_s: Vec<f64>,
    /// Loss per timed step.
    pub losses: Vec<f64>,
    /// Trainable values.
    pub trainable_params: usize,
    /// Peak resident memory of the whole process (loading included), bytes.
    pub peak_rss_bytes: u64,
    /// Resident memory after loading the model, before the first step, bytes.
    pub rss_after_load_bytes: u64,
    /// Seconds to load the model.
    #[serde(default)]
    pub load_s: f64,
    /// Storage of the frozen linear weights (all but `lm_head`) in bits per weight: 32 for an
    /// f32 base, ≈ 4.13 for NF4 with double quantization.
    #[serde(default)]
    pub base_bits_per_weight: Option<f64>,
}

/// The result of an inference job: per variant, prefill tokens/s and decode tokens/s.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RawInference {
    /// `(variant, prefill seconds per round, decode seconds per token per round)`.
    pub variants: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Largest |logit difference| between the unmerged and merged models on the prompt's last
    /// position (a check that the merged model is the same function).
    pub merged_max_abs_diff: f64,
    /// Prompt length.
    pub prompt_len: usize,
    /// Decoded tokens per round.
    pub decode_tokens: usize,
}

fn lora_config(targets: TargetSet, rank: usize, alpha: f64) -> LoraConfig {
    LoraConfig::new(rank, alpha, TargetModules::parse_cli(targets.modules()))
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| fail(format!("bench result: {e}")))
}

/// Runs `spec` in this process and returns the result as one JSON line (what the parent reads
/// from the child's stdout), reporting progress to `progress`.
///
/// # Errors
/// [`TrainError`] if the model cannot be loaded, adapted or trained.
pub fn run_one(spec: &JobSpec, progress: &mut dyn FnMut(Progress<'_>)) -> Result<String> {
    let kind: BackendKind = spec
        .backend
        .parse()
        .map_err(|e: lora_core::LoraError| TrainError::Config(e.to_string()))?;
    let device = select_device(kind)?;
    let line = match &spec.job {
        Job::Train {
            implementation,
            targets,
            settings,
        } => {
            let device = training_device(&device, settings);
            let t0 = std::time::Instant::now();
            let storage = implementation.storage(settings);
            let base = load_model(&spec.model, &storage, &device)?;
            let load_s = t0.elapsed().as_secs_f64();
            device.seed(settings.seed);
            let (model, base_bits) = adapt(base, *implementation, *targets, settings, &device)?;
            let label = format!("{} {}", implementation.label(), targets.label());
            json(&timed_training(
                model, settings, load_s, base_bits, &label, progress,
            )?)?
        }
        Job::Inference(settings) => {
            let base = load_model(&spec.model, &Storage::default(), &device)?;
            json(&run_inference(base, settings, progress)?)?
        }
        Job::Scale {
            shape,
            base,
            settings,
        } => json(&super::scale::run_scale(
            *shape, *base, settings, &device, progress,
        )?)?,
        Job::Gemm { shapes, reps } => json(
            &shapes
                .iter()
                .map(|s| super::gemm::time_gemm(s, *reps, &device))
                .collect::<Vec<f64>>(),
        )?,
    };
    Ok(line)
}

/// The autodiff device of a training job: with checkpointing, one that recomputes memory-bound
/// activations in the backward pass.
pub(super) fn training_device(
    device: &burn::tensor::Device,
    s: &TrainSettings,
) -> burn::tensor::Device {
    if s.checkpointing {
        device.clone().autodiff().gradient_checkpointing()
    } else {
        device.clone().autodiff()
    }
}

/// Times `warmup + steps` training steps of `model` (adapters attached, on an autodiff device)
/// on the settings' fixed token ids, and collects the row's raw numbers.
pub(super) fn timed_training(
    model: Llama,
    settings: &TrainSettings,
    load_s: f64,
    base_bits: f64,
    label: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RawTrain> {
    let vocab = model.config.vocab_size;
    let ids = bench_token_ids(settings.batch, settings.seq_len, vocab, settings.seed);
    let rss_after_load = rss_now_bytes().unwrap_or(0);
    let trainable = trainable_params(&model);
    let n = settings.warmup + settings.steps;
    progress(Progress::Start { label, total: n });
    let (_, t) = time_training(
        model,
        &ids,
        settings.warmup,
        settings.steps,
        settings.lr,
        settings.weight_decay,
        &mut |i, _, secs, loss| {
            progress(Progress::Step {
                done: i,
                message: format!("last {secs:.2}s, loss {loss:.3}"),
            })
        },
    )?;
    progress(Progress::Done);
    Ok(RawTrain {
        step_s: t.step_s,
        forward_s: t.forward_s,
        backward_s: t.backward_s,
        optimizer_s: t.optimizer_s,
        cpu_s: t.cpu_s,
        losses: t.losses,
        trainable_params: trainable,
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        rss_after_load_bytes: rss_after_load,
        load_s,
        base_bits_per_weight: Some(base_bits),
    })
}

/// The model alone (a Hugging Face directory needs no tokenizer here, so the tiny test fixtures
/// work too), each weight streamed into `storage`.
fn load_model(
    path: &std::path::Path,
    storage: &Storage,
    device: &burn::tensor::Device,
) -> Result<Llama> {
    let model = if path.is_dir() {
        lora_models::pretrained::load_hf_model_as(path, storage, device)
    } else {
        lora_models::load_stored(path, storage, device).map(|p| p.model)
    };
    Ok(model?)
}

/// Puts trainable adapters on `base` (stored as [`Implementation::storage`] says) with
/// `implementation`'s mechanism; returns the model and the storage of its frozen linear weights
/// in bits per weight.
fn adapt(
    base: Llama,
    implementation: Implementation,
    targets: TargetSet,
    s: &TrainSettings,
    device: &burn::tensor::Device,
) -> Result<(Llama, f64)> {
    let config = lora_config(targets, s.rank, s.alpha);
    match implementation {
        Implementation::Ours => {
            let bits = base_bits_per_weight(&base);
            Ok((apply_lora(base, &config, device)?.0, bits))
        }
        Implementation::OursNf4 => {
            // As `burn-lora train --quant nf4`: the f32 adapters on the NF4 base.
            let bits = QuantReport::of(&base).bits_per_weight();
            Ok((apply_lora(base, &config, device)?.0, bits))
        }
        Implementation::Burn => {
            // The same weights as ours: the `.weight.Dense` parameter of every selected linear layer.
            let matcher = TargetMatcher::new(&config)?;
            let paths: Vec<String> = base
                .linear_paths()
                .into_iter()
                .filter(|p| matcher.matches(p))
                // `BaseWeight` is an enum module: its dense variant adds a path segment.
                .map(|p| format!("{p}.weight.Dense"))
                .collect();
            let n = paths.len();
            let model = base.apply_lora(
                Lora::new(s.rank, s.alpha).set_param_group(ParamGroup::from_paths(paths)),
            );
            let adapted = trainable_params(&model);
            if adapted == 0 || n == 0 {
                return Err(fail(
                    "burn's apply_lora adapted no parameter (paths did not match)".into(),
                ));
            }
            Ok((model, 32.0))
        }
        Implementation::Peft | Implementation::PeftNf4 => Err(fail(
            "PEFT runs in Python (scripts/bench_peft.py), not here".into(),
        )),
    }
}

/// `model` with every linear weight (the output head included) copied into a new buffer.
fn fresh_weights(mut model: Llama) -> Result<Llama> {
    model.visit_linears_mut(&mut |_, lin| {
        lin.weight = lin.weight.clone().map(|w| {
            // `to_data` of a tensor that is still referenced always copies.
            Tensor::from_data(w.to_data(), &w.device())
        });
        Ok(())
    })?;
    Ok(model)
}

/// Times the base model, the base with an unmerged adapter (random, non-zero `B` so the LoRA
/// path does real work), the merged model, the base with its weights where loading put them, and
/// the base in NF4 (QLoRA's, block 64 with double quantization),
/// interleaved round by round so that a change of machine load hits all alike.
fn run_inference(
    base: Llama,
    &InferenceSettings {
        targets,
        rank,
        prompt_len,
        decode_tokens,
        rounds,
        seed,
    }: &InferenceSettings,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RawInference> {
    let device = base.device();
    device.seed(seed);
    let (mut unmerged, _) = apply_lora(base.clone(), &lora_config(targets, rank, 16.0), &device)?;
    unmerged.visit_adapters_mut(&mut |_, adapter| {
        if let Adapter::Lora(a) = adapter {
            let dims = a.lora_b.shape().dims::<2>();
            let b = Tensor::<2>::random(dims, Distribution::Normal(0.0, 0.02), &device);
            a.lora_b = a.lora_b.clone().map(|_| b);
        }
        Ok(())
    })?;
    let mut merged = unmerged.clone();
    lora_core::merge_and_unload(&mut merged)?;
    // Decode streams every weight once per token, so its speed depends on where the weights sit
    // in memory: on the 2-core VMs here, the same weights decoded up to 20 % faster or slower
    // depending only on the buffers they were copied into (merging allocates fresh buffers, so
    // a single measurement compares placements, not models). Each round therefore times every
    // variant on fresh copies of its weights, and the median over rounds averages placement out;
    // the base with its weights where loading put them is timed too, for the record.
    let prompt = bench_token_ids(1, prompt_len, base.config.vocab_size, seed).remove(0);

    let diff = {
        let last = |m: &Llama| -> Result<Vec<f32>> {
            let mut cache = m.new_cache();
            Ok(lora_models::generate::step(m, &prompt, &mut cache)?)
        };
        let (a, b) = (last(&unmerged)?, last(&merged)?);
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max)
    };

    let variants: [(&str, &Llama, bool); 4] = [
        ("base", &base, true),
        ("base + adapter (unmerged)", &unmerged, true),
        ("merged", &merged, true),
        ("base, weights as loaded", &base, false),
    ];
    let mut out: Vec<(String, Vec<f64>, Vec<f64>)> = variants
        .iter()
        .map(|(name, _, _)| (name.to_string(), Vec::new(), Vec::new()))
        .collect();
    const NF4_ROUNDS: usize = 2;
    progress(Progress::Start {
        label: "inference",
        total: (rounds + 1) * variants.len() + NF4_ROUNDS + 1,
    });
    let mut done = 0;
    // Round 0 warms up (first allocations, caches) and is not recorded.
    for round in 0..=rounds {
        for (i, (name, model, copy)) in variants.iter().enumerate() {
            let fresh = if *copy {
                Some(fresh_weights((*model).clone())?)
            } else {
                None
            };
            let model = fresh.as_ref().unwrap_or(model);
            let (prefill, decode) = time_generation(model, &prompt, decode_tokens)?;
            if round > 0 {
                out[i].1.push(prefill);
                out[i].2.push(decode);
            }
            done += 1;
            progress(Progress::Step {
                done,
                message: format!("round {round}: {name}"),
            });
        }
    }
    // QLoRA's base (NF4, all but lm_head) dequantizes every layer in every forward, a decode
    // step included: timed after the others (its large temporaries would disturb their rounds),
    // with fewer rounds (it is ~25× slower to decode).
    let mut nf4 = base.clone();
    quantize_base(&mut nf4, &Nf4Config::default(), &["lm_head"])?;
    let mut nf4_row = ("base in NF4".to_string(), Vec::new(), Vec::new());
    for round in 0..=NF4_ROUNDS {
        let (prefill, decode) = time_generation(&nf4, &prompt, decode_tokens)?;
        if round > 0 {
            nf4_row.1.push(prefill);
            nf4_row.2.push(decode);
        }
        done += 1;
        progress(Progress::Step {
            done,
            message: format!("round {round}: base in NF4"),
        });
    }
    out.push(nf4_row);
    progress(Progress::Done);
    Ok(RawInference {
        variants: out,
        merged_max_abs_diff: diff,
        prompt_len,
        decode_tokens,
    })
}
