//! The key/value cache for incremental decoding: each layer keeps the rotated keys and the
//! values of every token seen so far, so a new token costs one position of attention instead of
//! a full forward over the whole sequence.

use burn::tensor::Tensor;

/// Cached keys and values of one attention layer.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// Rotated keys, `[B, K, S, E]`.
    key: Option<Tensor<4>>,
    /// Values, `[B, K, S, E]`.
    value: Option<Tensor<4>>,
}

impl LayerCache {
    /// Number of cached positions `S`.
    pub fn len(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `T` new positions and returns everything cached.
    ///
    /// # Shapes
    /// `key`, `value`: `[B, K, T, E]` → both `[B, K, S + T, E]`
    pub fn append(&mut self, key: Tensor<4>, value: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let key = match self.key.take() {
            Some(old) => Tensor::cat(vec![old, key], 2),
            None => key,
        };
        let value = match self.value.take() {
            Some(old) => Tensor::cat(vec![old, value], 2),
            None => value,
        };
        self.key = Some(key.clone());
        self.value = Some(value.clone());
        (key, value)
    }
}

/// One [`LayerCache`] per decoder layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![LayerCache::default(); n_layers],
        }
    }

    /// Number of cached positions (the position the next token will take).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of layer `i`.
    ///
    /// # Panics
    /// If `i` is not a layer index of the model the cache was made for.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }
}
