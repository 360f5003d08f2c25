//! The training loop end to end on the tiny Llama fixture: it learns, only adapters change,
//! and a resumed run ends bit-for-bit where an uninterrupted one does.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use burn::module::Module;
use common::*;
use lora_core::AdapterConfig;
use lora_core::config::{InitLoraWeights, LoraConfig, TargetModules};
use lora_core::{LoraModel, apply_lora, peft};
use lora_models::Llama;
use lora_models::pretrained::load_hf_model;
use lora_train::TrainError;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::config::TrainConfig;
use lora_train::data::Encoded;
use lora_train::eval::{EvalReport, mean_answer_loss};
use lora_train::trainer::{Observer, Outcome, StepMetrics, TrainLoop, train};

/// burn's random generator (dropout masks, initialisation) is process-wide: tests that train
/// take turns so each run sees only its own draws.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn examples() -> Vec<Encoded> {
    // Four "prompt → answer" sequences over the tiny vocabulary (ids < 300).
    (0..4u32)
        .map(|i| Encoded {
            ids: vec![10 + i, 20 + i, 30 + i, 40 + i, 100 + 7 * i, 200 + 3 * i],
            prompt_len: 4,
            earlier_answers: Vec::new(),
        })
        .collect()
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        lr: 3e-3,
        warmup_steps: 2,
        save_every: 0,
        lora: LoraConfig::new(8, 16.0, TargetModules::AllLinear),
        ..TrainConfig::default()
    }
}

fn model(cfg: &TrainConfig) -> Llama {
    model_with(cfg, cfg.lora.clone())
}

fn model_with(cfg: &TrainConfig, lora: LoraConfig) -> Llama {
    let d = device().autodiff();
    d.seed(cfg.seed);
    let m = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    apply_lora(m, &lora, &d).unwrap().0
}

fn scratch(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[derive(Default)]
struct Record {
    losses: Vec<f64>,
    stop_after: Option<usize>,
}

impl Observer for Record {
    fn on_step(&mut self, m: &StepMetrics) {
        self.losses.push(m.loss);
    }
    fn interrupted(&self) -> bool {
        self.stop_after.is_some_and(|n| self.losses.len() >= n)
    }
}

fn no_eval(_: &Llama) -> Result<EvalReport, TrainError> {
    Ok(EvalReport::default())
}

fn checkpoint(dir: &std::path::Path, cfg: &TrainConfig) -> RunCheckpoint {
    RunCheckpoint::new(dir, AdapterConfig::Lora(cfg.lora.clone()), "tiny-llama")
}

fn run(
    cfg: &TrainConfig,
    m: Llama,
    dir: &std::path::Path,
    obs: &mut Record,
    resume: bool,
) -> (Llama, Outcome) {
    let ck = checkpoint(dir, cfg);
    let job = TrainLoop {
        data: &examples(),
        pad_id: 0,
        config: cfg,
        checkpoint: &ck,
        resume: resume.then(|| ck.load_state().unwrap()),
        allocator: None,
    };
    train(m, job, obs, &mut no_eval).unwrap()
}

#[test]
fn overfitting_a_handful_of_examples_drives_the_loss_near_zero() {
    let _turn = serial();
    // The output head joins the targets: with a frozen random head behind a fixed-norm RMSNorm,
    // the tiny model's logit margins are bounded and the loss cannot go below ≈ 0.3.
    let mut cfg = config(120);
    cfg.lora.target_modules = TargetModules::Regex(".*_proj|lm_head".into());
    let dir = scratch("overfit");
    let mut obs = Record::default();
    let (m, _) = run(&cfg, model(&cfg), &dir, &mut obs, false);
    let first = obs.losses[0];
    let (last, _) = mean_answer_loss(&m.valid(), &examples(), 4, 0).unwrap();
    assert!(first > 3.0, "starts near ln(300) ≈ 5.7: {first}");
    assert!(last < 0.05, "final loss {last} (first {first})");
    let _ = std::fs::remove_dir_all(&dir);
}

fn base_and_adapter_values(m: &Llama) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (mut base, mut adapters) = (Vec::new(), Vec::new());
    base.push(host(m.model.embed_tokens.weight.val().inner()));
    base.push(host(m.model.norm.weight.val().inner()));
    for l in &m.model.layers {
        base.push(host(l.input_layernorm.weight.val().inner()));
        base.push(host(l.post_attention_layernorm.weight.val().inner()));
    }
    m.visit_linears(&mut |_, lin| {
        base.push(host(lin.weight.val().inner()));
        if let Some(a) = lin.adapter.as_ref().and_then(|a| a.lora_factors()) {
            adapters.push(host(a.lora_a.val().inner()));
            adapters.push(host(a.lora_b.val().inner()));
        }
        if let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_dora()) {
            adapters.push(host(a.magnitude.val().inner()));
        }
    });
    (base, adapters)
}

