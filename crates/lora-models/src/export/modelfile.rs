//! An Ollama `Modelfile` for an exported GGUF (`ollama create NAME -f Modelfile`).
//!
//! Ollama does not run Jinja chat templates; a Modelfile carries its own in Go's `text/template`
//! syntax (Ollama `docs/modelfile.md`: `FROM`, `TEMPLATE`, `SYSTEM`, `PARAMETER stop`). The
//! template is derived by *probing* the model's Jinja template, not by parsing it: it is rendered
//! on marker conversations, and if every rendering is exactly ChatML
//! (`<|im_start|>role\ncontent<|im_end|>\n` per message, `<|im_start|>assistant\n` to prompt),
//! the Modelfile gets the ChatML template in Go syntax. A system prompt that the Jinja template
//! inserts when the conversation has none (SmolLM2's "You are a helpful AI assistant named
//! SmolLM…") becomes the Modelfile's `SYSTEM`, which Ollama inserts in the same case. Any other
//! template is left out with a comment saying so (Ollama then sends raw prompts).

use crate::tokenizer::{ChatMessage, TextTokenizer};

/// Marker texts that cannot occur in a template's own text.
const USER: &str = "\u{1}user-marker\u{1}";
const USER2: &str = "\u{1}second-user-marker\u{1}";
const SYSTEM: &str = "\u{1}system-marker\u{1}";
const ASSISTANT: &str = "\u{1}assistant-marker\u{1}";

/// ChatML's start and end tokens.
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// The ChatML template in Ollama's Go-template syntax: every message (Ollama puts the `SYSTEM`
/// prompt first when the conversation has none), then the assistant header to generate from.
const CHATML_GO_TEMPLATE: &str = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

/// What the chat template turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// ChatML, with the system prompt the template inserts when there is none (if any).
    ChatMl {
        /// The default system prompt.
        default_system: Option<String>,
    },
    /// No template, or one that is not ChatML.
    Unknown,
}

/// ChatML text of `messages`, with the generation header.
fn chatml(messages: &[(&str, &str)]) -> String {
    let mut s: String = messages
        .iter()
        .map(|(role, content)| format!("{IM_START}{role}\n{content}{IM_END}\n"))
        .collect();
    s.push_str(IM_START);
    s.push_str("assistant\n");
    s
}

/// Probes `tok`'s chat template (see the module docs).
pub fn detect_chat_format(tok: &TextTokenizer) -> ChatFormat {
    let render = |m: &[ChatMessage]| tok.apply_chat_template(m, true).ok();
    let with_system = [
        ChatMessage::system(SYSTEM),
        ChatMessage::user(USER),
        ChatMessage::assistant(ASSISTANT),
        ChatMessage::user(USER2),
    ];
    let expected = chatml(&[
        ("system", SYSTEM),
        ("user", USER),
        ("assistant", ASSISTANT),
        ("user", USER2),
    ]);
    if render(&with_system).as_deref() != Some(expected.as_str()) {
        return ChatFormat::Unknown;
    }
    let Some(alone) = render(&[ChatMessage::user(USER)]) else {
        return ChatFormat::Unknown;
    };
    let turn = chatml(&[("user", USER)]);
    if alone == turn {
        return ChatFormat::ChatMl {
            default_system: None,
        };
    }
    // A default system turn in front: `<|im_start|>system\n{text}<|im_end|>\n` + the user turn.
    let default_system = alone
        .strip_suffix(turn.as_str())
        .and_then(|head| head.strip_prefix(&format!("{IM_START}system\n")))
        .and_then(|head| head.strip_suffix(&format!("{IM_END}\n")))
        .filter(|text| !text.contains(IM_START) && !text.contains(IM_END))
        .map(str::to_owned);
    match default_system {
        Some(text) => ChatFormat::ChatMl {
            default_system: Some(text),
        },
        None => ChatFormat::Unknown,
    }
}

/// Quotes `text` for a Modelfile's `"""…"""` block (it may not contain `"""`).
fn triple_quoted(text: &str) -> String {
    format!("\"\"\"{}\"\"\"", text.replace("\"\"\"", "\"\" \""))
}

/// The Modelfile for `gguf_file_name` (a path relative to the Modelfile, e.g. `model.gguf`),
/// with the template, system prompt and stop tokens of `tok`'s chat format.
pub fn modelfile(gguf_file_name: &str, tok: &TextTokenizer) -> String {
    let mut out = format!(
        "# Ollama Modelfile written by burn-lora: ollama create NAME -f Modelfile\nFROM ./{gguf_file_name}\n"
    );
    match detect_chat_format(tok) {
        ChatFormat::ChatMl { default_system } => {
            out.push_str(&format!("TEMPLATE {}\n", triple_quoted(CHATML_GO_TEMPLATE)));
            if let Some(system) = default_system {
                out.push_str(&format!("SYSTEM {}\n", triple_quoted(&system)));
            }
            out.push_str(&format!(
                "PARAMETER stop \"{IM_START}\"\nPARAMETER stop \"{IM_END}\"\n"
            ));
        }
        ChatFormat::Unknown => {
            out.push_str(
                "# The model's chat template is not ChatML and was not translated to Ollama's\n# template syntax; add a TEMPLATE line by hand (see Ollama's docs/template.md).\n",
            );
            if let Some(eos) = tok.eos_id().and_then(|id| tok.token_text(id)) {
                out.push_str(&format!(
                    "PARAMETER stop \"{}\"\n",
                    eos.replace('"', "\\\"")
                ));
            }
        }
    }
    out
}
