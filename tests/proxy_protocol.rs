//! The client address, end to end: the PROXY protocol header (v1 from
//! curl, v1 and v2 written raw) that a trusted load balancer sends names
//! the client in `X-Forwarded-For`, the access log and `client_ip`
//! hashing; an untrusted peer's header is not believed and a trusted
//! peer's missing one closes the connection; and `trusted_proxies` decides
//! whose `X-Forwarded-*` headers are kept. Peers other than 127.0.0.1 are
//! other loopback addresses (127.0.0.2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The PROXY protocol v2 signature.
const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header saying the connection comes from `client`.
fn v1(client: SocketAddr) -> Vec<u8> {
    let protocol = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let to = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    let (ip, port) = (client.ip(), client.port());
    format!("PROXY {protocol} {ip} {to} {port} 80\r\n").into_bytes()
}

/// A v2 PROXY header from `client` (to port 80), with one TLV.
fn v2(client: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match client.ip() {
        IpAddr::V4(ip) => {
            block.extend(ip.octets());
            block.extend([127, 0, 0, 1]);
            0x11
        }
        IpAddr::V6(ip) => {
            block.extend(ip.octets());
            block.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    block.extend(client.port().to_be_bytes());
    block.extend(80u16.to_be_bytes());
    // PP2_TYPE_AUTHORITY, which corral skips.
    block.extend(b"\x02\x00\x0bexample.com");
    v2_header(0x21, family, &block)
}

/// A v2 LOCAL header, as a load balancer's health check sends.
fn v2_local() -> Vec<u8> {
    v2_header(0x20, 0x00, &[])
}

fn v2_header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut header = V2.to_vec();
    header.extend([command, family]);
    header.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend(block);
    header
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A GET of `/` with `headers`, closing the connection after.
fn get(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n".to_owned();
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A connection to `to` from loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(addr(&format!("{from}:0"))).unwrap();
    patiently("a connection", socket.connect(to)).await.unwrap()
}

/// Writes `bytes` and reads until corral closes; returns what arrived.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> String {
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    // A reset after an unanswered request reads as an error: nothing came.
    let _ = patiently("corral to close", stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of an answer, and the echo's JSON report of what it was sent.
fn reply(answer: &str) -> (u16, serde_json::Value) {
    let status = answer.get(9..12).map_or(0, |s| s.parse().unwrap());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// The `X-Forwarded-*` headers the upstream got, for an answer that must
/// be a 200.
fn forwarded(answer: &str) -> [String; 3] {
    let (status, json) = reply(answer);
    assert_eq!(status, 200, "{answer}");
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        .map(|h| json["headers"][h].as_str().unwrap_or("(none)").to_owned())
}

/// corral with a JSON access log on stderr, its listener in front of an
/// echo with `settings`.
async fn corral(settings: &str) -> (Corral, Upstream) {
    let app = echo("app").await;
    let config = listener_config(app.addr, settings);
    let config = format!("[access_log]\npath = \"stderr\"\nformat = \"json\"\n{config}");
    (Corral::start(&config).await, app)
}

const PROXY_FROM_LOCALHOST: &str = "[listeners.proxy_protocol]\ntrusted = [\"127.0.0.1\", \"::1\"]";

#[tokio::test]
async fn curl_through_a_proxy_protocol_listener_is_seen_as_the_address_it_sent() {
    let (corral, _app) = corral(PROXY_FROM_LOCALHOST).await;
    let url = format!("http://{}/curl", corral.addr("public"));
    let curl = |proxy_protocol: bool| {
        let mut command = tokio::process::Command::new("curl");
        command.args(["-sS", "--max-time", "20", &url]);
        if proxy_protocol {
            command.arg("--haproxy-protocol");
        }
        command.output()
    };
    let out = curl(true).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["headers"]["x-forwarded-for"], "127.0.0.1");
    let line = corral.wait_for_log("\"uri\":\"/curl\"").await;
    assert!(line.contains("\"client\":\"127.0.0.1\""), "{line}");

    // Without the header, corral closes the trusted peer's connection.
    let out = curl(false).await.unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[tokio::test]
async fn the_address_a_header_carries_is_the_client_in_forwarded_for_and_the_log() {
    let (corral, _app) = corral(PROXY_FROM_LOCALHOST).await;
    let to = corral.addr("public");
    let cases = [
        (v1(addr("203.0.113.9:40000")), "203.0.113.9"),
        (v1(addr("[2001:db8::9]:40000")), "2001:db8::9"),
        (v2(addr("198.51.100.4:1234")), "198.51.100.4"),
        (v2(addr("[2001:db8::5]:1234")), "2001:db8::5"),
        // A health check's LOCAL, and v1's UNKNOWN: the peer stands.
        (v2_local(), "127.0.0.1"),
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
    ];
    for (header, client) in cases {
        let mut bytes = header;
        bytes.extend(get(&[("x-case", client)]));
        let answer = exchange(TcpStream::connect(to).await.unwrap(), &bytes).await;
        let [xff, proto, _] = forwarded(&answer);
        assert_eq!((xff.as_str(), proto.as_str()), (client, "http"));
    }
    let line = corral.wait_for_log("\"client\":\"203.0.113.9\"").await;
    assert!(line.contains("\"status\":200"), "{line}");
    corral.wait_for_log("\"client\":\"2001:db8::5\"").await;
}

#[tokio::test]
async fn an_untrusted_peers_header_is_not_believed() {
    let trusted = "[listeners.proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]";
    let (corral, _app) = corral(trusted).await;
    let to = corral.addr("public");
    let mut bytes = v1(addr("203.0.113.9:40000"));
    bytes.extend(get(&[]));
    let answer = exchange(connect_from("127.0.0.2", to).await, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(!answer.contains("203.0.113.9"), "{answer}");

    // Without one, the untrusted peer is a client like any other.
    let answer = exchange(connect_from("127.0.0.2", to).await, &get(&[])).await;
    assert_eq!(forwarded(&answer)[0], "127.0.0.2");
}

#[tokio::test]
async fn a_trusted_peer_without_a_valid_header_is_closed_unanswered() {
    let (corral, app) = corral(PROXY_FROM_LOCALHOST).await;
    let to = corral.addr("public");
    let mut bad = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80 extra\r\n".to_vec();
    bad.extend(get(&[]));
    let mut wrong_version = v2(addr("198.51.100.4:1234"));
    wrong_version[12] = 0x11;
    wrong_version.extend(get(&[]));
    for bytes in [get(&[]), bad, wrong_version] {
        let answer = exchange(TcpStream::connect(to).await.unwrap(), &bytes).await;
        assert_eq!(answer, "", "{:?}", String::from_utf8_lossy(&bytes));
    }
    // The listener still serves the next connection that does it right.
    let mut good = v2(addr("198.51.100.4:1234"));
    good.extend(get(&[]));
    let answer = exchange(TcpStream::connect(to).await.unwrap(), &good).await;
    assert_eq!(forwarded(&answer)[0], "198.51.100.4");
    drop(app);
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_handshake() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pem, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let settings = format!(
        "{PROXY_FROM_LOCALHOST}\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        path_of(&pem),
        path_of(&key)
    );
    let (corral, _app) = corral(&settings).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            cert.cert.der().to_vec(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = TcpStream::connect(corral.addr("public")).await.unwrap();
    tcp.write_all(&v2(addr("198.51.100.4:1234"))).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = patiently("a TLS handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    let answer = exchange(tls, &get(&[])).await;
    let [xff, proto, _] = forwarded(&answer);
    assert_eq!((xff.as_str(), proto.as_str()), ("198.51.100.4", "https"));
}

#[tokio::test]
async fn http2_prior_knowledge_follows_the_header() {
    let (corral, _app) = corral(PROXY_FROM_LOCALHOST).await;
    let mut tcp = TcpStream::connect(corral.addr("public")).await.unwrap();
    tcp.write_all(&v1(addr("[2001:db8::9]:40000")))
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let executor = hyper_util::rt::TokioExecutor::new();
    let (mut h2, conn) = patiently(
        "an HTTP/2 handshake",
        hyper::client::conn::http2::handshake(executor, io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("http://app.test/")
        .body(empty())
        .unwrap();
    let response = patiently("an answer", h2.send_request(request)).await;
    let reply = read(response.unwrap()).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "2001:db8::9");
}

/// What a client claims of itself, to be believed or not.
const FORGED: [(&str, &str); 3] = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "forged.test"),
];

#[tokio::test]
async fn with_trusted_proxies_only_they_may_say_who_the_client_is() {
    let (corral, _app) = corral("trusted_proxies = [\"127.0.0.1/32\"]").await;
    let to = corral.addr("public");
    let from_untrusted = exchange(connect_from("127.0.0.2", to).await, &get(&FORGED)).await;
    assert_eq!(
        forwarded(&from_untrusted),
        ["127.0.0.2", "http", "app.test"].map(String::from)
    );
    let from_trusted = exchange(connect_from("127.0.0.1", to).await, &get(&FORGED)).await;
    assert_eq!(
        forwarded(&from_trusted),
        ["6.6.6.6, 127.0.0.1", "https", "forged.test"].map(String::from)
    );
}

#[tokio::test]
async fn without_trusted_proxies_the_chain_is_extended_for_everyone() {
    let (corral, _app) = corral("").await;
    let to = corral.addr("public");
    let answer = exchange(connect_from("127.0.0.2", to).await, &get(&FORGED)).await;
    assert_eq!(
        forwarded(&answer),
        ["6.6.6.6, 127.0.0.2", "http", "app.test"].map(String::from)
    );
}

/// Behind a load balancer, trust is the client's, not the balancer's: a
/// client the PROXY header names is trusted or not by its own address.
#[tokio::test]
async fn trusted_proxies_judge_the_client_a_proxy_header_names() {
    let settings = format!("trusted_proxies = [\"10.0.0.0/8\"]\n{PROXY_FROM_LOCALHOST}");
    let (corral, _app) = corral(&settings).await;
    let to = corral.addr("public");
    let mut from_outside = v1(addr("203.0.113.9:40000"));
    from_outside.extend(get(&FORGED));
    let answer = exchange(TcpStream::connect(to).await.unwrap(), &from_outside).await;
    assert_eq!(
        forwarded(&answer),
        ["203.0.113.9", "http", "app.test"].map(String::from)
    );
    let mut from_inside = v2(addr("10.1.2.3:40000"));
    from_inside.extend(get(&FORGED));
    let answer = exchange(TcpStream::connect(to).await.unwrap(), &from_inside).await;
    assert_eq!(
        forwarded(&answer),
        ["6.6.6.6, 10.1.2.3", "https", "forged.test"].map(String::from)
    );
}

/// `client_ip` hashing follows the carried address: every client behind
/// the one balancer connection keeps its own server, and they spread.
#[tokio::test]
async fn client_ip_hashing_uses_the_carried_address() {
    let (a, b) = (echo("a").await, echo("b").await);
    let config = simple_config(
        &[a.addr, b.addr],
        "balance = \"consistent_hash\"\nhash_key = \"client_ip\"",
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{PROXY_FROM_LOCALHOST}"),
    );
    let corral = Corral::start(&config).await;
    let to = corral.addr("public");
    let mut seen = std::collections::HashMap::new();
    for round in 0..2 {
        for i in 0..32u8 {
            let mut bytes = v2(SocketAddr::from(([198, 51, 100, i], 1000)));
            bytes.extend(get(&[]));
            let answer = exchange(TcpStream::connect(to).await.unwrap(), &bytes).await;
            let name = reply(&answer).1["name"].as_str().unwrap().to_owned();
            let first = seen.entry(i).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "client {i} moved in round {round}");
        }
    }
    let on_a = seen.values().filter(|n| *n == "a").count();
    assert!((1..32).contains(&on_a), "{on_a} of 32 clients on a");
}
