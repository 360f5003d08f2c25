//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral,
//! Gemma), rebuilt as transformers rebuilds them (`integrations/gguf/gguf_tokenizer_mapping.py`):
//! a `tokenizers` BPE with byte fallback over `tokenizer.ggml.tokens`, its merges derived from
//! the vocabulary (`tokenization_utils_base.py`, `generate_merges`: every split of a token into
//! two tokens, best-ranked first), and the pipeline of the model's tokenizer class:
//!
//! - Gemma (`gemma_tokenizer` → `GemmaTokenizer`): tokens of two or more spaces are respelled
//!   with `▁`; merges rank by position in the file (Gemma's scores do not follow its merge
//!   order); a normalizer turns spaces into `▁`; no prefix space.
//! - Others (`sentencepiece_tokenizer` → `LlamaTokenizer`): merges rank by
//!   `tokenizer.ggml.scores`; a `Metaspace` pre-tokenizer adds `▁` before the first word and the
//!   decoder strips it again.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::special_tokens::add_gguf_special_tokens;
use super::{Result, TokenizerError};
use crate::gguf::GgufFile;

/// SentencePiece's word-boundary mark (U+2581), which stands for a space in the vocabulary.
const SPACE_MARK: &str = "\u{2581}";

/// Tokens longer than this many bytes are not split into merges (see [`generate_merges`]).
const MAX_SPLIT_LEN: usize = 1024;

/// The merges a vocabulary implies, as transformers' `generate_merges(vocab, vocab_scores)`
/// derives them: for every token, each split into a left and right piece that are both tokens
/// (ordered by the pieces' ids), then all of them sorted by the token's score, best first, ties
/// broken by the longer left piece, then the longer right piece. Python's sort is stable, and so
/// is this one, so equal keys keep the token order.
///
/// `tokens[i]` has id `i` and score `scores[i]`; a token listed twice keeps its last id and
/// score, at the place of its first listing (a Python dict built from the list). Tokens longer
/// than 1024 bytes are left unsplit (transformers has no such limit; no real vocabulary has
/// such tokens).
pub fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, scores.get(i).copied().unwrap_or(0.0));
    }
    // (score, left length, right length, left, right), lengths in characters as Python counts.
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for token in order {
        // Splitting costs O(len²) per token; real vocabularies stay under ~100 characters, so a
        // longer "token" (a corrupt or hostile file) is not split rather than stall the build.
        if token.len() > MAX_SPLIT_LEN {
            continue;
        }
        let mut local: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (id.get(left), id.get(right)) {
                local.push((l, r, left, right));
            }
        }
        local.sort_by_key(|&(l, r, _, _)| (l, r));
        let s = score.get(token).copied().unwrap_or(0.0);
        merges.extend(local.into_iter().map(|(_, _, left, right)| {
            (s, left.chars().count(), right.chars().count(), left, right)
        }));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// Whether a GGUF `general.architecture` uses transformers' Gemma rebuild of the vocabulary
/// (`GGUF_SENTENCEPIECE_BUILDERS`: gemma, gemma2, gemma3).
fn is_gemma(architecture: &str) -> bool {
    matches!(architecture, "gemma" | "gemma2" | "gemma3")
}

/// The `tokenizers` pipeline for a SentencePiece GGUF vocabulary (see the module docs).
///
/// # Errors
/// [`TokenizerError::Gguf`] for missing/mistyped keys, [`TokenizerError::Tokenizers`] if the
/// library rejects the vocabulary.
pub(super) fn build(gguf: &GgufFile, tokens: &[&str], types: &[i32]) -> Result<Tokenizer> {
    let context = || {
        format!(
            "building the SentencePiece tokenizer from {}",
            gguf.path().display()
        )
    };
    let lib = |source: tokenizers::Error| TokenizerError::Tokenizers {
        context: context(),
        source,
    };
    let gemma = is_gemma(gguf.architecture()?);
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            // gemma_tokenizer: a token of only spaces is looked up as `▁`s.
            if gemma && t.contains(' ') && t.trim().is_empty() {
                SPACE_MARK.repeat(t.chars().count())
            } else {
                (*t).to_owned()
            }
        })
        .collect();
    let scores: Vec<f64> = if gemma {
        // Rank by position: `positions = {token: -index}`.
        (0..spelled.len()).map(|i| -(i as f64)).collect()
    } else {
        gguf.get_f32_array("tokenizer.ggml.scores")?
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let merges = generate_merges(&spelled, &scores);
    let vocab: Vocab = spelled
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if gemma {
        bpe = bpe.unk_token("<unk>".into());
    }
    let mut inner = Tokenizer::new(bpe.build().map_err(lib)?);

    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(lib);
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace(SPACE_MARK, " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if gemma {
        // GemmaTokenizer: spaces become `▁` before BPE; its `Split(" ")` then finds none.
        inner.with_normalizer(Some(replace(" ", SPACE_MARK)?));
        let split = Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(lib)?;
        inner.with_pre_tokenizer(Some(split));
    } else {
        // LlamaTokenizer (legacy = False): `▁` before the first word only; stripped on decode.
        inner.with_pre_tokenizer(Some(Metaspace::new(
            '\u{2581}',
            PrependScheme::First,
            false,
        )));
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));

    add_gguf_special_tokens(&mut inner, tokens, types, |_| true);
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Hand-derived from `generate_merges`: "ab" (score −1) splits into a+b; "abc" (score −2)
    /// into a+bc and ab+c, ordered by the left piece's length, longer first.
    #[test]
    fn merges_rank_by_score_then_by_the_longer_left_piece() {
        let tokens = strings(&["a", "b", "c", "bc", "ab", "abc"]);
        let scores = [0.0, 0.0, 0.0, -3.0, -1.0, -2.0];
        let m = generate_merges(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }

    #[test]
    fn splits_are_made_between_characters_not_bytes() {
        let tokens = strings(&["é", "x", "éx"]);
        let m = generate_merges(&tokens, &[0.0, 0.0, 1.0]);
        assert_eq!(m, [("é".to_owned(), "x".to_owned())]);
    }
}
