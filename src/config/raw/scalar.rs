//! The values that the raw types share: text and integers with their
//! spans, and the keys written either as an integer or as a string.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// A value that may be written either as an integer or as a string, such as
/// `workers = 4` / `workers = "auto"` or `max_request_body = 1048576` / `"1 MiB"`.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom("integer is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

pub type Text = Spanned<String>;
pub type Int = Spanned<i64>;
