//! `corral schema`: the config file's JSON Schema, checked by a real
//! validator (the `jsonschema` crate, draft 7) against the configs corral
//! ships and documents, and against misspelt keys it must refuse.
//!
//! Documented configs: every ```` ```toml ```` block in README.md and
//! docs/*.md. A block is either a whole file (its first table is a section
//! such as `[runtime]` or `[[upstreams]]`), validated as written, or a
//! fragment that opens on a table inside one element of `[[listeners]]` or
//! `[[upstreams]]` (`[listeners.tls.acme]`, `[upstreams.tls]`), validated
//! after the smallest such element that makes it a file. A block of any
//! other kind fails the test, so a new example is never skipped unseen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What a fragment opening on `[SECTION.…]` is placed after.
const WRAPPERS: [(&str, &str); 2] = [
    (
        "listeners",
        "[[listeners]]\nname = \"doc\"\nlisten = \"127.0.0.1:8080\"\n",
    ),
    (
        "upstreams",
        "[[upstreams]]\nname = \"doc\"\nservers = [{ addr = \"127.0.0.1:9001\" }]\n",
    ),
];

/// The file's sections, as `corral check` names them.
const SECTIONS: [&str; 8] = [
    "runtime",
    "admin",
    "access_log",
    "resolver",
    "reload_guard",
    "listeners",
    "routes",
    "upstreams",
];

fn schema() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("schema")
        .output()
        .expect("corral runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("corral schema prints JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&schema()).expect("a valid draft 7 schema")
}

/// The validator's complaints about `toml`, one a line with where each is.
fn complaints(validator: &jsonschema::Validator, toml: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let json = serde_json::to_value(table).expect("TOML converts to JSON");
    validator
        .iter_errors(&json)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

/// Every ```toml block in `file`: the line its text starts on, and the text.
fn toml_blocks(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_start().starts_with("```toml") => open = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks
}

/// The block as a whole file: as written, or after its wrapper.
fn as_file(block: &str) -> Result<String, String> {
    let first = block
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .ok_or("no table header")?;
    let name = first.trim_start_matches('[');
    let section = name.split(['.', ']']).next().unwrap_or_default();
    if !SECTIONS.contains(&section) {
        return Err(format!("`{first}` is not a section of the config"));
    }
    if name.split(']').next().unwrap_or_default().contains('.') {
        let (_, wrapper) = WRAPPERS
            .iter()
            .find(|(s, _)| *s == section)
            .ok_or_else(|| format!("no wrapper for a fragment opening on `{first}`"))?;
        return Ok(format!("{wrapper}{block}"));
    }
    Ok(block.to_owned())
}

#[test]
fn the_schema_is_draft_7_and_valid_by_its_meta_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::draft7::meta::validate(&schema).expect("valid by draft 7's meta-schema");
}

#[test]
fn the_shipped_config_is_valid() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("config/corral.toml")).unwrap();
    let found = complaints(&validator(), &text);
    assert!(
        found.is_empty(),
        "config/corral.toml:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_toml_example_in_the_docs_is_valid() {
    let validator = validator();
    let mut files = vec![Path::new(ROOT).join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let name = file.strip_prefix(ROOT).unwrap().display();
        for (line, block) in toml_blocks(file) {
            let found = match as_file(&block) {
                Ok(text) => complaints(&validator, &text),
                Err(why) => vec![why],
            };
            checked += 1;
            if !found.is_empty() {
                failures.push(format!("{name}:{line}:\n  {}", found.join("\n  ")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // README's example, and docs' ACME, sticky, DNS and upstream TLS ones at least.
    assert!(checked >= 5, "only {checked} ```toml blocks found");
}

#[test]
fn a_misspelt_section_is_refused_by_name() {
    let found = complaints(
        &validator(),
        "[[listners]]\nname = \"public\"\nlisten = \"0.0.0.0:8080\"\n",
    );
    assert!(
        found.iter().any(|c| c.contains("listners")),
        "nothing names `listners`: {found:?}"
    );
}

#[test]
fn a_misspelt_key_inside_an_upstream_is_refused_by_name() {
    let found = complaints(
        &validator(),
        "[[upstreams]]\nname = \"api\"\nservers = [{ addr = \"127.0.0.1:9001\" }]\n\
         [upstreams.helth_check]\npath = \"/healthz\"\n",
    );
    assert!(
        found
            .iter()
            .any(|c| c.contains("helth_check") && c.contains("/upstreams/0")),
        "nothing names `helth_check` in the upstream: {found:?}"
    );
}

#[test]
fn values_of_the_wrong_shape_are_refused() {
    let validator = validator();
    for (text, what) in [
        ("[runtime]\nworkers = \"many\"\n", "workers"),
        ("[runtime]\nshutdown_timeout = 30\n", "shutdown_timeout"),
        (
            "[[upstreams]]\nname = \"a\"\nbalance = \"fastest\"\nservers = [{ addr = \"h:1\" }]\n",
            "balance",
        ),
        (
            "[[upstreams]]\nname = \"a\"\nhash_key = \"header\"\nservers = [{ addr = \"h:1\" }]\n",
            "hash_key",
        ),
        (
            "[[upstreams]]\nname = \"a\"\nprotocol = \"h3\"\nservers = [{ addr = \"h:1\" }]\n",
            "protocol",
        ),
        (
            "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmax_request_body = true\n",
            "max_request_body",
        ),
    ] {
        let found = complaints(&validator, text);
        assert!(
            found.iter().any(|c| c.contains(what)),
            "{what} not refused by name: {found:?}\n{text}"
        );
    }
}

/// Descriptions are what an editor shows on hover: no key goes without.
#[test]
fn every_key_has_a_description() {
    fn walk(schema: &Value, at: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (key, sub) in props {
                let here = format!("{at}.{key}");
                if sub.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        for nested in ["items", "anyOf", "oneOf"] {
            match schema.get(nested) {
                Some(Value::Array(all)) => all.iter().for_each(|s| walk(s, at, missing)),
                Some(one) => walk(one, at, missing),
                None => {}
            }
        }
    }
    let mut missing = Vec::new();
    walk(&schema(), "", &mut missing);
    assert!(missing.is_empty(), "no description: {missing:?}");
}
