//! `corral::proxy::path::normalize` on any path: it never panics, and what
//! it makes is normal (normalising it again changes nothing), absolute, free
//! of dot segments, a valid request target when it was given one, and never
//! escapes its root: an upstream that decodes every escape sees the same
//! segments, none of them `.` or `..` (unless the listener keeps encoded
//! slashes, which it documents as the upstream's to refuse).
#![no_main]

use corral::plan::EncodedSlashes;
use corral::proxy::path::normalize;
use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let slashes = match mode % 3 {
        0 => EncodedSlashes::Reject,
        1 => EncodedSlashes::Decode,
        _ => EncodedSlashes::Keep,
    };
    let path = format!("/{text}");
    let Ok(once) = normalize(&path, slashes) else {
        return;
    };
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    assert!(
        !once.split('/').any(|s| s == "." || s == ".."),
        "{path:?} -> {once:?}"
    );
    let twice = normalize(&once, slashes);
    assert_eq!(twice.as_deref(), Ok(&*once), "{path:?} -> {once:?}");
    // A request's path, as the router gets it, stays a valid target.
    if let Ok(target) = PathAndQuery::try_from(path.as_str()) {
        if let Ok(routed) = normalize(target.path(), slashes) {
            let valid = PathAndQuery::try_from(&*routed).is_ok();
            assert!(valid, "{:?} -> {routed:?}", target.path());
        }
    }
    if slashes == EncodedSlashes::Keep {
        return;
    }
    let upper = once.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C"),
        "{path:?} -> {once:?}"
    );
    for segment in once.split('/') {
        let decoded = decode(segment);
        assert!(
            decoded != b"." && decoded != b".." && !decoded.contains(&b'/'),
            "{path:?} -> {once:?}: the upstream may read {decoded:?}"
        );
    }
});

/// Every escape decoded, as a lenient upstream would.
fn decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit));
        match escape.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}
