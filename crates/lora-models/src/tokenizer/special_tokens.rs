//! The special tokens of a GGUF vocabulary, as transformers' GGUF loader adds them to a
//! `tokenizers` tokenizer (`integrations/ggml.py`, `add_gguf_special_tokens`) — shared by the
//! byte-level BPE and the SentencePiece builders.

use tokenizers::{AddedToken, Tokenizer};

/// GGUF `tokenizer.ggml.token_type` of special control tokens like `<|im_end|>` (llama.cpp
/// `LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined added tokens like `<think>` (`LLAMA_TOKEN_TYPE_USER_DEFINED`).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// transformers `add_gguf_special_tokens`: the tokens typed CONTROL become special added tokens
/// (those `control_ok` accepts), the USER_DEFINED ones that are in the vocabulary plain added
/// tokens; both are matched whole in the text and never normalized.
pub(super) fn add_gguf_special_tokens(
    inner: &mut Tokenizer,
    tokens: &[&str],
    types: &[i32],
    control_ok: impl Fn(&str) -> bool,
) {
    let typed = |ty: i32| tokens.iter().zip(types).filter(move |(_, t)| **t == ty);
    let control: Vec<AddedToken> = typed(TOKEN_TYPE_CONTROL)
        .filter(|(t, _)| control_ok(t))
        .map(|(t, _)| AddedToken::from(*t, true).normalized(false))
        .collect();
    inner.add_special_tokens(&control);
    let user: Vec<AddedToken> = typed(TOKEN_TYPE_USER_DEFINED)
        .filter(|(t, _)| inner.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(*t, false).normalized(false))
        .collect();
    inner.add_tokens(&user);
}
