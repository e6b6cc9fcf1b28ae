//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2) that a load balancer sends before a connection's own bytes, to
//! say whom the connection is really from.
//!
//! A pure parser: [`parse`] takes the bytes received so far and says that
//! more are needed, where the header ends and what it carries, or why it is
//! not one. It reads no socket and decides no trust: the worker reads
//! (`worker::proxy_header`) and believes only the peers a listener names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 line, `CRLF` included (the spec's bound: a
/// `TCP6` line with the longest addresses and ports fits).
pub const V1_MAX: usize = 107;

/// What every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version and command, family and protocol, length.
const V2_FIXED: usize = 16;

/// The longest version 2 header accepted. Its length field allows 64 KiB;
/// an address block and the TLVs load balancers send (an endpoint ID, a
/// TLS summary, a client certificate's name) take well under 1 KiB, and a
/// peer that sends more cannot make each connection hold 64 KiB.
pub const V2_MAX: usize = 4096;

const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A header's beginning, or nothing yet: wait for more bytes.
    Incomplete,
    Header(Header),
}

/// A complete header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The bytes the header took; those after it are the connection's own
    /// (TLS or HTTP).
    pub len: usize,
    /// `None` for a health check or other connection of the proxy's own
    /// (`LOCAL`, `UNKNOWN`) and for families without IP addresses: the
    /// connection's real endpoints stand.
    pub addresses: Option<Addresses>,
}

/// The connection as the proxy in front received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// Where the client connected to.
    pub destination: SocketAddr,
}

/// Why bytes are not a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line not ended within {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v1 line malformed: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version {0} unknown")]
    V2Version(u8),
    #[error("PROXY v2 command {0} unknown")]
    V2Command(u8),
    #[error("PROXY v2 address family and protocol {0:#04x} unknown")]
    V2Family(u8),
    #[error("PROXY v2 header of {0} bytes, over the {V2_MAX}-byte limit")]
    V2TooLong(usize),
    #[error("PROXY v2 addresses take {need} bytes, the header has {have}")]
    V2Addresses { need: usize, have: usize },
    #[error("PROXY v2 TLV runs past the header")]
    V2Tlv,
}

/// Reads a header from the start of `bytes`, never past its end.
pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    match bytes.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => v1(bytes),
        Some(b'\r') => v2(bytes),
        Some(_) => Err(Error::NotProxy),
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `TCP6` alike, or `PROXY UNKNOWN`
/// followed by anything up to `CRLF`.
fn v1(bytes: &[u8]) -> Result<Parsed, Error> {
    let start = bytes.len().min(V1_PREFIX.len());
    if bytes[..start] != V1_PREFIX[..start] {
        return Err(Error::NotProxy);
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Err(Error::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window[..newline]
        .strip_suffix(b"\r")
        .and_then(|l| l.strip_prefix(V1_PREFIX))
        .ok_or(Error::V1Malformed("not ended by CRLF"))?;
    let len = newline + 1;
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(Parsed::Header(Header {
            len,
            addresses: None,
        }));
    }
    let line = std::str::from_utf8(line).map_err(|_| Error::V1Malformed("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err(Error::V1Malformed("not five fields"));
    };
    let ip = |text: &str| -> Result<IpAddr, Error> {
        match protocol {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(Error::V1Malformed("protocol not TCP4, TCP6 or UNKNOWN")),
        }
        .map_err(|_| Error::V1Malformed("bad address"))
    };
    let addresses = Addresses {
        source: SocketAddr::new(ip(source)?, port(source_port)?),
        destination: SocketAddr::new(ip(destination)?, port(destination_port)?),
    };
    Ok(Parsed::Header(Header {
        len,
        addresses: Some(addresses),
    }))
}

/// A decimal port, 0 to 65535, without sign or leading zeros.
fn port(text: &str) -> Result<u16, Error> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(Error::V1Malformed("bad port"));
    }
    text.parse().map_err(|_| Error::V1Malformed("bad port"))
}

