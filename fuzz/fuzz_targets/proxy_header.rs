//! `corral::proxy_protocol::parse` on any bytes: it never panics, never
//! claims more bytes than it was given, reads nothing past a header, asks
//! for more only below its limits, calls every prefix of a header
//! incomplete, and a header written back from what it read reads the same.
#![no_main]

use std::net::IpAddr;

use corral::proxy_protocol::{Addresses, Parsed, V1_MAX, V2_MAX, V2_SIGNATURE, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    match &parsed {
        Ok(Parsed::Incomplete) => assert!(data.len() < V1_MAX.max(V2_MAX), "{} bytes", data.len()),
        Ok(Parsed::Header(header)) => {
            assert!(header.len > 0 && header.len <= data.len());
            assert_eq!(parse(&data[..header.len]), parsed, "read past the header");
            for cut in 0..header.len {
                assert_eq!(parse(&data[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
            }
            let written = write(data[0] == b'P', header.addresses);
            let again = parse(&written);
            let Ok(Parsed::Header(again)) = again else {
                panic!("{written:?} written back: {again:?}");
            };
            assert_eq!(
                (again.len, again.addresses),
                (written.len(), header.addresses)
            );
        }
        Err(_) => {}
    }
});

/// A v1 line or a v2 header for `addresses` (`UNKNOWN`, or v2's `LOCAL`,
/// for none).
fn write(v1: bool, addresses: Option<Addresses>) -> Vec<u8> {
    match (v1, addresses) {
        (true, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (
            true,
            Some(Addresses {
                source: s,
                destination: d,
            }),
        ) => {
            let protocol = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {protocol} {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            );
            line.into_bytes()
        }
        (false, None) => {
            let mut header = V2_SIGNATURE.to_vec();
            header.extend([0x20, 0x00, 0, 0]);
            header
        }
        (
            false,
            Some(Addresses {
                source: s,
                destination: d,
            }),
        ) => {
            let mut block = Vec::new();
            let family = match (s.ip(), d.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend(s.octets());
                    block.extend(d.octets());
                    0x11
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    block.extend(s.octets());
                    block.extend(d.octets());
                    0x21
                }
                mixed => panic!("one header, two families: {mixed:?}"),
            };
            block.extend(s.port().to_be_bytes());
            block.extend(d.port().to_be_bytes());
            let mut header = V2_SIGNATURE.to_vec();
            header.extend([0x21, family]);
            header.extend((block.len() as u16).to_be_bytes());
            header.extend(block);
            header
        }
    }
}
