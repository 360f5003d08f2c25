//! The `tokenizer.*` metadata of an exported GGUF, carried over from the source model.
//!
//! From a GGUF source every `tokenizer.*` key is copied as it is (tokens, merges, token types,
//! pre-tokenizer name, special ids, chat template): the exported model tokenizes exactly as the
//! base did in llama.cpp. From a Hugging Face directory the keys are built as llama.cpp's
//! converter builds them for a GPT-2-style byte-level BPE (`convert_hf_to_gguf.py`
//! `_set_vocab_gpt2`, `get_vocab_base`, `get_vocab_base_pre`; gguf-py `SpecialVocab`):
//!
//! - `tokenizer.ggml.tokens`: the vocabulary by id, `0..vocab_size` (the model's embedding rows);
//!   an id the tokenizer does not use becomes `[PAD<id>]` of type UNUSED;
//! - `tokenizer.ggml.token_type`: 1 NORMAL, 3 CONTROL (added tokens marked special, or spelled
//!   `<|…|>`), 4 USER_DEFINED (other added tokens), 5 UNUSED;
//! - `tokenizer.ggml.merges`: `"left right"` strings in rank order;
//! - `tokenizer.ggml.pre`: llama.cpp's name for the pre-tokenizer, found as its converter finds
//!   it: the sha256 of the token ids of a fixed test text (`chktxt`), looked up in a table. Only
//!   the byte-level BPE families below are listed; another one is an error that names the hash.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufValue};
use crate::tokenizer::TextTokenizer;

/// Metadata key/values in the order they are to be written.
pub type Metadata = Vec<(String, GgufValue)>;

/// llama.cpp's token types (`llama_token_type`, gguf-py `TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The text llama.cpp's converter tokenizes to recognise a pre-tokenizer
/// (`get_vocab_base_pre` in `convert_hf_to_gguf.py`).
const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `(sha256 of the chktxt token ids, tokenizer.ggml.pre)` for byte-level BPE families, from
/// llama.cpp's `get_vocab_base_pre` (the hashes identify a vocabulary plus its pre-tokenizer).
const KNOWN_PRE: &[(&str, &str)] = &[
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ),
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ),
    (
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        "gpt-4o",
    ),
    (
        "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406",
        "llama4",
    ),
];

/// Every `tokenizer.*` key of a GGUF file, unchanged.
pub fn tokenizer_metadata_from_gguf(file: &GgufFile) -> Metadata {
    file.metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The sha256 (hex) of the ids of [`CHKTXT`] as encoded with special tokens, formatted as
/// Python prints a list (`[1, 2, 3]`), which is what llama.cpp's converter hashes.
///
/// # Errors
/// [`ModelError::Tokenizer`] if encoding fails.
pub fn pre_tokenizer_hash(tok: &TextTokenizer) -> Result<String, ModelError> {
    let ids = tok.encode(CHKTXT, true)?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let digest = Sha256::digest(format!("[{}]", list.join(", ")).as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// llama.cpp's `tokenizer.ggml.pre` name for `tok`, or `None` if its hash is not in the table.
///
/// # Errors
/// As [`pre_tokenizer_hash`].
pub fn pre_tokenizer_name(tok: &TextTokenizer) -> Result<Option<&'static str>, ModelError> {
    let hash = pre_tokenizer_hash(tok)?;
    Ok(KNOWN_PRE
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| *name))
}

/// The `tokenizer.*` keys for a Hugging Face tokenizer directory (see the module docs), for a
/// model whose embedding has `vocab_size` rows.
///
/// # Errors
/// [`ModelError::Tokenizer`] if `dir` has no loadable `tokenizer.json`; [`ModelError::Config`]
/// if it is not a BPE model, has more ids than `vocab_size`, or its pre-tokenizer is not one
/// llama.cpp names in the table above (the message gives the hash).
pub fn tokenizer_metadata_from_hf_dir(
    dir: &Path,
    vocab_size: usize,
) -> Result<Metadata, ModelError> {
    let tok = TextTokenizer::from_hf_dir(dir)?;
    let path = dir.join("tokenizer.json");
    let pre = pre_tokenizer_name(&tok)?.ok_or_else(|| ModelError::Config {
        path: path.clone(),
        message: format!(
            "llama.cpp does not know this pre-tokenizer (sha256 of the chktxt ids: {}); export from the model's GGUF file instead (--model FILE.gguf), whose tokenizer keys are copied as they are",
            pre_tokenizer_hash(&tok).unwrap_or_default()
        ),
    })?;
    bpe_metadata(&tok, vocab_size, pre, &path)
}

/// The keys of a byte-level BPE tokenizer with the pre-tokenizer name `pre` (see the module
/// docs); `source` names the tokenizer in errors.
///
/// # Errors
/// [`ModelError::Config`] if the tokenizer is not BPE or has ids beyond `vocab_size`.
pub fn bpe_metadata(
    tok: &TextTokenizer,
    vocab_size: usize,
    pre: &str,
    source: &Path,
) -> Result<Metadata, ModelError> {
    let bad = |message: String| ModelError::Config {
        path: source.to_path_buf(),
        message,
    };
    let json = tok
        .inner()
        .to_string(false)
        .map_err(|e| bad(format!("cannot serialize the tokenizer: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| bad(format!("tokenizer JSON: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "the tokenizer model is {}, not BPE; only byte-level BPE vocabularies can be exported from a Hugging Face directory",
            model["type"]
        )));
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<(), ModelError> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get_mut(i))
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id}, beyond the model's {vocab_size} embedding rows"
                ))
            })?;
        *slot = Some((text.to_owned(), ty));
        Ok(())
    };
    if let Some(vocab) = model["vocab"].as_object() {
        for (text, id) in vocab {
            put(id.as_u64().unwrap_or(u64::MAX), text, NORMAL)?;
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let text = added["content"].as_str().unwrap_or_default();
        let looks_special = text.starts_with("<|") && text.ends_with("|>");
        let special = added["special"].as_bool().unwrap_or(false) || looks_special;
        let ty = if special { CONTROL } else { USER_DEFINED };
        put(added["id"].as_u64().unwrap_or(u64::MAX), text, ty)?;
    }
    let (texts, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            (GgufValue::String(text), GgufValue::I32(ty))
        })
        .unzip();
    // `tokenizers` writes merges as "a b" strings (older) or ["a", "b"] pairs (0.20 and later).
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => {
                Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
            }
            _ => None,
        })
        .map(|m| {
            m.map(GgufValue::String)
                .ok_or_else(|| bad("a merge is neither \"a b\" nor [a, b]".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut kv: Metadata = vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(texts)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", tok.bos_id()),
        ("tokenizer.ggml.eos_token_id", tok.eos_id()),
        ("tokenizer.ggml.unknown_token_id", tok.unk_id()),
        ("tokenizer.ggml.padding_token_id", tok.pad_id()),
    ] {
        if let Some(id) = id {
            kv.push((key.into(), GgufValue::U32(id)));
        }
    }
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(tok.add_bos()),
    ));
    kv.push((
        "tokenizer.ggml.add_eos_token".into(),
        GgufValue::Bool(tok.add_eos()),
    ));
    if let Some(t) = tok.chat_template() {
        kv.push((
            "tokenizer.chat_template".into(),
            GgufValue::String(t.into()),
        ));
    }
    Ok(kv)
}
