//! AdaLoRA on a whole model: attaching fresh SVD-form adapters ([`apply_adalora`]) and the
//! orthogonality regularizer over all of them ([`orth_regularizer`]).
//!
//! Source: PEFT `tuners/adalora/model.py` (`AdaLoraModel._create_and_replace`,
//! `AdaLoraModel.forward` for the regularizer).

use burn::tensor::{Device, Tensor};

use crate::adalora::adapter::AdaLoraAdapter;
use crate::adalora::config::AdaLoraConfig;
use crate::adapter::Adapter;
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel, attach_adapters};

/// Freezes every parameter of `model`, then gives each linear layer that `config` selects a fresh
/// [`AdaLoraAdapter`] of rank `init_r` (PEFT `get_peft_model` with an `AdaLoraConfig`).
///
/// # Errors
/// [`LoraError::InvalidConfig`] / [`LoraError::BadRegex`] for a bad config,
/// [`LoraError::TargetMatchesNothing`] when a target entry selects no layer.
pub fn apply_adalora<M: LoraModel>(
    model: M,
    config: &AdaLoraConfig,
    device: &Device,
) -> Result<(M, AdaptReport), LoraError> {
    config.validate_layers()?;
    attach_adapters(model, &config.targets(), &mut |s| {
        AdaLoraAdapter::init(s.d_in, s.d_out, config, device).map(Adapter::AdaLora)
    })
}

/// `‖M − I‖_F`, the Frobenius norm (not squared) of a square `[r, r]` matrix minus the identity.
fn distance_from_identity(m: Tensor<2>) -> Tensor<1> {
    let [r, _] = m.dims();
    let eye = Tensor::<2>::eye(r, &m.device());
    (m - eye).square().sum().sqrt()
}

/// The orthogonality regularizer `R(P, Q)` as PEFT's `AdaLoraModel.forward` computes it, without
/// its weight: for every `Q` (`[r, in]`) `‖Q·Qᵀ − I‖_F`, for every `P` (`[out, r]`)
/// `‖Pᵀ·P − I‖_F`, summed and divided by the number of `P` and `Q` matrices. `None` when no
/// layer carries an AdaLoRA adapter. It stays on the autodiff graph, so its gradient flows
/// into `P` and `Q`. (The paper, eq. 4, squares the norms; PEFT does not, and we follow PEFT.)
///
/// # Shapes
/// returns `[1]`
pub fn orth_regularizer<M: LoraModel>(model: &M) -> Option<Tensor<1>> {
    let mut terms = Vec::new();
    model.visit_adapters(&mut |_, adapter| {
        if let Adapter::AdaLora(a) = adapter {
            let q_t = a.lora_a.val(); // Qᵀ [d_in, r]
            let p_t = a.lora_b.val(); // Pᵀ [r, d_out]
            terms.push(distance_from_identity(q_t.clone().transpose().matmul(q_t))); // Q·Qᵀ
            terms.push(distance_from_identity(p_t.clone().matmul(p_t.transpose()))); // Pᵀ·P
        }
    });
    let n = terms.len();
    let sum = terms.into_iter().reduce(|a, b| a + b)?;
    Some(sum.div_scalar(n as f64))
}
