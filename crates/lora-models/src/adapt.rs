//! The Llama's linear layers by module path, so `lora-core` can attach adapters to them, and
//! the type its frozen weights are stored in.

use lora_core::{BaseDtype, LinearVisitor, LoraError, LoraLinear, LoraModel, cast_base};

use crate::llama::Llama;

impl LoraModel for Llama {
    fn visit_linears_mut(&mut self, f: &mut LinearVisitor<'_>) -> Result<(), LoraError> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            f(&format!("{p}.self_attn.q_proj"), &mut a.q_proj)?;
            f(&format!("{p}.self_attn.k_proj"), &mut a.k_proj)?;
            f(&format!("{p}.self_attn.v_proj"), &mut a.v_proj)?;
            f(&format!("{p}.self_attn.o_proj"), &mut a.o_proj)?;
            let m = &mut layer.mlp;
            f(&format!("{p}.mlp.gate_proj"), &mut m.gate_proj)?;
            f(&format!("{p}.mlp.up_proj"), &mut m.up_proj)?;
            f(&format!("{p}.mlp.down_proj"), &mut m.down_proj)?;
        }
        // With tied embeddings the head is its own parameter holding the embedding's
        // transpose, so an adapter merged into it leaves the input embedding as it was.
        f("lm_head", &mut self.lm_head)
    }

    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        for (i, layer) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            f(&format!("{p}.self_attn.q_proj"), &a.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &a.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &a.v_proj);
            f(&format!("{p}.self_attn.o_proj"), &a.o_proj);
            let m = &layer.mlp;
            f(&format!("{p}.mlp.gate_proj"), &m.gate_proj);
            f(&format!("{p}.mlp.up_proj"), &m.up_proj);
            f(&format!("{p}.mlp.down_proj"), &m.down_proj);
        }
        f("lm_head", &self.lm_head);
    }
}

impl Llama {
    /// Stores the frozen token embedding and every dense linear weight (the head included) in
    /// `dtype`; the norms' gains stay f32 (a few thousand values, and the norms run in f32).
    /// Returns the bytes of those weights afterwards.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] for a layer with a merged adapter.
    pub fn cast_base(&mut self, dtype: BaseDtype) -> Result<usize, LoraError> {
        let embed = &mut self.model.embed_tokens.weight;
        if embed.val().dtype() != dtype.dtype() {
            *embed = embed.clone().map(|w| w.cast(dtype.dtype()).detach());
        }
        let embed_bytes = embed.shape().num_elements() * dtype.dtype().size();
        Ok(embed_bytes + cast_base(self, dtype)?)
    }
}
