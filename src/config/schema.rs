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
