//! AdaLoRA against Hugging Face PEFT on the tiny Llama fixture: PEFT's pruned adapter loads here
//! with PEFT's logits and its original scale, ours is written the way PEFT writes it, and a short
//! training run from PEFT's initial adapter takes PEFT's losses and prunes PEFT's triplets.
//! Fixtures: `scripts/fixturegen/adalora.py`.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use lora_core::AdapterConfig;
use lora_core::adalora::{RankAllocator, orth_regularizer};
use lora_core::peft;
use lora_core::{LoraModel, merge_all, merge_and_unload, unmerge_all};
use lora_models::Llama;
use lora_models::pretrained::load_hf_model;
use lora_train::TrainError;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::config::TrainConfig;
use lora_train::data::Encoded;
use lora_train::eval::EvalReport;
use lora_train::trainer::{Observer, StepMetrics, TrainLoop, train};

fn tiny() -> PathBuf {
    fixtures().join("tiny-llama")
}

fn sidecar() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(tiny().join("adalora-reference.json")).unwrap()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-adalora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn peft_adalora_adapter_loads_at_its_kept_ranks_with_the_original_scale_and_peft_logits() {
    let d = device();
    let r = reference("tiny-llama/adalora-reference.safetensors");
    let base = load_hf_model(&tiny(), &d).unwrap();
    let base_logits = host(base.forward(ids(&r["input_ids"], &d), None));
    let (model, cfg, report) =
        peft::adalora::load_adapter(base, &tiny().join("peft-adalora"), &d).unwrap();
    let pattern = cfg
        .rank_pattern
        .as_ref()
        .expect("PEFT saved a rank pattern");
    assert_eq!(pattern.len(), 14);
    let pruned_away = pattern.values().filter(|k| !k.iter().any(|k| *k)).count();
    assert!(
        pruned_away > 0,
        "the fixture has a module pruned to rank 0 (PEFT saves empty tensors)"
    );
    assert_eq!(
        report.modules.len(),
        14 - pruned_away,
        "a rank-0 module gets no adapter"
    );
    let scaling = sidecar()["scaling"].as_f64().unwrap();
    assert!(
        (scaling - 8.0 / 4.00001).abs() < 1e-6,
        "PEFT's scale {scaling}"
    );
    let mut kept_total = 0;
    for m in &report.modules {
        let path = &m.path;
        let kept = pattern[path].iter().filter(|k| **k).count();
        assert_eq!(m.r, kept, "{path}: rank = kept triplets");
        assert_eq!(
            m.scaling,
            8.0 / (4.0 + 1e-5),
            "{path}: scale uses init_r, not the kept rank"
        );
        kept_total += kept;
    }
    assert!(
        report.modules.iter().any(|m| m.r != 2),
        "ranks differ between layers"
    );
    assert_eq!(kept_total, 2 * 14, "target_r × matrices");
    let logits = host(model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits_adalora"].data);
    assert!(err < 1e-5, "logits vs PEFT: {err}");
    assert!(
        rel_err(&logits, &base_logits) > 1e-3,
        "the adapter moves the logits"
    );
}

#[test]
fn merging_an_adalora_adapter_keeps_the_logits_and_unmerging_restores_them() {
    let d = device();
    let r = reference("tiny-llama/adalora-reference.safetensors");
    let base = load_hf_model(&tiny(), &d).unwrap();
    let (mut model, _, _) =
        peft::adalora::load_adapter(base, &tiny().join("peft-adalora"), &d).unwrap();
    let input = || ids(&r["input_ids"], &d);
    let unmerged = host(model.forward(input(), None));
    let adapted = merge_all(&mut model).unwrap();
    assert!(
        (1..14).contains(&adapted),
        "{adapted}: rank-0 modules carry no adapter"
    );
    let merged = host(model.forward(input(), None));
    assert!(
        rel_err(&merged, &unmerged) < 1e-5,
        "{}",
        rel_err(&merged, &unmerged)
    );
    assert!(merge_all(&mut model).is_err(), "merging twice is refused");
    unmerge_all(&mut model).unwrap();
    assert!(rel_err(&host(model.forward(input(), None)), &unmerged) < 1e-5);
    merge_and_unload(&mut model).unwrap();
    let mut left = 0;
    model.visit_linears(&mut |_, l| {
        left += l.adapter.as_ref().is_some_and(|a| a.as_adalora().is_some()) as usize
    });
    assert_eq!(left, 0, "merge_and_unload leaves no AdaLoRA adapter");
    let plain = host(model.forward(input(), None));
    assert!(rel_err(&plain, &r["logits_adalora"].data) < 1e-5);
}

#[test]
fn adalora_adapter_saved_here_has_peft_keys_shapes_and_rank_pattern() {
    let d = device();
    let peft_dir = tiny().join("peft-adalora");
    let base = load_hf_model(&tiny(), &d).unwrap();
    let (model, cfg, _) = peft::adalora::load_adapter(base, &peft_dir, &d).unwrap();
    let dir = scratch("resave");
    peft::adalora::save_adapter(&model, &cfg, "fixtures/tiny-llama", &dir).unwrap();
    let ours =
        lora_core::tensor_io::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let theirs =
        lora_core::tensor_io::read_safetensors(&peft_dir.join("adapter_model.safetensors"))
            .unwrap();
    assert_eq!(
        ours, theirs,
        "the same keys, shapes and values as PEFT's file"
    );
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("adapter_config.json")).unwrap()).unwrap()
    };
    let (ours, theirs) = (json(dir.clone()), json(peft_dir));
    for k in [
        "peft_type",
        "init_r",
        "target_r",
        "tinit",
        "tfinal",
        "deltaT",
        "beta1",
        "beta2",
        "orth_reg_weight",
        "total_step",
        "lora_alpha",
        "rank_pattern",
        "task_type",
        "r",
    ] {
        match (ours[k].as_f64(), theirs[k].as_f64()) {
            (Some(a), Some(b)) => assert_eq!(a, b, "{k}"), // 8.0 and 8 are the same alpha
            _ => assert_eq!(ours[k], theirs[k], "{k}"),
        }
    }
    let set = |v: &serde_json::Value| {
        let mut t: Vec<String> = serde_json::from_value(v.clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(set(&ours["target_modules"]), set(&theirs["target_modules"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn orth_penalty_of_peft_initial_adapter_equals_peft() {
    let d = device();
    let r = reference("tiny-llama/adalora-reference.safetensors");
    let base = load_hf_model(&tiny(), &d).unwrap();
    let (model, cfg, report) =
        peft::adalora::load_adapter(base, &tiny().join("peft-adalora-init"), &d).unwrap();
    assert!(cfg.rank_pattern.is_none());
    assert!(
        report.modules.iter().all(|m| m.r == 4),
        "full init_r before pruning"
    );
    let got = host(orth_regularizer(&model).unwrap())[0];
    let want = r["orth_penalty_init"].data[0];
    assert!((got - want).abs() < 1e-5 * want, "{got} vs PEFT {want}");
}

#[derive(Default)]
struct Losses(Vec<f64>);

impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
}

fn no_eval(_: &Llama) -> Result<EvalReport, TrainError> {
    Ok(EvalReport::default())
}

#[test]
fn adalora_training_takes_peft_losses_and_prunes_peft_triplets() {
    let d = device().autodiff();
    let r = reference("tiny-llama/adalora-reference.safetensors");
    let side = sidecar();
    let base = load_hf_model(&tiny(), &d).unwrap();
    let (model, cfg, _) =
        peft::adalora::load_adapter(base, &tiny().join("peft-adalora-init"), &d).unwrap();
    assert_eq!(cfg.total_step, Some(12));
    let mut allocator = RankAllocator::new(&model, &cfg).unwrap();

    let prompt_len = side["prompt_len"].as_u64().unwrap() as usize;
    let [n, t] = [r["train_ids"].shape[0], r["train_ids"].shape[1]];
    let examples: Vec<Encoded> = (0..n)
        .map(|i| Encoded {
            ids: r["train_ids"].data[i * t..(i + 1) * t]
                .iter()
                .map(|x| *x as u32)
                .collect(),
            prompt_len,
            earlier_answers: Vec::new(),
        })
        .collect();
    // PEFT's loop: AdamW (0.9, 0.999, eps 1e-8, no decay) at a constant lr, the whole batch
    // every step, global-norm clipping, no dropout.
    let train_cfg = TrainConfig {
        steps: 12,
        batch_size: n,
        lr: side["lr"].as_f64().unwrap(),
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.0,
        max_grad_norm: side["max_grad_norm"].as_f64().unwrap(),
        save_every: 0,
        ..TrainConfig::default()
    };
    let dir = scratch("train");
    let ck = RunCheckpoint::new(
        &dir,
        AdapterConfig::AdaLora(cfg.clone()),
        "fixtures/tiny-llama",
    );
    let mut losses = Losses::default();
    let job = TrainLoop {
        data: &examples,
        pad_id: 0,
        config: &train_cfg,
        checkpoint: &ck,
        resume: None,
        allocator: Some(&mut allocator),
    };
    let (model, _) = train(model, job, &mut losses, &mut no_eval).unwrap();

    let want = &r["losses_ce"].data;
    let max_diff = losses
        .0
        .iter()
        .zip(want)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    eprintln!("max |loss − PEFT loss| over 12 steps: {max_diff:.2e}");
    for (step, (got, want)) in losses.0.iter().zip(want).enumerate() {
        assert!(
            (got - *want as f64).abs() < 1e-4,
            "step {step}: loss {got} vs PEFT {want}"
        );
    }
    assert_eq!(losses.0.len(), 12);
    let budgets: Vec<usize> = allocator.history().iter().map(|a| a.budget).collect();
    let want_budgets: Vec<usize> = r["budgets"].data.iter().map(|b| *b as usize).collect();
    assert_eq!(budgets, want_budgets, "budget per step");

    let modules: Vec<String> = serde_json::from_value(side["modules"].clone()).unwrap();
    let allocations: Vec<_> = allocator
        .history()
        .iter()
        .filter(|a| a.rank_pattern.is_some())
        .collect();
    let mask_steps: Vec<usize> = allocations.iter().map(|a| a.step).collect();
    let want_steps: Vec<usize> = r["mask_steps"].data.iter().map(|s| *s as usize).collect();
    assert_eq!(mask_steps, want_steps, "allocation steps");
    let init_r = cfg.init_r;
    for (i, a) in allocations.iter().enumerate() {
        let p = a.rank_pattern.as_ref().unwrap();
        let ours: Vec<bool> = modules.iter().flat_map(|m| p[m].clone()).collect();
        let row = &r["masks"].data[i * modules.len() * init_r..(i + 1) * modules.len() * init_r];
        let theirs: Vec<bool> = row.iter().map(|v| *v == 1.0).collect();
        assert_eq!(ours, theirs, "kept triplets after step {}", a.step);
    }

    // The checkpoint holds the AdaLoRA adapter at full rank (pruned λ = 0).
    let (_, ck_cfg, ck_report) = peft::adalora::load_adapter(
        load_hf_model(&tiny(), &device()).unwrap(),
        &ck.adapter_dir().unwrap(),
        &device(),
    )
    .unwrap();
    assert!(ck_cfg.rank_pattern.is_none() && ck_report.modules.iter().all(|m| m.r == 4));

    // The trained, pruned adapter written here holds what PEFT's holds.
    let out = dir.join("adapter");
    peft::adalora::save_adapter(&model, &allocator.config(), "fixtures/tiny-llama", &out).unwrap();
    let ours =
        lora_core::tensor_io::read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    let theirs = lora_core::tensor_io::read_safetensors(
        &tiny().join("peft-adalora/adapter_model.safetensors"),
    )
    .unwrap();
    let shapes = |m: &BTreeMap<String, lora_core::tensor_io::HostTensor>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shapes(&ours), shapes(&theirs), "keys and kept ranks");
    let mut worst = 0f32;
    for (k, v) in &ours {
        worst = worst.max(rel_err(&v.data, &theirs[k].data));
    }
    eprintln!("trained adapter tensors vs PEFT's: max relative error {worst:.2e}");
    assert!(
        worst < 1e-4,
        "adapter tensors vs PEFT: max relative error {worst}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
