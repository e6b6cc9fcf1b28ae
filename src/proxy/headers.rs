//! Header rules for forwarding (RFC 9110 §7.6): what is hop-by-hop and must
//! not cross corral, and the `X-Forwarded-*` headers it adds.
//!
//! Pure functions over `HeaderMap`s; they allocate only for the new
//! `X-Forwarded-For` value.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocols `headers` ask to switch to (`Connection: upgrade` plus
/// one `Upgrade` line), as a WebSocket handshake does. `h2c` among them is
/// no upgrade: HTTP/2 is spoken to corral, not through it, and a tunnel
/// to an upstream that accepted it would carry requests the router never
/// saw; such a request is served as plain HTTP/1.1.
pub fn upgrade_offer(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut lines = headers.get_all(header::UPGRADE).iter();
    let offer = lines.next()?;
    let single = lines.next().is_none();
    let h2c = tokens(offer).any(|p| p.eq_ignore_ascii_case(b"h2c"));
    (single && !h2c && connection_has(headers, "upgrade")).then_some(offer)
}

/// Whether the protocols a 101 switches to (its `Upgrade`) were all
/// offered: a 101 that names none, or one the client did not ask for, is
/// no switch the client can follow.
pub fn accepts_offer(response: &HeaderMap, offer: &HeaderValue) -> bool {
    let mut chosen = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(tokens)
        .peekable();
    chosen.peek().is_some() && chosen.all(|p| tokens(offer).any(|o| o.eq_ignore_ascii_case(p)))
}

/// The comma-separated, trimmed, non-empty tokens of a header value.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The comma-separated tokens of `Connection`, as bytes: a token that is
/// not a valid header name names nothing to remove, so no text check is due.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().flat_map(tokens)
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `HTTP2-Settings` (RFC 7540 §3.2.1,
/// meant for the next hop alone), `TE` (except `TE: trailers`, which gRPC
/// needs end to end), `Transfer-Encoding` and `Upgrade`. With `upgrading`,
/// `Upgrade` and `Connection: upgrade` stay so the next hop can switch too.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let found = Found::of(headers, false);
    remove_found(headers, &found, upgrading);
}

