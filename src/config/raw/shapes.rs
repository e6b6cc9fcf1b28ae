//! What a value in the file must look like, said to the JSON Schema.
//!
//! The raw types keep their values in `toml::Spanned` so that validation can
//! point at them, and a `Spanned<String>` says nothing of whether the string
//! is a duration or a size. The `#[schemars(with = ...)]` attributes in the
//! raw types name these stand-ins instead. Nothing here is ever built: serde
//! never sees these types, and they check nothing `validate` does not.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// One shape: a unit struct whose schema is the JSON given, always inlined
/// (a key's own description then sits beside it, not behind a `$ref`).
macro_rules! shape {
    ($(#[$doc:meta])* $name:ident = $schema:tt) => {
        $(#[$doc])*
        pub struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

shape! {
    /// What `humantime` reads: numbers with units, `"150ms"`, `"2s"`, `"1m 30s"`.
    Duration = {
        "type": "string",
        "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$",
        "examples": ["150ms", "2s", "1m"],
    }
}

shape! {
    /// A byte count, or what `bytesize` reads: `"64 KiB"`, `"10 MiB"`, `"1.5 MB"`.
    Size = {
        "anyOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Z]*\\s*$" },
        ],
        "examples": ["64 KiB", "10 MiB"],
    }
}

shape! {
    /// `runtime.workers`.
    Workers = {
        "anyOf": [
            { "type": "integer", "minimum": 1, "maximum": 1024 },
            { "const": "auto" },
        ],
    }
}

shape! {
    /// `upstreams.hash_key`: two words, or a header or cookie by name.
    HashKey = {
        "type": "string",
        "anyOf": [
            { "enum": ["client_ip", "path"] },
            { "pattern": "^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$" },
            { "pattern": "^cookie:[^;= ]+$" },
        ],
        "examples": ["client_ip", "path", "header:x-user-id", "cookie:session"],
    }
}

shape! {
    /// An HTTP status code.
    Status = { "type": "integer", "minimum": 100, "maximum": 599 }
}

shape! {
    /// A TLS version corral speaks, as the file writes it.
    TlsVersion = { "type": "string", "enum": ["1.2", "1.3"] }
}

shape! {
    /// A share from 0 to 1.
    Share = { "type": "number", "minimum": 0, "maximum": 1 }
}

shape! {
    /// A TCP port.
    Port = { "type": "integer", "minimum": 1, "maximum": 65535 }
}
