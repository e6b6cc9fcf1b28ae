//! The test DNS server itself (tests/common/dns.rs), asked by the resolver
//! corral uses (hickory-resolver, UDP then TCP) and by hand-built queries
//! over UDP and TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::DnsServer;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const NAME: &str = "api.internal";

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

/// A resolver asking only `dns` (UDP, then TCP on truncation), with no
/// search domains and no hosts file, giving up on a query after `timeout`.
fn resolver(dns: &DnsServer, timeout: Duration) -> TokioResolver {
    let mut server = NameServerConfig::udp_and_tcp(dns.addr.ip());
    for connection in &mut server.connections {
        connection.port = dns.addr.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .unwrap()
}

/// The addresses of `name` and the TTLs they came with, sorted.
async fn lookup(resolver: &TokioResolver, name: &str) -> (Vec<IpAddr>, Vec<u32>) {
    let found = resolver.lookup_ip(name).await.unwrap();
    let mut addrs: Vec<IpAddr> = found.iter().collect();
    addrs.sort();
    let mut ttls: Vec<u32> = found.as_lookup().answers().iter().map(|r| r.ttl).collect();
    ttls.dedup();
    (addrs, ttls)
}

/// A query for `name`, `record_type`, as resolvers send it.
fn query(name: &str, record_type: RecordType, edns: bool) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    if edns {
        message.set_edns(Edns::new());
    }
    message
}

/// `request` over UDP, and the answer.
async fn ask_udp(dns: &DnsServer, request: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(dns.addr).await.unwrap();
    socket.send(&request.to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let len = common::patiently("UDP answer", socket.recv(&mut buf))
        .await
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

/// Writes `request` to a TCP connection, length-prefixed.
async fn send_tcp(stream: &mut TcpStream, request: &Message) {
    let bytes = request.to_vec().unwrap();
    let mut frame = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&bytes);
    stream.write_all(&frame).await.unwrap();
}

/// The next length-prefixed message of a TCP connection.
async fn recv_tcp(stream: &mut TcpStream) -> Message {
    common::patiently("TCP answer", async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut bytes).await.unwrap();
        Message::from_vec(&bytes).unwrap()
    })
    .await
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

const PATIENT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn set_answers_a_and_aaaa_with_the_ttl() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(2), v6(1), v4(1)], 42);
    let resolver = resolver(&dns, PATIENT);

    let (addrs, ttls) = lookup(&resolver, NAME).await;
    assert_eq!(addrs, [v4(1), v4(2), v6(1)]);
    assert_eq!(ttls, [42]);
    // One A query and one AAAA query.
    assert_eq!(dns.queries(NAME), 2);
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_trailing_dot_optional() {
    let dns = DnsServer::start().await;
    dns.set("API.Internal.", &[v4(1)], 60);
    let resolver = resolver(&dns, PATIENT);

    let found = resolver.ipv4_lookup("api.INTERNAL.").await.unwrap();
    assert_eq!(found.answers().len(), 1);
    assert_eq!(dns.queries("Api.Internal"), 1);
    assert_eq!(dns.queries("api.internal."), 1);
}

#[tokio::test]
async fn a_changed_set_is_seen_by_a_fresh_lookup() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 300);
    let resolver = resolver(&dns, PATIENT);
    assert_eq!(lookup(&resolver, NAME).await.0, [v4(1)]);

    dns.set(NAME, &[v4(3), v4(4)], 5);
    // Within the TTL the resolver answers from its cache, asking nothing.
    assert_eq!(lookup(&resolver, NAME).await.0, [v4(1)]);
    assert_eq!(dns.queries(NAME), 2);

    resolver.clear_cache();
    let (addrs, ttls) = lookup(&resolver, NAME).await;
    assert_eq!(addrs, [v4(3), v4(4)]);
    assert_eq!(ttls, [5]);
    assert_eq!(dns.queries(NAME), 4);
}

#[tokio::test]
async fn a_removed_name_is_nxdomain_with_an_soa() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 60);
    dns.remove(NAME);
    dns.negative_ttl(7);
    let resolver = resolver(&dns, PATIENT);

    let err = resolver.ipv4_lookup(NAME).await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    let NetError::Dns(DnsError::NoRecordsFound(no)) = err else {
        unreachable!()
    };
    assert_eq!(no.negative_ttl, Some(7));
    assert!(no.soa.is_some());

    // Never set at all: the same.
    let err = resolver.ipv4_lookup("other.internal").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
}

