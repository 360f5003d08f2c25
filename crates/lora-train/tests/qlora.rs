//! QLoRA on the tiny Llama: an NF4 base matches bitsandbytes' logits, trains, never changes, and
//! merging into it goes through the dequantized weight (fixtures/nf4/tiny-qlora.safetensors).

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use common::*;
use lora_core::quant::{Nf4Config, RequantizeSummary, quantize_base, requantize_summary};
use lora_core::{AdapterConfig, LoraConfig, TargetModules};
use lora_core::{BaseWeight, LoraModel, apply_lora, merge_all, peft, unmerge_all};
use lora_models::Llama;
use lora_models::pretrained::load_hf_model;
use lora_train::TrainError;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::config::TrainConfig;
use lora_train::data::Encoded;
use lora_train::eval::EvalReport;
use lora_train::trainer::{Observer, StepMetrics, TrainLoop, train};

fn nf4_tiny(device: &burn::tensor::Device) -> Llama {
    let mut m = load_hf_model(&fixtures().join("tiny-llama"), device).unwrap();
    let r = quantize_base(&mut m, &Nf4Config::default(), &["lm_head"]).unwrap();
    assert_eq!(r.modules.len(), 14, "7 linear layers × 2 blocks");
    m
}

/// The host bytes of every NF4 base weight (packed codes and scales, dequantized).
fn base_values(m: &Llama) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    m.visit_linears(&mut |_, lin| {
        if let BaseWeight::Nf4(_) = &lin.weight {
            out.push(host(lin.weight.val()));
        }
    });
    out
}

#[test]
fn nf4_base_logits_match_bitsandbytes_on_tiny_llama() {
    let d = device();
    let r = reference("nf4/tiny-qlora.safetensors");
    let input = ids(&r["input_ids"], &d);
    let m = nf4_tiny(&d);
    // bitsandbytes' CPU 8-bit quantizer picks a neighbour of the nearest code for a few absmax
    // values (7 of the 1,152 blocks here; see nf4_reference.rs), so those blocks' scales differ
    // by one 8-bit code step: the logits agree to 2e-3, while the f32 model's are 10× further.
    let logits = host(m.forward(input.clone(), None));
    let err = rel_err(&logits, &r["logits_nf4_base"].data);
    let f32_logits = host(
        load_hf_model(&fixtures().join("tiny-llama"), &d)
            .unwrap()
            .forward(input.clone(), None),
    );
    let f32_err = rel_err(&f32_logits, &r["logits_nf4_base"].data);
    eprintln!("NF4 base vs bitsandbytes: {err:.2e}; f32 base vs bitsandbytes NF4: {f32_err:.2e}");
    assert!(err < 2e-3, "NF4 base: {err}");
    assert!(f32_err > 10.0 * err, "the f32 model is as close: {f32_err}");

    // A PEFT adapter on the NF4 base (PEFT on bitsandbytes' Linear4bit computes the same).
    let (m, _, _) =
        peft::lora::load_adapter(m, &fixtures().join("tiny-llama/peft-adapter"), &d).unwrap();
    let logits = host(m.forward(input, None));
    let err = rel_err(&logits, &r["logits_nf4_adapter"].data);
    assert!(err < 2e-3, "NF4 base + adapter: {err}");
}

struct Losses(Vec<f64>);
impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
}

