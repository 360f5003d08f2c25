//! [`BaseDtype`]: the float type the frozen base weights are stored and multiplied in
//! (`--base-dtype f32|bf16|f16`), and [`cast_base`], a whole model's linear layers at once.
//!
//! Only the frozen base changes type. `lora_A` / `lora_B`, their gradients and the AdamW state
//! stay f32 (PEFT keeps adapter weights in f32 under a bf16 base: `peft/tuners/lora/layer.py`,
//! `_cast_input_dtype` / `autocast_adapter_dtype`), and the activations between layers — and so
//! the norms, the softmax and the loss — stay f32: a base layer casts its input to the weight's
//! type, multiplies, and casts the product back ([`crate::BaseWeight::matmul`]).

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::LoraError;
use crate::inject::LoraModel;

/// The storage and matmul type of the frozen base weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// 32-bit IEEE floats (the weights as loaded).
    #[default]
    F32,
    /// bfloat16: f32's exponent range, 8 bits of mantissa (what `torch_dtype=torch.bfloat16`
    /// loads).
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, range ±65504.
    F16,
}

impl BaseDtype {
    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            BaseDtype::F32 => "f32",
            BaseDtype::Bf16 => "bf16",
            BaseDtype::F16 => "f16",
        }
    }

    /// burn's element type.
    pub fn dtype(self) -> DType {
        match self {
            BaseDtype::F32 => DType::F32,
            BaseDtype::Bf16 => DType::BF16,
            BaseDtype::F16 => DType::F16,
        }
    }

    /// Bits per stored weight.
    pub fn bits(self) -> usize {
        match self {
            BaseDtype::F32 => 32,
            BaseDtype::Bf16 | BaseDtype::F16 => 16,
        }
    }

    /// Whether `backend` can store and multiply a base in this type.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for bf16 on wgpu: burn compiles wgpu kernels to WGSL, which
    /// has no bf16 type (cubecl-wgpu 0.11 stops with `UnsupportedType("cube.bf16")`, a panic on
    /// a device thread), so the run is refused before anything is loaded.
    pub fn check_backend(self, backend: BackendKind) -> Result<(), LoraError> {
        if self == BaseDtype::Bf16 && backend == BackendKind::Wgpu {
            return Err(LoraError::InvalidConfig(
                "--base-dtype bf16 is not available on wgpu: its WGSL kernels have no bf16 type; \
                 use --base-dtype f16 (devices with shader-f16), f32, or --quant nf4"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for BaseDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BaseDtype {
    type Err = LoraError;

    /// Parses `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] naming the choices.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(BaseDtype::F32),
            "bf16" | "bfloat16" => Ok(BaseDtype::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(BaseDtype::F16),
            other => Err(LoraError::InvalidConfig(format!(
                "unknown base dtype {other:?}; choose f32, bf16 or f16"
            ))),
        }
    }
}

/// Stores the dense base weight of every linear layer of `model` in `dtype` (NF4 layers stay
/// NF4); returns the bytes those dense weights now take.
///
/// # Errors
/// [`LoraError::MergeState`] for a layer with a merged adapter (its `W` holds `ΔW`: rounding it
/// would round the adapter).
pub fn cast_base<M: LoraModel>(model: &mut M, dtype: BaseDtype) -> Result<usize, LoraError> {
    let mut bytes = 0;
    model.visit_linears_mut(&mut |path, lin| {
        lin.cast_base(dtype, path)?;
        if !lin.weight.is_quantized() {
            bytes += lin.weight.storage_bytes();
        }
        Ok(())
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKind, LoraLinear, select_device};
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn names_round_trip_and_unknown_names_say_the_choices() {
        for d in [BaseDtype::F32, BaseDtype::Bf16, BaseDtype::F16] {
            assert_eq!(d.name().parse::<BaseDtype>().unwrap(), d);
        }
        let e = "f8".parse::<BaseDtype>().unwrap_err().to_string();
        assert!(e.contains("f32, bf16 or f16"), "{e}");
    }

    /// A bf16 layer computes `bf16(bf16(x)·bf16(W))` and hands back f32: here every value is
    /// exact in bf16, so the product equals the f32 layer's.
    #[test]
    fn a_bf16_base_multiplies_in_bf16_and_returns_f32() {
        let d = select_device(BackendKind::Flex).unwrap();
        let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, -0.5, 4.0], [2, 2]), &d);
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.25f32, -3.0], [1, 2]), &d);
        let mut layer = LoraLinear::new(w, None);
        let f32_out = layer.forward(x.clone()).into_data();
        layer.cast_base(BaseDtype::Bf16, "l").unwrap();
        assert_eq!(layer.weight.val().dtype(), DType::BF16);
        assert_eq!(layer.weight.storage_bytes(), 4 * 2);
        let out = layer.forward(x);
        assert_eq!(out.dtype(), DType::F32);
        assert_eq!(out.into_data(), f32_out); // [1.75, -11.5]
    }

    #[test]
    fn bf16_on_wgpu_is_refused_with_the_alternatives_and_every_other_pair_is_allowed() {
        let err = BaseDtype::Bf16
            .check_backend(BackendKind::Wgpu)
            .unwrap_err();
        assert!(err.to_string().contains("--quant nf4"), "{err}");
        for dtype in [BaseDtype::F32, BaseDtype::Bf16, BaseDtype::F16] {
            for backend in [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu] {
                let refused = dtype == BaseDtype::Bf16 && backend == BackendKind::Wgpu;
                assert_eq!(dtype.check_backend(backend).is_err(), refused);
            }
        }
    }
}