#[tokio::test]
async fn a_type_without_records_is_nodata_with_an_soa() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 60);
    let resolver = resolver(&dns, PATIENT);

    let err = resolver.ipv6_lookup(NAME).await.unwrap_err();
    let NetError::Dns(DnsError::NoRecordsFound(no)) = err else {
        panic!("not NODATA: {err:?}")
    };
    assert_eq!(no.response_code, ResponseCode::NoError);
    assert!(no.soa.is_some());
    assert_eq!(no.negative_ttl, Some(common::DEFAULT_NEGATIVE_TTL));

    // Over the wire: NOERROR, no answers, the SOA in authority.
    let answer = ask_udp(&dns, &query("api.internal.", RecordType::AAAA, false)).await;
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities.len(), 1);
    assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn fail_answers_servfail_until_turned_off() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 60);
    dns.fail(true);
    let resolver = resolver(&dns, PATIENT);

    let err = resolver.ipv4_lookup(NAME).await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{err:?}"
    );
    assert!(dns.queries(NAME) >= 1);

    dns.fail(false);
    let found = resolver.ipv4_lookup(NAME).await.unwrap();
    assert_eq!(found.answers().len(), 1);
}

#[tokio::test]
async fn silent_reads_queries_and_never_answers() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 60);
    dns.silent(true);
    let resolver = resolver(&dns, Duration::from_millis(200));

    let err = common::patiently("a lookup of a silent server", resolver.ipv4_lookup(NAME))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    assert!(dns.queries(NAME) >= 1, "the query was read");

    dns.silent(false);
    let found = resolver.ipv4_lookup(NAME).await.unwrap();
    assert_eq!(found.answers().len(), 1);
}

#[tokio::test]
async fn tcp_answers_length_prefixed_queries_on_one_connection() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1), v6(1)], 30);
    let mut stream = TcpStream::connect(dns.addr).await.unwrap();

    let a = query("Api.Internal.", RecordType::A, false);
    let aaaa = query("api.internal.", RecordType::AAAA, true);
    send_tcp(&mut stream, &a).await;
    send_tcp(&mut stream, &aaaa).await;

    let first = recv_tcp(&mut stream).await;
    assert_eq!(first.id, a.id);
    assert_eq!(first.message_type, MessageType::Response);
    assert!(first.authoritative);
    assert_eq!(addresses(&first), [v4(1)]);
    // The name as asked, letter case included.
    assert_eq!(first.answers[0].name.to_ascii(), "Api.Internal.");
    assert_eq!(first.answers[0].ttl, 30);

    let second = recv_tcp(&mut stream).await;
    assert_eq!(second.id, aaaa.id);
    assert_eq!(addresses(&second), [v6(1)]);
    assert!(second.edns.is_some(), "EDNS answered with EDNS");

    dns.remove(NAME);
    send_tcp(&mut stream, &a).await;
    assert_eq!(
        recv_tcp(&mut stream).await.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(dns.queries(NAME), 3);
}

#[tokio::test]
async fn a_long_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let dns = DnsServer::start().await;
    let many: Vec<IpAddr> = (1..=200).map(v4).collect();
    dns.set(NAME, &many, 60);

    let truncated = ask_udp(&dns, &query("api.internal.", RecordType::A, false)).await;
    assert!(truncated.truncation);
    assert!(truncated.answers.is_empty());

    // The resolver asks again over TCP and gets them all.
    let resolver = resolver(&dns, PATIENT);
    let found = resolver.ipv4_lookup(NAME).await.unwrap();
    assert_eq!(found.answers().len(), 200);
    // The raw query, the resolver's over UDP, its retry over TCP.
    assert_eq!(dns.queries(NAME), 3);
}

#[tokio::test]
async fn wait_queries_is_woken_by_a_query() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[v4(1)], 60);
    // Already there: returns at once.
    dns.wait_queries(NAME, 0).await;

    let mut waiting = std::pin::pin!(dns.wait_queries(NAME, 1));
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    // Another name's query does not count.
    ask_udp(&dns, &query("other.internal.", RecordType::A, false)).await;
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());

    let resolver = resolver(&dns, PATIENT);
    let lookup = tokio::spawn(async move { resolver.ipv4_lookup(NAME).await.map(|_| ()) });
    waiting.await;
    assert!(dns.queries(NAME) >= 1);
    lookup.await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_the_server_closes_its_connections() {
    let dns = DnsServer::start().await;
    let addr: SocketAddr = dns.addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The connection is served before the server goes.
    send_tcp(&mut stream, &query("api.internal.", RecordType::A, false)).await;
    assert_eq!(
        recv_tcp(&mut stream).await.response_code,
        ResponseCode::NXDomain
    );

    drop(dns);
    let mut rest = Vec::new();
    let read = common::patiently("the connection closing", stream.read_to_end(&mut rest)).await;
    assert_eq!(read.unwrap(), 0);
}
