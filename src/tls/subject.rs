//! A client certificate's subject as the string RFC 4514 defines
//! (`CN=alice,O=Example`), for the header that tells upstreams who a
//! verified client is. x509-parser decodes the certificate; what is here
//! is the string form only, which x509-parser's own `Display` is not (it
//! keeps the certificate's order, joins with `, ` and escapes nothing).
//!
//! The text is ASCII, so any subject makes a valid header value: RFC 4514
//! lets any character be written as `\` and two hex digits per UTF-8
//! byte, and that is done for everything outside printable ASCII.

use std::fmt::Write as _;

use x509_parser::asn1_rs::{Any, Tag, ToDer as _};
use x509_parser::prelude::{FromDer as _, X509Certificate, X509Name};

/// The subject of the DER certificate `der`, or `None` if it does not
/// decode (webpki verified it, so it does).
pub fn of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(rfc4514(cert.subject()))
}

/// A distinguished name as RFC 4514 §2.1 writes it: the relative names
/// last to first, joined by `,`; the attributes of a multi-valued one
/// joined by `+`. (An issuer's too, for `/status`: see [`super::inspect`].)
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            match short_name(&oid) {
                // §2.4: a value of a type named in LDAP's table, as text
                // when it is a string.
                Some(short) => {
                    out.push_str(short);
                    out.push('=');
                    match text(attr.attr_value()) {
                        Some(value) => escape(&mut out, &value),
                        None => hex(&mut out, attr.attr_value()),
                    }
                }
                // §2.3 and §2.4: any other type by its OID, and its value as
                // `#` and the hex of its encoding.
                None => {
                    out.push_str(&oid);
                    out.push('=');
                    hex(&mut out, attr.attr_value());
                }
            }
        }
    }
    out
}

/// RFC 4514 §3's names for the attribute types it lists.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// The value as text, for the string types certificates use; `None` for
/// any other (TeletexString among them, whose character set is not
/// UTF-8's), which is then written in hex.
fn text(value: &Any<'_>) -> Option<String> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(value.data).ok().map(str::to_owned),
        Tag::BmpString => value.as_bmpstring().ok().map(|s| s.string()),
        _ => None,
    }
}

/// `#` and the hex of the value's whole encoding (tag, length, contents).
fn hex(out: &mut String, value: &Any<'_>) {
    out.push('#');
    for byte in value.to_der_vec().unwrap_or_default() {
        let _ = write!(out, "{byte:02x}");
    }
}

/// RFC 4514 §2.4's escaping: `"+,;<>\` always, `#` or a space first and a
/// space last; NUL and everything outside printable ASCII as hex pairs.
fn escape(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            ' '..='~' => out.push(c),
            _ => {
                let mut utf8 = [0; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\{byte:02X}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    /// The subject string of a certificate whose subject is `dn`.
    fn subject(dn: DistinguishedName) -> String {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        of_certificate(cert.der()).expect("decodes")
    }

    fn dn(pairs: &[(DnType, &str)]) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (t, v) in pairs {
            dn.push(t.clone(), *v);
        }
        dn
    }

    #[test]
    fn names_run_from_the_last_relative_name_to_the_first() {
        let text = subject(dn(&[
            (DnType::CountryName, "GB"),
            (DnType::OrganizationName, "Example"),
            (DnType::OrganizationalUnitName, "Ops"),
            (DnType::CommonName, "alice"),
        ]));
        assert_eq!(text, "CN=alice,OU=Ops,O=Example,C=GB");
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(
            subject(dn(&[(DnType::CommonName, "Doe, John+\"Jr\" <x>;\\")])),
            r#"CN=Doe\, John\+\"Jr\" \<x\>\;\\"#
        );
        assert_eq!(subject(dn(&[(DnType::CommonName, "#one ")])), r"CN=\#one\ ");
        assert_eq!(subject(dn(&[(DnType::CommonName, " a#b ")])), r"CN=\ a#b\ ");
        // Non-ASCII as UTF-8 hex pairs, so the text is a header value.
        let text = subject(dn(&[(DnType::CommonName, "Zoë\u{7}")]));
        assert_eq!(text, r"CN=Zo\C3\AB\07");
        assert!(http::HeaderValue::from_str(&text).is_ok());
    }

    #[test]
    fn other_types_are_written_by_oid_with_their_encoding_in_hex() {
        let mut names = dn(&[(DnType::CommonName, "alice")]);
        names.push(
            DnType::CustomDnType(vec![1, 2, 3, 4]),
            DnValue::Utf8String("hi".to_owned()),
        );
        // UTF8String (tag 0x0c), two bytes, "hi".
        assert_eq!(subject(names), "1.2.3.4=#0c026869,CN=alice");
    }

    #[test]
    fn a_certificate_that_does_not_decode_has_no_subject() {
        assert_eq!(of_certificate(b"not a certificate"), None);
    }
}
