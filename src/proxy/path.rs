//! One request path, seen alike by the router and the upstream.
//!
//! Before a request is routed, its path is normalised once, and the router
//! and the upstream both get the result: percent-encoded unreserved
//! characters (RFC 3986 §2.3: letters, digits, `-`, `.`, `_`, `~`) are
//! decoded, hex digits of the other escapes are upper-cased, and dot
//! segments are removed (§5.2.4), so `/api/../admin`, `/api/%2e%2e/admin`
//! and `/api/.%2E/admin` all become `/admin`, which routes as `/admin` and
//! reaches the upstream as `/admin`. An encoded slash or backslash (`%2F`,
//! `%5C`) is refused by default: the upstream might decode it and see a
//! path the router never did. A listener may decode them (into `/` and `\`,
//! before the dot segments are removed) or keep them as they are. A `%`
//! not followed by two hex digits is refused. The query is never touched.

use std::borrow::Cow;

use crate::plan::EncodedSlashes;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path holds an encoded slash or backslash")]
    EncodedSlash,
    #[error("the path holds a `%` that starts no escape")]
    BadEscape,
}

/// `path` normalised; borrowed when it is already normal (most paths,
/// which then cost one scan and no allocation).
pub fn normalize(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, slashes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether `path` has an escape or a dot segment (`.` or `..` between
/// slashes, or at the end).
fn needs_work(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.contains(&b'%') || bytes.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
}

/// Decodes the escapes of unreserved characters (and of slashes, when
/// `slashes` says so); upper-cases the hex of the others.
fn decode(path: &str, slashes: EncodedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // `path` is a str and escapes are ASCII: a run up to the next
            // `%` is whole characters.
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        }
        .ok_or(PathError::BadEscape)?;
        match value {
            b'/' | b'\\' => match slashes {
                EncodedSlashes::Reject => return Err(PathError::EncodedSlash),
                EncodedSlashes::Decode => out.push(char::from(value)),
                EncodedSlashes::Keep => push_escape(&mut out, value),
            },
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(char::from(v)),
            v => push_escape(&mut out, v),
        }
        i += 3;
    }
    Ok(out)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 15)]));
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, and each `..`
/// takes the segment before it (never above the root). A path that ended
/// in a dot segment keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => trailing = i == last,
            ".." => {
                kept.pop();
                trailing = i == last;
            }
            s => {
                kept.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn normal(path: &str) -> Result<String, PathError> {
        normalize(path, EncodedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_raw_or_encoded_are_resolved_before_routing() {
        for path in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/.%2E/admin",
            "/api/%2E./admin",
            "/api/./../admin",
            "/../../admin",
            "/./admin",
        ] {
            assert_eq!(normal(path).as_deref(), Ok("/admin"), "{path}");
        }
        assert_eq!(normal("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(normal("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(normal("/..").as_deref(), Ok("/"));
        assert_eq!(normal("/a/..b/.c").as_deref(), Ok("/a/..b/.c"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_others_upper_cased() {
        assert_eq!(normal("/%61pi/%7Euser").as_deref(), Ok("/api/~user"));
        assert_eq!(normal("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
        assert_eq!(normal("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
    }

    #[test]
    fn an_encoded_slash_is_refused_decoded_or_kept_as_the_listener_says() {
        for path in ["/api/..%2fadmin", "/a%2Fb", "/a%5cb"] {
            assert_eq!(normal(path), Err(PathError::EncodedSlash), "{path}");
        }
        let decoded = normalize("/api/..%2fadmin", EncodedSlashes::Decode);
        assert_eq!(decoded.as_deref(), Ok("/admin"));
        let kept = normalize("/api/..%2fadmin", EncodedSlashes::Keep);
        assert_eq!(kept.as_deref(), Ok("/api/..%2Fadmin"));
    }

    #[test]
    fn a_percent_that_starts_no_escape_is_refused() {
        for path in ["/a%", "/a%2", "/a%zz", "/%%41"] {
            assert_eq!(normal(path), Err(PathError::BadEscape), "{path}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        let path = "/api/v1/users.json";
        assert!(matches!(
            normalize(path, EncodedSlashes::Reject),
            Ok(Cow::Borrowed(p)) if p == path
        ));
    }

    proptest! {
        /// Whatever a client sends, what comes out is normal: normalising
        /// it again changes nothing, and no segment is a dot segment.
        #[test]
        fn normalising_is_idempotent_and_leaves_no_dot_segment(
            parts in proptest::collection::vec(
                prop_oneof!["[a-z]{1,3}", Just(".".to_owned()), Just("..".to_owned()),
                    Just("%2e".to_owned()), Just("%2E%2e".to_owned()), Just("%41".to_owned()),
                    Just("%2f".to_owned()), Just("".to_owned())],
                0..8,
            ),
            slashes in prop_oneof![Just(EncodedSlashes::Decode), Just(EncodedSlashes::Keep)],
        ) {
            let path = format!("/{}", parts.join("/"));
            let once = normalize(&path, slashes).map(Cow::into_owned);
            prop_assert!(once.is_ok(), "{path}: {once:?}");
            let once = once.unwrap_or_default();
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{path} -> {once}");
            let twice = normalize(&once, slashes).map(Cow::into_owned);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
        }
    }
}
