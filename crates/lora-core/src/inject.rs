//! Attaching adapters to a whole model, by module path.
//!
//! A model opts in by implementing [`LoraModel`]: it lists its [`LoraLinear`] layers with their
//! module paths (Hugging Face names such as `model.layers.0.self_attn.q_proj`, the keys PEFT
//! writes). [`apply_lora`] then freezes the model, picks the layers a [`LoraConfig`] selects and
//! gives each a fresh adapter — the PEFT flow of `get_peft_model`. [`attach_adapters`] is the
//! same walk for any kind of [`Adapter`] (AdaLoRA's [`apply_adalora`](crate::adalora::apply_adalora)
//! uses it); merging and unmerging a whole model are here too.

use burn::module::Module;
use burn::tensor::Device;

use crate::adapter::Adapter;
use crate::base_weight::BaseWeight;
use crate::config::LoraConfig;
use crate::dora::DoraAdapter;
use crate::error::LoraError;
use crate::linear::LoraLinear;
use crate::lora::LoraAdapter;
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

    /// Calls `f` on every adapter with its module path, in layer order.
    fn visit_adapters(&self, f: &mut dyn FnMut(&str, &Adapter)) {
        self.visit_linears(&mut |path, lin| {
            if let Some(a) = &lin.adapter {
                f(path, a);
            }
        });
    }

    /// Calls `f` on every adapter (mutably) with its module path, in layer order.
    ///
    /// # Errors
    /// Whatever `f` returns.
    fn visit_adapters_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Adapter) -> Result<(), LoraError>,
    ) -> Result<(), LoraError> {
        self.visit_linears_mut(&mut |path, lin| match lin.adapter.as_mut() {
            Some(a) => f(path, a),
            None => Ok(()),
        })
    }
}

/// One adapted layer in an [`AdaptReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptedModule {
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// Input width of the layer.
    pub d_in: usize,
    /// Output width of the layer.
    pub d_out: usize,
    /// Rank the adapter holds.
    pub r: usize,
    /// The adapter's scaling factor.
    pub scaling: f64,
}

/// What [`apply_lora`] (or loading an adapter) did.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptReport {
    /// The adapted layers, in model order.
    pub modules: Vec<AdaptedModule>,
    /// Trainable values: `Σ r · (d_in + d_out)` over adapted layers (`+ r` per AdaLoRA layer).
    pub trainable_params: usize,
}

impl AdaptReport {
    /// Collects the adapted layers of `model`.
    pub fn of<M: LoraModel>(model: &M) -> Self {
        let mut modules = Vec::new();
        let mut trainable_params = 0;
        model.visit_adapters(&mut |path, a| {
            let (d_in, d_out) = a.dims();
            trainable_params += a.num_trainable();
            modules.push(AdaptedModule {
                path: path.to_string(),
                d_in,
                d_out,
                r: a.rank(),
                scaling: a.scaling(),
            });
        });
        AdaptReport {
            modules,
            trainable_params,
        }
    }
}

/// Where [`attach_adapters`] puts an adapter: the layer's path, shape and frozen weight, and
/// the rank and `lora_alpha` the config gives it (after `rank_pattern` / `alpha_pattern`).
#[derive(Clone, Copy, Debug)]
pub struct Slot<'a> {
    /// Module path.
    pub path: &'a str,
    /// The layer's frozen `W` (DoRA's magnitude starts at its norm).
    pub weight: &'a BaseWeight,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Rank for this layer.
    pub r: usize,
    /// `lora_alpha` for this layer.
    pub lora_alpha: f64,
}

/// The most values all of a model's adapters may hold together: 2^32 (16 GiB in f32, before
/// gradients and optimizer moments), far above any real LoRA (SmolLM2 at r = 8 on q/k/v/o:
/// 1.1 M).
pub const MAX_ADAPTER_VALUES: usize = 1 << 32;

/// Refuses a rank that would make the adapters larger than [`MAX_ADAPTER_VALUES`], before any is
/// allocated: each adapter holds `r · (d_in + d_out)` values (`A` is `r × d_in`, `B` is
/// `d_out × r`), summed with overflow-checked arithmetic.
fn check_adapter_size<M: LoraModel>(model: &M, matcher: &TargetMatcher) -> Result<(), LoraError> {
    let mut total: Option<usize> = Some(0);
    let mut largest_r = 0;
    model.visit_linears(&mut |path, lin| {
        if matcher.matches(path) {
            let (r, _) = matcher.rank_and_alpha(path);
            let (d_in, d_out) = lin.dims();
            largest_r = largest_r.max(r);
            total = total.and_then(|t| d_in.checked_add(d_out)?.checked_mul(r)?.checked_add(t));
        }
    });
    match total {
        Some(n) if n <= MAX_ADAPTER_VALUES => Ok(()),
        _ => Err(LoraError::InvalidConfig(format!(
            "r = {largest_r} makes the adapters hold {} values, over the limit of {MAX_ADAPTER_VALUES}; lower r or target fewer modules",
            total.map_or("more than usize::MAX".to_string(), |n| n.to_string())
        ))),
    }
}

/// Freezes every parameter of `model`, then attaches `make(slot)` to each linear layer that
/// `targets` selects: the walk behind [`apply_lora`] and AdaLoRA's `apply_adalora`.
///
/// # Errors
/// [`LoraError::InvalidConfig`] / [`LoraError::BadRegex`] for a bad config or adapters over
/// [`MAX_ADAPTER_VALUES`], [`LoraError::TargetMatchesNothing`] when a target entry selects no
/// layer, and whatever `make` returns.
pub fn attach_adapters<M: LoraModel>(
    model: M,
    targets: &LoraConfig,
    make: &mut dyn FnMut(Slot<'_>) -> Result<Adapter, LoraError>,
) -> Result<(M, AdaptReport), LoraError> {
    let matcher = TargetMatcher::new(targets)?;
    matcher.check_all_used(&model.linear_paths())?;
    check_adapter_size(&model, &matcher)?;
    // Freeze first: the adapters created below are the only trainable parameters.
    let mut model = model.no_grad();
    model.visit_linears_mut(&mut |path, lin| {
        if matcher.matches(path) {
            let (r, lora_alpha) = matcher.rank_and_alpha(path);
            let (d_in, d_out) = lin.dims();
            let slot = Slot {
                path,
                weight: &lin.weight,
                d_in,
                d_out,
                r,
                lora_alpha,
            };
            let adapter = make(slot)?;
            lin.attach(adapter, path)?;
        }
        Ok(())
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, report))
}

/// Freezes every parameter of `model`, then attaches a new LoRA adapter to each linear layer
/// that `config` selects (PEFT `get_peft_model`) — a DoRA adapter when `config.use_dora`, its
/// magnitude starting at `‖W + s·A·B‖`. Returns the model and what was adapted.
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
    attach_adapters(model, config, &mut |s| {
        let lora = LoraAdapter::init(s.d_in, s.d_out, s.r, s.lora_alpha, config, device)?;
        Ok(if config.use_dora {
            Adapter::Dora(DoraAdapter::init(lora, &s.weight.val()))
        } else {
            Adapter::Lora(lora)
        })
    })
}

/// Applies `op` to every layer that carries an adapter; returns how many there were.
fn for_each_adapted<M: LoraModel>(
    model: &mut M,
    op: fn(&mut LoraLinear, &str) -> Result<(), LoraError>,
) -> Result<usize, LoraError> {
    let mut n = 0;
    model.visit_linears_mut(&mut |path, lin| {
        if lin.adapter.is_some() {
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