#[test]
fn qlora_training_lowers_the_loss_and_leaves_the_nf4_base_unchanged() {
    let d = device().autodiff();
    d.seed(7);
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 2,
        lr: 3e-3,
        warmup_steps: 2,
        save_every: 0,
        lora: LoraConfig::new(8, 16.0, TargetModules::AllLinear),
        ..TrainConfig::default()
    };
    let m = nf4_tiny(&d);
    let (m, _) = apply_lora(m, &cfg.lora, &d).unwrap();
    let before = base_values(&m);
    let examples: Vec<Encoded> = (0..4u32)
        .map(|i| Encoded {
            ids: vec![10 + i, 20 + i, 30 + i, 40 + i, 100 + 7 * i, 200 + 3 * i],
            prompt_len: 4,
            earlier_answers: Vec::new(),
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("burn-lora-qlora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ck = RunCheckpoint::new(&dir, AdapterConfig::Lora(cfg.lora.clone()), "tiny-llama");
    let mut obs = Losses(Vec::new());
    let mut no_eval = |_: &Llama| -> Result<EvalReport, TrainError> { Ok(EvalReport::default()) };
    let job = TrainLoop {
        data: &examples,
        pad_id: 0,
        config: &cfg,
        checkpoint: &ck,
        resume: None,
        allocator: None,
    };
    let (m, _) = train(m, job, &mut obs, &mut no_eval).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (first, last) = (obs.0[0], *obs.0.last().unwrap());
    assert!(last < 0.5 * first, "loss {first} → {last}");
    assert_eq!(
        base_values(&m),
        before,
        "the NF4 base changed during training"
    );
}

#[test]
fn merging_into_an_nf4_base_dequantizes_and_matches_the_unmerged_output() {
    let d = device();
    let m = nf4_tiny(&d);
    let (mut m, _, _) =
        peft::lora::load_adapter(m, &fixtures().join("tiny-llama/peft-adapter"), &d).unwrap();
    let r = reference("nf4/tiny-qlora.safetensors");
    let input = ids(&r["input_ids"], &d);
    let unmerged = host(m.forward(input.clone(), None));
    let quantized_before = base_values(&m);
    merge_all(&mut m).unwrap();
    // Every merged layer now holds a dense f32 W' = dequant(W) + ΔW: nothing was re-quantized.
    let mut dense = 0;
    m.visit_linears(&mut |_, lin| {
        if lin.adapter.is_some() {
            assert!(!lin.weight.is_quantized());
            dense += 1;
        }
    });
    assert_eq!(dense, 14);
    let merged = host(m.forward(input.clone(), None));
    assert!(rel_err(&merged, &unmerged) < 1e-5);
    // Unmerging leaves dequant(W) in f32 (within rounding of the subtraction).
    unmerge_all(&mut m).unwrap();
    let mut restored = Vec::new();
    m.visit_linears(&mut |p, lin| {
        if p != "lm_head" {
            restored.push(host(lin.weight.val()));
        }
    });
    for (a, b) in restored.iter().zip(&quantized_before) {
        assert!(rel_err(a, b) < 1e-5);
    }
}

// Re-quantization report of `merge --quant nf4 --requantize-report` (lora_core::quant).

#[test]
fn requantize_summary_measures_every_adapted_nf4_layer_and_changes_nothing() {
    let d = device();
    let mut m = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    let nf4 = Nf4Config::default();
    quantize_base(&mut m, &nf4, &["lm_head"]).unwrap();
    let (m, _, report) =
        peft::lora::load_adapter(m, &fixtures().join("tiny-llama/peft-adapter"), &d).unwrap();
    let s = requantize_summary(&m, &nf4);
    assert_eq!(s.layers.len(), report.modules.len(), "{:?}", s.skipped);
    assert!(s.skipped.is_empty());
    for (path, r) in &s.layers {
        assert!(
            r.relative_error.is_finite() && r.delta_norm > 0.0,
            "{path}: {r:?}"
        );
        assert!((0.0..=1.0).contains(&r.codes_changed), "{path}: {r:?}");
    }
    let mean = s.mean_survival().unwrap();
    let by_hand = s.layers.iter().map(|(_, r)| r.survival).sum::<f64>() / s.layers.len() as f64;
    assert_eq!(mean, by_hand);
    // Measuring left every base in NF4 and every adapter unmerged.
    m.visit_linears(&mut |p, lin| {
        if p != "lm_head" {
            assert!(lin.weight.is_quantized() && !lin.merged, "{p}");
        }
    });
}

#[test]
fn an_empty_summary_has_no_mean() {
    let s = RequantizeSummary {
        layers: Vec::new(),
        skipped: Vec::new(),
    };
    assert_eq!(s.mean_survival(), None);
    assert_eq!(s.mean_relative_error(), None);
}

/// The NF4 base product has its own backward step (`lora_core::quant::nf4_op`), which
/// dequantizes `W` again instead of keeping it. Its gradients must be the ones autodiff forms
/// from `x·W` with the dequantized `W` held as a constant (what the composed ops computed before
/// the custom backward): loss and every adapter gradient within 1e-6.
#[test]
fn nf4_backward_recomputing_w_gives_the_gradients_of_a_stored_dequantized_w() {
    let d = device().autodiff();
    let r = reference("nf4/tiny-qlora.safetensors");
    let input = ids(&r["input_ids"], &d);
    let (m, _, _) = peft::lora::load_adapter(
        nf4_tiny(&d),
        &fixtures().join("tiny-llama/peft-adapter"),
        &d,
    )
    .unwrap();
    // The same model with every NF4 base replaced by its dequantized f32 weight.
    let mut dense = m.clone();
    dense
        .visit_linears_mut(&mut |_, lin| {
            lin.weight = BaseWeight::dense(lin.weight.val());
            Ok(())
        })
        .unwrap();
    let grads_of = |m: &Llama| {
        let loss = lora_train::loss::causal_lm_loss(m.forward(input.clone(), None), input.clone());
        let value = host(loss.clone())[0];
        let grads = loss.backward();
        let mut out = Vec::new();
        m.visit_linears(&mut |_, lin| {
            if let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_lora()) {
                out.push(host(a.lora_a.val().grad(&grads).expect("lora_A grad")));
                out.push(host(a.lora_b.val().grad(&grads).expect("lora_B grad")));
            }
        });
        (value, out)
    };
    let (loss, grads) = grads_of(&m);
    let (loss_dense, grads_dense) = grads_of(&dense);
    assert!(
        (loss - loss_dense).abs() <= 1e-6 * loss_dense.abs(),
        "{loss} vs {loss_dense}"
    );
    assert_eq!(grads.len(), 28, "14 adapted layers × (A, B)");
    for (i, (g, e)) in grads.iter().zip(&grads_dense).enumerate() {
        let err = rel_err(g, e);
        assert!(err <= 1e-6, "gradient {i}: relative error {err}");
    }
}
