//! TOML text -> [`RawConfig`], collecting every problem it can.
//!
//! serde stops at the first error, so the document is parsed once into a
//! spanned tree and each section, and each element of each array, is
//! deserialized on its own. A typo in the first route then does not hide an
//! unknown key in the third upstream. Within a table, the key at fault is
//! found in the tree (however deep: a nested table, an inline table inside an
//! array), reported once, dropped, and the table tried again; what was
//! dropped is recorded in [`Dropped`] so that validation does not report its
//! consequences as new problems.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use super::error::Problem;
use super::raw::{Dropped, RawConfig};

const SECTIONS: &str = "`runtime`, `admin`, `access_log`, `resolver`, `reload_guard`, `listeners`, `routes` or `upstreams`";

/// Parses `text`; `None` when the TOML itself is broken (nothing else can be
/// trusted then). Problems found in sections that parse are appended to `problems`.
pub fn parse(text: &str, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        problems.extend(
            syntax
                .into_iter()
                .map(|e| Problem::new(e.span().unwrap_or(0..0), e.message().to_owned())),
        );
        return None;
    }
    let mut p = Parser {
        problems,
        dropped: Dropped::default(),
    };
    let mut raw = RawConfig::default();
    for (key, value) in doc.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "runtime" => {
                if let Some(v) = p.one(value, "runtime", "[runtime]") {
                    raw.runtime = v;
                }
            }
            "admin" => raw.admin = p.one(value, "admin", "[admin]"),
            "access_log" => raw.access_log = p.one(value, "access_log", "[access_log]"),
            "resolver" => raw.resolver = p.one(value, "resolver", "[resolver]"),
            "reload_guard" => raw.reload_guard = p.one(value, "reload_guard", "[reload_guard]"),
            // Nothing refers to a listener or a route by name, so which of
            // them were unreadable matters to no later check.
            "listeners" => raw.listeners = p.many(value, "listeners").0,
            "routes" => raw.routes = p.many(value, "routes").0,
            "upstreams" => {
                let (upstreams, unreadable) = p.many(value, "upstreams");
                raw.upstreams = upstreams;
                p.dropped.upstreams = unreadable;
            }
            other => p.problems.push(Problem::new(
                key_span,
                format!("unknown section `{other}`, expected {SECTIONS}"),
            )),
        }
    }
    raw.dropped = p.dropped;
    Some(raw)
}

struct Parser<'a> {
    problems: &'a mut Vec<Problem>,
    dropped: Dropped,
}

impl Parser<'_> {
    /// Deserializes one table, written `header` in the file. Each time a key
    /// is at fault (unknown, or a value of the wrong kind) it is reported,
    /// dropped from the innermost table that holds it, and the table tried
    /// again, so every bad key is reported and the rest of the table still
    /// counts. `None` when the table itself cannot be read (a required key
    /// is missing).
    fn one<T: DeserializeOwned>(
        &mut self,
        mut value: Spanned<DeValue<'_>>,
        section: &str,
        header: &str,
    ) -> Option<T> {
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            self.problems.push(Problem::new(
                value.span(),
                format!("{section}: expected a table, written {header}"),
            ));
            return None;
        }
        loop {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let span = error.span().unwrap_or_else(|| value.span());
            // A span that points nowhere in the tree blames the table itself.
            let fault = locate(&value, &span).unwrap_or(Fault {
                path: Vec::new(),
                is_key: false,
            });
            if !self.is_consequence(&error, &span) {
                self.problems.push(Problem::new(
                    span,
                    format!("{}: {}", fault.dotted(section), plain(error.message())),
                ));
            }
            // An empty path is the table itself: it cannot be read.
            let (last, parent) = fault.path.split_last()?;
            let parent = node_mut(&mut value, parent)?;
            let parent_span = parent.span();
            match (parent.get_mut(), last) {
                (DeValue::Table(table), Step::Key(key)) => {
                    table.remove(key.as_str());
                    self.dropped.keys.insert((parent_span, key.clone()));
                }
                (DeValue::Array(array), Step::Element(i)) => {
                    let items = std::mem::replace(array, DeArray::new());
                    *array = items
                        .into_iter()
                        .enumerate()
                        .filter_map(|(j, item)| (j != *i).then_some(item))
                        .collect();
                    self.dropped.elements.insert(parent_span);
                }
                _ => return None,
            }
        }
    }

    /// A required key reported missing because it was dropped here after
    /// its own problem was reported: the table goes, nothing more is said.
    fn is_consequence(&self, error: &toml::de::Error, table: &Range<usize>) -> bool {
        // serde's wording for a missing field (`de::Error::missing_field`).
        let missing = error
            .message()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        missing.is_some_and(|key| self.dropped.key(table, key))
    }

    /// Each element of the array of tables `section` that can be read, and
    /// the names (where readable) of those that cannot.
    fn many<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        section: &str,
    ) -> (Vec<Spanned<T>>, Vec<Option<String>>) {
        let span = value.span();
        let header = format!("[[{section}]]");
        let DeValue::Array(items) = value.into_inner() else {
            self.problems.push(Problem::new(
                span,
                format!("`{section}` must be an array of tables, written {header}"),
            ));
            return (Vec::new(), Vec::new());
        };
        let mut read = Vec::new();
        let mut unreadable = Vec::new();
        for item in items {
            let span = item.span();
            let name = match item.get_ref() {
                DeValue::Table(t) => t
                    .get("name")
                    .and_then(|n| n.get_ref().as_str())
                    .map(str::to_owned),
                _ => None,
            };
            match self.one(item, section, &header) {
                Some(v) => read.push(Spanned::new(span, v)),
                None => unreadable.push(name),
            }
        }
        (read, unreadable)
    }
}

