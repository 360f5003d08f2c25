//! [`LoraLinear`]: a frozen linear layer with an optional low-rank adapter on its input path.
//!
//! ```text
//! y = x·W + b + scaling · (dropout(x)·A)·B        scaling = lora_alpha / r   (or / √r, rsLoRA)
//! ```
//!
//! Source: Hu et al. 2021 (arXiv:2106.09685) §4.1; PEFT `tuners/lora/layer.py` (`Linear.forward`,
//! `merge`, `unmerge`, `get_delta_weight`). The base output is never scaled; the adapter's term
//! (`scaling · (dropout(x)·A)·B`, [`crate::lora::LoraAdapter::forward`]) runs on the activations
//! — `x·A` then `·B`, `O(T·r·(d_in + d_out))` — and never rebuilds a dense `W + ΔW` while
//! training. Which update a layer carries (LoRA, AdaLoRA, DoRA) is the [`Adapter`] enum's
//! business; the layer hands every adapter its `W` and `x·W`, which only DoRA reads.
//!
//! # Shapes (burn layout, the transpose of PyTorch's)
//! - `W` (`weight`): `[d_in, d_out]`, frozen; `b` (`bias`): `[d_out]`, frozen
//! - `A` (`lora_a`): `[d_in, r]`; `B` (`lora_b`): `[r, d_out]`
//! - input `x`: `[..., d_in]` → output `[..., d_out]`

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

use crate::adapter::Adapter;
use crate::base_dtype::BaseDtype;
use crate::base_weight::BaseWeight;
use crate::error::LoraError;
use crate::quant::{Nf4Config, RequantizeReport, requantize_report_weight};

