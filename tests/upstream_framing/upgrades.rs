//! Upgrades on the upstream side, after Pingora's CVE-2026-2833
//! (GHSA-xq2h-p299-vjwv: a proxy that went into tunnel mode before the
//! upstream's 101 passed smuggled bytes on): the switch happens on a 101
//! to a request that asked for it, and only then. Bytes an upstream sends
//! after any other answer are no tunnel's and no later request's; bytes
//! that share the 101's packet are the tunnel's first.

use crate::client::Client;
use crate::common::*;
use crate::{by_target, fixture};

const WEBSOCKET: &str = "GET /ws HTTP/1.1\r\nHost: upstream.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const SWITCHED: &str =
    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

#[tokio::test]
async fn bytes_after_a_refused_upgrade_reach_neither_a_tunnel_nor_a_later_request() {
    // A 200 to the upgrade, then what a switched upstream would send.
    let refused = concat!(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        "tunnel-bytes HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
    );
    let f = fixture(by_target(vec![("/ws".into(), Wire::bytes(refused))])).await;
    let mut client = Client::connect(f.addr).await;
    client.send(WEBSOCKET.as_bytes()).await;
    let got = client.response(false).await;
    assert_eq!((got.status, got.text().as_str()), (200, "no"), "{got:?}");
    // The client's next bytes are a request corral reads itself, on the
    // same client connection, and the upstream's bytes never follow.
    let next = client.get("/next").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "/next"),
        "{next:?}"
    );
    let received = String::from_utf8_lossy(&client.received).into_owned();
    assert!(!received.contains("tunnel-bytes"), "{received}");
    assert!(!received.contains("smuggled"), "{received}");
    // Nor does any later client get them.
    let (_, later) = f.get("/later").await;
    assert_eq!((later.status, later.text().as_str()), (200, "/later"));
    assert!(f.up.tunnel.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bytes_in_the_101_s_packet_are_the_tunnel_s_first_bytes() {
    let switched = format!("{SWITCHED}first-bytes");
    let f = fixture(by_target(vec![(
        "/ws".into(),
        Wire::bytes(switched).then(Then::Echo),
    )]))
    .await;
    let mut client = Client::connect(f.addr).await;
    client.send(WEBSOCKET.as_bytes()).await;
    let got = client.response(false).await;
    assert_eq!(got.status, 101, "{got:?}");
    assert_eq!(got.header("upgrade"), ["websocket"]);
    let first = client.read_at_least("first-bytes".len()).await;
    assert_eq!(String::from_utf8_lossy(&first), "first-bytes");
    // The tunnel carries both ways from there.
    client.send(b"ping").await;
    let echoed = client.read_at_least(4).await;
    assert_eq!(echoed, b"ping");
    assert_eq!(f.up.tunnel.lock().unwrap().as_slice(), b"ping");
}

#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502_and_its_connection_dropped() {
    let switched = format!("{SWITCHED}from-the-tunnel");
    let f = fixture(by_target(vec![(
        "/plain".into(),
        Wire::bytes(switched).then(Then::Echo),
    )]))
    .await;
    let mut client = Client::connect(f.addr).await;
    let got = client.get("/plain").await;
    assert_eq!(got.status, 502, "{got:?}");
    let received = String::from_utf8_lossy(&client.received).into_owned();
    assert!(!received.contains("from-the-tunnel"), "{received}");
    f.dropped("/plain", "a 101 nobody asked for").await;
    assert!(f.up.tunnel.lock().unwrap().is_empty());
}
