//! A test DNS server on 127.0.0.1:0 (UDP and TCP on one port), answering A
//! and AAAA queries from a table the test changes while corral runs: the
//! nameserver behind `[resolver] nameservers`.
//!
//! Messages are parsed and built with hickory-proto, the crate corral's own
//! resolver parses them with; only the TCP framing (a 2-byte big-endian
//! length before each message, RFC 1035 4.2.2) is done here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::patience::{PATIENCE, within_patience};

/// The negative-caching TTL (the SOA's TTL and MINIMUM) of NXDOMAIN and
/// NODATA answers until [`DnsServer::negative_ttl`] changes it: short, so a
/// name a test adds is seen soon by a resolver that cached its absence.
pub const DEFAULT_NEGATIVE_TTL: u32 = 1;

/// The most a UDP answer carries when the query has no EDNS (RFC 1035
/// 4.2.1); a longer answer goes out truncated (TC set, no records), and the
/// resolver asks again over TCP.
const UDP_PLAIN_LIMIT: usize = 512;

/// The payload size this server advertises in its EDNS answers, and the
/// most it reads from one UDP datagram.
const UDP_MAX: u16 = 4096;

/// An authoritative DNS server on 127.0.0.1 (UDP and TCP on the same port),
/// answering A and AAAA queries from a table the test changes at will.
/// Stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// The table and switches the test sets, and the count of queries per
/// name (in a watch channel, so [`DnsServer::wait_queries`] is woken by
/// each query rather than looking again and again).
struct Shared {
    state: Mutex<State>,
    queries: watch::Sender<HashMap<String, usize>>,
}

struct State {
    names: HashMap<String, Entry>,
    fail: bool,
    fail_type: Option<RecordType>,
    silent: bool,
    negative_ttl: u32,
}

/// What a known name resolves to.
struct Entry {
    addrs: Vec<IpAddr>,
    ttl: u32,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DnsServer {
    /// Binds UDP and TCP to one free port of 127.0.0.1 and starts serving.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                names: HashMap::new(),
                fail: false,
                fail_type: None,
                silent: false,
                negative_ttl: DEFAULT_NEGATIVE_TTL,
            }),
            queries: watch::Sender::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve_udp(udp, shared.clone(), stop.clone()));
        tokio::spawn(serve_tcp(tcp, shared.clone(), stop.clone()));
        DnsServer { addr, shared, stop }
    }

    /// Answers `name` (e.g. "api.internal"; case-insensitive, trailing dot
    /// optional) with these addresses (A for v4, AAAA for v6) and TTL. An
    /// empty `addrs` makes a name that exists with no addresses (NODATA).
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let entry = Entry {
            addrs: addrs.to_vec(),
            ttl,
        };
        self.state().names.insert(key(name), entry);
    }

    /// `name` is no longer known: NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.state().names.remove(&key(name));
    }

    /// While on, every query gets SERVFAIL.
    pub fn fail(&self, on: bool) {
        self.state().fail = on;
    }

    /// While `Some`, queries of that type get SERVFAIL (a path to the
    /// nameserver that loses one family's answers).
    pub fn fail_type(&self, rtype: Option<RecordType>) {
        self.state().fail_type = rtype;
    }

    /// While on, queries are read and never answered (a dead nameserver:
    /// the resolver times out).
    pub fn silent(&self, on: bool) {
        self.state().silent = on;
    }

    /// The TTL of the SOA in NXDOMAIN and NODATA answers, which bounds how
    /// long a resolver caches the absence (0: not at all). Starts at
    /// [`DEFAULT_NEGATIVE_TTL`].
    pub fn negative_ttl(&self, ttl: u32) {
        self.state().negative_ttl = ttl;
    }

    /// Queries for `name` received so far (any type, any transport, answered
    /// or not).
    pub fn queries(&self, name: &str) -> usize {
        count(&self.shared.queries.borrow(), &key(name))
    }

    /// Returns once `queries(name) >= n`, woken by the server as queries
    /// arrive; panics if that takes longer than [`PATIENCE`].
    pub async fn wait_queries(&self, name: &str, n: usize) {
        let name = key(name);
        let mut seen = self.shared.queries.subscribe();
        let reached = within_patience(seen.wait_for(|counts| count(counts, &name) >= n)).await;
        if reached.is_none() {
            let got = self.queries(&name);
            panic!("DNS server: {got} of {n} queries for {name:?} after {PATIENCE:?}");
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1. The
/// port is picked for UDP; should another socket hold it for TCP, another
/// port is tried.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..64 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("DNS server: no port of 127.0.0.1 free for both UDP and TCP");
}

/// The table's key for a name: lower case, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn count(counts: &HashMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, stop: CancellationToken) {
    let mut buf = vec![0u8; usize::from(UDP_MAX)];
    loop {
        let (len, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                // A datagram the kernel could not deliver whole, or an ICMP
                // error of an earlier answer: nothing to answer.
                Err(_) => continue,
            },
        };
        let Some((request, response)) = shared.respond(&buf[..len]) else {
            continue;
        };
        let limit = match request.edns {
            Some(_) => usize::from(request.max_payload().clamp(512, UDP_MAX)),
            None => UDP_PLAIN_LIMIT,
        };
        let mut bytes = response.to_vec().unwrap();
        if bytes.len() > limit {
            bytes = response.truncate().to_vec().unwrap();
        }
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(serve_tcp_connection(stream, shared.clone(), stop.clone()));
    }
}

