//! LoRA+ (Hayou et al. 2024): `lora_B` learns at `loraplus_lr_ratio` × the rate of `lora_A`.
//! One optimizer step of the trainer's AdamW and schedule equals one step of PEFT's
//! `create_loraplus_optimizer` on the same gradients (`fixtures/tiny-llama/loraplus-reference.*`,
//! made by `scripts/make_fixtures.py --parts loraplus`), for a LoRA and a DoRA adapter.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use common::*;
use lora_core::{Adapter, LoraModel, peft};
use lora_models::pretrained::load_hf_model;
use lora_train::TrainConfig;
use lora_train::loss::causal_lm_loss;
use lora_train::trainer::{adamw, lr_schedule};

/// Every trainable tensor of `adapter` in PyTorch layout, by PEFT's name.
fn tensors(adapter: &Adapter) -> Vec<(&'static str, Vec<f32>)> {
    let lora = adapter.lora_factors().expect("LoRA or DoRA");
    let mut out = vec![
        ("lora_A", host(lora.lora_a.val().transpose())),
        ("lora_B", host(lora.lora_b.val().transpose())),
    ];
    if let Some(dora) = adapter.as_dora() {
        out.push(("lora_magnitude_vector", host(dora.magnitude.val())));
    }
    out
}

fn snapshot(model: &lora_models::Llama) -> BTreeMap<String, Vec<f32>> {
    let mut all = BTreeMap::new();
    model.visit_adapters(&mut |path, a| {
        for (which, t) in tensors(a) {
            all.insert(format!("{path}.{which}"), t);
        }
    });
    all
}

#[test]
fn loraplus_step_equals_peft_loraplus_optimizer_on_the_same_gradients() {
    let d = device().autodiff();
    let r = reference("tiny-llama/dora-reference.safetensors"); // the tiny batch
    let steps = reference("tiny-llama/loraplus-reference.safetensors");
    // PEFT's settings: lr 1e-3, λ = 16, weight decay 0.01 on both groups, AdamW ε = 1e-8.
    let cfg = TrainConfig {
        lr: 1e-3,
        warmup_steps: 0,
        weight_decay: 0.01,
        loraplus_lr_ratio: Some(16.0),
        ..TrainConfig::default()
    };
    for adapter in ["peft-adapter", "peft-dora"] {
        let model = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
        let dir = fixtures().join("tiny-llama").join(adapter);
        let (model, _, _) = peft::load_adapter(model, &dir, &d).unwrap();
        let before = snapshot(&model);
        let mut optim = adamw(&cfg);
        let lr = lr_schedule(&cfg, &model).unwrap().step();
        assert_eq!(lr.base(), 1e-3, "the first cosine step is the peak rate");
        let loss = causal_lm_loss(
            model.forward(ids(&r["input_ids"], &d), None),
            ids(&r["labels"], &d),
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(lr, model, grads);
        let after = snapshot(&model);

        let (mut worst, mut max_step) = (0f32, BTreeMap::<&str, f32>::new());
        for (key, old) in &before {
            let step: Vec<f32> = after[key].iter().zip(old).map(|(n, o)| n - o).collect();
            let want = &steps[&format!("step.{adapter}.{key}")].data;
            let err = rel_err(&step, want);
            worst = worst.max(err);
            // Adam's first step is lr · g/(|g| + ε): where |g| is near ε = 1e-8 a gradient
            // difference of 1e-11 (float rounding) moves the step by 1e-3 · lr; hence 5e-3.
            assert!(err < 5e-3, "{adapter} {key}: step vs PEFT {err}");
            let which = key.rsplit('.').next().unwrap();
            let m = step.iter().fold(0f32, |m, v| m.max(v.abs()));
            let e = max_step.entry(which).or_default();
            *e = e.max(m);
        }
        // Adam's first step is ≈ lr · sign(g): B's is λ × A's.
        let ratio = max_step["lora_B"] / max_step["lora_A"];
        eprintln!(
            "{adapter}: steps vs PEFT max rel err {worst:.2e}; max |ΔB| / max |ΔA| = {ratio:.3}"
        );
        assert!((ratio - 16.0).abs() < 0.2, "{ratio}");
        if adapter == "peft-dora" {
            let m = max_step["lora_magnitude_vector"] / max_step["lora_A"];
            // Its weight decay (lr · λ · 0.01 · m, m ≈ ‖W‖ ≈ 1) adds about 1 % on top.
            assert!((m - 16.0).abs() < 0.5, "the magnitude is in B's group: {m}");
        }
    }
}

#[test]
fn loraplus_ratio_and_dora_settings_are_checked_when_the_config_is_built() {
    for bad in [0.0, -1.0, f64::NAN, 2000.0] {
        let cfg = TrainConfig {
            loraplus_lr_ratio: Some(bad),
            ..TrainConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("loraplus_lr_ratio"), "{err}");
    }
    let dora_adalora = TrainConfig {
        method: lora_train::config::Method::Adalora,
        lora: lora_core::LoraConfig {
            use_dora: true,
            ..TrainConfig::default().lora
        },
        ..TrainConfig::default()
    };
    assert!(dora_adalora.validate().unwrap_err().contains("use_dora"));
    let layer = toml::toml! { loraplus_lr_ratio = 16.0 };
    let cfg = TrainConfig::layered(&[("flags", layer)]).unwrap();
    assert_eq!(cfg.loraplus_lr_ratio, Some(16.0));
    assert!(cfg.to_toml().unwrap().contains("loraplus_lr_ratio = 16.0"));
}
