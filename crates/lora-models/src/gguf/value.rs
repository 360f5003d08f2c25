//! GGUF metadata values and typed conversion out of them.
//!
//! Value type ids follow gguf-py `gguf/constants.py` (`GGUFValueType`); an array carries one
//! element type and may nest (an array of arrays).

/// One metadata value (`gguf_value` in the GGUF spec). All numbers are little-endian in the file.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of one value type (possibly arrays themselves).
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The GGUF spelling of this value's type, e.g. `"u32"` or `"array"`, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The GGUF value type id (gguf-py `GGUFValueType`): 0 `u8` … 8 `string`, 9 `array`,
    /// 10 `u64`, 11 `i64`, 12 `f64`.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// Appends the value's bytes as the GGUF spec lays them out (after the type id): numbers
    /// little-endian, a bool as one byte, a string as `u64 length` + UTF-8, an array as
    /// `u32 element type | u64 count | elements`. An empty array is written with element type
    /// `u32` (it has none of its own); callers check beforehand that an array's elements share one
    /// type ([`GgufValue::array_problem`]).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(x) => out.extend(x.to_le_bytes()),
            GgufValue::I8(x) => out.extend(x.to_le_bytes()),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => write_str(out, s),
            GgufValue::Array(items) => {
                out.extend(items.first().map_or(4, GgufValue::type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| i.write_to(out));
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// Why this value cannot be written, if it cannot: an array whose elements are not all of
    /// one type (GGUF arrays carry a single element type), at any nesting depth.
    pub fn array_problem(&self) -> Option<String> {
        let items = self.as_array()?;
        let first = items.first()?.type_id();
        if let Some((i, v)) = items.iter().enumerate().find(|(_, v)| v.type_id() != first) {
            return Some(format!(
                "array element {i} is {}, element 0 is {}; GGUF arrays hold one type",
                v.type_name(),
                items[0].type_name()
            ));
        }
        items.iter().find_map(GgufValue::array_problem)
    }

    /// The value as an `i128` if it is any integer type (a lossless common supertype).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as an `f64` if it is a float or an integer (integers may round above 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Appends a GGUF string: `u64 length` + UTF-8 bytes.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Conversion of a metadata value into a Rust type, used by `GgufFile::get`.
///
/// Integer targets accept every GGUF integer type whose value fits (a `u32` key written as `i32`
/// or `u64` by another converter still reads); float targets accept floats and integers; `Vec<T>`
/// accepts an array whose every element converts.
pub trait FromGgufValue<'a>: Sized {
    /// What the caller asked for, for error messages (e.g. `"u32"`, `"array of string"`).
    fn expected() -> String;
    /// The converted value, or `None` if `value` has another type or does not fit.
    fn from_gguf(value: &'a GgufValue) -> Option<Self>;
}

macro_rules! integer_from_gguf {
    ($($t:ty),*) => {$(
        impl FromGgufValue<'_> for $t {
            fn expected() -> String {
                format!("an integer that fits in {}", stringify!($t))
            }
            fn from_gguf(value: &GgufValue) -> Option<Self> {
                value.as_integer().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
integer_from_gguf!(u8, i8, u16, i16, u32, i32, u64, i64, usize);

impl FromGgufValue<'_> for f64 {
    fn expected() -> String {
        "a number".into()
    }
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_f64()
    }
}

impl FromGgufValue<'_> for f32 {
    fn expected() -> String {
        "a number".into()
    }
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::F32(v) => Some(v),
            _ => value.as_f64().map(|v| v as f32),
        }
    }
}

impl FromGgufValue<'_> for bool {
    fn expected() -> String {
        "bool".into()
    }
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl<'a> FromGgufValue<'a> for &'a str {
    fn expected() -> String {
        "string".into()
    }
    fn from_gguf(value: &'a GgufValue) -> Option<Self> {
        value.as_str()
    }
}

impl FromGgufValue<'_> for String {
    fn expected() -> String {
        "string".into()
    }
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
}

impl<'a, T: FromGgufValue<'a>> FromGgufValue<'a> for Vec<T> {
    fn expected() -> String {
        format!("array of {}", T::expected())
    }
    fn from_gguf(value: &'a GgufValue) -> Option<Self> {
        value.as_array()?.iter().map(T::from_gguf).collect()
    }
}
