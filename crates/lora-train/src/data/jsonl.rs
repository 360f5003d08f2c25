//! JSONL datasets, one example per line, in the shapes TRL, mlx-lm and axolotl share:
//!
//! - chat: `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}`, the
//!   last message being the assistant's answer;
//! - prompt/completion: `{"prompt": "...", "completion": "..."}`;
//! - plain text: `{"text": "..."}`.
//!
//! Other keys on a line (`"id"`, `"source"`, ...) are ignored. Blank lines are skipped. Any other
//! line is an error naming the file and the 1-based line number.

use std::path::Path;

use lora_models::tokenizer::ChatMessage;
use serde_json::{Map, Value};

use super::{DataError, Sample};

/// Reads a JSONL dataset.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read; [`DataError::Malformed`] naming the file and
/// line of the first bad line; [`DataError::Empty`] if it holds no examples.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Sample>, DataError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
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

/// One line's JSON → a [`Sample`], or what is wrong with it.
fn parse_example(value: &Value) -> Result<Sample, String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind(value)));
    };
    let has = |key: &str| obj.contains_key(key);
    let shapes = [
        has("messages"),
        has("prompt") || has("completion"),
        has("text"),
    ];
    match shapes {
        [true, false, false] => parse_messages(&obj["messages"]).map(Sample::Chat),
        [false, true, false] => parse_completion(obj),
        [false, false, true] => {
            let text = string_field(obj, "text")?;
            if text.is_empty() {
                return Err("\"text\" is empty".into());
            }
            Ok(Sample::Text(text))
        }
        [false, false, false] => Err(format!(
            "unknown example shape (keys: {}); expected {{\"messages\": [...]}}, {{\"prompt\", \"completion\"}} or {{\"text\"}}",
            obj.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
        )),
        _ => Err("more than one example shape on one line; use only one of \"messages\", \"prompt\"/\"completion\", \"text\"".into()),
    }
}

fn parse_messages(value: &Value) -> Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "\"messages\" must be an array, found {}",
            kind(value)
        ));
    };
    if items.is_empty() {
        return Err("\"messages\" is empty; give at least a user and an assistant message".into());
    }
    let mut messages = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(format!(
                "messages[{j}] must be an object with \"role\" and \"content\", found {}",
                kind(item)
            ));
        };
        let role = string_field(m, "role").map_err(|e| format!("messages[{j}]: {e}"))?;
        let content = string_field(m, "content").map_err(|e| format!("messages[{j}]: {e}"))?;
        messages.push(ChatMessage::new(role, content));
    }
    match messages.last() {
        Some(last) if last.role == "assistant" => Ok(messages),
        Some(last) => Err(format!(
            "the last message has role {:?}; it must be the assistant's answer (the loss is computed on it)",
            last.role
        )),
        None => Err("\"messages\" is empty".into()),
    }
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
