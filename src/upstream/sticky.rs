//! Sticky sessions: the cookie that keeps a client on the server of an
//! upstream that first answered it (`[upstreams.sticky]`).
//!
//! Owns the cookie's value for each server, which server a value names,
//! and the `Set-Cookie` header that names one. A value is an HMAC-SHA256,
//! under the plan's [`StickyKey`], of the upstream's name and the server's
//! address, truncated and written in hex: opaque (it does not reveal the
//! address), unforgeable (a client can only send back a value corral
//! issued), and the same in every worker, which all hold the same key. It
//! stays the same while the server's address does, so reloads and weight
//! changes keep clients where they are. Everything is computed when the
//! upstream is built; a request pays a lookup, never a MAC.
//!
//! Whether the named server may take a request is not decided here:
//! [`super::Upstream::pick_named`] applies the rules of every pick.

use std::net::SocketAddr;

use http::HeaderValue;
use ring::hmac;

use crate::plan::{StickyConfig, StickyKey};

/// Bytes of the MAC kept in a value: 128 bits is beyond guessing, and
/// keeps the cookie short.
const VALUE_BYTES: usize = 16;
/// A value's length as the cookie carries it (hex).
const VALUE_LEN: usize = VALUE_BYTES * 2;

/// One upstream's sticky cookie: its name, and each server's value.
#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    /// The servers' values, sorted, each with the server's index.
    by_value: Vec<([u8; VALUE_LEN], usize)>,
    /// `Set-Cookie` naming each server, by index: for a plain and for a
    /// TLS client (`Secure`). Made here so that a response clones a
    /// shared header value instead of formatting one.
    set_cookie: Vec<[HeaderValue; 2]>,
}

impl Sticky {
    /// The cookie for `servers` (by index) of the upstream `upstream`.
    pub fn new(
        config: &StickyConfig,
        key: &StickyKey,
        upstream: &str,
        servers: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.bytes());
        let mut by_value = Vec::new();
        let mut set_cookie = Vec::new();
        for (index, addr) in servers.into_iter().enumerate() {
            let value = value(&key, upstream, addr);
            set_cookie.push([false, true].map(|secure| header(config, &value, secure)));
            by_value.push((value, index));
        }
        by_value.sort_unstable();
        Self {
            cookie: config.cookie.clone(),
            by_value,
            set_cookie,
        }
    }

    /// The cookie's name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The index of the server `value` names; `None` for a value that
    /// names none of this upstream's servers (garbled, forged, from before
    /// a server was removed, or from another cluster's key).
    pub fn named(&self, value: &str) -> Option<usize> {
        let value: &[u8; VALUE_LEN] = value.as_bytes().try_into().ok()?;
        self.by_value
            .binary_search_by(|(v, _)| v.cmp(value))
            .ok()
            .map(|found| self.by_value[found].1)
    }

    /// The `Set-Cookie` header naming the server at `index`, with `Secure`
    /// for a client on TLS.
    pub fn set_cookie(&self, index: usize, secure: bool) -> Option<&HeaderValue> {
        self.set_cookie.get(index).map(|h| &h[usize::from(secure)])
    }
}

