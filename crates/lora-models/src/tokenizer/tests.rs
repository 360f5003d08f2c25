//! Tokenizer tests: a tiny synthetic GGUF vocabulary (no files needed), and SmolLM2's real one
//! against ids from transformers' own GGUF tokenizer
//! (`scripts/gguf_expected.py --parts tokenizer`).

use super::from_gguf::byte_to_char;
use super::*;
use crate::gguf::GgufFile;
use crate::gguf::GgufValue;
use crate::gguf::testutil::{GgufBuilder, real_model_path, smollm2_reference};

fn strs(items: &[&str]) -> GgufValue {
    GgufValue::Array(
        items
            .iter()
            .map(|s| GgufValue::String((*s).into()))
            .collect(),
    )
}

/// Vocabulary: ids 0–2 control tokens, 3 a user-defined `<think>`, then the 256 byte-level
/// characters (id 4 + byte), then merges `Ġ t`→260 (`Ġt`), `h e`→261, `Ġt he`→262 (`Ġthe`).
fn tiny_gguf(extra: impl FnOnce(GgufBuilder) -> GgufBuilder) -> GgufFile {
    let table = byte_to_char();
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
        .map(String::from)
        .into();
    tokens.extend(table.iter().map(|c| c.to_string()));
    tokens.extend(["Ġt", "he", "Ġthe"].map(String::from));
    let mut types = vec![3, 3, 3, 4];
    types.resize(tokens.len(), 1);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let b = GgufBuilder::new()
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String("smollm".into()))
        .kv("tokenizer.ggml.tokens", strs(&tokens))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()))
        .kv("tokenizer.ggml.merges", strs(&["Ġ t", "h e", "Ġt he"]))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
        .kv("tokenizer.chat_template", GgufValue::String(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        ));
    GgufFile::from_bytes("tiny.gguf", extra(b).build()).unwrap()
}

fn byte_id(b: u8) -> u32 {
    4 + b as u32
}

