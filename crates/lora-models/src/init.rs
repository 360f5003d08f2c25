//! Randomly initialised models, for tests, examples and the `bench --scale` shapes:
//! [`LlamaConfig::init`], and [`LlamaConfig::init_stored`] whose weights are converted to their
//! storage (bf16/f16, NF4) the moment each is drawn, so a real-size shape never exists in f32.

use burn::tensor::{Device, Distribution, Tensor};
use lora_core::tensor_io::HostTensor;
use lora_core::{BaseDtype, LoraLinear};

use crate::assemble::{WeightSource, assemble};
use crate::checkpoint::convert::{self, Storage};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// Weights ~ N(0, 0.02²), biases 0, norm gains neutral, stored as `storage` says.
struct RandomWeights {
    device: Device,
    storage: Storage,
}

const INIT: Distribution = Distribution::Normal(0.0, 0.02);

impl RandomWeights {
    /// A random dense `shape` tensor in the storage's dtype (drawn in f32: burn draws floats in
    /// the default type).
    fn dense<const D: usize>(&self, shape: [usize; D]) -> Tensor<D> {
        let t = Tensor::random(shape, INIT, &self.device);
        match self.storage.dtype {
            BaseDtype::F32 => t,
            other => t.cast(other.dtype()),
        }
    }
}

impl WeightSource for RandomWeights {
    fn device(&self) -> &Device {
        &self.device
    }

    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear, ModelError> {
        let b = bias.then(|| Tensor::zeros([d_out], &self.device));
        // transformers keeps `lm_head` out of NF4; so does the checkpoint loader.
        if self.storage.nf4.is_some() && prefix != "lm_head" {
            // Drawn in PyTorch layout `[d_out, d_in]` (any layout is random) and quantized on
            // the host: the f32 values live only inside this block.
            let data = Tensor::<2>::random([d_out, d_in], INIT, &self.device)
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| ModelError::Tensor {
                    path: "random".into(),
                    name: format!("{prefix}.weight"),
                    message: format!("reading random weights: {e:?}"),
                })?;
            let host = HostTensor {
                shape: vec![d_out, d_in],
                data,
            };
            let w = convert::linear_weight(host, &self.storage, true, &self.device)?;
            return Ok(LoraLinear::from_base(w, b));
        }
        Ok(LoraLinear::new(self.dense([d_in, d_out]), b))
    }

    fn vector(&mut self, _name: &str, len: usize, neutral: f32) -> Result<Tensor<1>, ModelError> {
        Ok(Tensor::full([len], neutral, &self.device))
    }

    fn embedding(&mut self, vocab: usize, d_model: usize) -> Result<Tensor<2>, ModelError> {
        Ok(self.dense([vocab, d_model]))
    }

    fn tied_head(&mut self, embed: &Tensor<2>) -> LoraLinear {
        // A transposed view: one copy of the table, as PyTorch keeps a tied head.
        LoraLinear::new(embed.clone().transpose(), None)
    }
}

impl LlamaConfig {
    /// A randomly initialised model (weights ~ N(0, 0.02²), norms neutral), frozen like a
    /// pretrained base; for tests and examples.
    ///
    /// # Panics
    /// Never for a config that passes [`LlamaConfig::validate`]: the random source has no
    /// missing tensors.
    pub fn init(&self, device: &Device) -> Llama {
        match self.init_stored(&Storage::default(), device) {
            Ok(model) => model,
            Err(e) => unreachable!("random f32 weights cannot be missing: {e}"),
        }
    }

    /// [`LlamaConfig::init`] with the frozen weights stored as `storage` says, each converted as
    /// it is drawn (NF4 quantized on the host from one layer's f32 values at a time).
    ///
    /// # Errors
    /// [`ModelError::Lora`] for a bad NF4 block size.
    pub fn init_stored(&self, storage: &Storage, device: &Device) -> Result<Llama, ModelError> {
        let mut src = RandomWeights {
            device: device.clone(),
            storage: *storage,
        };
        assemble(self, &mut src)
    }
}
