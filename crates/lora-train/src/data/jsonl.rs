//! JSONL datasets, one example per line, in the shapes fine-tuning data already comes in
//! (TRL, mlx-lm, axolotl, LLaMA-Factory), detected per line:
//!
//! - chat (OpenAI / Hugging Face): `{"messages": [{"role": "system", "content": "..."},
//!   {"role": "user", ...}, {"role": "assistant", ...}, ...]}` — an optional system message,
//!   then any number of turns ending with the assistant's;
//! - ShareGPT: `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}`
//!   (`from`: `system`, `human`, `gpt`); either array takes either pair of keys and either set
//!   of role names, as exports mix them;
//! - prompt/completion: `{"prompt": "...", "completion": "..."}`;
//! - Alpaca: `{"instruction": "...", "input": "...", "output": "..."}` (`input` and a `system`
//!   string optional) — one user turn, `instruction` and `input` joined by a newline, answered
//!   by `output`, as LLaMA-Factory's `AlpacaDatasetConverter` builds it (`data/converter.py`);
//! - plain text: `{"text": "..."}`.
//!
//! Other keys on a line (`"id"`, `"source"`, ...) are ignored. Blank lines are skipped. A line
//! that fits none of the shapes, or more than one, is an error naming the file, the 1-based line
//! number and the shapes it could have been.

use std::path::Path;

use lora_models::tokenizer::ChatMessage;
use serde_json::{Map, Value};

use super::{DataError, Sample};

/// Reads a JSONL dataset.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read; [`DataError::Malformed`] naming the file and
/// line of the first bad line (invalid UTF-8 included); [`DataError::Empty`] if it holds no
/// examples.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Sample>, DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Name the line of the first invalid byte, as for any other bad line.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        DataError::Malformed {
            source_name: path.display().to_string(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "not valid UTF-8; save the file as UTF-8".into(),
        }
    })?;
    samples_from_jsonl(&text, &path.display().to_string())
}

/// Parses JSONL text; `source_name` (a file name) is what errors call it.
///
/// # Errors
/// As [`read_jsonl`], without the I/O error.
pub fn samples_from_jsonl(text: &str, source_name: &str) -> Result<Vec<Sample>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |message: String| DataError::Malformed {
            source_name: source_name.to_string(),
            line: i + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
        samples.push(parse_example(&value).map_err(malformed)?);
    }
    if samples.is_empty() {
        return Err(DataError::Empty {
            source_name: source_name.to_string(),
        });
    }
    Ok(samples)
}

/// The shapes a line can have, for error messages.
const SHAPES: &str = "{\"messages\": [...]}, {\"conversations\": [...]} (ShareGPT), {\"prompt\", \"completion\"}, {\"instruction\", \"output\"} (Alpaca) or {\"text\"}";

/// One line's JSON → a [`Sample`], or what is wrong with it.
fn parse_example(value: &Value) -> Result<Sample, String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind(value)));
    };
    let has = |key: &str| obj.contains_key(key);
    let shapes: Vec<&str> = [
        ("messages", has("messages")),
        ("conversations", has("conversations")),
        ("prompt/completion", has("prompt") || has("completion")),
        ("instruction/output", has("instruction") || has("output")),
        ("text", has("text")),
    ]
    .into_iter()
    .filter_map(|(name, found)| found.then_some(name))
    .collect();
    match shapes[..] {
        ["messages"] => parse_chat(&obj["messages"], "messages").map(Sample::Chat),
        ["conversations"] => parse_chat(&obj["conversations"], "conversations").map(Sample::Chat),
        ["prompt/completion"] => parse_completion(obj),
        ["instruction/output"] => parse_alpaca(obj),
        ["text"] => {
            let text = string_field(obj, "text")?;
            if text.is_empty() {
                return Err("\"text\" is empty".into());
            }
            Ok(Sample::Text(text))
        }
        [] => Err(format!(
            "unknown example shape (keys: {}); expected {SHAPES}",
            obj.keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "more than one example shape on one line ({}); use only one of {SHAPES}",
            shapes.join(", ")
        )),
    }
}

/// The three roles a training conversation has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// OpenAI / Hugging Face `role` values and ShareGPT `from` values (FastChat's
    /// `human`/`gpt`/`system`); exports of either kind mix the two sets of names.
    fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" | "human" => Some(Role::User),
            "assistant" | "gpt" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// A `messages` (`role`/`content`) or ShareGPT `conversations` (`from`/`value`) array → chat
/// messages; `key` names the array in errors. Each message may use either pair of keys and
/// either set of role names.
fn parse_chat(value: &Value, key: &str) -> Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = value else {
        return Err(format!("\"{key}\" must be an array, found {}", kind(value)));
    };
    if items.is_empty() {
        return Err(format!(
            "\"{key}\" is empty; give at least a user and an assistant message"
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(format!(
                "{key}[{j}] must be an object with \"role\" and \"content\" (or ShareGPT's \"from\" and \"value\"), found {}",
                kind(item)
            ));
        };
        let (role_key, content_key) = if m.contains_key("from") {
            ("from", "value")
        } else {
            ("role", "content")
        };
        let at = |e: String| format!("{key}[{j}]: {e}");
        let name = string_field(m, role_key).map_err(at)?;
        let role = Role::parse(&name).ok_or_else(|| {
            at(format!(
                "unknown {role_key} {name:?}; use \"system\", \"user\" or \"assistant\" (ShareGPT: \"system\", \"human\" or \"gpt\")"
            ))
        })?;
        let content = string_field(m, content_key).map_err(at)?;
        messages.push(ChatMessage::new(role.name(), content));
    }
    match messages.last() {
        Some(last) if last.role == Role::Assistant.name() => Ok(messages),
        Some(last) => Err(format!(
            "the last message has role {:?}; a conversation must end with the assistant's answer (the loss is computed on every assistant turn)",
            last.role
        )),
        None => Err(format!("\"{key}\" is empty")),
    }
}

/// Alpaca `{"instruction", "input", "output"}` (+ optional `"system"`) → a chat: one user turn
/// (the instruction, then a newline and the input when there is one) and the answer.
fn parse_alpaca(obj: &Map<String, Value>) -> Result<Sample, String> {
    let instruction = string_field(obj, "instruction")?;
    let output = string_field(obj, "output")?;
    if output.is_empty() {
        return Err("\"output\" is empty; there is nothing to train on".into());
    }
    let optional = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => string_field(obj, key),
    };
    let input = optional("input")?;
    let system = optional("system")?;
    let user = if input.is_empty() {
        instruction
    } else {
        format!("{instruction}\n{input}")
    };
    let mut messages = Vec::with_capacity(3);
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    messages.push(ChatMessage::user(user));
    messages.push(ChatMessage::assistant(output));
    Ok(Sample::Chat(messages))
}

fn parse_completion(obj: &Map<String, Value>) -> Result<Sample, String> {
    let prompt = string_field(obj, "prompt")?;
    let completion = string_field(obj, "completion")?;
    if completion.is_empty() {
        return Err("\"completion\" is empty; there is nothing to train on".into());
    }
    Ok(Sample::Completion { prompt, completion })
}

/// `obj[key]` as a string, or an error saying what was found instead.
fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{key:?} must be a string, found {}", kind(other))),
        None => Err(format!("missing {key:?}")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