/// The binary header: signature, version and command, family and
/// protocol, a length, then addresses and TLVs.
fn v2(bytes: &[u8]) -> Result<Parsed, Error> {
    let start = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..start] != V2_SIGNATURE[..start] {
        return Err(Error::NotProxy);
    }
    let Some(fixed) = bytes.first_chunk::<V2_FIXED>() else {
        return Ok(Parsed::Incomplete);
    };
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(Error::V2Version(version));
    }
    let local = match fixed[12] & 0x0f {
        0 => true,
        1 => false,
        command => return Err(Error::V2Command(command)),
    };
    let family = fixed[13];
    // Address family (high nibble) and transport (low); only these pairs
    // are defined, and receivers must refuse the others.
    let address_len = match family {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(Error::V2Family(family)),
    };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX {
        return Err(Error::V2TooLong(len));
    }
    let Some(block) = bytes.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete);
    };
    let (addresses, tlvs) = block
        .split_at_checked(address_len)
        .ok_or(Error::V2Addresses {
            need: address_len,
            have: block.len(),
        })?;
    check_tlvs(tlvs)?;
    // LOCAL: the proxy's own connection (a health check); its block is
    // skipped, whatever it holds.
    let addresses = if local {
        None
    } else {
        ip_addresses(family >> 4, addresses)
    };
    Ok(Parsed::Header(Header { len, addresses }))
}

/// The source and destination of an `AF_INET` or `AF_INET6` block
/// (addresses, then ports, big-endian); `None` for the other families.
fn ip_addresses(family: u8, block: &[u8]) -> Option<Addresses> {
    let (source, destination, ports): (IpAddr, IpAddr, &[u8]) = match family {
        1 => {
            let (ips, ports) = block.split_first_chunk::<8>()?;
            let (s, d) = ips.split_at(4);
            let s: [u8; 4] = s.try_into().ok()?;
            let d: [u8; 4] = d.try_into().ok()?;
            (s.into(), d.into(), ports)
        }
        2 => {
            let (ips, ports) = block.split_first_chunk::<32>()?;
            let (s, d) = ips.split_at(16);
            let s: [u8; 16] = s.try_into().ok()?;
            let d: [u8; 16] = d.try_into().ok()?;
            (s.into(), d.into(), ports)
        }
        _ => return None,
    };
    let [sp0, sp1, dp0, dp1] = *ports.first_chunk::<4>()?;
    Some(Addresses {
        source: SocketAddr::new(source, u16::from_be_bytes([sp0, sp1])),
        destination: SocketAddr::new(destination, u16::from_be_bytes([dp0, dp1])),
    })
}

