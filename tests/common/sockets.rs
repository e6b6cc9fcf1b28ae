//! Loopback sockets that hold a port without serving it, and the listening
//! sockets the kernel reports on an address.

use std::net::SocketAddr;

/// Keeps the address of [`refusing_addr`] refusing connections while it lives.
#[must_use = "the address refuses connections only while this lives"]
pub struct Refusing(socket2::Socket);

/// A loopback address that refuses every connection for as long as the
/// returned guard lives (bind it to a named variable, not `_`): a socket is
/// bound to it and never listens. The socket holds the port (without
/// `SO_REUSEADDR`, so nothing else can bind it), unlike a port bound and
/// dropped, which another test may take in the meantime.
pub fn refusing_addr() -> (Refusing, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (Refusing(socket), addr)
}

/// Inodes of the TCP sockets listening on exactly `addr` (IPv4). The
/// address counts, not only the port: a port number in use on one loopback
/// address may be handed out again on another.
pub fn listening_inodes(addr: SocketAddr) -> std::collections::HashSet<u64> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("{addr} is not IPv4");
    };
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1] == wanted && f[3] == "0A")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Keeps `addr`'s port from being taken by anyone else while it lives, and
/// never accepts: a socket bound beside corral's (`SO_REUSEPORT`, as
/// theirs) that never listens. Once corral's sockets close, a connection to
/// the port is refused, not taken by another test's listener.
pub fn hold_port(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket
}