#[test]
fn only_adapter_parameters_change_after_a_step() {
    let _turn = serial();
    let cfg = config(1);
    // B starts non-zero, so A gets a gradient at the first step too (with B = 0 it cannot).
    let lora = LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..cfg.lora.clone()
    };
    let m = model_with(&cfg, lora);
    let (base0, ad0) = base_and_adapter_values(&m);
    let dir = scratch("only-adapters");
    let (m, _) = run(&cfg, m, &dir, &mut Record::default(), false);
    let (base1, ad1) = base_and_adapter_values(&m);
    assert_eq!(base0, base1, "every base tensor is bitwise unchanged");
    assert_eq!(ad0.len(), 28);
    for (i, (a, b)) in ad0.iter().zip(&ad1).enumerate() {
        assert_ne!(a, b, "adapter tensor {i} changed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resumed_run_ends_bitwise_where_the_uninterrupted_run_does() {
    let _turn = serial();
    let cfg = TrainConfig {
        lora: LoraConfig {
            lora_dropout: 0.1,
            ..config(6).lora
        },
        ..config(6)
    };
    resume_matches_straight(&cfg, "lora");
    // DoRA (three tensors per layer, its magnitude in LoRA+'s B group) with LoRA+'s second
    // learning-rate schedule: the restored ids must find their AdamW state and their group.
    let cfg = TrainConfig {
        lora: LoraConfig {
            use_dora: true,
            ..cfg.lora
        },
        loraplus_lr_ratio: Some(4.0),
        ..cfg
    };
    resume_matches_straight(&cfg, "dora-loraplus");
}

/// Runs `cfg` straight through, and again stopped after 3 steps and resumed from the
/// checkpoint as a new process would: the losses and adapter tensors must be bitwise equal.
fn resume_matches_straight(cfg: &TrainConfig, name: &str) {
    let straight_dir = scratch(&format!("straight-{name}"));
    let mut straight_obs = Record::default();
    let (straight, _) = run(cfg, model(cfg), &straight_dir, &mut straight_obs, false);

    let dir = scratch(&format!("resumed-{name}"));
    let mut first = Record {
        stop_after: Some(3),
        ..Record::default()
    };
    let (_, outcome) = run(cfg, model(cfg), &dir, &mut first, false);
    assert_eq!(outcome, Outcome::Interrupted);
    // A new process would load the base model fresh and the adapter from the checkpoint.
    let d = device().autodiff();
    let ck = checkpoint(&dir, cfg);
    let base = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    let (mut m, _, _) = peft::load_adapter(base, &ck.adapter_dir().unwrap(), &d).unwrap();
    ck.restore_param_ids(&mut m).unwrap();
    let mut second = Record::default();
    let (resumed, _) = run(cfg, m, &dir, &mut second, true);

    let losses: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(losses, straight_obs.losses, "{name}: same loss curve");
    let (ours, theirs) = (
        base_and_adapter_values(&resumed).1,
        base_and_adapter_values(&straight).1,
    );
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs, "{name}: same adapter tensors");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&straight_dir);
}

#[test]
fn zero_steps_and_empty_data_are_clear_errors() {
    let _turn = serial();
    let cfg = config(0);
    let dir = scratch("bad");
    let ck = checkpoint(&dir, &cfg);
    let data = examples();
    let job = |data, config| TrainLoop {
        data,
        pad_id: 0,
        config,
        checkpoint: &ck,
        resume: None,
        allocator: None,
    };
    let err = train(
        model(&config(1)),
        job(&data, &cfg),
        &mut Record::default(),
        &mut no_eval,
    )
    .unwrap_err();
    assert!(err.to_string().contains("steps"), "{err}");
    let one = config(1);
    let err = train(
        model(&one),
        job(&[], &one),
        &mut Record::default(),
        &mut no_eval,
    )
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = TargetModules::AllLinear;
}

#[test]
fn one_pass_evaluation_equals_separate_loss_and_accuracy_passes() {
    let _turn = serial();
    use lora_train::eval::{choice_accuracy, evaluate};
    let cfg = config(3);
    let dir = scratch("eval");
    let (m, _) = run(&cfg, model(&cfg), &dir, &mut Record::default(), false);
    let m = m.valid();
    let ex = examples();
    // Candidates: each example's answer; labels: its own index, except one deliberately wrong.
    let cands: Vec<Vec<u32>> = ex.iter().map(|e| e.ids[e.prompt_len..].to_vec()).collect();
    let items: Vec<(Vec<u32>, usize)> = ex
        .iter()
        .enumerate()
        .map(|(i, e)| (e.ids[..e.prompt_len].to_vec(), if i == 3 { 0 } else { i }))
        .collect();
    let one = evaluate(&m, &ex, Some((&items, &cands)), 3, 0).unwrap();
    let (loss, _) = mean_answer_loss(&m, &ex, 3, 0).unwrap();
    let acc = choice_accuracy(&m, &items, &cands, 3, 0).unwrap();
    assert!((one.loss - loss).abs() < 1e-5, "{} vs {loss}", one.loss);
    assert_eq!(one.accuracy, Some(acc));
    let _ = std::fs::remove_dir_all(&dir);
}