/// The value naming `addr` of `upstream`. The name is included so that
/// one address in two upstreams has two values, and a value carried from
/// one upstream's route to another's names nothing there.
fn value(key: &hmac::Key, upstream: &str, addr: SocketAddr) -> [u8; VALUE_LEN] {
    let mut context = hmac::Context::with_key(key);
    context.update(b"corral sticky v1\0");
    context.update(upstream.as_bytes());
    // The name cannot hold a NUL (it is a TOML string, but the address's
    // text has none either way): the two parts cannot run together.
    context.update(b"\0");
    context.update(addr.to_string().as_bytes());
    let tag = context.sign();
    let mut out = [0; VALUE_LEN];
    for (pair, byte) in out.chunks_exact_mut(2).zip(&tag.as_ref()[..VALUE_BYTES]) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `NAME=VALUE; Path=/; ...`: for every path, out of scripts' reach, sent
/// on top-level navigations from elsewhere (a link into the site keeps its
/// server) but not on other sites' subrequests.
fn header(config: &StickyConfig, value: &[u8; VALUE_LEN], secure: bool) -> HeaderValue {
    // Hex is ASCII.
    let value = std::str::from_utf8(value).unwrap_or_default();
    let mut text = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", config.cookie);
    if let Some(age) = config.max_age {
        text.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if secure {
        text.push_str("; Secure");
    }
    // A token, hex, and fixed text: always a valid header value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(max_age: Option<Duration>) -> StickyConfig {
        StickyConfig {
            cookie: "srv".to_owned(),
            max_age,
        }
    }

    fn addrs() -> Vec<SocketAddr> {
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .map(|a| a.parse().unwrap())
            .to_vec()
    }

    fn value_of(sticky: &Sticky, index: usize) -> String {
        let header = sticky.set_cookie(index, false).unwrap().to_str().unwrap();
        let (pair, _) = header.split_once(';').unwrap();
        pair.strip_prefix("srv=").unwrap().to_owned()
    }

    #[test]
    fn each_server_s_value_names_it_and_does_not_show_its_address() {
        let key = StickyKey::generate().unwrap();
        let sticky = Sticky::new(&config(None), &key, "app", addrs());
        for i in 0..3 {
            let value = value_of(&sticky, i);
            assert_eq!(value.len(), VALUE_LEN);
            assert!(value.bytes().all(|b| HEX.contains(&b)), "{value}");
            assert!(!value.contains("10.0.0"), "{value}");
            assert_eq!(sticky.named(&value), Some(i));
        }
    }

    /// Every worker builds the upstream from the same plan: the same key
    /// must give the same values, and another key (or upstream) others.
    #[test]
    fn values_depend_on_the_key_the_upstream_and_the_address_alone() {
        let key = StickyKey::generate().unwrap();
        let a = Sticky::new(&config(None), &key, "app", addrs());
        let again = Sticky::new(&config(Some(Duration::from_secs(60))), &key, "app", addrs());
        let reordered = Sticky::new(&config(None), &key, "app", addrs().into_iter().rev());
        let other_upstream = Sticky::new(&config(None), &key, "api", addrs());
        let other_key = Sticky::new(
            &config(None),
            &StickyKey::generate().unwrap(),
            "app",
            addrs(),
        );
        for i in 0..3 {
            let value = value_of(&a, i);
            assert_eq!(value, value_of(&again, i));
            assert_eq!(value, value_of(&reordered, 2 - i));
            assert_eq!(other_upstream.named(&value), None);
            assert_eq!(other_key.named(&value), None);
        }
    }

    #[test]
    fn a_garbled_or_forged_value_names_no_server() {
        let key = StickyKey::generate().unwrap();
        let sticky = Sticky::new(&config(None), &key, "app", addrs());
        let real = value_of(&sticky, 0);
        let mut flipped = real.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "10.0.0.1:80",
            &real[..VALUE_LEN - 1],
            &format!("{real}0"),
            &flipped,
        ] {
            assert_eq!(sticky.named(bad), None, "{bad:?}");
        }
        assert_eq!(sticky.named(&real.to_uppercase()), None);
    }

    #[test]
    fn the_header_carries_path_httponly_samesite_and_optionally_max_age_and_secure() {
        let key = StickyKey::generate().unwrap();
        let session = Sticky::new(&config(None), &key, "app", addrs());
        let value = value_of(&session, 1);
        assert_eq!(
            session.set_cookie(1, false).unwrap(),
            &format!("srv={value}; Path=/; HttpOnly; SameSite=Lax")
        );
        let lasting = Sticky::new(
            &config(Some(Duration::from_secs(3600))),
            &key,
            "app",
            addrs(),
        );
        assert_eq!(
            lasting.set_cookie(1, true).unwrap(),
            &format!("srv={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure")
        );
        assert_eq!(lasting.set_cookie(3, false), None);
    }
}
