//! [`BaseWeight`]: the frozen weight `W` of a linear layer, dense or NF4-quantized.
//!
//! Everything that reads `W` goes through [`BaseWeight::val`], which returns the burn-layout
//! `[d_in, d_out]` tensor — the stored one, or the NF4 weight dequantized on the fly (QLoRA).

use burn::module::{Module, Param};
use burn::tensor::module::linear;
use burn::tensor::{Shape, Tensor};

use crate::base_dtype::BaseDtype;
use crate::error::LoraError;
use crate::quant::{Nf4Config, Nf4Weight};

/// The frozen base weight of a [`LoraLinear`](crate::LoraLinear).
// One per linear layer (a few hundred per model): the NF4 variant's extra handles on the stack
// cost nothing next to the weights, and a Box would change every match on it.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum BaseWeight {
    /// A float weight `[d_in, d_out]`, frozen.
    Dense(Param<Tensor<2>>),
    /// An NF4 weight (QLoRA), dequantized to `[d_in, d_out]` in every forward.
    Nf4(Nf4Weight),
}

impl BaseWeight {
    /// A frozen dense weight `[d_in, d_out]`.
    pub fn dense(weight: Tensor<2>) -> Self {
        BaseWeight::Dense(Param::from_tensor(weight).set_require_grad(false))
    }

    /// `W` as a `[d_in, d_out]` float tensor (dequantized for NF4; never tracked by autodiff).
    pub fn val(&self) -> Tensor<2> {
        match self {
            BaseWeight::Dense(w) => w.val(),
            BaseWeight::Nf4(q) => q.dequantize(),
        }
    }

    /// `x·W`: a dense weight through burn's matmul, an NF4 weight through
    /// [`Nf4Weight::matmul`] (dequantized again in backward, never kept in f32).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    ///
    /// A weight stored in another float type than `x` (`--base-dtype bf16|f16`) multiplies in
    /// its own type: `x` is cast to it and the product back to `x`'s type, so the activations
    /// around the layer stay f32.
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            BaseWeight::Dense(w) => {
                let w = w.val();
                let (wt, xt) = (w.dtype(), x.dtype());
                if wt == xt {
                    linear(x, w, None)
                } else {
                    linear(x.cast(wt), w, None).cast(xt)
                }
            }
            BaseWeight::Nf4(q) => q.matmul(x),
        }
    }

    /// Stores a dense weight in `dtype` (an NF4 weight is left as it is: it dequantizes to f32).
    pub fn cast(self, dtype: BaseDtype) -> Self {
        match self {
            BaseWeight::Dense(w) if w.val().dtype() != dtype.dtype() => {
                BaseWeight::dense(w.val().cast(dtype.dtype()).detach())
            }
            other => other,
        }
    }

    /// `[d_in, d_out]`.
    pub fn shape(&self) -> Shape {
        match self {
            BaseWeight::Dense(w) => w.shape(),
            BaseWeight::Nf4(q) => Shape::new([q.shape_out_in[1], q.shape_out_in[0]]),
        }
    }

    /// Whether `W` is stored in NF4.
    pub fn is_quantized(&self) -> bool {
        matches!(self, BaseWeight::Nf4(_))
    }

    /// Applies `f` to `W` and stores the result densely. An NF4 weight is dequantized first and
    /// is NOT re-quantized: merging an adapter into a 4-bit base would round most of the update
    /// away (REFERENCE §3; see [`crate::quant`] for measuring re-quantization on request).
    ///
    /// The new dense weight is detached: on an autodiff device `f(dequant(W))` is an op's output,
    /// and a frozen parameter must be a leaf of the graph (burn panics otherwise).
    pub fn map(self, f: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Self {
        match self {
            BaseWeight::Dense(w) => BaseWeight::Dense(w.map(f)),
            BaseWeight::Nf4(q) => BaseWeight::dense(f(q.dequantize()).detach()),
        }
    }

    /// A dense weight holding `weight` (`[d_in, d_out]`, detached), in place of this one: the
    /// parameter keeps its id when it was dense; an NF4 weight becomes dense (see
    /// [`BaseWeight::map`] for why nothing is re-quantized).
    pub fn replace(self, weight: Tensor<2>) -> Self {
        let weight = weight.detach();
        match self {
            BaseWeight::Dense(w) => BaseWeight::Dense(w.map(|_| weight)),
            BaseWeight::Nf4(_) => BaseWeight::dense(weight),
        }
    }

    /// Quantizes a dense weight to NF4 (a no-op for one already in NF4).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for a bad block size, [`LoraError::Tensor`] if the weight
    /// cannot be read.
    pub fn quantize(self, config: &Nf4Config) -> Result<Self, LoraError> {
        match self {
            BaseWeight::Dense(w) => Ok(BaseWeight::Nf4(Nf4Weight::quantize(w.val(), config)?)),
            q @ BaseWeight::Nf4(_) => Ok(q),
        }
    }

    /// Bytes `W` occupies on the device.
    pub fn storage_bytes(&self) -> usize {
        match self {
            BaseWeight::Dense(w) => w.shape().num_elements() * w.val().dtype().size(),
            BaseWeight::Nf4(q) => q.storage_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKind, LoraAdapter, LoraConfig, LoraLinear, TargetModules, select_device};
    use burn::tensor::Distribution;

    /// Regression: merging into an NF4 base right after training, on the autodiff device, used
    /// to panic ("Can't convert a non leaf tensor into a tracked tensor").
    #[test]
    fn merging_into_an_nf4_base_works_on_the_autodiff_device() {
        let d = select_device(BackendKind::Flex).unwrap().autodiff();
        let (d_in, d_out, r) = (64, 32, 4);
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 1.0), &d);
        let mut layer = LoraLinear::new(w, None);
        layer.quantize_nf4(&Nf4Config::default(), "l").unwrap();
        let cfg = LoraConfig::new(r, 8.0, TargetModules::AllLinear);
        let adapter = LoraAdapter::init(d_in, d_out, r, 8.0, &cfg, &d).unwrap();
        layer.attach(adapter, "l").unwrap();
        let w_hat = layer.weight.val().into_data().try_to_vec::<f32>().unwrap();
        layer.merge("l").unwrap();
        assert!(!layer.weight.is_quantized());
        // B = 0: the merged weight is dequant(W) exactly, and it is a frozen leaf.
        let merged = layer.weight.val();
        assert!(!merged.is_require_grad());
        assert_eq!(merged.into_data().try_to_vec::<f32>().unwrap(), w_hat);
        layer.unmerge("l").unwrap();
    }
}