/// [`remove_hop_by_hop`] with the names `found` in `headers` already.
pub fn remove_found(headers: &mut HeaderMap, found: &Found, upgrading: bool) {
    if found.names_headers {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !names_nothing(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            if !(upgrading && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    if found.connection {
        headers.remove(header::CONNECTION);
    }
    if found.keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if found.proxy_connection {
        headers.remove(&PROXY_CONNECTION);
    }
    if found.http2_settings {
        headers.remove(&HTTP2_SETTINGS);
    }
    if found.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
        // The chunked framing decided the length, not any `Content-Length`
        // beside it (RFC 9112 §6.3); the next hop frames the message anew.
        headers.remove(header::CONTENT_LENGTH);
    }
    if found.te {
        let trailers = headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if found.upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a `Connection` token is `keep-alive` or `close`, which name no
/// header to remove.
fn names_nothing(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
}

/// What one pass over a message's header names found: the hop-by-hop
/// headers it carries, and, if asked, whether any name holds `_`. One pass
/// because most messages carry at most `Connection`, and a lookup by name
/// costs a hash each, so only the names present are looked at again.
#[derive(Debug, Default)]
pub struct Found {
    underscore: bool,
    connection: bool,
    /// `Connection` names headers (beyond `keep-alive` and `close`).
    names_headers: bool,
    keep_alive: bool,
    proxy_connection: bool,
    http2_settings: bool,
    te: bool,
    transfer_encoding: bool,
    upgrade: bool,
    /// Some `X-Forwarded-For`, `-Proto` or `-Host`.
    forwarded: bool,
}

impl Found {
    /// The names in `headers`; with `underscores`, also whether one holds
    /// `_`.
    pub fn of(headers: &HeaderMap, underscores: bool) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            // Names are lowercase; a match on the text is one length switch.
            match name.as_str() {
                "connection" => {
                    found.connection = true;
                    // `keep-alive` or `close` alone, by far the most
                    // common, needs no splitting into tokens.
                    found.names_headers |= !names_nothing(value.as_bytes());
                }
                "te" => found.te = true,
                "transfer-encoding" => found.transfer_encoding = true,
                "upgrade" => found.upgrade = true,
                "keep-alive" => found.keep_alive = true,
                "proxy-connection" => found.proxy_connection = true,
                "http2-settings" => found.http2_settings = true,
                "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => {
                    found.forwarded = true;
                }
                other => found.underscore |= underscores && other.as_bytes().contains(&b'_'),
            }
        }
        found
    }

    /// Whether a name holds `_` (when [`Found::of`] was asked to look).
    pub fn underscore(&self) -> bool {
        self.underscore
    }

    pub fn transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    pub fn upgrade(&self) -> bool {
        self.upgrade
    }

    /// Whether an `X-Forwarded-*` field corral sets is there already.
    pub fn forwarded(&self) -> bool {
        self.forwarded
    }
}

/// Whether a request's `Transfer-Encoding` asks for more than `chunked`,
/// the one transfer coding corral decodes (RFC 9112 §6.1: 501): passed on
/// dechunked, a body the client also compressed would lose its coding.
pub fn unknown_transfer_coding(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(tokens);
    match codings.next() {
        None => false,
        Some(first) => !first.eq_ignore_ascii_case(b"chunked") || codings.next().is_some(),
    }
}

/// Removes every header whose name holds `_`.
pub fn remove_underscored(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The client's address as a header value, made once per connection (IPv4
/// clients on an IPv6 socket are written as IPv4).
pub fn client_value(client: IpAddr) -> HeaderValue {
    let text = match client.to_canonical() {
        // Octet by octet: `Display` goes through the formatting machinery,
        // ten times the work, and this runs once per connection.
        IpAddr::V4(ip) => {
            let mut text = String::with_capacity("255.255.255.255".len());
            let mut digits = itoa::Buffer::new();
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        IpAddr::V6(ip) => ip.to_string(),
    };
    // An IP address is always a valid header value; the text becomes its
    // bytes without a copy.
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What becomes of the `X-Forwarded-*` headers a request arrives with,
/// decided once per connection by who sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// No `trusted_proxies` set: the client is appended to
    /// `X-Forwarded-For`; `-Proto` and `-Host` are corral's (as nginx does).
    Extended,
    /// From a trusted proxy: all three are kept, the client appended to
    /// `X-Forwarded-For`; corral sets `-Proto` and `-Host` only if absent.
    Kept,
    /// From anyone else once `trusted_proxies` is set: all three are
    /// replaced, so a client cannot forge its address to the upstream.
    Replaced,
}

impl Earlier {
    /// For a client at `client` on a listener trusting `trusted_proxies`.
    pub fn of(client: IpAddr, trusted_proxies: Option<&[IpNet]>) -> Self {
        let client = client.to_canonical();
        match trusted_proxies {
            None => Self::Extended,
            Some(nets) if nets.iter().any(|n| n.contains(&client)) => Self::Kept,
            Some(_) => Self::Replaced,
        }
    }
}

/// Adds the client (see [`client_value`]) to `X-Forwarded-For` and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, keeping or replacing what
/// the request carried as `earlier` says. Several `X-Forwarded-For` lines
/// are joined into one, in order, as RFC 9110 §5.3 allows.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
    earlier: Earlier,
) {
    // Room for all three at once: a map sized for the parsed headers alone
    // would otherwise grow, and rehash, more than once.
    headers.reserve(3);
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(client.clone());
        }
        Entry::Occupied(mut earlier_hops) => {
            if earlier == Earlier::Replaced {
                earlier_hops.insert(client.clone());
            } else if let Some(chain) = extended(earlier_hops.iter(), client) {
                earlier_hops.insert(chain);
            }
        }
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if earlier == Earlier::Kept {
        headers.entry(&X_FORWARDED_PROTO).or_insert(proto);
        if let Some(h) = host {
            headers
                .entry(&X_FORWARDED_HOST)
                .or_insert_with(|| h.clone());
        }
        return;
    }
    headers.insert(&X_FORWARDED_PROTO, proto);
    match host {
        Some(h) => headers.insert(&X_FORWARDED_HOST, h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Sets `name` to the subject of the client's verified certificate,
/// replacing every value the request carried in it, so that no client can
/// name itself; with no subject, the field is only removed.
pub fn set_client_subject(
    headers: &mut HeaderMap,
    name: &HeaderName,
    subject: Option<&HeaderValue>,
) {
    match subject {
        Some(subject) => {
            headers.insert(name.clone(), subject.clone());
        }
        None => {
            headers.remove(name);
        }
    }
}

/// What [`add_forwarded`] adds to a request that carries no
/// `X-Forwarded-*` of its own (see [`Found::forwarded`]), whoever sent it:
/// the fields to write behind the request's own, for an encoder that can,
/// rather than inserting them into the map (three hashes and a rehash).
pub fn fresh_forwarded<'a>(
    client: &'a HeaderValue,
    tls: bool,
    host: Option<&'a HeaderValue>,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + Clone {
    static HTTP: HeaderValue = HeaderValue::from_static("http");
    static HTTPS: HeaderValue = HeaderValue::from_static("https");
    let proto = if tls { &HTTPS } else { &HTTP };
    [(&X_FORWARDED_FOR, client), (&X_FORWARDED_PROTO, proto)]
        .into_iter()
        .chain(host.map(|h| (&X_FORWARDED_HOST, h)))
}

/// The `X-Forwarded-For` chain `hops` with `client` appended, as one value.
fn extended<'a>(
    hops: impl Iterator<Item = &'a HeaderValue>,
    client: &HeaderValue,
) -> Option<HeaderValue> {
    let mut chain = String::new();
    for v in hops.filter_map(|v| v.to_str().ok()).map(str::trim) {
        if !v.is_empty() {
            chain.push_str(v);
            chain.push_str(", ");
        }
    }
    chain.push_str(client.to_str().unwrap_or_default());
    // The client's own visible-ASCII header text plus an address.
    HeaderValue::from_str(&chain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn a_client_subject_replaces_every_value_the_client_sent() {
        let name = HeaderName::from_static("x-client-subject");
        let mut h = map(&[
            ("x-client-subject", "CN=admin"),
            ("x-client-subject", "CN=root"),
        ]);
        let alice = HeaderValue::from_static("CN=alice,O=Example");
        set_client_subject(&mut h, &name, Some(&alice));
        assert_eq!(h.get_all(&name).iter().collect::<Vec<_>>(), [&alice]);
        set_client_subject(&mut h, &name, None);
        assert!(!h.contains_key(&name));
    }

    #[test]
    fn upgrading_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, x-other"),
            ("upgrade", "websocket"),
            ("x-other", "1"),
        ]);
        assert!(upgrade_offer(&h).is_some());
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("x-other"));
    }

    #[test]
    fn an_upgrade_needs_both_the_upgrade_header_and_connection_upgrade() {
        let wants_upgrade = |h: &HeaderMap| upgrade_offer(h).is_some();
        assert!(wants_upgrade(&map(&[
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
            ("upgrade", "websocket"),
        ])));
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&map(&[
            ("connection", "keep-alive, x-upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
        assert!(!wants_upgrade(&HeaderMap::new()));
    }

    #[test]
    fn h2c_is_never_an_upgrade_nor_are_two_upgrade_lines() {
        for offer in ["h2c", "websocket, H2C"] {
            let h = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", offer),
            ]);
            assert_eq!(upgrade_offer(&h), None, "{offer}");
        }
        let two = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "foo"),
        ]);
        assert_eq!(upgrade_offer(&two), None);
    }

    #[test]
    fn a_switch_is_to_a_protocol_offered() {
        let offer = HeaderValue::from_static("websocket, foo/2");
        let switched = |to: &[&str]| {
            let pairs: Vec<(&str, &str)> = to.iter().map(|t| ("upgrade", *t)).collect();
            accepts_offer(&map(&pairs), &offer)
        };
        assert!(switched(&["WebSocket"]));
        assert!(switched(&["foo/2"]));
        assert!(!switched(&[]));
        assert!(!switched(&["h2c"]));
        assert!(!switched(&["websocket, h2c"]));
    }

    #[test]
    fn http2_settings_is_hop_by_hop_even_unnamed() {
        let mut h = map(&[
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn chunked_framing_removes_any_content_length_beside_it() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn chunked_alone_is_a_known_transfer_coding() {
        assert!(!unknown_transfer_coding(&map(&[])));
        assert!(!unknown_transfer_coding(&map(&[(
            "transfer-encoding",
            "Chunked"
        )])));
        for codings in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["identity"],
            &["chunked, chunked"],
        ] {
            let pairs: Vec<(&str, &str)> =
                codings.iter().map(|c| ("transfer-encoding", *c)).collect();
            assert!(unknown_transfer_coding(&map(&pairs)), "{codings:?}");
        }
    }

    #[test]
    fn underscored_names_are_found_and_removed_alone() {
        let mut h = map(&[
            ("x_forwarded_for", "1.2.3.4"),
            ("x-real", "1"),
            ("a_b", "2"),
        ]);
        assert!(Found::of(&h, true).underscore());
        assert!(!Found::of(&h, false).underscore());
        remove_underscored(&mut h);
        assert!(!Found::of(&h, true).underscore());
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(!Found::of(&map(&[("x-forwarded-for", "1")]), true).underscore());
    }

    #[test]
    fn forwarded_for_appends_to_every_earlier_hop() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
        ]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut h,
            &client_value("10.0.0.9".parse().unwrap()),
            true,
            Some(&host),
            Earlier::Extended,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn ipv4_mapped_clients_are_written_as_ipv4() {
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &client_value("::ffff:127.0.0.1".parse().unwrap()),
            false,
            None,
            Earlier::Extended,
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn fresh_fields_are_what_add_forwarded_adds_to_a_request_without_any() {
        let client = client_value("10.0.0.9".parse().unwrap());
        let host = HeaderValue::from_static("example.com");
        for earlier in [Earlier::Extended, Earlier::Kept, Earlier::Replaced] {
            for tls in [false, true] {
                for host in [None, Some(&host)] {
                    let mut added = map(&[("host", "example.com"), ("accept", "*/*")]);
                    let mut written = added.clone();
                    assert!(!Found::of(&added, false).forwarded());
                    add_forwarded(&mut added, &client, tls, host, earlier);
                    for (name, value) in fresh_forwarded(&client, tls, host) {
                        written.append(name, value.clone());
                    }
                    assert_eq!(added, written, "{earlier:?} tls={tls} host={host:?}");
                }
            }
        }
        for name in ["x-forwarded-for", "X-Forwarded-Proto", "x-forwarded-host"] {
            assert!(Found::of(&map(&[(name, "x")]), false).forwarded(), "{name}");
        }
    }

    /// What a client behind another proxy sends: a chain, the scheme and
    /// the host as that proxy saw them.
    fn forwarded_request() -> HeaderMap {
        map(&[
            ("x-forwarded-for", "203.0.113.50"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
        ])
    }

    fn forward(earlier: Earlier, mut h: HeaderMap) -> HeaderMap {
        let host = HeaderValue::from_static("internal:8080");
        let client = client_value("10.0.0.9".parse().unwrap());
        add_forwarded(&mut h, &client, false, Some(&host), earlier);
        h
    }

    #[test]
    fn an_untrusted_clients_forwarded_headers_are_replaced() {
        let h = forward(Earlier::Replaced, forwarded_request());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "internal:8080");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn a_trusted_proxys_forwarded_headers_are_kept_and_extended() {
        let h = forward(Earlier::Kept, forwarded_request());
        assert_eq!(h["x-forwarded-for"], "203.0.113.50, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
        // What the trusted proxy did not say, corral does.
        let h = forward(Earlier::Kept, HeaderMap::new());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "internal:8080");
    }

    #[test]
    fn without_trusted_proxies_the_chain_is_extended_and_the_rest_set() {
        let h = forward(Earlier::Extended, forwarded_request());
        assert_eq!(h["x-forwarded-for"], "203.0.113.50, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "internal:8080");
    }

    #[test]
    fn trust_follows_the_listed_networks() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let of = |ip: &str| Earlier::of(ip.parse().unwrap(), Some(&nets));
        assert_eq!(of("10.1.2.3"), Earlier::Kept);
        assert_eq!(of("::ffff:10.1.2.3"), Earlier::Kept);
        assert_eq!(of("::1"), Earlier::Kept);
        assert_eq!(of("11.0.0.1"), Earlier::Replaced);
        assert_eq!(of("127.0.0.1"), Earlier::Replaced);
        assert_eq!(
            Earlier::of("11.0.0.1".parse().unwrap(), None),
            Earlier::Extended
        );
        assert_eq!(
            Earlier::of("11.0.0.1".parse().unwrap(), Some(&[])),
            Earlier::Replaced
        );
    }

    proptest! {
        /// The client's address reads as the standard library writes it.
        #[test]
        fn client_values_are_the_address_text(octets in any::<[u8; 16]>(), v4 in any::<bool>()) {
            let ip = if v4 {
                IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
            } else {
                IpAddr::from(octets)
            };
            let expected = ip.to_canonical().to_string();
            prop_assert_eq!(client_value(ip), expected.as_str());
        }

        /// No hop-by-hop header survives, whatever `Connection` names, and
        /// every other header does.
        #[test]
        fn nothing_hop_by_hop_survives(
            named in proptest::collection::vec("[a-z]{1,8}", 0..4),
            others in proptest::collection::vec("x-[a-z]{1,8}", 0..4),
        ) {
            let mut h = HeaderMap::new();
            if !named.is_empty() {
                h.insert(header::CONNECTION, HeaderValue::from_str(&named.join(", ")).unwrap());
            }
            for n in named.iter().chain(&others) {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            }
            for fixed in ["keep-alive", "proxy-connection", "http2-settings", "te", "transfer-encoding", "upgrade"] {
                h.insert(HeaderName::from_static(fixed), HeaderValue::from_static("v"));
            }
            remove_hop_by_hop(&mut h, false);
            for n in &named {
                prop_assert!(!h.contains_key(n.as_str()));
            }
            for fixed in ["connection", "keep-alive", "proxy-connection", "http2-settings", "te", "transfer-encoding", "upgrade"] {
                prop_assert!(!h.contains_key(fixed));
            }
            for o in others.iter().filter(|o| !named.contains(o)) {
                prop_assert!(h.contains_key(o.as_str()));
            }
        }
    }
}
