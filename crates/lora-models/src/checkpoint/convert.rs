//! Each checkpoint tensor straight into what the model stores: f32, bf16 or f16, or (linear
//! layers) NF4. A tensor is converted the moment it is decoded, so loading holds at most the
//! model loaded so far plus one tensor in f32 and its converted form.
//!
//! Layout: checkpoints hold a linear weight as `[out, in]` (PyTorch); the model keeps dense
//! weights as burn's `[in, out]` — transposed here, while converting, into a buffer of the
//! target type — and NF4 weights as PyTorch's `[out, in]` blocks (bitsandbytes' layout), so an
//! NF4 weight is quantized from the decoded values directly.

use burn::tensor::{Device, Element, Tensor, TensorData, bf16, f16};
use lora_core::quant::{Nf4Config, Nf4Weight, quantize_nf4};
use lora_core::tensor_io::HostTensor;
use lora_core::{BaseDtype, BaseWeight};

use crate::error::ModelError;

/// How the loaded frozen weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Storage {
    /// The type of every dense frozen weight (the norms' gains stay f32).
    pub dtype: BaseDtype,
    /// NF4 for every linear layer but `lm_head` (QLoRA's base).
    pub nf4: Option<Nf4Config>,
}

/// `values` (row-major `[rows, cols]`) transposed to `[cols, rows]` in element type `E`.
fn transpose_as<E: Element>(
    values: &[f32],
    rows: usize,
    cols: usize,
    to: impl Fn(f32) -> E,
) -> Vec<E> {
    let mut out = Vec::with_capacity(values.len());
    for c in 0..cols {
        out.extend((0..rows).map(|r| to(values[r * cols + c])));
    }
    out
}

/// `t` (`[rows, cols]`) as a dense `[cols, rows]` tensor in `dtype`: a linear weight in burn's
/// layout, or the tied head from the embedding.
pub fn dense_transposed(t: &HostTensor, dtype: BaseDtype, device: &Device) -> Tensor<2> {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let shape = [cols, rows];
    let data = match dtype {
        BaseDtype::F32 => TensorData::new(transpose_as(&t.data, rows, cols, |v| v), shape),
        BaseDtype::Bf16 => {
            TensorData::new(transpose_as(&t.data, rows, cols, bf16::from_f32), shape)
        }
        BaseDtype::F16 => TensorData::new(transpose_as(&t.data, rows, cols, f16::from_f32), shape),
    };
    Tensor::from_data(data, (device, dtype.dtype()))
}

/// A frozen dense tensor (an embedding) in `dtype`, as stored (no transpose; an f32 buffer is
/// handed over without a copy on the CPU backends).
pub fn dense<const D: usize>(t: HostTensor, dtype: BaseDtype, device: &Device) -> Tensor<D> {
    let data = match dtype {
        BaseDtype::F32 => TensorData::new(t.data, t.shape),
        BaseDtype::Bf16 => {
            TensorData::new(t.data.iter().map(|&v| bf16::from_f32(v)).collect(), t.shape)
        }
        BaseDtype::F16 => {
            TensorData::new(t.data.iter().map(|&v| f16::from_f32(v)).collect(), t.shape)
        }
    };
    Tensor::from_data(data, (device, dtype.dtype()))
}

/// A linear layer's frozen weight from its `[out, in]` values: NF4 when `storage` asks and
/// `quantize` (every layer but `lm_head`), else dense `[in, out]` in `storage.dtype`.
///
/// # Errors
/// [`ModelError::Lora`] for a bad NF4 block size.
pub fn linear_weight(
    w: HostTensor,
    storage: &Storage,
    quantize: bool,
    device: &Device,
) -> Result<BaseWeight, ModelError> {
    match (&storage.nf4, quantize) {
        (Some(nf4), true) => {
            let shape = [w.shape[0], w.shape[1]];
            let q = quantize_nf4(&w.data, nf4)?;
            drop(w);
            Ok(BaseWeight::Nf4(Nf4Weight::from_host(&q, shape, device)))
        }
        _ => Ok(BaseWeight::dense(dense_transposed(
            &w,
            storage.dtype,
            device,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::{BackendKind, select_device};

    fn host() -> HostTensor {
        HostTensor {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    }

    #[test]
    fn dense_weights_are_transposed_to_burn_layout_in_their_dtype() {
        let d = select_device(BackendKind::Flex).unwrap();
        for dtype in [BaseDtype::F32, BaseDtype::Bf16, BaseDtype::F16] {
            let t = dense_transposed(&host(), dtype, &d);
            assert_eq!((t.dims(), t.dtype()), ([3, 2], dtype.dtype()));
            let v = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            assert_eq!(v, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0], "{dtype}");
        }
        let e = dense::<2>(host(), BaseDtype::Bf16, &d);
        assert_eq!(e.dims(), [2, 3]);
    }

    #[test]
    fn an_nf4_weight_is_quantized_from_the_checkpoint_layout() {
        let d = select_device(BackendKind::Flex).unwrap();
        let storage = Storage {
            dtype: BaseDtype::F32,
            nf4: Some(Nf4Config::default()),
        };
        let w = HostTensor {
            shape: vec![4, 64],
            data: (0..256).map(|i| ((i as f32) * 0.37).sin()).collect(),
        };
        let q = linear_weight(w.clone(), &storage, true, &d).unwrap();
        assert!(q.is_quantized());
        assert_eq!(q.shape().dims(), [64, 4]); // burn layout [in, out]
        // The same as quantizing the dense layer afterwards (what loading did before).
        let dense = BaseWeight::dense(dense_transposed(&w, BaseDtype::F32, &d));
        let requantized = dense.quantize(&Nf4Config::default()).unwrap();
        let a = q.val().into_data().try_to_vec::<f32>().unwrap();
        let b = requantized.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, b);
        let kept = linear_weight(w, &storage, false, &d).unwrap();
        assert!(!kept.is_quantized());
    }
}
