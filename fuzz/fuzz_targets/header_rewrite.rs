//! `corral::proxy::headers` on any header map: `remove_hop_by_hop` and
//! `add_forwarded` never panic, no hop-by-hop header survives (nor any
//! header `Connection` names), every other header does, and the
//! `X-Forwarded-*` headers come out as the trust decision says.
//!
//! Input: one byte of flags (upgrading, TLS, a host, which `Earlier`),
//! four of client address, then `name:value` lines.
#![no_main]

use std::net::IpAddr;

use corral::proxy::headers::{Earlier, add_forwarded, client_value, remove_hop_by_hop};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The hop-by-hop headers RFC 9110 §7.6.1 names, and `HTTP2-Settings`
/// (RFC 7540 §3.2.1), besides those `Connection` lists.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
    "te",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let upgrading = flags[0] & 1 != 0;
    let tls = flags[0] & 2 != 0;
    let host = (flags[0] & 4 != 0).then(|| HeaderValue::from_static("app.test"));
    let earlier = match flags[0] >> 3 & 3 {
        0 => Earlier::Extended,
        1 => Earlier::Kept,
        _ => Earlier::Replaced,
    };
    let client = client_value(IpAddr::from([flags[1], flags[2], flags[3], flags[4]]));
    let mut headers = headers(rest);
    let before = headers.clone();
    let named = connection_named(&before);

    remove_hop_by_hop(&mut headers, upgrading);
    for name in HOP_BY_HOP
        .iter()
        .map(|n| n.to_string())
        .chain(named.iter().cloned())
    {
        let values: Vec<_> = headers.get_all(name.as_str()).iter().collect();
        let allowed = match name.as_str() {
            "connection" if upgrading => values == ["upgrade"],
            "upgrade" if upgrading => values
                .iter()
                .all(|v| before.get_all("upgrade").iter().any(|b| b == *v)),
            // gRPC's `TE: trailers` passes, unless `Connection` named TE.
            "te" => values.is_empty() || (values == ["trailers"] && !named.contains(&name)),
            _ => values.is_empty(),
        };
        assert!(allowed, "{name}: {values:?} survived, from {before:?}");
    }
    // A `Content-Length` beside `Transfer-Encoding` goes too (RFC 9112 §6.3).
    let chunked = before.contains_key("transfer-encoding");
    for (name, value) in &before {
        let hop = HOP_BY_HOP.contains(&name.as_str())
            || named.iter().any(|n| n == name.as_str())
            || (chunked && name == "content-length");
        if !hop {
            assert!(
                headers.get_all(name).iter().any(|v| v == value),
                "{name}: {value:?} lost"
            );
        }
    }

    let hop_free = headers.clone();
    add_forwarded(&mut headers, &client, tls, host.as_ref(), earlier);
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "{xff:?}");
    let xff = xff[0].as_bytes();
    assert!(xff.ends_with(client.as_bytes()), "{xff:?}");
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let (want_proto, want_host) = match earlier {
        Earlier::Kept => (
            hop_free.get("x-forwarded-proto").cloned().unwrap_or(proto),
            hop_free.get("x-forwarded-host").cloned().or(host),
        ),
        Earlier::Extended | Earlier::Replaced => (proto, host),
    };
    if earlier == Earlier::Replaced {
        assert_eq!(xff, client.as_bytes());
    }
    assert_eq!(headers.get("x-forwarded-proto"), Some(&want_proto));
    assert_eq!(headers.get("x-forwarded-host"), want_host.as_ref());
});

/// The map the `name:value` lines make; lines that are no header are left
/// out.
fn headers(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// The header names `Connection` lists, lower-cased.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .map(|n| n.as_str().to_owned())
        .filter(|n| n != "keep-alive" && n != "close")
        .collect()
}