/// One step down the tree: a key of a table, or an element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Element(usize),
}

/// Where in a table an error's span points: at a key (an unknown one) or at
/// a value (of the wrong kind, or a table missing a key).
#[derive(Debug, PartialEq, Eq)]
struct Fault {
    path: Vec<Step>,
    is_key: bool,
}

impl Fault {
    /// The dotted key the message names, as validation's messages do:
    /// `upstreams.servers.weight` for a value; for an unknown key, the table
    /// it was found in (`upstreams.servers`), since the message names the key.
    fn dotted(&self, section: &str) -> String {
        let keys = if self.is_key {
            &self.path[..self.path.len().saturating_sub(1)]
        } else {
            &self.path[..]
        };
        keys.iter()
            .fold(section.to_owned(), |dotted, step| match step {
                Step::Key(k) => format!("{dotted}.{k}"),
                Step::Element(_) => dotted,
            })
    }
}

/// The deepest key or value in `value` whose span is exactly `span`.
/// Deepest first, because an array of tables and its first table share a span.
/// Matched exactly, not by containment: a `[table]` written under its own
/// header spans only that header, not its keys.
fn locate(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<Fault> {
    let inner = |step: Step, child: &Spanned<DeValue<'_>>| {
        locate(child, span).map(|mut fault| {
            fault.path.insert(0, step.clone());
            fault
        })
    };
    let found = match value.get_ref() {
        DeValue::Table(table) => table.iter().find_map(|(key, child)| {
            let step = Step::Key(key.get_ref().to_string());
            if key.span() == *span {
                Some(Fault {
                    path: vec![step],
                    is_key: true,
                })
            } else {
                inner(step, child)
            }
        }),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, child)| inner(Step::Element(i), child)),
        _ => None,
    };
    found.or_else(|| {
        (value.span() == *span).then(|| Fault {
            path: Vec::new(),
            is_key: false,
        })
    })
}

fn node_mut<'v, 'i>(
    value: &'v mut Spanned<DeValue<'i>>,
    path: &[Step],
) -> Option<&'v mut Spanned<DeValue<'i>>> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let child = match (value.get_mut(), first) {
        (DeValue::Table(table), Step::Key(key)) => table.get_mut(key.as_str())?,
        (DeValue::Array(array), Step::Element(i)) => array.get_mut(*i)?,
        _ => return None,
    };
    node_mut(child, rest)
}

/// serde's messages name Rust types where a reader of the file thinks in
/// TOML's; these are the ones our raw types can produce.
fn plain(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        // toml's answer for an enum given something other than a string.
        .replace("wanted string or table", "invalid type, expected a string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        parse(text, &mut problems).expect("valid TOML");
        problems
            .into_iter()
            .map(|p| (text[p.span].to_owned(), p.message))
            .collect()
    }

    #[test]
    fn a_fault_deep_inside_a_table_is_found_by_its_exact_span() {
        let text = "[[u]]\nservers = [{ addr = \"a\" }, { addr = \"b\", wieght = 2 }]\n";
        let (doc, _) = DeTable::parse_recoverable(text);
        let doc = Spanned::new(0..text.len(), DeValue::Table(doc.into_inner()));
        let at = text.find("wieght").expect("in text");
        let fault = locate(&doc, &(at..at + "wieght".len())).expect("found");
        let key = |k: &str| Step::Key(k.to_owned());
        assert_eq!(
            fault.path,
            [
                key("u"),
                Step::Element(0),
                key("servers"),
                Step::Element(1),
                key("wieght")
            ]
        );
        assert!(fault.is_key);
        assert_eq!(fault.dotted("x"), "x.u.servers");
    }

    #[test]
    fn every_unknown_key_of_a_nested_table_is_reported_once() {
        let text = "[[upstreams]]\nname = \"web\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n\
                    [upstreams.health_check]\nintervl = \"2s\"\ntimout = \"1s\"\ninterval = 5\n";
        let got = problems(text);
        let keys: Vec<&str> = got.iter().map(|(at, _)| at.as_str()).collect();
        assert_eq!(keys, ["5", "intervl", "timout"], "{got:?}");
        assert!(
            got[0]
                .1
                .starts_with("upstreams.health_check.interval: invalid type")
        );
        assert!(
            got[1]
                .1
                .starts_with("upstreams.health_check: unknown field `intervl`")
        );
    }

    #[test]
    fn a_required_key_dropped_for_its_own_problem_is_not_also_missing() {
        let text = "[[upstreams]]\nname = \"web\"\nservers = \"127.0.0.1:1\"\n";
        let mut problems = Vec::new();
        let raw = parse(text, &mut problems).expect("valid TOML");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].message,
            "upstreams.servers: invalid type: string \"127.0.0.1:1\", expected an array"
        );
        assert!(raw.upstreams.is_empty());
        assert_eq!(raw.dropped.upstreams, [Some("web".to_owned())]);
    }

    #[test]
    fn a_table_missing_a_required_key_is_dropped_from_its_array_and_noted() {
        let text = "[[upstreams]]\nname = \"web\"\nservers = [{ weight = 2 }]\n";
        let mut problems = Vec::new();
        let raw = parse(text, &mut problems).expect("valid TOML");
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages, ["upstreams.servers: missing field `addr`"]);
        let servers = &raw.upstreams[0].get_ref().servers;
        assert!(servers.get_ref().is_empty());
        assert!(raw.dropped.elements.contains(&servers.span()));
    }
}