/// A linear layer whose frozen base `y = x·W + b` may carry an [`Adapter`].
///
/// Every linear layer of the models in this workspace is a `LoraLinear`; without an adapter it
/// is an ordinary (frozen) linear layer.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight `W`, `[d_in, d_out]`, frozen: dense, or NF4 (QLoRA) dequantized in forward.
    pub weight: BaseWeight,
    /// Base bias `b`, `[d_out]`, frozen.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter (LoRA or AdaLoRA), if this layer is a target.
    pub adapter: Option<Adapter>,
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
            merged: false,
        }
    }

    /// A frozen linear layer from a base weight already in its storage form (dense in any
    /// float type, or NF4) and an optional `[d_out]` bias.
    pub fn from_base(weight: BaseWeight, bias: Option<Tensor<1>>) -> Self {
        LoraLinear {
            weight,
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapter: None,
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

    /// Stores the base weight in `dtype` (`--base-dtype`); the adapter stays f32.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if an adapter is merged into `W` (casting would round `ΔW`).
    pub fn cast_base(&mut self, dtype: BaseDtype, path: &str) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::MergeState {
                path: path.into(),
                what: "is merged; unmerge before changing the base dtype".into(),
            });
        }
        self.weight = self.weight.clone().cast(dtype);
        Ok(())
    }

    /// `y = x·W + b + scaling · (dropout(x)·A)·B`; the base output is never scaled, and a merged
    /// layer does not add the update a second time.
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // x·W; an NF4 weight multiplies as one op that dequantizes again in backward.
        let base = self.weight.matmul(x.clone());
        let y = match &self.adapter {
            Some(adapter) if !self.merged => {
                // Only DoRA reads W (its norm is over W + ΔW), in f32.
                let update = adapter.forward(x, &base, || self.weight_f32());
                base + update
            }
            _ => base,
        };
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    /// Attaches `adapter` (a [`LoraAdapter`](crate::LoraAdapter), an
    /// [`AdaLoraAdapter`](crate::adalora::AdaLoraAdapter) or an [`Adapter`]), replacing any
    /// previous one (the layer must not be merged).
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if the layer is merged, [`LoraError::InvalidConfig`] if the
    /// adapter's shapes do not fit the base weight.
    pub fn attach(&mut self, adapter: impl Into<Adapter>, path: &str) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::MergeState {
                path: path.into(),
                what: "cannot attach an adapter to a merged layer; unmerge first".into(),
            });
        }
        let adapter = adapter.into();
        let (d_in, d_out) = self.dims();
        let (a_in, b_out) = adapter.dims();
        if (a_in, b_out) != (d_in, d_out) {
            return Err(LoraError::InvalidConfig(format!(
                "{path}: adapter is for a [{a_in}, {b_out}] layer, the base weight is [{d_in}, {d_out}]"
            )));
        }
        self.adapter = Some(adapter);
        Ok(())
    }

    /// Folds the update into the base weight: `W ← W + scaling · A·B` (DoRA:
    /// `W ← (m/‖W + ΔW‖) ⊙ (W + ΔW)`). Forward then skips the adapter, so inference costs
    /// exactly the base layer's.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if there is no adapter or the layer is already merged.
    pub fn merge(&mut self, path: &str) -> Result<(), LoraError> {
        let dtype = self.weight.val().dtype();
        let w = self.weight_f32();
        let merged = self.adapter_in_state(path, false)?.merge_into(w);
        // An NF4 base is dequantized and stays dense: re-quantizing would round ΔW away. A
        // bf16/f16 base stays in its type, as PEFT merges (the merged W rounded to it once).
        self.weight = self.weight.clone().replace(merged.cast(dtype));
        self.merged = true;
        Ok(())
    }

    /// Undoes [`merge`](Self::merge): `W ← W − scaling · A·B` (DoRA: `W ← W'/(m/‖·‖) − ΔW`).
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if there is no adapter or the layer is not merged.
    pub fn unmerge(&mut self, path: &str) -> Result<(), LoraError> {
        let dtype = self.weight.val().dtype();
        let w = self.weight_f32();
        let base = self.adapter_in_state(path, true)?.unmerge_from(w, path)?;
        self.weight = self.weight.clone().replace(base.cast(dtype));
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
        self.merged = false;
        Ok(())
    }

    /// [`requantize_report_weight`] for this layer: what merging its adapter and re-quantizing
    /// the NF4 base would keep of `ΔW`. A measurement only; nothing is changed.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] if the base is not NF4 or `ΔW` is all zero;
    /// [`LoraError::MergeState`] if the layer has no adapter or it is already merged (the base is
    /// then dense: there is no NF4 `W` left to compare with).
    pub fn requantize_report(
        &self,
        config: &Nf4Config,
        path: &str,
    ) -> Result<RequantizeReport, LoraError> {
        let adapter = self.adapter.as_ref().ok_or_else(|| LoraError::MergeState {
            path: path.into(),
            what: "has no LoRA adapter".into(),
        })?;
        if self.merged {
            return Err(LoraError::MergeState {
                path: path.into(),
                what: "is merged; measure re-quantization before merging".into(),
            });
        }
        match &self.weight {
            BaseWeight::Nf4(w) => {
                let delta = adapter.effective_delta(&self.weight.val());
                requantize_report_weight(w, delta, config)
            }
            BaseWeight::Dense(_) => Err(LoraError::InvalidConfig(format!(
                "{path}: the base weight is not NF4; there is nothing to re-quantize"
            ))),
        }
    }

    /// `W` in f32 (`[d_in, d_out]`): dequantized for NF4, cast up for a bf16/f16 base; for
    /// DoRA's norm and for merging, which work in f32.
    fn weight_f32(&self) -> Tensor<2> {
        let w = self.weight.val();
        if w.dtype() == DType::F32 {
            w
        } else {
            w.cast(DType::F32)
        }
    }

    /// The adapter, if the layer has one and its merge state is `want_merged`.
    fn adapter_in_state(
        &mut self,
        path: &str,
        want_merged: bool,
    ) -> Result<&mut Adapter, LoraError> {
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
        self.adapter.as_mut().ok_or_else(|| LoraError::MergeState {
            path: path.into(),
            what: "has no LoRA adapter".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_layer_it_reads_the_device_weight_and_the_adapter() {
        use crate::quant::requantize_report;
        use crate::{BackendKind, LoraAdapter, LoraConfig, TargetModules, select_device};
        use burn::tensor::{Distribution, TensorData};
        let d = select_device(BackendKind::Flex).unwrap();
        let (d_in, d_out, r) = (96, 40, 4);
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 0.02), &d);
        let mut layer = LoraLinear::new(w, None);
        let cfg = Nf4Config::default();
        assert!(layer.requantize_report(&cfg, "l").is_err()); // no adapter
        let lcfg = LoraConfig::new(r, 8.0, TargetModules::AllLinear);
        let adapter = LoraAdapter::init(d_in, d_out, r, 8.0, &lcfg, &d).unwrap();
        layer.attach(adapter, "l").unwrap();
        let e = layer.requantize_report(&cfg, "l").unwrap_err();
        assert!(e.to_string().contains("not NF4"), "{e}");
        layer.quantize_nf4(&cfg, "l").unwrap();
        // B = 0 at init: ΔW is zero, which is an error, not a NaN.
        assert!(layer.requantize_report(&cfg, "l").is_err());
        let b = (0..r * d_out)
            .map(|i| ((i as f32) * 0.7).sin() * 5e-2)
            .collect();
        if let Some(a) = layer.adapter.as_mut().and_then(Adapter::as_lora_mut) {
            a.lora_b = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [r, d_out]),
                &d,
            ));
        }
        let got = layer.requantize_report(&cfg, "l").unwrap();
        // The same numbers from the host copies, in PyTorch order.
        let crate::BaseWeight::Nf4(q) = &layer.weight else {
            unreachable!()
        };
        let host = q.to_host().unwrap();
        let delta = layer.adapter.as_ref().unwrap().delta_weight();
        let delta = delta.transpose().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, requantize_report(&host, &delta, &cfg).unwrap());
        // Survival can exceed 1 (rounding may overshoot ΔW, as in the hand-made 0.7 / 0.58 case
        // above); W here is random, so only its sign and finiteness are fixed.
        assert!(got.survival > 0.0 && got.survival.is_finite(), "{got:?}");
        assert!(
            got.codes_changed > 0.0 && got.codes_changed < 1.0,
            "{got:?}"
        );
        eprintln!("{got:?}");
        // Measuring changes nothing: still NF4, still unmerged.
        assert!(layer.weight.is_quantized() && !layer.merged);
    }
}
