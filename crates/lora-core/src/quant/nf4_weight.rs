//! [`Nf4Weight`]: a frozen linear weight kept in NF4 on the device, dequantized in `forward`.
//!
//! Storage on the device (burn Int tensors are 32-bit on flex and wgpu, so codes are packed into
//! 32-bit words rather than stored one per element):
//! - `packed`: 8 NF4 codes per i32 word, `[⌈n / block⌉ · block / 8]` — the bytes bitsandbytes
//!   writes (first element in the high nibble), four to a word, little-endian;
//! - double quantization: `codes`, 4 eight-bit codes per word, `absmax2` (one f32 per 256
//!   blocks) and `offset` (one f32); without it, `absmax` (one f32 per block);
//! - the 16-entry NF4 table and the 256-entry dynamic table (a few hundred bytes per layer).
//!
//! Dequantizing uses only backend primitive ops — shifts, masks, a table `select`, a broadcast
//! multiply — so it runs unchanged on flex, ndarray and wgpu ([`crate::quant::nf4_op`]). The
//! result is a constant: no gradient ever reaches the base (QLoRA §3: gradients flow through
//! the frozen 4-bit weights into the adapters), and the base product [`Nf4Weight::matmul`]
//! dequantizes again in backward rather than keeping an f32 `W`.
//!
//! Source: QLoRA (arXiv:2305.14314) §3, eq. 5–6 (`doubleDequant`); bitsandbytes
//! `functional.py` `dequantize_4bit`.

use burn::backend::Dispatch;
use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::LoraError;
use crate::quant::dynamic_map::{QuantizedBlockwise8, dynamic_map};
use crate::quant::nf4::{Absmax, NESTED_BLOCK_SIZE, NF4_CODE, Nf4Config, Nf4Tensor, quantize_nf4};
use crate::quant::nf4_op::{Nf4Backend, Nf4Parts, Nf4Scales};

/// For every byte value `b`, the NF4 values of its two elements in element order,
/// `[NF4[b >> 4], NF4[b & 0xF]]` (bitsandbytes puts the first element in the high nibble):
/// `[256 · 2]`, row-major `[256, 2]`.
fn byte_to_nf4_pairs() -> Vec<f32> {
    (0..256)
        .flat_map(|b| [NF4_CODE[b >> 4], NF4_CODE[b & 0xF]])
        .collect()
}

/// The per-block `absmax` values as stored on the device.
#[derive(Module, Debug)]
pub enum BlockScales {
    /// One f32 `absmax` per block, `[blocks]` (no double quantization: 32 bits per block).
    F32(Param<Tensor<1>>),
    /// Double quantization: 8-bit codes + a second-level f32 scale (8 + 32/256 bits per block).
    Double(DoubleQuantScales),
}

/// Double-quantized `absmax` values (QLoRA §3 "Double Quantization").
#[derive(Module, Debug)]
pub struct DoubleQuantScales {
    /// 8-bit dynamic codes of `absmax − offset`, 4 per word, `[padded_blocks / 4]`.
    pub codes: Param<Tensor<1, Int>>,
    /// f32 scale per 256 blocks, `[⌈blocks / 256⌉]`.
    pub absmax2: Param<Tensor<1>>,
    /// Mean of the original `absmax` values, added back after dequantizing them.
    #[module(skip)]
    pub offset: f32,
}

/// A `[d_out, d_in]` (PyTorch layout) weight quantized to NF4, stored packed on the device.
#[derive(Module, Debug)]
pub struct Nf4Weight {
    /// NF4 codes, 8 per word, `[padded_len / 8]`.
    pub packed: Param<Tensor<1, Int>>,
    /// Per-block scales.
    pub scales: BlockScales,
    /// The NF4 values of both elements of every byte value, `[256, 2]` (built once, so
    /// dequantizing looks up a byte at a time).
    pub nf4_pairs: Param<Tensor<2>>,
    /// The 256 dynamic-map values, `[256]` (used with double quantization).
    pub dynamic_code: Param<Tensor<1>>,
    /// `[d_out, d_in]`: the PyTorch-layout shape whose row-major data was quantized.
    #[module(skip)]
    pub shape_out_in: [usize; 2],
    /// Weights per block.
    #[module(skip)]
    pub block_size: usize,
}

