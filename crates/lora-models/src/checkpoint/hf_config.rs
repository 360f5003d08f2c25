//! `config.json` of a Hugging Face model directory, for every supported [`Family`]: read into a
//! [`LlamaConfig`], and written back for a merged model. Field names and defaults are
//! transformers' (`models/{llama,mistral,qwen2,qwen3,gemma3}/configuration_*.py`); both the 4.x
//! spellings (`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`) and
//! the 5.x ones (`rope_parameters`, per layer type for Gemma 3; `layer_types`) are read.

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::config::{LlamaConfig, SlidingWindow};
use crate::family::{Activation, Family};

/// The fields of a `config.json` we read and write.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HfConfig {
    /// `"llama"`, `"mistral"`, `"qwen2"`, `"qwen3"` or `"gemma3_text"`.
    #[serde(default = "llama")]
    pub model_type: String,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// `D`.
    pub hidden_size: usize,
    /// `F`.
    pub intermediate_size: usize,
    /// `N`.
    pub num_hidden_layers: usize,
    /// `H`.
    pub num_attention_heads: usize,
    /// `K`; defaults to `H` (multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// `E`; defaults to `D / H` (Gemma 3: 256, Qwen3: 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm ε (default 1e-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// RoPE base θ as transformers 4.x writes it (Gemma 3: of the global layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Gemma 3 in transformers 4.x: RoPE base of the sliding layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// RoPE scaling (transformers 4.x); only `null` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Json>,
    /// RoPE settings as transformers 5.x writes them: `{"rope_theta", "rope_type"}`, or for
    /// Gemma 3 one such object per layer type (`full_attention`, `sliding_attention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Json>,
    /// Context length the RoPE tables cover (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// Tied input/output embeddings (default: true for Gemma 3, false otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Llama, Qwen3: biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The MLP activation (`silu`); Gemma writes `hidden_activation` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Gemma: the MLP activation (`gelu_pytorch_tanh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// The attention window of sliding layers (Mistral, Gemma 3; Qwen with `use_sliding_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2/3: whether `sliding_window` is used at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2/3 (4.x): layers from this index on use the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Gemma 3 (4.x): every `n`-th layer is global, the others sliding (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// transformers 5.x: `"full_attention"` or `"sliding_attention"` per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma: scores are scaled by `query_pre_attn_scalar^-½` (default 256). A JSON number;
    /// written as an integer when it is one (transformers' `Gemma3TextConfig` declares an `int`
    /// and its strict validation refuses `256.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<serde_json::Number>,
    /// Gemma 2: tanh soft-capping of attention scores; must be `null` (Gemma 3 has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: tanh soft-capping of the logits; must be `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// EmbeddingGemma: bidirectional attention; must be false for a causal LM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    /// Token ids, passed through when writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Json>,
    /// Token ids, passed through when writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Json>,
}

fn llama() -> String {
    "llama".into()
}

/// One `rope_parameters` object: its θ, after checking that it is plain RoPE.
fn rope_theta_of(params: &Json, what: &str) -> Result<Option<f64>, String> {
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(format!(
            "{what}.rope_type {rope_type:?}: only \"default\" RoPE is supported"
        ));
    }
    Ok(params.get("rope_theta").and_then(Json::as_f64))
}

impl HfConfig {
    /// The family named by `model_type`.
    ///
    /// # Errors
    /// An unsupported `model_type`, naming it and the supported list.
    pub fn family(&self) -> Result<Family, String> {
        Family::from_model_type(&self.model_type).ok_or_else(|| {
            format!(
                "model_type {:?} is not supported; supported families: {}",
                self.model_type,
                Family::supported_list()
            )
        })
    }