#[test]
fn byte_level_bpe_applies_merges_and_keeps_special_tokens_whole() {
    let tok = TextTokenizer::from_gguf(&tiny_gguf(|b| b)).unwrap();
    assert_eq!(tok.vocab_size(), 263);
    assert_eq!(tok.encode(" the", false).unwrap(), [262]);
    assert_eq!(
        tok.encode("the the", false).unwrap(),
        [byte_id(b't'), 261, 262]
    );
    assert_eq!(
        tok.encode("<|im_start|>x<think>", false).unwrap(),
        [1, byte_id(b'x'), 3]
    );
    assert_eq!(
        tok.encode("é", false).unwrap(),
        [byte_id(0xC3), byte_id(0xA9)]
    );
    assert_eq!(tok.token_text(262).as_deref(), Some("Ġthe"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
}

#[test]
fn decode_inverts_encode_and_can_skip_special_tokens() {
    let tok = TextTokenizer::from_gguf(&tiny_gguf(|b| b)).unwrap();
    let text = "<|im_start|>the théâtre\n\t 🤗<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.decode_skip_special(&ids).unwrap(), "the théâtre\n\t 🤗");
}

#[test]
fn bos_is_added_only_when_the_file_says_so() {
    let tok = TextTokenizer::from_gguf(&tiny_gguf(|b| b)).unwrap();
    assert!(!tok.add_bos());
    assert_eq!(tok.encode(" the", true).unwrap(), [262]);
    let with_bos = tiny_gguf(|b| b.kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)));
    let tok = TextTokenizer::from_gguf(&with_bos).unwrap();
    assert_eq!(tok.encode(" the", true).unwrap(), [1, 262]);
    assert_eq!(tok.encode(" the", false).unwrap(), [262]);
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let mut b = GgufBuilder::new()
        .kv("tokenizer.ggml.model", GgufValue::String("t5".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a"]));
    let f = GgufFile::from_bytes("unigram.gguf", b.build()).unwrap();
    assert!(matches!(
        TextTokenizer::from_gguf(&f),
        Err(TokenizerError::UnsupportedModel { .. })
    ));
    b = GgufBuilder::new()
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a", "b"]))
        .kv("tokenizer.ggml.merges", strs(&["ab"]));
    let f = GgufFile::from_bytes("m.gguf", b.build()).unwrap();
    let e = TextTokenizer::from_gguf(&f).unwrap_err();
    assert!(
        matches!(e, TokenizerError::BadMerge { index: 0, .. }),
        "{e}"
    );
    b = GgufBuilder::new()
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a", "b"]))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(7));
    let f = GgufFile::from_bytes("e.gguf", b.build()).unwrap();
    let e = TextTokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("eos_token_id") && e.contains("e.gguf"), "{e}");
    let f = GgufFile::from_bytes("none.gguf", GgufBuilder::new().build()).unwrap();
    let e = TextTokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn chat_template_renders_messages_and_generation_prompt() {
    let tok = TextTokenizer::from_gguf(&tiny_gguf(|b| b)).unwrap();
    let msgs = [ChatMessage::user("hi"), ChatMessage::assistant("yo")];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.apply_chat_template(&msgs[..1], false).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n"
    );
}

#[test]
fn chat_template_supports_hf_template_idioms() {
    let mut tok = TextTokenizer::from_gguf(&tiny_gguf(|b| b)).unwrap();
    // raise_exception, bos/eos variables, loop.first/last, python string methods, tojson,
    // trim_blocks/lstrip_blocks (the newlines after block tags and the indentation vanish;
    // transformers' render_jinja_template gives the same string).
    tok.set_chat_template(Some(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}\n\
         {{ raise_exception('no system') }}\n\
         {% endif %}\n\
         {% for m in messages %}\n    \
         {% if loop.first %}[{% endif %}{{ m.content.strip().upper() }}{% if not loop.last %}|{% else %}]{% endif %}\n\
         {% endfor %}\n\
         {{ {'a': '<b>', 'c': [1, 2]} | tojson }}{{ eos_token }}"
            .into(),
    ));
    let msgs = [ChatMessage::user("  hi "), ChatMessage::assistant("yo")];
    assert_eq!(
        tok.apply_chat_template(&msgs, false).unwrap(),
        "<|im_start|>[HI|YO]{\"a\": \"<b>\", \"c\": [1, 2]}<|im_end|>"
    );
    let e = tok
        .apply_chat_template(&[ChatMessage::system("s")], false)
        .unwrap_err();
    assert!(e.to_string().contains("no system"), "{e}");
    // Python json.dumps(x, indent=2) layout; dict.items()/get and str.split/startswith.
    tok.set_chat_template(Some(
        "{{ {'k': [1]} | tojson(indent=2) }}|{% for k, v in {'x': 1}.items() %}{{ k }}={{ v }}{% endfor %}|\
         {{ {'x': 1}.get('y', 'none') }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'abc'.startswith('ab') }}"
            .into(),
    ));
    assert_eq!(
        tok.apply_chat_template(&msgs, false).unwrap(),
        "{\n  \"k\": [\n    1\n  ]\n}|x=1|none|a+b|True"
    );
    tok.set_chat_template(None);
    assert!(matches!(
        tok.apply_chat_template(&msgs, false),
        Err(TokenizerError::NoChatTemplate)
    ));
}

