//! `--gradient-checkpointing` (each decoder layer keeps only its input and runs again in the
//! backward pass, `lora_core::recompute`, inside burn's balanced checkpointing) changes what is
//! stored, not what is computed: the same loss and the same adapter gradients as without it (up
//! to the order of f32 additions), on an f32 base and on an NF4 base (whose own backward step
//! dequantizes again), and the same losses over steps of training.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use burn::tensor::Device;
use common::*;
use lora_core::quant::{Nf4Config, quantize_base};
use lora_core::{AdapterConfig, LoraConfig, LoraModel, TargetModules, apply_lora, peft};
use lora_models::Llama;
use lora_models::pretrained::load_hf_model;
use lora_train::TrainError;
use lora_train::checkpoint::RunCheckpoint;
use lora_train::config::TrainConfig;
use lora_train::data::Encoded;
use lora_train::eval::EvalReport;
use lora_train::loss::causal_lm_loss;
use lora_train::trainer::{Observer, StepMetrics, TrainLoop, train};

/// burn's random generator is process-wide, and a checkpointed layer re-seeds it (for its
/// dropout masks): the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tiny Llama with the PEFT fixture adapter (non-zero `B`), on `device`, optionally NF4.
fn adapted(device: &Device, nf4: bool) -> Llama {
    let mut m = load_hf_model(&fixtures().join("tiny-llama"), device).unwrap();
    if nf4 {
        quantize_base(&mut m, &Nf4Config::default(), &["lm_head"]).unwrap();
    }
    let dir = fixtures().join("tiny-llama/peft-adapter");
    peft::lora::load_adapter(m, &dir, device).unwrap().0
}

/// The loss and every adapter gradient (`lora_A`, `lora_B` of each layer, in model order).
fn loss_and_grads(m: &Llama) -> (f32, Vec<Vec<f32>>) {
    let r = reference("tiny-llama/peft-reference.safetensors");
    let d = m.device();
    let logits = m.forward(ids(&r["input_ids"], &d), None);
    let loss = causal_lm_loss(logits, ids(&r["labels"], &d));
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
}

#[test]
fn checkpointing_keeps_the_loss_and_every_adapter_gradient() {
    let _turn = serial();
    for nf4 in [false, true] {
        let plain = loss_and_grads(&adapted(&device().autodiff(), nf4));
        let ckpt = device().autodiff().gradient_checkpointing();
        let recomputed = loss_and_grads(&adapted(&ckpt, nf4));
        assert_eq!(plain.1.len(), 28, "14 adapted layers × (A, B)");
        assert!(
            (plain.0 - recomputed.0).abs() <= 1e-6 * plain.0.abs(),
            "nf4 {nf4}: loss {} vs {}",
            plain.0,
            recomputed.0
        );
        // The recomputed layers hand their gradients over at layer boundaries, so the residual
        // stream's contributions are added in another order: equal up to f32 rounding.
        let mut worst = 0f32;
        for (i, (a, b)) in plain.1.iter().zip(&recomputed.1).enumerate() {
            let err = rel_err(b, a);
            worst = worst.max(err);
            assert!(err <= 1e-5, "nf4 {nf4}: gradient {i}: {err}");
        }
        eprintln!("nf4 {nf4}: largest relative gradient difference {worst:.1e}");
    }
}

struct Losses(Vec<f64>);
impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
}

/// Five AdamW steps from the same adapters on the two devices.
fn train_losses(device: &Device, dir: &std::path::Path) -> Vec<f64> {
    let cfg = TrainConfig {
        steps: 5,
        batch_size: 2,
        lr: 3e-3,
        warmup_steps: 1,
        save_every: 0,
        lora: LoraConfig::new(8, 16.0, TargetModules::AllLinear),
        ..TrainConfig::default()
    };
    device.seed(cfg.seed);
    let m = load_hf_model(&fixtures().join("tiny-llama"), device).unwrap();
    let (m, _) = apply_lora(m, &cfg.lora, device).unwrap();
    let examples: Vec<Encoded> = (0..4u32)
        .map(|i| Encoded {
            ids: vec![10 + i, 20 + i, 30 + i, 40 + i, 100 + 7 * i, 200 + 3 * i],
            prompt_len: 4,
            earlier_answers: Vec::new(),
        })
        .collect();
    let ck = RunCheckpoint::new(dir, AdapterConfig::Lora(cfg.lora.clone()), "tiny-llama");
    let job = TrainLoop {
        data: &examples,
        pad_id: 0,
        config: &cfg,
        checkpoint: &ck,
        resume: None,
        allocator: None,
    };
    let mut obs = Losses(Vec::new());
    let mut no_eval = |_: &Llama| -> Result<EvalReport, TrainError> { Ok(EvalReport::default()) };
    train(m, job, &mut obs, &mut no_eval).unwrap();
    obs.0
}

#[test]
fn training_with_checkpointing_gives_the_same_losses() {
    let _turn = serial();
    let dir = std::env::temp_dir().join(format!("burn-lora-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let plain = train_losses(&device().autodiff(), &dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recomputed = train_losses(&device().autodiff().gradient_checkpointing(), &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(plain.len(), 5);
    for (step, (a, b)) in plain.iter().zip(&recomputed).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "step {}: {a} vs {b}",
            step + 1
        );
    }
}