fn int_param(words: Vec<i32>, device: &Device) -> Param<Tensor<1, Int>> {
    let n = words.len();
    // Int parameters never require a gradient.
    Param::initialized(
        ParamId::new(),
        Tensor::<1, Int>::from_data(TensorData::new(words, [n]), device),
    )
}

fn float_param(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    Param::from_tensor(Tensor::<1>::from_data(TensorData::new(values, [n]), device))
        .set_require_grad(false)
}

/// Four bytes to one little-endian i32 word (the bit pattern; the sign is irrelevant because
/// every read masks after shifting).
fn words_of(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            i32::from_le_bytes(w)
        })
        .collect()
}

/// The bytes of stored words, little-endian (the inverse of [`words_of`]).
fn bytes_of(t: &Param<Tensor<1, Int>>) -> Result<Vec<u8>, LoraError> {
    let words = t
        .val()
        .into_data()
        .convert::<i32>()
        .try_into_vec::<i32>()
        .map_err(|e| LoraError::Tensor(format!("reading packed NF4 words: {e:?}")))?;
    Ok(words.iter().flat_map(|w| w.to_le_bytes()).collect())
}

fn floats_of(t: &Param<Tensor<1>>) -> Result<Vec<f32>, LoraError> {
    t.val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LoraError::Tensor(format!("reading NF4 block scales: {e:?}")))
}