#[test]
fn save_hf_then_from_hf_dir_round_trips() {
    let with_bos = tiny_gguf(|b| b.kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)));
    let tok = TextTokenizer::from_gguf(&with_bos).unwrap();
    let dir = std::env::temp_dir().join(format!("tok-roundtrip-{}", std::process::id()));
    tok.save_hf(&dir).unwrap();
    let back = TextTokenizer::from_hf_dir(&dir);
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json"));
    std::fs::remove_dir_all(&dir).ok();
    let back = back.unwrap();
    let text = "<|im_start|>the théâtre<think> 🤗";
    assert_eq!(
        back.encode(text, true).unwrap(),
        tok.encode(text, true).unwrap()
    );
    assert_eq!(
        (back.bos_id(), back.eos_id(), back.add_bos()),
        (Some(1), Some(2), true)
    );
    assert_eq!(back.chat_template(), tok.chat_template());
    assert!(config.unwrap().contains("\"eos_token\": \"<|im_end|>\""));
    let e = TextTokenizer::from_hf_dir("/nonexistent-dir")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-dir/tokenizer.json"), "{e}");
}

#[rustfmt::skip]
/// transformers 5.24 `AutoTokenizer.from_pretrained(dir, gguf_file=...)` on SmolLM2-135M-Instruct.
const SMOLLM2_IDS: &[(&str, &[u32])] = &[
    ("The capital of France is", &[504, 3575, 282, 4649, 314]),
    ("Héllo wörld — ça va? 日本語 🤗", &[56, 2756, 31394, 267, 29989, 400, 1841, 5549, 117, 81, 46316, 47, 17097, 241, 115, 40993, 179, 120, 248, 15107, 114, 241]),
    ("12345 and 2024, 3.14159", &[33, 34, 35, 36, 37, 284, 216, 34, 32, 34, 36, 28, 216, 35, 30, 33, 36, 33, 37, 41]),
    ("line1\nline2\n\n  indented\ttab", &[1311, 33, 198, 1311, 34, 8866, 641, 6574, 197, 15999]),
    ("<|im_start|>user\nHi<|im_end|>\n", &[1, 4093, 198, 26843, 2, 198]),
    (" leading space", &[2899, 1898]),
    ("   ", &[333]),
    ("I don't think it's <|endoftext|> yet!!", &[57, 1326, 982, 1510, 357, 506, 216, 0, 2408, 10095]),
    ("def f(x):\n    return x**2  # sq\n", &[1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 15375, 198]),
];

#[test]
fn smollm2_ids_match_transformers_gguf_tokenizer() {
    let Some(path) = real_model_path() else {
        return;
    };
    let tok = TextTokenizer::from_gguf_path(path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.add_bos()),
        (Some(1), Some(2), Some(2), false)
    );
    for (text, ids) in SMOLLM2_IDS {
        assert_eq!(tok.encode(text, true).unwrap(), *ids, "{text:?}");
        assert_eq!(tok.decode(ids).unwrap(), *text);
    }
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let Some(path) = real_model_path() else {
        return;
    };
    let tok = TextTokenizer::from_gguf_path(path).unwrap();
    let msgs = [ChatMessage::user("What is 2+2?")];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let want = [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520,
        9531, 198,
    ];
    assert_eq!(tok.encode(&text, false).unwrap(), want);
    let with_system = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("What is 2+2?"),
    ];
    assert_eq!(
        tok.apply_chat_template(&with_system, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
}

#[test]
fn smollm2_matches_reference_fixture_prompts_and_round_trips() {
    let Some(path) = real_model_path() else {
        return;
    };
    let tok = TextTokenizer::from_gguf_path(path).unwrap();
    let Some(reference) = smollm2_reference() else {
        return;
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for case in reference["tokenizer_round_trips"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ids"])).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    for prompt in reference["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        if prompt["kind"] == "chat" {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(prompt["messages"].clone()).unwrap();
            let gen_prompt = prompt["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                tok.apply_chat_template(&messages, gen_prompt).unwrap(),
                text
            );
        }
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&prompt["ids"]),
            "{text:?}"
        );
    }
    let greedy = &reference["greedy_chat"];
    assert_eq!(
        tok.decode(&ids(&greedy["new_ids"])).unwrap(),
        greedy["text"].as_str().unwrap()
    );
    assert_eq!(
        tok.decode_skip_special(&ids(&greedy["new_ids"])).unwrap(),
        greedy["text_skip_special"].as_str().unwrap()
    );
}
