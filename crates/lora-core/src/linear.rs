//! [`LoraLinear`]: a frozen linear layer with an optional low-rank adapter on its input path.
//!
//! ```text
//! y = x·W + b + scaling · (dropout(x)·A)·B        scaling = lora_alpha / r   (or / √r, rsLoRA)
//! ```
//!
//! Source: Hu et al. 2021 (arXiv:2106.09685) §4.1; PEFT `tuners/lora/layer.py` (`Linear.forward`,
//! `merge`, `unmerge`, `get_delta_weight`). The low-rank path runs on the activations — `x·A`
//! then `·B`, `O(T·r·(d_in + d_out))` — and never rebuilds a dense `W + ΔW` while training.
//!
//! # Shapes (burn layout, the transpose of PyTorch's)
//! - `W` (`weight`): `[d_in, d_out]`, frozen; `b` (`bias`): `[d_out]`, frozen
//! - `A` (`lora_a`): `[d_in, r]`; `B` (`lora_b`): `[r, d_out]`
//! - input `x`: `[..., d_in]` → output `[..., d_out]`

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Tensor};

use crate::adalora::AdaLoraAdapter;
use crate::base_weight::BaseWeight;
use crate::config::{InitLoraWeights, LoraConfig};
use crate::error::LoraError;
use crate::quant::Nf4Config;

/// The trainable low-rank update of one linear layer: `ΔW = scaling · A·B`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `lora_A`, `[d_in, r]`: projects the input down to rank `r`.
    pub lora_a: Param<Tensor<2>>,
    /// `lora_B`, `[r, d_out]`: projects back up; zero at initialisation, so the adapter starts
    /// as a no-op.
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the LoRA path's input only (PEFT's `lora_dropout`); inactive outside training.
    pub dropout: Dropout,
    /// Rank `r`.
    #[module(skip)]
    pub r: usize,
    /// `lora_alpha` for this layer (after `alpha_pattern`).
    #[module(skip)]
    pub lora_alpha: f64,
    /// `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    #[module(skip)]
    pub scaling: f64,
}

impl LoraAdapter {
    /// Creates an adapter for a `[d_in, d_out]` layer, initialised as `config.init_lora_weights`
    /// says (PEFT `reset_lora_parameters`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for `r = 0` or a dropout outside `[0, 1)`.
    pub fn init(
        d_in: usize,
        d_out: usize,
        r: usize,
        lora_alpha: f64,
        config: &LoraConfig,
        device: &Device,
    ) -> Result<Self, LoraError> {
        if r == 0 {
            return Err(LoraError::InvalidConfig("r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&config.lora_dropout) {
            return Err(LoraError::InvalidConfig(format!(
                "lora_dropout must be in [0, 1), got {}",
                config.lora_dropout
            )));
        }
        // kaiming_uniform_(a = √5) on PyTorch's [r, d_in] weight: fan_in = d_in,
        // gain = √(2 / (1 + 5)), bound = gain · √(3 / fan_in) = 1 / √d_in.
        let kaiming =
            Distribution::Uniform(-1.0 / (d_in as f64).sqrt(), 1.0 / (d_in as f64).sqrt());
        let a_dist = match config.init_lora_weights {
            InitLoraWeights::Default | InitLoraWeights::Random => kaiming,
            InitLoraWeights::Gaussian => Distribution::Normal(0.0, 1.0 / r as f64),
        };
        let lora_a = Tensor::<2>::random([d_in, r], a_dist, device);
        let lora_b = match config.init_lora_weights {
            InitLoraWeights::Random => Tensor::<2>::random(
                [r, d_out],
                Distribution::Uniform(-1.0 / (r as f64).sqrt(), 1.0 / (r as f64).sqrt()),
                device,
            ),
            _ => Tensor::<2>::zeros([r, d_out], device),
        };
        Ok(Self::from_tensors(lora_a, lora_b, lora_alpha, config))
    }

    /// Wraps given factors (`lora_a` `[d_in, r]`, `lora_b` `[r, d_out]`) as a trainable adapter
    /// with the scaling `config` gives for rank `r` and `lora_alpha`.
    pub fn from_tensors(
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        lora_alpha: f64,
        config: &LoraConfig,
    ) -> Self {
        let r = lora_a.dims()[1];
        LoraAdapter {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            r,
            lora_alpha,
            scaling: config.scaling(r, lora_alpha),
        }
    }

    /// The low-rank path: `scaling · (dropout(x)·A)·B`.
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = self.dropout.forward(x);
        let down = linear(x, self.lora_a.val(), None); // [..., r]
        let up = linear(down, self.lora_b.val(), None); // [..., d_out]
        up.mul_scalar(self.scaling)
    }

    /// The dense update `ΔW = scaling · A·B`, `[d_in, d_out]`, detached from the autodiff graph.
    /// No dropout: merging never depends on the training mode.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a
            .val()
            .detach()
            .matmul(self.lora_b.val().detach())
            .mul_scalar(self.scaling)
    }

    /// Number of trainable values, `r · (d_in + d_out)`.
    pub fn num_trainable(&self) -> usize {
        let [d_in, r] = self.lora_a.shape().dims();
        let [_, d_out] = self.lora_b.shape().dims();
        r * (d_in + d_out)
    }
}

