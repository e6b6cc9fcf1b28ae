//! The config file's JSON Schema, for editors (taplo, Even Better TOML).
//!
//! Derived from the raw types (`raw`), which are what the file is parsed
//! into: their doc comments are the descriptions, `deny_unknown_fields`
//! becomes `additionalProperties: false`, and their `#[schemars]` attributes
//! add defaults and the shapes of values. Draft 7, the newest draft taplo's
//! validator reads; every subschema inlined, so an editor finds each key's
//! description beside its type rather than behind a `$ref`.

use schemars::Schema;
use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use serde_json::Value;

use super::raw::RawConfig;

/// The schema, as `corral schema` prints it.
pub fn schema() -> Schema {
    let generator = SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .with_transform(NoNull)
        .into_generator();
    generator.into_root_schema_for::<RawConfig>()
}

/// TOML has no null: a key left out is how a file says "the default", so an
/// optional key's schema is its value's alone, without schemars' `null`.
#[derive(Clone)]
struct NoNull;

impl Transform for NoNull {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(Value::Array(types)) = schema.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                schema.insert("type".into(), only);
            }
        }
        if let Some(Value::Array(any_of)) = schema.get_mut("anyOf") {
            any_of.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
        }
        // `anyOf` of one, left where null was the other: the one, with the
        // key's own description and default kept over its type's.
        let only = match schema.get("anyOf") {
            Some(Value::Array(any_of)) => match any_of.as_slice() {
                [Value::Object(only)] => Some(only.clone()),
                _ => None,
            },
            _ => None,
        };
        if let Some(only) = only {
            schema.remove("anyOf");
            for (key, value) in only {
                if schema.get(&key).is_none() {
                    schema.insert(key, value);
                }
            }
        }
        transform_subschemas(self, schema);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::schema;

    /// A file with every table whose keys all have defaults (or need none),
    /// and what makes the rest of them apply: `redirect_https_port` needs
    /// `redirect_https`, `hash_key` a `consistent_hash`, `dns_refresh` a name.
    const BASE: &str = r#"
[runtime]
[access_log]
path = "stdout"
[resolver]
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
redirect_https = true
[[routes]]
upstream = "api"
[[upstreams]]
name = "api"
balance = "consistent_hash"
servers = [{ addr = "localhost:9001" }]
[upstreams.health_check]
[upstreams.eject]
"#;

    /// Writes into `table`, and the tables inside it, each key that the
    /// schema gives a default and the table leaves out; how many it wrote.
    fn write_defaults(table: &mut toml::Table, schema: &Value) -> usize {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return 0;
        };
        let mut written = 0;
        for (key, sub) in properties {
            let default = sub.get("default").filter(|_| !table.contains_key(key));
            if let Some(default) = default {
                let value = toml::Value::try_from(default).expect("a default TOML can write");
                table.insert(key.clone(), value);
                written += 1;
            }
            match table.get_mut(key) {
                Some(toml::Value::Table(t)) => written += write_defaults(t, sub),
                Some(toml::Value::Array(items)) => {
                    for item in items {
                        if let toml::Value::Table(t) = item {
                            written += write_defaults(t, &sub["items"]);
                        }
                    }
                }
                _ => {}
            }
        }
        written
    }

    /// The schema's defaults are corral's: a file that writes each of them
    /// out makes the same plan as one that leaves them all to corral.
    #[test]
    fn writing_out_every_default_the_schema_shows_changes_nothing() {
        let schema = serde_json::to_value(schema()).expect("JSON");
        let mut explicit: toml::Table = toml::from_str(BASE).expect("TOML");
        let written = write_defaults(&mut explicit, &schema);
        assert!(written >= 35, "only {written} defaults written");
        let explicit = toml::to_string(&explicit).expect("TOML");
        let path = Path::new("/nonexistent/corral.toml");
        let left_out = crate::config::from_str(path, BASE).expect("valid");
        let written_out =
            crate::config::from_str(path, &explicit).unwrap_or_else(|e| panic!("{e}\n{explicit}"));
        assert_eq!(left_out, written_out, "\n{explicit}");
    }
}
