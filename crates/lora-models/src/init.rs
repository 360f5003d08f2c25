//! Randomly initialised models, for tests and examples: [`LlamaConfig::init`].

use burn::tensor::{Device, Distribution, Tensor};
use lora_core::LoraLinear;

use crate::assemble::{WeightSource, assemble};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// Weights ~ N(0, 0.02²), biases 0, norm gains neutral.
struct RandomWeights {
    device: Device,
}

const INIT: Distribution = Distribution::Normal(0.0, 0.02);

impl WeightSource for RandomWeights {
    fn device(&self) -> &Device {
        &self.device
    }

    fn linear(
        &mut self,
        _prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear, ModelError> {
        let w = Tensor::random([d_in, d_out], INIT, &self.device);
        let b = bias.then(|| Tensor::zeros([d_out], &self.device));
        Ok(LoraLinear::new(w, b))
    }

    fn vector(&mut self, _name: &str, len: usize, neutral: f32) -> Result<Tensor<1>, ModelError> {
        Ok(Tensor::full([len], neutral, &self.device))
    }

    fn embedding(&mut self, vocab: usize, d_model: usize) -> Result<Tensor<2>, ModelError> {
        Ok(Tensor::random([vocab, d_model], INIT, &self.device))
    }

    fn tied_head(&mut self, embed: &Tensor<2>) -> LoraLinear {
        // A view is fine for the small models this makes.
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
        let mut src = RandomWeights {
            device: device.clone(),
        };
        match assemble(self, &mut src) {
            Ok(model) => model,
            Err(e) => unreachable!("random weights cannot be missing: {e}"),
        }
    }
}
