//! TOML text -> [`RawConfig`], collecting every problem it can.
//!
//! serde stops at the first error, so the document is parsed once into a
//! spanned tree and each section, and each element of each array, is
//! deserialized on its own. A typo in the first route then does not hide an
//! unknown key in the third upstream.

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::Problem;
use super::raw::RawConfig;

const SECTIONS: &str = "`runtime`, `admin`, `access_log`, `listeners`, `routes` or `upstreams`";

/// Parses `text`; `None` when the TOML itself is broken (nothing else can be
/// trusted then). Problems found in sections that parse are appended to `problems`.
pub fn parse(text: &str, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        problems.extend(syntax.into_iter().map(|e| from_toml(&e, 0..0)));
        return None;
    }
    let mut raw = RawConfig::default();
    for (key, value) in doc.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "runtime" => {
                if let Some(v) = one(value, problems) {
                    raw.runtime = v;
                }
            }
            "admin" => raw.admin = one(value, problems),
            "access_log" => raw.access_log = one(value, problems),
            "listeners" => raw.listeners = many(value, "listeners", problems),
            "routes" => raw.routes = many(value, "routes", problems),
            "upstreams" => raw.upstreams = many(value, "upstreams", problems),
            other => problems.push(Problem::new(
                key_span,
                format!("unknown section `{other}`, expected {SECTIONS}"),
            )),
        }
    }
    Some(raw)
}

/// Deserializes one table. When a key is at fault (unknown, or a value of the
/// wrong kind) it is reported, dropped, and the table tried again, so every
/// bad key in the table is reported, not just the first.
fn one<T: DeserializeOwned>(
    mut value: Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let span = value.span();
    loop {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return Some(v),
            Err(e) => {
                problems.push(from_toml(&e, span.clone()));
                let at = e.span()?.start;
                let DeValue::Table(table) = value.get_mut() else {
                    return None;
                };
                let key = table
                    .iter()
                    .find(|(k, v)| k.span().contains(&at) || v.span().contains(&at))
                    .map(|(k, _)| k.clone())?;
                table.remove(&key);
            }
        }
    }
}

fn many<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    section: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Spanned<T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.push(Problem::new(
            span,
            format!("`{section}` must be an array of tables, written [[{section}]]"),
        ));
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let span = item.span();
            one(item.clone(), problems).map(|v| Spanned::new(span, v))
        })
        .collect()
}

/// A toml error as a problem; `fallback` is used when the error has no span.
fn from_toml(error: &toml::de::Error, fallback: std::ops::Range<usize>) -> Problem {
    Problem::new(error.span().unwrap_or(fallback), error.message().to_owned())
}
