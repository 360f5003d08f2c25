//! [`LoraAdapter`]: LoRA's trainable low-rank update of one linear layer, `ΔW = scaling · A·B`.
//!
//! ```text
//! lora(x) = scaling · (dropout(x)·A)·B        scaling = lora_alpha / r   (or / √r, rsLoRA)
//! ```
//!
//! Source: Hu et al. 2021 (arXiv:2106.09685) §4.1; PEFT `tuners/lora/layer.py`
//! (`update_layer`, `reset_lora_parameters`, `Linear.forward`, `get_delta_weight`). The path
//! runs on the activations — `x·A` then `·B`, `O(T·r·(d_in + d_out))` — and never builds a
//! dense `d_in × d_out` update while training; [`LoraAdapter::delta_weight`] does, for merging.
//!
//! # Shapes (burn layout, the transpose of PyTorch's)
//! - `A` (`lora_a`): `[d_in, r]`; `B` (`lora_b`): `[r, d_out]`
//! - input `x`: `[..., d_in]` → output `[..., d_out]`

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Tensor};

use crate::config::{InitLoraWeights, LoraConfig};
use crate::error::LoraError;

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
            // Trainable parameters must be leaves of the autodiff graph (a combined adapter's
            // factors come out of tensor ops; burn panics on a non-leaf).
            lora_a: Param::from_tensor(lora_a.detach()),
            lora_b: Param::from_tensor(lora_b.detach()),
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
        self.low_rank(self.dropout.forward(x))
    }

    /// The low-rank path without the dropout: `scaling · (x·A)·B`. DoRA applies the dropout
    /// itself, because its base term must see the same dropped input ([`crate::dora`]).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn low_rank<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let down = linear(x, self.lora_a.val(), None); // [..., r]
        let up = linear(down, self.lora_b.val(), None); // [..., d_out]
        up.mul_scalar(self.scaling)
    }

    /// Whether the dropout on the input changes anything now: a probability above 0, the
    /// training flag on and an autodiff device (burn's `Dropout::forward` rule).
    pub fn dropout_active<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.dropout.prob > 0.0 && self.dropout.training.is_enabled() && x.device().is_autodiff()
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