/// One TCP connection: length-prefixed queries, each answered in turn
/// until the client closes or the server stops.
async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let query = tokio::select! {
            () = stop.cancelled() => return,
            q = read_frame(&mut stream) => match q {
                Some(q) => q,
                None => return,
            },
        };
        let Some((_, response)) = shared.respond(&query) else {
            continue;
        };
        let bytes = response.to_vec().unwrap();
        let len = u16::try_from(bytes.len()).unwrap();
        let mut frame = Vec::with_capacity(2 + bytes.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&bytes);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// One length-prefixed message; `None` at the end of the stream.
async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

impl Shared {
    /// The request in `bytes` and its answer; `None` for what is not a
    /// query, or while the server is silent. Each query is counted first,
    /// so a resolver that has an answer finds its query counted.
    fn respond(&self, bytes: &[u8]) -> Option<(Message, Message)> {
        let request = Message::from_vec(bytes).ok()?;
        if request.message_type != MessageType::Query {
            return None;
        }
        self.queries.send_modify(|counts| {
            for query in &request.queries {
                *counts.entry(key(&query.name().to_ascii())).or_default() += 1;
            }
        });
        let state = self.state.lock().unwrap();
        if state.silent {
            return None;
        }
        let response = answer(&state, &request);
        Some((request, response))
    }
}

/// The answer to `request` from the table: the addresses of the asked type,
/// NODATA (no answers, an SOA) for a known name without any, NXDOMAIN (an
/// SOA) for an unknown one, SERVFAIL for everything (or the type) while
/// failing.
fn answer(state: &State, request: &Message) -> Message {
    let mut response = Message::new(request.id, MessageType::Response, request.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX);
        response.set_edns(edns);
    }
    let asked = request.queries.first().map(|q| q.query_type());
    if state.fail || state.fail_type.is_some_and(|t| asked == Some(t)) {
        response.metadata.authoritative = false;
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    // Resolvers ask one question per message; answer the first.
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = query.name();
    let Some(entry) = state.names.get(&key(&name.to_ascii())) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(soa(name, state.negative_ttl));
        return response;
    };
    let answers: Vec<Record> = entry
        .addrs
        .iter()
        .filter_map(|addr| match (addr, query.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A::from(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA::from(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(name.clone(), entry.ttl, data))
        .collect();
    if answers.is_empty() {
        response.add_authority(soa(name, state.negative_ttl));
    } else {
        response.add_answers(answers);
    }
    response
}

/// A minimal SOA for the zone above `name` (its parent), whose TTL and
/// MINIMUM are the negative-caching TTL (RFC 2308 5).
fn soa(name: &Name, ttl: u32) -> Record {
    let zone = name.base_name();
    let mname = Name::from_ascii("ns.dns-fixture.test.").unwrap();
    let rname = Name::from_ascii("hostmaster.dns-fixture.test.").unwrap();
    let data = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
    Record::from_rdata(zone, ttl, RData::SOA(data))
}