    /// `(global θ, sliding-layer θ)` from whichever spelling the file uses.
    fn rope_thetas(&self, family: Family) -> Result<(f64, Option<f64>), String> {
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is set; only plain RoPE is supported".into());
        }
        let (mut global, mut local) = (self.rope_theta, self.rope_local_base_freq);
        match &self.rope_parameters {
            Some(p) if p.get("full_attention").is_some() => {
                if let Some(full) = p.get("full_attention") {
                    global = rope_theta_of(full, "rope_parameters.full_attention")?.or(global);
                }
                if let Some(sliding) = p.get("sliding_attention") {
                    let theta = rope_theta_of(sliding, "rope_parameters.sliding_attention")?;
                    local = theta.or(local);
                }
            }
            Some(p) if !p.is_null() => global = rope_theta_of(p, "rope_parameters")?.or(global),
            _ => {}
        }
        Ok(match family {
            // Gemma3TextConfig.default_theta: global 1e6, local 1e4.
            Family::Gemma3 => (global.unwrap_or(1e6), Some(local.unwrap_or(1e4))),
            _ => (global.unwrap_or(1e4), None),
        })
    }

    /// Which layers use the sliding window, and its size, as transformers decides it.
    fn sliding_window(
        &self,
        family: Family,
        local_theta: Option<f64>,
    ) -> Result<Option<SlidingWindow>, String> {
        let n = self.num_hidden_layers;
        let size = match family {
            Family::Llama => None,
            Family::Mistral => self.sliding_window,
            // configuration_qwen2.py: `sliding_window if use_sliding_window else None`.
            Family::Qwen2 | Family::Qwen3 => self
                .sliding_window
                .filter(|_| self.use_sliding_window == Some(true)),
            Family::Gemma3 => Some(self.sliding_window.unwrap_or(4096)),
        };
        let Some(size) = size else { return Ok(None) };
        let layers: Vec<bool> = match &self.layer_types {
            // modeling_mistral.py passes `config.sliding_window` to every layer.
            _ if family == Family::Mistral => vec![true; n],
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(format!(
                        "layer_types: {other:?} is not \"full_attention\" or \"sliding_attention\""
                    )),
                })
                .collect::<Result<_, _>>()?,
            None => match family {
                Family::Gemma3 => {
                    let pattern = self.sliding_window_pattern.unwrap_or(6).max(1);
                    (0..n).map(|i| (i + 1) % pattern != 0).collect()
                }
                _ => {
                    // configuration_qwen2.py: sliding from `max_window_layers` on.
                    let from = self.max_window_layers.unwrap_or(28);
                    (0..n).map(|i| i >= from).collect()
                }
            },
        };
        if !layers.contains(&true) {
            return Ok(None);
        }
        Ok(Some(SlidingWindow {
            size,
            layers,
            rope_theta: local_theta,
        }))
    }

    /// Converts to our runtime config.
    ///
    /// # Errors
    /// A message naming the unsupported or inconsistent field.
    pub fn to_config(&self) -> Result<LlamaConfig, String> {
        let family = self.family()?;
        let (rope_theta, local_theta) = self.rope_thetas(family)?;
        let mut variant = family.variant();
        let act = self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref());
        let (act, default_act) = match variant.activation {
            Activation::Silu => (act.unwrap_or("silu"), "silu"),
            Activation::GeluTanh => (act.unwrap_or("gelu_pytorch_tanh"), "gelu_pytorch_tanh"),
        };
        if act != default_act {
            return Err(format!(
                "the MLP activation is {act:?}; {family} models here use {default_act:?}"
            ));
        }
        for (name, v) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(v) = v {
                return Err(format!(
                    "{name} = {v}: soft-capping (Gemma 2) is not supported"
                ));
            }
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(
                "use_bidirectional_attention is true: only causal language models are supported"
                    .into(),
            );
        }
        // Llama's and Qwen3's `attention_bias` covers q/k/v/o; Mistral's and Gemma's
        // projections never have biases, Qwen2's q/k/v always ([`Family::variant`]).
        if matches!(family, Family::Llama | Family::Qwen3) {
            variant.qkv_bias = self.attention_bias;
            variant.o_bias = self.attention_bias;
        }
        variant.mlp_bias = self.mlp_bias && family == Family::Llama;
        let n_heads = self.num_attention_heads;
        let head_dim = self.head_dim.unwrap_or(match family {
            Family::Gemma3 => 256,
            Family::Qwen3 => 128,
            _ => self.hidden_size.checked_div(n_heads).unwrap_or(0),
        });
        let config = LlamaConfig {
            family,
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
            head_dim,
            d_ff: self.intermediate_size,
            rope_theta,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            max_seq_len: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(family == Family::Gemma3),
            variant,
            sliding_window: self.sliding_window(family, local_theta)?,
            query_pre_attn_scalar: match family {
                Family::Gemma3 => Some(
                    self.query_pre_attn_scalar
                        .as_ref()
                        .and_then(serde_json::Number::as_f64)
                        .unwrap_or(256.0),
                ),
                _ => None,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` transformers needs to load `config` (with `tied` as the tie flag).
    pub fn from_config(config: &LlamaConfig, tied: bool) -> Self {
        let family = config.family;
        let v = &config.variant;
        let window = config.sliding_window.as_ref();
        let rope = |theta: f64| json!({"rope_theta": theta, "rope_type": "default"});
        let local_theta = window
            .and_then(|w| w.rope_theta)
            .unwrap_or(config.rope_theta);
        let layer_types = (0..config.n_layers)
            .map(|i| {
                let sliding = window.is_some_and(|w| w.applies_to(i));
                (if sliding {
                    "sliding_attention"
                } else {
                    "full_attention"
                })
                .to_string()
            })
            .collect();
        let is = |f: Family| family == f;
        HfConfig {
            model_type: family.model_type().into(),
            vocab_size: config.vocab_size,
            hidden_size: config.d_model,
            intermediate_size: config.d_ff,
            num_hidden_layers: config.n_layers,
            num_attention_heads: config.n_heads,
            num_key_value_heads: Some(config.n_kv_heads),
            head_dim: Some(config.head_dim),
            rms_norm_eps: Some(config.rms_norm_eps),
            // Both spellings, so transformers 4.x and 5.x read the same θ.
            rope_theta: Some(config.rope_theta),
            rope_local_base_freq: is(Family::Gemma3).then_some(local_theta),
            rope_scaling: None,
            rope_parameters: Some(if is(Family::Gemma3) {
                json!({"full_attention": rope(config.rope_theta), "sliding_attention": rope(local_theta)})
            } else {
                rope(config.rope_theta)
            }),
            max_position_embeddings: Some(config.max_seq_len),
            tie_word_embeddings: Some(tied),
            attention_bias: v.o_bias,
            mlp_bias: v.mlp_bias,
            hidden_act: (!is(Family::Gemma3)).then(|| "silu".into()),
            hidden_activation: is(Family::Gemma3).then(|| "gelu_pytorch_tanh".into()),
            sliding_window: window.map(|w| w.size),
            use_sliding_window: (is(Family::Qwen2) || is(Family::Qwen3))
                .then_some(window.is_some()),
            max_window_layers: None,
            sliding_window_pattern: None,
            // MistralConfig warns on `layer_types` (its window applies to every layer).
            layer_types: (is(Family::Qwen2) || is(Family::Qwen3) || is(Family::Gemma3))
                .then_some(layer_types),
            query_pre_attn_scalar: config.query_pre_attn_scalar.and_then(|v| {
                if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 {
                    Some(serde_json::Number::from(v as u64))
                } else {
                    serde_json::Number::from_f64(v)
                }
            }),
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            use_bidirectional_attention: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Json) -> Result<LlamaConfig, String> {
        serde_json::from_value::<HfConfig>(json)
            .map_err(|e| e.to_string())?
            .to_config()
    }

    fn base(model_type: &str) -> Json {
        json!({"model_type": model_type, "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
               "num_hidden_layers": 7, "num_attention_heads": 2})
    }

    /// transformers 4.x wrote `rope_theta`, `rope_local_base_freq` and `sliding_window_pattern`;
    /// 5.x writes `rope_parameters` per layer type and `layer_types`. Both read the same.
    #[test]
    fn gemma3_configs_in_the_4x_and_5x_spellings_read_the_same() {
        let mut old = base("gemma3_text");
        old["rope_theta"] = json!(1e6);
        old["rope_local_base_freq"] = json!(1e4);
        old["sliding_window"] = json!(512);
        old["sliding_window_pattern"] = json!(6);
        let mut new = base("gemma3_text");
        new["sliding_window"] = json!(512);
        new["rope_parameters"] = json!({
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}});
        let mut types = vec!["sliding_attention"; 7];
        types[5] = "full_attention";
        new["layer_types"] = json!(types);
        let (a, b) = (parse(old).unwrap(), parse(new).unwrap());
        assert_eq!(a, b);
        let w = a.sliding_window.unwrap();
        assert_eq!(w.layers, [true, true, true, true, true, false, true]);
        assert_eq!((w.size, w.rope_theta, a.rope_theta), (512, Some(1e4), 1e6));
        // Gemma3TextConfig defaults: head_dim 256, query_pre_attn_scalar 256, tied.
        assert_eq!(a.head_dim, 256);
        assert_eq!(a.query_pre_attn_scalar, Some(256.0));
        assert!(a.tie_word_embeddings);
    }

    #[test]
    fn qwen_uses_its_window_only_when_asked_and_from_max_window_layers_on() {
        let mut c = base("qwen2");
        c["sliding_window"] = json!(64);
        assert_eq!(parse(c.clone()).unwrap().sliding_window, None);
        c["use_sliding_window"] = json!(true);
        c["max_window_layers"] = json!(4);
        let w = parse(c).unwrap().sliding_window.unwrap();
        assert_eq!(w.layers, [false, false, false, false, true, true, true]);
        assert!(Family::Qwen2.variant().qkv_bias);
    }

    #[test]
    fn mistral_applies_its_window_to_every_layer() {
        let mut c = base("mistral");
        c["sliding_window"] = json!(4096);
        let w = parse(c.clone()).unwrap().sliding_window.unwrap();
        assert!(w.layers.iter().all(|&s| s));
        c["sliding_window"] = Json::Null;
        assert_eq!(parse(c).unwrap().sliding_window, None);
    }

    #[test]
    fn unsupported_settings_are_errors_naming_the_field() {
        let mut c = base("gemma3_text");
        c["final_logit_softcapping"] = json!(30.0);
        assert!(parse(c).unwrap_err().contains("final_logit_softcapping"));
        let mut c = base("llama");
        c["hidden_act"] = json!("gelu");
        assert!(parse(c).unwrap_err().contains("\"gelu\""));
        let err = parse(base("phi3")).unwrap_err();
        assert!(err.contains("\"phi3\"") && err.contains("qwen3"), "{err}");
    }
}