impl Nf4Weight {
    /// Quantizes a burn-layout weight `[d_in, d_out]` (it is transposed to PyTorch's `[d_out,
    /// d_in]` first, so the blocks run along the input dimension exactly as bitsandbytes lays out
    /// a `Linear4bit`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for a bad block size; [`LoraError::Tensor`] if the weight's
    /// data cannot be read as f32.
    pub fn quantize(weight: Tensor<2>, config: &Nf4Config) -> Result<Self, LoraError> {
        let [d_in, d_out] = weight.dims();
        let device = weight.device();
        let data = weight
            .transpose()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| LoraError::Tensor(format!("reading a weight to quantize: {e:?}")))?;
        let q = quantize_nf4(&data, config)?;
        Ok(Self::from_host(&q, [d_out, d_in], &device))
    }

    /// Uploads a host-quantized tensor holding the row-major data of a `[d_out, d_in]` weight.
    pub fn from_host(q: &Nf4Tensor, shape_out_in: [usize; 2], device: &Device) -> Self {
        let blocks = q.len.div_ceil(q.block_size);
        // Pad to whole blocks (index 0; sliced away after dequantizing).
        let mut bytes = q.packed.clone();
        bytes.resize(blocks * q.block_size / 2, 0);
        let packed = int_param(words_of(&bytes), device);
        let scales = match &q.absmax {
            Absmax::F32(v) => BlockScales::F32(float_param(v.clone(), device)),
            Absmax::Double { quantized, offset } => {
                let mut codes = quantized.codes.clone();
                codes.resize(blocks.div_ceil(NESTED_BLOCK_SIZE) * NESTED_BLOCK_SIZE, 0);
                BlockScales::Double(DoubleQuantScales {
                    codes: int_param(words_of(&codes), device),
                    absmax2: float_param(quantized.absmax.clone(), device),
                    offset: *offset,
                })
            }
        };
        Nf4Weight {
            packed,
            scales,
            nf4_pairs: Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(byte_to_nf4_pairs(), [256, 2]),
                device,
            ))
            .set_require_grad(false),
            dynamic_code: float_param(dynamic_map().to_vec(), device),
            shape_out_in,
            block_size: q.block_size,
        }
    }

    /// Reads the stored codes and statistics back to the host: the inverse of
    /// [`from_host`](Self::from_host) (the padding to whole blocks is dropped), so
    /// `Nf4Weight::from_host(&q, ..).to_host()? == q`. The data is the row-major `[d_out, d_in]`
    /// weight ([`shape_out_in`](Self::shape_out_in)).
    ///
    /// # Errors
    /// [`LoraError::Tensor`] if the device data cannot be read as i32 / f32.
    pub fn to_host(&self) -> Result<Nf4Tensor, LoraError> {
        let mut packed = bytes_of(&self.packed)?;
        packed.truncate(self.len().div_ceil(2));
        let absmax = match &self.scales {
            BlockScales::F32(a) => Absmax::F32(floats_of(a)?),
            BlockScales::Double(d) => {
                let mut codes = bytes_of(&d.codes)?;
                codes.truncate(self.blocks());
                Absmax::Double {
                    quantized: QuantizedBlockwise8 {
                        codes,
                        absmax: floats_of(&d.absmax2)?,
                        block_size: NESTED_BLOCK_SIZE,
                    },
                    offset: d.offset,
                }
            }
        };
        Ok(Nf4Tensor {
            packed,
            absmax,
            len: self.len(),
            block_size: self.block_size,
        })
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.shape_out_in[0] * self.shape_out_in[1]
    }

    /// Whether the weight has no elements (never, for a quantized linear layer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn blocks(&self) -> usize {
        self.len().div_ceil(self.block_size)
    }

    /// The stored tensors as the NF4 operation's input (clones share the buffers).
    fn parts(&self) -> Nf4Parts<Dispatch> {
        let scales = match &self.scales {
            BlockScales::F32(a) => Nf4Scales::F32 {
                absmax: a.val().into_dispatch(),
            },
            BlockScales::Double(d) => Nf4Scales::Double {
                codes: d.codes.val().into_dispatch(),
                absmax2: d.absmax2.val().into_dispatch(),
                dynamic: self.dynamic_code.val().into_dispatch(),
                offset: d.offset,
            },
        };
        Nf4Parts {
            packed: self.packed.val().into_dispatch(),
            pairs: self.nf4_pairs.val().into_dispatch(),
            scales,
            d_out: self.shape_out_in[0],
            d_in: self.shape_out_in[1],
            block_size: self.block_size,
        }
    }

    /// Dequantizes to the burn layout `[d_in, d_out]` (a transposed view of the `[d_out, d_in]`
    /// result): `NF4[idx] · absmax[block]`, bit-identical to bitsandbytes on flex. A constant:
    /// never tracked by autodiff.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Nf4Backend>::nf4_dequantize(self.parts()))
    }

    /// `x · W` with `W` dequantized on the fly ([`Nf4Backend::nf4_matmul`]): under autodiff the
    /// backward pass dequantizes again from the packed codes, so no f32 copy of `W` is kept
    /// between forward and backward (bitsandbytes' `MatMul4Bit`).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        let [d_out, d_in] = self.shape_out_in;
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = x.reshape([rows, d_in]).into_dispatch();
        let y = Tensor::<2>::from_dispatch(<Dispatch as Nf4Backend>::nf4_matmul(x, self.parts()));
        dims[D - 1] = d_out;
        y.reshape(dims)
    }

    /// Bytes this weight occupies on the device (packed codes and statistics, not the two
    /// small code tables), from the stored tensors' element types.
    pub fn storage_bytes(&self) -> usize {
        let ints = |t: &Param<Tensor<1, Int>>| t.shape().num_elements() * t.val().dtype().size();
        let floats = |t: &Param<Tensor<1>>| t.shape().num_elements() * t.val().dtype().size();
        let total = ints(&self.packed);
        total
            + match &self.scales {
                BlockScales::F32(a) => floats(a),
                // + 4 for the f32 offset
                BlockScales::Double(d) => ints(&d.codes) + floats(&d.absmax2) + 4,
            }
    }

    /// Storage in bits per weight (see [`storage_bytes`](Self::storage_bytes)).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.len() as f64
    }
}
