//! Rendering Hugging Face chat templates with minijinja.
//!
//! transformers renders `chat_template` with Jinja2 (`utils/chat_template_utils.py`,
//! `_compile_jinja_template`): `trim_blocks` and `lstrip_blocks` on, a `raise_exception`
//! global, a `tojson` filter without HTML escaping, and `strftime_now`. The context holds
//! `messages`, `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, ...).
//! minijinja-contrib's `pycompat` is not available, so the Python string/dict methods templates
//! commonly call (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`, ...) are
//! provided here by an unknown-method callback.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

/// One chat turn, as in transformers' `messages` list (`{"role": ..., "content": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"` (templates may accept others, e.g. `"tool"`).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `"system"` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `"user"` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `"assistant"` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Renders `template` the way transformers' `apply_chat_template(tokenize=False)` does.
/// `special` holds the special-token variables, e.g. `("bos_token", "<|im_start|>")`.
pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special: &[(&str, String)],
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.set_unknown_method_callback(python_method);
    let tmpl = env.template_from_str(template)?;
    let mut ctx: std::collections::BTreeMap<&str, Value> = special
        .iter()
        .map(|(k, v)| (*k, Value::from(v.as_str())))
        .collect();
    ctx.insert("messages", Value::from_serialize(messages));
    ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
    tmpl.render(ctx)
}

/// `raise_exception(message)`: templates call it to reject, e.g., an unsupported role order.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// i.e. Python's `", "` / `": "` separators and no HTML escaping (minijinja's own escapes `<`).
/// Map keys come out sorted (minijinja maps are ordered that way without `preserve_order`).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, PyCompact,
        )),
    };
    written.map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

/// serde_json formatting with Python `json.dumps`' default separators.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `strftime_now(format)`: the current UTC time formatted with `%Y %m %d %H %M %S %b %B %%`
/// (what Llama 3 templates use for "Today Date"); other directives are an error.
fn strftime_now(format: String) -> Result<Value, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = secs.div_euclid(86_400) + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let sod = secs.rem_euclid(86_400);
    let name = MONTHS.get((month - 1) as usize).copied().unwrap_or("?");
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('b') => out.push_str(name.get(..3).unwrap_or(name)),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            other => {
                let msg = format!(
                    "strftime_now: unsupported directive %{}",
                    other.unwrap_or(' ')
                );
                return Err(Error::new(ErrorKind::InvalidOperation, msg));
            }
        }
    }
    Ok(Value::from(out))
}

/// The Python `str` and `dict` methods chat templates call, mapped onto minijinja values.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let arg = |i: usize| args.get(i).and_then(Value::as_str);
    if let Some(s) = value.as_str() {
        let chars: Option<Vec<char>> = arg(0).map(|c| c.chars().collect());
        let trim = |c: char| {
            chars
                .as_ref()
                .map_or(c.is_whitespace(), |set| set.contains(&c))
        };
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(trim)),
            "lstrip" => Value::from(s.trim_start_matches(trim)),
            "rstrip" => Value::from(s.trim_end_matches(trim)),
            "startswith" => Value::from(arg(0).is_some_and(|p| s.starts_with(p))),
            "endswith" => Value::from(arg(0).is_some_and(|p| s.ends_with(p))),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "replace" => match (arg(0), arg(1)) {
                (Some(from), Some(to)) => Value::from(s.replace(from, to)),
                _ => {
                    return Err(Error::new(
                        ErrorKind::MissingArgument,
                        "str.replace(old, new)",
                    ));
                }
            },
            "split" => match arg(0) {
                Some(sep) => Value::from_serialize(s.split(sep).collect::<Vec<_>>()),
                None => Value::from_serialize(s.split_whitespace().collect::<Vec<_>>()),
            },
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let items: Result<Vec<Value>, Error> =
                    value.try_iter()?.map(|k| value.get_item(&k)).collect();
                Ok(Value::from(items?))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let found = value.get_item(&key)?;
                Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}