/// A linear layer whose frozen base `y = x·W + b` may carry a [`LoraAdapter`].
///
/// Every linear layer of the models in this workspace is a `LoraLinear`; without an adapter it
/// is an ordinary (frozen) linear layer.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight `W`, `[d_in, d_out]`, frozen: dense, or NF4 (QLoRA) dequantized in forward.
    pub weight: BaseWeight,
    /// Base bias `b`, `[d_out]`, frozen.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, if this layer is a LoRA target.
    pub adapter: Option<LoraAdapter>,
    /// The AdaLoRA adapter (SVD form, `crate::adalora`), if this layer is an AdaLoRA target.
    pub adalora: Option<AdaLoraAdapter>,
    /// Whether `scaling · A·B` has been folded into `weight` (forward then skips the LoRA path).
    #[module(skip)]
    pub merged: bool,
}

impl LoraLinear {
    /// A frozen linear layer from a `[d_in, d_out]` weight and an optional `[d_out]` bias.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        LoraLinear {
            weight: BaseWeight::dense(weight),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapter: None,
            adalora: None,
            merged: false,
        }
    }

    /// `(d_in, d_out)` of the base weight.
    pub fn dims(&self) -> (usize, usize) {
        let [d_in, d_out] = self.weight.shape().dims();
        (d_in, d_out)
    }

    /// Stores the base weight in NF4 (QLoRA): it is dequantized in every forward and never
    /// trained. The adapter, if any, is untouched.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if an adapter is merged into `W` (quantizing would bake a
    /// rounded ΔW into the base), [`LoraError::InvalidConfig`] for a bad block size.
    pub fn quantize_nf4(&mut self, config: &Nf4Config, path: &str) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::MergeState {
                path: path.into(),
                what: "is merged; unmerge before quantizing the base to NF4".into(),
            });
        }
        self.weight = self.weight.clone().quantize(config)?;
        Ok(())
    }

    /// `y = x·W + b + scaling · (dropout(x)·A)·B`; the base output is never scaled, and a merged
    /// layer does not add the update a second time.
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = linear(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        let out = match &self.adapter {
            Some(adapter) if !self.merged => base + adapter.forward(x.clone()),
            _ => base,
        };
        match &self.adalora {
            Some(adalora) if !self.merged => out + adalora.forward(x),
            _ => out,
        }
    }

    /// Attaches `adapter`, replacing any previous one (the layer must not be merged).
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if the layer is merged, [`LoraError::InvalidConfig`] if the
    /// adapter's shapes do not fit the base weight.
    pub fn attach(&mut self, adapter: LoraAdapter, path: &str) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::MergeState {
                path: path.into(),
                what: "cannot attach an adapter to a merged layer; unmerge first".into(),
            });
        }
        let (d_in, d_out) = self.dims();
        let [a_in, _] = adapter.lora_a.shape().dims();
        let [_, b_out] = adapter.lora_b.shape().dims();
        if (a_in, b_out) != (d_in, d_out) {
            return Err(LoraError::InvalidConfig(format!(
                "{path}: adapter is for a [{a_in}, {b_out}] layer, the base weight is [{d_in}, {d_out}]"
            )));
        }
        self.adapter = Some(adapter);
        Ok(())
    }

    /// Folds the update into the base weight: `W ← W + scaling · A·B`. Forward then skips the
    /// LoRA path, so inference costs exactly the base layer's.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if there is no adapter or the layer is already merged.
    pub fn merge(&mut self, path: &str) -> Result<(), LoraError> {
        let delta = self.delta_for(path, false)?;
        // An NF4 base is dequantized and stays dense: re-quantizing would round ΔW away.
        self.weight = self.weight.clone().map(|w| w + delta);
        self.merged = true;
        Ok(())
    }

    /// Undoes [`merge`](Self::merge): `W ← W − scaling · A·B`.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if there is no adapter or the layer is not merged.
    pub fn unmerge(&mut self, path: &str) -> Result<(), LoraError> {
        let delta = self.delta_for(path, true)?;
        self.weight = self.weight.clone().map(|w| w - delta);
        self.merged = false;
        Ok(())
    }

    /// Merges (if not yet merged) and drops the adapter: a plain frozen linear layer is left.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if there is no adapter.
    pub fn merge_and_unload(&mut self, path: &str) -> Result<(), LoraError> {
        if !self.merged {
            self.merge(path)?;
        }
        self.adapter = None;
        self.adalora = None;
        self.merged = false;
        Ok(())
    }

    fn delta_for(&self, path: &str, want_merged: bool) -> Result<Tensor<2>, LoraError> {
        let delta = match (&self.adapter, &self.adalora) {
            (Some(adapter), _) => adapter.delta_weight(),
            (None, Some(adalora)) => adalora.delta_weight(),
            (None, None) => {
                return Err(LoraError::MergeState {
                    path: path.into(),
                    what: "has no LoRA adapter".into(),
                });
            }
        };
        if self.merged != want_merged {
            let what = if want_merged {
                "is not merged"
            } else {
                "is already merged"
            };
            return Err(LoraError::MergeState {
                path: path.into(),
                what: what.into(),
            });
        }
        Ok(delta)
    }
}
