//! Building a [`TextTokenizer`] from GGUF `tokenizer.*` metadata, the way transformers'
//! `integrations/gguf/gguf_tokenizer_mapping.py` does.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::special_tokens::add_gguf_special_tokens;
use super::{Result, TextTokenizer, TokenizerError};
use crate::gguf::GgufFile;

/// Pre-tokenizer regexes by `tokenizer.ggml.pre`, copied from transformers
/// `gguf_tokenizer_mapping.py` (`GGUF_PRE_TOKENIZER_SPLITS`). Names not listed (e.g. `smollm`,
/// `gpt2`) get the GPT-2 `ByteLevel` regex, as in transformers.
#[rustfmt::skip]
const PRE_SPLITS: &[(&[&str], &str)] = &[
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        &["qwen35"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        &["tekken"],
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];

/// GPT-2's byte-to-character table (`bytes_to_unicode` in openai/gpt-2 `encoder.py`): printable
/// bytes map to themselves, the other 68 to U+0100 onwards, so every byte is a visible character.
pub(super) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The byte-level BPE of a `tokenizer.ggml.model = "gpt2"` vocabulary, as transformers'
/// `byte_level_tokenizer` + `add_gguf_special_tokens` + `set_split_regex` build it.
///
/// # Errors
/// [`TokenizerError::Gguf`] for missing/mistyped keys, [`TokenizerError::BadMerge`], and
/// [`TokenizerError::Tokenizers`] if the library rejects the vocabulary.
fn byte_level_bpe(gguf: &GgufFile, tokens: &[&str], token_types: &[i32]) -> Result<Tokenizer> {
    let path = gguf.path();
    // transformers `byte_level_tokenizer`: a token already spelled in the byte alphabet is
    // kept; any other is re-spelled from its UTF-8 bytes.
    let table = byte_to_char();
    let in_alphabet = |t: &str| t.chars().all(|c| table.contains(&c));
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = if in_alphabet(t) {
                (*t).to_owned()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let merges = gguf
        .get_opt::<Vec<&str>>("tokenizer.ggml.merges")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_owned(), b.to_owned())),
            _ => Err(TokenizerError::BadMerge {
                path: path.into(),
                index,
                merge: m.into(),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let context = || format!("building the BPE tokenizer from {}", path.display());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|source| TokenizerError::Tokenizers {
            context: context(),
            source,
        })?;
    let mut inner = Tokenizer::new(bpe);

    // A CONTROL token spelled outside the byte alphabet is a llama.cpp mislabel: skipped.
    add_gguf_special_tokens(&mut inner, tokens, token_types, in_alphabet);

    let pre = gguf
        .get_opt::<&str>("tokenizer.ggml.pre")?
        .unwrap_or("default");
    match PRE_SPLITS.iter().find(|(names, _)| names.contains(&pre)) {
        Some((_, regex)) => {
            let split = Split::new(
                SplitPattern::Regex((*regex).into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|source| TokenizerError::Tokenizers {
                context: context(),
                source,
            })?;
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        None => {
            inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

impl TextTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata (see module docs).
    ///
    /// Reads `tokenizer.ggml.{model, tokens, merges, token_type, pre, bos_token_id,
    /// eos_token_id, padding_token_id, unknown_token_id, add_bos_token, add_eos_token}` and
    /// `tokenizer.chat_template`, and for SentencePiece (`llama`) vocabularies
    /// `tokenizer.ggml.scores`. `add_bos_token` defaults to false for `gpt2` vocabularies
    /// (SmolLM2 stores false) and to true for `llama` ones, as in transformers'
    /// `get_gguf_tokenizer`.
    ///
    /// # Errors
    /// [`TokenizerError::Gguf`] for missing/mistyped keys, [`TokenizerError::UnsupportedModel`]
    /// unless the model is `gpt2` or `llama`, [`TokenizerError::BadMerge`], [`TokenizerError::BadTokenId`],
    /// and [`TokenizerError::Tokenizers`] if the library rejects the vocabulary.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let model: &str = gguf.get_str("tokenizer.ggml.model")?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let token_types = gguf
            .get_opt::<Vec<i32>>("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        let context = || format!("building the tokenizer from {}", path.display());
        let inner = match model {
            "gpt2" => byte_level_bpe(gguf, &tokens, &token_types)?,
            "llama" => super::sentencepiece::build(gguf, &tokens, &token_types)?,
            _ => {
                return Err(TokenizerError::UnsupportedModel {
                    path: path.into(),
                    model: model.into(),
                });
            }
        };
        let vocab_size = inner.get_vocab_size(true);
        let id = |key: &str| -> Result<Option<u32>> {
            let id = gguf.get_opt::<u32>(&format!("tokenizer.ggml.{key}"))?;
            match id {
                Some(id) if id as usize >= vocab_size => Err(TokenizerError::BadTokenId {
                    path: path.into(),
                    key: format!("tokenizer.ggml.{key}"),
                    id,
                    vocab_size,
                }),
                _ => Ok(id),
            }
        };
        let mut tok = Self {
            bos_id: id("bos_token_id")?,
            eos_id: id("eos_token_id")?,
            pad_id: id("padding_token_id")?,
            unk_id: id("unknown_token_id")?,
            // transformers `get_gguf_tokenizer`: a SentencePiece vocabulary without the flag adds
            // BOS (as llama.cpp does); a byte-level one does not.
            add_bos: gguf
                .get_opt("tokenizer.ggml.add_bos_token")?
                .unwrap_or(model == "llama"),
            add_eos: gguf
                .get_opt("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            chat_template: gguf.get_opt::<String>("tokenizer.chat_template")?,
            inner,
        };
        tok.set_post_processor(&context())?;
        Ok(tok)
    }

    /// [`TextTokenizer::from_gguf`] on the file at `path`.
    ///
    /// # Errors
    /// As [`GgufFile::open`] and [`TextTokenizer::from_gguf`].
    pub fn from_gguf_path(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// The post-processor that adds BOS/EOS when encoding with special tokens, as transformers
    /// builds it (`TemplateProcessing` with just `$A` when neither is added).
    fn set_post_processor(&mut self, context: &str) -> Result<()> {
        let name = |id: Option<u32>, on: bool| {
            id.filter(|_| on)
                .and_then(|id| Some((self.inner.id_to_token(id)?, id)))
        };
        let (bos, eos) = (
            name(self.bos_id, self.add_bos),
            name(self.eos_id, self.add_eos),
        );
        let wrap = |seq: &str, type_id: u32| {
            let mut parts: Vec<String> = Vec::new();
            parts.extend(bos.iter().map(|(t, _)| format!("{t}:{type_id}")));
            parts.push(format!("{seq}:{type_id}"));
            parts.extend(eos.iter().map(|(t, _)| format!("{t}:{type_id}")));
            parts
        };
        let err = |e: String| TokenizerError::Tokenizers {
            context: context.into(),
            source: e.into(),
        };
        let mut pair = wrap("$A", 0);
        pair.extend(wrap("$B", 1));
        let post = TemplateProcessing::builder()
            .try_single(wrap("$A", 0))
            .map_err(err)?
            .try_pair(pair)
            .map_err(err)?
            .special_tokens(bos.iter().chain(eos.iter()).cloned().collect::<Vec<_>>())
            .build()
            .map_err(|e| err(e.to_string()))?;
        self.inner.with_post_processor(Some(post));
        Ok(())
    }
}
