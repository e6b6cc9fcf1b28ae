//! Differential tests with a reference: hyper's own HTTP/1.1 client
//! (`hyper::client::conn::http1`). The same requests go through corral (one
//! worker) to a scripted upstream and straight from hyper to another
//! scripted upstream with the same script, and the two upstreams must have
//! seen the same thing; the same upstream responses reach a client through
//! corral and hyper directly, and the two clients must have got the same
//! thing. Where corral may differ from a direct exchange it says so, in
//! [`requests`] and [`responses`], with why; nothing else may differ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod requests;
mod responses;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;

/// corral in front of one upstream, and another upstream with the same
/// script for hyper to reach directly.
struct Pair {
    _corral: Corral,
    proxy: SocketAddr,
    behind: Scripted,
    direct: Scripted,
}

async fn pair(script: impl Fn(&Arrived) -> Wire + Clone + Send + Sync + 'static) -> Pair {
    let behind = scripted(script.clone()).await;
    let direct = scripted(script).await;
    let config = simple_config(&[behind.addr], "").replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    Pair {
        proxy: corral.addr("public"),
        _corral: corral,
        behind,
        direct,
    }
}

/// A response as a hyper client read it, body and trailers in full.
#[derive(Debug)]
struct Read {
    status: u16,
    headers: Fields,
    body: Bytes,
    trailers: Fields,
}

/// Header or trailer fields: names lower-case, each name's values in the
/// order they came, escaped (`\xe9`) so that any byte shows and counts.
/// They compare as RFC 9110 §5.3 reads them: the order of one name's
/// values counts, the order between names does not.
type Fields = BTreeMap<String, Vec<String>>;

/// `headers` by name, each name's values in the order they came.
fn by_name<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Fields {
    let mut map = Fields::new();
    for (name, value) in headers {
        let value = value.escape_ascii().to_string();
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    map
}

fn header_map(headers: &HeaderMap) -> Fields {
    by_name(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// Sends `request` with hyper's client on a new connection to `addr` and
/// reads the whole response.
async fn exchange(addr: SocketAddr, request: Request<TestBody>) -> Read {
    let mut client = H1::connect(addr).await;
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = header_map(response.headers());
    let collected = patiently("a response body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().map(header_map).unwrap_or_default();
    Read {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Differences found so far, one line each.
#[derive(Default)]
struct Differences(Vec<String>);

impl Differences {
    /// Notes `what` of `case` if corral's side and hyper's differ.
    fn compare<T: PartialEq + Debug>(&mut self, case: &str, what: &str, corral: &T, hyper: &T) {
        if corral != hyper {
            self.0.push(format!(
                "{case}: {what}: through corral {}, hyper directly {}",
                shown(corral),
                shown(hyper)
            ));
        }
    }

    /// As [`Differences::compare`], for fields, naming only the fields
    /// whose values differ.
    fn compare_fields(&mut self, case: &str, what: &str, corral: &Fields, hyper: &Fields) {
        let names: std::collections::BTreeSet<&String> =
            corral.keys().chain(hyper.keys()).collect();
        for name in names {
            let (a, b) = (corral.get(name), hyper.get(name));
            if a != b {
                self.compare(case, &format!("{what} {name}"), &a, &b);
            }
        }
    }

    /// As [`Differences::compare`], for bodies, which may be large.
    fn compare_bodies(&mut self, case: &str, what: &str, corral: &[u8], hyper: &[u8]) {
        if corral != hyper {
            let at = corral.iter().zip(hyper).take_while(|(a, b)| a == b).count();
            self.0.push(format!(
                "{case}: {what}: {} bytes through corral, {} directly, first difference at {at}",
                corral.len(),
                hyper.len()
            ));
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{}", self.0.join("\n"));
    }
}

/// `value`'s Debug form, cut short past 400 characters.
fn shown(value: &impl Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The headers a hop may set on its own, whatever the message: RFC 9110
/// §7.6.1's hop-by-hop fields, which describe one connection (framing
/// among them: corral may frame a body anew for its own client) and never
/// pass a proxy.
/// (`Trailer` is not one: it names the trailer fields end to end.)
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// `headers` without the hop-by-hop ones.
fn end_to_end(mut headers: Fields) -> Fields {
    headers.retain(|name, _| !HOP_BY_HOP.contains(&name.as_str()));
    headers
}

/// A 200 whose body is the request's target, sent with the headers every
/// answer of these tests carries: its own `Date` (so that neither hop adds
/// one), a repeated field, a value with inner whitespace and obs-text.
fn answer(arrived: &Arrived) -> Wire {
    let body = if arrived.method == "HEAD" {
        ""
    } else {
        arrived.target.as_str()
    };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: {}\r\n",
        arrived.target.len()
    );
    head.push_str("Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\nX-Odd: a  b\tc\r\n");
    let mut wire = head.into_bytes();
    wire.extend_from_slice(b"X-Obs: caf\xe9\r\n\r\n");
    wire.extend_from_slice(body.as_bytes());
    Wire::bytes(wire)
}
