//! Loopback sockets that hold a port without serving it, and the TCP
//! sockets the kernel reports (`/proc/net/tcp`).

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

/// One IPv4 TCP socket as `/proc/net/tcp` reports it.
#[derive(Debug, Clone, Copy)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    /// Bytes waiting to be read; on a listening socket, the connections
    /// waiting to be accepted.
    pub rx_queue: u64,
    pub inode: u64,
}

/// Every IPv4 TCP socket of this network namespace.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    // `0100007F:1F90`: the address as the kernel stores it, then the port.
    let addr = |field: &str| -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let ip = std::net::Ipv4Addr::from(ip.to_ne_bytes());
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    };
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(TcpSocket {
                local: addr(f[1])?,
                remote: addr(f[2])?,
                // 0A is LISTEN.
                listening: f[3] == "0A",
                // `tx_queue:rx_queue`, in hex.
                rx_queue: u64::from_str_radix(f[4].split_once(':')?.1, 16).ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// Inodes of the TCP sockets listening on exactly `addr` (IPv4). The
/// address counts, not only the port: a port number in use on one loopback
/// address may be handed out again on another.
pub fn listening_inodes(addr: SocketAddr) -> std::collections::HashSet<u64> {
    assert!(addr.is_ipv4(), "{addr} is not IPv4");
    tcp_sockets()
        .into_iter()
        .filter(|s| s.listening && s.local == addr)
        .map(|s| s.inode)
        .collect()
}

/// Connections the kernel has queued, not yet accepted, on the sockets
/// listening on exactly `addr` (IPv4).
pub fn accept_queue(addr: SocketAddr) -> u64 {
    tcp_sockets()
        .into_iter()
        .filter(|s| s.listening && s.local == addr)
        .map(|s| s.rx_queue)
        .sum()
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

/// The inodes of the sockets process `pid` holds (none once it is gone).
pub fn socket_inodes(pid: u64) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}
