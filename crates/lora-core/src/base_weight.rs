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

/// The most weights one product of a bf16/f16 base reads at a time (32 MiB as f32).
///
/// burn-flex multiplies bf16 and f16 by converting both operands to f32 (after copying a
/// transposed operand, as the backward's `Wᵀ` is, into a contiguous one): without a bound that
/// is a transient f32 copy of the whole weight at every product — 400 MB for the output head of
/// a 1B model, which set a bf16 base's training peak. Column blocks bound it.
const CAST_CHUNK: usize = 1 << 23;

/// `x · W` for a weight stored in another float type than `x`: `x` is cast to `W`'s type, the
/// product is taken there and cast back, over blocks of output columns of at most `chunk`
/// weights each, concatenated. Each block casts `x` itself, so the blocks' input gradients are
/// summed in `x`'s type (f32), not in 16 bits.
///
/// # Shapes
/// `x`: `[..., d_in]`, `w`: `[d_in, d_out]` → `[..., d_out]`
fn cast_matmul<const D: usize>(x: Tensor<D>, w: Tensor<2>, chunk: usize) -> Tensor<D> {
    let (wt, xt) = (w.dtype(), x.dtype());
    let [d_in, d_out] = w.dims();
    let cols = (chunk / d_in.max(1)).max(1);
    if d_out <= cols {
        return linear(x.cast(wt), w, None).cast(xt);
    }
    let blocks = (0..d_out)
        .step_by(cols)
        .map(|start| {
            let block = w.clone().slice([0..d_in, start..(start + cols).min(d_out)]);
            linear(x.clone().cast(wt), block, None).cast(xt)
        })
        .collect();
    Tensor::cat(blocks, D - 1)
}

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

    /// `x·W`: a frozen dense weight through [`crate::fused::frozen_matmul`] (one product over
    /// all rows, a backward that forms only `∂x`), a tracked one (trainable, or composed from
    /// trainable tensors as burn's `apply_lora` does) through burn's `linear`, an
    /// NF4 weight through [`Nf4Weight::matmul`] (dequantized again in backward, never kept in
    /// f32).
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
                if wt == xt && !w.is_tracked() {
                    crate::fused::frozen_matmul(x, w)
                } else if wt == xt {
                    linear(x, w, None)
                } else {
                    cast_matmul(x, w, CAST_CHUNK)
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
    use burn::module::ParamId;
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
    /// Column blocks change no value, and the input gradient only by the order in which f32
    /// sums of bf16 products are added (a bf16 weight, 5 blocks of 7 columns and one of 1).
    #[test]
    fn a_16_bit_product_in_column_blocks_equals_the_whole_product() {
        let d = select_device(BackendKind::Flex).unwrap().autodiff();
        let w = Tensor::<2>::random([16, 36], Distribution::Normal(0.0, 1.0), &d)
            .cast(burn::tensor::DType::BF16);
        let x = Tensor::<3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &d);
        let (xa, xb) = (x.clone().require_grad(), x.require_grad());
        let whole = cast_matmul(xa.clone(), w.clone(), usize::MAX);
        let blocks = cast_matmul(xb.clone(), w, 16 * 7);
        let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(host(whole.clone()), host(blocks.clone()));
        let weights = Tensor::<3>::random([2, 3, 36], Distribution::Normal(0.0, 1.0), &d);
        let ga = xa
            .grad(&(whole * weights.clone()).sum().backward())
            .unwrap();
        let gb = xb.grad(&(blocks * weights).sum().backward()).unwrap();
        let scale = ga.clone().abs().max().into_scalar::<f32>();
        let diff = (ga - gb).abs().max().into_scalar::<f32>();
        // One bf16 rounding of the whole sum against one per block: a few 2⁻⁸ steps.
        assert!(
            diff <= 0.02 * scale,
            "input gradients differ by {diff} (max {scale})"
        );
    }

    /// burn's `apply_lora` makes the weight a value composed from trainable tensors (`W + s·A·B`,
    /// a tracked non-leaf): its gradient must still flow, so it takes burn's `linear`, not the
    /// frozen product (regression: the bench's `apply_lora` rows had an untracked loss).
    #[test]
    fn a_weight_composed_from_trainable_tensors_passes_its_gradient_on() {
        let d = select_device(BackendKind::Flex).unwrap().autodiff();
        let a = Tensor::<2>::random([8, 3], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let x = Tensor::<2>::random([70, 8], Distribution::Normal(0.0, 1.0), &d);
        let base = Tensor::<2>::random([8, 3], Distribution::Normal(0.0, 1.0), &d);
        let weight = BaseWeight::Dense(Param::initialized(ParamId::new(), base + a.clone()));
        let grads = weight.matmul(x.clone()).sum().backward();
        // Σᵢⱼ (x·(W₀ + A))ᵢⱼ has ∂/∂A = xᵀ·1: every column of ∂A is x's column sums.
        let expected = x.sum_dim(0).reshape([8, 1]).expand([8, 3]).inner();
        let got = a
            .grad(&grads)
            .expect("A gets a gradient through the composed weight");
        let diff = (got - expected.clone()).abs().max().into_scalar::<f32>();
        assert!(diff <= 1e-4 * expected.abs().max().into_scalar::<f32>().max(1.0));
    }
}
