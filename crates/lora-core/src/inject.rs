//! Attaching adapters to a whole model, by module path.
//!
//! A model opts in by implementing [`LoraModel`]: it lists its [`LoraLinear`] layers with their
//! module paths (Hugging Face names such as `model.layers.0.self_attn.q_proj`, the keys PEFT
//! writes). [`apply_lora`] then freezes the model, picks the layers a [`LoraConfig`] selects and
//! gives each a fresh adapter — the PEFT flow of `get_peft_model`.

use burn::module::Module;
use burn::tensor::Device;

use crate::config::LoraConfig;
use crate::error::LoraError;
use crate::linear::{LoraAdapter, LoraLinear};
use crate::targets::TargetMatcher;

/// A callback over `(module path, layer)` pairs; it may fail, which stops the walk.
pub type LinearVisitor<'a> = dyn FnMut(&str, &mut LoraLinear) -> Result<(), LoraError> + 'a;

/// A model whose linear layers are [`LoraLinear`]s, addressable by module path.
pub trait LoraModel: Module + Sized {
    /// Calls `f` on every linear layer, in a fixed order, with its module path.
    ///
    /// # Errors
    /// Whatever `f` returns.
    fn visit_linears_mut(&mut self, f: &mut LinearVisitor<'_>) -> Result<(), LoraError>;

    /// Calls `f` on every linear layer (read-only), in the same order.
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear));

    /// Module paths of all linear layers.
    fn linear_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        self.visit_linears(&mut |p, _| paths.push(p.to_string()));
        paths
    }
}

/// What [`apply_lora`] (or loading an adapter) did.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptReport {
    /// Adapted module paths with their `(d_in, d_out, r, scaling)`.
    pub modules: Vec<(String, usize, usize, usize, f64)>,
    /// Trainable values: `Σ r · (d_in + d_out)` over adapted layers.
    pub trainable_params: usize,
}

impl AdaptReport {
    /// Collects the adapted layers of `model`.
    pub fn of<M: LoraModel>(model: &M) -> Self {
        let mut modules = Vec::new();
        let mut trainable_params = 0;
        model.visit_linears(&mut |path, lin| {
            if let Some(a) = &lin.adapter {
                let (d_in, d_out) = lin.dims();
                trainable_params += a.num_trainable();
                modules.push((path.to_string(), d_in, d_out, a.r, a.scaling));
            }
            if let Some(a) = &lin.adalora {
                let (d_in, d_out) = lin.dims();
                trainable_params += a.num_trainable();
                modules.push((path.to_string(), d_in, d_out, a.r, a.scaling));
            }
        });
        AdaptReport {
            modules,
            trainable_params,
        }
    }
}

/// Freezes every parameter of `model`, then attaches a new adapter to each linear layer that
/// `config` selects (PEFT `get_peft_model`). Returns the model and what was adapted.
///
/// # Errors
/// [`LoraError::InvalidConfig`] / [`LoraError::BadRegex`] for a bad config,
/// [`LoraError::TargetMatchesNothing`] when a target entry selects no layer.
pub fn apply_lora<M: LoraModel>(
    model: M,
    config: &LoraConfig,
    device: &Device,
) -> Result<(M, AdaptReport), LoraError> {
    config.validate()?;
    let matcher = TargetMatcher::new(config)?;
    matcher.check_all_used(&model.linear_paths())?;
    // Freeze first: the adapters created below are the only trainable parameters.
    let mut model = model.no_grad();
    model.visit_linears_mut(&mut |path, lin| {
        if matcher.matches(path) {
            let (r, alpha) = matcher.rank_and_alpha(path);
            let (d_in, d_out) = lin.dims();
            lin.attach(
                LoraAdapter::init(d_in, d_out, r, alpha, config, device)?,
                path,
            )?;
        }
        Ok(())
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, report))
}

/// Applies `op` to every layer that carries an adapter; returns how many there were.
fn for_each_adapted<M: LoraModel>(
    model: &mut M,
    op: fn(&mut LoraLinear, &str) -> Result<(), LoraError>,
) -> Result<usize, LoraError> {
    let mut n = 0;
    model.visit_linears_mut(&mut |path, lin| {
        if lin.adapter.is_some() || lin.adalora.is_some() {
            op(lin, path)?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Merges every adapter into its base weight (see [`LoraLinear::merge`]). Returns how many
/// layers were merged.
///
/// # Errors
/// [`LoraError::MergeState`] if some adapted layer is already merged.
pub fn merge_all<M: LoraModel>(model: &mut M) -> Result<usize, LoraError> {
    for_each_adapted(model, LoraLinear::merge)
}

/// Unmerges every adapter (see [`LoraLinear::unmerge`]).
///
/// # Errors
/// [`LoraError::MergeState`] if some adapted layer is not merged.
pub fn unmerge_all<M: LoraModel>(model: &mut M) -> Result<usize, LoraError> {
    for_each_adapted(model, LoraLinear::unmerge)
}

/// Merges every adapter and removes it: the result is a plain model with no LoRA left (PEFT
/// `merge_and_unload`). Returns how many layers were merged.
///
/// # Errors
/// Never fails for a consistent model; errors of [`LoraLinear::merge_and_unload`] pass through.
pub fn merge_and_unload<M: LoraModel>(model: &mut M) -> Result<usize, LoraError> {
    for_each_adapted(model, LoraLinear::merge_and_unload)
}
