//! AdaLoRA's adapter and its orthogonality regularizer against hand-computed values (PEFT
//! `SVDLinear.forward` / `get_delta_weight`, and `AdaLoraModel.forward`: `‖Q·Qᵀ − I‖_F` and
//! `‖Pᵀ·P − I‖_F`, averaged).

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use lora_core::adalora::{AdaLoraAdapter, AdaLoraConfig, orth_regularizer};
use lora_core::{BackendKind, LoraError, LoraLinear, LoraModel, select_device};

fn device() -> Device {
    select_device(BackendKind::Flex).expect("flex")
}

fn t2(rows: usize, cols: usize, v: &[f32], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), d)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A 2→3 layer with r = 2: Q = [[1, 2], [0, 1]] ([r, in]), λ = [3, 0], P = [[1, 0], [0, 1],
/// [2, 1]] ([out, r]), alpha = 2, init_r = 2: scaling = 2 / 2.00001.
fn tiny_adapter(d: &Device) -> AdaLoraAdapter {
    let cfg = AdaLoraConfig {
        init_r: 2,
        lora_alpha: 2.0,
        ..Default::default()
    };
    AdaLoraAdapter::from_tensors(
        t2(2, 2, &[1.0, 0.0, 2.0, 1.0], d), // Qᵀ
        t2(1, 2, &[3.0, 0.0], d),
        t2(2, 3, &[1.0, 0.0, 2.0, 0.0, 1.0, 1.0], d), // Pᵀ
        &cfg,
    )
}

#[test]
fn forward_is_p_lambda_q_times_alpha_over_init_r() {
    let d = device();
    let a = tiny_adapter(&d);
    // x = [1, 1]: Q·x = [3, 1]; λ ⊙ = [9, 0]; P· = [9, 0, 18]; × 2 / 2.00001.
    let y = host(a.forward(t2(1, 2, &[1.0, 1.0], &d)));
    let s = 2.0 / 2.00001f32;
    for (got, want) in y.iter().zip([9.0 * s, 0.0, 18.0 * s]) {
        assert!((got - want).abs() < 1e-5, "{y:?}");
    }
    // ΔW (burn layout [in, out]) = scaling · (P·diag(λ)·Q)ᵀ: row j = input j.
    let dw = host(a.delta_weight());
    let want = [3.0 * s, 0.0, 6.0 * s, 6.0 * s, 0.0, 12.0 * s];
    for (got, want) in dw.iter().zip(want) {
        assert!((got - want).abs() < 1e-5, "{dw:?}");
    }
    assert_eq!(a.active_rank(), 1, "λ₂ = 0 is a pruned triplet");
    assert_eq!(a.num_trainable(), 2 * (2 + 3 + 1));
}

#[test]
fn orth_regularizer_matches_a_hand_computed_value() {
    let d = device();
    let mut lin = LoraLinear::new(Tensor::zeros([2, 3], &d), None);
    lin.attach(tiny_adapter(&d), "l").unwrap();
    // Q·Qᵀ = [[5, 2], [2, 1]] − I = [[4, 2], [2, 0]] → √24.
    // Pᵀ·P = [[5, 2], [2, 2]] − I = [[4, 2], [2, 1]] → √25 = 5.
    let want = (24f32.sqrt() + 5.0) / 2.0;
    let got = host(orth_regularizer(&OneLayer { l: lin }).unwrap())[0];
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn orth_regularizer_is_zero_for_orthonormal_p_and_q() {
    let d = device();
    let (c, s) = (0.6f32, 0.8f32); // a rotation: orthonormal rows and columns
    let cfg = AdaLoraConfig {
        init_r: 2,
        ..Default::default()
    };
    let adapter = AdaLoraAdapter::from_tensors(
        t2(3, 2, &[c, -s, s, c, 0.0, 0.0], &d), // Qᵀ: Q has orthonormal rows
        t2(1, 2, &[1.0, 1.0], &d),
        t2(2, 2, &[0.0, 1.0, 1.0, 0.0], &d), // Pᵀ: a permutation
        &cfg,
    );
    let mut lin = LoraLinear::new(Tensor::zeros([3, 2], &d), None);
    lin.attach(adapter, "l").unwrap();
    let got = host(orth_regularizer(&OneLayer { l: lin }).unwrap())[0];
    assert!(got.abs() < 1e-6, "{got}");
}

/// A one-layer "model" for the regularizer tests.
#[derive(Module, Debug)]
struct OneLayer {
    l: LoraLinear,
}

impl LoraModel for OneLayer {
    fn visit_linears_mut(&mut self, f: &mut lora_core::LinearVisitor<'_>) -> Result<(), LoraError> {
        f("l", &mut self.l)
    }
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        f("l", &self.l)
    }
}