/// TLVs (type, 16-bit length, value) are skipped, but must tile what
/// follows the addresses exactly.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), Error> {
    while !tlvs.is_empty() {
        let Some(&[_, high, low]) = tlvs.first_chunk::<3>() else {
            return Err(Error::V2Tlv);
        };
        let end = 3 + usize::from(u16::from_be_bytes([high, low]));
        tlvs = tlvs.get(end..).ok_or(Error::V2Tlv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A version 1 line for `addresses` (`UNKNOWN` without).
    fn v1_line(addresses: Option<Addresses>) -> Vec<u8> {
        let Some(Addresses {
            source: s,
            destination: d,
        }) = addresses
        else {
            return b"PROXY UNKNOWN\r\n".to_vec();
        };
        let protocol = if s.is_ipv4() { "TCP4" } else { "TCP6" };
        let (sp, dp) = (s.port(), d.port());
        let (s, d) = (s.ip(), d.ip());
        format!("PROXY {protocol} {s} {d} {sp} {dp}\r\n").into_bytes()
    }

    /// A version 2 header: PROXY with `addresses`, LOCAL without, and
    /// `tlvs` after the address block.
    fn v2_header(addresses: Option<Addresses>, tlvs: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        let (command, family) = match addresses {
            None => (0x20, 0x00),
            Some(a) => {
                let family = match (a.source.ip(), a.destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        block.extend(s.octets());
                        block.extend(d.octets());
                        0x11
                    }
                    (s, d) => {
                        block.extend(ipv6(s).octets());
                        block.extend(ipv6(d).octets());
                        0x21
                    }
                };
                block.extend(a.source.port().to_be_bytes());
                block.extend(a.destination.port().to_be_bytes());
                (0x21, family)
            }
        };
        block.extend_from_slice(tlvs);
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([command, family]);
        header.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
        header.extend(block);
        header
    }

    fn ipv6(ip: IpAddr) -> Ipv6Addr {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }
    }

    fn header(bytes: &[u8]) -> Header {
        match parse(bytes) {
            Ok(Parsed::Header(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn source(bytes: &[u8]) -> Option<SocketAddr> {
        header(bytes).addresses.map(|a| a.source)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_carries_ipv4_and_ipv6_clients() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET /";
        let h = header(line);
        assert_eq!(h.len, line.len() - b"GET /".len());
        assert_eq!(
            h.addresses,
            Some(Addresses {
                source: addr("192.0.2.7:56324"),
                destination: addr("198.51.100.1:443"),
            })
        );
        let line = b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n";
        assert_eq!(source(line), Some(addr("[2001:db8::7]:65535")));
    }

    #[test]
    fn v1_unknown_keeps_the_real_endpoints_whatever_follows_it() {
        assert_eq!(header(b"PROXY UNKNOWN\r\n").len, 15);
        assert_eq!(source(b"PROXY UNKNOWN ffff:: 1.2.3.4 x y\r\n"), None);
    }

    #[test]
    fn v1_lines_that_break_the_grammar_are_refused() {
        for line in [
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            "PROXY TCP4 192.0.2.7  198.51.100.1 56324 443\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 \r\n",
            "PROXY TCP4 2001:db8::7 198.51.100.1 56324 443\r\n",
            "PROXY TCP6 192.0.2.7 ::1 56324 443\r\n",
            "PROXY TCP4 192.0.2.07 198.51.100.1 56324 443\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 +80 443\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 080 443\r\n",
            "PROXY UDP4 192.0.2.7 198.51.100.1 56324 443\r\n",
            "PROXY tcp4 192.0.2.7 198.51.100.1 56324 443\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY \r\n",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Err(Error::V1Malformed(_))),
                "{line:?}: {:?}",
                parse(line.as_bytes())
            );
        }
    }

    #[test]
    fn v1_is_bounded_at_107_bytes() {
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(V1_MAX - 2, b'x');
        longest.extend(b"\r\n");
        assert_eq!(header(&longest).len, V1_MAX);
        let mut over = longest[..V1_MAX - 2].to_vec();
        over.extend(b"x\r\n");
        assert_eq!(parse(&over), Err(Error::V1TooLong));
        assert_eq!(parse(&over[..V1_MAX]), Err(Error::V1TooLong));
        assert_eq!(parse(&over[..V1_MAX - 1]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_carries_ipv4_and_ipv6_clients_and_skips_tlvs() {
        let a = Addresses {
            source: addr("192.0.2.7:56324"),
            destination: addr("198.51.100.1:443"),
        };
        let mut bytes = v2_header(Some(a), &[]);
        assert_eq!(bytes.len(), 28);
        bytes.extend(b"\x16\x03\x01");
        assert_eq!(
            header(&bytes),
            Header {
                len: 28,
                addresses: Some(a)
            }
        );
        let a = Addresses {
            source: addr("[2001:db8::7]:1"),
            destination: addr("[::1]:8443"),
        };
        // PP2_TYPE_AUTHORITY, then an empty PP2_TYPE_NOOP.
        let tlvs = b"\x02\x00\x0bexample.com\x04\x00\x00";
        let bytes = v2_header(Some(a), tlvs);
        assert_eq!(
            header(&bytes),
            Header {
                len: 16 + 36 + 17,
                addresses: Some(a)
            }
        );
    }

    #[test]
    fn v2_local_and_families_without_ip_keep_the_real_endpoints() {
        assert_eq!(
            header(&v2_header(None, &[])),
            Header {
                len: 16,
                addresses: None
            }
        );
        // LOCAL skips its block whatever the family says.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x11, 0, 12]);
        local.extend([0; 12]);
        assert_eq!(source(&local), None);
        // PROXY over AF_UNSPEC, and over AF_UNIX (two 108-byte paths).
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend([0x21, 0x00, 0, 0]);
        assert_eq!(source(&unspec), None);
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend([0x21, 0x31, 0, 216]);
        unix.extend([0; 216]);
        assert_eq!(
            header(&unix),
            Header {
                len: 232,
                addresses: None
            }
        );
    }

    #[test]
    fn v2_headers_that_break_the_format_are_refused() {
        let good = v2_header(
            Some(Addresses {
                source: addr("192.0.2.7:1"),
                destination: addr("192.0.2.8:2"),
            }),
            &[],
        );
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            parse(&bytes)
        };
        assert_eq!(with(11, b'X'), Err(Error::NotProxy));
        assert_eq!(with(12, 0x11), Err(Error::V2Version(1)));
        assert_eq!(with(12, 0x22), Err(Error::V2Command(2)));
        assert_eq!(with(13, 0x13), Err(Error::V2Family(0x13)));
        assert_eq!(with(13, 0x10), Err(Error::V2Family(0x10)));
        // IPv6 addresses promised, twelve bytes sent.
        assert_eq!(
            with(13, 0x21),
            Err(Error::V2Addresses { need: 36, have: 12 })
        );
        // The length claims more than the limit: refused before waiting.
        assert_eq!(with(14, 0x10), Err(Error::V2TooLong(16 + 0x100c)));
        let mut torn = good.clone();
        torn[15] += 2;
        torn.extend([0x04, 0x00]);
        assert_eq!(parse(&torn), Err(Error::V2Tlv));
        let mut overrun = good.clone();
        overrun[15] += 3;
        overrun.extend([0x04, 0x00, 0x01]);
        assert_eq!(parse(&overrun), Err(Error::V2Tlv));
    }

    #[test]
    fn other_protocols_are_not_proxy_headers() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PRI * HTTP/2.0",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert_eq!(parse(bytes), Err(Error::NotProxy), "{bytes:?}");
        }
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    }

    fn addresses(v4: bool) -> impl Strategy<Value = Addresses> {
        let ip = move |octets: [u8; 16]| -> IpAddr {
            if v4 {
                IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
            } else {
                IpAddr::from(octets)
            }
        };
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(move |(s, d, sp, dp)| Addresses {
                source: SocketAddr::new(ip(s), sp),
                destination: SocketAddr::new(ip(d), dp),
            })
    }

    /// Every form, encoded: v1 or v2, IPv4 or IPv6, with or without
    /// addresses, v2 with TLVs.
    fn encoded() -> impl Strategy<Value = (Vec<u8>, Option<Addresses>)> {
        let tlvs = proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..4,
        )
        .prop_map(|tlvs| {
            let mut bytes = Vec::new();
            for (kind, value) in tlvs {
                bytes.push(kind);
                bytes.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
                bytes.extend(value);
            }
            bytes
        });
        (
            any::<bool>(),
            proptest::option::of(any::<bool>().prop_flat_map(addresses)),
            tlvs,
        )
            .prop_map(|(version1, addresses, tlvs)| {
                let bytes = if version1 {
                    v1_line(addresses)
                } else {
                    v2_header(addresses, &tlvs)
                };
                (bytes, addresses)
            })
    }

    proptest! {
        /// A header reads back as written, and ends where it was written
        /// to end, whatever follows it.
        #[test]
        fn headers_read_back_as_written(
            (bytes, addresses) in encoded(),
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut input = bytes.clone();
            input.extend(&rest);
            let h = header(&input);
            prop_assert_eq!(h.len, bytes.len());
            prop_assert_eq!(h.addresses, addresses);
        }

        /// A header cut short at any length asks for more, never refuses.
        #[test]
        fn a_truncated_header_is_incomplete((bytes, _) in encoded()) {
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse(&bytes[..cut]), Ok(Parsed::Incomplete), "cut at {}", cut);
            }
        }

        /// Whatever the bytes, the parser claims no more than it was given.
        #[test]
        fn garbage_never_claims_more_than_it_was_given(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            v2_start in any::<bool>(),
        ) {
            let mut input = if v2_start { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            input.extend(&bytes);
            for input in [&input[..], &bytes[..]] {
                if let Ok(Parsed::Header(h)) = parse(input) {
                    prop_assert!(h.len <= input.len());
                }
            }
        }
    }
}
